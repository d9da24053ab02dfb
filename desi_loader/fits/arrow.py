"""Parquet files (plain, or the partitions of a HATS catalog) read as virtual FITS tables.

A Parquet file is one binary-table HDU, ``DATA``, whose rows this module lays out as the
FITS reader delivers rows: big-endian records with each column at a fixed offset
(``FitsColumn``), so the plan, the encoder, the sky index, the ledger and verify treat it
as any other table.  How each Arrow type is stored (and so loaded, fits/columns.py):

==============================  ==========================================  ==============
Arrow                           stored as                                   PostgreSQL
==============================  ==========================================  ==============
bool                            L (``T``/``F``; 0 for NULL)                 boolean
int8, uint8                     B (TZERO -128), B                           smallint
int16, uint16                   I, I (TZERO 2**15)                          smallint, integer
int32, uint32                   J, J (TZERO 2**31)                          integer, bigint
int64, uint64                   K, K (TZERO 2**63)                          bigint, numeric(20)
float16, float32, float64       E (float16 widened), E, D                   real, double
string, large_string            U: a length word (-1: NULL), the UTF-8      text, exactly as
                                bytes                                       written
fixed_size_list (nested)        an array of its element, its dims           type[]
list, large_list                a variable-length array of its element      type[]
==============================  ==========================================  ==============

NULLs: a float is NaN (NULL under the loader's policy), a logical 0, an integer a TNULL
chosen outside the values the file holds (the row groups' statistics, or one read of the
column), a NULL list is an array of NULLs (fixed) or an empty one (variable).  Other Arrow
types (timestamps, decimals, structs, binary) are refused with the column named.

Rows are read by row group: a task is whole row groups (``ArrowHdu.row_groups``), and a
worker's blocks slice the row groups it read last.  pyarrow is imported here only, and only
when a Parquet input is met: ``pip install desi-loader[hats]`` provides it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from .columns import FILE_ID, ROW_NUM, FitsColumn, check_names
from .read import FitsInfo, HduInfo
from ..errors import BadFileError, SchemaError, UsageError

#: The one HDU name a Parquet file's table has.
EXTNAME = "DATA"
#: What a Parquet file starts and ends with.
MAGIC = b"PAR1"


def pyarrow() -> Any:
    """The pyarrow module, or a UsageError naming the extra that installs it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise UsageError("Parquet files and HATS catalogs need pyarrow, which is not installed",
                         "pip install 'desi-loader[hats]'") from exc
    return pyarrow


def is_parquet(path: str) -> bool:
    """A file named .parquet / .parq, or one that starts with Parquet's magic bytes."""
    if path.endswith((".parquet", ".parq")):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class Slot:
    """How one Arrow column fills its FitsColumn: its element type and list nesting."""

    name: str
    element: str                  # Arrow element type name: int16, float32, string, bool ...
    nesting: str = ""             # '' scalar, 'fixed' (fixed_size_list, nested), 'list' (variable)


@dataclass(frozen=True)
class ArrowHdu(HduInfo):
    """The one HDU of a Parquet file: rows already laid out with every variable-length
    array's region (no heap to expand), read by row group."""

    row_groups: tuple = ()        # first row of each row group, then the file's rows
    slots: tuple = ()             # Slot per column, in the order of ``columns``

    vlas = ()                     # read_rows gives rows with the arrays in their regions

    @property
    def block_bytes(self) -> int:
        return self.row_bytes

    @property
    def datasum(self) -> Optional[int]:
        return None


#: Arrow integer types: (FITS code, TZERO, smallest value, largest value)
_INTS = {"int8": ("B", -128, -2 ** 7, 2 ** 7 - 1), "uint8": ("B", 0, 0, 2 ** 8 - 1),
         "int16": ("I", 0, -2 ** 15, 2 ** 15 - 1), "uint16": ("I", 2 ** 15, 0, 2 ** 16 - 1),
         "int32": ("J", 0, -2 ** 31, 2 ** 31 - 1), "uint32": ("J", 2 ** 31, 0, 2 ** 32 - 1),
         "int64": ("K", 0, -2 ** 63, 2 ** 63 - 1), "uint64": ("K", 2 ** 63, 0, 2 ** 64 - 1)}
_FLOATS = {"halffloat": "E", "float": "E", "double": "D"}
_STORED = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}


