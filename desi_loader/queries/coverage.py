"""The sky a table covers, from its sky index: HEALPix cells at an order and the rows in each,
computed in the database (one GROUP BY over the hpx29 index: no row leaves the server), then
written as a MOC (IVOA MOC 2.0, FITS or JSON, through mocpy), drawn as a sky map (PNG, PDF),
or summed into an area.

A nested pixel of order k holds the order-29 pixels ``[p << 2(29-k), (p + 1) << 2(29-k))``,
so the cell of a row at order k is ``hpx29 >> 2(29-k)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from psycopg2 import sql

from ..errors import UsageError
from ..sky import COLUMN, ORDER
from .cone import describe
from .export import by_extension

if TYPE_CHECKING:
    from ..db import Cursor

#: the whole sky in square degrees (4 pi steradians)
SKY_DEG2 = 4 * math.pi * (180 / math.pi) ** 2

#: orders a coverage may be computed at: 3 (cells of 54 deg2) to 13 (cells of 0.18 arcmin2)
MIN_ORDER, MAX_ORDER = 3, 13

#: file formats by extension
FORMATS = {".fits": "moc-fits", ".json": "moc-json", ".png": "map", ".pdf": "map"}


@dataclass(frozen=True)
class Coverage:
    """The cells of one order that hold rows of a table, and how many rows each holds."""

    schema: str
    table: str
    order: int
    cells: np.ndarray          # nested pixel numbers at ``order``, ascending
    counts: np.ndarray         # rows in each
    rows: int                  # rows with a position (the sum of counts)

    @property
    def cell_deg2(self) -> float:
        return SKY_DEG2 / (12 * 4 ** self.order)

    @property
    def area_deg2(self) -> float:
        return len(self.cells) * self.cell_deg2

    @property
    def sky_fraction(self) -> float:
        return len(self.cells) / (12 * 4 ** self.order)

    def cells_at(self, order: int) -> np.ndarray:
        """The covered cells at a coarser (or the same) order: the parents of the cells."""
        if order > self.order:
            raise ValueError(f"order {order} is finer than the coverage's {self.order}")
        return np.unique(self.cells >> (2 * (self.order - order)))

    def line(self) -> str:
        """The coverage in one line, for the terminal and the load's summary."""
        return (f"{self.schema}.{self.table}: {self.rows:,} rows in {len(self.cells):,} cells of order "
                f"{self.order} ({_cell_size(self.cell_deg2)}): {self.area_deg2:,.1f} deg2, "
                f"{100 * self.sky_fraction:.2f} % of the sky")


def _cell_size(deg2: float) -> str:
    return f"{deg2:.3g} deg2 each" if deg2 >= 0.01 else f"{deg2 * 3600:.3g} arcmin2 each"


def default_order(rows: int) -> int:
    """About one row per cell of the whole sky (12 * 4**order cells), within MIN..MAX_ORDER:
    a sparse table gets coarse cells (its coverage is not a scatter of points), a large one
    fine cells (order 10 for the 18M FastSpecFit galaxies: 3.4 arcmin cells)."""
    if rows <= 12:
        return MIN_ORDER
    return int(min(MAX_ORDER, max(MIN_ORDER, math.floor(math.log(rows / 12, 4)))))


def check_order(order: int) -> None:
    if not MIN_ORDER <= order <= MAX_ORDER:
        raise UsageError(f"--order {order}: expected {MIN_ORDER} to {MAX_ORDER}",
                         f"order 8 has cells of {SKY_DEG2 / (12 * 4 ** 8):.3f} deg2; each order more divides them by 4")


def coverage(cur: Cursor, schema: str, table: str, order: int | None = None) -> Coverage:
    """The coverage of ``schema.table`` (a table with a sky index) at ``order`` (default:
    default_order of its row count)."""
    t = describe(cur, schema, table)
    if order is None:
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    (sql.Identifier(t.schema, t.table).as_string(cur),))
        estimate = int(cur.fetchone()[0])
        if estimate < 0:                       # never analyzed: count (a small table)
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t.schema, t.table)))
            estimate = int(cur.fetchone()[0])
        order = default_order(estimate)
    check_order(order)
    shift = 2 * (ORDER - order)
    cur.execute(sql.SQL("SELECT {c} >> %s AS cell, count(*) FROM {t} WHERE {c} IS NOT NULL GROUP BY 1 ORDER BY 1")
                .format(c=sql.Identifier(COLUMN), t=sql.Identifier(t.schema, t.table)), (shift,))
    got = cur.fetchall()
    cells = np.array([r[0] for r in got], np.int64)
    counts = np.array([r[1] for r in got], np.int64)
    return Coverage(t.schema, t.table, order, cells, counts, int(counts.sum()))


#: the order of the coverage a TAP service declares (cells of 0.84 deg2): DaCHS keeps it in
#: its registry records, which Aladin and the registries read; finer would grow every record
DECLARED_ORDER = 6


def moc_ascii(cells: np.ndarray, order: int) -> str:
    """Cells of one order in the MOC ASCII serialisation ("6/1-3,7"), as DaCHS reads it."""
    cells = np.unique(np.asarray(cells, np.int64))
    if not len(cells):
        return f"{order}/"
    breaks = np.flatnonzero(np.diff(cells) != 1)
    starts = np.concatenate(([cells[0]], cells[breaks + 1]))
    ends = np.concatenate((cells[breaks], [cells[-1]]))
    return f"{order}/" + ",".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts.tolist(), ends.tolist()))


def output_kind(path: str) -> str:
    """What ``--output`` writes: a MOC or a map, by the file's extension."""
    return by_extension(path, FORMATS, "a MOC as .fits or .json, a sky map as .png or .pdf")


def moc(cov: Coverage):
    """The coverage as a mocpy MOC (IVOA MOC 2.0) of ``cov.order``."""
    try:
        from mocpy import MOC
    except ImportError as exc:
        raise UsageError("writing a MOC needs mocpy", "pip install 'desi-loader[sky]'") from exc
    if not len(cov.cells):
        return MOC.new_empty(cov.order)
    depth = np.full(len(cov.cells), cov.order, np.uint8)
    return MOC.from_healpix_cells(cov.cells.astype(np.uint64), depth, max_depth=cov.order)


def write_moc(cov: Coverage, path: str) -> None:
    fmt = "fits" if path.lower().endswith(".fits") else "json"
    moc(cov).save(path, format=fmt, overwrite=True)
