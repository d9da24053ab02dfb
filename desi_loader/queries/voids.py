"""Which galaxies live in which void: ``desivast_void_membership`` for all four void finders.

Definitions (docs/VOIDS.md has the reasoning):

- V2 (REVOLVER, VIDE, ZOBOV), ``method = 'zone'``: the authors' rule.  A galaxy of
  GALZONE with OUT = 0 belongs to void ``ZONEVOID[ZONE].VOID0`` (none when ZONE or VOID0
  is -1); ``parent_void`` is VOID1, the top-level void.  ``void_edge`` is 1 when the
  void's EDGE_AREA/TOT_AREA > 0.1 (the authors' edge-void criterion), ``galaxy_edge`` is
  GALZONE.EDGE.
- VoidFinder, ``method = 'holes'``: its files hold no galaxies, so membership is
  geometric.  The galaxies are DESIVAST's parent sample taken from the loaded FastSpecFit
  tables: SURVEY 'main', PROGRAM 'bright', SPECTYPE 'GALAXY', ZWARN 0, DELTACHI2 > 40,
  ZLIML < Z <= ZLIMU and M_r = ABSMAG01_SDSS_R + 0.97 (Z - 0.1) <= MAGLIM, with the limits
  from the VoidFinder file's own PRIMARY header, in the file's cap (NGC: 83 < RA < 304).
  Each galaxy is placed at its comoving position for a flat LCDM with the file's OMEGAM
  and h = 1 (Mpc/h, the units of HOLES) and belongs to every void one of whose holes
  (spheres) contains it.  ``void_edge`` is MAXIMALS.EDGE (0 interior, 1 edge, 2 near edge).
  The survey mask is not distributed, so galaxies are not cut by it (holes lie inside it
  by construction; edge voids are flagged).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Optional, TYPE_CHECKING

import numpy as np
from psycopg2 import sql

from ..db import relation_exists
from ..fits.config import released_name
from ..errors import UsageError
from ..coords import cartesian, comoving_distance
from ..catalog import attach
from ..catalog.files import published_headers

if TYPE_CHECKING:
    from ..db import Connection, Cursor

log = logging.getLogger(__name__)

TABLE = "desivast_void_membership"
V2 = ("REVOLVER", "VIDE", "ZOBOV")
#: DESIVAST's cap split (galaxy_catalog/iron.py): NGC is 83 < RA < 304 degrees
NGC_RA = (83.0, 304.0)
#: the parent-sample cuts DESIVAST applied before its own redshift and magnitude limits
PARENT = ("m.survey = 'main' AND m.program = 'bright' AND m.spectype = 'GALAXY' AND m.zwarn = 0 "
          "AND m.deltachi2 > 40")

DDL = """
CREATE TABLE {t} (
    algorithm   text NOT NULL,      -- VoidFinder, REVOLVER, VIDE, ZOBOV
    cap         text NOT NULL,      -- NGC, SGC
    void        bigint NOT NULL,    -- VoidFinder: MAXIMALS.VOID; V2: VOIDS.VOID (= ZONEVOID.VOID0)
    targetid    bigint NOT NULL,    -- DESI TARGETID (FastSpecFit, GALZONE.TARGET)
    parent_void bigint,             -- V2: VOID1, the top-level void; VoidFinder: NULL
    method      text NOT NULL,      -- 'zone' (V2, GALZONE/ZONEVOID) or 'holes' (VoidFinder geometry)
    void_edge   smallint,           -- VoidFinder: MAXIMALS.EDGE; V2: 1 if EDGE_AREA/TOT_AREA > 0.1
    galaxy_edge smallint,           -- V2: GALZONE.EDGE; VoidFinder: NULL
    PRIMARY KEY (algorithm, cap, void, targetid)
)"""


@dataclass(frozen=True)
class Limits:
    """The sample limits and cosmology of one VoidFinder file (its PRIMARY header)."""

    zmin: float
    zmax: float
    maglim: float
    omega_m: float


def limits(header: dict) -> Limits:
    try:
        return Limits(float(header["ZLIML"]), float(header["ZLIMU"]), float(header["MAGLIM"]),
                      float(header["OMEGAM"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the VoidFinder PRIMARY header lacks {exc}: cannot select its galaxies",
                         "load the released DESIVAST files") from exc


def in_spheres(points: np.ndarray, centres: np.ndarray, radii: np.ndarray,
               chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """All (point index, sphere index) pairs with |point - centre| < radius.

    Spheres go into a grid of cells as wide as the largest diameter (each sphere in the <= 8
    cells its bounding box touches); each point is tested against the spheres of its cell.
    """
    if len(points) == 0 or len(centres) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cell = 2.0 * float(radii.max())
    origin = np.minimum(points.min(axis=0), (centres - radii[:, None]).min(axis=0)) - cell
    lo = np.floor((centres - radii[:, None] - origin) / cell).astype(np.int64)
    hi = np.floor((centres + radii[:, None] - origin) / cell).astype(np.int64)
    span = int(max(np.floor((points - origin) / cell).max(), hi.max())) + 2

    def key(ijk):
        return (ijk[:, 0] * span + ijk[:, 1]) * span + ijk[:, 2]

    key_parts, owner_parts = [], []
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ijk = lo + np.array([dx, dy, dz])
                ok = (ijk <= hi).all(axis=1)
                key_parts.append(key(ijk[ok]))
                owner_parts.append(np.nonzero(ok)[0])
    keys, owners = np.concatenate(key_parts), np.concatenate(owner_parts)
    order = np.argsort(keys, kind="stable")
    keys, owners = keys[order], owners[order]
    out_p, out_s = [], []
    for start in range(0, len(points), chunk):
        pts = points[start:start + chunk]
        k = key(np.floor((pts - origin) / cell).astype(np.int64))
        a, b = np.searchsorted(keys, k, "left"), np.searchsorted(keys, k, "right")
        n = b - a
        p = np.repeat(np.arange(len(pts)), n)
        s = owners[np.repeat(a, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))]
        inside = ((pts[p] - centres[s]) ** 2).sum(axis=1) < radii[s] ** 2
        out_p.append(p[inside] + start)
        out_s.append(s[inside])
    return np.concatenate(out_p), np.concatenate(out_s)


def _headers(cur: Cursor, schema: str) -> dict:
    """(algorithm, cap) -> PRIMARY header of the published DESIVAST files."""
    out = {}
    for name, header in published_headers(cur, schema, "desivast"):
        for alg in ("VoidFinder",) + V2:
            for cap in ("NGC", "SGC"):
                if released_name(name).endswith(f"_{alg}_{cap}.fits"):
                    out[(alg, cap)] = header
    return out


def parent_sample(cur: Cursor, schema: str, lim: Limits, cap: str) -> tuple[np.ndarray, np.ndarray]:
    """TARGETIDs and (ra, dec, z) of the parent-sample galaxies of one VoidFinder file."""
    in_ngc = sql.SQL("m.ra > {} AND m.ra < {}").format(sql.Literal(NGC_RA[0]), sql.Literal(NGC_RA[1]))
    cap_cond = in_ngc if cap == "NGC" else sql.SQL("NOT ({})").format(in_ngc)
    q = sql.SQL(
        "SELECT m.targetid, m.ra, m.dec, m.z FROM {m} m JOIN {s} s USING (targetid, survey, program) "
        "WHERE {parent} AND m.z > %s AND m.z <= %s AND s.absmag01_sdss_r + 0.97 * (m.z - 0.1) <= %s AND {cap}"
    ).format(m=sql.Identifier(schema, "fastspecfit_metadata"), s=sql.Identifier(schema, "fastspecfit_specphot"),
             parent=sql.SQL(PARENT), cap=cap_cond)
    cur.execute(q, (lim.zmin, lim.zmax, lim.maglim))
    rows = cur.fetchall()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 3))
    tid = np.array([r[0] for r in rows], np.int64)
    pos = np.array([r[1:] for r in rows], np.float64)
    return tid, pos


def voidfinder_members(cur: Cursor, schema: str, cap: str, lim: Limits) -> tuple[list, int]:
    """Membership rows of one VoidFinder file, and the size of its parent sample."""
    tid, pos = parent_sample(cur, schema, lim, cap)
    cur.execute(sql.SQL("SELECT h.x, h.y, h.z, h.radius, h.void, m.edge FROM {} h JOIN {} m "
                        "USING (algorithm, cap, void) WHERE h.algorithm = 'VoidFinder' AND h.cap = %s").format(
        sql.Identifier(schema, "desivast_holes"), sql.Identifier(schema, "desivast_maximals")), (cap,))
    holes = np.array(cur.fetchall(), np.float64).reshape(-1, 6)
    xyz = cartesian(pos[:, 0], pos[:, 1], comoving_distance(pos[:, 2], lim.omega_m)) if len(tid) else pos
    gi, hi = in_spheres(xyz, holes[:, :3], holes[:, 3])
    pairs = np.unique(np.stack([holes[hi, 4].astype(np.int64), gi], axis=1), axis=0)
    edge = dict(zip(holes[:, 4].astype(np.int64).tolist(), holes[:, 5].astype(np.int64).tolist()))
    rows = [("VoidFinder", cap, int(v), int(tid[g]), None, "holes", edge[int(v)], None) for v, g in pairs]
    return rows, len(tid)


def _copy_rows(cur: Cursor, table: sql.Composed, rows: list) -> None:
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join("\\N" if v is None else str(v) for v in r) + "\n")
    buf.seek(0)
    cur.copy_expert(sql.SQL("COPY {} FROM STDIN").format(table).as_string(cur.connection), buf)


V2_INSERT = """
INSERT INTO {t}
SELECT g.algorithm, g.cap, z.void0, g.target, z.void1, 'zone',
       CASE WHEN v.tot_area > 0 AND v.edge_area / v.tot_area > 0.1 THEN 1 ELSE 0 END, g.edge
  FROM {galzone} g
  JOIN {zonevoid} z ON z.algorithm = g.algorithm AND z.cap = g.cap AND z.zone = g.zone
  JOIN {voids} v ON v.algorithm = g.algorithm AND v.cap = g.cap AND v.void = z.void0
 WHERE g.out = 0 AND z.void0 IS NOT NULL
