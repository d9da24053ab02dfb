"""Query results as astropy Tables, each column as its FITS file had it.

A column the loader published comes back with the numpy dtype astropy gives the FITS
column (real stays float32, an unsigned TZERO column comes back unsigned, bits and
logicals as bool, complex as complex, fixed arrays with their shape, variable-length
arrays as object columns of 1-D arrays), its unit and its description (the ledger's
``loader_columns``, written when the table was published).  Any other column (computed,
a join's expression, a table the loader did not publish) gets the dtype of its PostgreSQL
type (text: an object column of str), and unit and description from the column comment
when it has one.  NULL becomes a masked value.

Rows come through a server-side cursor in chunks (``iter_tables``), so a result larger
than memory can be written out chunk by chunk (export.py).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence, TYPE_CHECKING

import numpy as np
import psycopg2

from ..catalog.columns import column_sources
from .. import units
from ..db import connect
from ..errors import QueryError, UsageError, with_hint
from ..fits.columns import FitsSource, pg_name
from ..servers import embedded
from .sqlerrors import explain_sql_error

if TYPE_CHECKING:
    from astropy.table import Table

    from ..db import Connection, Cursor

#: rows per chunk of a server-side cursor: a few MB of a wide table
CHUNK_ROWS = 50_000

#: numpy dtype of a PostgreSQL type without a FITS source
PG_NUMPY = {"bool": "bool", "int2": "int16", "int4": "int32", "int8": "int64", "oid": "int64",
            "float4": "float32", "float8": "float64", "numeric": "float64"}


@dataclass(frozen=True)
class ResultColumn:
    """One column of a result: its name, PostgreSQL element type and where it came from."""

    name: str
    pgtype: str                       # element type name (int2, float4, text, ...)
    array: bool                       # a PostgreSQL array
    source: Optional[FitsSource] = None
    unit: Optional[str] = None
    description: Optional[str] = None


def describe(cur: Cursor, description) -> list[ResultColumn]:
    """The result's columns (``cursor.description``), with the FITS sources of the published
    columns they select."""
    oids = sorted({d.type_code for d in description})
    cur.execute("SELECT t.oid, CASE WHEN t.typcategory = 'A' THEN e.typname ELSE t.typname END, "
                "t.typcategory = 'A' FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem "
                "WHERE t.oid = ANY(%s)", (oids,))
    types = {oid: (name, bool(is_array)) for oid, name, is_array in cur.fetchall()}
    origins = _origins(cur, [(d.table_oid, d.table_column) for d in description if d.table_oid])
    out = []
    for d in description:
        pgtype, array = types.get(d.type_code, ("text", False))
        source = unit = desc = None
        origin = origins.get((d.table_oid, d.table_column))
        if origin is not None:
            source, comment = origin
            unit, desc = (source.unit, source.description) if source else _parse_comment(comment)
        out.append(ResultColumn(d.name, pgtype, array, source, unit, desc))
    return out


def _origins(cur: Cursor, columns: Sequence[tuple]) -> dict:
    """(table oid, attnum) -> (FitsSource or None, column comment) of the selected table columns."""
    if not columns:
        return {}
    cur.execute("SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname, col_description(c.oid, a.attnum) "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE (a.attrelid, a.attnum) IN (SELECT * FROM unnest(%s::oid[], "
                "%s::int2[]))", ([c[0] for c in columns], [c[1] for c in columns]))
    rows = cur.fetchall()
    sources: dict = {}
    out = {}
    for oid, attnum, schema, table, column, comment in rows:
        if (schema, table) not in sources:
            sources[(schema, table)] = column_sources(cur, schema, table)
        out[(oid, attnum)] = (sources[(schema, table)].get(column), comment)
    return out


_UNIT = re.compile(r"^(.*?)\s*\[([^\]]*)\]\s*$")


def _parse_comment(comment: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(unit, description) of a column comment the loader wrote ('description [unit]')."""
    if not comment:
        return None, None
    m = _UNIT.match(comment)
    if m:
        return m.group(2) or None, m.group(1) or None
    return None, comment


def iter_tables(conn: Connection, query: str, params=None, chunk_rows: int = CHUNK_ROWS,
                fits_names: bool = False, units_of: Optional[dict] = None) -> Iterator[Table]:
    """The result of ``query`` (a SELECT, VALUES or WITH ... SELECT) as astropy Tables of at
    most ``chunk_rows`` rows each, read through a server-side cursor: at least one Table
    (empty when the result is).  ``fits_names``: published columns named as in their file;
    ``units_of``: {column: FITS unit string} of computed columns (a cone's ``dist``)."""
    with conn.cursor(name=f"desi_loader_{uuid.uuid4().hex[:12]}") as cur:
        cur.itersize = chunk_rows
        cur.execute(query, params)
        rows = cur.fetchmany(chunk_rows)
        with conn.cursor() as meta:
            computed = units_of or {}
            cols = [c if c.unit or c.name not in computed else replace(c, unit=computed[c.name])
                    for c in describe(meta, cur.description)]
        yield to_table(cols, rows, fits_names)
        while len(rows) == chunk_rows:
            rows = cur.fetchmany(chunk_rows)
            if not rows:
                break
            yield to_table(cols, rows, fits_names)
    conn.commit()


