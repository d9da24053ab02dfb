"""``Load``: an open load, what every stage after the opening takes whole.

The opening (opening.py) makes it: the plan of the files this load loads, its ledger, the
target its tables live on (target.py), how it publishes (publishing.py), its staging
tables, file ids and staging mode.  Nothing changes a Load: verify's narrower plan
(--allow-partial) is a new one (``narrowed``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

from ..fits.discover import Plan, foreign_keys, narrowed
from .ledger import Ledger
from .options import LoadOptions

if TYPE_CHECKING:
    from .publishing import Publishing
    from .target import Server


@dataclass(frozen=True)
class Load:
    """One open load: its options, plan and ledger, and what the opening decided."""

    opts: LoadOptions
    plan: Plan                                      # the files this load loads (and publishes)
    ledger: Ledger
    target: Server                                  # a plain server or a Citus cluster
    publishing: Publishing                          # Swap (replace the tables) or Merge (incremental)
    staging_tables: dict = field(default_factory=dict)   # published table -> its staging table
    file_ids: dict = field(default_factory=dict)    # file name -> file_id (a column of every row)
    staging_mode: str = "unlogged"                  # unlogged | logged

    @cached_property
    def fkeys(self) -> list:
        """discover.ForeignKey between the loaded tables (from the plan)."""
        return foreign_keys(self.plan)

    def narrowed(self, names: set) -> "Load":
        """This load publishing only the files named (file names)."""
        return replace(self, plan=narrowed(self.plan, names))

    def publishes(self, step: str) -> bool:
        """Whether ``step`` (a phase's name) is one of this load's publishing steps."""
        return step in self.publishing.steps

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
