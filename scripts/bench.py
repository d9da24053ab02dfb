#!/usr/bin/env python
"""Benchmark desi-loader against the server's ceiling and the usual alternatives, in one run.

    python scripts/bench.py                       # embedded server, default sizes
    python scripts/bench.py --dsn postgresql://me@dbhost/desi --workers 16 --rows 20000

On sample FastSpecFit files (all columns of METADATA, SPECPHOT, FASTSPEC) it measures,
against one server, rows/s (a row = one galaxy: its row in each of the three tables)
and MB/s (FITS bytes):

- ceiling: the same rows pre-encoded as binary COPY, loaded by server-side
  ``COPY ... FROM 'file'`` with 1 and W backends (COPY FROM STDIN of in-memory bytes
  when the server is not local or the role may not read server files); text too;
- desi-loader, binary and text, workers 1..W: copy phase and whole load;
- the original scripts' approach: astropy -> pandas -> to_csv(StringIO) -> copy_expert;
- pandas.to_sql, method=None and method="multi", on a capped subset;
- the original FastSpecFit script's 12-column table: its approach vs desi-loader's preset;
- cost growth with file size and per-file overhead; peak memory on a large file.

Everything goes into UNLOGGED tables in throw-away schemas.  Prints a table, writes
bench-out/bench.json and bench-out/bench.png.  Needs the bench extra:
``pip install -e '.[bench]'``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from desi_loader.servers import embedded as server  # noqa: E402
from desi_loader.fits.config import load_settings  # noqa: E402
from desi_loader.db import connect, mask_dsn, server_settings  # noqa: E402
from desi_loader.fits.discover import build_plan  # noqa: E402
from desi_loader.pipeline.encodings import encoder_plan  # noqa: E402
from desi_loader.encode import BINARY_HEADER, BINARY_TRAILER, encode_block  # noqa: E402
from desi_loader.fits.read import read_info, read_rows  # noqa: E402
from desi_loader import api  # noqa: E402
from desi_loader.control.run import LoadOptions  # noqa: E402
from desi_loader.samples.fastspecfit import write_fastspecfit_file  # noqa: E402
from desi_loader.control.sqlgen import create_staging  # noqa: E402
from psycopg2 import sql  # noqa: E402
from desi_loader.control.worker import keep_freed_memory  # noqa: E402

MAIN = "fastspec-iron-main-bright-nside1-hp{:02d}.fits"
HDUS = ("METADATA", "SPECPHOT", "FASTSPEC")


# --------------------------------------------------------------------------- data

def make_files(directory: Path, nfiles: int, nrows: int) -> list:
    """Sample FastSpecFit files (cached by size)."""
    d = directory / f"fsf-{nfiles}x{nrows}"
    if not (d / ".complete").exists():
        d.mkdir(parents=True, exist_ok=True)
        for i in range(nfiles):
            real = MAIN.format(i % 12)
            name = real if i < 12 else real.replace(".fits", f"-copy{i // 12}.fits")
            write_fastspecfit_file(str(d / name), nrows, seed=100 + i, like=real)
        (d / ".complete").touch()
    return sorted(str(p) for p in d.glob("*.fits"))


def fits_bytes(files) -> int:
    return sum(os.path.getsize(f) for f in files)


def galaxies(files) -> int:
    return sum(read_info(f).hdu("METADATA").nrows for f in files)


# --------------------------------------------------------------------------- schema helpers

def file_rows(dsn: str, schema: str, table: str, files):
    """``table``'s rows in ``files`` as loaded into ``schema`` (pipeline/sample.FileRows: by the
    file_ids the load gave them), for the loader's statistics read from the files."""
    from desi_loader.pipeline import sample
    conn = connect(dsn)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT filename, file_id FROM {}.load_files").format(sql.Identifier(schema)))
        ids = dict(cur.fetchall())
    conn.close()
    return sample.file_rows(plan_for(files), ids)[table]


def fresh_schema(dsn: str, name: str) -> None:
    conn = connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE; CREATE SCHEMA "{name}"')
    conn.close()


def plan_for(files, catalog="fastspecfit", schema="bench"):
    return build_plan([read_info(f) for f in files], load_settings().catalogs[catalog], schema)


def encodings(plan) -> dict:
    """The workers' encodings of every file (file ids 1, 2, ...), staging = published names."""
    return encoder_plan(plan, {t: t for t in plan.tables},
                        {fp.info.name: i for i, fp in enumerate(plan.files, start=1)})


def create_tables(dsn: str, schema: str, plan) -> None:
    fresh_schema(dsn, schema)
    conn = connect(dsn)
    with conn.cursor() as cur:
        for t, spec in plan.tables.items():
            for stmt in create_staging(schema, t, spec):
                cur.execute(stmt)
    conn.commit()
    conn.close()


# --------------------------------------------------------------------------- ceiling

CHUNK_ROWS = 2000


def pre_encode(files, fmt: str, outdir: Path) -> list:
    """(table, path of a COPY file) chunks, encoded by desi-loader's encoder."""
    plan = plan_for(files)
    enc = encodings(plan)
    chunks = []
    for i, fp in enumerate(plan.files, start=1):
        path = enc[fp.info.name].path
        for table, te in enc[fp.info.name].tables.items():
            h, fields = te.hdus[0], te.fields
            for s in range(0, h.nrows, CHUNK_ROWS):
                e = min(s + CHUNK_ROWS, h.nrows)
                data = encode_block(read_rows(path, h, s, e), fields, fmt, s)
                if fmt == "binary":
                    data = BINARY_HEADER + data + BINARY_TRAILER
                out = outdir / f"{i}-{table}-{s}.{fmt}"
                out.write_bytes(data)
                os.chmod(out, 0o644)
                chunks.append((table, str(out), [f.name.lower() for f in fields]))
    return plan, chunks


def encode_seconds(files, fmt: str) -> float:
    """CPU seconds to read and encode every row of ``files`` in ``fmt``, in 1 MB blocks, one core."""
    from desi_loader.pipeline.stream import BLOCK_BYTES
    plan = plan_for(files)
    enc = encodings(plan)
    t0 = time.process_time()
    for fp in plan.files:
        e = enc[fp.info.name]
        for te in e.tables.values():
            h = te.hdus[0]
            step = max(1, BLOCK_BYTES // h.row_bytes)
            for s in range(0, h.nrows, step):
                encode_block(read_rows(e.path, h, s, min(s + step, h.nrows)), te.fields, fmt, s)
    return time.process_time() - t0


def can_read_server_files(dsn: str) -> bool:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper OR pg_has_role(current_user, 'pg_read_server_files', 'member') "
                        "FROM pg_roles WHERE rolname = current_user")
            ok = cur.fetchone()[0]
            cur.execute("SELECT inet_server_addr()")
            local = cur.fetchone()[0] in (None, "127.0.0.1", "::1")
        return bool(ok and local)
    finally:
        conn.close()


def ceiling(dsn: str, plan, chunks, fmt: str, backends: int, server_side: bool, data_dir=None) -> tuple:
    """(seconds, server CPU seconds or None) to COPY all pre-encoded chunks with ``backends``
    concurrent connections; the server's CPU is measured when its data directory is here."""
    create_tables(dsn, "bench_ceiling", plan)
    parts = [chunks[i::backends] for i in range(backends)]
    conns = [connect(dsn) for _ in range(backends)]
    payload = {} if server_side else {c[1]: Path(c[1]).read_bytes() for c in chunks}

    def run(conn, mine):
        with conn.cursor() as cur:
            for table, path, cols in mine:
                collist = ", ".join(f'"{c}"' for c in cols)
                if server_side:
                    cur.execute(f"COPY bench_ceiling.{table} ({collist}) FROM %s WITH (FORMAT {fmt})", (path,))
                else:
                    cur.copy_expert(f"COPY bench_ceiling.{table} ({collist}) FROM STDIN WITH (FORMAT {fmt})",
                                    io.BytesIO(payload[path]))
        conn.commit()

    threads = [threading.Thread(target=run, args=(c, m)) for c, m in zip(conns, parts)]
    cpu0 = server_cpu(data_dir) if data_dir else None
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    cpu = server_cpu(data_dir) - cpu0 if data_dir else None
    for c in conns:
        c.close()
    return secs, cpu


# --------------------------------------------------------------------------- desi-loader

def loader(dsn: str, files, fmt: str, workers: int, catalog=None) -> dict:
    schema = "bench_loader"
    fresh_schema(dsn, schema)
    # UNLOGGED staging, as the ceiling's tables: the copy phase compares like with like (the
    # whole-load section measures the durable paths)
    opts = LoadOptions(paths=tuple(files), dsn=dsn, schema=schema, workers=workers, fmt=fmt, catalog=catalog,
                       staging_mode="unlogged")
    t0 = time.perf_counter()
    (summary,) = api.run(opts, dsn=dsn)       # as the command runs it: its workers started while it plans
    whole = time.perf_counter() - t0
    return {"copy": summary.phases["copy"], "copy_stream": summary.phases.get("copy_stream"),
            "whole": whole, "phases": summary.phases, "memory": summary.memory, "cpu": summary.cpu}


# --------------------------------------------------------------------------- the alternatives

def _frame(path: str, hdu: str, columns=None):
    """astropy Table -> pandas DataFrame, the array column split as the original scripts must."""
    from astropy.table import Table
    t = Table.read(path, hdu=hdu, format="fits", character_as_bytes=False)
    if columns is not None:
        t = t[columns]
    for name in list(t.colnames):
        if t[name].ndim > 1:
            for i in range(t[name].shape[1]):
                t[f"{name}_{i}"] = t[name][:, i]
            t.remove_column(name)
    return t.to_pandas()


def pandas_csv(dsn: str, files, limit=None) -> tuple[float, int]:
    """astropy -> pandas -> to_csv(StringIO) -> copy_expert: seconds and galaxies loaded."""
    fresh_schema(dsn, "bench_pandas")
    conn = connect(dsn)
    created, n = set(), 0
    t0 = time.perf_counter()
    for path in files:
        for hdu in HDUS:
            df = _frame(path, hdu)
            if limit is not None:
                df = df.iloc[:limit]
            table = f"bench_pandas.{hdu.lower()}"
            with conn.cursor() as cur:
                if table not in created:
                    cols = ", ".join(f'"{c.lower()}" {_pg(df[c].dtype)}' for c in df.columns)
                    cur.execute(f"CREATE UNLOGGED TABLE {table} ({cols})")
                    created.add(table)
                buf = io.StringIO()
                df.to_csv(buf, index=False, header=False)
                buf.seek(0)
                cur.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv)", buf)
            conn.commit()
        n += len(df)
    secs = time.perf_counter() - t0
    conn.close()
    return secs, n


