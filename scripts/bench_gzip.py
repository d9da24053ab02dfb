#!/usr/bin/env python
"""Loading gzip'd FITS against loading the same file uncompressed, in one run.

    python scripts/bench_gzip.py --rows 20000 --workers 2 --repeat 3

Writes one FastSpecFit sample file and its .fits.gz, then loads alternately (each into a
fresh schema of one embedded server, or --dsn): the plain file split into row-range tasks
over all workers, and the .gz file (one task: decompressed once into a temporary file, then
sent in chunks).  Also times decompressing the file alone on one core: what a seekable gzip
index (parallel row-range tasks inside a .gz) could at most save.  Prints best-of-N seconds
of the whole command and the ratios.
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from desi_loader.servers import embedded as server  # noqa: E402
from desi_loader.samples.fastspecfit import write_fastspecfit_file  # noqa: E402

NAME = "fastspec-iron-main-bright-nside1-hp00.fits"


def load_seconds(path: str, dsn: str, workers: int, task_rows: int) -> float:
    schema = "gz_" + uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "load.py"), path, "--dsn", dsn, "--schema", schema,
                    "--workers", str(workers), "--task-rows", str(task_rows), "-q"], check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dsn")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gzip-"))
    try:
        plain_dir, gz_dir = work / "plain", work / "gz"
        plain_dir.mkdir()
        gz_dir.mkdir()
        plain = write_fastspecfit_file(str(plain_dir / NAME), args.rows, seed=5)
        gz = str(gz_dir / (NAME + ".gz"))
        with open(plain, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as out:
            shutil.copyfileobj(src, out, 4 << 20)
        size, zsize = os.path.getsize(plain), os.path.getsize(gz)
        dsn = args.dsn or server.start(work / "pgdata")
        task_rows = max(1, args.rows // (4 * args.workers))      # plain: several tasks per worker
        times: dict = {"plain": [], "gzip": [], "gunzip alone": []}
        for _ in range(args.repeat):
            times["plain"].append(load_seconds(plain, dsn, args.workers, task_rows))
            times["gzip"].append(load_seconds(gz, dsn, args.workers, task_rows))
            t0 = time.perf_counter()
            with gzip.open(gz, "rb") as f:
                while f.read(4 << 20):
                    pass
            times["gunzip alone"].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in times.items()}
        print(f"{args.rows} galaxies, {size / 1e6:.1f} MB FITS, {zsize / 1e6:.1f} MB gzip'd, "
              f"{args.workers} workers, best of {args.repeat}")
        for k, v in best.items():
            print(f"  {k:14s} {v:7.2f} s")
        print(f"  gzip / plain   {best['gzip'] / best['plain']:.2f}x the time "
              f"(decompression alone is {best['gunzip alone'] / best['plain']:.2f}x the plain load)")
        if not args.dsn:
            server.stop(work / "pgdata")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
