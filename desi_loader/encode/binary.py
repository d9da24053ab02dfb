"""Binary COPY: blocks of FITS rows (big-endian record bytes) to PostgreSQL binary tuples.

A FITS binary table row and a binary COPY tuple are both sequences of big-endian values;
binary COPY only adds a 4-byte length word before each field, so encoding is a byte
re-layout done column block by column block with numpy slices, never a loop over rows.
"""
from __future__ import annotations

import struct
from typing import Optional, Sequence

import numpy as np

from .fields import (OID, Codec, EncodeError, Field, _Layout, _NULL_WORD, _bits, _bool_values,
                     _float_values, is_plain, _int_values, _raw, _runs, _string_lengths, _check_ascii,
                     hpx_values, row_numbers, utf8_slot, vla_counts)

BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
BINARY_TRAILER = b"\xff\xff"


# --------------------------------------------------------------------------- binary

def _binary_elements(rows: np.ndarray, f: Field, first_row: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Element payloads (n, count, out_width) uint8 and a null mask (n, count) or None."""
    n = rows.shape[0]
    if f.kind == "float":
        sl = rows[:, f.offset:f.offset + f.width * f.count]
        words = sl.view(np.uint32).reshape(n, f.count, f.width // 4)
        return sl.reshape(n, f.count, f.width), _nan_words(words, f.width, np.ones(f.count, bool))
    if f.kind == "scaled":
        vals, null = _float_values(rows, f)
        return vals.astype(">f8").view(np.uint8).reshape(n, f.count, 8), null
    if f.kind == "derived":
        vals, null = _float_values(rows, f)
        return vals.astype(">f4").view(np.uint8).reshape(n, f.count, 4), null
    if f.kind == "bool":
        true, null = _bool_values(rows, f, first_row)
        return true.astype(np.uint8).reshape(n, f.count, 1), null
    if f.kind == "bits":
        return _bits(rows, f).reshape(n, f.count, 1), None
    if f.kind == "hpx":
        vals, null = hpx_values(rows, f)
        return vals.astype(">i8").view(np.uint8).reshape(n, 1, 8), null
    if f.kind == "u64":
        vals, null = _int_values(rows, f)
        return _numeric_u64(vals).reshape(n, f.count, 18), null
    if f.kind == "int" and not f.tzero and f.out_width == f.width:
        sl = rows[:, f.offset:f.offset + f.width * f.count]
        null = None
        if f.tnull is not None:
            null = _raw(rows, f) == f.tnull
            null = null if null.any() else None
        return sl.reshape(n, f.count, f.width), null
    vals, null = _int_values(rows, f)
    out = vals.astype(">i%d" % f.out_width)
    return out.view(np.uint8).reshape(n, f.count, f.out_width), null


def _numeric_u64(vals: np.ndarray) -> np.ndarray:
    """uint64 values -> PostgreSQL binary numeric, 5 base-10000 digits, weight 4."""
    flat = vals.reshape(-1).astype(np.uint64)
    digits = np.empty((flat.size, 5), np.uint64)
    rest = flat.copy()
    for i in range(4, -1, -1):
        digits[:, i] = rest % np.uint64(10000)
        rest //= np.uint64(10000)
    out = np.empty((flat.size, 9), ">i2")
    out[:, 0] = 5          # ndigits
    out[:, 1] = 4          # weight: first digit is 10000**4
    out[:, 2] = 0          # sign: positive
    out[:, 3] = 0          # dscale
    out[:, 4:] = digits.astype(np.int64)
    return out.view(np.uint8).reshape(vals.shape + (18,))


def _binary_scalar(layout: _Layout, elems: np.ndarray, null: Optional[np.ndarray]) -> None:
    n, _, w = elems.shape
    data = elems.reshape(n, w)
    word = np.frombuffer(struct.pack(">i", w), np.uint8)
    if null is None:
        def write(dst: np.ndarray) -> None:
            dst[:, :4] = word
            dst[:, 4:] = data
        layout.custom(4 + w, write)
        return
    nul = null.reshape(n)

    def write_null(dst: np.ndarray) -> None:
        dst[:, :4] = np.where(nul[:, None], _NULL_WORD, word)
        dst[:, 4:] = data

    keep = np.ones((n, 4 + w), bool)
    keep[:, 4:] = ~nul[:, None]
    layout.custom(4 + w, write_null, keep)


def _binary_array(layout: _Layout, f: Field, elems: np.ndarray, null: Optional[np.ndarray]) -> None:
    n, count, w = elems.shape
    dims = f.dims or (count,)
    head = struct.pack(">iii", len(dims), 0, OID[f.pgtype])
    head += b"".join(struct.pack(">ii", d, 1) for d in dims)
    head_arr = np.frombuffer(head, np.uint8)
    full = len(head) + count * (4 + w)
    body = np.empty((n, count, 4 + w), np.uint8)
    body[:, :, 4:] = elems
    body[:, :, :4] = np.frombuffer(struct.pack(">i", w), np.uint8)
    keep = None
    lengths = np.full(n, full, np.int64)
    hasnull = None
    if null is not None:
        body[:, :, :4][null] = _NULL_WORD
        body_keep = np.ones((n, count, 4 + w), bool)
        body_keep[:, :, 4:] = ~null[:, :, None]
        keep = np.ones((n, 4 + full), bool)
        keep[:, 4 + len(head):] = body_keep.reshape(n, -1)
        lengths -= null.sum(axis=1) * w
        hasnull = null.any(axis=1)

    def write(dst: np.ndarray) -> None:
        dst[:, :4] = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
        dst[:, 4:4 + len(head)] = head_arr
        if hasnull is not None:
            dst[:, 11] = hasnull
        dst[:, 4 + len(head):] = body.reshape(n, -1)

    layout.custom(4 + full, write, keep)


def _binary_vla(layout: _Layout, f: Field, elems: np.ndarray, null: Optional[np.ndarray],
                counts: np.ndarray) -> None:
    """A variable-length array: a 1-D array of each row's elements ('{}' when it has none).

    Written as an array of the column's largest size with the elements past a row's count
    (and, for empty rows, the dimension words) dropped by the keep mask.
    """
    n, emax, w = elems.shape
    used = np.arange(emax) < counts[:, None]
    null = None if null is None else (null & used)
    if null is not None and not null.any():
        null = None
    body = np.empty((n, emax, 4 + w), np.uint8)
    body[:, :, 4:] = elems
    body[:, :, :4] = np.frombuffer(struct.pack(">i", w), np.uint8)
    body_keep = np.repeat(used[:, :, None], 4 + w, axis=2)
    nnull = np.zeros(n, np.int64)
    if null is not None:
        body[:, :, :4][null] = _NULL_WORD
        body_keep[:, :, 4:] &= ~null[:, :, None]
        nnull = null.sum(axis=1)
    empty = counts == 0
    lengths = np.where(empty, 12, 20 + counts * (4 + w) - nnull * w)
    keep = np.ones((n, 24 + emax * (4 + w)), bool)
    keep[empty, 16:24] = False
    keep[:, 24:] = body_keep.reshape(n, -1)
    oid = np.frombuffer(struct.pack(">i", OID[f.pgtype]), np.uint8)
    lb = np.frombuffer(struct.pack(">i", 1), np.uint8)

    def write(dst: np.ndarray) -> None:
        dst[:, :4] = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
        dst[:, 4:8] = (~empty).astype(">i4").view(np.uint8).reshape(n, 4)
        dst[:, 8:12] = (nnull > 0).astype(">i4").view(np.uint8).reshape(n, 4)
        dst[:, 12:16] = oid
        dst[:, 16:20] = counts.astype(">i4").view(np.uint8).reshape(n, 4)
        dst[:, 20:24] = lb
        dst[:, 24:] = body.reshape(n, -1)

    layout.custom(keep.shape[1], write, keep)


def _binary_text(layout: _Layout, f: Field, rows: np.ndarray, first_row: int) -> None:
    n = rows.shape[0]
    chars = rows[:, f.offset:f.offset + f.width]
    lengths = _string_lengths(chars)
    _check_ascii(chars, lengths, f, first_row)
    mask = np.ones((n, 4 + f.width), bool)
    mask[:, 4:] = np.arange(f.width) < lengths[:, None]
    keep = None if mask.all() else mask

    def write(dst: np.ndarray) -> None:
        dst[:, :4] = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
        dst[:, 4:] = chars

    layout.custom(4 + f.width, write, keep)


def _binary_utf8(layout: _Layout, f: Field, rows: np.ndarray) -> None:
    """A Parquet string: its slot in the row already is a binary COPY field (length word, -1
    for NULL, then the bytes); the bytes past each length are dropped."""
    slot, lengths, _ = utf8_slot(rows, f)
    keep = np.ones(slot.shape, bool)
    keep[:, 4:] = np.arange(f.width) < lengths[:, None]

    def write(dst: np.ndarray) -> None:
        dst[:] = slot

    layout.custom(4 + f.width, write, None if keep.all() else keep)


def _const_binary(f: Field) -> bytes:
    if f.value is None:
        return b"\xff\xff\xff\xff"
    if f.pgtype == "text":
        data = str(f.value).encode("utf-8")
    elif f.pgtype in ("int2", "int4", "int8"):
        data = int(f.value).to_bytes(f.out_width, "big", signed=True)
    else:
        raise EncodeError(f"constant column {f.name!r}: unsupported type {f.pgtype}")
    return struct.pack(">i", len(data)) + data


def _binary_run(layout: _Layout, run: list[Field], rows: np.ndarray) -> None:
    """k adjacent plain columns copied as 32-bit words with one strided assignment each.

    Viewing the bytes as 4-byte words (unaligned views are fine for numpy) makes the copy
    one element per value instead of four: measured 2 GB/s against 250 MB/s bytewise on
    FASTSPEC rows (835 float32 columns, 2,000 rows).
    """
    n = rows.shape[0]
    k, w = len(run), run[0].width
    if w % 4:
        _binary_run_bytes(layout, run, rows)
        return
    nw = w // 4                                   # source words per value (1 or 2)
    src = rows[:, run[0].offset:run[0].offset + k * w].view(np.uint32).reshape(n, k, nw)
    null = None
    floats = np.array([f.kind == "float" for f in run])
    if floats.any():
        null = _nan_words(src, w, floats)
    word = np.frombuffer(struct.pack(">i", w), np.uint32)[0]
    slot = _SLOT4 if w == 4 else _SLOT8
    values = src[:, :, 0] if w == 4 else src.reshape(n, k * nw).view(np.uint64)

    def write(dst: np.ndarray) -> None:
        # 2-D (rows x columns) assignments: numpy's inner loop then runs over the columns,
        # not over a length-1 axis (3x faster than (n, k, 1) views)
        d = dst.view(slot)
        d["value"] = values
        d["length"] = word
        if null is not None:
            d["length"][null] = 0xFFFFFFFF

    keep = None
    if null is not None:
        keep = np.ones((n, k, 4 + w), bool)
        keep[:, :, 4:] = ~null[:, :, None]
    layout.custom(k * (4 + w), write, keep, words=True)


#: one binary COPY field of a 4- or 8-byte value: length word then value, packed
_SLOT4 = np.dtype({"names": ["length", "value"], "formats": ["u4", "u4"], "offsets": [0, 4], "itemsize": 8})
_SLOT8 = np.dtype({"names": ["length", "value"], "formats": ["u4", "u8"], "offsets": [0, 4], "itemsize": 12})


def _binary_run_bytes(layout: _Layout, run: list[Field], rows: np.ndarray) -> None:
    """Adjacent 2-byte integer columns (no NULLs possible), copied bytewise."""
    n = rows.shape[0]
    k, w = len(run), run[0].width
    src = rows[:, run[0].offset:run[0].offset + k * w]
    word = np.frombuffer(struct.pack(">i", w), np.uint8)

    def write(dst: np.ndarray) -> None:
        d = dst.reshape(n, k, 4 + w)
        d[:, :, 4:] = src.reshape(n, k, w)
        d[:, :, :4] = word

    layout.custom(k * (4 + w), write)


def _nan_words(words: np.ndarray, width: int, floats: np.ndarray) -> Optional[np.ndarray]:
    """NaN mask (n, k) of the float columns (``floats``) of big-endian values viewed as
    native uint32 words (n, k, nw); integer columns of the run are never NULL."""
    if width == 4:
        exp = np.array([0x7F800000], ">u4").view(np.uint32)[0]
        mant = np.array([0x007FFFFF], ">u4").view(np.uint32)[0]
        x = words[:, :, 0]
        special = (x & exp) == exp          # Inf or NaN: rare, so test the mantissa only then
        if not special.any():
            return None
        nan = special & ((x & mant) != 0)
    else:
        u = np.ascontiguousarray(words).view(np.uint64)[:, :, 0]
        exp = np.array([0x7FF0000000000000], ">u8").view(np.uint64)[0]
        mant = np.array([0x000FFFFFFFFFFFFF], ">u8").view(np.uint64)[0]
        nan = ((u & exp) == exp) & ((u & mant) != 0)
    if not floats.all():
        nan &= floats[None, :]
    return nan if nan.any() else None


def encode_binary(rows: np.ndarray, fields: Sequence[Field], first_row: int = 0) -> bytes:
    """Encode a block of FITS rows as binary COPY tuples (no file header/trailer).

    Parameters
    ----------
    rows : numpy.ndarray
        (n, NAXIS1) uint8 array of raw big-endian FITS records.
    fields : sequence of Field
        The output columns, in COPY column order.
    first_row : int or numpy.ndarray
        0-based FITS row number of ``rows[0]``, or of every row (for ``rownum`` and error
        messages).
    """
    n = rows.shape[0]
    layout = _Layout(n)
    layout.const(struct.pack(">h", len(fields)))
    runs = fields.runs if isinstance(fields, Codec) else _runs(fields)
    for run in runs:
        f = run[0]
        if len(run) > 1 or is_plain(f):
            _binary_run(layout, run, rows)
        elif f.kind == "null":
            layout.const(b"\xff\xff\xff\xff")
        elif f.kind == "const":
            layout.const(_const_binary(f))
        elif f.kind == "rownum":
            nums = row_numbers(first_row, n).astype(">i8")
            _binary_scalar(layout, nums.view(np.uint8).reshape(n, 1, 8), None)
        elif f.kind == "text":
            if f.dims:
                raise EncodeError(f"column {f.name!r}: string arrays are not supported")
            _binary_text(layout, f, rows, first_row)
        elif f.kind == "utf8":
            _binary_utf8(layout, f, rows)
        elif f.vla and not f.count:                # TFORM P?(0): every array is empty
            layout.const(struct.pack(">iiii", 12, 0, 0, OID[f.pgtype]))
        else:
            elems, null = _binary_elements(rows, f, first_row)
            if f.vla:
                _binary_vla(layout, f, elems, null, vla_counts(rows, f))
            elif f.dims:
                _binary_array(layout, f, elems, null)
            else:
                _binary_scalar(layout, elems, null)
    if n == 0:
        return b""
    # every row starts with the same field count; _Layout repeats it per row
    return layout.tobytes()