def to_table(cols: list[ResultColumn], rows: list, fits_names: bool = False) -> Table:
    """An astropy Table of ``rows`` (tuples as psycopg2 returns them) for ``cols``."""
    from astropy.table import Column, MaskedColumn, Table   # here: astropy takes 0.3 s to import
    table = Table()
    names = result_names(cols, fits_names)
    columns: list = list(zip(*rows)) if rows else [()] * len(cols)      # one transpose, in C
    for col, name, values in zip(cols, names, columns):
        data, mask = _column_data(col, values)
        kind = MaskedColumn if mask is not None and mask.any() else Column
        kw = {"mask": mask} if kind is MaskedColumn else {}
        meta = {}
        if col.source is not None:           # as the file has them: TNULL, and TUNIT as written
            meta = {k: v for k, v in (("tnull", col.source.null), ("tunit", col.source.unit)) if v is not None}
        if col.unit and "tunit" not in meta:
            meta["tunit"] = col.unit            # the string every export translates (desi_loader.units)
        table[name] = kind(data, name=name, unit=units.astropy_unit(col.unit), description=col.description,
                           meta=meta, **kw)
    return table


def result_names(cols: list[ResultColumn], fits_names: bool) -> list[str]:
    """The result's column names: a published column as in its file (``fits_names``), a
    repeated name numbered (a join's second "ra": ra_2)."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for c in cols:
        name = c.source.name if fits_names and c.source is not None and c.name == pg_name(c.source.name) else c.name
        n = seen.get(name, 0)
        seen[name] = n + 1
        names.append(name if n == 0 else f"{name}_{n + 1}")    # a join's second "ra": ra_2
    return names


def _column_data(col: ResultColumn, values: list) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(data, mask or None) of one column's values."""
    src = col.source
    n = len(values)
    if src is not None and src.vla:
        data = np.empty(n, object)
        base = np.dtype(src.dtype)
        null = physical(base, src.null) if src.null is not None and base.kind in "iu" else _zero(base)
        for i, v in enumerate(values):
            data[i] = cell = np.array([] if v is None else [null if x is None else x for x in v], dtype=base)
            if v is not None and None in v:       # a NULL element: masked, holding what the file holds
                data[i] = np.ma.MaskedArray(cell, mask=[x is None for x in v])
        return data, None
    dtype = np.dtype(src.dtype) if src is not None else None
    shape = tuple(src.shape) if src is not None else None
    if col.array:
        return _array_data(col, values, dtype, shape)
    if dtype is None:
        dtype = _scalar_dtype(col)
    if None not in values and (dtype.kind in "fb" or (dtype.kind in "iu" and col.pgtype != "numeric")):
        return _as(values, dtype, (n,)), None     # the common case: no NULL, numpy converts in C
    mask = np.array([v is None for v in values], bool)
    null = _zero(dtype)
    if src is not None and src.null is not None and dtype.kind in "iu":
        null = physical(dtype, src.null)          # masked values hold what the file holds
    if dtype == object:
        null = ""
        values = [v if v is None or isinstance(v, str) else str(v) for v in values]
    filled = [null if v is None else v for v in values]
    return _as(filled, dtype, (n,)), (mask if mask.any() else None)


def physical(dtype: np.dtype, stored: int) -> int:
    """A stored integer as the column's value: unsigned 16-64 bit and signed 8-bit integers
    are stored with a TZERO offset (TNULL applies to the stored value)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u" and dtype.itemsize > 1:
        return stored + 2 ** (8 * dtype.itemsize - 1)
    if dtype.kind == "i" and dtype.itemsize == 1:
        return stored - 128
    return stored


def stored(dtype: np.dtype, value: int) -> int:
    """The inverse of ``physical``."""
    return value - physical(dtype, 0)


def _scalar_dtype(col: ResultColumn) -> np.dtype:
    """A type without a FITS source: its numpy dtype; text (and anything else) an object
    column of str, since no width is known before the last row has arrived."""
    return np.dtype(PG_NUMPY.get(col.pgtype, "object"))


def _array_data(col: ResultColumn, values: list, dtype: Optional[np.dtype],
                shape: Optional[tuple]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Fixed arrays (with the FITS shape, or the shape of the values when they all agree)."""
    complex_ = dtype is not None and dtype.kind == "c"
    elem = np.dtype(PG_NUMPY.get(col.pgtype, "object")) if dtype is None else (
        np.dtype(f"f{dtype.itemsize // 2}") if complex_ else dtype)
    if shape is None:
        shapes = {np.shape(v) for v in values if v is not None}
        if len(shapes) != 1:                      # ragged or all NULL: an object column
            data = np.empty(len(values), object)
            for i, v in enumerate(values):
                data[i] = None if v is None else np.array(_fill(v, elem), dtype=elem if elem != object else None)
            return data, None
        shape = shapes.pop()
        if elem == object:
            elem = np.dtype(f"<U{max(1, max(len(str(x)) for v in values if v is not None for x in np.ravel(v)))}")
    cell = shape + (2,) if complex_ else shape
    n = len(values)
    flat = np.zeros((n,) + cell, dtype=elem)
    mask = np.zeros((n,) + cell, bool)
    for i, v in enumerate(values):
        if v is None:
            mask[i] = True
            continue
        arr = np.array(v, dtype=object)
        nulls = np.equal(arr, None)     # type: ignore[call-overload]  # elementwise; numpy's stubs lack None
        if nulls.any():
            mask[i] = nulls.reshape(cell)
            arr = np.where(nulls, _zero(elem), arr)
        flat[i] = _as(arr.ravel().tolist(), elem, cell)
    if complex_ and dtype is not None:
        flat = np.ascontiguousarray(flat).view(dtype).reshape((n,) + shape)
        mask = mask[..., 0]
    return flat, (mask if mask.any() else None)


