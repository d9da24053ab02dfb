"""A staging table's planner statistics: ANALYZE, or for a wide table the same statistics
computed from one read of the sample (colstats.py) and restored: with
``pg_restore_attribute_stats`` on PostgreSQL 18+, and before 18, where a superuser loads
(the embedded server, a DBA's load), written into ``pg_statistic`` as ANALYZE writes them
(``_catalog_statements``; the values made by ``array_in``, the only way SQL makes an
``anyarray``).

ANALYZE of a wide table costs its column count times a sort of 30,000 values in one server
backend (two ANALYZE of one table cannot run at once): 8.6 s for FASTSPEC's 887 columns on
a 2-core machine, whatever the table's size.  Here the sample ANALYZE would take (every row
of a table of at most 300 x the statistics target rows; else that many rows drawn from that
many pages, as acquire_sample_rows draws them, named by TID) is read in physical order, its
values from this load's files where they hold every sampled row (the server sends each row's
file_id and row_num: pipeline/sample.py), else by binary COPY in a few sessions, a group of
columns each; and sorted by numpy, a group of columns per thread.  Columns that need the server's comparison
(text, whose order is the collation's; arrays; numeric) are left to ``ANALYZE (those
columns)``, which also sets the table's page and row counts.  A table with an expression
index or extended statistics is analyzed by the server whole (ANALYZE computes those only
without a column list), as is any table whose sample holds a NULL in a fixed-width column
(the fast read assumes none: the DESI catalogs store none), and every table on servers
before 18 where the loader is no superuser.
"""
from __future__ import annotations

import io
import logging
import threading
from typing import Callable, Optional, TYPE_CHECKING

import numpy as np
from psycopg2 import sql

from .. import colstats
from ..db import connect
from ..errors import BadFileError, DatabaseError
from ..fits.columns import FILE_ID, ROW_NUM, WIDE_TABLE
from ..pipeline.sample import FIXED, HEADER_BYTES, TRAILER_BYTES, FileRows, NullInSample, decode_fixed
from .ledger import app_name

if TYPE_CHECKING:
    from ..db import Connection, Cursor

log = logging.getLogger(__name__)

#: seconds of numpy per column group are about those of the server's COPY: a few groups
#: read and sort in parallel (each group is one more connection)
MAX_GROUPS = 4

#: seed of the page sample (REPEATABLE): every group reads the same rows
SEED = 20261204



def analyze(conn: Connection, dsn: str, tag: str, schema: str, stage: str, groups: int = 2,
            files: Optional[FileRows] = None) -> str:
    """Take the statistics of ``schema.stage``, its indexes built (their builds counted its
    rows); returns how ("ANALYZE" or "statistics of N columns from R sampled rows, ...").
    ``conn`` reads one group of columns, each other group opens a session of its own;
    ``files``: the table's rows in this load's files, where the sample's values are read
    (the server then names the sampled rows only)."""
    plan = _columns(conn, schema, stage)
    ident = sql.Identifier(schema, stage)
    if plan is None or not plan[3]:
        _run(conn, sql.SQL("ANALYZE {}").format(ident))
        return "ANALYZE"
    fixed, others, target, rows, pages = plan
    # more sessions where the server has slots for them (none: all in the caller's, in turn)
    extra = [c for c in (_session(dsn, tag) for _ in range(max(0, min(groups, MAX_GROUPS) - 1)
                                                            + bool(others))) if c is not None]
    # the columns only the server can order, analyzed by it meanwhile in a session of its own
    others_stmt = sql.SQL("ANALYZE {} ({})").format(ident, sql.SQL(", ").join(map(sql.Identifier, others)))
    side = _Side(extra.pop(), others_stmt) if others and extra else None
    try:
        stats, sampled, from_files = _sample_stats(conn, extra, schema, stage, fixed, rows, pages, target, files)
    except NullInSample:
        if side:
            side.join()
        _run(conn, sql.SQL("ANALYZE {}").format(ident))
        return "ANALYZE (a NULL in the sample)"
    except BaseException:
        if side:
            side.join(cancel=True)
        raise
    finally:
        for c in extra:
            c.close()
    _write(conn, schema, stage, stats, {n: t for n, t, _ in fixed}, None if others else (pages, rows))
    if side:
        side.join()
    elif others:
        _run(conn, others_stmt)
    return f"statistics of {len(stats)} columns from {sampled:,} sampled rows" + (
        " (their values read from the files)" if from_files else "") + (
        f", ANALYZE of {len(others)}" if others else "")


