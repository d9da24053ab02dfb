"""The only module that opens FITS files: headers via astropy, rows as raw record bytes.

Rows are read with plain positioned reads of the uncompressed data unit, so a worker
holds only the block it is encoding, whatever the file size, and the bytes arrive in
FITS big-endian order, which is what binary COPY wants.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
import warnings
import zlib
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, BinaryIO, Iterator, Optional, cast

import numpy as np

from .checksum import checksum_ok, combine, partial_sum
from ..errors import BadFileError, SchemaError
from .columns import (COMPLEX, FILE_ID, FITS_TYPES, ROW_NUM, FitsColumn, check_names, parse_tdim, parse_tform,
                     parse_vla)

_COLUMN_KEYS = ("TTYPE", "TFORM", "TDIM", "TZERO", "TSCAL", "TNULL", "TUNIT", "TCOMM", "TDISP")


@dataclass(frozen=True)
class HduInfo:
    """A binary-table HDU: where its rows are and what they hold."""

    index: int
    extname: Optional[str]
    nrows: int
    row_bytes: int
    data_offset: int
    columns: tuple[FitsColumn, ...]
    cards: dict
    header_sum: int = 0            # ones'-complement sum of the header bytes (CHECKSUM check)
    pcount: int = 0                # bytes after the rows: gap + heap of variable-length arrays
    theap: int = 0                 # where the heap starts, from the start of the data

    @cached_property
    def vlas(self) -> tuple:
        """The variable-length array columns (worked out once: blocks ask for every read)."""
        return tuple(c for c in self.columns if c.heap)

    @cached_property
    def block_bytes(self) -> int:
        """Bytes of a row as the encoder sees it: the FITS row, then each VLA's elements
        (expand_heap) padded to the column's largest array."""
        return self.row_bytes + sum(c.heap_bytes for c in self.vlas)

    @property
    def datasum(self) -> Optional[int]:
        """The DATASUM card as an integer, or None when absent."""
        value = self.cards.get("DATASUM")
        try:
            return int(str(value).strip()) if value is not None else None
        except ValueError:
            return None


@dataclass(frozen=True)
class FitsInfo:
    """A FITS file's primary header and binary-table HDUs."""

    path: str
    name: str
    size: int
    primary: dict
    hdus: tuple[HduInfo, ...]
    checksum: str        # 'absent' | 'present' (verification is the coordinator's choice)
    primary_checksum_ok: Optional[bool] = None   # None when the PRIMARY HDU has no CHECKSUM
    mtime_ns: int = 0
    compressed: str = ""           # 'gzip': offsets are in the decompressed stream (one task per file)

    @property
    def identity(self) -> dict:
        """What tells this file's content from another version of the same name.

        Size and modification time from the file system, and the CHECKSUM/DATASUM cards the
        file declares: a re-downloaded or re-processed file differs in at least one.
        """
        sums = {str(h.index): [h.cards.get("DATASUM"), h.cards.get("CHECKSUM")] for h in self.hdus}
        sums["0"] = [self.primary.get("DATASUM"), self.primary.get("CHECKSUM")]
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sums": sums}

    def hdu(self, extname: str) -> Optional[HduInfo]:
        for h in self.hdus:
            if (h.extname or "").upper() == extname.upper():
                return h
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _cards(header: Any, skip_columns: bool) -> dict:
    out = {}
    for key, value in header.items():
        if not key or key in ("COMMENT", "HISTORY"):
            continue
        if skip_columns and key.rstrip("0123456789") in _COLUMN_KEYS and key[-1].isdigit():
            continue
        out[key] = _jsonable(value)
    return out


def _columns(header: Any, where: str) -> tuple[FitsColumn, ...]:
    cols = []
    offset = 0
    for i in range(1, int(header.get("TFIELDS", 0)) + 1):
        name = str(header.get(f"TTYPE{i}", f"COL{i}")).strip()
        tform = str(header[f"TFORM{i}"]).strip()
        try:
            heap, repeat, code, dims = _layout(tform, header.get(f"TDIM{i}"))
        except SchemaError as exc:
            raise SchemaError(f"{where} column {name!r}: {exc}", exc.hint) from exc
        tnull = header.get(f"TNULL{i}")
        col = FitsColumn(name=name, tform=tform, code=code, repeat=repeat, offset=offset, dims=dims,
                         tzero=header.get(f"TZERO{i}"), tscal=header.get(f"TSCAL{i}"),
                         tnull=int(tnull) if tnull is not None and code in "BIJK" else None,
                         unit=header.get(f"TUNIT{i}") or None, comment=header.get(f"TCOMM{i}") or None,
                         heap=heap)
        cols.append(col)
        offset += col.width
    check_names(cols, where, (FILE_ID, ROW_NUM))
    return tuple(cols)