ON CONFLICT DO NOTHING"""


@dataclass(frozen=True)
class Membership:
    """What ``build`` wrote: per (algorithm, cap), galaxies in voids and the galaxies considered."""

    counts: dict          # (algorithm, cap) -> (members, galaxies considered)


def build(conn: Connection, schema: str) -> Membership:
    """Re-create ``schema.desivast_void_membership`` in one transaction (readers see the old
    table or the new one; grants, owner, comments and views on the old one carry over)."""
    cur = conn.cursor()
    need = ("desivast_holes", "desivast_maximals", "fastspecfit_metadata", "fastspecfit_specphot")
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
    have = {r[0] for r in cur.fetchall()}
    headers = _headers(cur, schema)
    if not headers:
        raise UsageError(f"no DESIVAST files are published in schema {schema}",
                         "load the DESIVAST files (and FastSpecFit) first")
    new = sql.Identifier(schema, TABLE + "_new")
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(new))
    cur.execute(sql.SQL(DDL).format(t=new))
    counts: dict = {}
    if {"desivast_galzone", "desivast_zonevoid", "desivast_voids"} <= have:
        cur.execute(sql.SQL(V2_INSERT).format(t=new, galzone=sql.Identifier(schema, "desivast_galzone"),
                                              zonevoid=sql.Identifier(schema, "desivast_zonevoid"),
                                              voids=sql.Identifier(schema, "desivast_voids")))
        cur.execute(sql.SQL("SELECT g.algorithm, g.cap, count(*) FROM {} g WHERE g.out = 0 GROUP BY 1, 2").format(
            sql.Identifier(schema, "desivast_galzone")))
        galaxies = {(a, c): n for a, c, n in cur.fetchall()}
        cur.execute(sql.SQL("SELECT algorithm, cap, count(DISTINCT targetid) FROM {} GROUP BY 1, 2").format(new))
        for a, c, n in cur.fetchall():
            counts[(a, c)] = (n, galaxies.get((a, c), 0))
        for key, n in galaxies.items():
            counts.setdefault(key, (0, n))
    vf = [cap for (alg, cap) in headers if alg == "VoidFinder"]
    if vf and not set(need) <= have:
        missing = ", ".join(sorted(set(need) - have))
        raise UsageError(f"VoidFinder membership needs the FastSpecFit tables ({missing} missing)",
                         "load FastSpecFit into the same schema first")
    for cap in sorted(vf):
        rows, considered = voidfinder_members(cur, schema, cap, limits(headers[("VoidFinder", cap)]))
        _copy_rows(cur, new, rows)
        counts[("VoidFinder", cap)] = (len({r[3] for r in rows}), considered)
    cur.execute(sql.SQL("CREATE INDEX ON {} (targetid)").format(new))
    cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(new, sql.Literal(
        "galaxies in voids for the four DESIVAST void finders (desi-loader void-membership; see docs/VOIDS.md)")))
    cur.execute("SET LOCAL lock_timeout = '30s'")
    _replace(cur, schema, new)
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, TABLE)))
    conn.commit()
    return Membership(counts)


def _replace(cur: Cursor, schema: str, new: sql.Composed) -> None:
    """The new table in place of the old one, keeping what users attached to the old one
    (owner, grants, comments, their views), as the loader's swap does (attach.py)."""
    old = None
    views: list = []
    if relation_exists(cur, schema, TABLE):
        old = attach.capture(cur, schema, TABLE)
        views = attach.dependent_views(cur, schema, [TABLE], set())
        attach.drop_views(cur, views)
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, TABLE)))
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(TABLE)))
    cur.execute(sql.SQL("ALTER INDEX IF EXISTS {}.{} RENAME TO {}").format(
        sql.Identifier(schema), sql.Identifier(TABLE + "_new_pkey"), sql.Identifier(TABLE + "_pkey")))
    if old is not None:
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(format('%%I.%%I', "
                    "%s::text, %s::text)) AND attnum > 0", (schema, TABLE))
        attach.restore(cur, schema, TABLE, old, {r[0] for r in cur.fetchall()})
        attach.create_views(cur, views)


def fraction(counts: dict, key: tuple) -> Optional[float]:
    members, considered = counts.get(key, (0, 0))
    return members / considered if considered else None