def _session(dsn: str, tag: str):
    """One more session for the statistics, or None when the server has no slot for it."""
    try:
        return connect(dsn, app_name("statistics", tag))
    except DatabaseError as exc:
        log.info("statistics in fewer sessions: %s", exc)
        return None


class _Side(threading.Thread):
    """One statement in a session of its own (closed at the end), beside the caller's work."""

    def __init__(self, conn: Connection, stmt) -> None:
        super().__init__(name="statistics-side", daemon=True)
        self.conn = conn
        self.stmt = stmt
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            _run(self.conn, self.stmt)
        except BaseException as exc:               # noqa: BLE001 -- raised by join()
            self.error = exc

    def join(self, timeout=None, cancel: bool = False) -> None:
        if cancel:
            self.conn.cancel()
        super().join(timeout)
        self.conn.close()
        if self.error is not None and not cancel:
            raise self.error


def _run(conn: Connection, stmt) -> None:
    with conn.cursor() as cur:
        cur.execute(stmt)
    conn.commit()


def _columns(conn: Connection, schema: str, stage: str) -> Optional[tuple[list, list, int, int, int]]:
    """(fixed-width columns [(name, type, target)], other columns, largest target, rows,
    pages), or None when the server should ANALYZE the table whole."""
    with conn.cursor() as cur:
        if conn.server_version < 180000:
            cur.execute("SELECT current_setting('is_superuser') = 'on'")
            if not cur.fetchone()[0]:
                conn.commit()
                return None
        cols = _columns_of(conn, schema, stage)
        cur.execute("SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = %(t)s::regclass AND "
                    "indexprs IS NOT NULL) OR EXISTS (SELECT 1 FROM pg_statistic_ext WHERE stxrelid = %(t)s::regclass)",
                    {"t": f'"{schema}"."{stage}"'})
        special = cur.fetchone()[0]
        cur.execute("SELECT reltuples, pg_relation_size(oid) / 8192 FROM pg_class WHERE oid = %s::regclass",
                    (f'"{schema}"."{stage}"',))
        rows, pages = cur.fetchone()
        if rows < 0:                        # no index build or VACUUM counted them yet
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, stage)))
            rows = cur.fetchone()[0]
    conn.commit()
    if special or len(cols) < WIDE_TABLE:
        return None
    cols = [(n, t, target) for n, t, target in cols if target != 0]      # target 0: no statistics
    fixed = [(n, t, target) for n, t, target in cols if t in FIXED]
    others = [n for n, t, _ in cols if t not in FIXED]
    return fixed, others, max((t for _, _, t in cols), default=100), int(rows), int(pages)


