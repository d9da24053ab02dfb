"""FITS column descriptions -> PostgreSQL column specs, table unions and encoder fields.

Pure: no psycopg2, no fitsio.  read.py fills FitsColumn from headers; sqlgen.py turns
TableSpec into DDL.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from ..encode import PG_TYPES, Field
from ..errors import SchemaError
from ..sky import COLUMN as SKY_COLUMN

_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])(.*)$")
#: a variable-length array: rPt(emax) or rQt(emax), r 0 or 1, emax optional
_VLA = re.compile(r"^\s*([01]?)([PQ])([LXBIJKAEDCM])(?:\((\d+)\))?\s*$")


@dataclass(frozen=True)
class FitsType:
    """A FITS binary-table element type (TFORM code) and how it loads when unscaled."""

    code: str
    nbytes: int          # stored bytes per element
    stored: str          # numpy dtype of the stored (big-endian) element
    kind: str            # encoder kind (fields.Field.kind)
    pgtype: str          # PostgreSQL element type (key of fields.PG_TYPES)


#: The one table of FITS types.  Integer TZERO and TSCAL go through the rules below.
FITS_TYPES = {t.code: t for t in (
    FitsType("L", 1, "S1", "bool", "bool"), FitsType("B", 1, "u1", "uint8", "int2"),
    FitsType("I", 2, ">i2", "int", "int2"), FitsType("J", 4, ">i4", "int", "int4"),
    FitsType("K", 8, ">i8", "int", "int8"), FitsType("A", 1, "S1", "text", "text"),
    FitsType("E", 4, ">f4", "float", "float4"), FitsType("D", 8, ">f8", "float", "float8"),
    FitsType("X", 1, "u1", "bits", "bool"),
    # not a FITS code: a Parquet/Arrow string (fits/arrow.py), stored as a length word and its bytes
    FitsType("U", 1, "S1", "utf8", "text"))}
#: complex columns load as arrays with a last axis of 2 (real, imaginary) of this code
COMPLEX = {"C": "E", "M": "D"}
#: bytes of a variable-length array descriptor (count, heap offset) in the row
DESCRIPTOR_BYTES = {"P": 8, "Q": 16}

#: Integer columns with the FITS unsigned convention's TZERO, widened losslessly:
#: (code, TZERO) -> (encoder kind, PostgreSQL type).  Any other non-zero integer TZERO
#: or TSCAL != 1 loads as double precision (scaled); K with another TZERO cannot.
UNSIGNED: dict[tuple[str, float], tuple[str, str]] = {
    ("I", 2 ** 15): ("int", "int4"), ("J", 2 ** 31): ("int", "int8"), ("K", 2 ** 63): ("u64", "numeric")}

#: columns every loaded table starts with
FILE_ID, ROW_NUM = "file_id", "row_num"

#: PostgreSQL keeps identifiers of at most NAMEDATALEN - 1 = 63 bytes; FITS allows 68 characters.
PG_NAME_BYTES = 63


def pg_name(fits_name: str) -> str:
    """The PostgreSQL column of a FITS column: lower case, cut at 63 bytes as PostgreSQL would.

    The cut is deterministic (the FITS name's first 63 bytes) and never silent: the column
    comment keeps the full FITS name, the plan lists the cut names, and two FITS names that
    would become one column are refused (check_names).
    """
    return fits_name.lower().encode("utf-8")[:PG_NAME_BYTES].decode("utf-8", "ignore")


def check_names(columns: Sequence["FitsColumn"], where: str, reserved: Sequence[str] = ()) -> None:
    """Refuse columns whose PostgreSQL names collide with each other or with the loader's own.

    Raises
    ------
    SchemaError
        Naming both columns and the PostgreSQL name they share.
    """
    seen: dict[str, str] = {n: f"the loader's column {n}" for n in reserved}
    for c in columns:
        name = pg_name(c.name)
        if name in seen and name in reserved and name in ("file_id", "row_num"):
            raise SchemaError(f"{where}: the file has a column {c.name!r}, which the loader adds to every table "
                              "(file_id and row_num): a file exported from a loaded table?",
                              "export it without file_id and row_num (select the other columns), or rename them "
                              "in the file (astropy: Table.rename_column)")
        if name in seen:
            why = "names are lower-cased" + (" and cut at 63 bytes" if len(c.name.encode()) > PG_NAME_BYTES else "")
            other = seen[name] if name in reserved else f"column {seen[name]!r}"
            raise SchemaError(f"{where}: {other} and column {c.name!r} would both be PostgreSQL column "
                              f"{name!r} ({why})",
                              "rename one of them in the file (astropy: Table.rename_column), or leave one "
                              "out with a preset's columns.HDU list")
        seen[name] = c.name


@dataclass(frozen=True)
class FitsColumn:
    """One column of one binary-table HDU, as its header describes it."""

    name: str
    tform: str
    code: str
    repeat: int
    offset: int
    dims: tuple = ()              # numpy order (slowest first); () for scalars
    tzero: Optional[float] = None
    tscal: Optional[float] = None
    tnull: Optional[int] = None
    unit: Optional[str] = None
    comment: Optional[str] = None
    heap: str = ""                # 'P' or 'Q' for a variable-length array (repeat = its maximum)
    region: int = 0               # a VLA's elements: offset in the row block read.expand_heap makes

    @property
    def width(self) -> int:
        """Stored bytes of the cell in the FITS row (a VLA's descriptor)."""
        if self.heap:
            return DESCRIPTOR_BYTES[self.heap]
        if self.code == "X":
            return (self.repeat + 7) // 8
        if self.code == "U":
            return 4 + self.repeat
        return self.repeat * FITS_TYPES[self.code].nbytes

    @property
    def heap_bytes(self) -> int:
        """Bytes of a VLA's largest array (its region in an expanded row); 0 otherwise."""
        return self.repeat * FITS_TYPES[self.code].nbytes if self.heap else 0


def parse_tform(tform: str) -> tuple[int, str]:
    """'5E' -> (5, 'E'); complex 'C'/'M' and bits 'X' as they are; raises SchemaError for
    variable-length arrays (parse_vla) and unknown codes."""
    m = _TFORM.match(tform)
    if not m:
        raise SchemaError(f"unrecognised TFORM {tform!r}")
    repeat = int(m.group(1)) if m.group(1) else 1
    code = m.group(2)
    if code in "PQ":
        raise SchemaError(f"TFORM {tform!r}: a variable-length array (read with parse_vla)")
    return repeat, code


def parse_vla(tform: str) -> Optional[tuple[str, str, Optional[int]]]:
    """'1PE(100)' -> ('P', 'E', 100); None when TFORM is not a variable-length array.

    Raises
    ------
    SchemaError
        For element types the loader does not take in a VLA (bits, complex).
    """
    m = _VLA.match(tform)
    if not m:
        return None
    heap, code, emax = m.group(2), m.group(3), m.group(4)
    if code in "XCM":
        raise SchemaError(f"TFORM {tform!r}: variable-length arrays of {'bits' if code == 'X' else 'complex'} "
                          "values are not supported", "store the column as a fixed-size array, or leave it out "
                          "with a preset's columns.HDU list")
    return heap, code, int(emax) if emax is not None else None


def parse_tdim(tdim: Optional[str], repeat: int, code: str) -> tuple:
    """TDIM '(5,2)' -> numpy/PostgreSQL dims (2, 5); scalars -> ()."""
    if code == "A":
        if tdim:
            dims = tuple(int(x) for x in tdim.strip("() ").split(","))
            return tuple(reversed(dims[1:]))  # first TDIM axis is the string length
        return ()
    if tdim:
        dims = tuple(int(x) for x in tdim.strip("() ").split(","))
        return tuple(reversed(dims))
    return (repeat,) if repeat > 1 else ()


@dataclass(frozen=True)
class FitsSource:
    """What a loaded column was in its FITS file, for reading it back as it was (query results
    as astropy Tables, exports): recorded in the ledger's ``loader_columns`` at publish."""

    name: str                      # the FITS name (TTYPE), case kept
    dtype: str                     # numpy dtype astropy gives the column: uint16, float32, <U12, complex64 ...
    shape: tuple = ()              # a cell's shape (TDIM, numpy order); () for scalars
    unit: Optional[str] = None
    description: Optional[str] = None
    vla: bool = False              # variable-length array (an object column of 1-D arrays)
    null: Optional[int] = None     # the stored value a NULL stands for (TNULL, or the preset's sentinel)


#: Element types whose values are of one width (PostgreSQL caches their offset in a row).
FIXED_WIDTH_TYPES = frozenset({"int2", "int4", "int8", "float4", "float8", "bool"})


@dataclass(frozen=True)
class PgColumn:
    """A column of a PostgreSQL table: name, type, comment, and how to encode it."""

    name: str                      # lowercased FITS name (or a preset's column)
    pgtype: str                    # element type: int2/int4/int8/float4/float8/bool/numeric/text
    ndims: int = 0                 # 0 for scalars
    comment: Optional[str] = None
    source: Optional[FitsSource] = field(default=None, compare=False)   # None: a column of the loader's

    @property
    def sql_type(self) -> str:
        return PG_TYPES[self.pgtype].sql + "[]" * self.ndims

    @property
    def fixed_width(self) -> bool:
        """Every value takes the same bytes in a row (no text, array or numeric)."""
        return self.ndims == 0 and self.pgtype in FIXED_WIDTH_TYPES

    @property
    def stored_type(self) -> str:
        """The type as the catalog shows it (format_type): PostgreSQL keeps no array
        dimensions, so real[][] is stored as real[]."""
        return PG_TYPES[self.pgtype].sql + ("[]" if self.ndims else "")


def _is_int(x: Optional[float]) -> bool:
    return x is None or float(x).is_integer()


def classify(col: FitsColumn) -> tuple[str, str]:
    """(encoder kind, PostgreSQL element type) for a FITS column, widening losslessly."""
    t = FITS_TYPES[col.code]
    tzero, tscal = col.tzero or 0, col.tscal if col.tscal is not None else 1
    if col.code in "ALXU" or (col.code == "B" and tscal == 1 and _is_int(tzero)):
        return t.kind, t.pgtype          # B: 0..255, or -128..127 with TZERO=-128, fit smallint
    if tscal != 1 or not _is_int(tzero) or (col.code in "ED" and tzero):
        return "scaled", "float8"
    if tzero == 0:
        return t.kind, t.pgtype
    if (col.code, tzero) in UNSIGNED:
        return UNSIGNED[(col.code, tzero)]
    if col.code == "I" and abs(tzero) < 2 ** 31 - 2 ** 15:
        return "int", "int4"             # another integer TZERO: the widest value still fits
    if col.code in "IJ" and abs(tzero) < 2 ** 63 - 2 ** 31:
        return "int", "int8"
    raise SchemaError(f"column {col.name!r}: TFORM {col.tform} with TZERO {tzero} cannot be widened "
                      "losslessly", "load it with --catalog generic after fixing TZERO, or leave the column out")


def pg_column(col: FitsColumn, description: Optional[str] = None) -> PgColumn:
    """The PostgreSQL column for a FITS column (comment = description [unit])."""
    _, pgtype = classify(col)
    parts = [description or col.comment or ""]
    if col.unit:
        parts.append(f"[{col.unit}]")
    comment = " ".join(p for p in parts if p) or None
    if pg_name(col.name) != col.name.lower():          # cut at 63 bytes: keep the FITS name
        comment = f"FITS column {col.name}" + (f": {comment}" if comment else "")
    dtype, shape = fits_dtype(col)
    source = FitsSource(col.name, dtype, shape, col.unit, description or col.comment, bool(col.heap),
                        col.tnull)
    return PgColumn(pg_name(col.name), pgtype, len(col.dims), comment, source)


#: numpy dtypes of FITS codes as astropy reads them (TZERO/TSCAL aside)
_NUMPY = {"L": "bool", "X": "bool", "B": "uint8", "I": "int16", "J": "int32", "K": "int64",
          "E": "float32", "D": "float64"}
_UNSIGNED_NUMPY: dict[tuple[str, float], str] = {
    ("B", -128): "int8", ("I", 2 ** 15): "uint16", ("J", 2 ** 31): "uint32", ("K", 2 ** 63): "uint64"}


def fits_dtype(col: FitsColumn) -> tuple[str, tuple]:
    """(numpy dtype, cell shape) astropy reads the column as: the unsigned conventions, scaled
    columns as float64, complex as complex, strings as str of their width."""
    letter = col.tform.lstrip("0123456789")[:1]
    if letter in "PQ":
        letter = col.tform.lstrip("0123456789")[1:2]
    if letter in COMPLEX:
        return ("complex64" if letter == "C" else "complex128"), tuple(col.dims[:-1])
    if col.code == "U":
        return f"<U{max(col.repeat, 1)}", ()
    if col.code == "A":
        cells = int(np.prod(col.dims)) if col.dims else 1
        return f"<U{max(col.repeat // max(cells, 1), 1)}", tuple(col.dims)
    tzero, tscal = col.tzero or 0, col.tscal if col.tscal is not None else 1
    if (col.code, tzero) in _UNSIGNED_NUMPY and tscal == 1:
        return _UNSIGNED_NUMPY[(col.code, tzero)], tuple(col.dims)
    if col.code not in "LX" and (tscal != 1 or tzero):
        return "float64", tuple(col.dims)   # scaled (or another offset): astropy applies it
    return _NUMPY[col.code], tuple(col.dims)


def encoder_field(col: FitsColumn) -> Field:
    """The encoder Field that reads this column from a FITS row block."""
    kind, pgtype = classify(col)
    t = FITS_TYPES[col.code]
    name = col.name                # the FITS name: errors name it; COPY sends pg_name(name)
    vla = (col.offset, DESCRIPTOR_BYTES[col.heap] // 2) if col.heap else None
    offset = col.region if col.heap else col.offset      # a VLA's elements: its region of the block
    if kind in ("text", "utf8"):
        return Field(name, kind, pgtype, offset, col.repeat, 1, col.dims, vla=vla)
    src = t.stored if kind == "scaled" else ""
    return Field(name, kind, pgtype, offset, t.nbytes, col.repeat, col.dims, vla=vla,
                 tzero=col.tzero or 0, tscal=col.tscal if col.tscal is not None else 1.0,
                 tnull=col.tnull, src=src)


#: Tables of at least this many columns store their variable-width columns after the
#: fixed-width ones (``TableSpec.stored_columns``).  The server finds a column in a row at a
#: cached offset only when no variable-width column (or NULL) precedes it; otherwise it
#: walks the row from its start, so reading every column of a row costs columns^2 / 2 steps.
#: ANALYZE reads every column of 30,000 sampled rows that way: FASTSPEC's 887 columns with
#: ``survey`` fourth took 36.9 s on a 2-core machine, 9.5 s stored fixed-width first.
WIDE_TABLE = 100


@dataclass(frozen=True)
class TableSpec:
    """A target table: its columns in order (file_id and row_num first)."""

    name: str
    columns: tuple[PgColumn, ...]
    extra: tuple[PgColumn, ...] = ()     # file-level constant columns (e.g. algorithm, cap)
    key: tuple[str, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    sky: tuple[str, ...] = ()            # (ra, dec) columns of the sky index (column sky.COLUMN)
    distribution: object = None          # config.Distribution on a Citus cluster (None: local)

    @property
    def all_columns(self) -> tuple[PgColumn, ...]:
        head = (PgColumn(FILE_ID, "int8", 0, "key of load_files"),
                PgColumn(ROW_NUM, "int8", 0, "0-based row in the FITS HDU"))
        return head + self.extra + self.columns

    @property
    def stored_columns(self) -> tuple[PgColumn, ...]:
        """The columns in the order the table stores them: ``all_columns``, except that a
        wide table (WIDE_TABLE) keeps its fixed-width columns first, each group in order.
        Everything the loader writes names its columns, so only ``SELECT *`` sees this."""
        cols = self.all_columns
        if len(cols) < WIDE_TABLE:
            return cols
        return tuple(c for c in cols if c.fixed_width) + tuple(c for c in cols if not c.fixed_width)


def union_columns(table: str, sources: Sequence[tuple[str, Sequence[PgColumn]]]) -> tuple[PgColumn, ...]:
    """Union of the columns of several files' HDUs, in first-seen order.

    Parameters
    ----------
    table : str
        Target table name (for messages).
    sources : sequence of (file name, columns)
        Each file's columns for this table.

    Raises
    ------
    SchemaError
        When one column name has incompatible types in two files.
    """
    merged: dict[str, PgColumn] = {}
    origin: dict[str, str] = {}
    order: list[str] = []
    for fname, cols in sources:
        prev_idx = -1
        for col in cols:
            have = merged.get(col.name)
            if have is None:
                merged[col.name] = col
                origin[col.name] = fname
                # insert after the previous column of this file to keep FITS order
                order.insert(prev_idx + 1, col.name)
                prev_idx += 1
                continue
            if (have.pgtype, have.ndims) != (col.pgtype, col.ndims):
                raise SchemaError(
                    f"table {table}: column {col.name!r} is {have.sql_type} in {origin[col.name]} "
                    f"but {col.sql_type} in {fname}; load these files into different tables "
                    "(--prefix) or fix the files")
            prev_idx = order.index(col.name)
            if have.comment is None and col.comment:
                merged[col.name] = replace(have, comment=col.comment)
    return tuple(merged[n] for n in order)


def sky_columns(columns: Sequence[FitsColumn], names: Optional[tuple]) -> Optional[tuple]:
    """The (RA, DEC) FitsColumns named by a preset, when the HDU has both as scalar floats."""
    if not names:
        return None
    by_name = {c.name.upper(): c for c in columns}
    found = [by_name.get(n) for n in names]
    pair = tuple(c for c in found if c is not None)
    if len(pair) != len(found):
        return None
    for c in pair:
        if c.code not in "ED" or c.repeat != 1 or c.tzero or (c.tscal not in (None, 1)):
            raise SchemaError(f"sky column {c.name} is {c.tform}; RA and DEC must be plain float columns "
                              "(E or D) in degrees", "name other columns in the preset's sky.HDU or --sky")
    return pair


def sky_field(pair: tuple) -> Field:
    """The encoder field of the sky pixel: RA's offset and width, DEC's as ``value``."""
    ra, dec = pair
    return Field(SKY_COLUMN, "hpx", "int8", ra.offset, FITS_TYPES[ra.code].nbytes,
                 value=(dec.offset, FITS_TYPES[dec.code].nbytes))


def row_fields(table: TableSpec, hdu_columns: Sequence[FitsColumn],
               constants: dict[str, object], file_id: int, derived: Optional[dict] = None,
               sky: Optional[tuple] = None) -> list[Field]:
    """Encoder fields for one file's HDU(s) loading into ``table`` (absent columns -> NULL).

    ``derived`` maps a column name to (op, source FitsColumn), e.g. ('inv_sqrt', *_IVAR);
    ``sky`` is the (RA, DEC) FitsColumn pair of the sky pixel column, if the table has one.
    """
    by_name = {pg_name(c.name): c for c in hdu_columns}
    derived = derived or {}
    fields = [Field(FILE_ID, "const", "int8", value=file_id), Field(ROW_NUM, "rownum", "int8")]
    for col in table.extra:
        fields.append(Field(col.name, "const", col.pgtype, value=constants.get(col.name)))
    for col in table.columns:
        src = by_name.get(col.name)
        if col.name == SKY_COLUMN:
            fields.append(sky_field(sky) if sky else Field(col.name, "null"))
        elif col.name in derived:
            op, dsrc = derived[col.name]
            if dsrc.code != "E" or dsrc.repeat != 1:
                raise SchemaError(f"derived column {col.name}: {op} needs a scalar float32 source, "
                                  f"{dsrc.name} is {dsrc.tform}")
            fields.append(Field(col.name, "derived", "float4", dsrc.offset, 4, value=op))
        else:
            fields.append(encoder_field(src) if src is not None else Field(col.name, "null"))
    return fields