def _element(pa: Any, t: Any, where: str) -> tuple[Slot, tuple]:
    """(the slot's element and nesting, fixed dims) of an Arrow type."""
    dims: list = []
    nesting = ""
    while pa.types.is_fixed_size_list(t):
        dims.append(t.list_size)
        t = t.value_type
        nesting = "fixed"
    if not dims and (pa.types.is_list(t) or pa.types.is_large_list(t)):
        t = t.value_type
        nesting = "list"
    name = str(t)
    if name in ("string", "large_string", "utf8", "large_utf8"):
        if nesting:
            raise SchemaError(f"{where}: lists of strings are not loaded", "select the other columns")
        return Slot("", "string", ""), ()
    if name == "bool" or name in _INTS or name in _FLOATS:
        return Slot("", name, nesting), tuple(dims)
    raise SchemaError(f"{where}: Arrow type {t} is not loaded (numbers, booleans, strings and lists of "
                      "numbers or booleans are)", "cast the column (pyarrow: Table.cast) or leave it out of the file")


def _needs_read(pa: Any, pf: Any, idx: int, slot: Slot) -> bool:
    """Whether planning must read a column: string widths, list lengths, and integers that
    hold NULLs without min/max statistics in every row group."""
    if slot.element == "string" or slot.nesting == "list":
        return True
    if slot.element not in _INTS:
        return False
    md = pf.metadata
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(idx).statistics
        if slot.nesting or st is None or not st.has_null_count or (st.null_count and not st.has_min_max):
            return True
    return False


def _int_range(pa: Any, pf: Any, idx: int, column: Optional[Any]) -> tuple[int, Optional[int], Optional[int]]:
    """(NULLs, smallest, largest value) of an integer column (its list elements too)."""
    pc = pa.compute
    if column is not None:
        flat = column
        while pa.types.is_fixed_size_list(flat.type) or pa.types.is_list(flat.type) \
                or pa.types.is_large_list(flat.type):
            if pa.types.is_fixed_size_list(flat.type) and flat.null_count:
                return -1, None, None               # a NULL fixed list: its elements NULL
            flat = pc.list_flatten(flat)
        mm = pc.min_max(flat)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        return flat.null_count, lo, hi
    md = pf.metadata
    nulls, lo, hi = 0, None, None
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(idx).statistics
        nulls += st.null_count
        if st.has_min_max:
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
    return nulls, lo, hi


def _tnull(element: str, nulls: int, lo: Optional[int], hi: Optional[int], where: str) -> Optional[int]:
    """The stored TNULL of an integer column that holds NULLs: a value outside the file's."""
    if not nulls:
        return None
    code, tzero, smallest, largest = _INTS[element]
    if lo is None or lo > smallest:
        return smallest - tzero
    if hi is not None and hi < largest:
        return largest - tzero
    raise SchemaError(f"{where}: holds NULLs and every {element} value from {smallest} to {largest}, so no "
                      "value is left to stand for NULL", "cast the column to a wider integer type")


def _column(pa: Any, pf: Any, idx: int, field: Any, element: tuple, offset: int, data: dict,
            where: str) -> tuple[FitsColumn, Slot]:
    """One Arrow column (``element``: its _element) as a FitsColumn at ``offset`` (VLA regions
    are placed later)."""
    slot, dims = element
    slot = Slot(field.name, slot.element, slot.nesting)
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (field.metadata or {}).items()}
    unit, desc = meta.get("unit") or None, meta.get("description") or None
    column = data.get(field.name)
    pc = pa.compute
    if slot.element == "string":
        lengths = pc.binary_length(column) if column is not None else None
        width = int(pc.max(lengths).as_py() or 0) if lengths is not None else 0
        return FitsColumn(field.name, f"{width}U", "U", width, offset, (), unit=unit, comment=desc), slot
    if slot.element == "bool":
        code, tzero, tnull = "L", None, None
    elif slot.element in _FLOATS:
        code, tzero, tnull = _FLOATS[slot.element], None, None
    else:
        code, tz, _, _ = _INTS[slot.element]
        tzero = tz or None
        tnull = _tnull(slot.element, *_int_range(pa, pf, idx, column), where)
    if slot.nesting == "list":
        most = int(pc.max(pc.list_value_length(column)).as_py() or 0) if column is not None else 0
        return FitsColumn(field.name, f"1P{code}({most})", code, most, offset, (most,), tzero=tzero, tnull=tnull,
                          unit=unit, comment=desc, heap="P"), slot
    repeat = int(np.prod(dims)) if dims else 1
    return FitsColumn(field.name, f"{repeat}{code}", code, repeat, offset, tuple(dims), tzero=tzero, tnull=tnull,
                      unit=unit, comment=desc), slot


