"""What a worker needs to stream any task of a load's files: per file and table, the
staging table, the HDUs whose rows are read side by side and the compiled encoder fields.
Built once by the coordinator after the opening (file ids are known then), pickled to
every worker at spawn.  The files of a catalog share their columns' and fields' objects
(equal but for the file id), so the pickle holds each once: 40 FastSpecFit files made
8 MB that every worker read before its first row (50 ms a worker for 4 files)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..encode import Codec
from ..fits.config import Catalog
from ..fits.discover import Plan, Task
from ..fits.columns import FILE_ID, row_fields, sky_columns
from .stream import PartSource


@dataclass(frozen=True)
class TableEncoding:
    """How one file's rows become one table's COPY data."""

    staging: str                       # staging table the rows go to
    hdus: tuple                        # read.HduInfo, row blocks concatenated in this order
    fields: Codec                      # encoder fields, compiled once


@dataclass(frozen=True)
class FileEncoding:
    """Everything a worker needs to stream any task of one file."""

    path: str
    tables: dict                       # table name -> TableEncoding
    compressed: str = ""               # 'gzip': decompressed to a temporary file by the worker

    def sources(self, task: Task) -> dict:
        """The task's parts as stream sources by table (a one-table catalog's HDUs: one source)."""
        ranges = {p.table: (p.start, p.stop) for p in task.parts}
        return {t: PartSource(self.tables[t].staging, self.tables[t].hdus, self.tables[t].fields, a, b)
                for t, (a, b) in ranges.items()}


def encoder_plan(plan: Plan, staging: dict, file_ids: dict) -> dict[str, FileEncoding]:
    """Per file name: its path and, per table, the staging table, HDUs and encoder fields
    (``file_ids``: file name -> the file_id the ledger gave it, a column of every row).

    A one-table catalog's table reads the same rows of several row-aligned HDUs side by side; its
    columns' offsets are shifted into that concatenated row.
    """
    out = {}
    shared: dict = {}                  # equal columns and fields of different files: one object
    made: dict = {}                    # all that fixes a table's fields but the file id -> its Codec

    def one(x):
        return shared.setdefault(x, x)
    for fp in plan.files:
        per_table: dict = {}
        for h in fp.info.hdus:
            if h.index not in fp.tables:
                continue
            per_table.setdefault(fp.tables[h.index], []).append(replace(h, columns=tuple(map(one, h.columns))))
        entry = {}
        for table, hdus in per_table.items():
            cols: list = []
            shift = 0
            for h in hdus:
                cols.extend(replace(c, offset=c.offset + shift) if shift else c for c in fp.columns[h.index])
                shift += h.block_bytes
            derived = {}
            if table == plan.catalog.one_table:
                derived = _derived_sources(hdus, plan.catalog)
            pair = None
            for h in hdus:
                names = plan.catalog.sky_columns(h.extname)
                pair = pair or (sky_columns(cols, names) if names else None)
            # the files of one survey and program differ in their file id only: their fields
            # compiled once (FastSpecFit: 10 ms a file, 0.4 s for DR1's 40, while the workers
            # wait), then copied with the file's id
            key = (table, tuple(cols), tuple(sorted(fp.constants.items())), tuple(sorted(derived.items())), pair)
            kind = made.get(key)
            if kind is None:
                kind = made[key] = Codec([one(f) for f in row_fields(plan.tables[table], cols, fp.constants, 0,
                                                                     derived, pair)])
            entry[table] = TableEncoding(staging[table], tuple(hdus), kind.with_value(FILE_ID, file_ids[fp.info.name]))
        out[fp.info.name] = FileEncoding(fp.info.path, entry, fp.info.compressed)
    return out


def _derived_sources(hdus, catalog: Catalog) -> dict:
    """derived column -> (op, FitsColumn with offset in the concatenated row)."""
    out, shift = {}, 0
    offsets = {}
    for h in hdus:
        offsets[(h.extname or "").upper()] = (h, shift)
        shift += h.block_bytes
    for name, (op, ext, col) in catalog.derived.items():
        h, base = offsets[ext]
        src = next(c for c in h.columns if c.name.upper() == col)
        out[name] = (op, replace(src, offset=src.offset + base))
    return out
