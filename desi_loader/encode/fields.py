"""Encoder vocabulary: PostgreSQL types, the Field of one output column, the row layout that
pieces are assembled in, the values read from raw FITS rows, and the copy order (Codec).

Pure numpy, shared by the binary encoder (binary.py) and the text encoders (textfield.py,
textenc.py); imports none of them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..sky import ang2pix

@dataclass(frozen=True)
class PgType:
    """A PostgreSQL element type the encoder writes."""

    name: str            # internal name, as in pg_type.typname
    sql: str             # the column type in DDL
    oid: int             # element OID in binary array headers
    width: int           # bytes of one value in binary COPY; 0 for variable (text)


#: The one table of PostgreSQL types: DDL name, array element OID, binary width.
#: numeric(20,0) values are written as 4 base-10000 digits + header (18 bytes).
PG_TYPES = {t.name: t for t in (
    PgType("int2", "smallint", 21, 2), PgType("int4", "integer", 23, 4), PgType("int8", "bigint", 20, 8),
    PgType("float4", "real", 700, 4), PgType("float8", "double precision", 701, 8),
    PgType("bool", "boolean", 16, 1), PgType("numeric", "numeric(20,0)", 1700, 18),
    PgType("text", "text", 25, 0))}
OID = {name: t.oid for name, t in PG_TYPES.items()}

_NULL_WORD = np.frombuffer(b"\xff\xff\xff\xff", np.uint8)

class EncodeError(ValueError):
    """A value that cannot be represented in PostgreSQL (names column and row)."""


@dataclass(frozen=True)
class Field:
    """How one output column is produced from a block of FITS rows.

    kind is one of:
    ``int`` (signed integer, optional integer TZERO), ``uint8`` (FITS 'B'),
    ``derived`` (float32 computed from a float32 column: value names the operation),
    ``float`` (E/D), ``scaled`` (TSCAL/TZERO to double precision), ``u64`` (K with
    TZERO 2**63, to numeric), ``bool`` (L), ``text`` (A), ``null`` (column absent
    from this file), ``const`` (a file-level value), ``rownum`` (0-based FITS row),
    ``hpx`` (int8 nested HEALPix pixel of two float columns, see sky.py: ``offset``/``width``
    locate RA, ``value`` = (offset, width) of DEC), ``bits`` (X: ``count`` bits packed
    most significant first, to a boolean array), ``utf8`` (a string read from Parquet/Arrow:
    ``offset`` locates a big-endian int32 byte length, -1 for NULL, followed by ``width``
    bytes of UTF-8 whose first length bytes are the value; kept as it is, spaces included).
    """

    name: str
    kind: str
    pgtype: str = ""          # element type name: int2/int4/int8/float4/float8/bool/numeric/text
    offset: int = 0           # byte offset of the column in the FITS row
    width: int = 0            # bytes per stored element (string width for text)
    count: int = 1            # stored elements (product of dims); 1 for scalars
    dims: tuple = ()          # PostgreSQL array dims, slowest first; () for a scalar
    tzero: float = 0
    tscal: float = 1.0
    tnull: Optional[int] = None
    src: str = ""             # stored numpy dtype of a scaled column, e.g. '>i2'
    value: Any = None         # for const: int or str
    vla: Any = None               # variable-length array: (offset, bytes) of its element count in
                                  # the row; offset/count then describe its region (read.expand_heap)

    @property
    def out_width(self) -> int:
        """Bytes per element in binary COPY."""
        if self.kind == "utf8":
            return self.width
        t = PG_TYPES.get(self.pgtype)
        return t.width if t is not None and t.width else self.width


# --------------------------------------------------------------------------- layout

class _Layout:
    """Rows assembled from fixed-width pieces, compacted once by a keep mask.

    Pieces written as 32-bit words (column runs) are 4x slower when their destination is
    not 4-byte aligned (measured: 4.2 against 1.1 us per FASTSPEC row), and a binary COPY
    tuple starts with a 2-byte field count.  So rows are built in a buffer whose row
    stride is a multiple of 8, shifted so that the widest word piece is aligned; the
    shift is dropped by the copy into bytes that has to happen anyway.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.pieces: list[tuple[int, Callable[[np.ndarray], None], Optional[np.ndarray], bool]] = []

    def const(self, data: bytes) -> None:
        if not data:
            return
        arr = np.frombuffer(data, np.uint8)

        def write(dst: np.ndarray) -> None:
            dst[:] = arr

        self.pieces.append((len(data), write, None, False))

    def array(self, data: np.ndarray, keep: Optional[np.ndarray] = None) -> None:
        """Add a (n, ...) uint8 array flattened per row, with an optional keep mask."""
        data = data.reshape(self.n, -1)
        if keep is not None:
            keep = keep.reshape(self.n, -1)

        def write(dst: np.ndarray) -> None:
            dst[:] = data

        self.pieces.append((data.shape[1], write, keep, False))

    def custom(self, width: int, write: Callable[[np.ndarray], None],
               keep: Optional[np.ndarray] = None, words: bool = False) -> None:
        self.pieces.append((width, write, keep, words))

    def _lead(self) -> int:
        pos, best, lead = 0, 0, 0
        for width, _, _, words in self.pieces:
            if words and width > best:
                best, lead = width, (-pos) % 4
            pos += width
        return lead

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows as an (n, width) character matrix and its keep mask (text slots)."""
        total = sum(w for w, _, _, _ in self.pieces)
        out = np.empty((self.n, total), np.uint8)
        mask = np.ones((self.n, total), bool)
        pos = 0
        for width, write, keep, _ in self.pieces:
            write(out[:, pos:pos + width])
            if keep is not None:
                mask[:, pos:pos + width] = keep.reshape(self.n, width)
            pos += width
        return out, mask

    def tobytes(self) -> bytes:
        total = sum(w for w, _, _, _ in self.pieces)
        lead = self._lead()
        stride = (lead + total + 7) // 8 * 8
        buf = np.empty((self.n, stride), np.uint8)
        out = buf[:, lead:lead + total]
        mask = None
        pos = 0
        for width, write, keep, _ in self.pieces:
            write(out[:, pos:pos + width])
            if keep is not None:
                if mask is None:
                    mask = np.ones((self.n, total), bool)
                mask[:, pos:pos + width] = keep.reshape(self.n, width)
            pos += width
        if mask is None:
            return out.tobytes()
        return out[mask].tobytes()


# --------------------------------------------------------------------------- raw values

def _be(kind: str, width: int) -> np.dtype:
    return np.dtype({"int": ">i", "float": ">f", "uint8": ">u"}[kind] + str(width))


def _raw(rows: np.ndarray, f: Field) -> np.ndarray:
    """The stored elements of an integer column as an (n, count) big-endian array."""
    sl = rows[:, f.offset:f.offset + f.width * f.count]
    return np.ascontiguousarray(sl).view(_be("int", f.width))


def _float_raw(rows: np.ndarray, f: Field) -> np.ndarray:
    sl = np.ascontiguousarray(rows[:, f.offset:f.offset + f.width * f.count])
    return sl.view(_be("float", f.width))


def _int_values(rows: np.ndarray, f: Field) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Integer column -> (int64 or uint64 values (n, count), null mask or None)."""
    if f.kind == "uint8":
        raw = rows[:, f.offset:f.offset + f.count].astype(np.int64)
    else:
        raw = _raw(rows, f).astype(np.int64)
    null = None
    if f.tnull is not None:
        null = raw == f.tnull
        if not null.any():
            null = None
    vals: np.ndarray
    if f.kind == "u64":
        vals = raw.view(np.uint64) ^ np.uint64(1 << 63)
    elif f.tzero:
        vals = raw + int(f.tzero)
    else:
        vals = raw
    return vals, null


