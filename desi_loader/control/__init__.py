"""The load's control plane, by stage: planning (run), the phases (coordinator), opening,
the worker processes (pool, worker), verify, staging (DDL, indexes, durability, foreign
keys), publish (swap, merge), what users attach (attach); the loader's own tables (ledger)
and connections with retries and locks (sessions)."""
