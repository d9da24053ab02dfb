"""A query's result as a HATS catalog for LSDB: Parquet by hats-import, with a margin cache.

The rows arrive in Arrow batches read by ADBC's PostgreSQL driver (``arrow_chunks``; without
it, the astropy chunks of tables.iter_tables) and are written as Parquet files of about
FILE_ROWS rows each, every column with its exact Arrow type (float32 stays float32, an
unsigned column unsigned, int64 exact, fixed arrays as fixed-size lists of their shape,
variable-length arrays as lists, NULL as null) and its unit and description in the field's
metadata.  hats-import (the reference implementation) then partitions them by HEALPix pixel
into a collection: the catalog and its margin cache (``margin`` arcseconds, so LSDB's
cross-match is complete at partition edges), with ``hats.properties``, ``_metadata`` and
the skymap; the Arrow schema (units and descriptions included) is handed to it as its schema
file, so the partitions keep it.  hats-import is a map-reduce over the Parquet files on a
local Dask cluster of ``workers`` threads, so a result larger than memory exports.  The
collection is built beside ``path`` and renamed into place when complete.

The loader's own columns (file_id, row_num and the sky pixel hpx29) are left out: a HATS
catalog has its own pixel (_healpix_29, computed by hats-import; a _healpix_29 in the
result, as from a loaded HATS catalog, is computed again) and a load of it gets new ones.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import urllib.parse
import warnings
from typing import Any, Iterable, Iterator, Optional, TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..fits.arrow import pyarrow
from ..fits.columns import FILE_ID, ROW_NUM
from ..sky import COLUMN as SKY_COLUMN
from .tables import describe, iter_tables, result_names

if TYPE_CHECKING:
    from astropy.table import Table

#: rows per intermediate Parquet file (hats-import maps over them)
FILE_ROWS = 500_000
#: the largest partition hats-import makes, in bytes (LSDB reads one partition per task)
PARTITION_BYTES = 256 << 20
#: the finest partitions (order 8: 0.05 deg2, 256 MB of a catalog of 5 GB per deg2); hats-import's
#: default of 10 costs about 10 s of histogram sums before the first partition, whatever the size
HIGHEST_ORDER = 8
#: the margin cache's width by default: pairs up to this separation are found at partition edges
MARGIN_ARCSEC = 10.0
#: columns left out: the loader's own, and HATS's pixel (hats-import computes it again)
LOADER_COLUMNS = (FILE_ID, ROW_NUM, SKY_COLUMN, "_healpix_29")


def hats_modules() -> tuple:
    """(CollectionArguments, pipeline_with_client, dask Client), or a UsageError naming the extra."""
    try:
        from dask.distributed import Client
        from hats_import.collection.arguments import CollectionArguments
        from hats_import.pipeline import pipeline_with_client
    except ImportError as exc:
        raise UsageError("writing HATS catalogs needs hats-import, which is not installed",
                         "pip install 'desi-loader[hats]'") from exc
    return CollectionArguments, pipeline_with_client, Client


def sky_of(names: list, sky: Optional[str]) -> tuple[str, str]:
    """The (RA, DEC) columns of a result: ``--sky RA,DEC``, else the columns named ra and dec."""
    lower = {n.lower(): n for n in names}
    if sky:
        pair = [s.strip() for s in sky.split(",") if s.strip()]
        if len(pair) != 2:
            raise UsageError(f"--sky {sky!r}: expected two columns, RA then DEC", "e.g. --sky ra,dec")
        missing = [s for s in pair if s.lower() not in lower]
        if missing:
            raise UsageError(f"--sky names {', '.join(missing)}, which the result does not have",
                             f"its columns: {', '.join(names)}")
        return lower[pair[0].lower()], lower[pair[1].lower()]
    for ra, dec in (("ra", "dec"), ("target_ra", "target_dec"), ("ra_deg", "dec_deg")):
        if ra in lower and dec in lower:
            return lower[ra], lower[dec]
    raise UsageError("a HATS catalog is partitioned by position, and the result has no ra and dec columns",
                     "select them, or name the position columns with --sky RA,DEC")


def arrow_table(table: "Table", pa: Any, skip: tuple = ()) -> Any:
    """An astropy Table (a query's chunk) as an Arrow table: exact types, masks as nulls,
    units and descriptions in each field's metadata."""
    arrays, fields = [], []
    for name in table.colnames:
        if name.lower() in skip:
            continue
        col = table[name]
        arr = _arrow_column(pa, name, col)
        meta = {}
        unit = (col.meta or {}).get("tunit") or (str(col.unit) if col.unit is not None else None)
        if unit:
            meta[b"unit"] = str(unit).encode()          # the FITS unit as the file wrote it
        if col.description:
            meta[b"description"] = str(col.description).encode()
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, metadata=meta or None))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _arrow_column(pa: Any, name: str, col: Any) -> Any:
    data = np.asarray(col)
    mask = np.asarray(col.mask) if hasattr(col, "mask") else None
    if mask is not None and not mask.any():
        mask = None
    if data.dtype.kind == "c":
        raise UsageError(f"column {name} is complex, which Arrow cannot hold",
                         f"select its parts: real({name}) and imag({name}) as two columns")
    if data.dtype.kind in "US" or data.dtype == object and (len(data) == 0 or isinstance(
            next((v for v in data if v is not None and v is not np.ma.masked), ""), str)):
        values = [None if (mask is not None and (mask[i] if mask.ndim == 1 else mask[i].all())) else
                  (v.decode() if isinstance(v, bytes) else str(v)) for i, v in enumerate(data)]
        return pa.array(values, pa.string())
    if data.dtype == object:                          # variable-length arrays: lists
        cells = [None if v is None or v is np.ma.masked else np.ma.asarray(v) for v in data]
        first = next((c for c in cells if c is not None and c.size), None)
        elem = pa.from_numpy_dtype(first.dtype) if first is not None else pa.float64()
        return pa.array([None if c is None else np.ma.MaskedArray(c).tolist(None) for c in cells], pa.list_(elem))
    row_mask = mask.reshape(len(data), -1).all(axis=1) if mask is not None and data.ndim > 1 else mask
    flat = data.reshape(-1)
    elem_mask = mask.reshape(-1) if mask is not None else None
    arr = pa.array(flat, pa.from_numpy_dtype(data.dtype), mask=elem_mask)
    for size in reversed(data.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    if data.ndim > 1 and row_mask is not None and row_mask.any():
        arr = pa.array(arr.to_pylist(), arr.type, mask=row_mask)      # an all-NULL cell: a NULL array
    return arr


def write_hats(chunks: Iterable[Any], path: str, sky: Optional[str] = None, margin: float = MARGIN_ARCSEC,
               workers: int = 1, partition_bytes: int = PARTITION_BYTES) -> tuple[int, int]:
    """Write a query's chunks (Arrow tables, or astropy Tables) as a HATS collection at
    ``path`` (a directory); returns (rows, bytes) written."""
    pa = pyarrow()
    CollectionArguments, pipeline_with_client, Client = hats_modules()
    if os.path.exists(path):
        raise UsageError(f"--output {path} exists", "remove it, or name a new directory")
    name = os.path.basename(os.path.normpath(path))
    work = os.path.join(os.path.dirname(os.path.abspath(path)), f".{name}.part{os.getpid()}")
    os.makedirs(os.path.join(work, "input"))
    try:
        inputs, schema, pair, rows = _write_inputs(chunks, os.path.join(work, "input"), pa, sky)
        if not rows:
            raise UsageError("the query returned no rows: a HATS catalog needs at least one",
                             "check the query's WHERE clause")
        schema_file = os.path.join(work, "schema.parquet")
        pa.parquet.write_metadata(schema, schema_file)
        args = (CollectionArguments(output_artifact_name=name, output_path=os.path.join(work, "out"),
                                    tmp_dir=os.path.join(work, "tmp"), progress_bar=False, resume=False)
                .catalog(input_file_list=inputs, file_reader="parquet", ra_column=pair[0], dec_column=pair[1],
                         use_schema_file=schema_file, byte_pixel_threshold=partition_bytes,
                         highest_healpix_order=HIGHEST_ORDER,
                         expected_total_rows=rows)
                .add_margin(margin_threshold=margin, is_default=True,
                            output_artifact_name=f"{name}_{_arcsec(margin)}"))
        with _quiet(), Client(n_workers=max(1, workers), threads_per_worker=1, processes=False,
                              dashboard_address=None) as client:
            pipeline_with_client(args, client)
        built = os.path.join(work, "out", name)
        for catalog in (name, f"{name}_{_arcsec(margin)}"):
            _keep_field_metadata(pa, os.path.join(built, catalog, "dataset"), schema)
        os.replace(built, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _arcsec(margin: float) -> str:
    """The margin catalog's name suffix (10 -> '10arcs', 2.5 -> '2p5arcs')."""
    return f"{margin:g}arcs".replace(".", "p")


def _keep_field_metadata(pa: Any, dataset: str, schema: Any) -> None:
    """Put each column's unit and description into the catalog's _common_metadata (the
    partitions keep them; the collection's finalize writes the schema without them)."""
    path = os.path.join(dataset, "_common_metadata")
    if not os.path.isfile(path):
        return
    have = pa.parquet.read_schema(path)
    fields = [f.with_metadata(schema.field(f.name).metadata) if f.name in schema.names and
              schema.field(f.name).metadata else f for f in have]
    pa.parquet.write_metadata(pa.schema(fields, metadata=have.metadata), path)


def arrow_chunks(conn: Any, query: str, units_of: Optional[dict] = None) -> Iterator[Any]:
    """A query's result as Arrow tables (a record batch each) with each column's exact type,
    unit and description: ADBC's PostgreSQL driver reads it (binary COPY into Arrow, in C++:
    about 5x psycopg2's rows through astropy), the columns' FITS sources come from the
    loader's ledger (tables.describe).  Without ADBC: the astropy chunks of tables.iter_tables, which
    write_hats turns into Arrow."""
    pa = pyarrow()
    try:
        import adbc_driver_postgresql.dbapi as adbc
    except ImportError:
        yield from iter_tables(conn, query, units_of=units_of)
        return
    text = query.strip().rstrip(";")
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM ({text}) AS desi_loader_result LIMIT 0")
        cols = describe(cur, cur.description)
    conn.rollback()
    computed = units_of or {}
    names = result_names(cols, False)               # as query() names them: a join's second "ra" is ra_2
    with adbc.connect(_uri(conn)) as aconn, aconn.cursor() as acur:
        acur.execute(text)
        for batch in acur.fetch_record_batch():
            arrays, fields = [], []
            for i, (col, name) in enumerate(zip(cols, names)):
                if name.lower() in LOADER_COLUMNS:
                    continue
                arr = _exact(pa, batch.column(i), col)
                unit = (col.source.unit if col.source else col.unit) or computed.get(col.name)
                meta = {k: v.encode() for k, v in (("unit", unit), ("description", col.description)) if v}
                arrays.append(arr)
                fields.append(pa.field(name, arr.type, metadata=meta or None))
            yield pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _uri(conn: Any) -> str:
    """A libpq URI of the psycopg2 connection's server, role and database (the password too:
    ADBC opens a connection of its own)."""
    params = {**conn.info.dsn_parameters, "password": conn.info.password}
    keep = ("host", "hostaddr", "port", "user", "password", "dbname", "sslmode", "sslcert", "sslkey",
            "sslrootcert", "application_name", "options", "gssencmode", "target_session_attrs")
    return "postgresql:///?" + urllib.parse.urlencode({k: v for k, v in params.items() if v and k in keep})


def _exact(pa: Any, arr: Any, col: Any) -> Any:
    """An ADBC column as the loaded FITS column was: its numpy dtype as Arrow type, fixed
    arrays as fixed-size lists of their shape (PostgreSQL sends them flat), numeric(20)
    as uint64."""
    src = col.source
    if src is None:
        return arr
    dt = np.dtype(src.dtype)
    if dt.kind == "c":
        raise UsageError(f"column {col.name} is complex, which Arrow cannot hold",
                         f"select its parts: {col.name}[1:][1] and {col.name}[1:][2] as two columns")
    elem = pa.string() if dt.kind in "US" else pa.from_numpy_dtype(dt)
    if src.vla:
        return arr.cast(pa.list_(elem))
    if not src.shape:
        return arr.cast(elem)
    size = int(np.prod(src.shape))
    lengths = pa.compute.list_value_length(arr).to_numpy(zero_copy_only=False)
    if arr.null_count or (lengths != size).any():
        return arr.cast(pa.list_(elem))                   # not the file's shape: as PostgreSQL has it
    values = pa.compute.list_flatten(arr).cast(elem)
    for n in reversed(src.shape):
        values = pa.FixedSizeListArray.from_arrays(values, n)
    return values


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Dask's and hats-import's INFO lines kept off the terminal (their errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("distributed", "dask", "hats", "hats_import", "tornado", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _write_inputs(chunks: Iterable[Any], folder: str, pa: Any, sky: Optional[str]) -> tuple[list, Any, tuple, int]:
    """The chunks as Parquet files of about FILE_ROWS rows: (their paths, the schema, the
    (RA, DEC) columns, the rows written)."""
    files: list = []
    writer, schema, pair, in_file, rows = None, None, ("", ""), 0, 0
    try:
        for chunk in chunks:
            t = chunk if isinstance(chunk, pa.Table) else arrow_table(chunk, pa, LOADER_COLUMNS)
            if schema is None:
                schema, pair = t.schema, sky_of(t.column_names, sky)
            else:
                t = t.cast(schema)
            if writer is None or in_file >= FILE_ROWS:
                if writer is not None:
                    writer.close()
                files.append(os.path.join(folder, f"part{len(files):05d}.parquet"))
                writer, in_file = pa.parquet.ParquetWriter(files[-1], schema), 0
            writer.write_table(t)
            in_file += t.num_rows
            rows += t.num_rows
    finally:
        if writer is not None:
            writer.close()
    return files, schema, pair, rows
