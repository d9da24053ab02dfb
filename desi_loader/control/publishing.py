"""How a load publishes, chosen once when it opens: it replaces the published tables
(``Swap``), or merges its files into them (``Merge``, incremental: files of these tables are
published already and --replace-all was not given).  The strategy knows what differs:

- which files the load loads (``narrow``: a merge skips the published, unchanged files);
- how staging becomes durable (``staging``);
- what could not be published, found before any data moves (``preflight``);
- the finalizer's steps after verify (``steps``: the coordinator's phases of that name).

The ledger records the choice with the load (its options' ``incremental``), so a process
that resumes or joins the load publishes it the same way (``recorded``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from ..catalog import attach
from ..catalog.columns import published_columns
from ..db import relation_exists
from ..errors import UsageError
from ..fits.discover import Plan, narrowed
from .ledger import Ledger, Tx

if TYPE_CHECKING:
    from ..db import Cursor
    from .options import LoadOptions


def staging_mode(opts: LoadOptions, wal_level: str) -> tuple[str, str]:
    """How staging of a replacing load becomes durable on this server: (mode, reason for the summary).

    Measured (scripts/bench.py --only whole; 100,000 FastSpecFit galaxies, 2 workers, 2
    cores, PostgreSQL 18): COPY into logged staging took 39.3 s at wal_level=minimal and
    40.0 s at replica; UNLOGGED staging + SET LOGGED 42.9 s and 48.1 s (SET LOGGED rewrites
    every table, and at replica writes it all to WAL once more).  Logged staging is also
    the one a server crash cannot empty.  So it is the default at every WAL level;
    --staging unlogged forces the other path.
    """
    if opts.unlogged:
        return "unlogged", "--unlogged: the tables stay UNLOGGED (a server crash empties them)"
    if opts.staging_mode == "unlogged":
        return "unlogged", "--staging unlogged: UNLOGGED staging, then SET LOGGED"
    if opts.staging_mode == "logged":
        return "logged", "--staging logged: COPY into logged staging (WAL once, nothing lost in a crash)"
    return "logged", (f"wal_level={wal_level}: COPY into logged staging writes the data to WAL once, cheaper "
                      "than UNLOGGED staging + SET LOGGED (which rewrites every table) as measured by the "
                      "benchmark, and a server crash loses nothing")


def same_file(identity: dict, info) -> bool:
    """True when a registered file's identity (size, mtime, declared sums) matches this one's."""
    mine = info.identity
    return all(identity.get(k, mine[k]) == mine[k] for k in ("size", "mtime_ns", "sums"))


class Swap:
    """Replace the published tables by staging tables made durable, indexed and swapped in."""

    incremental = False
    steps = ("durable", "index", "foreign_keys", "swap")

    def narrow(self, ledger: Ledger, plan: Plan, tx: Tx) -> tuple[Plan, list]:
        """(the plan of the files to load, paths of published files skipped): every file."""
        return plan, []

    def staging(self, opts: LoadOptions, wal_level: str) -> tuple[str, str]:
        return staging_mode(opts, wal_level)

    def preflight(self, cur: Cursor, plan: Plan) -> list:
        """Swapping must not break what users attached to the tables (attach.preflight)."""
        new_columns = {t: {c.name for c in spec.all_columns} for t, spec in plan.tables.items()}
        return attach.preflight(cur, plan.schema, new_columns, set(plan.tables), set(plan.catalog.views))

    def message(self, plan: Plan, skipped: list) -> None:
        return None


class Merge:
    """Insert the new and changed files' rows into the published tables (replacing the rows of
    changed files), in one transaction; files not named stay."""

    incremental = True
    steps = ("merge",)

    def __init__(self, published: Optional[dict] = None, tables: Optional[set] = None) -> None:
        self.published = published      # the published files it was chosen on (choose), if read already
        self.tables = tables or set()    # the tables those files' loads put rows in (choose)

    def narrow(self, ledger: Ledger, plan: Plan, tx: Tx) -> tuple[Plan, list]:
        """(the plan without the published files whose identity did not change, their paths)."""
        published = self.published
        if published is None:
            published = ledger.published_files(sorted(plan.tables), tx=tx)
        unchanged = {fp.info.name for fp in plan.files
                     if fp.info.name in published and same_file(published[fp.info.name][1], fp.info)}
        skipped = [fp.info.path for fp in plan.files if fp.info.name in unchanged]
        return narrowed(plan, {fp.info.name for fp in plan.files} - unchanged), skipped

    def staging(self, opts: LoadOptions, wal_level: str) -> tuple[str, str]:
        """Rows go into the published (logged) tables by INSERT: staging is scratch space."""
        return "unlogged", "incremental: rows are inserted into the published tables (WAL-logged once)"

    def preflight(self, cur: Cursor, plan: Plan) -> list:
        """New rows whose column types differ from the published ones cannot be inserted; a
        published table that is gone (dropped by hand) cannot take the new rows, nor be
        rebuilt from them alone: its unchanged files' rows are gone too."""
        gone = [t for t in sorted(self.tables) if not relation_exists(cur, plan.schema, t)]
        if gone:
            raise UsageError(f"{', '.join(f'{plan.schema}.{t}' for t in gone)}: published by an earlier load "
                             "(the ledger lists its files), but gone (dropped by hand?); an incremental load only "
                             "adds rows to the published tables",
                             "reload every file of the catalog with --replace-all (it builds every table anew)")
        return [f"{plan.schema}.{t}.{c.name} is {have[c.name]} in the published table but "
                f"{c.sql_type} in the new files (reload everything with --replace-all)"
                for t, spec in plan.tables.items()
                for have in [published_columns(cur, plan.schema, t)]
                for c in spec.all_columns if c.name in have and have[c.name] != c.stored_type]

    def message(self, plan: Plan, skipped: list) -> str:
        return f"incremental load: {len(plan.files)} new or changed file(s), {len(skipped)} unchanged"


Publishing = Union[Swap, Merge]


def choose(ledger: Ledger, plan: Plan, opts: LoadOptions, tx: Optional[Tx] = None) -> Publishing:
    """A new load merges when files of its tables are published (and no --replace-all)."""
    published = {} if opts.replace_all else ledger.published_files(sorted(plan.tables), tx=tx)
    return Merge(published, ledger.published_tables(sorted(plan.tables), tx=tx)) if published else Swap()


def recorded(options: dict) -> Publishing:
    """How an unfinished load publishes, as its ledger row says (options of Ledger.start)."""
    return Merge() if options.get("incremental") else Swap()