def _derive(rows: np.ndarray, f: Field) -> np.ndarray:
    """A derived float32 column; invalid inputs give NaN (hence NULL)."""
    src = _float_raw(rows, f).astype(np.float32)
    if f.value == "inv_sqrt":                 # 1/sqrt(IVAR): the error, NULL where IVAR <= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(src > 0, np.float32(1) / np.sqrt(src), np.float32(np.nan)).astype(np.float32)
    raise EncodeError(f"column {f.name!r}: unknown derivation {f.value!r}")


def _float_values(rows: np.ndarray, f: Field) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Float or scaled column -> (float values (n, count) native, NaN mask or None)."""
    if f.kind == "derived":
        vals = _derive(rows, f)
        nan = np.isnan(vals)
        return vals, (nan if nan.any() else None)
    if f.kind == "scaled":
        src = rows[:, f.offset:f.offset + f.width * f.count]
        src_dtype = np.dtype(f.src)
        raw = np.ascontiguousarray(src).view(src_dtype)
        null = None
        if f.tnull is not None and src_dtype.kind == "i":
            null = raw == f.tnull
        vals = raw.astype(np.float64) * f.tscal + f.tzero
        nan = np.isnan(vals)
        if null is not None:
            nan = nan | null
    else:
        raw = _float_raw(rows, f)
        vals = raw.astype(raw.dtype.newbyteorder("="))
        nan = np.isnan(vals)
    return vals, (nan if nan.any() else None)


def row_numbers(first_row, n: int) -> np.ndarray:
    """0-based FITS row numbers of a block: ``first_row`` is the first row's number, or
    the array of every row's number (blocks written in sky order are permuted)."""
    if isinstance(first_row, np.ndarray):
        return first_row.astype(np.int64, copy=False)
    return np.arange(n, dtype=np.int64) + first_row