def read_info(path: str, name: Optional[str] = None) -> FitsInfo:
    """A Parquet file's schema as a FitsInfo of one HDU (``DATA``); reads the columns whose
    layout depends on their values (string widths, list lengths, NULL sentinels).

    Raises
    ------
    BadFileError
        Not a readable Parquet file, or a column the loader cannot hold.
    """
    pa = pyarrow()
    where = "Parquet table"
    try:
        pf = pa.parquet.ParquetFile(path, page_checksum_verification=True)
        schema = pf.schema_arrow
        elements = [_element(pa, fld.type, f"column {fld.name!r}") for fld in schema]
        wanted = [fld.name for i, fld in enumerate(schema) if _needs_read(pa, pf, i, elements[i][0])]
        data = {}
        if wanted:
            table = pf.read(columns=wanted, use_threads=False)
            data = {n: table.column(n).combine_chunks() for n in wanted}
        cols, slots, offset = [], [], 0
        for i, fld in enumerate(schema):
            col, slot = _column(pa, pf, i, fld, elements[i], offset, data, f"column {fld.name!r}")
            cols.append(col)
            slots.append(slot)
            offset += col.width
        region = offset
        for k, c in enumerate(cols):
            if c.heap:
                cols[k] = replace(c, region=region)
                region += c.heap_bytes
        check_names(cols, where, (FILE_ID, ROW_NUM))
        md = pf.metadata
        bounds = [0]
        for g in range(md.num_row_groups):
            bounds.append(bounds[-1] + md.row_group(g).num_rows)
        cards = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")[:200]
                 for k, v in (schema.metadata or {}).items() if k != b"ARROW:schema" and len(v) < 2000}
    except (BadFileError, UsageError):
        raise
    except SchemaError as exc:
        raise BadFileError(path, f"{where}: {exc}", exc.hint) from exc
    except FileNotFoundError as exc:
        raise BadFileError(path, "no such file") from exc
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise BadFileError(path, f"not a readable Parquet file ({exc})",
                           "check that the copy completed, or write the file again") from exc
    hdu = ArrowHdu(1, EXTNAME, md.num_rows, region, 0, tuple(cols), cards, row_groups=tuple(bounds),
                   slots=tuple(slots))
    st = os.stat(path)
    return FitsInfo(path, name or os.path.basename(path), st.st_size, {}, (hdu,), "absent", None, st.st_mtime_ns)


# --------------------------------------------------------------------------- rows

#: the row groups a worker read last: (path, mtime, first group, last group) -> rows
_LAST: dict = {}


def read_rows(path: str, hdu: ArrowHdu, start: int, stop: int, fh: Optional[Any] = None) -> np.ndarray:
    """Rows [start, stop) as an (n, row_bytes) uint8 array of virtual FITS records."""
    n = stop - start
    if n <= 0:
        return np.zeros((0, hdu.row_bytes), np.uint8)
    bounds = hdu.row_groups
    g0 = int(np.searchsorted(bounds, start, side="right")) - 1
    g1 = int(np.searchsorted(bounds, stop, side="left"))
    key = (path, hdu.row_groups, hdu.row_bytes, g0, g1)
    rows = _LAST.get(key)
    if rows is None:
        _LAST.clear()
        rows = _LAST[key] = _groups(path, hdu, g0, g1, fh)
    first = bounds[g0]
    return rows[start - first:stop - first]


def _groups(path: str, hdu: ArrowHdu, g0: int, g1: int, fh: Optional[Any]) -> np.ndarray:
    pa = pyarrow()
    groups = f"row group {g0}" if g1 == g0 + 1 else f"row groups {g0}-{g1 - 1}"
    where = f"{groups} (rows {hdu.row_groups[g0]}-{hdu.row_groups[g1] - 1})"
    try:
        if fh is not None:
            fh.seek(0)
        pf = pa.parquet.ParquetFile(fh if fh is not None else path, page_checksum_verification=True)
        table = pf.read_row_groups(list(range(g0, g1)), columns=[s.name for s in hdu.slots], use_threads=False)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise BadFileError(path, f"{where}: unreadable ({exc})",
                           "the file is damaged: copy or write it again") from exc
    if table.num_rows != hdu.row_groups[g1] - hdu.row_groups[g0]:
        raise BadFileError(path, f"{where}: {table.num_rows} rows read, the footer says "
                           f"{hdu.row_groups[g1] - hdu.row_groups[g0]}", "the file is damaged: write it again")
    try:
        return virtual_rows(pa, table, hdu)
    except SchemaError as exc:
        raise BadFileError(path, f"{where}: {exc}", exc.hint) from exc


def virtual_rows(pa: Any, table: Any, hdu: ArrowHdu) -> np.ndarray:
    """An Arrow table's rows as virtual FITS records (see the module's table)."""
    n = table.num_rows
    buf = np.zeros((n, hdu.row_bytes), np.uint8)
    for col, slot in zip(hdu.columns, hdu.slots):
        arr = table.column(slot.name).combine_chunks()
        if slot.element == "string":
            _strings(buf, col, arr)
        elif slot.nesting == "list":
            _variable(pa, buf, col, slot, arr)
        elif not slot.nesting and not arr.null_count and (slot.element in ("float", "double") or (
                slot.element in _INTS and not col.tzero)):
            # the common column: one pass, numpy swapping the bytes as it assigns
            dst = buf[:, col.offset:col.offset + col.width].view(_STORED[col.code])
            dst[:, 0] = arr.to_numpy(zero_copy_only=False)
        else:
            if slot.nesting == "fixed":
                arr = _flat_fixed(pa, arr)
            buf[:, col.offset:col.offset + col.width] = _stored(pa, arr, col, slot).reshape(n, col.width)
    return buf


