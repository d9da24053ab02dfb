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

#: FITS bytes read and encoded per block.  Small blocks let encoding overlap the
#: server's work (the pipeline fills and drains at every COPY statement): measured on
#: 4 x 5,000 FastSpecFit rows, 1 worker, 2 cores: 8 MB 11.9k, 2 MB 13.3k, 1 MB 13.5k,
#: 0.5 MB 13.9k galaxies/s (ceiling 18.5k), before reading ahead across tables.
#: Encoding speed per byte is flat down to ~0.25 MB (numpy call overhead below that).
BLOCK_BYTES = 1024 * 1024


#: Encoded blocks prepared ahead of the one being sent.  One is enough to keep the
#: server busy while the next block is read and encoded (numpy and libpq both release
#: the GIL); more only costs memory.
PREFETCH = 2


class _Prefetch:
    """A thread that reads and encodes the blocks of every part of a task, in order.

    The main thread sends one part per COPY statement; each part's blocks end with b""
    (end of data for psycopg2).  Because one thread runs through all parts, encoding of
    the next table's first block overlaps the server's work on the previous table.
    Exceptions in the thread reach read(), where psycopg2 aborts the COPY; copy_parts
    then re-raises the original exception instead of psycopg2's QueryCanceled.
    """

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self._stop = threading.Event()
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._fill, args=(blocks,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, blocks: Iterator[bytes]) -> None:
        try:
            for block in blocks:
                if not self._put(block):
                    return
        except BaseException as exc:          # delivered to the reading thread
            self._put(exc)

    def read(self, size: int = -1) -> bytes:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.error = item
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


def copy_parts(cur, schema: str, path: str, fh: BinaryIO, parts: Sequence[tuple], fmt: str,
               on_block: Callable[[int, int], None], checksum: bool = True) -> dict:
    """COPY the parts of one task, each into its table, reading ahead across parts.

    Each part is (table, HDUs, fields, start, stop): rows [start, stop) of one HDU, or of
    row-aligned HDUs side by side for a joined table.  Returns {hdu index: ones'-complement
    sum of the bytes loaded} for the DATASUM check (empty when ``checksum`` is off).
    """
    sums: Optional[dict] = {} if checksum else None

    def blocks() -> Iterator[bytes]:
        for _table, hdus, fields, start, stop in parts:
            yield from _blocks(path, fh, hdus, fields, start, stop, fmt, on_block, sums)
            yield b""                     # end of this part's COPY data

    stream = _Prefetch(blocks())
    try:
        for table, _hdus, fields, _start, _stop in parts:
            try:
                cur.copy_expert(copy_statement(schema, table, fields, fmt), stream, size=BLOCK_BYTES)
            except psycopg2.Error:
                if stream.error is not None:     # our reader failed (bad data), not the database
                    raise stream.error from None
                raise
    finally:
        stream.close()
    return {i: combine(v) for i, v in (sums or {}).items()}