def _row_at(first_row, r: int) -> int:
    return int(first_row[r]) if isinstance(first_row, np.ndarray) else first_row + int(r)


def hpx_values(rows: np.ndarray, f: Field) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Sky pixel column -> (int64 pixels (n, 1), null mask (n, 1) or None)."""
    dec_offset, dec_width = f.value
    ra = np.ascontiguousarray(rows[:, f.offset:f.offset + f.width]).view(_be("float", f.width))
    dec = np.ascontiguousarray(rows[:, dec_offset:dec_offset + dec_width]).view(_be("float", dec_width))
    pix, invalid = ang2pix(ra[:, 0], dec[:, 0])
    return pix.reshape(-1, 1), (invalid.reshape(-1, 1) if invalid.any() else None)


def _bool_values(rows: np.ndarray, f: Field, first_row: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    raw = rows[:, f.offset:f.offset + f.count]
    true = raw == ord("T")
    null = raw == 0
    bad = ~(true | null | (raw == ord("F")))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise EncodeError(
            f"column {f.name!r} row {_row_at(first_row, r)}: logical byte {int(raw[r, c])!r} is not "
            "'T', 'F' or 0 (null)")
    return true, (null if null.any() else None)


def _bits(rows: np.ndarray, f: Field) -> np.ndarray:
    """A bit column (X) -> (n, count) uint8 of 0 and 1, first bit the most significant."""
    packed = rows[:, f.offset:f.offset + (f.count + 7) // 8]
    return np.unpackbits(packed, axis=1)[:, :f.count]


def vla_counts(rows: np.ndarray, f: Field) -> np.ndarray:
    """Elements of a variable-length array in each row (its descriptor's count)."""
    offset, width = f.vla
    return np.ascontiguousarray(rows[:, offset:offset + width]).view(">i%d" % width)[:, 0].astype(np.int64)


def _string_lengths(chars: np.ndarray) -> np.ndarray:
    """Used length of fixed-width FITS strings: cut at first NUL, drop trailing spaces."""
    n, w = chars.shape
    if w == 0:
        return np.zeros(n, np.int64)
    idx = np.arange(w)
    is_nul = chars == 0
    first_nul = np.where(is_nul.any(axis=1), is_nul.argmax(axis=1), w)
    solid = (chars != 0) & (chars != 32) & (idx < first_nul[:, None])
    last = w - solid[:, ::-1].argmax(axis=1)
    return np.where(solid.any(axis=1), last, 0)


def utf8_slot(rows: np.ndarray, f: Field) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``utf8`` column: (its slot: length word and bytes, (n, 4 + width) uint8; the byte
    lengths, 0 for NULL; the NULL mask)."""
    slot = rows[:, f.offset:f.offset + 4 + f.width]
    lengths = np.ascontiguousarray(slot[:, :4]).view(">i4")[:, 0].astype(np.int64)
    null = lengths < 0
    return slot, np.where(null, 0, lengths), null


def _check_ascii(chars: np.ndarray, lengths: np.ndarray, f: Field, first_row: int) -> None:
    used = np.arange(chars.shape[1]) < lengths[:, None]
    bad = (chars >= 0x80) & used
    if bad.any():
        r = int(np.argwhere(bad)[0][0])
        raise EncodeError(
            f"column {f.name!r} row {_row_at(first_row, r)}: string holds a non-ASCII byte; FITS "
            "strings are ASCII (fix the file or load the column as bytes)")



# --------------------------------------------------------------------------- copy order

def is_plain(f: Field) -> bool:
    """True when a column's binary COPY value is its FITS bytes unchanged (a scalar float or
    integer without TZERO or TNULL, as wide stored as sent); a float's NaN is sent as NULL."""
    return (f.kind in ("float", "int") and f.count == 1 and not f.dims and not f.tzero
            and f.tnull is None and f.out_width == f.width)


