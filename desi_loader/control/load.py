"""``Load``: what a load carries through its stages once it is open.

The coordinator creates it with the ledger, the opening fills in what it decided (the plan
of the files to load, staging names, file ids, staging mode, incremental), and every later
stage (verify, staging, publish) takes it whole instead of a (connection, schema, staging,
...) tuple.  Plans are frozen: verify's narrower plan (--allow-partial) makes a new Load.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..fits.discover import Plan, foreign_keys
from .ledger import Ledger
from .options import LoadOptions


@dataclass
class Load:
    """One open load: its options, plan and ledger, and what the opening decided."""

    opts: LoadOptions
    plan: Plan
    ledger: Ledger
    staging_tables: dict = field(default_factory=dict)   # published table -> its staging table
    file_ids: dict = field(default_factory=dict)    # file name -> file_id (a column of every row)
    staging_mode: str = "unlogged"                  # unlogged | logged
    incremental: bool = False                       # merge into the published tables
    fkeys: list = field(init=False)                 # discover.ForeignKey between loaded tables (from the plan)

    def __post_init__(self) -> None:
        self.fkeys = foreign_keys(self.plan)

    def opened(self, opening) -> None:
        """Take what opening.open_load decided (an opening.Opening): the plan of the files to
        load, staging names, file ids, how staging becomes durable, whether it merges."""
        self.plan = opening.plan
        self.staging_tables, self.file_ids = opening.staging_tables, opening.file_ids
        self.staging_mode, self.incremental = opening.staging_mode, opening.incremental

    @property
    def schema(self) -> str:
        return self.plan.schema

    @property
    def conn(self):
        """The coordinator's connection (the ledger's session)."""
        return self.ledger.conn

    @property
    def load_id(self) -> int:
        return self.ledger.bound_id()

    @property
    def tables(self) -> dict:
        """Published table name -> TableSpec."""
        return self.plan.tables
