"""The TAP service of a schema: publish it (describe, grant, write the resource descriptor,
import its metadata, serve), keep it in sync after loads, say what is served, stop it.

Nothing is copied: DaCHS reads the loader's tables where they are.  Privileges: DaCHS's
query roles get USAGE on the schema and SELECT on the published tables and views only;
DaCHS's admin role becomes a member of the tables' owner (it grants on them); every role
that had rights on the schema or its tables keeps them (DaCHS makes the grants exactly what
its resource descriptor lists, so they are listed, each through a profile of its own).
"""
from __future__ import annotations

import datetime
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import psycopg2
from psycopg2 import sql

from ..catalog import served as marker, skyindex
from ..catalog.names import index_name
from ..db import connect, first_line
from ..errors import DatabaseError, LoaderError, UsageError
from ..queries import coverage
from . import dachs, describe, rd, web

if TYPE_CHECKING:
    from ..db import Connection, Cursor

log = logging.getLogger(__name__)

#: every privilege of a table: a role holding them all keeps them all through DaCHS
_ALL_TABLE = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}


@dataclass
class Published:
    """What ``publish`` or ``sync`` did, for the command's report."""

    url: str
    schema: str
    tables: list                       # describe.TableMeta
    cone_services: dict                # table -> SCS URL
    notes: list = field(default_factory=list)   # units translated, columns left out, rights kept
    changed: bool = True               # the RD was rewritten and imported (sync: the server must re-read it)
    web: str = ""                      # the landing page: tables, coverage, search forms


def tap_url(base: str) -> str:
    return base + "/tap"


def publish(dsn: str, schema: str, tap_dir: Path, host: str = "127.0.0.1", port: int = 8080,
            admin_dsn: Optional[str] = None, start: bool = True) -> Published:
    """Serve the published tables of ``schema`` over TAP and SCS (creating the DaCHS
    instance in ``tap_dir`` on first use); start the server or make it re-read the schema."""
    dachs.dachs_command()                        # no DaCHS: say so before touching anything
    inst = dachs.Instance(Path(tap_dir))
    conn = connect(dsn, "desi-loader tap")
    try:
        conn.autocommit = True
        dachs.check_pgsphere(conn)
        target = dachs.Target.of(conn)
        if inst.exists() and inst.state()["database"] != target.label:
            raise UsageError(f"the TAP instance in {inst.root} serves {inst.state()['database']}, "
                             f"not {target.label}",
                             f"give --dsn for {inst.state()['database']}, or --tap-dir DIR for a second instance")
        with conn.cursor() as cur:
            metas = describe.describe_schema(cur, schema)
        if not [m for m in metas if m.kind == "table"]:
            raise UsageError(f"schema {schema} has no tables published by desi-loader",
                             "load a catalog first (desi-loader load ...), or name the schema with --schema")
        if inst.exists():
            inst.set_port(host, port, dsn)
        else:
            inst.create(target, host, port, dsn)
        if not _initialised(conn, inst):
            _init(conn, inst, admin_dsn or dsn)
        _admin_acts_as_owners(conn, inst, schema, metas, admin_dsn)
        sky_notes = _cone_indexes(conn, schema, metas, admin_dsn)
        result = _describe_and_import(conn, inst, schema)
        result.notes[:0] = sky_notes
        with conn.cursor() as cur:
            marker.record_served(cur, schema, str(inst.root.resolve()), tap_url(inst.url))
        inst.add_schema(schema)
        dachs.remember(inst.root)
    finally:
        conn.close()
    if start:
        inst.start()
        inst.expire(schema)
    return result


