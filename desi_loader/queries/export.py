"""Query results written to the files astronomers open elsewhere, chunk by chunk.

The format follows the file's extension: FITS (.fits, .fit), VOTable (.vot, .votable,
.xml), ECSV (.ecsv) or CSV (.csv).  Units and descriptions go with the columns (FITS:
TUNITn and TCOMMn; VOTable: unit and DESCRIPTION; ECSV: its header).  Nothing holds the
whole result: tables arrive in chunks (tables.iter_tables), and

- FITS is written by fitsio, the first chunk creating the binary table and the others
  appended to it (CFITSIO updates NAXIS2).  Columns with a FITS source keep its fixed width;
  text computed in SQL has no width known in advance and becomes a variable-length string
  column (PA: TOPCAT and fitsio read it as strings, astropy as arrays of characters);
- VOTable (BINARY2 serialization: exact floats, NULLs and strings, unlike TABLEDATA, whose
  readers strip leading blanks), ECSV and CSV are rendered chunk by chunk by astropy's own
  writers; the first chunk gives the header, the rows of the others are spliced in before
  the first chunk's closing lines, so the file is what astropy would write for the whole table.

A file is written under a temporary name and renamed into place when complete.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional, TYPE_CHECKING

import numpy as np
import psycopg2

from .. import units
from ..errors import UsageError
from .sqlerrors import explain_sql_error
from .tables import iter_tables, physical, stored

if TYPE_CHECKING:
    from astropy.table import Table

FORMATS = {".fits": "fits", ".fit": "fits", ".vot": "votable", ".votable": "votable", ".xml": "votable",
           ".ecsv": "ecsv", ".csv": "csv"}


@dataclass
class Written:
    """What was written: rows, bytes of the file."""

    path: str
    rows: int = 0
    bytes: int = 0


def by_extension(path: str, formats: dict, hint: str) -> str:
    """The format of the ``--output`` file ``path`` by its extension, from ``formats``
    ({extension: format}); UsageError with ``hint`` for another."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        raise UsageError(f"--output {path}: unknown format {ext or '(no extension)'!r}", hint)
    return formats[ext]


#: every format --format names (hats: a directory, queries/hats.py)
FORMAT_NAMES = ("fits", "votable", "ecsv", "csv", "hats")


@dataclass(frozen=True)
class Output:
    """Where and how a result is written: ``--output PATH [--format F] [--sky RA,DEC] [--margin ARCSEC]``."""

    path: str
    format: Optional[str] = None          # None: by the path's extension
    sky: Optional[str] = None             # hats: the position columns
    margin: Optional[float] = None        # hats: the margin cache, arcseconds

    @property
    def kind(self) -> str:
        return self.format or file_format(self.path)


def file_format(path: str) -> str:
    """The format of a query result's ``path`` by its extension; UsageError for others."""
    return by_extension(path, FORMATS, "name the file .fits, .vot (VOTable), .ecsv or .csv, or give "
                        "--format (fits, votable, ecsv, csv, or hats for a HATS catalog directory)")


def write_output(conn: Any, query: str, out: Output, units_of: Optional[dict] = None) -> Written:
    """Write the result of ``query`` as ``out`` says, chunk by chunk; returns what was
    written.  ``units_of``: {column: FITS unit} of computed columns (a cone's ``dist``)."""
    if out.kind == "hats":
        from .hats import MARGIN_ARCSEC, arrow_chunks, write_hats
        rows, size = write_hats(arrow_chunks(conn, query, units_of), out.path, out.sky,
                                MARGIN_ARCSEC if out.margin is None else out.margin,
                                workers=min(4, os.cpu_count() or 1))
        return Written(out.path, rows, size)
    if out.sky or out.margin is not None:
        raise UsageError("--sky and --margin are for --format hats", "leave them out for a file")
    return write(iter_tables(conn, query, units_of=units_of), out.path, out.kind)


def export_query(conn: Any, query: str, out: Output, units_of: Optional[dict] = None) -> Written:
    """``write_output`` as the command and the API run it: the server's refusal of ``query``
    (the text sent, its parameters filled in) explained with a caret under the position, a
    file that cannot be written a UsageError naming it."""
    try:
        return write_output(conn, query, out, units_of)
    except psycopg2.Error as exc:
        conn.rollback()
        raise explain_sql_error(exc, query, conn.cursor()) from exc
    except OSError as exc:
        raise UsageError(f"--output {out.path}: {exc.strerror or exc}", "choose a file you can write") from exc


