"""What users attach to published tables, carried over to their replacements in the swap.

A production database has reader roles with GRANTs, views that astronomers wrote, comments,
row-level security, extra indexes.  Publishing a load replaces each table by a new one, so
everything attached to the old table is captured before the swap and re-applied to the new
one in the same transaction (readers never see the tables without them):

- owner, privileges (table and column GRANTs, PUBLIC included), table and column comments,
  row-level security (enabled, forced, policies);
- views and materialized views that depend on the tables, transitively: dropped and
  re-created from their definitions, with their owner, privileges, comments, options and
  (materialized) indexes and data;
- indexes users added: built on the staging table in the index phase, renamed in the swap.

What cannot be carried over (foreign keys from other tables, triggers, rules, publications,
inheritance, a view that uses a column the new table lacks, an owner the loading role may
not act as) is found by ``preflight`` before any data moves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, TYPE_CHECKING

from psycopg2 import sql

from ..db import relation_oid

if TYPE_CHECKING:
    from ..db import Cursor


@dataclass
class Attachments:
    """What one published table carries besides its rows."""

    owner: str
    comment: Optional[str]
    column_comments: dict                      # column -> comment
    grants: list                               # (grantee or None for PUBLIC, privilege, grantable)
    column_grants: list                        # (column, grantee, privilege, grantable)
    rls: tuple = (False, False)                # (enabled, forced)
    policies: list = field(default_factory=list)   # CREATE POLICY statements (text)


@dataclass
class View:
    """A user's view or materialized view depending on published tables."""

    schema: str
    name: str
    kind: str                                  # v | m
    definition: str
    owner: str
    grants: list
    comment: Optional[str]
    options: list
    populated: bool
    indexes: list                              # CREATE INDEX statements (materialized views)
    depth: int


def _qualified(schema: str, name: str) -> sql.Composed:
    return sql.Identifier(schema, name)


def _acl(cur: Cursor, acl) -> list:
    """(grantee name or None for PUBLIC, privilege, grantable) of an aclitem[]."""
    if not acl:
        return []
    cur.execute("SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE r.rolname END, a.privilege_type, a.is_grantable "
                "FROM aclexplode(%s::aclitem[]) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
                "WHERE a.grantee <> a.grantor OR a.grantee = 0", (acl,))
    return cur.fetchall()


def _grant(cur: Cursor, target: sql.Composable, grants: list, columns: Optional[str] = None) -> None:
    for grantee, privilege, grantable in grants:
        cur.execute(sql.SQL("GRANT {} {} ON {} TO {}{}").format(
            sql.SQL(privilege), sql.SQL("({})").format(sql.Identifier(columns)) if columns else sql.SQL(""),
            target, sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))


# --------------------------------------------------------------------------- tables

def capture(cur: Cursor, schema: str, table: str) -> Attachments:
    """Everything users attached to ``schema.table`` (which must exist)."""
    oid = _oid(cur, schema, table)
    cur.execute("SELECT pg_get_userbyid(relowner), obj_description(oid, 'pg_class'), relacl, relrowsecurity, "
                "relforcerowsecurity FROM pg_class WHERE oid = %s", (oid,))
    owner, comment, acl, rls, force = cur.fetchone()
    grants = _acl(cur, acl)
    cur.execute("SELECT attname, col_description(attrelid, attnum), attacl FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (oid,))
    column_comments, column_grants = {}, []
    for name, ccomment, cacl in cur.fetchall():
        if ccomment is not None:
            column_comments[name] = ccomment
        column_grants += [(name, *g) for g in _acl(cur, cacl)]
    cur.execute("SELECT policyname, permissive, roles, cmd, qual, with_check FROM pg_policies "
                "WHERE schemaname = %s AND tablename = %s", (schema, table))
    policies = cur.fetchall()
    return Attachments(owner, comment, column_comments, grants, column_grants, (rls, force), policies)


def restore(cur: Cursor, schema: str, table: str, att: Attachments, columns: set) -> None:
    """Re-apply captured attachments to the new ``schema.table`` (same transaction as the swap)."""
    target = _qualified(schema, table)
    cur.execute("SELECT current_user")
    if att.owner != cur.fetchone()[0]:
        cur.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.Identifier(att.owner)))
    _grant(cur, target, att.grants)
    for column, *grant in att.column_grants:
        if column in columns:
            _grant(cur, target, [grant], column)
    if att.comment is not None:
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(target, sql.Literal(att.comment)))
    for column, comment in att.column_comments.items():
        if column in columns:
            cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(target, sql.Identifier(column),
                                                                        sql.Literal(comment)))
    if att.rls[0]:
        cur.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(target))
    if att.rls[1]:
        cur.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(target))
    for name, permissive, roles, cmd, qual, check in att.policies:
        to = sql.SQL(", ").join(sql.SQL("PUBLIC") if r == "public" else sql.Identifier(r) for r in roles)
        stmt = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
            sql.Identifier(name), target, sql.SQL(permissive), sql.SQL(cmd), to)
        if qual:
            stmt += sql.SQL(" USING ({})").format(sql.SQL(qual))
        if check:
            stmt += sql.SQL(" WITH CHECK ({})").format(sql.SQL(check))
        cur.execute(stmt)