def _admin_acts_as_owners(conn: Connection, inst: dachs.Instance, schema: str, metas: list,
                          admin_dsn: Optional[str]) -> None:
    """DaCHS's admin role grants on the schema and its tables: it becomes a member of their
    owners (the loader's role), which keep every right they had.  Granting membership in a
    role needs its admin option (a superuser, ``--admin-dsn``), once."""
    admin = inst.admin_role()
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT r.rolname, r.rolsuper FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_roles r ON r.oid = c.relowner WHERE n.nspname = %s AND c.relname = ANY(%s) "
                    "UNION SELECT r.rolname, r.rolsuper FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
                    "WHERE n.nspname = %s", (schema, [m.name for m in metas], schema))
        owners = cur.fetchall()
        missing = []
        for owner, superuser in owners:
            if superuser:
                log.warning("the tables of %s are owned by the superuser %s: DaCHS's admin role becomes a member "
                            "of it; in production load as an ordinary role", schema, owner)
            cur.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (admin, owner))
            if not cur.fetchone()[0]:
                missing.append(owner)
    if not missing:
        return
    grantor = connect(admin_dsn, "desi-loader tap grant") if admin_dsn else conn
    try:
        with grantor.cursor() as cur:
            for owner in missing:
                cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(admin)))
        grantor.commit()
    except psycopg2.Error as exc:
        raise DatabaseError(f"cannot make DaCHS's admin role {admin} a member of {', '.join(missing)} "
                            f"(it grants on their tables): {first_line(exc)}",
                            "give --admin-dsn with a superuser, or run as one: "
                            + "; ".join(f"GRANT {o} TO {admin}" for o in missing)) from exc
    finally:
        if grantor is not conn:
            grantor.close()


def _cone_indexes(conn: Connection, schema: str, metas: list, admin_dsn: Optional[str]) -> list:
    """DaCHS serves a cone search over a q3c index only: create q3c where the role (or the
    superuser of ``--admin-dsn``) may, and build the q3c index of every sky-indexed table that
    lacks one, without reloading a row.  Notes: what was built, and why a table has no cone
    search where it still has none."""
    wanting = [m for m in metas if m.kind == "table" and m.sky and not m.q3c_index]
    if not wanting:
        return []
    admin = connect(admin_dsn, "desi-loader tap sky") if admin_dsn else conn
    database = conn.get_dsn_parameters().get("dbname", "")
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            q3c = skyindex.q3c_schema(cur)
            if q3c is None:
                try:
                    cur.execute("CREATE EXTENSION IF NOT EXISTS q3c")
                except psycopg2.Error as exc:
                    why = (f"the server has no q3c (install postgresql-NN-q3c): {first_line(exc)}"
                           if exc.pgcode == "0A000" or "control file" in str(exc) else
                           f"q3c is not installed and {'--admin-dsn' if admin_dsn else 'this role'} cannot create "
                           f"it ({first_line(exc)}); {skyindex.q3c_advice(database)}")
                    return [f"{m.name}: no cone search: {why}" for m in wanting]
                q3c = skyindex.q3c_schema(cur)
            if q3c is None:
                return [f"{m.name}: no cone search: q3c did not install" for m in wanting]
            notes = []
            for m in wanting:
                name = index_name(m.name, ("q3c",))
                cur.execute(skyindex.q3c_index_statement(schema, m.name, name, m.sky, q3c))
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, m.name)))
                notes.append(f"{m.name}: q3c index {name} built, its cone search is served")
            return notes
    except psycopg2.Error as exc:
        raise DatabaseError(f"cannot build the q3c indexes of {schema}: {first_line(exc)}",
                            "give --admin-dsn with a superuser or the tables' owner") from exc
    finally:
        if admin is not conn:
            admin.close()


def _initialised(conn: Connection, inst: dachs.Instance) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) = 2 AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE (n.nspname, c.relname) "
                    "IN (('tap_schema', 'columns'), ('dc', 'tablemeta'))", (inst.admin_role(),))
        return bool(cur.fetchone()[0]) and (inst.root / "state").is_dir()


def _init(conn: Connection, inst: dachs.Instance, admin_dsn: str) -> None:
    admin = connect(admin_dsn, "desi-loader tap init")
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            superuser = cur.fetchone()[0]
            same_db = dachs.Target.of(admin).label == dachs.Target.of(conn).label
        admin.rollback()
    finally:
        admin.close()
    if not same_db:
        raise UsageError("--admin-dsn names another database than --dsn",
                         "both must reach the database that holds the tables")
    if not superuser:
        raise UsageError("setting up DaCHS in the database needs a superuser once (it creates its roles and "
                         "the pgsphere extension)",
                         "give --admin-dsn with a superuser of the same database, e.g. "
                         "postgresql://postgres@HOST/DB (later publishes need only --dsn)")
    inst.init(admin_dsn)