def _sample_stats(conn: Connection, extra: list, schema: str, stage: str, fixed: list, rows: int, pages: int,
                  target: int, files: Optional[FileRows] = None) -> tuple[list, int, bool]:
    """[(column, ColumnStats)] of ``fixed`` from the sample ANALYZE would take, read in
    ``conn`` and the ``extra`` sessions (a group of columns each), or from ``files`` where
    they hold every sampled row; the rows sampled; whether the files gave the values."""
    targrows = 300 * target
    source = _sample_source(conn, schema, stage, rows, pages, targrows)
    read, from_files = _reader(conn, source, fixed, files)
    sessions = [conn] + list(extra)
    size = -(-len(fixed) // len(sessions))
    parts = [fixed[i:i + size] for i in range(0, len(fixed), size)]
    out: list = [None] * len(parts)
    errors: list = []

    def one(k: int) -> None:
        try:
            out[k] = _group(sessions[k], read, parts[k], rows, targrows)
        except BaseException as exc:               # noqa: BLE001 -- re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [item for part in out for item in part[0]], (out[0][1] if out else 0), from_files


#: a binary COPY row of one tid: field count, length word, block number, line pointer
_TID_ROW = np.dtype([("n", ">i2"), ("len", ">i4"), ("block", ">u4"), ("offset", ">u2")])


def _sample_source(conn: Connection, schema: str, stage: str, rows: int, pages: int, targrows: int) -> sql.Composable:
    """The rows the groups read: the whole table when it has at most ``targrows`` rows, else
    the ``targrows`` rows of ANALYZE's sample, named by their TIDs.

    The sample is drawn as acquire_sample_rows draws it: as many pages as it wants rows
    (every page of a smaller table), then that many rows at random among all the rows of
    those pages.  Only the TIDs of those pages are read for the draw; each group then reads
    the drawn rows alone (a TID scan, in physical order), not every row of the pages:
    at 1,000,000 SPECPHOT rows (14 a page) that is 30,000 rows sent per group, not 430,000.
    """
    table = sql.Identifier(schema, stage)
    if rows <= targrows:
        return table
    pages_of = table if pages <= targrows else sql.SQL("{} TABLESAMPLE SYSTEM ({}) REPEATABLE ({})").format(
        table, sql.Literal(100.0 * targrows / pages), sql.Literal(SEED))
    with conn.cursor() as cur:
        cur.execute("SET LOCAL synchronize_seqscans = off")     # the table from its first page
        data = _copy_out(cur, sql.SQL("SELECT ctid FROM {}").format(pages_of))
    conn.rollback()
    tids = np.frombuffer(data[HEADER_BYTES:len(data) - TRAILER_BYTES], dtype=_TID_ROW)
    if len(tids) > targrows:
        tids = tids[_drawn(len(tids), targrows)]
    listed = ",".join(f'"({b},{o})"' for b, o in zip(tids["block"].tolist(), tids["offset"].tolist()))
    return sql.SQL("{} WHERE ctid = ANY ({}::tid[])").format(table, sql.Literal("{" + listed + "}"))


def _copy_out(cur: Cursor, select: sql.Composable) -> memoryview:
    """The rows of ``select`` as binary COPY bytes (header and trailer included)."""
    buf = io.BytesIO()
    cur.copy_expert(sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(select).as_string(cur), buf)
    return buf.getbuffer()


def _drawn(n: int, targrows: int) -> np.ndarray:
    """Which ``targrows`` of ``n`` rows the sample keeps, in physical order (one seed: every
    read of the same rows draws the same ones)."""
    return np.sort(np.random.default_rng(SEED).choice(n, targrows, replace=False))


#: columns per COPY statement of the sample.  Every value a binary COPY TO sends gets a
#: 1 KB buffer (pq_begintypsend) in the row's memory context, which is reset at each row:
#: a row of 444 columns makes it grow to blocks of 256 KB, and depending on what the
#: backend allocated before, glibc's malloc then gives those back to the kernel at every
#: row and the next row faults them in again.  Measured (20,000 FASTSPEC rows, 444 float
#: columns, after a small COPY on the same connection, each twice): one statement 3.0 s,
#: two of 222 columns 0.42-0.45 s, four of 111 0.46-0.49 s, 15 of 30 0.70-0.76 s; in a
#: load, FASTSPEC's statistics took 4.0-4.5 s where they take 1.4-1.8 s without the cliff.
#: Each statement reads the sample again: in a 40,000-galaxy load (three runs each) the
#: index phase took 2.56-2.69 s at 222, 2.58-2.70 s at 444 and 2.90-3.03 s at 100.
COLUMNS_PER_COPY = 222


def _from_server(source) -> Callable:
    """Reads a group's columns of the sample from the server (binary COPY TO, in its session)."""
    def read(conn: Connection, cols: list) -> list:
        columns: list = []
        with conn.cursor() as cur:
            cur.execute("SET LOCAL synchronize_seqscans = off")     # the whole table from its first page
            for i in range(0, len(cols), COLUMNS_PER_COPY):         # the same rows, in the same order
                part = cols[i:i + COLUMNS_PER_COPY]
                data = _copy_out(cur, sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(sql.Identifier(n) for n, _, _ in part), source))
                columns += decode_fixed(data, [t for _, t, _ in part])
        conn.rollback()
        return columns
    return read


