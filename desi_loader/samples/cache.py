"""Sample files in the cache directory, written once: what ``load --sample`` (and
``load(sample=True)``) loads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from .desivast import DEFAULT_SCALE, fastspecfit_positions, fastspecfit_targets, write_desivast_sample
from .fastspecfit import write_fastspecfit_sample


def write_samples(outdir: str, catalog: str, rows: int, files: int, scale: Optional[float],
                  seed: int = 1) -> list:
    """Write sample files of one catalog or both (DESIVAST targets from FastSpecFit main-bright)."""
    scale = DEFAULT_SCALE if scale is None else scale
    if catalog == "fastspecfit":
        return write_fastspecfit_sample(outdir, rows=rows, files=files, seed=seed)
    if catalog == "desivast":
        return write_desivast_sample(outdir, scale=scale, seed=seed, targets=fastspecfit_targets(outdir),
                                     galaxies=fastspecfit_positions(outdir))
    fsf = write_fastspecfit_sample(os.path.join(outdir, "fastspecfit"), rows=rows, files=files, seed=seed)
    fdir = os.path.join(outdir, "fastspecfit")
    return fsf + write_desivast_sample(os.path.join(outdir, "desivast"), scale=scale, seed=seed,
                                       targets=fastspecfit_targets(fdir), galaxies=fastspecfit_positions(fdir))


def ensure_sample(rows: int = 2000, files: int = 3, scale: Optional[float] = None,
                  say: Callable[[str], None] = print) -> list:
    """The sample directories (FastSpecFit, DESIVAST) in the cache, written on first use."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    outdir = os.path.join(base, "desi-loader", f"sample-{rows}x{files}-{scale or 'default'}")
    marker = os.path.join(outdir, ".complete")
    if not os.path.exists(marker):
        say(f"writing sample files (FastSpecFit {files} x {rows} rows, DESIVAST 8 files) to {outdir} ...")
        write_samples(outdir, "all", rows, files, scale)
        Path(marker).touch()
    return [os.path.join(outdir, "fastspecfit"), os.path.join(outdir, "desivast")]
