"""Paths + catalog preset + headers -> the load plan: tables (schema union) and tasks.

Pure apart from listing directories: headers arrive as read.FitsInfo objects.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Optional, Sequence

from .config import check_distribution
from .config import Catalog, Settings, generic
from .datamodel import datamodel
from ..errors import BadFileError, UsageError
from .columns import (FILE_ID, ROW_NUM, FitsColumn, PgColumn, TableSpec, pg_column, pg_name, sky_columns,
                     union_columns)
from ..sky import COLUMN as SKY_COLUMN, COMMENT as SKY_COMMENT

#: Target FITS bytes per task.  Large enough that per-task overhead (a transaction, a
#: ledger row) is noise, small enough that a 12.5 GB file spreads over 16+ workers
#: (about 50 tasks) and a retried task repeats little work.
TASK_BYTES = 256 * 1024 * 1024


#: Target bytes (as laid out in rows) of a Parquet file's task: a task's row groups are read and
#: sorted whole before its first byte is sent, so smaller tasks keep the server busier (400,000
#: rows of 181 columns, 2 workers, three interleaved runs: whole command 6.9-7.6 s against
#: 7.7-7.9 s with 256 MB tasks).
ARROW_TASK_BYTES = 32 * 1024 * 1024


#: What a directory's FITS files are called: plain, gzip-compressed, fpack-compressed.
FITS_PATTERNS = ("*.fits", "*.fit", "*.fits.gz", "*.fit.gz", "*.fits.fz")


def find_files(paths: Sequence[str]) -> list[str]:
    """FITS files named or contained (not recursively) in ``paths``, sorted by name."""
    found: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            # .fz (fpack) files are listed so that they are named with what to do (read.py)
            found.extend(f for pattern in FITS_PATTERNS for f in glob.glob(os.path.join(p, pattern)))
        elif os.path.isfile(p):
            found.append(p)
        else:
            raise UsageError(f"{p}: no such file or directory", "check the path")
    if not found:
        raise UsageError(f"no FITS files found in {', '.join(paths)}",
                         "give .fits (or .fits.gz) files or a directory holding them")
    uniq = sorted(set(os.path.abspath(f) for f in found), key=lambda f: (os.path.basename(f), f))
    names = [os.path.basename(f) for f in uniq]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(f"two files share the name {sorted(dup)[0]}", "load each copy once")
    return uniq


def group_by_catalog(files: Sequence[str], settings: Settings, name: Optional[str],
                     prefix: Optional[str], sky: Optional[str] = None) -> list[tuple[Catalog, list[str]]]:
    """(catalog, files) groups: the catalog named by --catalog, or each file's detected one."""
    if name == "generic" or (name is None and prefix):
        return [(generic(prefix or "fits", sky), list(files))]
    if sky:
        raise UsageError("--sky is for --catalog generic", "presets name their sky columns (sky.HDU = RA, DEC)")
    if name:
        if name not in settings.catalogs:
            raise UsageError(f"unknown catalog {name!r}",
                             f"choose one of: {', '.join(sorted(settings.catalogs) + ['generic'])}")
        return [(settings.catalogs[name], list(files))]
    groups: dict = {}
    for f in files:
        base = os.path.basename(f)
        cat = next((c for c in settings.catalogs.values() if c.detect and c.matches(base)), None)
        if cat is None:
            raise UsageError(f"cannot tell which catalog {base} belongs to",
                             "give --catalog NAME, or --catalog generic --prefix NAME for any FITS tables")
        groups.setdefault(cat.name, (cat, []))[1].append(f)
    return list(groups.values())


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of one HDU going to one table."""

    hdu: int
    table: str
    start: int
    stop: int

    def as_json(self) -> list:
        """As the ledger stores it: [hdu, table, start, stop]."""
        return [self.hdu, self.table, self.start, self.stop]


@dataclass(frozen=True)
class Task:
    """A unit of work: some rows of one file, all its HDUs' parts in one transaction.

    The same object from the plan to the worker: the ledger stores it (parts as JSON)
    and ``Ledger.claim`` gives it back to the worker that streams it.
    """

    task_id: int
    file: str                          # the file's name (unique in a load; FitsInfo.name)
    parts: tuple[Part, ...]

    @property
    def rows(self) -> int:
        return sum(p.stop - p.start for p in self.parts)


@dataclass
class FilePlan:
    info: object                       # read.FitsInfo
    tables: dict                       # hdu index -> table name
    constants: dict
    columns: dict = field(default_factory=dict)   # hdu index -> its FitsColumns to load (selected_columns)


@dataclass(frozen=True)
class Plan:
    """What a load of one catalog is to do, decided before any database is touched; nothing
    changes it afterwards (a narrower plan is a new one: ``narrowed``)."""

    catalog: Catalog
    schema: str
    tables: dict                       # table name -> TableSpec
    files: tuple                       # FilePlan
    failed: tuple = ()                 # (path, reason) of files that cannot load (found while planning)
    notes: tuple = ()                  # what users should know (names cut at 63 bytes)
    task_bytes: int = TASK_BYTES       # the largest task, in FITS bytes (the server may want less)
    task_rows: Optional[int] = None    # --task-rows: rows per task, whatever their bytes

    @cached_property
    def tasks(self) -> tuple:
        """The tasks (``split_tasks``), split when first read: once the task size is decided
        (the coordinator may make it smaller for the server at hand), nothing splits again."""
        return tuple(split_tasks(self))

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tasks)

    @property
    def total_bytes(self) -> int:
        return sum(f.info.size for f in self.files)


def _descriptions(catalog: Catalog) -> dict:
    if not catalog.descriptions:
        return {}
    dm = datamodel(catalog.descriptions)
    out: dict = {}
    groups = dm["hdus"].items() if "hdus" in dm else (
        (h, c) for a in dm["algorithms"].values() for h, c in a["hdus"].items())
    for hdu, cols in groups:
        hdu = hdu.split("_")[0]
        for name, _, _, _, desc in cols:
            out.setdefault(hdu, {})[name.lower()] = desc
    return out


def _apply_nulls(cols: tuple[FitsColumn, ...], nulls: dict) -> tuple[FitsColumn, ...]:
    return tuple(replace(c, tnull=nulls[c.name.upper()]) if c.name.upper() in nulls else c for c in cols)


def selected_columns(h, catalog: Catalog) -> tuple[FitsColumn, ...]:
    """The HDU's columns the preset loads (all by default), with its NULL sentinels applied."""
    ext = (h.extname or "").upper()
    cols = _apply_nulls(h.columns, catalog.nulls.get(ext, {}))
    wanted = catalog.columns.get(ext)
    if wanted is None:
        return cols
    by_name = {c.name.upper(): c for c in cols}
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise BadFileError(h.extname or "", f"HDU {ext} lacks column(s) {', '.join(missing)} that the "
                           f"{catalog.name} preset selects")
    return tuple(by_name[w] for w in wanted)


