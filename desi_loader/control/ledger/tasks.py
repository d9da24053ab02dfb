"""``loader_tasks``: the queue of a load's tasks (claimed FOR UPDATE SKIP LOCKED, done in
the transaction of their rows) and the UNLOGGED crash canary."""
from __future__ import annotations

import json
from typing import Optional, TYPE_CHECKING

from psycopg2 import sql
from psycopg2.extras import Json, execute_values

from ...fits.discover import Part, Task
from .base import SessionFace, Tx

if TYPE_CHECKING:
    from ...db import Cursor


class Tasks(SessionFace):
    """The ledger's statements on ``loader_tasks`` (a Ledger mixin: it runs them in its Session)."""

    def datasums(self) -> dict:
        """(file_id, hdu index) -> list of partial sums recorded by the done tasks."""
        out: dict = {}
        for file_id, sums in self._run("SELECT file_id, datasums FROM {s}.loader_tasks WHERE load_id = %s "
                                       "AND status = 'done' AND datasums IS NOT NULL", (self.load_id,)):
            for hdu, values in sums.items():
                out.setdefault((file_id, int(hdu)), []).extend(values)
        return out

    def insert_tasks(self, tasks, file_ids: dict, tx: Optional[Tx] = None) -> int:
        """Write ``tasks`` (discover.Task) as pending; ``file_ids``: file name -> file_id."""
        (next_id,), = self._run("SELECT coalesce(max(task_id) + 1, 0) FROM {s}.loader_tasks "
                                "WHERE load_id = %s", (self.load_id,), tx)
        rows = [(self.load_id, next_id + i, file_ids[t.file], json.dumps([p.as_json() for p in t.parts]), t.rows)
                for i, t in enumerate(tasks)]
        if not rows:
            return 0
        with self.conn.cursor() as cur:
            execute_values(cur, sql.SQL("INSERT INTO {}.loader_tasks (load_id, task_id, file_id, parts, "
                                        "nrows) VALUES %s").format(sql.Identifier(self.schema)).as_string(cur),
                           rows, template="(%s, %s, %s, %s::jsonb, %s)", page_size=1000)
        self._end(tx)
        return len(rows)

    def claim(self, cur: Cursor) -> Optional[Task]:
        """Lock the next pending task in the current transaction (None when none is free)."""
        cur.execute(sql.SQL("SELECT t.task_id, f.filename, t.parts FROM {s}.loader_tasks t "
                            "JOIN {s}.load_files f USING (file_id) WHERE t.load_id = %s AND t.status = 'pending' "
                            "ORDER BY t.task_id LIMIT 1 FOR UPDATE OF t SKIP LOCKED").format(
                                s=sql.Identifier(self.schema)),
                    (self.load_id,))
        row = cur.fetchone()
        return _task(*row) if row else None

    def finish(self, cur: Cursor, task_id: int, worker: str, datasums: dict, rows: dict) -> None:
        """Mark a task done, in the transaction that holds its rows (``rows``: table -> rows COPY reported)."""
        cur.execute(sql.SQL("UPDATE {}.loader_tasks SET status = 'done', done_at = now(), worker = %s, "
                            "attempts = attempts + 1, error = NULL, datasums = %s, rows = %s "
                            "WHERE load_id = %s AND task_id = %s")
                    .format(sql.Identifier(self.schema)),
                    (worker, Json(datasums), Json(rows), self.load_id, task_id))

    def fail(self, task_id: int, worker: str, error: str) -> None:
        """Record a failed task (its own transaction; the data transaction was rolled back)."""
        self._run("UPDATE {s}.loader_tasks SET status = 'failed', error = %s, worker = %s, "
                  "attempts = attempts + 1 WHERE load_id = %s AND task_id = %s",
                  (error, worker, self.load_id, task_id))

    def record_death(self, task_id: int, reason: str, max_attempts: int) -> bool:
        """Count a worker death against its task; True when the task is now failed for good."""
        rows = self._run("UPDATE {s}.loader_tasks SET attempts = attempts + 1, error = %s, "
                         "status = CASE WHEN attempts + 1 >= %s THEN 'failed' ELSE status END "
                         "WHERE load_id = %s AND task_id = %s AND status = 'pending' RETURNING status",
                         (reason, max_attempts, self.load_id, task_id))
        return bool(rows and rows[0][0] == "failed")

    def reset_failed(self, tx: Optional[Tx] = None) -> int:
        """Make failed tasks pending again (a rerun retries them); returns how many."""
        rows = self._run("UPDATE {s}.loader_tasks SET status = 'pending', attempts = 0 WHERE load_id = %s "
                         "AND status = 'failed' RETURNING 1", (self.load_id,), tx)
        self._run("UPDATE {s}.loader_loads SET status = 'running', finished_at = NULL WHERE load_id = %s",
                  (self.load_id,), tx)
        return len(rows)

    def pending_rows(self) -> int:
        """Rows still to load (for the progress bar of a resumed load)."""
        (n,), = self._run("SELECT coalesce(sum(nrows), 0) FROM {s}.loader_tasks WHERE load_id = %s "
                          "AND status = 'pending'", (self.load_id,))
        return int(n)

    def task_counts(self, tx: Optional[Tx] = None) -> dict:
        """{'done': n, 'pending': n, 'failed': n} for the load."""
        out = {"done": 0, "pending": 0, "failed": 0}
        out.update(dict(self._run("SELECT status, count(*) FROM {s}.loader_tasks WHERE load_id = %s "
                                  "GROUP BY 1", (self.load_id,), tx)))
        return out

    def loaded_rows(self) -> Optional[dict]:
        """{table: {file_id: rows}} that the done tasks' COPY statements reported, or None when
        a done task predates these counts (then the staging tables must be counted)."""
        (missing,), = self._run("SELECT count(*) FROM {s}.loader_tasks WHERE load_id = %s AND status = 'done' "
                                "AND rows IS NULL", (self.load_id,))
        if missing:
            return None
        out: dict = {}
        for table, file_id, n in self._run(
                "SELECT r.key, t.file_id, sum(r.value::bigint) FROM {s}.loader_tasks t, jsonb_each_text(t.rows) r "
                "WHERE t.load_id = %s AND t.status = 'done' GROUP BY 1, 2", (self.load_id,)):
            out.setdefault(table, {})[file_id] = int(n)
        return out

    def arm_canary(self, tx: Optional[Tx] = None) -> None:
        """Note, in an UNLOGGED table, that this load's UNLOGGED staging holds rows."""
        self._run("INSERT INTO {s}.loader_canary VALUES (%s) ON CONFLICT DO NOTHING", (self.load_id,), tx)

    def canary_lost(self) -> bool:
        """True when the server crashed since arm_canary: UNLOGGED tables came back empty."""
        rows = self._run("SELECT 1 FROM {s}.loader_canary WHERE load_id = %s", (self.load_id,))
        return not rows

    def done_tasks(self) -> list[Task]:
        """The load's done tasks."""
        rows = self._run("SELECT t.task_id, f.filename, t.parts FROM {s}.loader_tasks t JOIN {s}.load_files f "
                         "USING (file_id) WHERE t.load_id = %s AND t.status = 'done' ORDER BY t.task_id",
                         (self.load_id,))
        return [_task(*r) for r in rows]

    def reset_tasks(self, task_ids: list) -> None:
        """Make done tasks pending again (their rows are gone)."""
        self._run("UPDATE {s}.loader_tasks SET status = 'pending', attempts = 0, done_at = NULL, datasums = NULL, "
                  "rows = NULL WHERE load_id = %s AND task_id = ANY(%s)", (self.load_id, list(task_ids)))

    def claimable(self) -> bool:
        """True when a pending task is not held by any process right now."""
        with self.conn.cursor() as cur:
            row = self.claim(cur)
        self.conn.rollback()
        return row is not None

    def rows_by_table(self) -> dict:
        """Rows of the done tasks per table (what the load holds, whoever loaded it)."""
        rows = self._run("SELECT p->>1, sum((p->>3)::bigint - (p->>2)::bigint) FROM {s}.loader_tasks t, "
                         "jsonb_array_elements(t.parts) p WHERE t.load_id = %s AND t.status = 'done' GROUP BY 1 "
                         "ORDER BY 1", (self.load_id,))
        return {table: int(n) for table, n in rows}

    def progress_by_host(self) -> list:
        """(host, tasks done, rows done) of the load, per loading host."""
        return self._run("SELECT split_part(worker, ':', 1), count(*), sum(nrows) FROM {s}.loader_tasks "
                         "WHERE load_id = %s AND status = 'done' GROUP BY 1 ORDER BY 1", (self.load_id,))

    def failed_tasks(self) -> list:
        """(file name, error) of failed tasks."""
        return self._run("SELECT f.filename, t.error FROM {s}.loader_tasks t JOIN {s}.load_files f "
                         "USING (file_id) WHERE t.load_id = %s AND t.status = 'failed' ORDER BY t.task_id",
                         (self.load_id,))


def _task(task_id: int, file: str, parts: list) -> Task:
    """A task as the ledger stores it (parts as [hdu, table, start, stop] JSON) read back."""
    return Task(task_id, file, tuple(Part(*p) for p in parts))