def write(chunks: Iterable[Table], path: str, fmt: Optional[str] = None) -> Written:
    """Write the chunks of one result to ``path`` (format ``fmt``, by default by extension);
    returns what was written."""
    fmt = fmt or file_format(path)
    tmp = f"{path}.part{os.getpid()}"
    out = Written(path)
    try:
        if fmt == "fits":
            _write_fits(chunks, tmp, out)
        else:
            _write_text(chunks, tmp, out, fmt)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    out.bytes = os.path.getsize(path)
    return out


# --------------------------------------------------------------------------- FITS

def null_value(dtype: np.dtype):
    """What a masked value is written as: NaN for floats, the TNULL of integers (their most
    negative value, the largest of unsigned ones), False, ''."""
    if dtype.kind in "fc":
        return np.nan
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return info.max if dtype.kind == "u" else info.min
    return False if dtype.kind == "b" else ""


def _fits_array(table: Table, nulls: set) -> np.ndarray:
    """The chunk as the structured array fitsio writes: masked values filled (integer columns
    with one go into ``nulls``: they get a TNULL), str as ASCII bytes."""
    cols = []
    for name in table.colnames:
        c = table[name]
        data = np.asarray(c)
        if hasattr(c, "filled"):
            if c.dtype.kind in "iu" and np.any(c.mask):
                nulls.add(name)
            tnull = c.meta.get("tnull")
            fill = physical(c.dtype, tnull) if tnull is not None and c.dtype.kind in "iu" else null_value(c.dtype)
            data = np.asarray(c.filled(fill))
        if data.dtype.kind == "U":                 # a FITS width: fixed A columns
            data = np.char.encode(data, "ascii", "replace").astype(f"S{max(1, data.dtype.itemsize // 4)}")
        elif data.dtype == object:                 # text without a width, VLAs: variable-length columns
            out = np.empty(len(data), object)
            out[:] = [v.encode("ascii", "replace") if isinstance(v, str) else np.asarray(v) for v in data]
            data = out
        cols.append((name, data))
    arr = np.empty(len(table), dtype=[(n, d.dtype, d.shape[1:]) for n, d in cols])
    for n, d in cols:
        arr[n] = d
    return arr


def _write_fits(chunks: Iterable[Table], tmp: str, out: Written) -> None:
    nulls: set = set()
    tnulls: dict = {}
    import fitsio                         # here: imported by the commands that write FITS only
    with fitsio.FITS(tmp, "rw", clobber=True) as f:
        hdu: Any = None
        for table in chunks:
            arr = _fits_array(table, nulls)
            tnulls.update({n: table[n].meta["tnull"] for n in table.colnames if "tnull" in table[n].meta})
            if hdu is None:
                units = [table[n].meta.get("tunit") or (str(table[n].unit) if table[n].unit is not None else "")
                         for n in table.colnames]
                f.write_table(arr, units=units, extname="RESULT")
                hdu = f[-1]
                for i, name in enumerate(table.colnames, start=1):
                    desc = table[name].description
                    if desc:
                        hdu.write_key(f"TCOMM{i}", str(desc)[:68])
            elif len(arr):
                hdu.append(arr)
            out.rows += len(table)
        for i, name in enumerate(arr.dtype.names or (), start=1):
            if name in nulls or name in tnulls:
                base = arr.dtype[name].base
                hdu.write_key(f"TNULL{i}", int(tnulls.get(name, stored(base, int(null_value(base))))))


# --------------------------------------------------------------------------- VOTable, ECSV, CSV

#: VOTable has no unsigned types but unsignedByte: widened losslessly (uint64 as its decimal text)
_VOTABLE_WIDER = {"uint16": "int32", "uint32": "int64", "uint64": "str"}


def _for_votable(table: Table) -> Table:
    out = table.copy(copy_data=False)
    for name in table.colnames:
        out[name].unit = None           # written by _votable_units, as the TAP service writes them
        wider = _VOTABLE_WIDER.get(table[name].dtype.name)
        if wider == "str":
            col = table[name]
            out[name] = type(col)([str(int(v)) for v in np.ma.getdata(col).ravel()], name=name, unit=col.unit,
                                  description=col.description, dtype="U20",
                                  **({"mask": np.ma.getmaskarray(col).ravel()} if hasattr(col, "mask") else {}))
        elif wider:
            out[name] = table[name].astype(wider)
    return out


def _csv_safe(table: Table) -> Table:
    """CSV cells are scalars: arrays as JSON lists (as ECSV writes them)."""
    out = table.copy(copy_data=False)
    for name in table.colnames:
        if table[name].ndim > 1 or table[name].dtype == object:
            out[name] = [json.dumps(np.asarray(v).tolist()) if not isinstance(v, str) else v
                         for v in np.ma.getdata(table[name])]
    return out


