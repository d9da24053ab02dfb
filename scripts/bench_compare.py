#!/usr/bin/env python
"""Copy-phase throughput of this tree against another commit, interleaved in one run.

    python scripts/bench_compare.py HEAD~1 --rows 5000 --files 4 --workers 2 --repeat 3

Checks out BASE (any git revision) into a temporary worktree, writes sample FastSpecFit
files, and loads them alternately with the base and with this tree into one embedded
server (or --dsn), each load into a fresh schema.  Prints the best-of-N copy-phase
galaxies/s of each and their ratio: a refactoring should leave it within noise (±10 %
on a shared 2-core VM).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from desi_loader.servers import embedded as server  # noqa: E402
from desi_loader.samples.fastspecfit import write_fastspecfit_file  # noqa: E402


def one_load(tree: Path, files: list, dsn: str, workers: int, out: Path, startup: bool = False) -> float:
    """Galaxies/s of the copy phase of one load with the code in ``tree``: its streaming part
    (first rows encoded to last task committed), or with ``startup`` the whole phase
    (workers started, their connections, the last task)."""
    schema = "cmp_" + uuid.uuid4().hex[:8]
    js = out / f"{schema}.json"
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run([sys.executable, str(tree / "scripts" / "load.py"), *files, "--dsn", dsn, "--schema", schema,
                    "--workers", str(workers), "--unlogged", "-q", "--summary-json", str(js)],
                   check=True, env=env, cwd=str(tree))
    load = json.loads(js.read_text())["loads"][0]
    secs = load["phases"]["copy"] if startup else (load["phases"].get("copy_stream") or load["phases"]["copy"])
    rows = load["total_rows"] / 3                  # a galaxy is one row in each of the three tables
    subprocess.run([sys.executable, "-m", "desi_loader.cli", "sql", f'DROP SCHEMA "{schema}" CASCADE',
                    "--dsn", dsn], check=True, env=env, cwd=str(tree), stdout=subprocess.DEVNULL)
    return rows / secs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="git revision to compare against (e.g. HEAD~1, a commit id)")
    p.add_argument("--this", help="git revision to measure instead of the working tree")
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dsn")
    p.add_argument("--with-startup", action="store_true",
                   help="time the whole copy phase, the workers' start-up included (default: its streaming part)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="desi-cmp-") as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        this = ROOT
        if args.this:
            this = tmp / "this"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(this), args.this],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            files = [str(tmp / f"fastspec-iron-main-bright-nside1-hp{i:02d}.fits") for i in range(args.files)]
            for i, f in enumerate(files):
                write_fastspecfit_file(f, args.rows, seed=i)
            dsn = args.dsn or server.start(tmp / "pg")
            rates: dict = {"base": [], "this": []}
            for _ in range(args.repeat):
                rates["base"].append(one_load(base, files, dsn, args.workers, tmp, args.with_startup))
                rates["this"].append(one_load(this, files, dsn, args.workers, tmp, args.with_startup))
            b, t = max(rates["base"]), max(rates["this"])
            what = "whole copy phase (start-up included)" if args.with_startup else "copy phase (streaming)"
            print(f"{what}, {args.files} x {args.rows} galaxies, {args.workers} workers, best of {args.repeat}")
            print(f"  base {args.base}: {b:,.0f} galaxies/s  (runs: {', '.join(f'{r:,.0f}' for r in rates['base'])})")
            print(f"  {args.this or 'this tree'}: {t:,.0f} galaxies/s  (runs: {', '.join(f'{r:,.0f}' for r in rates['this'])})")
            print(f"  ratio this/base: {t / b:.2f}")
        finally:
            if not args.dsn:
                server.stop(tmp / "pg")
            for tree in (base, tmp / "this"):
                if tree.exists():
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