def _oid(cur: Cursor, schema: str, table: str) -> Optional[int]:
    return relation_oid(cur, schema, table)


# --------------------------------------------------------------------------- views

_VIEWS = """
WITH RECURSIVE deps(oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = ANY(%s::oid[]) AND r.ev_class <> d.refobjid
    UNION
    SELECT r.ev_class, deps.depth + 1 FROM deps JOIN pg_depend d ON d.refobjid = deps.oid
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND r.ev_class <> d.refobjid
)
SELECT c.oid, n.nspname, c.relname, c.relkind, pg_get_viewdef(c.oid), pg_get_userbyid(c.relowner), c.relacl,
       obj_description(c.oid, 'pg_class'), coalesce(c.reloptions, '{}'), c.relispopulated, max(deps.depth)
FROM deps JOIN pg_class c ON c.oid = deps.oid JOIN pg_namespace n ON n.oid = c.relnamespace
GROUP BY c.oid, n.nspname ORDER BY max(deps.depth), c.oid
"""


def dependent_views(cur: Cursor, schema: str, tables: list, exclude: set) -> list:
    """User views and materialized views on the published ``tables``, shallowest first.

    Definitions are read with an empty search_path, so every name in them is qualified and
    they re-create to the same objects whatever the session's search_path.
    """
    oids = [o for o in (_oid(cur, schema, t) for t in tables) if o is not None]
    if not oids:
        return []
    cur.execute("SET LOCAL search_path = pg_catalog")
    cur.execute(_VIEWS, (oids,))
    views = []
    for oid, vschema, name, kind, definition, owner, acl, comment, options, populated, depth in cur.fetchall():
        if vschema == schema and name in exclude:
            continue
        cur.execute("SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s", (oid,))
        indexes = [r[0] for r in cur.fetchall()]
        views.append(View(vschema, name, kind, definition, owner, _acl(cur, acl), comment, list(options),
                          populated, indexes, depth))
    cur.execute("RESET search_path")
    return views


def drop_views(cur: Cursor, views: list) -> None:
    for v in reversed(views):                     # deepest first
        kind = "MATERIALIZED VIEW" if v.kind == "m" else "VIEW"
        cur.execute(sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(kind), _qualified(v.schema, v.name)))


def create_views(cur: Cursor, views: list) -> None:
    """Re-create views (shallowest first) with everything they had."""
    cur.execute("SET LOCAL search_path = pg_catalog")
    cur.execute("SELECT current_user")
    me = cur.fetchone()[0]
    for v in views:
        target = _qualified(v.schema, v.name)
        body = sql.SQL(v.definition.rstrip().rstrip(";"))
        if v.kind == "m":
            cur.execute(sql.SQL("CREATE MATERIALIZED VIEW {} AS {} WITH {}DATA").format(
                target, body, sql.SQL("" if v.populated else "NO ")))
            for index in v.indexes:
                cur.execute(index)
        else:
            opts = (sql.SQL(" WITH ({})").format(sql.SQL(", ").join(map(sql.SQL, v.options))) if v.options
                    else sql.SQL(""))
            cur.execute(sql.SQL("CREATE VIEW {}{} AS {}").format(target, opts, body))
        kind = sql.SQL("MATERIALIZED VIEW" if v.kind == "m" else "VIEW")
        if v.owner != me:
            cur.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(kind, target, sql.Identifier(v.owner)))
        _grant(cur, target, v.grants)
        if v.comment is not None:
            cur.execute(sql.SQL("COMMENT ON {} {} IS {}").format(kind, target, sql.Literal(v.comment)))
    cur.execute("RESET search_path")


# --------------------------------------------------------------------------- indexes

def user_indexes(cur: Cursor, schema: str, table: str, loader_names: set) -> list:
    """(name, definition) of indexes on the published table that the loader did not make."""
    oid = _oid(cur, schema, table)
    if oid is None:
        return []
    cur.execute("SET LOCAL search_path = pg_catalog")
    cur.execute("SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c "
                "ON c.oid = i.indexrelid WHERE i.indrelid = %s AND NOT i.indisprimary AND NOT EXISTS "
                "(SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)", (oid,))
    rows = [(n, d) for n, d in cur.fetchall() if n not in loader_names and "__load" not in n]
    cur.execute("RESET search_path")
    return rows