def _arrow(path: str, hdu: str):
    """One HDU as a pyarrow Table, as a user would hand it to ADBC: astropy reads it, fixed
    arrays become fixed-size lists, unsigned integers the next wider signed type (PostgreSQL
    has none), masked values nulls."""
    import pyarrow as pa
    from astropy.table import Table
    t = Table.read(path, hdu=hdu, format="fits", character_as_bytes=False)
    wider = {"u1": "i2", "u2": "i4", "u4": "i8", "u8": "f8"}
    arrays = []
    for name in t.colnames:
        col = t[name]
        data = np.asarray(col)
        mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else None
        if data.dtype.kind in "US":
            arrays.append(pa.array(data.astype(str).tolist(), mask=None if mask is None else mask.reshape(len(data))))
            continue
        key = f"{data.dtype.kind}{data.dtype.itemsize}"
        data = data.astype(data.dtype.newbyteorder("=")).astype(wider.get(key, data.dtype.newbyteorder("=")))
        if data.ndim == 1:
            arrays.append(pa.array(data, mask=mask))
            continue
        arr = pa.array(data.reshape(-1))
        for size in reversed(data.shape[1:]):
            arr = pa.FixedSizeListArray.from_arrays(arr, size)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, names=[n.lower() for n in t.colnames])


def adbc_files(dsn: str, files, schema: str, times=None) -> None:
    """astropy -> pyarrow -> ADBC adbc_ingest, one call per HDU (the driver's binary COPY).
    ``times``: a queue for (first read, last commit) wall-clock times, the streaming window
    as desi-loader's copy phase counts it (process start and imports left out)."""
    import adbc_driver_postgresql.dbapi as adbc
    import importlib
    importlib.import_module("astropy.table")   # imported before the clock starts, as in a notebook
    quiet_units()
    with adbc.connect(dsn) as conn:
        t0 = time.time()
        for path in files:
            for hdu in HDUS:
                with conn.cursor() as cur:
                    cur.adbc_ingest(hdu.lower(), _arrow(path, hdu), mode="create_append", db_schema_name=schema)
                conn.commit()
        if times is not None:
            times.put((t0, time.time()))


def adbc_ingest(dsn: str, files, nprocs: int) -> float:
    """Seconds for ``nprocs`` processes, each with one ADBC connection, to load the files split
    between them by file (how a user parallelises by hand): from the first read to the last
    commit, as desi-loader's copy phase (streaming) is counted."""
    import multiprocessing as mp
    schema = "bench_adbc"
    fresh_schema(dsn, schema)
    import adbc_driver_postgresql.dbapi as adbc
    with adbc.connect(dsn) as conn:                   # the tables first: concurrent CREATEs would race
        for hdu in HDUS:
            with conn.cursor() as cur:
                cur.adbc_ingest(hdu.lower(), _arrow(files[0], hdu).slice(0, 0), mode="create", db_schema_name=schema)
        conn.commit()
    parts = [files[i::nprocs] for i in range(nprocs)]
    ctx = mp.get_context("spawn")
    times = ctx.Queue()
    procs = [ctx.Process(target=adbc_files, args=(dsn, part, schema, times)) for part in parts if part]
    for p in procs:
        p.start()
    windows = [times.get() for _ in procs]
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"an ADBC process failed: {[p.exitcode for p in procs]}")
    return max(b for _, b in windows) - min(a for a, _ in windows)


def parquet_files(files, folder: Path) -> list:
    """Each FITS file's METADATA and SPECPHOT columns (row-aligned) as one Parquet file (as a
    catalog published in Parquet would hold them): made once, kept in the cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        dst = folder / (Path(path).name.replace(".fits", ".parquet"))
        if not dst.exists():
            meta, phot = _arrow(path, "METADATA"), _arrow(path, "SPECPHOT")
            cols = {**{n: meta.column(n) for n in meta.column_names},
                    **{n: phot.column(n) for n in phot.column_names if n not in meta.column_names}}
            pq.write_table(pa.table(cols), str(dst) + ".part", row_group_size=20_000)
            os.replace(str(dst) + ".part", dst)
        out.append(dst)
    return out


def pq_rows(path) -> int:
    import pyarrow.parquet as pq
    return pq.ParquetFile(path).metadata.num_rows


def adbc_parquet(dsn: str, pfiles, schema: str) -> float:
    """Seconds for what a user tries first: read each Parquet file with pyarrow and hand the
    Arrow table to ADBC's adbc_ingest (the driver's binary COPY), one connection, into a new
    table; from the first read to the commit."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.parquet as pq
    with adbc.connect(dsn) as conn:
        t0 = time.perf_counter()
        for i, path in enumerate(pfiles):
            with conn.cursor() as cur:
                cur.adbc_ingest("galaxies", pq.read_table(path), mode="create" if i == 0 else "append",
                                db_schema_name=schema)
        conn.commit()
        return time.perf_counter() - t0


def duckdb_parquet(dsn: str, pfiles, schema: str) -> Optional[float]:
    """Seconds for DuckDB's postgres extension to create the table from the Parquet files
    (ATTACH, CREATE TABLE ... AS SELECT * FROM read_parquet); None without the extension
    (pip install duckdb-extension-postgres: DuckDB otherwise downloads it)."""
    try:
        import duckdb
        import duckdb_extension_postgres
    except ImportError:
        print("hats: DuckDB left out (pip install duckdb-extension-postgres)")
        return None
    src = next(Path(duckdb_extension_postgres.__file__).parent.glob("extensions/*/postgres.duckdb_extension"))
    ext = Path(tempfile.mkdtemp(prefix="desi-bench-duck-")) / "postgres_scanner.duckdb_extension"
    shutil.copy(src, ext)              # LOAD finds the entry point by the file's name
    fresh_schema(dsn, schema)
    conn = connect(dsn)
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    conn.commit()
    conn.close()
    con = duckdb.connect()
    try:
        con.execute(f"LOAD '{ext}'")
        libpq = " ".join(f"{k}={v}" for k, v in _libpq(dsn).items())
        t0 = time.perf_counter()
        con.execute(f"ATTACH '{libpq}' AS pg (TYPE postgres)")
        files = ", ".join(f"'{p}'" for p in pfiles)
        con.execute(f"CREATE TABLE pg.{schema}.galaxies AS SELECT * FROM read_parquet([{files}])")
        con.execute("DETACH pg")
        return time.perf_counter() - t0
    finally:
        con.close()
        shutil.rmtree(ext.parent, ignore_errors=True)


def _libpq(dsn: str) -> dict:
    """A DSN as libpq keywords (DuckDB's ATTACH takes a keyword string)."""
    from psycopg2.extensions import parse_dsn
    return {k: v for k, v in parse_dsn(dsn).items() if v}


def hats_import_fits(files, out: Path, workers: int) -> float:
    """Seconds for hats-import to make a HATS collection (catalog + 10 arcsec margin) of the
    FITS files' METADATA tables, as its documentation shows (FitsReader, a local Dask cluster)."""
    from dask.distributed import Client
    from hats_import.catalog.file_readers import FitsReader
    from hats_import.collection.arguments import CollectionArguments
    from hats_import.pipeline import pipeline_with_client
    t0 = time.perf_counter()
    args = (CollectionArguments(output_artifact_name="import", output_path=out, progress_bar=False,
                                tmp_dir=out / "tmp", resume=False)
            .catalog(input_file_list=[str(f) for f in files], file_reader=FitsReader(hdu=1), ra_column="RA",
                     dec_column="DEC", byte_pixel_threshold=256 << 20, highest_healpix_order=8)
            .add_margin(margin_threshold=10.0, is_default=True))
    with Client(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=None) as client:
        pipeline_with_client(args, client)
    return time.perf_counter() - t0


def _pg(dtype) -> str:
    kind, size = getattr(dtype, "kind", "O"), getattr(dtype, "itemsize", 8)
    if kind == "f":
        return "real" if size == 4 else "double precision"
    if kind in "iu":
        return {1: "smallint", 2: "smallint", 4: "integer"}.get(size, "bigint")
    if kind == "b":
        return "boolean"
    return "text"


def to_sql(dsn: str, files, rows: int, method) -> float:
    """pandas.to_sql on the first ``rows`` galaxies of the first file (all three tables)."""
    import sqlalchemy
    fresh_schema(dsn, "bench_tosql")
    engine = sqlalchemy.create_engine(_sqlalchemy_url(dsn))
    frames = {hdu: _frame(files[0], hdu).iloc[:rows] for hdu in HDUS}
    t0 = time.perf_counter()
    for hdu, df in frames.items():
        # PostgreSQL allows 65535 parameters per statement: multi-row inserts of 887 columns
        chunk = max(1, 65535 // len(df.columns) - 1) if method == "multi" else None
        df.to_sql(hdu.lower(), engine, schema="bench_tosql", index=False, method=method, chunksize=chunk)
    secs = time.perf_counter() - t0
    engine.dispose()
    return secs


def _sqlalchemy_url(dsn: str) -> str:
    if dsn.startswith("postgresql://"):
        return "postgresql+psycopg2://" + dsn[len("postgresql://"):]
    from psycopg2.extensions import parse_dsn
    p = parse_dsn(dsn)
    auth = p.get("user", "") + (":" + p["password"] if p.get("password") else "")
    return (f"postgresql+psycopg2://{auth}@{p.get('host', '') if not p.get('host', '').startswith('/') else ''}"
            f":{p.get('port', 5432)}/{p.get('dbname', 'postgres')}"
            + (f"?host={p['host']}" if p.get("host", "").startswith("/") else ""))


def original_script(dsn: str, files) -> float:
    """The original FastSpecFit script's 12 columns: astropy + numpy + pandas + to_csv + COPY."""
    from astropy.table import Table
    fresh_schema(dsn, "bench_orig")
    conn = connect(dsn)
    with conn.cursor() as cur:
        cur.execute("CREATE UNLOGGED TABLE bench_orig.fastspecfit (targetid bigint, ra double precision, "
                    "dec double precision, z double precision, logmstar real, sfr real, age real, zzsun real, "
                    "dn4000 real, logmstar_err real, sfr_err real, healpix integer)")
    conn.commit()
    t0 = time.perf_counter()
    for path in files:
        meta = Table.read(path, hdu="METADATA", format="fits")
        sp = Table.read(path, hdu="SPECPHOT", format="fits")
        df = meta["TARGETID", "RA", "DEC", "Z"].to_pandas()
        for c in ("LOGMSTAR", "SFR", "AGE", "ZZSUN", "DN4000"):
            df[c] = np.asarray(sp[c])
        for c in ("LOGMSTAR", "SFR"):
            ivar = np.asarray(sp[c + "_IVAR"])
            with np.errstate(divide="ignore", invalid="ignore"):
                df[c + "_ERR"] = np.where(ivar > 0, 1 / np.sqrt(ivar), np.nan)
        name = os.path.basename(path)
        df["HEALPIX"] = int(name.split("-hp")[1][:2]) if "-hp" in name else None
        buf = io.StringIO()
        df.to_csv(buf, index=False, header=False)
        buf.seek(0)
        with conn.cursor() as cur:
            cur.copy_expert("COPY bench_orig.fastspecfit FROM STDIN WITH (FORMAT csv)", buf)
        conn.commit()
    secs = time.perf_counter() - t0
    conn.close()
    return secs


# --------------------------------------------------------------------------- main

def best_of(repeat: int, run) -> float:
    """Shortest of ``repeat`` runs: on a shared machine the noise only ever adds time."""
    return min(run() for _ in range(max(1, repeat)))


def machine(dsn: str) -> dict:
    conn = connect(dsn)
    try:
        settings = server_settings(conn)
    finally:
        conn.close()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cores": os.cpu_count(), "memory_gb": round(mem, 1), "python": platform.python_version(),
            "platform": platform.platform(), "numpy": np.__version__, "server": settings, "dsn": mask_dsn(dsn)}


