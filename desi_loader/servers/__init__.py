"""The servers the loader starts or places tables on: the embedded PostgreSQL (embedded)
and a Citus cluster (citus)."""