def build_plan(infos: Sequence, catalog: Catalog, schema: str,
               task_bytes: int = TASK_BYTES, task_rows: Optional[int] = None) -> Plan:
    """Check every file against the catalog and build the tables (column unions) and tasks.

    Raises
    ------
    BadFileError
        A file lacks a required HDU, or its aligned HDUs differ in row count.
    SchemaError
        A column has incompatible types in two files.
    """
    descs = _descriptions(catalog)
    files: list[FilePlan] = []
    failed: list[tuple[str, str]] = []
    sources: dict[str, list] = {}
    sky: dict[str, tuple] = {}                    # table -> (ra, dec) of its sky index
    extra = tuple(PgColumn(k, catalog.constant_types.get(k, "text"), 0, "from the file name")
                  for k in catalog.constants)
    for info in infos:
        try:
            constants = catalog.file_constants(info.name)
            tables, columns_of, selected = _file_tables(info, catalog, constants, descs, sky)
        except (BadFileError, UsageError) as exc:
            failed.append((info.path, exc.explained if isinstance(exc, BadFileError) else str(exc)))
            continue
        for table, pg in columns_of.items():
            sources.setdefault(table, []).append((info.name, pg))
        files.append(FilePlan(info, tables, constants, selected))
    specs = {table: _table_spec(catalog, table, srcs, extra, sky.get(table, ()))
             for table, srcs in sources.items()}
    notes = _cut_names(files)
    return Plan(catalog, schema, specs, tuple(files), failed=tuple(failed), notes=tuple(notes),
                task_bytes=task_bytes, task_rows=task_rows)