def _render(table: Table, fmt: str) -> str:
    vounits = {}
    if fmt == "votable":
        vounits = {n: units.translate(table[n].meta.get("tunit") or _unit_text(table[n].unit)).vounit
                   for n in table.colnames}
        table = _for_votable(table)
    elif fmt == "csv":
        table = _csv_safe(table)
    buf = io.StringIO() if fmt != "votable" else io.BytesIO()
    kw = {"format": "votable", "tabledata_format": "binary2"} if fmt == "votable" else {
        "format": "ascii.ecsv" if fmt == "ecsv" else "ascii.csv"}
    table.write(buf, **kw)
    value = buf.getvalue()
    text = value.decode("utf-8") if isinstance(value, bytes) else value
    return _votable_units(text, vounits) if vounits else text


def _unit_text(unit) -> str:
    return "" if unit is None else str(unit)


_FIELD_NAME = re.compile(r'(<FIELD [^>]*?name="([^"]*)")')


def _votable_units(text: str, vounits: dict) -> str:
    """Each FIELD with its column's VOUnit (desi_loader.units: what the TAP service serves),
    not astropy's writing of it (which drops Hz from erg / (Hz s) and cannot write little h)."""
    def add(m: re.Match) -> str:
        unit = vounits.get(html.unescape(m.group(2)))
        return f'{m.group(1)} unit="{html.escape(unit, quote=True)}"' if unit else m.group(1)
    return _FIELD_NAME.sub(add, text)

_STREAM = '<STREAM encoding="base64">'


def _split(text: str, fmt: str) -> tuple[str, str, str]:
    """(header, rows, trailer) of one rendered chunk (VOTable rows: the BINARY2 stream's base64)."""
    if fmt == "votable":
        if _STREAM not in text:                 # astropy writes no DATA for an empty table
            text = text.replace("</TABLE>", f"<DATA>\n<BINARY2>\n{_STREAM}</STREAM>\n</BINARY2>\n</DATA>\n</TABLE>", 1)
        start = text.index(_STREAM) + len(_STREAM)
        end = text.index("</STREAM>", start)
        return _fortran_arraysize(text[:start]) + "\n", text[start:end], text[end:]
    lines = text.splitlines(keepends=True)
    skip = 1 + (sum(1 for ln in lines if ln.startswith("#")) if fmt == "ecsv" else 0)   # comments + names
    return "".join(lines[:skip]), "".join(lines[skip:]), ""


_FIELD = re.compile(r'<FIELD [^>]*>')
_ARRAYSIZE = re.compile(r'arraysize="([0-9x*]+)"')


def _fortran_arraysize(head: str) -> str:
    """arraysize of numeric multi-dimensional FIELDs in the VOTable order (first index fastest):
    astropy 8 writes numpy's (2, 3) as "2x3" with the values in C order, which VOTable readers
    (TOPCAT; astropy itself, reading) take as 3 rows of 2; "3x2" is what those values are."""
    def fix(m: re.Match) -> str:
        field = m.group(0)
        if "Char" in field or 'datatype="char"' in field:
            return field
        return _ARRAYSIZE.sub(lambda a: f'arraysize="{"x".join(reversed(a.group(1).split("x")))}"', field)
    return _FIELD.sub(fix, head)


class _Base64:
    """One base64 stream over the rows of every chunk: BINARY2 rows are self-contained, so
    the chunks' decoded bytes are concatenated and encoded again, 3-byte groups at a time."""

    def __init__(self, fh) -> None:
        self.fh, self.carry = fh, b""

    def write(self, b64: str) -> None:
        data = self.carry + base64.b64decode("".join(b64.split()))
        cut = len(data) - len(data) % 3
        self.carry = data[cut:]
        text = base64.b64encode(data[:cut]).decode("ascii")
        for i in range(0, len(text), 76):
            self.fh.write(text[i:i + 76] + "\n")

    def close(self) -> None:
        if self.carry:
            self.fh.write(base64.b64encode(self.carry).decode("ascii") + "\n")


def _write_text(chunks: Iterable[Table], tmp: str, out: Written, fmt: str) -> None:
    trailer = ""
    with open(tmp, "w", encoding="utf-8") as fh:
        stream = _Base64(fh) if fmt == "votable" else fh
        for i, table in enumerate(chunks):
            head, rows, tail = _split(_render(table, fmt), fmt)
            if i == 0:
                fh.write(head)
                trailer = tail
            stream.write(rows)
            out.rows += len(table)
        if fmt == "votable":
            stream.close()
        fh.write(trailer)
