"""Planning and the entry points: find files, read headers, build one plan per catalog
(no database needed), then hand each plan to a Coordinator (coordinator.py).

The load's state lives in the database (the ledger tables, ledger.py), so rerunning the
same command after any interruption continues where the last run stopped.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Optional

from ..fits.config import check_distribution
from ..fits.config import load_settings, parse_distribution
from .coordinator import Coordinator
from ..fits.discover import Plan, build_plan, find_files, group_by_catalog
from ..errors import BadFileError, LoaderError, UsageError
from .options import LoadOptions
from .pool import Spares
from .summary import Summary
from ..fits.arrow import read_info as arrow_info
from ..fits.config import arrow_catalog, parse_sky
from ..fits.hats import ArrowSource, split_inputs
from ..fits.read import gzip_damage, read_info
from ..report import NullReporter

__all__ = ["LoadOptions", "Summary", "plan_loads", "run_loads", "run_load"]



def plan_loads(opts: LoadOptions) -> list[Plan]:
    """Find files, read headers and build one plan per catalog (no database needed)."""
    settings = load_settings(opts.config)
    fits_paths, sources = split_inputs(opts.paths)
    files = find_files(fits_paths) if fits_paths or not sources else []
    schema = opts.schema or settings.schema
    plans = [arrow_plan(src, opts, schema, len(sources)) for src in sources]
    for catalog, group in (group_by_catalog(files, settings, opts.catalog, opts.prefix, opts.sky) if files else ()):
        infos, failed = [], []
        for f in group:
            try:
                info = read_info(f)
            except BadFileError as exc:
                failed.append((f, exc.explained))
                continue
            if opts.verify_checksum and info.primary_checksum_ok is False:
                failed.append((f, "CHECKSUM of the PRIMARY HDU does not match its header (file corrupt; "
                                    "download it again, or --no-verify-checksum)"))
                continue
            infos.append(info)
        plan = build_plan(infos, catalog, schema, opts.task_bytes, opts.task_rows)
        compressed = {i.path for i in infos if i.compressed}
        plan = replace(plan, failed=tuple(failed) + tuple(
            (p, gzip_damage(p) or r if p in compressed else r) for p, r in plan.failed))
        plans.append(apply_distribution(plan, opts.distribute))
    unknown = {o.partition("=")[0].strip() for o in opts.distribute} - {t for p in plans for t in p.tables}
    if unknown:
        raise UsageError(f"--distribute names no table of this load: {', '.join(sorted(unknown))}",
                         f"tables: {', '.join(sorted(t for p in plans for t in p.tables))}")
    return plans


def arrow_plan(src: ArrowSource, opts: LoadOptions, schema: str, sources: int = 1) -> Plan:
    """The plan of one table of Parquet files or a HATS catalog (fits/arrow.py reads each
    file as a table of one HDU); partitions the catalog lists but lacks, and files whose rows
    differ from the catalog's metadata, are the plan's failed files."""
    if opts.catalog not in (None, "generic", "parquet"):
        raise UsageError(f"--catalog {opts.catalog} is a preset for FITS files; {src.origin} loads as one table",
                         "leave --catalog out (--prefix NAME names the table)")
    if opts.prefix and sources > 1:
        raise UsageError("--prefix names one table, but the paths hold several Parquet sources",
                         "load each HATS catalog or directory with its own command")
    names = [n for _, n in src.files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"two Parquet files share the name {dup[0]}", "load each copy once")
    sky = parse_sky(opts.sky) if opts.sky else (tuple(c.upper() for c in src.sky) if src.sky else None)
    catalog = arrow_catalog(opts.prefix or src.table, sky)
    infos, failed = [], list(src.missing)
    for path, name in src.files:
        try:
            info = arrow_info(path, name)
        except BadFileError as exc:
            failed.append((path, exc.explained))
            continue
        want = src.expected.get(os.path.normpath(name))
        if want is not None and want != info.hdus[0].nrows:
            failed.append((path, f"holds {info.hdus[0].nrows} rows, the catalog's dataset/_metadata says {want} "
                                 "(the partition was rewritten or damaged: restore it, or build the catalog again)"))
            continue
        infos.append(info)
    plan = build_plan(infos, catalog, schema, opts.task_bytes, opts.task_rows)
    notes: tuple = ()
    held = sum(i.hdus[0].nrows for i in infos)
    if src.total is not None and not failed and held != src.total:
        notes = (f"{src.origin}: its partitions hold {held:,} rows, hats.properties says hats_nrows={src.total:,}",)
    return replace(plan, failed=tuple(failed) + plan.failed, notes=plan.notes + notes)


def apply_distribution(plan: Plan, overrides: tuple) -> Plan:
    """The plan with --distribute TABLE=SPEC overrides of the preset's placements (a Citus cluster)."""
    tables = dict(plan.tables)
    for item in overrides:
        table, sep, spec = item.partition("=")
        if not sep:
            raise UsageError(f"--distribute {item!r}: expected TABLE=hash(COLUMN)|reference|local")
        if table.strip() not in plan.tables:
            continue                                  # a table of another catalog of this run
        t = plan.tables[table.strip()]
        dist = parse_distribution(spec)
        check_distribution(dist, t.name, [c.name for c in t.all_columns])
        tables[t.name] = replace(t, distribution=dist)
    return replace(plan, tables=tables)


def run_loads(opts: LoadOptions, reporter: Optional[NullReporter] = None,
              plans: Optional[list] = None, plan_s: float = 0.0, spares: Optional[Spares] = None) -> list[Summary]:
    """Plan (unless ``plans`` are given: plan_loads needs no database, so a caller can check
    paths and arguments before it starts a server), then load each catalog found among the
    paths; one Summary per catalog.  ``spares``: workers started before planning, for the
    first load (pool.Spares)."""
    reporter = reporter or NullReporter()
    if plans is None:
        t0 = time.perf_counter()
        reporter.phase("plan")
        plans = plan_loads(opts)
        plan_s = round(time.perf_counter() - t0, 3)
    summaries = []
    for plan in plans:
        summaries.append(Coordinator(opts, plan, reporter, spares).run(plan_s / len(plans)))
        spares = None
    return summaries


def run_load(opts: LoadOptions, reporter: Optional[NullReporter] = None) -> Summary:
    """Load files of a single catalog (see run_loads for several)."""
    summaries = run_loads(opts, reporter)
    if len(summaries) != 1:
        raise LoaderError(f"the paths hold {len(summaries)} catalogs; use run_loads")
    return summaries[0]