def narrowed(plan: Plan, names: set) -> Plan:
    """The plan of only the files named in ``names`` (file names): a new plan, whose tasks
    are split when first read."""
    files = tuple(fp for fp in plan.files if fp.info.name in names)
    if len(files) == len(plan.files):
        return plan
    return replace(plan, files=files)


def _file_tables(info, catalog: Catalog, constants: dict, descs: dict, sky: dict) -> tuple[dict, dict, dict]:
    """One file's tables: ({hdu index: table}, {table: its PgColumns from this file}, {hdu
    index: its FitsColumns loaded}); adds the (ra, dec) of tables with a sky index to ``sky``.

    Raises
    ------
    BadFileError
        The file does not fit the catalog, or its columns cannot share a table.
    """
    hdus = _file_hdus(info, catalog, constants)
    tables: dict = {}
    columns_of: dict = {}
    selected: dict = {}
    with_sky: set = set()
    for h in hdus:
        table = catalog.table_for(h.extname, h.index)
        tables[h.index] = table
        cols = selected[h.index] = selected_columns(h, catalog)
        h_desc = descs.get((h.extname or "").upper(), {})
        columns_of.setdefault(table, []).extend(pg_column(c, h_desc.get(c.name.lower())) for c in cols)
        pair = sky_columns(cols, catalog.sky_columns(h.extname))
        if pair and table not in with_sky:       # one sky column per table
            with_sky.add(table)
            ra, dec = (c.name.lower() for c in pair)
            columns_of[table].append(PgColumn(SKY_COLUMN, "int8", 0, SKY_COMMENT.format(ra=ra, dec=dec)))
            sky.setdefault(table, (ra, dec))
    if catalog.one_table in columns_of:
        columns_of[catalog.one_table] += [PgColumn(name, "float4", 0, f"{op}({ext}.{col})")
                                 for name, (op, ext, col) in catalog.derived.items()]
    for table, pg in columns_of.items():
        clash = _clash(table, pg, tuple(catalog.constants))
        if clash:
            raise BadFileError(info.path, clash)
    return tables, columns_of, selected


def _cut_names(files: list) -> list:
    """The plan's note on FITS names cut to PostgreSQL's 63 bytes ([] when none is)."""
    cut = sorted({f"{h.extname or h.index}.{c.name} -> {pg_name(c.name)}" for fp in files for h in fp.info.hdus
                  if h.index in fp.tables for c in h.columns if pg_name(c.name) != c.name.lower()})
    return [f"FITS column names longer than PostgreSQL's 63 bytes are cut (the full name is in the column "
            f"comment): {', '.join(cut)}"] if cut else []


def _clash(table: str, columns: Sequence[PgColumn], constants: tuple) -> Optional[str]:
    """Why one file's columns cannot share ``table`` (two named alike, or like a constant column)."""
    seen = {FILE_ID: "the loader's", ROW_NUM: "the loader's", **{c: "the preset's" for c in constants}}
    for c in columns:
        if c.name in seen:
            return (f"table {table}: column {c.name!r} appears twice ({seen[c.name]} column and a FITS or "
                    "derived column of that name); rename the FITS column, or leave it out with a preset's "
                    "columns.HDU list")
        seen[c.name] = "a FITS"
    return None


def _table_spec(catalog: Catalog, table: str, srcs: list, extra: tuple, sky: tuple) -> TableSpec:
    """One table: the union of its files' columns, its key, indexes, sky index, placement."""
    cols = union_columns(table, srcs)
    if table == catalog.one_table:          # the one table: key and indexes of all its HDUs
        key = catalog.keys.get("", ())
        indexes = tuple(ix for ixs in catalog.indexes.values() for ix in ixs)
    else:
        ext = next((k for k, v in catalog.tables.items() if v == table), None)
        key = catalog.keys.get(ext, ()) if ext else ()
        indexes = catalog.indexes.get(ext, ()) if ext else ()
    if sky:
        cols = tuple(c for c in cols if c.name != SKY_COLUMN) + (
            next(c for c in cols if c.name == SKY_COLUMN),)          # the sky pixel last
        indexes = tuple(indexes) + ((SKY_COLUMN,),)
    dist = catalog.distribution_of(table)
    check_distribution(dist, table, [c.name for c in extra + cols] + ["file_id", "row_num"])
    return TableSpec(table, cols, extra, key or ("file_id", "row_num"), indexes, sky, dist)