def _reader(conn: Connection, source, fixed: list, files: Optional[FileRows]) -> tuple[Callable, bool]:
    """How the groups read the sample's columns: from this load's files when they hold every
    sampled row (the server sends each row's file_id and row_num, in physical order: the
    correlation is the table's), else from the server; and whether from the files."""
    types = {n: t for n, t, _ in fixed}
    if files is None or not files.usable() or types.get(FILE_ID) != "int8" or types.get(ROW_NUM) != "int8":
        return _from_server(source), False
    ids = _from_server(source)(conn, [(FILE_ID, "int8", 0), (ROW_NUM, "int8", 0)])
    try:
        rows = files.gather(ids[0], ids[1])
    except (OSError, ValueError, BadFileError) as exc:   # a file gone or changed since the copy: ask the server
        log.info("statistics of %s from the server: %s", source.as_string(conn)[:80], exc)
        rows = None
    if rows is None:
        return _from_server(source), False
    return (lambda _conn, cols: rows.columns([n for n, _, _ in cols], types)), True


def _group(conn: Connection, read: Callable, cols: list, rows: int, targrows: int) -> tuple[list, int]:
    columns = read(conn, cols)
    n = len(columns[0]) if columns else 0
    if n > targrows:           # a whole table with more rows than its row count said: draw as above
        keep = _drawn(n, targrows)
        columns = [values[keep] for values in columns]
    sampled = min(n, targrows)
    total = float(max(rows, sampled))
    stats = []
    for (name, _t, target), values in zip(cols, columns):
        stats.append((name, colstats.scalar_stats(values, 0, sampled, total, target)))
    return stats, sampled


def _write(conn: Connection, schema: str, stage: str, stats: list, types: dict, counts: Optional[tuple]) -> None:
    """Restore ``stats`` ([(column, ColumnStats)]; ``types``: column -> type name) and, when
    given, the table's (pages, rows), in one transaction."""
    with conn.cursor() as cur:
        if conn.server_version >= 180000:
            cur.execute(";".join(_restore_call(cur, schema, stage, name, st) for name, st in stats))
            if counts:
                cur.execute("SELECT pg_restore_relation_stats('schemaname', %s, 'relname', %s, 'relpages', "
                            "%s::integer, 'reltuples', %s::real)", (schema, stage, counts[0], float(counts[1])))
        else:
            cur.execute(";".join(_catalog_statements(cur, schema, stage, name, types[name], st)
                                 for name, st in stats))
            if counts:
                cur.execute("UPDATE pg_class SET relpages = %s, reltuples = %s WHERE oid = %s::regclass",
                            (counts[0], float(counts[1]), f'"{schema}"."{stage}"'))
    conn.commit()


def _columns_of(conn: Connection, schema: str, stage: str) -> list:
    """[(name, type name, statistics target)] of a table's columns, in order."""
    with conn.cursor() as cur:
        # the column's statistics target: NULL (PostgreSQL 17+) or -1 (before) for the default
        cur.execute("SELECT a.attname, t.typname, coalesce(nullif(a.attstattarget, -1), "
                    "current_setting('default_statistics_target')::int) FROM pg_attribute a "
                    "JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
                    "AND NOT a.attisdropped ORDER BY a.attnum", (f'"{schema}"."{stage}"',))
        return cur.fetchall()


