"""A task as a stream of COPY bytes: read FITS rows ahead, checksum them, encode them.

This is the formatter side of psycopg's copy seam: it never sees a connection.
copy.py sends what it yields.  One stream covers every part of a task (one COPY
statement per part); each part's blocks end with ``b""`` (end of that COPY's data).
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..fits.checksum import combine, partial_sum
from ..encode import BINARY_HEADER, BINARY_TRAILER, Codec, EncodeError, encode_block, hpx_values
from ..errors import BadFileError
from ..fits.arrow import ArrowHdu, read_rows as arrow_rows
from ..fits.read import expand_heap, heap_sum, read_rows

#: FITS bytes read and encoded per block.  Small blocks let encoding overlap the
#: server's work (the pipeline fills and drains at every COPY statement): measured on
#: 4 x 5,000 FastSpecFit rows, 1 worker, 2 cores: 8 MB 11.9k, 2 MB 13.3k, 1 MB 13.5k,
#: 0.5 MB 13.9k galaxies/s (ceiling 18.5k), before reading ahead across tables.
#: Encoding speed per byte is flat down to ~0.25 MB (numpy call overhead below that).
BLOCK_BYTES = 1024 * 1024
#: FITS bytes per block in text format.  Text is ~4x the bytes of binary; the float part of
#: a line is written in place and only the rest goes through a keep mask.  Measured on
#: 4 x 5,000 FastSpecFit rows, client CPU to read, checksum, sky-order and encode all of them
#: (textenc columnar float part): 128 KB 0.76 s, 256 KB 0.70, 512 KB 0.64, 1 MB 0.64,
#: 2 MB 0.75, 4 MB 0.96 (temporaries fall out of cache).  Whole loader, 2 workers, five
#: alternating runs: copy phase median 1.83 s with 1 MB, 1.93 s with 256 KB.
TEXT_BLOCK_BYTES = 1024 * 1024

#: Encoded blocks prepared ahead of the one being sent.  One is enough to keep the
#: server busy while the next block is read and encoded (numpy and libpq both release
#: the GIL); more only costs memory.
PREFETCH = 2

#: Bytes per CopyData message.  The server receives a whole message before it parses any
#: of it, so with a block (several MB of text) per message it waits on the socket at every
#: block while the client pushes the rest through the socket buffer.  Messages that fit the
#: socket buffer are there by the time the server wants them.  Measured, text, 1 worker,
#: 4 x 5,000 FastSpecFit rows, three runs each as ratios to the server's COPY FROM file:
#: whole blocks 0.80 0.86 0.85; 64 KB 0.92 0.88 0.95; 256 KB 0.80 0.75 0.86.
SEND_BYTES = 64 * 1024

#: Progress callback: (rows, FITS bytes) of each block as it is encoded.
OnBlock = Callable[[int, int], None]


@dataclass(frozen=True)
class PartSource:
    """Rows [start, stop) of one HDU (or of row-aligned HDUs side by side) for one table."""

    staging: str                  # the staging table the rows go to (never the published name)
    hdus: tuple                   # read.HduInfo, in the order their rows are concatenated
    fields: Codec                 # encoder fields of the table's columns
    start: int
    stop: int


def _read(path: str, fh: BinaryIO, part: PartSource, start: int, stop: int, sums: Optional[dict],
          out: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows [start, stop) of the part's HDUs side by side; adds partial sums per HDU.  The
    rows of a one-HDU FITS part are read into ``out`` when given (Scratch)."""
    blocks = []
    for h in part.hdus:
        if isinstance(h, ArrowHdu):                    # a Parquet file: no checksum, no heap
            blocks.append(arrow_rows(path, h, start, stop, fh))
            continue
        rows = read_rows(path, h, start, stop, fh, out if len(part.hdus) == 1 else None)
        if sums is not None:
            sums.setdefault(h.index, []).append(partial_sum(rows, start * h.row_bytes))
            if start == part.start == 0 and h.pcount:        # the heap, once per HDU: DATASUM covers it
                sums[h.index].append(heap_sum(path, h, fh))
        blocks.append(expand_heap(rows, h, fh, path, start))
    return blocks[0] if len(blocks) == 1 else np.hstack(blocks)   # a one-table catalog's rows


def _encode(path: str, part: PartSource, rows: np.ndarray, fmt: str, first_row) -> bytes:
    try:
        return encode_block(rows, part.fields, fmt, first_row)
    except EncodeError as exc:
        where = " + ".join(f"HDU {h.index} ({h.extname})" for h in part.hdus)
        raise BadFileError(path, f"{where}: {exc}") from exc


def sky_field(fields) -> Optional[object]:
    """The encoder field of a table's sky pixel column, or None."""
    return next((f for f in fields if f.kind == "hpx"), None)


