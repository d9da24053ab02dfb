"""``loader_loads``: one row per load (its status, phase, finalizer, options)."""
from __future__ import annotations

import json
import socket
from typing import Optional

from psycopg2 import sql
from psycopg2.extras import Json

from ... import __version__
from ...db import relation_exists
from ...errors import UsageError
from .base import SessionFace, Tx


def staging_name(table: str, load_id: int) -> str:
    """The staging table of ``table`` in load ``load_id``."""
    return f"{table}__load{load_id}"


class Loads(SessionFace):
    """The ledger's statements on ``loader_loads`` (a Ledger mixin: it runs them in its Session)."""

    def find_unfinished(self, catalog: str, tables: list, tx: Optional[Tx] = None) -> Optional[int]:
        """The newest load of these tables that was neither published nor aborted."""
        rows = self._run("SELECT load_id FROM {s}.loader_loads WHERE catalog = %s AND tables = %s "
                         "AND status IN ('running', 'failed') ORDER BY load_id DESC LIMIT 1",
                         (catalog, sorted(tables)), tx)
        return rows[0][0] if rows else None

    def start(self, catalog: str, tables: list, options: dict, tx: Optional[Tx] = None) -> int:
        """Record a new load, bind to it and return its id."""
        (load_id,), = self._run(
            "INSERT INTO {s}.loader_loads (catalog, tables, options, host, loader_version) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING load_id",
            (catalog, sorted(tables), Json(options), socket.gethostname(), __version__), tx)
        self.bind(load_id, tx)
        return load_id

    def state(self) -> tuple:
        """(status, phase, finalizer, error) of the load."""
        (row,) = self._run("SELECT status, phase, finalizer, error FROM {s}.loader_loads WHERE load_id = %s",
                           (self.load_id,))
        return row

    def setting(self, name: str, tx: Optional[Tx] = None) -> str:
        """A server setting (current_setting)."""
        (row,) = self._run("SELECT current_setting(%s)", (name,), tx)
        return row[0]

    def options(self, tx: Optional[Tx] = None) -> dict:
        """The options the load was started with (format, staging mode, paths ...)."""
        (row,) = self._run("SELECT options FROM {s}.loader_loads WHERE load_id = %s", (self.load_id,), tx)
        return row[0] or {}

    def set_phase(self, phase: Optional[str], finalizer: Optional[str] = None) -> None:
        self._run("UPDATE {s}.loader_loads SET phase = %s, finalizer = coalesce(%s, finalizer) "
                  "WHERE load_id = %s", (phase, finalizer, self.load_id))

    def set_left_out(self, files: list) -> None:
        """Record the (file, reason) pairs --allow-partial publishes without, for the processes
        awaiting the outcome (they exit 4 as the finalizer does)."""
        self._run("UPDATE {s}.loader_loads SET error = %s WHERE load_id = %s",
                  (json.dumps([list(f) for f in files]), self.load_id))

    @staticmethod
    def left_out(error: Optional[str]) -> list:
        """The pairs set_left_out recorded in a published load's error column."""
        try:
            return [tuple(f) for f in json.loads(error)] if error else []
        except (ValueError, TypeError):
            return []

    def set_status(self, status: str, error: Optional[str] = None) -> None:
        self._run("UPDATE {s}.loader_loads SET status = %s, error = %s, finished_at = now() WHERE load_id = %s",
                  (status, error, self.load_id))

    def staging_complete(self, tx: Optional[Tx] = None) -> bool:
        """True when every staging table of the load still exists."""
        load_id = self.bound_id()
        (tables,), = self._run("SELECT tables FROM {s}.loader_loads WHERE load_id = %s", (load_id,), tx)
        with self.conn.cursor() as cur:
            ok = all(relation_exists(cur, self.schema, staging_name(t, load_id)) for t in tables)
        self._end(tx)
        return ok

    def loads(self) -> list:
        """Every load with its task counts (for `desi-loader status`)."""
        return self._run(
            "SELECT l.load_id, l.catalog, l.status, l.started_at, l.finished_at, l.host, "
            "count(t.*) FILTER (WHERE t.status = 'done'), count(t.*) FILTER (WHERE t.status = 'pending'), "
            "count(t.*) FILTER (WHERE t.status = 'failed'), l.tables, l.phase "
            "FROM {s}.loader_loads l LEFT JOIN {s}.loader_tasks t USING (load_id) "
            "GROUP BY l.load_id ORDER BY l.load_id")

    def abort(self, tx: Optional[Tx] = None) -> list:
        """Drop the load's staging tables and mark it aborted; returns the tables dropped."""
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT tables, status FROM {}.loader_loads WHERE load_id = %s")
                        .format(sql.Identifier(self.schema)), (self.load_id,))
            row = cur.fetchone()
            if row is None:
                raise UsageError(f"no load {self.load_id} in schema {self.schema}", "see desi-loader status")
            tables, status = row
            if status == "published":
                raise UsageError(f"load {self.load_id} is published; nothing to abort")
            load_id = self.bound_id()
            dropped = [staging_name(t, load_id) for t in tables
                       if relation_exists(cur, self.schema, staging_name(t, load_id))]
            if dropped:
                cur.execute(sql.SQL("DROP TABLE {} CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier(self.schema, d) for d in dropped)))
            cur.execute(sql.SQL("UPDATE {}.loader_loads SET status = 'aborted', finished_at = now() "
                                "WHERE load_id = %s").format(sql.Identifier(self.schema)), (self.load_id,))
            cur.execute(sql.SQL("DELETE FROM {}.load_files WHERE load_id = %s")
                        .format(sql.Identifier(self.schema)), (self.load_id,))
        self._end(tx)
        return dropped
