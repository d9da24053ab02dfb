"""Which inputs are Parquet: HATS catalogs (and collections), directories of Parquet files,
Parquet files; what a HATS catalog says about itself.

A HATS catalog (hats.properties) is loaded from the partition files its
``partition_info.csv`` lists under ``dataset/`` (Norder=K/Dir=D/Npix=N.parquet, or a
directory Npix=N/ of files), each file a task's unit and a file of the load's ledger, named
by its path under ``dataset/``.  Its margin cache, point map, skymap and indexes are other
files and are never loaded as data.  A collection (collection.properties) loads its primary
catalog.  The catalog's ``dataset/_metadata`` gives each partition's rows: planning holds
each file's footer against it, and the total against ``hats_nrows``.

Pure apart from listing directories and reading the catalog's small text and metadata files.
"""
from __future__ import annotations

import csv
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import UsageError


@dataclass(frozen=True)
class ArrowSource:
    """One table's Parquet inputs: a HATS catalog, or Parquet files."""

    table: str                                 # the table's default name
    files: tuple                               # (path, name in the load)
    sky: Optional[tuple] = None                # (RA, DEC) columns the catalog names
    expected: dict = field(default_factory=dict)   # name -> rows the catalog's metadata gives
    missing: tuple = ()                        # (path, why) partitions the catalog lists that are absent
    total: Optional[int] = None                # hats_nrows
    origin: str = ""                           # what it is, for messages: 'HATS catalog DIR', 'Parquet files'


def properties(path: str) -> dict:
    """A Java-style properties file (key=value lines, # comments) as a dict."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", "!")):
                continue
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip().replace("\\:", ":")
    return out


def is_hats(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "hats.properties"))
                                    or os.path.isfile(os.path.join(path, "collection.properties")))


def table_name(text: str) -> str:
    """A plain lowercase table name made of ``text`` (a catalog's or directory's name)."""
    name = re.sub(r"[^a-z0-9_]", "_", text.lower()).strip("_") or "parquet"
    return name if re.match(r"^[a-z_]", name) else f"t_{name}"


def _primary(path: str) -> str:
    """A collection's primary catalog directory (or ``path`` itself for a catalog)."""
    coll = os.path.join(path, "collection.properties")
    if not os.path.isfile(coll) or os.path.isfile(os.path.join(path, "hats.properties")):
        return path
    props = properties(coll)
    rel = props.get("hats_primary_table_url")
    if not rel:
        raise UsageError(f"{path}: collection.properties names no hats_primary_table_url",
                         "give the catalog's own directory (the one holding hats.properties)")
    return os.path.normpath(os.path.join(path, rel))


def hats_source(path: str) -> ArrowSource:
    """The partition files of a HATS catalog (or of a collection's primary catalog)."""
    root = _primary(path)
    props_path = os.path.join(root, "hats.properties")
    if not os.path.isfile(props_path):
        raise UsageError(f"{root}: no hats.properties", "give the directory of a HATS catalog")
    props = properties(props_path)
    kind = props.get("dataproduct_type", "object")
    if kind not in ("object", "source"):
        raise UsageError(f"{root} is a HATS {kind} catalog, not a table of objects or sources",
                         "give the catalog itself (its margin cache and indexes are not loaded as data)")
    dataset = os.path.join(root, "dataset")
    files: list = []
    missing: list = []
    for order, npix in _partitions(root, dataset):
        base = os.path.join(dataset, f"Norder={order}", f"Dir={npix // 10000 * 10000}", f"Npix={npix}")
        suffix = props.get("hats_npix_suffix", ".parquet")
        if os.path.isfile(base + suffix):
            found = [base + suffix]
        elif os.path.isdir(base):
            found = sorted(glob.glob(os.path.join(base, "*.parquet")))
        else:
            found = []
        if not found:
            missing.append((base + suffix, f"partition Norder={order} Npix={npix} listed in partition_info.csv "
                                           "is missing (restore it, or give --allow-partial to load without it)"))
        files.extend((f, os.path.relpath(f, dataset)) for f in found)
    total = props.get("hats_nrows")
    name = props.get("obs_collection") or os.path.basename(os.path.normpath(root))
    sky = (props["hats_col_ra"], props["hats_col_dec"]) if props.get("hats_col_ra") and props.get("hats_col_dec") \
        else None
    return ArrowSource(table_name(name), tuple(files), sky, _expected_rows(dataset), tuple(missing),
                       int(total) if total and total.isdigit() else None, f"HATS catalog {root}")


def _partitions(root: str, dataset: str) -> list:
    """(order, pixel) of every partition: partition_info.csv, else the directory names."""
    info = os.path.join(root, "partition_info.csv")
    if os.path.isfile(info):
        with open(info, newline="", encoding="utf-8") as f:
            return [(int(r["Norder"]), int(r["Npix"])) for r in csv.DictReader(f)]
    out = []
    for p in glob.glob(os.path.join(dataset, "Norder=*", "Dir=*", "Npix=*")):
        m = re.search(r"Norder=(\d+).*Npix=(\d+)", p)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return sorted(set(out))


def _expected_rows(dataset: str) -> dict:
    """Rows per partition file (its name under dataset/) from dataset/_metadata; {} without it."""
    meta = os.path.join(dataset, "_metadata")
    if not os.path.isfile(meta):
        return {}
    from .arrow import pyarrow
    pq = pyarrow().parquet
    md = pq.ParquetFile(meta).metadata
    rows: dict = {}
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        if rg.num_columns:
            name = os.path.normpath(rg.column(0).file_path)
            rows[name] = rows.get(name, 0) + rg.num_rows
    return rows


def split_inputs(paths: Sequence[str]) -> tuple[list, list]:
    """(FITS paths, ArrowSources) of the command's paths: a HATS catalog or collection is one
    source, a directory holding Parquet files (and no FITS) one, and the Parquet files named
    on the command line one."""
    from .arrow import is_parquet

    fits_paths, sources, loose = [], [], []
    for p in paths:
        if is_hats(p):
            sources.append(hats_source(p))
        elif os.path.isdir(p) and glob.glob(os.path.join(p, "*.parquet")) and not _has_fits(p):
            found = sorted(glob.glob(os.path.join(p, "*.parquet")))
            sources.append(ArrowSource(table_name(os.path.basename(os.path.normpath(p))),
                                       tuple((f, os.path.basename(f)) for f in found), origin=f"Parquet files in {p}"))
        elif os.path.isfile(p) and is_parquet(p):
            loose.append(p)
        else:
            fits_paths.append(p)
    if loose:
        stem = os.path.splitext(os.path.basename(loose[0]))[0]
        sources.append(ArrowSource(table_name(stem), tuple((f, os.path.basename(f)) for f in loose),
                                   origin="Parquet files"))
    return fits_paths, sources


def any_parquet(paths: Sequence[str]) -> bool:
    """Whether any path looks like a Parquet input (a quick look: never raises)."""
    try:
        return any(p.endswith((".parquet", ".parq")) or is_hats(p)
                   or (os.path.isdir(p) and bool(glob.glob(os.path.join(p, "*.parquet")))) for p in paths)
    except OSError:
        return False


def _has_fits(path: str) -> bool:
    from .discover import FITS_PATTERNS
    return any(glob.glob(os.path.join(path, pat)) for pat in FITS_PATTERNS)