def _hdu_info(path: str, idx: int, hdu: Any, raw: BinaryIO, size) -> HduInfo:
    """One binary-table HDU of an open file: columns, rows, where its data is, its header sum.
    ``size`` is the file's size, or 'gzip' (then VLA maxima are scanned through the stream)."""
    # each card parsed once: astropy parses a card's value on every lookup, and FASTSPEC's
    # 887 columns make about 3,600 cards (0.1 s a file read keyword by keyword; 40 files)
    header = dict(hdu.header.items())
    where = f"HDU {idx} ({header.get('EXTNAME', 'no EXTNAME')})"
    if header.get("ZTABLE"):
        raise BadFileError(path, f"{where} is a tile-compressed table (ZTABLE), which the loader does not read",
                           f"decompress it with CFITSIO's funpack ({os.path.basename(path)} -> .fits), then "
                           "load the .fits file")
    nrows, row_bytes = int(header["NAXIS2"]), int(header["NAXIS1"])
    cols = _columns(header, where)
    if sum(c.width for c in cols) != row_bytes:
        raise BadFileError(path, f"HDU {idx}: NAXIS1={row_bytes} but the TFORMs add "
                           f"up to {sum(c.width for c in cols)} bytes")
    loc = hdu.fileinfo()
    offset = loc["datLoc"]
    pcount = int(header.get("PCOUNT", 0) or 0)
    heap = int(header.get("THEAP", row_bytes * nrows) or 0)
    hsum = _header_sum(raw, loc["hdrLoc"], offset)
    if pcount and (size == "gzip" or offset + row_bytes * nrows + pcount <= size):
        cols = _with_regions(raw, cols, offset, nrows, row_bytes)
    return HduInfo(idx, (header.get("EXTNAME") or None), nrows, row_bytes, offset, cols,
                   _cards(header, skip_columns=True), hsum, pcount, heap)


def _layout(tform: str, tdim: Optional[str]) -> tuple[str, int, str, tuple]:
    """(heap, repeat, element code, dims) of a TFORM: complex as a last axis of 2 (real,
    imaginary), bits as a boolean array, a VLA's repeat its maximum (-1: not declared)."""
    vla = parse_vla(tform)
    if vla is not None:
        heap, code, emax = vla
        emax = -1 if emax is None else emax
        return heap, emax, code, (() if code == "A" else (emax,))
    repeat, code = parse_tform(tform)
    if code == "X":
        return "", repeat, code, (repeat,)
    if code in COMPLEX:
        return "", 2 * repeat, COMPLEX[code], parse_tdim(tdim, repeat, "E") + (2,)
    return "", repeat, code, parse_tdim(tdim, repeat, code)


def _with_regions(raw: BinaryIO, cols: tuple, data_offset: int, nrows: int, row_bytes: int) -> tuple:
    """VLA columns with their maximum (scanned from the descriptors when TFORM does not
    declare it) and their region in an expanded row block (after the NAXIS1 row bytes)."""
    out, region = [], row_bytes
    for c in cols:
        if c.heap:
            emax = c.repeat if c.repeat >= 0 else _scan_vla_max(raw, c, data_offset, nrows, row_bytes)
            c = replace(c, repeat=emax, dims=() if c.code == "A" else (emax,), region=region)
            region += c.heap_bytes
        out.append(c)
    return tuple(out)