def _flat_fixed(pa: Any, arr: Any) -> Any:
    """The elements of a (nested) fixed-size list, a NULL list's elements NULL."""
    while pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        values = arr.values.slice(arr.offset * size, len(arr) * size)
        if arr.null_count:
            keep = np.repeat(arr.is_valid().to_numpy(zero_copy_only=False), size)
            values = pa.compute.if_else(pa.array(keep), values, pa.nulls(len(values), values.type))
        arr = values
    return arr


def _stored(pa: Any, arr: Any, col: FitsColumn, slot: Slot) -> np.ndarray:
    """Flat Arrow values (NULLs allowed) as stored FITS elements: (m, bytes) uint8."""
    pc = pa.compute
    if slot.element == "bool":
        v = pc.fill_null(arr, False).to_numpy(zero_copy_only=False)
        out = np.where(v, ord("T"), ord("F")).astype(np.uint8)
        if arr.null_count:
            out[arr.is_null().to_numpy(zero_copy_only=False)] = 0
        return out.reshape(-1, 1)
    if slot.element in _FLOATS:
        if slot.element == "halffloat":
            arr = arr.cast(pa.float32())
        v = pc.fill_null(arr, float("nan")) if arr.null_count else arr
        return v.to_numpy(zero_copy_only=False).astype(_STORED[col.code]).view(np.uint8).reshape(len(arr), -1)
    code, tzero, _, _ = _INTS[slot.element]
    if arr.null_count:
        if col.tnull is None:
            raise SchemaError(f"column {col.name!r} holds NULLs that planning did not see (the file changed?)",
                              "load the file again")
        arr = pc.fill_null(arr, pa.scalar(col.tnull + tzero, arr.type))
    v = arr.to_numpy(zero_copy_only=False)
    if slot.element == "uint64":
        stored = (v.astype(np.uint64) ^ np.uint64(1 << 63)).view(np.int64).astype(">i8")
    elif tzero:
        stored = (v.astype(np.int64) - tzero).astype(_STORED[code])
    else:
        stored = v.astype(_STORED[code])
    return stored.view(np.uint8).reshape(len(arr), -1)


def _strings(buf: np.ndarray, col: FitsColumn, arr: Any) -> None:
    """A string column: each row's length word (-1 for NULL), then its bytes."""
    n = len(arr)
    kind = ">i8" if str(arr.type) in ("large_string", "large_utf8") else "<i4"
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.dtype(kind).newbyteorder("<"))[arr.offset:arr.offset + n + 1].astype(np.int64)
    lengths = np.diff(offsets)
    null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(n, bool)
    words = np.where(null, -1, lengths).astype(">i4")
    buf[:, col.offset:col.offset + 4] = words.view(np.uint8).reshape(n, 4)
    lengths = np.where(null, 0, lengths)
    total = int(lengths.sum())
    if not total:
        return
    data = np.frombuffer(bufs[2], np.uint8)
    starts = np.cumsum(lengths) - lengths
    src = np.repeat(offsets[:-1] - starts, lengths) + np.arange(total)
    dst = np.repeat(np.arange(n) * buf.shape[1] + col.offset + 4 - starts, lengths) + np.arange(total)
    buf.reshape(-1)[dst] = data[src]


def _variable(pa: Any, buf: np.ndarray, col: FitsColumn, slot: Slot, arr: Any) -> None:
    """A list column: the count in the descriptor, the elements in the column's region."""
    pc = pa.compute
    n = len(arr)
    counts = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if (counts > col.repeat).any():
        r = int(np.argmax(counts > col.repeat))
        raise SchemaError(f"column {col.name!r}: a list of {counts[r]} elements, longer than the {col.repeat} "
                          "planning saw (the file changed?)", "load the file again")
    buf[:, col.offset:col.offset + 4] = counts.astype(">i4").view(np.uint8).reshape(n, 4)
    total = int(counts.sum())
    if not total:
        return
    elems = _stored(pa, pc.list_flatten(arr), col, slot)          # (total, width)
    w = elems.shape[1]
    starts = np.cumsum(counts) - counts
    pos = np.arange(total) - np.repeat(starts, counts)           # element index within its row
    rows = np.repeat(np.arange(n), counts)
    base = rows * buf.shape[1] + col.region + pos * w
    flat = buf.reshape(-1)
    for b in range(w):
        flat[base + b] = elems[:, b]