def _runs(fields: Sequence[Field]) -> list[list[Field]]:
    """Group consecutive plain columns that are adjacent in the FITS row and equally wide."""
    runs: list[list[Field]] = []
    for f in fields:
        prev = runs[-1][-1] if runs else None
        if (prev is not None and is_plain(f) and is_plain(prev) and f.width == prev.width
                and prev.offset + prev.width == f.offset):
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs



def fixed_text_width(f: Field) -> int:
    """Characters of a column's text and its separator when they never vary (scalar float4:
    17, float8: 25, NaN and infinity aside), else 0."""
    if f.kind == "float" and f.count == 1 and not f.dims:
        return {4: 17, 8: 25}.get(f.width, 0)
    return 0


def copy_order(fields: Sequence[Field]) -> Sequence[Field]:
    """The order COPY sends the columns in: scalar float4, then scalar float8, then the
    others, each in their given order.  Text lines then start with a part of fixed width
    (textenc.py); binary follows the same order so that one column list serves both.
    A Codec is already in copy order."""
    if isinstance(fields, Codec):
        return fields
    return ([f for f in fields if fixed_text_width(f) == 17] + [f for f in fields if fixed_text_width(f) == 25]
            + [f for f in fields if not fixed_text_width(f)])


class Codec(tuple):
    """A table's fields in copy order with their column runs worked out once (the per-block
    loop then skips it).

    Behaves as the tuple of fields; pass it wherever a sequence of Field is accepted, and
    name the COPY's columns in its order.  Grouping ~900 FASTSPEC columns into runs costs
    ~3 ms in Python, as much as encoding a 1 MB block, so workers compile their fields once
    per file and table.
    """

    runs: list                 # column runs (binary.py): worked out once here
    text_plan: Any             # the text encoder's plan (textenc.text_plan), made on first use

    def __new__(cls, fields: Sequence[Field]) -> "Codec":
        self = super().__new__(cls, copy_order(list(fields)))
        self.runs = _runs(self)
        return self

    def with_value(self, name: str, value: object) -> "Codec":
        """This codec with the constant column ``name`` holding ``value`` instead, its runs
        kept (the files of a catalog differ in their file id only: one Codec compiled, the
        others copied, 0.05 ms against 3 ms for FASTSPEC)."""
        old = next(f for f in self if f.name == name)
        if old.kind != "const":
            raise ValueError(f"{name} is not a constant column")
        new = replace(old, value=value)
        return _codec(tuple(new if f is old else f for f in self), [[new if f is old else f for f in run]
                                                                    for run in self.runs])

    def __reduce__(self) -> tuple:
        # unpickled as it was, runs included: through __new__ a worker would work out the
        # runs of every file's tables again (23 ms of the 24 ms to read 10 files' plan)
        return _codec, (tuple(self), self.runs)


def _codec(fields: tuple, runs: list) -> Codec:
    """A Codec of fields already in copy order and their runs (no work done)."""
    out = tuple.__new__(Codec, fields)
    out.runs = runs
    return out