def _describe_and_import(conn: Connection, inst: dachs.Instance, schema: str, force: bool = True) -> Published:
    """Write the RD of what ``schema`` publishes now and import its metadata (serialised per
    schema: two loads finishing together import one after the other).

    Unless ``force``, an RD that would say the same as the one in place (a load that replaced
    rows but no column, table or right, and moved no row count by 2x: rd.same_description)
    is left alone: the running server keeps it.  DaCHS 2.7's RD cache is not safe against a
    reload while other threads look the RD up (a query arriving then fails with a KeyError
    naming the RD), so a reload is done only when the description changed."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtext('desi-loader tap ' || %s))", (schema,))
        try:
            metas = describe.describe_schema(cur, schema)
            privileges, notes = _privileges(cur, inst, schema, metas)
            created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            covered = {m.name: coverage.coverage(cur, schema, m.name) for m in metas if m.sky and m.kind == "table"}
            text = rd.resource_descriptor(schema, metas, privileges, f"DESI DR1 catalogs ({schema})", created,
                                          _declared_coverage(cur, covered))
            path = inst.rd_path(schema)
            changed = force or not path.exists() or not rd.same_description(path.read_text(), text)
            if changed:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".rd.tmp")
                tmp.write_text(text)
                tmp.replace(path)
                inst.imp_meta(schema)
            web.write(path.parent / rd.WEB_DIR, schema, metas, covered, tap_url(inst.url))   # files: no reload
        finally:
            cur.execute("SELECT pg_advisory_unlock(hashtext('desi-loader tap ' || %s))", (schema,))
    notes = _column_notes(metas) + notes
    cones = {m.name: f"{inst.url}/{schema}/{rd.RD_NAME}/{rd.service_id(m.name)}/scs.xml"
             for m in metas if m.sky and m.q3c_index and m.kind == "table"}
    return Published(tap_url(inst.url), schema, metas, cones, notes, changed, inst.url + rd.web_path(schema))


def _declared_coverage(cur: Cursor, covered: dict) -> str:
    """The sky the served tables cover, as the MOC the RD declares: from each table's coverage
    ({table: queries.coverage.Coverage}) where it is fine enough (a large table's), else
    counted again at the declared order (a small table: a cheap query)."""
    order = coverage.DECLARED_ORDER
    cells = [c.cells_at(order) if c.order >= order else coverage.coverage(cur, c.schema, c.table, order).cells
             for c in covered.values()]
    return coverage.moc_ascii(np.concatenate(cells), coverage.DECLARED_ORDER) if cells else ""


def _column_notes(metas: list) -> list:
    seen, notes = set(), []
    for m in metas:
        for c in m.columns:
            if c.note and (c.fits_unit, c.note) not in seen:
                seen.add((c.fits_unit, c.note))
                notes.append(f"unit {c.fits_unit!r}: {c.note}" if c.fits_unit else f"{m.name}.{c.name}: {c.note}")
        for col, why in m.left_out:
            notes.append(f"{m.name}.{col} not served: {why}")
    return notes


def _privileges(cur: Cursor, inst: dachs.Instance, schema: str, metas: list) -> tuple:
    """Profiles for the RD: DaCHS's, and one per role that holds rights now (kept as they are)."""
    ours = {inst.admin_role(), *inst.query_roles()}
    base_read, base_all = ("trustedquery", "untrustedquery"), ("admin",)
    notes = []
    cur.execute("SELECT pg_get_userbyid(nspowner), nspacl FROM pg_namespace WHERE nspname = %s", (schema,))
    owner, acl = cur.fetchone()
    rights = _acl(cur, acl)
    full = {owner} | {r for r, p in rights.items() if "CREATE" in p}
    out = {"": rd.Privileges(base_read + _profiles(inst, set(rights) - full - ours),
                             base_all + _profiles(inst, full - ours))}
    for m in metas:
        cur.execute("SELECT pg_get_userbyid(relowner), relacl FROM pg_class WHERE oid = %s::regclass",
                    (describe._qname(schema, m.name),))
        owner, acl = cur.fetchone()
        rights = _acl(cur, acl)
        full = {owner} | {r for r, p in rights.items() if _ALL_TABLE <= p}
        read = {r for r, p in rights.items() if r not in full and "SELECT" in p}
        for r, p in rights.items():
            if r not in full and r not in ours and p - {"SELECT"}:
                notes.append(f"{schema}.{m.name}: role {r} holds {', '.join(sorted(p))}: DaCHS keeps only "
                             "SELECT or all rights, so it keeps SELECT")
        out[m.name] = rd.Privileges(base_read + _profiles(inst, read - ours), base_all + _profiles(inst, full - ours))
    return out, notes


def _acl(cur: Cursor, acl) -> dict:
    """role -> set of privileges of an aclitem[] (PUBLIC left out: DaCHS leaves it alone)."""
    if not acl:
        return {}
    cur.execute("SELECT r.rolname, array_agg(a.privilege_type) FROM aclexplode(%s::aclitem[]) a "
                "JOIN pg_roles r ON r.oid = a.grantee GROUP BY 1", (acl,))
    return {r: set(p) for r, p in cur.fetchall()}


def _profiles(inst: dachs.Instance, roles: set) -> tuple:
    return tuple(inst.profile_for(r) for r in sorted(roles))


def sync(dsn: str, schema: str, say: Optional[Callable[[str], None]] = None, finalizer: bool = True) -> Optional[str]:
    """After a load (or void-membership) published into ``schema``: bring the TAP service
    serving it up to date (its RD and TAP_SCHEMA describe exactly the published columns).
    Returns a one-line message, or None when no TAP service serves the schema.  A failure
    here does not undo what was published: it is said, with the command that repairs it."""
    try:
        return _sync(dsn, schema, say, finalizer)
    except (LoaderError, psycopg2.Error, OSError) as exc:
        message = (f"warning: {schema} is published, but its TAP service could not be brought up to date "
                   f"({first_line(exc)}): run desi-loader tap publish --schema {schema}")
        (say or log.warning)(message)
        return message


def sync_loads(dsn: str, summaries: list, say: Optional[Callable[[str], None]] = None) -> None:
    """After loads: every schema they published rows into and a TAP service serves is brought
    up to date (the process that finalized a schema says where to publish when it cannot)."""
    for schema in sorted({s.schema for s in summaries if s.role != "nothing" and s.rows}):
        sync(dsn, schema, say, finalizer=any(s.finalized for s in summaries if s.schema == schema))


def _sync(dsn: str, schema: str, say: Optional[Callable[[str], None]], finalizer: bool) -> Optional[str]:
    conn = connect(dsn, "desi-loader tap sync")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            served = marker.served_by(cur, schema)
        messages = []
        for tap_dir, host, url in served:
            inst = dachs.Instance(Path(tap_dir))
            if host != socket.gethostname() or not inst.exists():
                if finalizer:
                    messages.append(f"TAP service {url} (on {host}) serves {schema}: run desi-loader tap publish "
                                    f"--schema {schema} there to describe the new tables")
                continue
            result = _describe_and_import(conn, inst, schema, force=False)
            if result.changed:
                inst.expire(schema)
            messages.append(f"TAP: {url} describes {len(result.tables)} tables of {schema} "
                            f"({sum(len(t.columns) for t in result.tables):,} columns"
                            + ("" if result.changed else ", unchanged") + ")")
    finally:
        conn.close()
    message = "; ".join(messages) or None
    if message and say:
        say(message)
    return message


@dataclass
class Status:
    url: str
    running: bool
    database: str
    schemas: dict              # schema -> (tables served, in sync, what differs)


def status(inst: dachs.Instance, dsn: Optional[str]) -> Status:
    """What the instance serves and whether TAP_SCHEMA matches the published tables."""
    if not inst.exists():
        raise UsageError(f"no TAP service in {inst.root}", "desi-loader tap publish creates it")
    state = inst.state()
    schemas = {}
    if dsn:
        conn = connect(dsn, "desi-loader tap status")
        reader = connect(inst.profile_dsn("trustedquery"), "desi-loader tap status")   # may read tap_schema
        try:
            with conn.cursor() as cur, reader.cursor() as tap_cur:
                for schema in state["schemas"]:
                    schemas[schema] = _compare(cur, tap_cur, schema)
        finally:
            conn.close()
            reader.close()
    return Status(tap_url(inst.url), inst.running(), state["database"], schemas)


def _compare(cur: Cursor, tap_cur, schema: str) -> tuple:
    """(tables served, in sync, what differs: +published but not served, -served but gone)."""
    published = {(m.name, c.name) for m in describe.describe_schema(cur, schema) for c in m.columns}
    tap_cur.execute("SELECT split_part(table_name, '.', 2), trim(both '\"' from column_name) FROM tap_schema.columns "
                "WHERE table_name LIKE %s", (schema + ".%",))
    served = set(tap_cur.fetchall())
    tables = {t for t, _c in served}
    differ = sorted(f"+{t}.{c}" for t, c in published - served) + sorted(f"-{t}.{c}" for t, c in served - published)
    return len(tables), not differ, differ
