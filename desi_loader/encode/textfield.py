"""Text COPY, column by column: the reference encoder (encode_text_fieldwise) and the
per-column text functions the columnar encoder (textenc.py) uses for its varied columns.

Strings are escaped (backslash, tab, newline, carriage return), floats are C99 hexadecimal
(exact), NULL is ``\\N`` (a NULL array element ``NULL``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .fields import (EncodeError, Field, _Layout, _bits, _bool_values, _check_ascii, _float_values, _int_values,
                     _string_lengths, hpx_values, row_numbers, utf8_slot, vla_counts)
from .textnum import floats, ints

_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_DIGITS = np.frombuffer(b"0123456789", np.uint8)


def _text_ints(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers (int64 or uint64, any shape) -> decimal chars (sign slot + 20 digits), keep mask."""
    return ints(vals)


def _text_floats(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Floats -> C99 hexadecimal strings (exact), always signed; NaN handled by caller.

    Form: [+-]0x1.<hex mantissa>p<+|-><decimal exponent>, or 0x0.<...>p-126/-1022 for
    subnormals, 0x0.0p+0000 for zero, [+-]Infinity.  glibc strtod/strtof (PostgreSQL's
    float8in/float4in) parse it exactly, so every bit round-trips; tests check this
    against the server.
    """
    chars, inf = floats(vals)
    keep = np.ones(chars.shape, bool)
    if inf.any():
        keep[inf, 9:] = False
    return chars, keep


def _escape_text(chars: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Escape backslash, tab, newline and carriage return for text COPY (vectorised)."""
    special = keep & ((chars == 92) | (chars == 9) | (chars == 10) | (chars == 13))
    if not special.any():
        return chars, keep
    n, w = chars.shape
    esc = np.zeros(256, np.uint8)
    esc[92], esc[9], esc[10], esc[13] = ord("\\"), ord("t"), ord("n"), ord("r")
    out = np.empty((n, w, 2), np.uint8)
    out[:, :, 0] = np.where(special, ord("\\"), chars)
    out[:, :, 1] = esc[chars]
    k = np.empty((n, w, 2), bool)
    k[:, :, 0] = keep
    k[:, :, 1] = special
    return out.reshape(n, 2 * w), k.reshape(n, 2 * w)


def _text_elements(rows: np.ndarray, f: Field, first_row: int
                   ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Element text (n, count, W), keep mask, null mask (n, count) or None."""
    n = rows.shape[0]
    if f.kind in ("float", "scaled", "derived"):
        vals, null = _float_values(rows, f)
        chars, keep = _text_floats(vals)
        return chars, keep, null
    if f.kind in ("bool", "bits"):
        true, null = _bool_values(rows, f, first_row) if f.kind == "bool" else (_bits(rows, f), None)
        chars = np.where(true, ord("t"), ord("f")).astype(np.uint8).reshape(n, f.count, 1)
        return chars, np.ones(chars.shape, bool), null
    vals, null = hpx_values(rows, f) if f.kind == "hpx" else _int_values(rows, f)
    chars, keep = _text_ints(vals.reshape(n, f.count))
    return chars, keep, null


def _text_value(layout: _Layout, chars: np.ndarray, keep: np.ndarray,
                null: Optional[np.ndarray], null_text: bytes) -> None:
    n, w = chars.shape
    if null is not None:
        width = max(w, len(null_text))
        c = np.zeros((n, width), np.uint8)
        k = np.zeros((n, width), bool)
        c[:, :w], k[:, :w] = chars, keep
        nt = np.frombuffer(null_text, np.uint8)
        c[null, :len(null_text)] = nt
        k[null] = np.arange(width) < len(null_text)
        chars, keep = c, k
    layout.array(chars, None if keep.all() else keep)


def _array_separators(dims: tuple) -> list[bytes]:
    """Bytes written after element j of a row-major array literal (before the closing braces)."""
    count = int(np.prod(dims))
    seps = []
    for j in range(count):
        if j == count - 1:
            seps.append(b"")
            continue
        closed, stride = 0, 1
        for d in reversed(dims[1:]):
            stride *= d
            if (j + 1) % stride == 0:
                closed += 1
        seps.append(b"}" * closed + b"," + b"{" * closed)
    return seps


def _text_array(layout: _Layout, f: Field, chars: np.ndarray, keep: np.ndarray,
                null: Optional[np.ndarray]) -> None:
    n, count, w = chars.shape
    dims = f.dims or (count,)
    seps = _array_separators(dims)
    sw = max((len(s) for s in seps), default=0)
    width = max(w, 4) + sw
    c = np.zeros((n, count, width), np.uint8)
    k = np.zeros((n, count, width), bool)
    c[:, :, :w], k[:, :, :w] = chars, keep
    if null is not None:
        c[:, :, :4][null] = np.frombuffer(b"NULL", np.uint8)
        k[:, :, :max(w, 4)][null] = np.arange(max(w, 4)) < 4
    for j, s in enumerate(seps):
        if s:
            c[:, j, width - sw:width - sw + len(s)] = np.frombuffer(s, np.uint8)
            k[:, j, width - sw:width - sw + len(s)] = True
    layout.const(b"{" * len(dims))
    layout.array(c, k)
    layout.const(b"}" * len(dims))


def _text_vla(layout: _Layout, chars: np.ndarray, keep: np.ndarray, null: Optional[np.ndarray],
              counts: np.ndarray) -> None:
    """A variable-length array as '{e1,e2,...}' ('{}' when the row has none)."""
    n, emax, w = chars.shape
    width = max(w, 4) + 1
    used = np.arange(emax) < counts[:, None]
    c = np.zeros((n, emax, width), np.uint8)
    k = np.zeros((n, emax, width), bool)
    c[:, :, :w] = chars
    k[:, :, :w] = keep & used[:, :, None]
    if null is not None:
        null = null & used
        c[:, :, :4][null] = np.frombuffer(b"NULL", np.uint8)
        k[:, :, :max(w, 4)][null] = np.arange(max(w, 4)) < 4
    c[:, :, width - 1] = ord(",")
    k[:, :, width - 1] = np.arange(emax) < (counts - 1)[:, None]
    layout.const(b"{")
    layout.array(c, k)
    layout.const(b"}")


def _text_field(layout: _Layout, f: Field, rows: np.ndarray, first_row: int) -> None:
    """One column's text (without its separator) added to ``layout``."""
    n = rows.shape[0]
    if f.kind == "null":
        layout.const(b"\\N")
    elif f.kind == "const":
        if f.value is None:
            layout.const(b"\\N")
        else:
            v = str(f.value).encode("utf-8")
            c, k = _escape_text(np.frombuffer(v, np.uint8)[None, :], np.ones((1, len(v)), bool))
            layout.const(c[k].tobytes())
    elif f.kind == "rownum":
        chars, keep = _text_ints(row_numbers(first_row, n))
        layout.array(chars, keep)
    elif f.kind == "text":
        if f.dims:
            raise EncodeError(f"column {f.name!r}: string arrays are not supported")
        chars = rows[:, f.offset:f.offset + f.width]
        lengths = _string_lengths(chars)
        _check_ascii(chars, lengths, f, first_row)
        keep = np.arange(f.width) < lengths[:, None]
        chars, keep = _escape_text(chars, keep)
        layout.array(chars, None if keep.all() else keep)
    elif f.kind == "utf8":
        slot, lengths, missing = utf8_slot(rows, f)
        chars, keep = _escape_text(slot[:, 4:], np.arange(f.width) < lengths[:, None])
        _text_value(layout, chars, keep, missing if missing.any() else None, b"\\N")
    else:
        if f.vla and not f.count:                  # TFORM P?(0): every array is empty
            layout.const(b"{}")
            return
        chars, keep, null = _text_elements(rows, f, first_row)
        if f.vla:
            _text_vla(layout, chars.reshape(n, f.count, -1), keep.reshape(n, f.count, -1),
                      None if null is None else null.reshape(n, f.count), vla_counts(rows, f))
        elif f.dims:
            _text_array(layout, f, chars, keep, null)
        else:
            _text_value(layout, chars.reshape(n, -1), keep.reshape(n, -1),
                        None if null is None else null.reshape(n), b"\\N")


def encode_text_fieldwise(rows: np.ndarray, fields: Sequence[Field], first_row: int = 0) -> bytes:
    """Text COPY built column by column (the reference that textenc.encode_text must equal)."""
    n = rows.shape[0]
    if n == 0:
        return b""
    layout = _Layout(n)
    for i, f in enumerate(fields):
        _text_field(layout, f, rows, first_row)
        layout.const(b"\n" if i == len(fields) - 1 else b"\t")
    return layout.tobytes()
