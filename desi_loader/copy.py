"""The only module that runs COPY: stream encoded blocks of one task part into staging."""
from __future__ import annotations

import queue
import threading
from typing import BinaryIO, Callable, Iterator, Optional, Sequence

import numpy as np
import psycopg2
from psycopg2 import sql

from .checksum import combine, partial_sum
from .encode import BINARY_HEADER, BINARY_TRAILER, EncodeError, Field, encode_block
from .errors import BadFileError
from .read import HduInfo, read_rows

#: FITS bytes read and encoded per block.  Measured on FASTSPEC rows (3.5 KB): 4-32 MB
#: blocks encode at the same rate; below ~1 MB numpy's per-call overhead shows.  8 MB
#: keeps a worker's peak memory (raw + encoded + mask, about 4x) near 40 MB.
BLOCK_BYTES = 8 * 1024 * 1024


#: Encoded blocks prepared ahead of the one being sent.  One is enough to keep the
#: server busy while the next block is read and encoded (numpy and libpq both release
#: the GIL); more only costs memory.
PREFETCH = 2


class _Stream:
    """File-like object psycopg2's copy_expert reads; each read() returns one encoded block.

    A thread reads and encodes the next blocks while the current one is being sent, so
    client work overlaps the server's.  Exceptions in the thread reach read(), which
    makes psycopg2 abort the COPY with that error.
    """

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(blocks,), daemon=True)
        self._thread.start()

    def _fill(self, blocks: Iterator[bytes]) -> None:
        try:
            for block in blocks:
                while not self._stop.is_set():
                    try:
                        self._queue.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(b"")
        except BaseException as exc:          # delivered to the reading thread
            self._queue.put(exc)

    def read(self, size: int = -1) -> bytes:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.error = item        # psycopg2 replaces it by QueryCanceled; copy_rows restores it
            raise item
        return item

    readline = read

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def copy_statement(schema: str, table: str, fields: Sequence[Field], fmt: str) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(f.name.lower()) for f in fields)
    return sql.SQL("COPY {}.{} ({}) FROM STDIN WITH (FORMAT {})").format(
        sql.Identifier(schema), sql.Identifier(table), cols, sql.SQL(fmt))


def _blocks(path: str, fh: BinaryIO, hdus: Sequence[HduInfo], fields: Sequence[Field], start: int,
            stop: int, fmt: str, on_block: Callable[[int, int], None], sums: Optional[dict]
            ) -> Iterator[bytes]:
    if fmt == "binary":
        yield BINARY_HEADER
    width = sum(h.row_bytes for h in hdus)
    step = max(1, BLOCK_BYTES // max(width, 1))
    for s in range(start, stop, step):
        e = min(s + step, stop)
        blocks = []
        for h in hdus:
            rows = read_rows(path, h, s, e, fh)
            if sums is not None:
                sums.setdefault(h.index, []).append(partial_sum(rows, s * h.row_bytes))
            blocks.append(rows)
        rows = blocks[0] if len(blocks) == 1 else np.hstack(blocks)   # a joined table's rows
        try:
            data = encode_block(rows, fields, fmt, s)
        except EncodeError as exc:
            where = " + ".join(f"HDU {h.index} ({h.extname})" for h in hdus)
            raise BadFileError(path, f"{where}: {exc}") from exc
        on_block(e - s, rows.nbytes)
        yield data
    if fmt == "binary":
        yield BINARY_TRAILER


def copy_rows(cur, schema: str, table: str, path: str, fh: BinaryIO, hdus: Sequence[HduInfo],
              fields: Sequence[Field], start: int, stop: int, fmt: str,
              on_block: Callable[[int, int], None], checksum: bool = True) -> dict:
    """COPY rows [start, stop) of one HDU (or of row-aligned HDUs side by side) into a table.

    Returns {hdu index: ones'-complement sum of the bytes loaded} for the DATASUM check
    (empty when ``checksum`` is off).
    """
    sums: Optional[dict] = {} if checksum else None
    stream = _Stream(_blocks(path, fh, hdus, fields, start, stop, fmt, on_block, sums))
    try:
        cur.copy_expert(copy_statement(schema, table, fields, fmt), stream, size=BLOCK_BYTES)
    except psycopg2.Error:
        if stream.error is not None:     # our reader failed (bad data), not the database
            raise stream.error from None
        raise
    finally:
        stream.close()
    return {i: combine(v) for i, v in (sums or {}).items()}
