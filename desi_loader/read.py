"""The only module that opens FITS files: headers via astropy, rows as raw record bytes.

Rows are read with plain positioned reads of the uncompressed data unit, so a worker
holds only the block it is encoding, whatever the file size, and the bytes arrive in
FITS big-endian order, which is what binary COPY wants.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .checksum import checksum_ok, partial_sum
from .errors import BadFileError, SchemaError
from .schema import FILE_ID, ROW_NUM, FitsColumn, check_names, parse_tdim, parse_tform

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
            repeat, code = parse_tform(tform)
            dims = parse_tdim(header.get(f"TDIM{i}"), repeat, code)
        except SchemaError as exc:
            raise SchemaError(f"{where} column {name!r}: {exc}") from exc
        tnull = header.get(f"TNULL{i}")
        col = FitsColumn(name=name, tform=tform, code=code, repeat=repeat, offset=offset, dims=dims,
                         tzero=header.get(f"TZERO{i}"), tscal=header.get(f"TSCAL{i}"),
                         tnull=int(tnull) if tnull is not None and code in "BIJK" else None,
                         unit=header.get(f"TUNIT{i}") or None, comment=header.get(f"TCOMM{i}") or None)
        cols.append(col)
        offset += col.width
    check_names(cols, where, (FILE_ID, ROW_NUM))
    return tuple(cols)


def read_info(path: str) -> FitsInfo:
    """Read every header of a FITS file (no data) and check the file is complete.

    Raises
    ------
    BadFileError
        Not FITS, unreadable, or truncated.
    """
    from astropy.io import fits   # import here: workers that only read rows never need it

    name = os.path.basename(path)
    sniff(path)
    try:
        size = os.path.getsize(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=True,
                           ignore_missing_simple=False) as hdul:
                primary = _cards(hdul[0].header, skip_columns=False)
                hdus = []
                for idx, hdu in enumerate(hdul):
                    header = hdu.header
                    if idx == 0 or header.get("XTENSION", "").strip() != "BINTABLE":
                        continue
                    where = f"HDU {idx} ({header.get('EXTNAME', 'no EXTNAME')})"
                    nrows, row_bytes = int(header["NAXIS2"]), int(header["NAXIS1"])
                    cols = _columns(header, where)
                    if sum(c.width for c in cols) != row_bytes:
                        raise BadFileError(path, f"HDU {idx}: NAXIS1={row_bytes} but the TFORMs add "
                                           f"up to {sum(c.width for c in cols)} bytes")
                    loc = hdu.fileinfo()
                    offset = loc["datLoc"]
                    hdus.append(HduInfo(idx, (header.get("EXTNAME") or None), nrows, row_bytes,
                                        offset, cols, _cards(header, skip_columns=True),
                                        _header_sum(path, loc["hdrLoc"], offset)))
                primary_end = hdul[0].fileinfo()["datLoc"]
    except BadFileError:
        raise
    except SchemaError as exc:      # a column PostgreSQL cannot hold: this file cannot load
        raise BadFileError(path, str(exc), exc.hint) from exc
    except FileNotFoundError as exc:
        raise BadFileError(path, "no such file") from exc
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BadFileError(path, f"not a readable FITS file ({exc})",
                           "check that the download completed (compare its size and sha256)") from exc
    for h in hdus:
        end = h.data_offset + h.nrows * h.row_bytes
        if end > size:
            raise BadFileError(path, f"truncated: HDU {h.index} ({h.extname}) needs {end} bytes, "
                               f"the file has {size}", "download the file again")
    checksum = "present" if "CHECKSUM" in primary or any("DATASUM" in h.cards for h in hdus) else "absent"
    primary_ok = None
    if "CHECKSUM" in primary:
        primary_ok = checksum_ok(_header_sum(path, 0, primary_end), 0)
    return FitsInfo(path, name, size, primary, tuple(hdus), checksum, primary_ok, os.stat(path).st_mtime_ns)


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


def _header_sum(path: str, start: int, stop: int) -> int:
    with open(path, "rb") as f:
        f.seek(start)
        data = np.frombuffer(f.read(stop - start), np.uint8)
    return partial_sum(data, 0)


def read_rows(path: str, hdu: HduInfo, start: int, stop: int, fh: Optional[Any] = None) -> np.ndarray:
    """Rows [start, stop) of an HDU as an (n, NAXIS1) uint8 array of raw record bytes."""
    n = stop - start
    buf = np.empty((n, hdu.row_bytes), np.uint8)
    if buf.nbytes == 0:                    # an HDU without rows (a HEALPix file with no targets)
        return buf
    own = fh is None
    f = open(path, "rb") if own else fh
    try:
        f.seek(hdu.data_offset + start * hdu.row_bytes)
        got = f.readinto(memoryview(buf).cast("B"))
    finally:
        if own:
            f.close()
    if got != buf.nbytes:
        raise BadFileError(path, f"HDU {hdu.index} ({hdu.extname}): short read at row {start + got // max(hdu.row_bytes, 1)}"
                           f" (file truncated while loading?)")
    return buf