#: The full FastSpecFit Iron v3.0 catalog, for the paper estimate of a multi-node load.
FULL_CATALOG_BYTES, FULL_CATALOG_GALAXIES = 79.3e9, 17_995_896


def processes(dsn: str, files, nprocs: int, workers: int) -> float:
    """Copy window (load opened to last task done) of ``nprocs`` loader processes x ``workers``.

    Each process runs scripts/load.py in its own session, as the nodes of a batch job do.
    """
    schema = "bench_nodes"
    fresh_schema(dsn, schema)
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "load.py"), *files, "--dsn", dsn, "--schema",
           schema, "--workers", str(workers), "--unlogged", "--quiet", "--task-rows", "1000"]
    procs = [subprocess.Popen(cmd, start_new_session=True) for _ in range(nprocs)]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"a loader process failed: {[p.returncode for p in procs]}")
    conn = connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM max(t.done_at) - min(l.started_at)) FROM bench_nodes.loader_tasks t "
                    "JOIN bench_nodes.loader_loads l USING (load_id)")
        secs = float(cur.fetchone()[0])
    conn.close()
    return secs


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", help="target database (default: the embedded server)")
    ap.add_argument("--data-dir", help="embedded server data directory")
    ap.add_argument("--workers", "-w", type=int, default=min(os.cpu_count() or 2, 16),
                    help="largest worker / backend count (default: cores)")
    ap.add_argument("--files", type=int, default=4, help="sample files (default 4)")
    ap.add_argument("--rows", type=int, default=5000, help="galaxies per file (default 5000)")
    ap.add_argument("--to-sql-rows", type=int, default=300, help="galaxies for pandas.to_sql (default 300)")
    ap.add_argument("--growth", default="2000,10000,30000",
                    help="rows per file for the cost-growth runs, comma separated ('' to skip)")
    ap.add_argument("--small-files", type=int, default=200, help="files of 500 rows for per-file overhead (0 skips)")
    ap.add_argument("--rss-rows", type=int, default=0,
                    help="rows of one large file for the peak-memory run (341000 makes 1.5 GB; 0 skips)")
    ap.add_argument("--out", default="bench-out", help="output directory (default bench-out)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each ceiling and desi-loader copy measurement; the best counts (default 3)")
    ap.add_argument("--only", default="all",
                    help="sections to run, comma separated: copy (ceilings and desi-loader copy phase), "
                    "alternatives (pandas, to_sql, original script), growth, nodes (1 x W vs W x 1 processes, "
                    "multi-node estimate), whole (whole command vs by hand, both WAL levels, incremental "
                    "cost), sky (whole-load cost of the sky index, cone searches indexed vs sequential "
                    "scan), citus (one server vs a local 3-node Citus cluster, per-node CPU, a model "
                    "of 1 + 8 nodes), export (query results to FITS, VOTable, ECSV, CSV), tap (the TAP service: a cone's "
                    "latency and a sync VOTable query against the same SQL), statistics (ANALYZE of FASTSPEC "
                    "in FITS and stored column order against the loader's statistics); default all; "
                    "scale (the whole load at --scale-galaxies sizes and both WAL levels against the server's own "
                    "path, per phase: seconds, server and client CPU, WAL, checkpoints) and hats (Parquet into "
                    "PostgreSQL against ADBC and DuckDB; a table out as HATS against hats-import from FITS; "
                    "--whole-files x --whole-rows) run only when named")
    ap.add_argument("--sky-rows", type=int, default=1_000_000,
                    help="rows of the positions table of the cone-search benchmark (default 1,000,000)")
    ap.add_argument("--whole-repeat", type=int, default=1,
                    help="runs of each whole-load measurement; the best counts (default 1: they are long)")
    ap.add_argument("--whole-files", type=int, default=4, help="files of the whole-load comparison (default 4)")
    ap.add_argument("--whole-rows", type=int, default=25000,
                    help="galaxies per file of the whole-load comparison (default 25000: 100,000 galaxies; "
                    "100000 makes the 400,000 of the README)")
    ap.add_argument("--scale-galaxies", default="400000,1000000",
                    help="total galaxies of the --only scale runs, comma separated (default 400000,1000000: "
                    "1.7 and 4.2 GB of FITS)")
    ap.add_argument("--scale-file-rows", type=int, default=100000, help="galaxies per file of the scale runs")
    ap.add_argument("--scale-max-wal-size", default=None, metavar="SIZE",
                    help="max_wal_size of the scale runs (e.g. 1GB: checkpoints fall inside the copy, as on the "
                    "real 79 GB catalog; default: the embedded server's 32GB)")
    ap.add_argument("--scale-levels", default="minimal,replica", help="wal_level values of the scale runs")
    ap.add_argument("--server", choices=("embedded", "pg15"), default="embedded",
                    help="the server measured: the embedded PostgreSQL (default), or Debian's PostgreSQL 15 "
                         "started in OUT/pg15 (max_wal_size=32GB, shared_buffers=1GB), as production servers are")
    ap.add_argument("--checksums", action="store_true",
                    help="with --server pg15: a cluster with data checksums (initdb --data-checksums)")
    ap.add_argument("--tap-rows", type=int, default=100_000,
                    help="galaxies of the TAP section, and rows of its sync VOTable query (default 100,000)")
    ap.add_argument("--tap-radius", type=float, default=3.0, help="cone radius of the TAP section, degrees (default 3)")
    ap.add_argument("--stats-rows", type=int, default=30000,
                    help="galaxies of the statistics section (default 30000: ANALYZE's sample of FASTSPEC)")
    ap.add_argument("--quick", action="store_true", help="smallest configuration (for tests)")
    args = ap.parse_args(argv)
    if args.quick:
        args.files, args.rows, args.to_sql_rows, args.growth, args.small_files = 2, 200, 20, "", 0
        args.whole_files, args.whole_rows = 2, 200
        args.scale_galaxies, args.scale_file_rows = "400,1000", 200
        args.repeat, args.sky_rows, args.tap_rows = 1, 5000, 800
        args.stats_rows = 600
        args.workers = min(args.workers, 2)
    return args


# --------------------------------------------------------------------------- whole load

def by_hand(dsn: str, plan, chunks, copied: Optional[threading.Barrier] = None, like: Optional[str] = None) -> float:
    """The hand-written load: per table, in its own backend and in parallel, CREATE TABLE and
    COPY FROM the pre-encoded binary files in one transaction (so wal_level=minimal skips the
    WAL of the COPY), then PRIMARY KEY and ANALYZE.  Seconds.  ``copied``: a barrier every
    table's thread waits at between its COPY and its key (the scale section samples there).

    The tables have the columns in the files' order, as a DBA writes them; with ``like`` (a
    schema holding the loader's tables) they are created LIKE those, in the loader's column
    order: the server's best, which the loader is held against."""
    from desi_loader.control.sqlgen import primary_key
    schema = "bench_hand"
    fresh_schema(dsn, schema)

    def one(table: str) -> None:
        conn = connect(dsn)
        spec = plan.tables[table]
        with conn.cursor() as cur:
            if like:
                cur.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, table),
                                                                       sql.Identifier(like, table)))
            else:    # as a hand-written load would: the columns in the files' order, no NOT NULL
                cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(schema, table), sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in spec.all_columns)))
            for t, path, cols in chunks:
                if t == table:
                    collist = ", ".join(f'"{c}"' for c in cols)
                    cur.execute(f'COPY "{schema}".{table} ({collist}) FROM %s WITH (FORMAT binary)', (path,))
            conn.commit()
            if copied is not None:
                copied.wait()
            cur.execute(primary_key(schema, table, spec))
            cur.execute(f'ANALYZE "{schema}".{table}')
        conn.commit()
        conn.close()

    threads = [threading.Thread(target=one, args=(t,)) for t in plan.tables]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def command(dsn: str, files, schema: str, workers: int, *extra, started=None) -> tuple[float, dict]:
    """The whole `load` command as users run it (a process of its own): seconds and its summary.
    ``started(pid)`` is told its process id."""
    js = Path(tempfile.mkdtemp(prefix="desi-bench-")) / "s.json"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "load.py"), *files, "--dsn", dsn,
                             "--schema", schema, "--workers", str(workers), "--quiet", "--summary-json", str(js),
                             *extra])
    if started is not None:
        started(proc.pid)
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, "load.py")
    secs = time.perf_counter() - t0
    summary = json.loads(js.read_text())["loads"][0]
    shutil.rmtree(js.parent, ignore_errors=True)
    return secs, summary


def has_column(dsn: str, schema: str, table: str, column: str) -> bool:
    conn = connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "AND column_name = %s", (schema, table, column))
        found = cur.fetchone() is not None
    conn.close()
    return found


def set_wal_level(dsn: str, data_dir, level: str, restart=None) -> bool:
    """Switch the server's wal_level (``restart``: how, the embedded server's by default);
    False for a server we do not own."""
    if data_dir is None:
        return False
    conn = connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ALTER SYSTEM SET wal_level = %s", (level,))
        if level == "minimal":
            cur.execute("ALTER SYSTEM SET max_wal_senders = 0")
        else:
            cur.execute("ALTER SYSTEM RESET max_wal_senders")
    conn.close()
    (restart or server.restart)(data_dir)
    return True


def set_setting(dsn: str, name: str, value: str) -> None:
    """ALTER SYSTEM SET name = value and reload (a setting that needs no restart)."""
    conn = connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)), (value,))
        cur.execute("SELECT pg_reload_conf()")
    conn.close()


