"""``load_files``: the manifest, one row per FITS file of a load (name, identity, headers,
row counts), published with its rows."""
from __future__ import annotations

from typing import Optional, TYPE_CHECKING

from psycopg2 import sql
from psycopg2.extras import Json

from ... import __version__
from ...db import relation_exists
from .base import SessionFace, Tx

if TYPE_CHECKING:
    from ...db import Cursor


# ------------------------------------------------------------------ the manifest at publish
# These run inside the publishing transaction of publish.swap / publish.merge (their cursor):
# the data and the manifest change together.

def replaced_files(cur: Cursor, schema: str, tables: list, load_id: int) -> list:
    """file_ids of published files that this (incremental) load's files of the same name replace."""
    cur.execute(sql.SQL(
        "SELECT f.file_id FROM {s}.load_files f JOIN {s}.loader_loads l USING (load_id) "
        "WHERE f.published AND l.tables && %s AND f.load_id <> %s AND f.filename IN "
        "(SELECT filename FROM {s}.load_files WHERE load_id = %s)").format(s=sql.Identifier(schema)),
        (tables, load_id, load_id))
    return [r[0] for r in cur.fetchall()]


def publish_merged(cur: Cursor, schema: str, load_id: int, replaced: list) -> None:
    """Incremental publish: forget the replaced files, publish this load's, retire emptied loads."""
    s = sql.Identifier(schema)
    cur.execute(sql.SQL("DELETE FROM {}.load_files WHERE file_id = ANY(%s)").format(s), (replaced,))
    cur.execute(sql.SQL("UPDATE {}.load_files SET published = true, loaded_at = now() WHERE load_id = %s")
                .format(s), (load_id,))
    cur.execute(sql.SQL("UPDATE {}.loader_loads SET status = 'published', finished_at = now() "
                        "WHERE load_id = %s").format(s), (load_id,))
    cur.execute(sql.SQL("UPDATE {s}.loader_loads l SET status = 'replaced' WHERE status = 'published' "
                        "AND NOT EXISTS (SELECT 1 FROM {s}.load_files f WHERE f.load_id = l.load_id)")
                .format(s=s))


def publish_swapped(cur: Cursor, schema: str, tables: list, load_id: int) -> None:
    """Swap publish: the loads published before in these tables are replaced by this one."""
    cur.execute(sql.SQL(
        "UPDATE {s}.loader_loads SET status = 'replaced' WHERE status = 'published' "
        "AND tables && %s AND load_id <> %s").format(s=sql.Identifier(schema)), (tables, load_id))
    cur.execute(sql.SQL(
        "DELETE FROM {s}.load_files WHERE load_id IN (SELECT load_id FROM {s}.loader_loads "
        "WHERE status = 'replaced')").format(s=sql.Identifier(schema)))
    cur.execute(sql.SQL("UPDATE {s}.load_files SET published = true, loaded_at = now() "
                        "WHERE load_id = %s").format(s=sql.Identifier(schema)), (load_id,))
    cur.execute(sql.SQL("UPDATE {s}.loader_loads SET status = 'published', finished_at = now() "
                        "WHERE load_id = %s").format(s=sql.Identifier(schema)), (load_id,))


class Files(SessionFace):
    """The ledger's statements on ``load_files`` (a Ledger mixin: it runs them in its Session)."""

    def published_files(self, tables: list, tx: Optional[Tx] = None) -> dict:
        """filename -> (file_id, identity) of the files published in these tables."""
        rows = self._run("SELECT f.filename, f.file_id, coalesce(f.identity, jsonb_build_object('size', f.size_bytes)) "
                         "FROM {s}.load_files f JOIN {s}.loader_loads l USING (load_id) "
                         "WHERE f.published AND l.status = 'published' AND l.tables && %s", (sorted(tables),), tx)
        return {name: (file_id, identity) for name, file_id, identity in rows}

    def published_tables(self, tables: list, tx: Optional[Tx] = None) -> set:
        """Those of ``tables`` that a published load put rows in."""
        rows = self._run("SELECT DISTINCT t FROM {s}.loader_loads l, unnest(l.tables) t "
                         "WHERE l.status = 'published' AND t = ANY(%s)", (sorted(tables),), tx)
        return {t for t, in rows}

    def register_files(self, catalog: str, files: list, tx: Optional[Tx] = None) -> dict:
        """Insert the manifest rows (unpublished) of ``files`` (FilePlans): {file name: file_id}."""
        ids = {}
        with self.conn.cursor() as cur:
            for fp in files:
                info = fp.info
                loaded = [h for h in info.hdus if h.index in fp.tables]
                nrows = {(h.extname or f"HDU{h.index}"): h.nrows for h in loaded}
                hdrs = {(h.extname or f"HDU{h.index}"): h.cards for h in loaded}
                cur.execute(sql.SQL(
                    "INSERT INTO {}.load_files (load_id, catalog, filename, path, size_bytes, nrows, header, "
                    "hdu_headers, checksum, loader_version, identity) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                    "RETURNING file_id").format(sql.Identifier(self.schema)),
                    (self.load_id, catalog, info.name, info.path, info.size, Json(nrows), Json(info.primary),
                     Json(hdrs), info.checksum, __version__, Json(info.identity)))
                ids[info.name] = cur.fetchone()[0]
        self._end(tx)
        return ids

    def registered_files(self, tx: Optional[Tx] = None) -> dict:
        """filename -> (file_id, identity) of the load's manifest rows."""
        rows = self._run("SELECT filename, file_id, coalesce(identity, jsonb_build_object('size', size_bytes)) "
                         "FROM {s}.load_files WHERE load_id = %s", (self.load_id,), tx)
        return {name: (file_id, identity) for name, file_id, identity in rows}

    def remove_files(self, file_ids: list, staging: dict, tx: Optional[Tx] = None) -> None:
        """Forget files of the load: their rows in staging, their tasks and manifest rows."""
        if not file_ids:
            return
        ids = list(file_ids)
        with self.conn.cursor() as cur:
            for stage in staging.values():
                if relation_exists(cur, self.schema, stage):
                    cur.execute(sql.SQL("DELETE FROM {} WHERE file_id = ANY(%s)").format(
                        sql.Identifier(self.schema, stage)), (ids,))
            for table in ("loader_tasks", "load_files"):
                cur.execute(sql.SQL("DELETE FROM {} WHERE load_id = %s AND file_id = ANY(%s)").format(
                    sql.Identifier(self.schema, table)), (self.load_id, ids))
        self._end(tx)