#: pg_statistic's stakind of each slot ANALYZE fills for a scalar column (statistics.h)
KIND_MCV, KIND_HISTOGRAM, KIND_CORRELATION = 1, 2, 3
#: the pg_statistic columns one column's row is written with
_STAT_COLUMNS = ", ".join(["starelid", "staattnum", "stainherit", "stanullfrac", "stawidth", "stadistinct"]
                          + [f"{f}{k}" for f in ("stakind", "staop", "stacoll", "stanumbers", "stavalues")
                             for k in range(1, 6)])


def _catalog_statements(cur: Cursor, schema: str, stage: str, column: str, typ: str,
                        st: colstats.ColumnStats) -> str:
    """The statements writing one column's row of ``pg_statistic`` as ANALYZE
    (compute_scalar_stats) fills it: the most common values (kind 1, the type's ``=``), the
    histogram (kind 2, ``<``) and the correlation (kind 3, ``<``) in the slots in that order;
    no collation (the fixed-width types have none).  Before PostgreSQL 18; a superuser's."""
    slots: list = []            # (kind, operator, numbers, values)
    if st.mcv is not None and st.mcf is not None:
        slots.append((KIND_MCV, "=", [float(f) for f in st.mcf], colstats.literal(st.mcv)))
    if st.histogram is not None:
        slots.append((KIND_HISTOGRAM, "<", None, colstats.literal(st.histogram)))
    if st.correlation is not None:
        slots.append((KIND_CORRELATION, "<", [float(st.correlation)], None))
    slots += [(0, None, None, None)] * (5 - len(slots))
    rel = f'"{schema}"."{stage}"'
    kinds = ", ".join(str(k) for k, _, _, _ in slots)
    ops = ", ".join("0" if op is None else cur.mogrify("%s::regoperator::oid", (f"{op}({typ},{typ})",)).decode()
                    for _, op, _, _ in slots)
    numbers = ", ".join("NULL" if n is None else cur.mogrify("%s::real[]", (n,)).decode() for _, _, n, _ in slots)
    values = ", ".join("NULL" if v is None else cur.mogrify("array_in(%s, %s::regtype::oid, -1)", (v, typ)).decode()
                       for _, _, _, v in slots)
    return cur.mogrify(
        "DELETE FROM pg_statistic WHERE starelid = %(rel)s::regclass AND NOT stainherit AND staattnum = "
        "(SELECT attnum FROM pg_attribute WHERE attrelid = %(rel)s::regclass AND attname = %(col)s);"
        f"INSERT INTO pg_statistic ({_STAT_COLUMNS}) SELECT %(rel)s::regclass, attnum, false, %(nf)s, %(w)s, "
        f"%(nd)s, {kinds}, {ops}, 0, 0, 0, 0, 0, {numbers}, {values} FROM pg_attribute "
        "WHERE attrelid = %(rel)s::regclass AND attname = %(col)s",
        {"rel": rel, "col": column, "nf": st.null_frac, "w": st.avg_width, "nd": st.n_distinct}).decode()


def _restore_call(cur: Cursor, schema: str, stage: str, column: str, st: colstats.ColumnStats) -> str:
    args = ["schemaname", schema, "relname", stage, "attname", column]
    text = "SELECT pg_restore_attribute_stats(%s, %s, %s, %s, %s, %s, 'inherited', false, " \
           "'null_frac', %s::real, 'avg_width', %s::integer, 'n_distinct', %s::real"
    params: list = args + [st.null_frac, st.avg_width, st.n_distinct]
    if st.mcv is not None and st.mcf is not None:
        text += ", 'most_common_vals', %s::text, 'most_common_freqs', %s::real[]"
        params += [colstats.literal(st.mcv), [float(f) for f in st.mcf]]
    if st.histogram is not None:
        text += ", 'histogram_bounds', %s::text"
        params.append(colstats.literal(st.histogram))
    if st.correlation is not None:
        text += ", 'correlation', %s::real"
        params.append(st.correlation)
    return cur.mogrify(text + ")", params).decode()