def staging_index_name(name: str, load_id: int) -> str:
    """The name a user's index has on the staging table until the swap renames it back."""
    return f"{name[:50]}__ul{load_id}"


def index_on(definition: str, schema: str, table: str, stage: str, name: str, new_name: str) -> str:
    """A user's index definition re-targeted from the published table to the staging table."""
    q = lambda x: x if x.replace("_", "a").isalnum() and x == x.lower() and not x[0].isdigit() \
        else '"' + x.replace('"', '""') + '"'  # noqa: E731 (quote_ident)
    old_on, new_on = f" ON {q(schema)}.{q(table)} ", f" ON {q(schema)}.{q(stage)} "
    head = f" INDEX {q(name)}"
    if head not in definition or old_on not in definition:
        raise ValueError(f"cannot re-target index definition {definition!r}")
    return definition.replace(head, f" INDEX IF NOT EXISTS {q(new_name)}", 1).replace(old_on, new_on, 1)


# --------------------------------------------------------------------------- preflight

def preflight(cur: Cursor, schema: str, tables: dict, loaded: set, views_exclude: set) -> list:
    """Problems that would stop the swap from carrying the tables' users over, with the fix.

    ``tables`` maps each published table this load replaces to its new column names;
    ``loaded`` is every table of the load (foreign keys among them are the loader's own).
    """
    problems = []
    cur.execute("SELECT current_user")
    me = cur.fetchone()[0]
    for table in tables:
        oid = _oid(cur, schema, table)
        if oid is None:
            continue
        where = f"{schema}.{table}"
        cur.execute("SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f' AND "
                    "confrelid = %s AND conrelid <> ALL(%s::regclass[])",
                    (oid, [f'"{schema}"."{t}"' for t in loaded if _oid(cur, schema, t)]))
        for child, con in cur.fetchall():
            problems.append(f"{child} has a foreign key {con} referencing {where}: the swap would drop it "
                            f"(drop it before the load and re-create it after, or load incrementally)")
        cur.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal", (oid,))
        problems += [f"trigger {t} on {where} cannot be carried over (drop it, load, re-create it)"
                     for (t,) in cur.fetchall()]
        cur.execute("SELECT rulename FROM pg_rules WHERE schemaname = %s AND tablename = %s", (schema, table))
        problems += [f"rule {r} on {where} cannot be carried over (drop it, load, re-create it)"
                     for (r,) in cur.fetchall()]
        cur.execute("SELECT pubname FROM pg_publication_rel p JOIN pg_publication u ON u.oid = p.prpubid "
                    "WHERE p.prrelid = %s", (oid,))
        problems += [f"{where} is in publication {p}: the new table would not be "
                     "(remove it from the publication, load, add it back)" for (p,) in cur.fetchall()]
        cur.execute("SELECT count(*) FROM pg_inherits WHERE inhrelid = %s OR inhparent = %s", (oid, oid))
        if cur.fetchone()[0]:
            problems.append(f"{where} takes part in inheritance or partitioning, which the swap cannot carry over")
        cur.execute("SELECT pg_get_userbyid(relowner), pg_has_role(%s, relowner, 'MEMBER') FROM pg_class "
                    "WHERE oid = %s", (me, oid))
        owner, member = cur.fetchone()
        if not member:
            problems.append(f"{where} is owned by {owner}, and {me} may not give the new table to {owner} "
                            f"(run the load as {owner}, or GRANT {owner} TO {me})")
    views = dependent_views(cur, schema, list(tables), views_exclude)
    for v in views:
        cur.execute("SELECT pg_has_role(%s, (SELECT relowner FROM pg_class WHERE oid = to_regclass(format("
                    "'%%I.%%I', %s::text, %s::text))), 'MEMBER')", (me, v.schema, v.name))
        if not cur.fetchone()[0]:
            problems.append(f"view {v.schema}.{v.name} is owned by {v.owner}, and {me} may not re-create it "
                            f"for them (GRANT {v.owner} TO {me}, or run the load as {v.owner})")
    problems += _view_columns(cur, schema, tables)
    return problems


def _view_columns(cur: Cursor, schema: str, tables: dict) -> list:
    """Views using a column that the new table will not have."""
    problems = []
    for table, columns in tables.items():
        oid = _oid(cur, schema, table)
        if oid is None:
            continue
        cur.execute("SELECT DISTINCT c.relnamespace::regnamespace::text || '.' || c.relname, a.attname "
                    "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class c ON c.oid = r.ev_class "
                    "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
                    "WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = %s AND d.refobjsubid > 0", (oid,))
        for view, column in cur.fetchall():
            if column not in columns:
                problems.append(f"view {view} uses {schema}.{table}.{column}, which the new table will not have "
                                "(drop or change the view, or load files that have that column)")
    return problems