def _scan_vla_max(raw: BinaryIO, col: FitsColumn, data_offset: int, nrows: int, row_bytes: int) -> int:
    """The largest element count of a VLA column whose TFORM has no (emax)."""
    step, most = max(1, (16 << 20) // max(row_bytes, 1)), 0
    width = col.width // 2
    for s in range(0, nrows, step):
        e = min(nrows, s + step)
        raw.seek(data_offset + s * row_bytes)
        data = raw.read((e - s) * row_bytes)
        if len(data) != (e - s) * row_bytes:
            raise BadFileError(getattr(raw, "name", "?"), "truncated in the rows of a variable-length array column")
        rows = np.frombuffer(data, np.uint8).reshape(-1, row_bytes)
        counts = np.ascontiguousarray(rows[:, col.offset:col.offset + width]).view(f">i{width}")
        most = max(most, int(counts.max(initial=0)))
    return most


def read_info(path: str) -> FitsInfo:
    """Read every header of a FITS file (no data) and check the file is complete.

    Raises
    ------
    BadFileError
        Not FITS, unreadable, or truncated.
    """
    from astropy.io import fits   # import here: workers that only read rows never need it

    name = os.path.basename(path)
    compressed = "gzip" if sniff(path) == "gzip" else ""
    try:
        size = os.path.getsize(path)
        with warnings.catch_warnings(), open_data(path, compressed) as raw:
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=True,
                           ignore_missing_simple=False) as hdul:
                primary = _cards(hdul[0].header, skip_columns=False)
                primary_end = hdul[0].fileinfo()["datLoc"]
                primary_sum = _header_sum(raw, 0, primary_end) if "CHECKSUM" in primary else 0
                hdus = [_hdu_info(path, idx, hdu, raw, compressed or size) for idx, hdu in enumerate(hdul)
                        if idx and hdu.header.get("XTENSION", "").strip() == "BINTABLE"
                        and not hdu.header.get("ZIMAGE")]    # images (fpack'ed ones too) are not tables
    except BadFileError:
        raise
    except SchemaError as exc:      # a column PostgreSQL cannot hold: this file cannot load
        raise BadFileError(path, str(exc), exc.hint) from exc
    except FileNotFoundError as exc:
        raise BadFileError(path, "no such file") from exc
    except GZIP_ERRORS as exc:
        raise gzip_error(path, exc) from exc
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BadFileError(path, f"not a readable FITS file ({exc})",
                           "check that the download completed (compare its size and sha256)") from exc
    for h in hdus:                 # (a gzip file's end is checked while it is decompressed)
        end = h.data_offset + h.nrows * h.row_bytes + h.pcount
        if end > size and not compressed:
            raise BadFileError(path, f"truncated: HDU {h.index} ({h.extname}) needs {end} bytes, "
                               f"the file has {size}", "download the file again")
    checksum = "present" if "CHECKSUM" in primary or any("DATASUM" in h.cards for h in hdus) else "absent"
    primary_ok = checksum_ok(primary_sum, 0) if "CHECKSUM" in primary else None
    return FitsInfo(path, name, size, primary, tuple(hdus), checksum, primary_ok, os.stat(path).st_mtime_ns,
                    compressed)


#: How a FITS file starts (the first card of the primary header).
FITS_MAGIC = b"SIMPLE  ="
GZIP_MAGIC = b"\x1f\x8b"


def sniff(path: str) -> str:
    """'fits' or 'gzip' by the file's first bytes; BadFileError naming what it is otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(80)
    except FileNotFoundError as exc:
        raise BadFileError(path, "no such file") from exc
    except OSError as exc:
        raise BadFileError(path, f"cannot be read ({exc.strerror or exc})", "check its permissions") from exc
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(FITS_MAGIC):
        return "fits"
    if not head:
        raise BadFileError(path, "empty file (0 bytes)", "download it again")
    shown = head[:16].decode("ascii", "replace").encode("unicode_escape").decode("ascii")
    raise BadFileError(path, f"not a FITS file (a FITS file starts with 'SIMPLE  =', this one with "
                       f"'{shown}')", "download it again, or leave it out of the paths")


def open_data(path: str, compressed: Optional[str] = None) -> BinaryIO:
    """The file's FITS bytes: the file itself, or its decompressed stream when it is gzip'd
    (seeking forward decompresses, seeking back starts over).  ``compressed``: what read_info
    found ('gzip' or ''), else the file is sniffed."""
    compressed = ("gzip" if sniff(path) == "gzip" else "") if compressed is None else compressed
    return cast(BinaryIO, gzip.open(path, "rb") if compressed == "gzip" else open(path, "rb"))


#: What a damaged gzip stream raises while it is decompressed.
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def gzip_error(path: str, exc: BaseException) -> BadFileError:
    """The error naming a gzip file whose stream ``exc`` broke."""
    return BadFileError(path, f"truncated or corrupt gzip stream ({exc})", "download the file again")


def gzip_damage(path: str) -> Optional[str]:
    """Why a gzip file's stream is broken (truncated, corrupt), or None when it decompresses
    to its end.  astropy stops at the last complete HDU of a truncated stream, so a missing
    HDU in a gzip file is checked here before it is reported as missing."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(16 << 20):
                pass
    except GZIP_ERRORS as exc:
        return gzip_error(path, exc).reason
    return None


#: Where gzip files are decompressed (one file per worker at a time, removed after its task).
TMPDIR = os.environ.get("DESI_LOADER_TMPDIR") or None