def _as(values: list, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """values (Python ints, floats, Decimals, strs) as an exact array of ``dtype``."""
    if dtype.kind == "f":
        return np.array(values, np.float64).astype(dtype).reshape(shape)   # float4 text is exact via double
    if dtype.kind in "iu":
        if not all(type(v) is int for v in values):                       # Decimal of numeric(20)
            values = [int(v) for v in values]
        return np.array(values, dtype).reshape(shape)
    if dtype == object:
        out = np.empty(len(values), object)
        out[:] = values
        return out.reshape(shape)
    return np.array(values, dtype).reshape(shape)


def _fill(v, dtype: np.dtype) -> list:
    return [_zero(dtype) if x is None else x for x in v]


def _zero(dtype):
    """What a NULL holds under its mask: NaN for floats (as FITS has it), else zero, False, ''."""
    dtype = np.dtype(dtype)
    return {"U": "", "b": False, "f": float("nan"), "c": float("nan")}.get(dtype.kind, 0)


def query(sql: str, params=None, *, dsn: Optional[str] = None, fits_names: bool = False,
          chunk_rows: int = CHUNK_ROWS, start: bool = False) -> Table:
    """Run a query and return its result as one astropy Table.

    Each column the loader published comes back as its FITS file had it: ``real`` as
    float32, an unsigned column the loader widened as unsigned again, logicals as bool,
    fixed arrays with their shape, with the file's unit and description.  Computed columns
    get the dtype of their PostgreSQL type.  NULL is a masked value.

    Parameters
    ----------
    sql : str
        One SQL statement that returns rows (``SELECT``, ``VALUES``, ``WITH ... SELECT``).
    params : sequence or dict, optional
        Values for ``%s`` or ``%(name)s`` placeholders in ``sql``, passed to the server
        separately (psycopg2's parameters).
    dsn : str, optional
        The database: a libpq connection string or URI.  By default the one the command line
        would use: ``DESI_LOADER_DSN``, the configuration file, libpq's environment, else the
        embedded server.
    fits_names : bool, optional
        Name published columns as in their FITS file (``TARGETID``, not ``targetid``).
    chunk_rows : int, optional
        Rows fetched per round trip through a server-side cursor.
    start : bool, optional
        Start the embedded server when it is the target and is stopped.  By default a query,
        like ``desi-loader sql``, neither creates nor starts a server.

    Returns
    -------
    astropy.table.Table
        The rows, with units and descriptions in the columns.

    Raises
    ------
    desi_loader.errors.QueryError
        The server refused the query (the message shows where and what to write instead), or
        there is no server to query (the message says how to start one).
    desi_loader.errors.DatabaseError
        The database cannot be reached.

    Examples
    --------
    >>> from desi_loader import query
    >>> t = query("SELECT targetid, z FROM desi_dr1.fastspecfit_metadata LIMIT 5")  # doctest: +SKIP
    """
    conn = connect(dsn if dsn is not None else default_dsn(start))
    try:
        chunks = list(iter_tables(conn, sql, params, chunk_rows, fits_names))
    except psycopg2.Error as exc:           # the API's error names what to write instead, in its message
        conn.rollback()
        raise with_hint(explain_sql_error(exc, sql, conn.cursor())) from exc
    finally:
        conn.close()
    from astropy.table import vstack
    return chunks[0] if len(chunks) == 1 else vstack(chunks, join_type="exact", metadata_conflicts="silent")


def default_dsn(start: bool = False) -> str:
    """The database the command line would use.  The embedded server is started only when
    ``start`` (a load); otherwise a stopped or missing one raises QueryError with the hint."""
    try:
        return embedded.target(start_server=start)
    except UsageError as exc:
        raise with_hint(QueryError(str(exc), exc.hint)) from None
