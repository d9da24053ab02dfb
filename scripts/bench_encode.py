#!/usr/bin/env python
"""Encoder micro-benchmark: values/s of float32, float64 and int64 columns, text vs binary,
and FastSpecFit rows/s per table (columnar text, the column-by-column text it replaced,
binary).  Pure CPU, one core, no database:

    python scripts/bench_encode.py [--rows 2000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from desi_loader.fits.config import load_settings  # noqa: E402
from desi_loader.fits.discover import build_plan  # noqa: E402
from desi_loader.pipeline.encodings import encoder_plan  # noqa: E402
from desi_loader.encode import Codec, encode_binary, encode_text, encode_text_fieldwise  # noqa: E402
from desi_loader.fits.read import read_info, read_rows  # noqa: E402
from desi_loader.samples.fastspecfit import write_fastspecfit_file  # noqa: E402
from desi_loader.control.worker import keep_freed_memory  # noqa: E402
from desi_loader.fits.columns import FitsColumn, encoder_field  # noqa: E402


def best(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def columns(code: str, ncols: int, nrows: int, rng) -> tuple[np.ndarray, Codec]:
    width = {"E": 4, "D": 8, "K": 8}[code]
    if code == "K":
        data = rng.integers(-2 ** 62, 2 ** 62, (nrows, ncols)).astype(">i8")
    else:
        data = (rng.standard_normal((nrows, ncols)) * 10.0 ** rng.integers(-30, 30, (nrows, ncols)))
        data = data.astype(">f4" if code == "E" else ">f8")
    rows = np.ascontiguousarray(data).view(np.uint8).reshape(nrows, ncols * width)
    fields = Codec([encoder_field(FitsColumn(f"C{i}", f"1{code}", code, 1, i * width)) for i in range(ncols)])
    return rows, fields


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000, help="rows per block (default 2000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each; the best counts (default 5)")
    args = ap.parse_args()
    keep_freed_memory()          # the allocator setting of the loader's workers (see worker.py)
    rng = np.random.default_rng(0)
    print(f"{'values':24s} {'binary':>14s} {'text':>14s} {'text (column by column)':>26s}   values/s")
    for code, label in (("E", "float32"), ("D", "float64"), ("K", "int64")):
        rows, fields = columns(code, 100, args.rows, rng)
        n = rows.shape[0] * len(fields)
        b = best(args.repeat, lambda: encode_binary(rows, fields))
        t = best(args.repeat, lambda: encode_text(rows, fields))
        o = best(args.repeat, lambda: encode_text_fieldwise(rows, fields))
        print(f"{label + ' (100 columns)':24s} {n / b:14,.0f} {n / t:14,.0f} {n / o:26,.0f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_fastspecfit_file(str(Path(tmp) / "fastspec-iron-main-bright-nside1-hp00.fits"), args.rows, seed=1)
        plan = build_plan([read_info(path)], load_settings().catalogs["fastspecfit"], "s")
        name = plan.files[0].info.name
        enc = encoder_plan(plan, {t: t for t in plan.tables}, {name: 1})[name]
        print(f"\n{'FastSpecFit table':24s} {'binary':>14s} {'text':>14s} {'text (column by column)':>26s}   rows/s")
        for table, te in enc.tables.items():
            rows = read_rows(path, te.hdus[0], 0, te.hdus[0].nrows)
            n = rows.shape[0]
            b = best(args.repeat, lambda: encode_binary(rows, te.fields))
            t = best(args.repeat, lambda: encode_text(rows, te.fields))
            o = best(args.repeat, lambda: encode_text_fieldwise(rows, te.fields))
            print(f"{table:24s} {n / b:14,.0f} {n / t:14,.0f} {n / o:26,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