def _file_hdus(info, catalog: Catalog, constants: dict) -> list:
    """The HDUs of one file to load; BadFileError when the file does not fit the catalog."""
    if catalog.prefix is not None:
        if not info.hdus:
            raise BadFileError(info.path, "holds no binary table (images and ASCII tables are not loaded)",
                               "is this the right file?")
        return list(info.hdus)
    required = catalog.required_hdus(constants)
    hdus = []
    for ext in catalog.hdus:
        h = info.hdu(ext)
        if h is None:
            if ext not in required:
                continue
            raise BadFileError(info.path, f"missing HDU {ext} (expected {', '.join(required)})",
                               "is this the right file / --catalog? download it again")
        hdus.append(h)
    if not hdus:
        raise BadFileError(info.path, f"none of the HDUs {', '.join(catalog.hdus)} of the "
                           f"{catalog.name} catalog", "is this the right file / --catalog?")
    if catalog.aligned and len({h.nrows for h in hdus}) > 1:
        counts = ", ".join(f"{h.extname}={h.nrows}" for h in hdus)
        raise BadFileError(info.path, f"HDUs should be row-aligned but have {counts} rows")
    return hdus


def _ranges(nrows: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(s + step, nrows)) for s in range(0, nrows, step)] or [(0, 0)]


def _group_ranges(bounds: Sequence[int], step: int) -> list[tuple[int, int]]:
    """Row ranges of whole row groups (``bounds``: each group's first row, then the total),
    each of about ``step`` rows (a larger group is one range)."""
    out, start = [], 0
    for b in bounds[1:]:
        if b - start >= step:
            out.append((start, b))
            start = b
    if start < bounds[-1] or not out:
        out.append((start, bounds[-1]))
    return out


def split_tasks(plan: Plan) -> list[Task]:
    """Row ranges so that no task holds more than the plan's ``task_bytes`` of FITS data
    (or ``task_rows`` rows, when set)."""
    task_bytes, task_rows = plan.task_bytes, plan.task_rows
    tasks: list[Task] = []
    for fp in plan.files:
        name = fp.info.name
        hdus = [h for h in fp.info.hdus if h.index in fp.tables]
        if fp.info.compressed and hdus:
            # one task: a gzip stream is read from its start (the worker decompresses it once,
            # then loads it in TASK_BYTES chunks within the task's transaction)
            parts = tuple(Part(h.index, fp.tables[h.index], 0, h.nrows) for h in hdus)
            tasks.append(Task(len(tasks), name, parts))
        elif plan.catalog.aligned and hdus:
            width = sum(h.block_bytes for h in hdus)
            step = task_rows or max(1, task_bytes // max(width, 1))
            for s, e in _ranges(hdus[0].nrows, step):
                parts = tuple(Part(h.index, fp.tables[h.index], s, e) for h in hdus)
                tasks.append(Task(len(tasks), name, parts))
        else:
            for h in hdus:
                groups = getattr(h, "row_groups", None)        # a Parquet file: whole row groups
                most = min(task_bytes, ARROW_TASK_BYTES) if groups else task_bytes
                step = task_rows or max(1, most // max(h.block_bytes, 1))
                for s, e in (_group_ranges(groups, step) if groups else _ranges(h.nrows, step)):
                    tasks.append(Task(len(tasks), name, (Part(h.index, fp.tables[h.index], s, e),)))
    return tasks


@dataclass(frozen=True)
class ForeignKey:
    """A preset's foreign key between two loaded tables."""

    child: str
    columns: tuple
    parent: str
    parent_columns: tuple


def foreign_keys(plan: Plan) -> list[ForeignKey]:
    """The preset's foreign keys among the loaded tables."""
    cat = plan.catalog
    out = []
    for ext, fks in cat.fkeys.items():
        child = cat.tables.get(ext)
        for col, pext, pcol in fks:
            parent = cat.tables.get(pext)
            if child is not None and parent is not None and child in plan.tables and parent in plan.tables:
                out.append(ForeignKey(child, cat.scope + (col,), parent, cat.scope + (pcol,)))
    return out