@contextlib.contextmanager
def decompressed(path: str) -> Iterator[BinaryIO]:
    """A gzip file's content in a temporary file (open for reading), removed afterwards.

    One sequential pass through the decompressor; a task then reads its rows, heap and all,
    with positioned reads as from a plain file.  A truncated or corrupt stream is the file's
    fault: BadFileError naming it.
    """
    fd, tmp = tempfile.mkstemp(prefix="desi-loader-", suffix=".fits", dir=TMPDIR)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as src:
            try:
                shutil.copyfileobj(src, out, 4 << 20)
            except GZIP_ERRORS as exc:
                raise gzip_error(path, exc) from exc
        with open(tmp, "rb") as fh:
            yield fh
    finally:
        os.unlink(tmp)


def _header_sum(raw: BinaryIO, start: int, stop: int) -> int:
    raw.seek(start)
    data = np.frombuffer(raw.read(stop - start), np.uint8)
    return partial_sum(data, 0)


def read_rows(path: str, hdu: HduInfo, start: int, stop: int, fh: Optional[Any] = None,
              out: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows [start, stop) of an HDU as an (n, NAXIS1) uint8 array of raw record bytes (a view
    of ``out``, a flat uint8 array at least that long, when given)."""
    n = stop - start
    if out is None:
        buf = np.empty((n, hdu.row_bytes), np.uint8)
    else:
        buf = out[:n * hdu.row_bytes].reshape(n, hdu.row_bytes)
    if buf.nbytes == 0:                    # an HDU without rows (a HEALPix file with no targets)
        return buf
    own = fh is None
    f = open(path, "rb") if fh is None else fh
    try:
        f.seek(hdu.data_offset + start * hdu.row_bytes)
        got = f.readinto(memoryview(buf.data).cast("B"))
    finally:
        if own:
            f.close()
    if got != buf.nbytes:
        row = start + got // max(hdu.row_bytes, 1)
        raise BadFileError(path, f"HDU {hdu.index} ({hdu.extname}): short read at row {row}"
                           f" (file truncated while loading?)")
    return buf


def expand_heap(rows: np.ndarray, hdu: HduInfo, fh: Any, path: str, first_row: int = 0) -> np.ndarray:
    """Rows of an HDU with variable-length arrays -> rows with each VLA's elements appended.

    Each VLA column gets a region as wide as its largest array (``FitsColumn.region``),
    filled from the heap with the row's elements and zeros after them; the encoder reads
    the count from the descriptor (still in the row) and the elements from the region.
    The heap bytes a block points into are read with one positioned read.
    """
    vlas = hdu.vlas
    if not vlas:
        return rows
    n = rows.shape[0]
    out = np.zeros((n, hdu.block_bytes), np.uint8)
    out[:, :hdu.row_bytes] = rows
    for c in vlas:
        w = c.width // 2
        desc = np.ascontiguousarray(rows[:, c.offset:c.offset + c.width]).view(f">i{w}").astype(np.int64)
        counts, offsets = desc[:, 0], desc[:, 1]
        nbytes = counts * FITS_TYPES[c.code].nbytes
        bad = (counts < 0) | (counts > c.repeat) | (offsets < 0) | (offsets + nbytes > hdu.pcount)
        if bad.any():
            r = int(np.argmax(bad))
            raise BadFileError(path, f"HDU {hdu.index} ({hdu.extname}) row {first_row + r}, column {c.name}: "
                               f"variable-length array of {counts[r]} elements at heap offset {offsets[r]} does "
                               f"not fit TFORM {c.tform} and a heap of {hdu.pcount} bytes (file corrupt?)")
        total = int(nbytes.sum())
        if total == 0:
            continue
        has = nbytes > 0
        lo, hi = int(offsets[has].min()), int((offsets + nbytes)[has].max())
        fh.seek(hdu.data_offset + hdu.theap + lo)
        heap = np.frombuffer(fh.read(hi - lo), np.uint8)
        if heap.size != hi - lo:
            raise BadFileError(path, f"HDU {hdu.index} ({hdu.extname}): short read in the heap (file truncated?)")
        starts = np.cumsum(nbytes) - nbytes                  # where each row's bytes start in the gather
        src = np.repeat(offsets - lo - starts, nbytes) + np.arange(total)
        dst = np.repeat(np.arange(n) * hdu.block_bytes + c.region - starts, nbytes) + np.arange(total)
        out.reshape(-1)[dst] = heap[src]
    return out


def heap_sum(path: str, hdu: HduInfo, fh: Any) -> int:
    """Ones'-complement partial sum of the bytes after the rows (gap and heap): DATASUM covers them."""
    start = hdu.nrows * hdu.row_bytes
    total, pos, step = [], 0, 16 << 20
    while pos < hdu.pcount:
        k = min(step, hdu.pcount - pos)
        fh.seek(hdu.data_offset + start + pos)
        data = np.frombuffer(fh.read(k), np.uint8)
        total.append(partial_sum(data, start + pos))
        pos += k
    return combine(total)
