"""The query side over loaded tables: cone search and cross-match (cone), void membership
(voids)."""