class Bench:
    """One benchmark run: the server, the sample files, and the results recorded so far."""

    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = self.out / "data"
        self.restart = server.restart
        self.stop = lambda: None
        if args.server == "pg15":
            self.data_dir, self.dsn = self._pg15(args)
        else:
            self.data_dir = None if args.dsn else Path(args.data_dir or server.default_data_dir())
            self.dsn = args.dsn or server.start(self.data_dir)
        self.W = max(1, args.workers)
        self.results = {"machine": machine(self.dsn), "config": vars(args), "methods": [], "ratios": {}}
        self.files = make_files(self.cache, args.files, args.rows)
        self.n, self.nb = galaxies(self.files), fits_bytes(self.files)
        print(f"{len(self.files)} files, {self.n:,} galaxies, {self.nb / 1e6:,.1f} MB of FITS; "
              f"server {self.results['machine']['server']}")

    def _pg15(self, args) -> tuple:
        """Debian's PostgreSQL 15, as a distribution makes a cluster (initdb, data checksums
        with --checksums), with the settings of a server tuned for loading
        (``max_wal_size=32GB``, ``shared_buffers=1GB``): (data directory, DSN)."""
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import localpg
        data_dir = self.out / ("pg15-checksums" if args.checksums else "pg15")
        dsn = localpg.start(data_dir, localpg.free_port(), {
            "max_wal_size": "32GB", "shared_buffers": "1GB", "wal_level": "minimal", "max_wal_senders": "0",
            "max_connections": "100"}, version="15", checksums=args.checksums)
        self.restart = lambda d: localpg.restart(d, version="15")
        self.stop = lambda: localpg.stop(data_dir, version="15")
        return data_dir, dsn

    def record(self, method: str, workers, secs: float, n: int, nbytes: float, **extra) -> dict:
        row = {"method": method, "workers": workers, "seconds": round(secs, 3), "rows": n,
               "rows_per_s": round(n / secs, 1), "mb_per_s": round(nbytes / 1e6 / secs, 2), **extra}
        self.results["methods"].append(row)
        print(f"{method:44s} w={str(workers):3s} {row['rows_per_s']:>12,.0f} rows/s {row['mb_per_s']:>9,.1f} MB/s"
              f"  ({secs:.2f}s)", flush=True)
        return row

    def ratio(self, name: str, value: float) -> None:
        self.results["ratios"][name] = round(value, 2)

    # ---------------------------------------------------------------- sections

    def ceiling_and_loader(self) -> None:
        """Ceiling and desi-loader runs interleaved, best of --repeat each: a shared or virtual
        machine drifts, and ratios are only fair when both see the same drift."""
        dsn, files, n, nb, W = self.dsn, self.files, self.n, self.nb, self.W
        tmp = Path(tempfile.mkdtemp(prefix="desi-bench-", dir="/tmp"))
        os.chmod(tmp, 0o755)
        server_side = can_read_server_files(dsn)
        how = "server-side COPY FROM file" if server_side else "COPY FROM STDIN, pre-encoded in memory"
        try:
            plan, chunks = pre_encode(files, "binary", tmp)
            _, tchunks = pre_encode(files, "text", tmp)
            widths = sorted({1, W} | ({2} if W >= 2 else set()))
            ceil: dict = {(f, b): [] for f in ("binary", "text") for b in (1, W)}
            stdin: list = []                 # the same bytes FROM STDIN: what any client's COPY can reach
            runs: dict = {}
            for _ in range(max(1, self.args.repeat)):
                for (fmt, b) in ceil:
                    ceil[(fmt, b)].append(ceiling(dsn, plan, chunks if fmt == "binary" else tchunks, fmt, b,
                                                  server_side, self.data_dir))
                if server_side:
                    stdin.append(ceiling(dsn, plan, chunks, "binary", 1, False, self.data_dir))
                for fmt in ("binary", "text"):
                    for w in widths:
                        runs.setdefault((fmt, w), []).append(loader(dsn, files, fmt, w))
            rec = {}
            for (fmt, b), measured in ceil.items():
                secs, cpu = min(measured, key=lambda x: x[0])
                rec[(fmt, b)] = self.record(f"ceiling {fmt} ({how})", b, secs, n, nb, server_cpu=cpu)
            self.c1, self.cw, self.t1, self.tw = (rec[k] for k in (("binary", 1), ("binary", W), ("text", 1), ("text", W)))
            self.stdin1 = None
            if stdin:
                secs, cpu = min(stdin, key=lambda x: x[0])
                self.stdin1 = self.record("ceiling binary (COPY FROM STDIN, pre-encoded in memory)", 1, secs, n, nb,
                                          server_cpu=cpu)
            self.encode_seconds = {fmt: encode_seconds(files, fmt) for fmt in ("binary", "text")}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.best, self.whole_runs = {}, {}
        for (fmt, w), rs in sorted(runs.items()):
            r = min(rs, key=lambda x: x["copy_stream"] or x["copy"])
            self.best[(fmt, w)] = self.record(f"desi-loader {fmt}: copy phase (streaming)", w,
                                              r["copy_stream"] or r["copy"], n, nb, copy_with_startup=r["copy"],
                                              phases=r["phases"], memory=r["memory"], client_cpu=r["cpu"])
            self.whole_runs[(fmt, w)] = r
            self.record(f"desi-loader {fmt}: whole load (index, durable, swap)", w, min(x["whole"] for x in rs), n, nb)
        self.ratio("binary_w1_vs_ceiling_1_backend", self.best[("binary", 1)]["rows_per_s"] / self.c1["rows_per_s"])
        # the whole copy phase, the workers' start-up included (what a user waits for)
        phase = min(x["copy"] for x in runs[("binary", 1)])
        self.ratio("binary_w1_copy_phase_vs_ceiling_1_backend", n / phase / self.c1["rows_per_s"])
        if self.stdin1 is not None:          # the protocol's share: FROM STDIN against FROM file, same bytes
            self.ratio("stdin_ceiling_vs_file_ceiling_1_backend", self.stdin1["rows_per_s"] / self.c1["rows_per_s"])
            self.ratio("binary_w1_copy_phase_vs_stdin_ceiling_1_backend", n / phase / self.stdin1["rows_per_s"])
        self.ratio(f"binary_w{W}_vs_ceiling_{W}_backends", self.best[("binary", W)]["rows_per_s"] / self.cw["rows_per_s"])
        self.ratio("text_w1_vs_text_ceiling_1_backend", self.best[("text", 1)]["rows_per_s"] / self.t1["rows_per_s"])
        self.ratio(f"text_w{W}_vs_text_ceiling_{W}_backends", self.best[("text", W)]["rows_per_s"] / self.tw["rows_per_s"])
        self.results["time_split"] = self.time_split()

    def time_split(self) -> dict:
        """Print and return where the copy's time goes: encoding (one core, no database), the
        server's parse (its own COPY FROM file), and for each worker count the copy phase, the
        client's CPU (workers: read, encode, send; coordinator) and the bound that the cores
        shared by client and server put on the copy."""
        W, cores = self.W, os.cpu_count() or 1
        print(f"\nwhere the time goes (seconds for all {self.n:,} galaxies; server CPU measured "
              f"{'on the local server' if self.data_dir else '-- not here: remote server, wall time shown'}):")
        split = {}
        for fmt, ceil1, ceilw in (("binary", self.c1, self.cw), ("text", self.t1, self.tw)):
            parse1 = ceil1.get("server_cpu") or ceil1["seconds"]
            parsew = ceilw.get("server_cpu") or ceilw["seconds"] * min(W, cores)
            print(f"  {fmt}: encode {self.encode_seconds[fmt]:.2f} (one core, no database); server parse "
                  f"{parse1:.2f} CPU with 1 backend, {parsew:.2f} with {W} (its own COPY FROM file: "
                  f"{ceil1['seconds']:.2f} / {ceilw['seconds']:.2f} wall)")
            split[fmt] = {"encode_s": round(self.encode_seconds[fmt], 3), "server_parse_cpu_s": round(parse1, 3),
                          f"server_parse_cpu_{W}_backends_s": round(parsew, 3)}
            for w in sorted({1, W}):
                b = self.best[(fmt, w)]
                cpu = b.get("client_cpu") or {}
                client = cpu.get("workers_s", 0) + cpu.get("coordinator_s", 0)
                server = parse1 if w == 1 else parsew
                bound = max(ceil1["seconds"] if w == 1 else ceilw["seconds"], (server + client) / cores)
                ceiling_s = ceil1["seconds"] if w == 1 else ceilw["seconds"]
                print(f"    w={w}: copy phase {b['seconds']:.2f}; client CPU {client:.2f} (workers {cpu.get('workers_s', 0):.2f}: "
                      f"read, encode, send; coordinator {cpu.get('coordinator_s', 0):.2f}); client and server CPU "
                      f"on {cores} cores: {bound:.2f} s or more, about {ceiling_s / bound:.2f}x the ceiling "
                      f"at best")
                split[fmt][f"w{w}"] = {"copy_s": b["seconds"], "workers_cpu_s": cpu.get("workers_s"),
                                       "coordinator_cpu_s": cpu.get("coordinator_s"), "bound_s": round(bound, 3)}
        return split

    def alternatives(self) -> None:
        dsn, files, n, nb, W, args = self.dsn, self.files, self.n, self.nb, self.W, self.args
        secs, np_rows = pandas_csv(dsn, files)
        pandas_row = self.record("astropy -> pandas -> to_csv -> copy_expert", 1, secs, np_rows, nb)
        binary = self.best[("binary", W)]["rows_per_s"]
        self.ratio("binary_vs_pandas_to_csv", binary / pandas_row["rows_per_s"])
        self.ratio("text_vs_pandas_to_csv", self.best[("text", W)]["rows_per_s"] / pandas_row["rows_per_s"])
        try:
            for method, key in ((None, "none"), ("multi", "multi")):
                row = self.record(f"pandas.to_sql(method={method!r})", 1, to_sql(dsn, files, args.to_sql_rows, method),
                                  args.to_sql_rows, nb * args.to_sql_rows / n)
                self.ratio(f"binary_vs_to_sql_{key}", binary / row["rows_per_s"])
        except ImportError as exc:
            print(f"skipping to_sql: {exc}")
        try:
            for procs in sorted({1, W}):
                secs = min(adbc_ingest(dsn, files, procs) for _ in range(max(1, args.repeat)))
                row = self.record("astropy -> pyarrow -> ADBC adbc_ingest", procs, secs, n, nb)
                self.ratio(f"binary_vs_adbc_{procs}", self.best[("binary", procs)]["rows_per_s"] / row["rows_per_s"])
        except ImportError as exc:
            print(f"skipping ADBC: {exc} (pip install -e '.[bench]')")
        orig = self.record("original script, 12 columns (pandas)", 1, original_script(dsn, files), n, nb)
        r = min((loader(dsn, files, "binary", W, catalog="fastspecfit-original") for _ in range(args.repeat)),
                key=lambda x: x["copy_stream"] or x["copy"])
        mine12 = self.record("desi-loader fastspecfit-original, 12 columns", W, r["copy_stream"] or r["copy"], n, nb,
                             copy_with_startup=r["copy"])
        self.ratio("original_12_columns_vs_original_script", mine12["rows_per_s"] / orig["rows_per_s"])

    def growth(self) -> None:
        dsn, W, args = self.dsn, self.W, self.args
        for rows in [int(x) for x in args.growth.split(",") if x.strip()]:
            gf = make_files(self.cache, 2, rows)
            r = loader(dsn, gf, "binary", W)
            self.record(f"growth: 2 files x {rows} rows, copy phase", W, r["copy_stream"] or r["copy"], galaxies(gf),
                        fits_bytes(gf), whole_s=round(r["whole"], 2))
        if args.small_files:
            sf = make_files(self.cache, args.small_files, 500)
            r = loader(dsn, sf, "binary", W)
            self.record(f"overhead: {args.small_files} files x 500 rows, copy phase", W,
                        r["copy_stream"] or r["copy"], galaxies(sf), fits_bytes(sf), whole_s=round(r["whole"], 2))
        if args.rss_rows:
            # the loader in its own process, as users run it: its coordinator's and workers'
            # peak memory are its own, not this script's (which made the file)
            big = make_files(self.cache, 1, args.rss_rows)
            fresh_schema(dsn, "bench_rss")
            js = self.out / "rss-summary.json"
            subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "load.py"), *big, "--dsn", dsn,
                            "--schema", "bench_rss", "--workers", str(W), "--quiet", "--summary-json", str(js)],
                           check=True)
            (load,) = json.loads(js.read_text())["loads"]
            self.record(f"memory: 1 file of {fits_bytes(big) / 1e9:.2f} GB, copy phase", W,
                        load["phases"].get("copy_stream") or load["phases"]["copy"], galaxies(big), fits_bytes(big),
                        memory=load["memory"])
            self.results["peak_memory_mb"] = load["memory"]
            print(f"peak memory loading it: {load['memory']}")

    def nodes(self) -> None:
        """The same total worker count as 1 process x W workers and as W processes x 1 worker,
        interleaved, best of --repeat; then a paper estimate of 8 nodes x 16 workers."""
        dsn, files, n, nb, W = self.dsn, self.files, self.n, self.nb, self.W
        one, many = [], []
        for _ in range(max(1, self.args.repeat)):
            one.append(processes(dsn, files, 1, W))
            many.append(processes(dsn, files, W, 1))
        a = self.record(f"1 process x {W} workers: copy window", W, min(one), n, nb)
        b = self.record(f"{W} processes x 1 worker: copy window", W, min(many), n, nb)
        self.ratio(f"{W}_processes_vs_1_process_x_{W}_workers", b["rows_per_s"] / a["rows_per_s"])
        per_worker = nb / min(one) / W            # bytes/s per worker, start-up included
        one_backend = nb / min(processes(dsn, files, 1, 1) for _ in range(max(1, self.args.repeat)))
        self.results["nodes_estimate"] = est = estimate(per_worker, one_backend)
        print("\npaper estimate, 8 nodes x 16 workers, full FastSpecFit (79.3 GB, 18.0M galaxies):")
        for k, v in est.items():
            print(f"  {k:45s} {v}")

    def whole(self) -> None:
        """The whole command against the hand-written load, under wal_level minimal and replica,
        with either durable path; then the cost of adding one file to a published catalog."""
        dsn, W, args = self.dsn, self.W, self.args
        if not can_read_server_files(dsn):
            print("whole load: skipped (the by-hand load needs a local server and pg_read_server_files)")
            return
        files = make_files(self.cache, args.whole_files, args.whole_rows)
        n, nb = galaxies(files), fits_bytes(files)
        print(f"\nwhole load: {len(files)} files, {n:,} galaxies, {nb / 1e9:.2f} GB of FITS")
        tmp = Path(tempfile.mkdtemp(prefix="desi-bench-", dir="/tmp"))
        os.chmod(tmp, 0o755)
        out: dict = {}
        try:
            plan, chunks = pre_encode(files, "binary", tmp)
            levels = ("minimal", "replica") if self.data_dir is not None else (None,)
            for level in levels:
                if level:
                    set_wal_level(dsn, self.data_dir, level)
                hand, mine = [], {"unlogged": [], "logged": []}
                for _ in range(max(1, args.whole_repeat)):
                    hand.append(by_hand(dsn, plan, chunks))
                    for mode in mine:
                        fresh_schema(dsn, "bench_whole")
                        mine[mode].append(command(dsn, files, "bench_whole", W, "--staging", mode,
                                                  "--replace-all")[0])
                tag = level or "server's"
                h = self.record(f"by hand, wal_level={tag} (CREATE+COPY, PK, ANALYZE)", len(plan.tables),
                                min(hand), n, nb)
                for mode, secs in mine.items():
                    r = self.record(f"desi-loader whole command, {mode} staging, wal_level={tag}", W, min(secs), n, nb)
                    out[f"{tag}_{mode}"] = r["rows_per_s"] / h["rows_per_s"]
                chosen = "logged"                          # what --staging auto picks (opening.staging_mode)
                self.ratio(f"whole_{tag}_auto_({chosen})_vs_by_hand", out[f"{tag}_{chosen}"])
                for k, v in out.items():
                    if k.startswith(tag):
                        self.ratio(f"whole_{k}_vs_by_hand", v)
            self._incremental(files)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if self.data_dir is not None:
                set_wal_level(dsn, self.data_dir, "minimal")

    def _incremental(self, files) -> None:
        """One more file into the published catalog: incremental merge against a full reload."""
        dsn, W = self.dsn, self.W
        extra = make_files(self.cache, len(files) + 1, self.args.whole_rows)[-1:]
        extra_copy = Path(files[0]).parent / Path(extra[0]).name
        if not extra_copy.exists():
            shutil.copy(extra[0], extra_copy)
        fresh_schema(dsn, "bench_inc")
        command(dsn, files, "bench_inc", W)
        inc_s, inc = command(dsn, [*files, str(extra_copy)], "bench_inc", W)
        full_s, _ = command(dsn, [*files, str(extra_copy)], "bench_inc", W, "--replace-all")
        g, gb = galaxies(extra), fits_bytes(extra)
        self.record("incremental: 1 file into the published catalog", W, inc_s, g, gb)
        self.record(f"full reload of all {len(files) + 1} files (--replace-all)", W, full_s,
                    galaxies(files) + g, fits_bytes(files) + gb)
        self.ratio("incremental_1_file_seconds_vs_full_reload", inc_s / full_s)
        assert inc["incremental"] and inc["files"] == 1, inc

    def sky(self) -> None:
        """The sky index: extra whole-load cost (hpx29, its B-tree, sky order, q3c where present)
        and cone searches on a large table, indexed against a sequential scan."""
        dsn, W, args = self.dsn, self.W, self.args
        files = make_files(self.cache, args.whole_files, args.whole_rows)
        n, nb = galaxies(files), fits_bytes(files)
        print(f"\nsky index: {len(files)} files, {n:,} galaxies")
        conf = Path(tempfile.mkdtemp(prefix="desi-bench-")) / "nosky.ini"
        preset = (Path(__file__).resolve().parents[1] / "conf" / "desi_dr1.ini").read_text().split(
            "[catalog:desivast]")[0]
        conf.write_text("".join(f"[catalog:fastspecfit]\n{ln.split('=')[0].strip()} = none\n"
                                for ln in preset.splitlines() if ln.startswith("sky.METADATA")))
        with_sky, without = [], []
        for _ in range(max(1, args.whole_repeat)):
            fresh_schema(dsn, "bench_sky")
            without.append(command(dsn, files, "bench_sky", W, "--replace-all", "--config", str(conf))[0])
            assert not has_column(dsn, "bench_sky", "fastspecfit_metadata", "hpx29"), "sky index not turned off"
            fresh_schema(dsn, "bench_sky")
            with_sky.append(command(dsn, files, "bench_sky", W, "--replace-all")[0])
        self.record("whole command without sky index", W, min(without), n, nb)
        self.record("whole command with sky index + sky order", W, min(with_sky), n, nb)
        self.ratio("sky_index_whole_load_cost", min(with_sky) / min(without))
        shutil.rmtree(conf.parent, ignore_errors=True)
        self._cones()

    def statistics(self) -> None:
        """The planner's statistics of FASTSPEC (887 columns) at --stats-rows galaxies:
        ANALYZE with the columns in FITS order, ANALYZE in the stored order (fixed-width columns
        first), and the loader's own (computed from one read of the sample, restored with
        pg_restore_attribute_stats on PostgreSQL 18+); the last checked against ANALYZE's
        pg_stats, column by column."""
        from desi_loader.control import analyze as statistics
        dsn, args = self.dsn, self.args
        files = make_files(self.cache, 1, args.stats_rows)
        schema, table = "bench_stats", "fastspecfit_fastspec"
        fresh_schema(dsn, schema)
        command(dsn, files, schema, self.W, "--replace-all")
        conn = connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                        "AND NOT attisdropped ORDER BY attnum", (f"{schema}.{table}",))
            stored = [r[0] for r in cur.fetchall()]
            import fitsio
            fits = [c.lower() for c in fitsio.FITS(files[0])["FASTSPEC"].get_colnames()]
            order = [c for c in stored if c not in set(fits)] + [c for c in fits if c in set(stored)]
            cur.execute(sql.SQL("CREATE TABLE {} AS SELECT {} FROM {}").format(
                sql.Identifier(schema, "fits_order"), sql.SQL(", ").join(map(sql.Identifier, order)),
                sql.Identifier(schema, table)))

            def timed(stmt) -> float:
                t0 = time.perf_counter()
                cur.execute(stmt)
                return time.perf_counter() - t0
            fits_s = min(timed(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "fits_order")))
                         for _ in range(max(1, args.repeat)))
            stored_s = min(timed(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
                           for _ in range(max(1, args.repeat)))
            stats_sql = ("SELECT attname, null_frac, avg_width, n_distinct, most_common_vals::text, "
                         "most_common_freqs::text, histogram_bounds::text, correlation FROM pg_stats "
                         "WHERE schemaname = %s AND tablename = %s ORDER BY attname")
            cur.execute(stats_sql, (schema, table))
            by_server = cur.fetchall()
        rows_in_files = file_rows(dsn, schema, table, files)
        own: dict = {}
        for _ in range(max(1, args.repeat)):
            for source, given in (("server", None), ("files", rows_in_files)):   # the sample's values from ...
                work = connect(dsn)
                t0 = time.perf_counter()
                how = statistics.analyze(work, dsn, "bench", schema, table, files=given)
                secs = time.perf_counter() - t0
                work.close()
                with conn.cursor() as cur:
                    cur.execute(stats_sql, (schema, table))
                    stats = cur.fetchall()
                own.setdefault(source, []).append((secs, how, stats))
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.close()
        print(f"\nstatistics of FASTSPEC ({len(stored)} columns, {args.stats_rows:,} galaxies):")
        print(f"  ANALYZE, FITS column order        {fits_s:7.2f} s")
        print(f"  ANALYZE, stored order              {stored_s:7.2f} s")
        result = {"rows": args.stats_rows, "columns": len(stored), "analyze_fits_order_s": round(fits_s, 3),
                  "analyze_stored_order_s": round(stored_s, 3), "pg_stats_rows": len(by_server)}
        for source, runs in own.items():
            secs, how, by_loader = min(runs, key=lambda r: r[0])
            same = sum(a == b for a, b in zip(by_server, by_loader)) if len(by_server) == len(by_loader) else 0
            print(f"  the loader's, sample read from the {source} ({how}) {secs:7.2f} s; pg_stats rows "
                  f"identical to ANALYZE's: {same} of {len(by_server)}")
            key = "loader" if source == "server" else "loader_files"
            result.update({f"{key}_s": round(secs, 3), f"{key}_how": how, f"{key}_pg_stats_identical": same})
        self.results["statistics"] = result
        best = min(r[0] for r in own["files"])
        self.ratio("analyze_fits_order_vs_loader_statistics", fits_s / best)
        self.ratio("analyze_stored_order_vs_loader_statistics", stored_s / best)
        self.ratio("loader_statistics_server_sample_vs_files_sample", min(r[0] for r in own["server"]) / best)

    def _cones(self) -> None:
        from astropy.table import Table
        from desi_loader.queries import cone as cones
        dsn, rows = self.dsn, self.args.sky_rows
        path = self.cache / f"positions-{rows}.fits"
        rng = np.random.default_rng(1)
        if not path.exists():
            t = Table()
            t["ID"] = np.arange(rows, dtype=np.int64)
            t["RA"] = rng.uniform(0, 360, rows)
            t["DEC"] = np.degrees(np.arcsin(rng.uniform(-1, 1, rows)))
            t["MAG"] = rng.uniform(15, 25, rows).astype(np.float32)
            t.write(path, format="fits")
        fresh_schema(dsn, "bench_cone")
        command(dsn, [str(path)], "bench_cone", self.W, "--catalog", "generic", "--prefix", "pos", "--sky", "RA,DEC")
        conn = connect(dsn)
        centres = [(float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-0.9, 0.9))))) for _ in range(10)]
        with conn.cursor() as cur:
            t = cones.describe(cur, "bench_cone", "pos_hdu1")
            methods = ["hpx"] + (["q3c"] if t.q3c else [])
            print(f"cone search on {rows:,} rows (median of {len(centres)} centres; sequential scan = the same "
                  "exact distance test on every row)")
            for label, radius in (("1 arcmin", 1 / 60), ("1 degree", 1.0)):
                scan = []
                for ra, dec in centres:
                    t0 = time.perf_counter()
                    cur.execute('SELECT count(*) FROM bench_cone.pos_hdu1 t WHERE bench_cone.angdist(t.ra, t.dec, %s, %s) <= %s',
                                (ra, dec, radius))
                    want = cur.fetchone()[0]
                    scan.append(time.perf_counter() - t0)
                    for m in methods:
                        cur.execute(cones.cone_query(t, ra, dec, radius, count=True, method=m))
                        assert cur.fetchone()[0] == want, (m, ra, dec, radius)
                seq = float(np.median(scan))
                for m in methods:
                    times = []
                    for ra, dec in centres:
                        t0 = time.perf_counter()
                        cur.execute(cones.cone_query(t, ra, dec, radius, count=True, method=m))
                        cur.fetchone()
                        times.append(time.perf_counter() - t0)
                    idx = float(np.median(times))
                    print(f"  {label:9s} {m}: {idx * 1e3:9.2f} ms   sequential scan: {seq * 1e3:9.1f} ms   "
                          f"speed-up {seq / idx:8.1f}x")
                    self.results.setdefault("cones", []).append(
                        {"cone": label, "index": m, "table_rows": rows, "seconds": round(idx, 5),
                         "seq_scan_seconds": round(seq, 4)})
                    self.ratio(f"cone_{label.replace(' ', '_')}_{m}_speedup_vs_seq_scan", seq / idx)
        conn.rollback()
        conn.close()

    def citus(self) -> None:
        """The whole command into one Debian PostgreSQL 15 server and into a local Citus cluster
        (coordinator + 2 workers, same binaries, same machine), the CPU each node spent, and a
        model of 1 coordinator + 8 workers on the full catalog from those per-row costs."""
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # localpg: a tests helper
        import localpg
        args, W = self.args, self.W
        if not localpg.has_extension("citus", "15"):
            print("\ncitus: skipped (no Citus for Debian's PostgreSQL 15: scripts/provision.sh builds it)")
            return
        files = make_files(self.cache, args.whole_files, args.whole_rows)
        n, nb = galaxies(files), fits_bytes(files)
        base = localpg.base_dir() / f"bench-citus-{os.getpid()}"
        single_dir = base / "single"
        ports = [localpg.free_port() for _ in range(4)]
        print(f"\ncitus: {len(files)} files, {n:,} galaxies, {nb / 1e9:.2f} GB of FITS, {W} workers")
        try:
            single = localpg.start(single_dir, ports[0], version="15")
            cluster = localpg.citus_cluster(base, ports[1:])
            dirs = [single_dir] + [base / f"node{i}" for i in range(3)]
            before = [server_cpu(d) for d in dirs]
            t_single = command(single, files, "bench_citus", W, "--replace-all")[0]
            mid = [server_cpu(d) for d in dirs]
            t_cluster, summary = command(cluster, files, "bench_citus", W, "--replace-all")
            after = [server_cpu(d) for d in dirs]
        finally:
            for d in [single_dir] + [base / f"node{i}" for i in range(3)]:
                localpg.stop(d, version="15")
            shutil.rmtree(base, ignore_errors=True)
        self.record("whole command, one PostgreSQL 15 server", W, t_single, n, nb)
        self.record("whole command, Citus: coordinator + 2 workers", W, t_cluster, n, nb)
        self.ratio("citus_3_nodes_vs_single_server_same_machine", t_single / t_cluster)
        cpu_single = mid[0] - before[0]
        coord, workers = after[1] - mid[1], (after[2] - mid[2]) + (after[3] - mid[3])
        print(f"server CPU per 1,000 galaxies over the whole command (copy, keys, indexes, ANALYZE, swap; "
              f"all three tables, 1,068 columns): single server {cpu_single / n * 1e3:.2f} s; cluster: "
              f"coordinator {coord / n * 1e3:.2f} s, workers {workers / n * 1e3:.2f} s")
        print(f"placement: {summary.get('cluster')}: {summary.get('distribution')}")
        self.results["citus_model"] = citus_model(coord / n, workers / n, cpu_single / n, 18_000_000)
        for line in self.results["citus_model"]["lines"]:
            print("  " + line)

    def export(self) -> None:
        """Query results written to files (desi-loader sql --output): the loaded METADATA table
        whole, and a cone of it, to FITS, VOTable, ECSV and CSV; rows/s and MB/s of the file."""
        from desi_loader.queries import export, tables
        dsn, W = self.dsn, self.W
        files = make_files(self.cache, self.args.whole_files, self.args.whole_rows)
        fresh_schema(dsn, "bench_export")
        command(dsn, files, "bench_export", W)
        out = Path(tempfile.mkdtemp(prefix="desi-bench-export-"))
        queries = {"METADATA, all rows and columns": "SELECT * FROM bench_export.fastspecfit_metadata",
                   "cone of 20 deg, METADATA + SPECPHOT": (
                       "SELECT m.*, s.* FROM bench_export.fastspecfit_metadata m JOIN "
                       "bench_export.fastspecfit_specphot s USING (file_id, row_num) "
                       "WHERE bench_export.angdist(m.ra, m.dec, 150, 2) <= 20")}
        try:
            for what, query in queries.items():
                for ext in (".fits", ".vot", ".ecsv", ".csv"):
                    conn = connect(dsn)
                    t0 = time.perf_counter()
                    w = export.write(tables.iter_tables(conn, query), str(out / f"result{ext}"))
                    secs = time.perf_counter() - t0
                    conn.close()
                    self.record(f"export {ext[1:]}: {what}", 1, secs, w.rows, w.bytes)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def hats(self) -> None:
        """Parquet into PostgreSQL: the loader (whole command) against ADBC's adbc_ingest of the
        same Arrow tables and DuckDB's postgres extension (CREATE TABLE AS read_parquet); and a
        table out as HATS: the loader's export (sql --format hats) against hats-import from
        the FITS files of the same rows.  One run each, side by side."""
        dsn, W, args = self.dsn, self.W, self.args
        files = make_files(self.cache, args.whole_files, args.whole_rows)
        pfiles = parquet_files(files, self.cache / f"parquet-{len(files)}x{args.whole_rows}")
        n = sum(pq_rows(f) for f in pfiles)
        nb = sum(os.path.getsize(f) for f in pfiles)
        print(f"hats: {len(pfiles)} Parquet files (METADATA + SPECPHOT columns), {n:,} rows, {nb / 1e6:,.1f} MB")
        ratios = self.results["ratios"]
        fresh_schema(dsn, "bench_pq")
        secs, summary = command(dsn, [str(pfiles[0].parent)], "bench_pq", W, "--prefix", "galaxies", "--sky", "ra,dec")
        self.record("parquet: desi-loader whole command", W, secs, n, nb)
        self.record("parquet: desi-loader copy phase", W, summary["phases"]["copy"], n, nb)
        fresh_schema(dsn, "bench_adbc_pq")
        adbc_s = adbc_parquet(dsn, pfiles, "bench_adbc_pq")
        self.record("parquet: ADBC adbc_ingest (pyarrow read + ingest, one connection)", 1, adbc_s, n, nb)
        ratios["parquet_loader_whole_vs_adbc_ingest"] = round(adbc_s / secs, 2)
        duck_s = duckdb_parquet(dsn, pfiles, "bench_duck")
        if duck_s is not None:
            self.record("parquet: DuckDB postgres extension (CREATE TABLE AS read_parquet)", 1, duck_s, n, nb)
            ratios["parquet_loader_whole_vs_duckdb"] = round(duck_s / secs, 2)
        # a table out as HATS: the loaded METADATA against hats-import of the FITS files' METADATA
        fresh_schema(dsn, "bench_hx")
        command(dsn, files, "bench_hx", W)
        out = Path(tempfile.mkdtemp(prefix="desi-bench-hats-"))
        try:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "desi_loader.cli", "sql",
                                   "SELECT * FROM bench_hx.fastspecfit_metadata", "--output", str(out / "loader"),
                                   "--format", "hats", "--dsn", dsn], capture_output=True, text=True)
            ours = time.perf_counter() - t0
            if proc.returncode:
                raise RuntimeError(proc.stderr[-2000:])
            theirs = hats_import_fits(files, out / "import", W)
            self.record("hats: desi-loader sql --format hats (table -> HATS with margin)", W, ours, galaxies(files),
                        fits_bytes(files))
            self.record("hats: hats-import from the FITS files (catalog + margin)", W, theirs, galaxies(files),
                        fits_bytes(files))
            ratios["hats_export_vs_hats_import_from_fits"] = round(theirs / ours, 2)
        finally:
            shutil.rmtree(out, ignore_errors=True)
            for name in ("bench_pq", "bench_adbc_pq", "bench_duck", "bench_hx"):
                fresh_schema(dsn, name)

    def scale(self) -> None:
        """The whole load at two sizes and both WAL levels, against the server's own path: per
        phase the seconds, server and client CPU, WAL written and checkpoints."""
        if self.data_dir is None or not can_read_server_files(self.dsn):
            print("scale: skipped (needs the embedded server: it switches wal_level and reads server files)")
            return
        dsn, W, args = self.dsn, self.W, self.args
        results = self.results.setdefault("scale", [])
        sizes = [int(x) for x in args.scale_galaxies.split(",") if x.strip()]
        per_file = args.scale_file_rows
        if args.scale_max_wal_size:
            set_setting(dsn, "max_wal_size", args.scale_max_wal_size)
        try:
            for total in sizes:
                files = make_files(self.cache, max(1, total // per_file), min(per_file, total))
                n, nb = galaxies(files), fits_bytes(files)
                tmp = Path(tempfile.mkdtemp(prefix="desi-bench-scale-", dir="/tmp"))
                os.chmod(tmp, 0o755)
                try:
                    plan, chunks = pre_encode(files, "binary", tmp)
                    for level in args.scale_levels.split(","):
                        set_wal_level(dsn, self.data_dir, level, self.restart)
                        results.append(self._scale_one(files, n, nb, level, plan, chunks, W))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                    fresh_schema(dsn, "bench_hand")
                    fresh_schema(dsn, "bench_scale")
        finally:
            if args.scale_max_wal_size:
                set_setting(dsn, "max_wal_size", server.LOAD_TUNING["max_wal_size"])
            set_wal_level(dsn, self.data_dir, "minimal", self.restart)

    def _own_path(self, plan, chunks, like: Optional[str] = None) -> Probe:
        """The server's own path (by_hand), probed: copy, index (keys and ANALYZE), end."""
        dsn = self.dsn
        fresh_schema(dsn, "bench_hand")
        _checkpoint(dsn)
        own = Probe(dsn, self.data_dir)
        barrier = threading.Barrier(len(plan.tables) + 1)
        own.mark("copy")
        worker = threading.Thread(target=by_hand, args=(dsn, plan, chunks, barrier, like))
        worker.start()
        barrier.wait()
        own.mark("index")
        worker.join()
        own.mark("end")
        fresh_schema(dsn, "bench_hand")
        return own

    def _scale_one(self, files, n, nb, level, plan, chunks, W) -> dict:
        dsn = self.dsn
        # nothing of the previous run left: autovacuum of its freshly published tables would
        # run beside this run's own path (seen: 4.5 GB of VACUUM inside the next own path)
        fresh_schema(dsn, "bench_scale")
        own = self._own_path(plan, chunks)
        _checkpoint(dsn)
        mine = Probe(dsn, self.data_dir)
        secs, summary = watched_command(dsn, files, "bench_scale", W, mine, "--replace-all")
        best = self._own_path(plan, chunks, like="bench_scale")       # the loader's column order
        fresh_schema(dsn, "bench_scale")
        own_s, best_s = own.seconds(), best.seconds()
        settings = {k: summary["server"].get(k) for k in ("server_version", "data_checksums", "wal_level",
                                                           "max_wal_size", "shared_buffers", "wal_buffers")}
        row = {"galaxies": n, "fits_gb": round(nb / 1e9, 2), "wal_level": level, "workers": W, "server": settings,
               "loader_s": round(secs, 2), "own_path_s": round(own_s, 2), "own_path_loader_order_s": round(best_s, 2),
               "ratio": round(own_s / secs, 2), "ratio_loader_order": round(best_s / secs, 2),
               "loader_phases": mine.phases(), "own_phases": own.phases(), "own_loader_order_phases": best.phases(),
               "loader_summary_phases": summary["phases"], "loader_client_cpu": summary.get("cpu")}
        where = (f"PostgreSQL {settings['server_version']}, checksums {settings['data_checksums']}, "
                 f"wal_level={level}, max_wal_size={settings['max_wal_size']}, "
                 f"shared_buffers={settings['shared_buffers']}")
        print(f"  scale {n:,} galaxies on {where}")
        self.record(f"scale {n:,}, {level}: own path (files' order)", len(plan.tables), own_s, n, nb,
                    phases=row["own_phases"])
        self.record(f"scale {n:,}, {level}: own path (loader's order)", len(plan.tables), best_s, n, nb,
                    phases=row["own_loader_order_phases"])
        self.record(f"scale {n:,}, {level}: desi-loader whole command", W, secs, n, nb, phases=row["loader_phases"])
        self.ratio(f"scale_{n}_{level}_loader_vs_own_path", own_s / secs)
        self.ratio(f"scale_{n}_{level}_loader_vs_own_path_loader_order", best_s / secs)
        lp = row["loader_phases"]
        if lp.get("copy", {}).get("wal_mb"):
            after = sum(v["wal_mb"] for k, v in lp.items() if k not in ("open", "copy"))
            self.ratio(f"scale_{n}_{level}_finalize_wal_vs_copy_wal", after / lp["copy"]["wal_mb"])
        if lp.get("copy", {}).get("seconds"):
            self.ratio(f"scale_{n}_{level}_index_vs_copy_seconds", lp.get("index", {}).get("seconds", 0)
                       / lp["copy"]["seconds"])
        for who, ph in (("own, files'", row["own_phases"]), ("own, loader's", row["own_loader_order_phases"]),
                        ("desi-loader", row["loader_phases"])):
            for name, v in ph.items():
                print(f"    {who:13s} {name:13s} {v['seconds']:8.1f} s  server CPU {v['server_cpu_s']:7.1f} s  "
                      f"client CPU {v['client_cpu_s']:7.1f} s  WAL {v['wal_mb']:9.1f} MB  checkpoints {v['checkpoints']}"
                      f"  full-page images {v.get('fpi', '-')}")
        return row

    def tap(self) -> None:
        """The TAP service (GAVO DaCHS) against the same SQL on the server: one cone's latency
        (median of 10 centres, radius --tap-radius) and a --tap-rows sync query as VOTable."""
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # localpg: a tests helper
        import localpg
        import pyvo
        from desi_loader import cli
        if not (localpg.has_extension("pg_sphere", "15") and shutil.which("dachs")):
            print("\ntap: skipped (needs gavodachs2-server and postgresql-15-pgsphere: scripts/provision.sh)")
            return
        args = self.args
        per_file = max(1, args.tap_rows // 4)
        files = make_files(self.cache, 4, per_file)
        base = localpg.base_dir() / f"bench-tap-{os.getpid()}"
        tap_dir = Path(tempfile.mkdtemp(prefix="desi-bench-tap-"))
        port, tap_port = localpg.free_port(), localpg.free_port()
        try:
            su = localpg.start(base, port, version="15")
            conn = connect(su)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE desi")
            conn.close()
            dsn = f"postgresql://postgres@127.0.0.1:{port}/desi"
            conn = connect(dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE EXTENSION q3c")
            conn.close()
            assert cli.main(["load", *map(str, files), "--dsn", dsn, "-q", "--workers", str(self.W)]) == 0
            assert cli.main(["tap", "publish", "--dsn", dsn, "--tap-dir", str(tap_dir), "--port", str(tap_port)]) == 0
            self._tap_measure(dsn, pyvo.dal.TAPService(f"http://127.0.0.1:{tap_port}/tap"), galaxies(files))
        finally:
            cli.main(["tap", "stop", "--tap-dir", str(tap_dir)])
            localpg.stop(base, version="15")
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(tap_dir, ignore_errors=True)

    def _tap_measure(self, dsn: str, service, n: int) -> None:
        rng = np.random.default_rng(3)
        r = self.args.tap_radius
        centres = [(float(rng.uniform(0, 360)), float(rng.uniform(-10, 70))) for _ in range(10)]
        conn = connect(dsn)
        sql_t, tap_t, rows = [], [], []
        with conn.cursor() as cur:
            for ra, dec in centres:
                t0 = time.perf_counter()
                cur.execute("SELECT targetid, survey, program, ra, dec FROM desi_dr1.fastspecfit_metadata "
                            "WHERE q3c_radial_query(ra, dec, %s, %s, %s)", (ra, dec, r))
                got = cur.fetchall()
                sql_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                t = service.run_sync(f"SELECT targetid, survey, program, ra, dec FROM desi_dr1.fastspecfit_metadata "
                                     f"WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, {r}))"
                                     ).to_table()
                tap_t.append(time.perf_counter() - t0)
                assert len(t) == len(got), (ra, dec, len(t), len(got))
                rows.append(len(got))
        conn.close()
        sql_ms, tap_ms = np.median(sql_t) * 1e3, np.median(tap_t) * 1e3
        print(f"\ntap: a {r} degree cone on {n:,} galaxies (median of {len(centres)} centres, median "
              f"{int(np.median(rows))} rows): SQL {sql_ms:.1f} ms, TAP (pyvo run_sync, VOTable) {tap_ms:.1f} ms")
        self.results["tap_cone_ms"] = {"sql": round(sql_ms, 2), "tap": round(tap_ms, 2), "rows": int(np.median(rows))}
        self.ratio("tap_cone_latency_vs_sql", tap_ms / sql_ms)
        want = min(self.args.tap_rows, n)
        t0 = time.perf_counter()
        result = service.run_sync("SELECT * FROM desi_dr1.fastspecfit_metadata", maxrec=want)
        votable = result.to_table()
        secs = time.perf_counter() - t0
        cols = len(votable.columns)
        nbytes = sum(votable[c].nbytes for c in votable.columns)
        conn = connect(dsn)
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM desi_dr1.fastspecfit_metadata LIMIT {want}")
            cur.fetchall()
        sql_s = time.perf_counter() - t0
        conn.close()
        print(f"tap: {len(votable):,} rows x {cols} columns as one sync VOTable: {secs:.2f} s, "
              f"{len(votable) / secs:,.0f} rows/s ({nbytes / 1e6 / secs:.1f} MB/s of values); "
              f"the same rows through psycopg2: {sql_s:.2f} s")
        self.record("TAP sync query as VOTable (pyvo)", 1, secs, len(votable), nbytes)
        self.record("same rows, SQL through psycopg2", 1, sql_s, len(votable), nbytes)
        self.ratio("tap_sync_query_vs_sql", sql_s / secs)

    def finish(self) -> None:
        print("\nratios (measured in this run):")
        for k, v in self.results["ratios"].items():
            print(f"  {k:45s} {v:8.2f}")
        (self.out / "bench.json").write_text(json.dumps(self.results, indent=2, default=str))
        _chart(self.results, self.out / "bench.png")
        print(f"\nwrote {self.out / 'bench.json'} and {self.out / 'bench.png'}")
        self.stop()


class Probe:
    """What the server has done so far: its CPU (all its processes), WAL written (LSN), and
    checkpoints; ``mark(name)`` samples, ``phases()`` gives the differences between marks."""

    def __init__(self, dsn: str, data_dir) -> None:
        self.dsn, self.data_dir, self.marks = dsn, data_dir, []
        self.client: Optional[int] = None    # a client process (and its children) running now
        conn = connect(dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('pg_catalog.pg_stat_checkpointer') IS NOT NULL")
            self.checkpoints_sql = ("SELECT num_timed + num_requested FROM pg_stat_checkpointer" if cur.fetchone()[0]
                                    else "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
        conn.close()

    def sample(self) -> dict:
        conn = connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            wal = int(cur.fetchone()[0])
            cur.execute(self.checkpoints_sql)
            ckpt = int(cur.fetchone()[0])
            cur.execute("SELECT wal_fpi FROM pg_stat_wal")
            fpi = int(cur.fetchone()[0])
        conn.close()
        return {"t": time.perf_counter(), "server_cpu": server_cpu(self.data_dir), "wal": wal, "checkpoints": ckpt,
                "client_cpu": _children_cpu() + (tree_cpu(self.client) if self.client else 0.0), "fpi": fpi}

    def mark(self, name: str) -> None:
        self.marks.append((name, self.sample()))

    def seconds(self) -> float:
        """From the first mark to the last."""
        return self.marks[-1][1]["t"] - self.marks[0][1]["t"]

    def phases(self) -> dict:
        """phase -> seconds, server CPU s, client CPU s (this script's waited-for children),
        WAL bytes, checkpoints: between each mark and the next."""
        out = {}
        for (name, a), (_, b) in zip(self.marks, self.marks[1:]):
            out[name] = {"seconds": round(b["t"] - a["t"], 2),
                         "server_cpu_s": round(b["server_cpu"] - a["server_cpu"], 2),
                         "client_cpu_s": round(b["client_cpu"] - a["client_cpu"], 2),
                         "wal_mb": round((b["wal"] - a["wal"]) / 1e6, 1), "fpi": b["fpi"] - a["fpi"],
                         "checkpoints": b["checkpoints"] - a["checkpoints"]}
        return out


def _children_cpu() -> float:
    """CPU seconds of this process and of its children that ended (and were waited for)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


def _checkpoint(dsn: str) -> None:
    """Start a measurement from a clean slate: a CHECKPOINT, so that none is due mid-run from before."""
    conn = connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CHECKPOINT")
    conn.close()


def watched_command(dsn: str, files, schema: str, workers: int, probe: Probe, *extra) -> tuple[float, dict]:
    """``command`` with a probe mark at every phase change of the load (polled in its ledger)."""
    done = threading.Event()
    probe.mark("open")

    def watch() -> None:
        last = "open"
        while not done.wait(0.2):
            try:
                conn = connect(dsn)
                with conn.cursor() as cur:
                    cur.execute(f'SELECT coalesce(phase, %s) FROM "{schema}".loader_loads '
                                "ORDER BY load_id DESC LIMIT 1", ("copy",))
                    row = cur.fetchone()
                conn.close()
            except Exception:              # noqa: BLE001 -- the ledger does not exist yet
                continue
            phase = row[0] if row else last
            phase = "copy" if phase in ("open", None) else phase
            if phase != last:
                probe.mark(phase)
                last = phase

    def started(pid: int) -> None:
        probe.client = pid

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        return command(dsn, files, schema, workers, *extra, started=started)
    finally:
        done.set()
        t.join()
        probe.client = None                  # ended and waited for: in _children_cpu from now on
        probe.mark("end")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has spent: its own, its children's that it reaped
    (children times) and those of its children running now.

    A child that ends while the sample is taken would be counted twice or not at all: a zombie
    (exited, not reaped) shows no CPU time in /proc, and a child reaped after the parent's
    children times were read but before the children were listed is in neither (a backend
    closed just before a mark made a phase's server CPU negative, by the 20 s its session had
    spent).  So the sample is taken again, briefly, until the children listed before and after
    it are the same running processes."""
    import psutil
    try:
        p = psutil.Process(pid)
    except psutil.Error:
        return 0.0
    total = 0.0
    for _ in range(100):
        try:
            before = {c.pid for c in p.children()}
            t = p.cpu_times()
            total, steady = t.user + t.system + t.children_user + t.children_system, True
            for c in p.children():
                try:
                    if c.pid not in before or c.status() == psutil.STATUS_ZOMBIE:
                        steady = False
                        break
                    ct = c.cpu_times()
                    total += ct.user + ct.system + ct.children_user + ct.children_system
                except psutil.NoSuchProcess:
                    steady = False            # gone between the listing and the read: read again
                    break
            steady = steady and {c.pid for c in p.children()} == before
        except psutil.NoSuchProcess:
            return 0.0
        if steady:
            return total
        time.sleep(0.02)
    return total


def server_cpu(data_dir) -> float:
    """CPU seconds (user + system) a server has spent: its postmaster and every process it
    started (tree_cpu)."""
    return tree_cpu(int((Path(data_dir) / "postmaster.pid").read_text().split()[0]))


def citus_model(coord_per_row: float, workers_per_row: float, single_per_row: float, rows: int,
                nodes: int = 8, cores: int = 16) -> dict:
    """Server time of a whole load of the full catalog on 1 coordinator + ``nodes`` workers of
    ``cores`` cores each, from the measured server CPU per galaxy: the coordinator parses and
    routes every row (its cores bound it), the workers share the ingest and the index builds.
    Client encoding runs on the HPC nodes and is not the bound (the nodes section)."""
    coord_s = coord_per_row * rows / cores
    worker_s = workers_per_row * rows / (nodes * cores)
    bound = "coordinator" if coord_s >= worker_s else "workers"
    single_s = single_per_row * rows / cores
    lines = [f"model, {rows:,} galaxies, 1 coordinator + {nodes} workers x {cores} cores (server CPU only, "
             f"perfect parallelism, storage and network assumed not to bind):",
             f"coordinator {coord_s / 60:.1f} min, workers {worker_s / 60:.1f} min: bound by the {bound}, "
             f"about {max(coord_s, worker_s) / 60:.1f} min",
             f"one {cores}-core server, same model: {single_s / 60:.1f} min "
             f"(cluster / single: {single_s / max(coord_s, worker_s):.1f}x faster)"]
    return {"coordinator_cpu_per_row": coord_per_row, "workers_cpu_per_row": workers_per_row,
            "single_cpu_per_row": single_per_row, "minutes": round(max(coord_s, worker_s) / 60, 2),
            "single_minutes": round(single_s / 60, 2), "bound": bound, "lines": lines}


def estimate(per_worker: float, one_backend: float, nodes: int = 8, workers: int = 16,
             server_cores: int = 64, storage: float = 1.0e9) -> dict:
    """Copy time of the full catalog by ``nodes`` x ``workers`` from measured rates.

    Assumptions, stated: the loader side scales linearly with workers (each is independent,
    reading its own byte ranges: measured per-worker rate); the server ingests with at most
    one backend per core at the measured single-process, single-worker rate (which includes
    the client, so it is a lower bound of a backend); the server's storage absorbs
    ``storage`` bytes/s of table data (1 GB/s: a good NVMe array; the WAL of logged staging
    doubles the writes at wal_level=replica); the shared file system delivers the sum.
    """
    clients = nodes * workers
    client_rate = clients * per_worker
    server_rate = min(clients, server_cores) * one_backend
    rates = {"clients": client_rate, "server CPU": server_rate, "server storage": storage}
    bound = min(rates, key=rates.get)
    secs = FULL_CATALOG_BYTES / rates[bound]
    return {"assumed_server_cores": server_cores, "assumed_storage_mb_per_s": round(storage / 1e6),
            "measured_mb_per_s_per_worker": round(per_worker / 1e6, 1),
            "measured_mb_per_s_one_backend": round(one_backend / 1e6, 1),
            "client_side_mb_per_s": round(client_rate / 1e6), "server_cpu_mb_per_s": round(server_rate / 1e6),
            "bound_by": bound, "copy_minutes": round(secs / 60, 1),
            "galaxies_per_s": round(FULL_CATALOG_GALAXIES / secs)}


def quiet_units() -> None:
    """astropy warns about every FITS unit it cannot parse (FastSpecFit's '1e-17 erg / (cm2 s)'
    and 'nmgy'), thousands of lines per file; printing them would be timed as the reader's cost."""
    import warnings
    from astropy.units import UnitsWarning
    warnings.simplefilter("ignore", UnitsWarning)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_units()
    keep_freed_memory()          # in-process encoding measured with the workers' allocator setting
    bench = Bench(args)
    only = ({"copy", "alternatives", "growth", "nodes", "whole", "sky", "citus", "export", "tap", "statistics"}
            if args.only == "all"
            else set(args.only.split(",")))
    if only & {"copy", "alternatives"}:
        bench.ceiling_and_loader()
    if "alternatives" in only:
        bench.alternatives()
    if "growth" in only:
        bench.growth()
    if "nodes" in only:
        bench.nodes()
    if "whole" in only:
        bench.whole()
    if "sky" in only:
        bench.sky()
    if "citus" in only:
        bench.citus()
    if "export" in only:
        bench.export()
    if "tap" in only:
        bench.tap()
    if "statistics" in only:
        bench.statistics()
    if "scale" in only:                      # not in "all": two sizes of 0.4 and 1 million galaxies take long
        bench.scale()
    if "hats" in only:                       # not in "all": needs the [hats] extra and DuckDB's extension
        bench.hats()
    bench.finish()
    return 0


def _chart(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [m for m in results["methods"] if not m["method"].startswith(("growth", "overhead", "memory"))]
    labels = [f"{m['method']} (w={m['workers']})" for m in rows]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.5))
    ax.barh(labels, [m["rows_per_s"] for m in rows], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("galaxies per second (log scale)")
    ax.invert_yaxis()
    m = results["machine"]
    ax.set_title(f"FastSpecFit rows into PostgreSQL {m['server'].get('server_version')}, {m['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