def sky_order(rows: np.ndarray, f) -> np.ndarray:
    """The order that sorts rows by their sky pixel (field ``f``; stable, rows without a
    position last)."""
    pix, null = hpx_values(rows, f)
    pix = pix[:, 0]
    if null is not None:
        pix = np.where(null[:, 0], np.iinfo(np.int64).max, pix)
    return np.argsort(pix, kind="stable")


#: The first block of a part is this fraction of a block: the server starts parsing sooner
#: (at the start of a task it has nothing else to do).
FIRST_BLOCK = 8


def block_bounds(start: int, stop: int, step: int) -> Iterator[tuple[int, int]]:
    """Row ranges of the blocks of rows [start, stop): a short first block, then ``step`` rows each."""
    s = start
    e = min(stop, start + max(1, step // FIRST_BLOCK))
    while s < stop:
        yield s, e
        s, e = e, min(stop, e + step)


def part_blocks(path: str, fh: BinaryIO, part: PartSource, fmt: str, on_block: OnBlock,
                sums: Optional[dict], orders: Optional[dict] = None,
                read_ahead: Optional[Callable[[], np.ndarray]] = None) -> Iterator[bytes]:
    """COPY data of one part, block by block; adds partial sums per HDU to ``sums``.

    Rows go out in FITS order, or in sky order when the table has a sky column (or shares
    the row range of one that has: row-aligned HDUs follow the same order).  Sky order
    holds the part in memory (one read of its bytes, or ``read_ahead()``'s rows);
    ``orders`` collects the order of each row range, so a refused row can be named.
    """
    if fmt == "binary":
        yield BINARY_HEADER
    width = sum(h.block_bytes for h in part.hdus)
    step = max(1, (BLOCK_BYTES if fmt == "binary" else TEXT_BLOCK_BYTES) // max(width, 1))
    orders = {} if orders is None else orders
    rows_range = (part.start, part.stop)
    sky = sky_field(part.fields)
    if rows_range in orders or sky is not None:
        whole = read_ahead() if read_ahead is not None else _read(path, fh, part, part.start, part.stop, sums)
        if rows_range not in orders:
            orders[rows_range] = sky_order(whole, sky)
    order = orders.get(rows_range)
    if order is None:
        for s, e in block_bounds(part.start, part.stop, step):
            rows = _read(path, fh, part, s, e, sums)
            data = _encode(path, part, rows, fmt, s)
            on_block(e - s, rows.nbytes)
            yield data
    else:
        for i, j in block_bounds(0, len(order), step):
            idx = order[i:j]
            rows = whole[idx]
            data = _encode(path, part, rows, fmt, part.start + idx)
            on_block(len(idx), rows.nbytes)
            yield data
    if fmt == "binary":
        yield BINARY_TRAILER


class Scratch:
    """Buffers that a worker's tasks read their sky-ordered parts into, one per part slot,
    kept from task to task.  A fresh array of a part's size (200 MB of FASTSPEC) is mapped
    anew by malloc in a reading thread's arena and costs about 0.4 s of page faults, every
    task; a reused one costs none."""

    def __init__(self) -> None:
        self._bufs: dict = {}

    def take(self, slot: int, nbytes: int) -> np.ndarray:
        """A flat uint8 array of at least ``nbytes`` for ``slot`` (its contents are the
        previous task's: the caller overwrites them)."""
        buf = self._bufs.get(slot)
        if buf is None or buf.nbytes < nbytes:
            self._bufs.pop(slot, None)           # free the old one before mapping the larger
            buf = self._bufs[slot] = np.empty(nbytes, np.uint8)
        return buf


class WholeParts:
    """Every part of a sky-ordered task read whole by a thread of its own, in the task's
    order, ahead of its encoding.

    Without it, the encoding thread stops at each part to read it whole (0.1-0.5 s for a
    task's 200 MB of FASTSPEC) while the server, having parsed what was queued, waits: at
    one worker, 2.4 s of a 21.9 s copy of 400,000 galaxies.  Only this thread touches the
    file while it runs; ``close()`` waits for it, so the buffers (Scratch) are free again.
    """

    def __init__(self, path: str, fh: BinaryIO, parts: Sequence[PartSource], sums: Optional[dict],
                 scratch: Optional[Scratch]) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="whole-parts")

        def read(slot: int, part: PartSource) -> np.ndarray:
            h, out = part.hdus[0], None
            if scratch is not None and len(part.hdus) == 1 and not isinstance(h, ArrowHdu):
                out = scratch.take(slot, (part.stop - part.start) * h.row_bytes)
            return _read(path, fh, part, part.start, part.stop, sums, out)
        self._futures: list = [self._pool.submit(read, i, p) for i, p in enumerate(parts)]

    def take(self, i: int) -> Callable[[], np.ndarray]:
        """What part ``i``'s stream calls for its rows (the wait for them, when not read yet)."""
        def rows() -> np.ndarray:
            future, self._futures[i] = self._futures[i], None     # its rows freed with its stream
            return future.result()
        return rows

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def reads_whole(parts: Sequence[PartSource]) -> bool:
    """True when every part of a task is read whole (sky order): its rows can be read ahead."""
    ranges = {(p.start, p.stop) for p in parts if sky_field(p.fields) is not None}
    return bool(parts) and all((p.start, p.stop) in ranges for p in parts)


class TaskStream:
    """The COPY data of every part of a task (iterate it: each part ends with ``b""``) and
    what streaming it measured.

    A task's parts cover the same rows of row-aligned HDUs; the first part with a sky
    column fixes the order of the parts after it (``sky_first`` puts it first), and when
    every part is read whole, a thread reads them ahead (WholeParts, into ``scratch``).
    After (or while) streaming, ``hdu_sums()`` gives the ones'-complement sum of the bytes
    read per HDU (checksums on), and ``orders`` the sky order of each row range, so that a
    row the server refuses can be named.  ``close()`` when done with it.
    """

    def __init__(self, path: str, fh: BinaryIO, parts: Sequence[PartSource], fmt: str, on_block: OnBlock,
                 checksum: bool, scratch: Optional[Scratch] = None) -> None:
        self.path, self.fh, self.parts, self.fmt, self.on_block = path, fh, list(parts), fmt, on_block
        self.sums: Optional[dict] = {} if checksum else None
        self.orders: dict = {}
        self.scratch = scratch
        self._ahead: Optional[WholeParts] = None

    def __iter__(self) -> Iterator[bytes]:
        if reads_whole(self.parts) and self._ahead is None:
            self._ahead = WholeParts(self.path, self.fh, self.parts, self.sums, self.scratch)
        ahead = self._ahead
        try:
            for i, part in enumerate(self.parts):
                yield from part_blocks(self.path, self.fh, part, self.fmt, self.on_block, self.sums, self.orders,
                                       ahead.take(i) if ahead is not None else None)
                yield b""
        finally:
            self.close()

    def close(self) -> None:
        """Wait for the rows being read ahead (the file and the buffers are free after it)."""
        if self._ahead is not None:
            self._ahead.close()

    def hdu_sums(self) -> dict:
        """{hdu index: ones'-complement sum} of the bytes streamed so far ({} without checksums)."""
        return {i: combine(v) for i, v in (self.sums or {}).items()}


def sky_first(by_table: dict) -> list:
    """(table, part) pairs, the parts with a sky column first (their order then applies to
    the row-aligned others)."""
    return sorted(by_table.items(), key=lambda item: sky_field(item[1].fields) is None)


def copy_out_paths(directory: str, task_id: int, parts: Sequence[PartSource], fmt: str, chunk: int = 0) -> list:
    """Where ``--copy-out`` writes each part: DIR/<table>.task<ID>.<n>.copy-<fmt> (a gzip
    file's task is sent in chunks: <table>.task<ID>.c<chunk>.<n>.copy-<fmt> after the first)."""
    tag = f"task{task_id:06d}" + (f".c{chunk}" if chunk else "")
    return [os.path.join(directory, f"{p.staging}.{tag}.{n}.copy-{fmt}") for n, p in enumerate(parts)]


def tee(blocks: Iterable[bytes], paths: Sequence[str]) -> Iterator[bytes]:
    """Pass blocks through, writing each part's bytes (up to its ``b""``) to its own file."""
    it = iter(paths)
    out = open(next(it), "wb")
    try:
        for block in blocks:
            if block:
                out.write(block)
            else:
                out.close()
                nxt = next(it, None)
                out = open(nxt, "wb") if nxt else open(os.devnull, "wb")
            yield block
    finally:
        out.close()


class ReadAhead:
    """A file-like reader over a block iterator that a thread runs ahead of the consumer.

    ``read()`` returns the next SEND_BYTES of the current block (``b""`` ends a part's
    COPY).  Because one thread runs through all parts, encoding the next table's first
    block overlaps the server's work on the previous one.  An exception in the thread reaches ``read()`` (psycopg2
    then aborts the COPY) and stays in ``error`` so the caller can re-raise the original.
    """

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self._stop = threading.Event()
        self.error: Optional[BaseException] = None
        self._block: Optional[memoryview] = None   # the block being sent, from _pos on
        self._pos = 0
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
        if self._block is None:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self.error = item
                raise item
            if len(item) <= SEND_BYTES:
                return item
            self._block, self._pos = memoryview(item), 0
        piece = bytes(self._block[self._pos:self._pos + SEND_BYTES])
        self._pos += SEND_BYTES
        if self._pos >= len(self._block):
            self._block = None
        return piece

    readline = read

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
