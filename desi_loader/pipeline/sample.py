"""Rows of a loaded table read again from the files it was loaded from, by the ``file_id``
and ``row_num`` every row carries: the values the table holds, bit for bit (the loader's
contract), without the server sending them.  And the binary COPY rows of fixed-width
columns read as arrays (what the server sends when the files cannot say).

The statistics of a wide table (control/analyze.py) use it for their sample: the server
names the sampled rows (two columns of each, in physical order) and the files give the
other 885.  A binary ``COPY TO`` of 30,000 FASTSPEC rows costs the server 1.6-2.3 s of CPU
on a 2-core machine (a send function and a buffer per value); the files' rows cost 0.4.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..encode import BINARY_HEADER, BINARY_TRAILER, Codec, encode_block, is_plain
from ..fits.arrow import ArrowHdu
from ..fits.columns import pg_name
from ..fits.discover import Plan
from ..fits.read import read_rows
from .encodings import encoder_plan

#: the element types read as arrays, with their big-endian numpy type in binary COPY
FIXED = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "float4": ">f4", "float8": ">f8", "bool": "?"}

#: bytes before the first row and after the last of a binary COPY stream
HEADER_BYTES, TRAILER_BYTES = len(BINARY_HEADER), len(BINARY_TRAILER)


class NullInSample(Exception):
    """A fixed-width column of the sample holds a NULL: the fast read does not apply."""


def decode_fixed(buf, types: list) -> list:
    """Binary COPY rows of fixed-width columns of ``types``: one array per column, in native
    byte order.  NullInSample when a field is NULL (its length word is -1, the layout breaks)."""
    fields = [("n", ">i2")]
    for k, t in enumerate(types):
        fields += [(f"l{k}", ">i4"), (f"v{k}", FIXED[t])]
    row = np.dtype(fields)
    body = len(buf) - HEADER_BYTES - TRAILER_BYTES
    if body < 0 or body % row.itemsize:
        raise NullInSample()
    table = np.frombuffer(buf, dtype=row, count=body // row.itemsize, offset=HEADER_BYTES)
    if len(table) and (table["n"] != len(types)).any():
        raise NullInSample()
    out = []
    for k, t in enumerate(types):
        if (table[f"l{k}"] != np.dtype(FIXED[t]).itemsize).any():
            raise NullInSample()
        out.append(table[f"v{k}"].astype(np.dtype(FIXED[t]).newbyteorder("=")))
    return out


def file_rows(plan: Plan, file_ids: dict) -> dict:
    """{table: FileRows}: each table's rows in the files of ``plan``, by the file_id the
    load gave each file (``file_ids``: file name -> file_id)."""
    by_table: dict = {}
    for name, enc in encoder_plan(plan, {t: t for t in plan.tables}, file_ids).items():
        for table, te in enc.tables.items():
            by_table.setdefault(table, {})[file_ids[name]] = (enc, te)
    return {table: FileRows(files) for table, files in by_table.items()}


class FileRows:
    """One table's rows in this load's files: {file_id: (FileEncoding, TableEncoding)}."""

    def __init__(self, files: dict) -> None:
        self.files = files

    def usable(self) -> bool:
        """True when every file is a plain FITS file without a heap (rows read in place)."""
        return bool(self.files) and all(
            not enc.compressed and all(not isinstance(h, ArrowHdu) and not h.pcount for h in te.hdus)
            for enc, te in self.files.values())

    def gather(self, file_ids: np.ndarray, row_nums: np.ndarray) -> Optional["Sample"]:
        """The raw rows (file_ids[i], row_nums[i]), read once; None when a row is not of this
        load's files (an earlier load's row) or past a file's end."""
        parts = []
        for fid in np.unique(file_ids).tolist():
            entry = self.files.get(int(fid))
            if entry is None:
                return None
            enc, te = entry
            positions = np.flatnonzero(file_ids == fid)
            rows = row_nums[positions]
            order = np.argsort(rows, kind="stable")          # read each file front to back
            positions, rows = positions[order], rows[order]
            if len(rows) and (rows[0] < 0 or rows[-1] >= te.hdus[0].nrows):
                return None
            parts.append((positions, rows, read_rows_at(enc.path, te.hdus, rows),
                          {pg_name(f.name): f for f in te.fields}))
        return Sample(len(file_ids), parts)


class Sample:
    """Sampled rows of a table read from its files, in the order the server named them."""

    def __init__(self, n: int, parts: list) -> None:
        self.n = n
        self.parts = parts           # [(positions, row numbers, raw rows, {column: encoder Field})]

    def columns(self, names: Sequence[str], types: dict) -> list:
        """One native array per column of ``names`` (``types``: name -> FIXED type), in the
        sample's order; NullInSample where a value is NULL in the table.

        A plain column (encode.is_plain) is its FITS bytes; the others (scaled, derived,
        constant, row numbers, booleans ...) are encoded as the workers encoded them and
        read back, so every value is the table's."""
        out = {n: np.empty(self.n, np.dtype(FIXED[types[n]]).newbyteorder("=")) for n in names}
        for positions, row_nums, raw, fields in self.parts:
            if any(n not in fields for n in names):
                raise NullInSample()                         # a column this file does not fill
            others = []
            for n in names:
                f = fields[n]
                if not is_plain(f) or np.dtype(FIXED[types[n]]).itemsize != f.width:
                    others.append(f)
                    continue
                values = raw[:, f.offset:f.offset + f.width].view(FIXED[types[n]])[:, 0]
                if f.kind == "float" and np.isnan(values).any():
                    raise NullInSample()                     # NaN is loaded as NULL
                out[n][positions] = values
            if others:
                codec = Codec(others)
                data = BINARY_HEADER + encode_block(raw, codec, "binary", row_nums) + BINARY_TRAILER
                for f, values in zip(codec, decode_fixed(data, [types[pg_name(f.name)] for f in codec])):
                    out[pg_name(f.name)][positions] = values
        return [out[n] for n in names]


def read_rows_at(path: str, hdus: tuple, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (ascending) of row-aligned ``hdus`` side by side, as raw record bytes:
    the span from the first to the last read in one go when they are most of it, else
    each row through a memory map."""
    blocks = []
    for h in hdus:
        if not len(rows):
            blocks.append(np.zeros((0, h.row_bytes), np.uint8))
            continue
        first, last = int(rows[0]), int(rows[-1]) + 1
        if last - first <= 4 * len(rows):
            blocks.append(read_rows(path, h, first, last)[rows - first])
        else:
            mapped = np.memmap(path, np.uint8, "r", offset=h.data_offset, shape=(h.nrows, h.row_bytes))
            blocks.append(np.asarray(mapped[rows]))
            del mapped
    return blocks[0] if len(blocks) == 1 else np.hstack(blocks)
