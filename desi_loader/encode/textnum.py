"""Numbers as text by table lookups: C99 hexadecimal floats (exact) and decimal integers.

Pure numpy; the text encoders (textfield.py, textenc.py) build on it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

def _packed(texts: list) -> np.ndarray:
    """Short ASCII strings packed little-endian into uint32 (a 4-byte view writes them)."""
    return np.array([int.from_bytes(t.encode().ljust(4, b"\0")[:4], "little")
                     for t in texts], np.uint32)


def _word(text: bytes) -> np.uint32:
    return np.uint32(int.from_bytes(text, "little"))


_HEX2 = _packed([f"{v:02x}" for v in range(256)])
_HEX3_AFTER_DOT = _packed([f".{v:03x}" for v in range(4096)])
_HEX4 = _packed([f"{v:04x}" for v in range(65536)])
_DEC4 = _packed([f"{v:04d}" for v in range(10000)])
_HEX3_P = _packed([f"{v:03x}p" for v in range(4096)])
#: float4 words that depend only on the sign and exponent bits (the top 9 bits):
#: "[+-]0x<lead>" and the exponent "[+-]ddd" (subnormals are patched: their exponent is -126)
_F4_HEAD = _packed([("-" if t >> 8 else "+") + ("0x1" if t & 0xFF else "0x0") for t in range(512)])
_F4_EXP = _packed([f"{(t & 0xFF) - 127:+04d}" if t & 0xFF else "+000" for t in range(512)])
#: float8 words of the top 12 bits: "[+-]0x<lead>", "\0\0p[+-]" (OR-ed with the last two
#: mantissa digits) and the exponent's four digits (subnormals patched: -1022)
_F8_HEAD = _packed([("-" if t >> 11 else "+") + ("0x1" if t & 0x7FF else "0x0") for t in range(4096)])
_F8_P = np.array([_word(b"\0\0p-" if (t & 0x7FF) and (t & 0x7FF) < 1023 else b"\0\0p+")
                  for t in range(4096)], np.uint32)
_F8_EXP = np.array([_DEC4[abs((t & 0x7FF) - 1023) if t & 0x7FF else 0] for t in range(4096)], np.uint32)
#: powers of ten up to 10**19, for the number of decimal digits of a uint64
_POW10 = np.array([10 ** i for i in range(1, 20)], np.uint64)

#: characters of a float's text: [+-]0x<lead>.<6 hex>p[+-]<3 digits> (float4: its exponent
#: has at most 3 digits) or [+-]0x<lead>.<13 hex>p[+-]<4 digits> (float8)
FLOAT_WIDTH = {4: 16, 8: 24}
#: characters of a float's slot in a line: its text and the tab after it (fields.fixed_text_width)
FLOAT_SLOT = {w: c + 1 for w, c in FLOAT_WIDTH.items()}
INT_WIDTH = 21                    # sign + 20 digits


# --------------------------------------------------------------------------- numbers

def floats(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float values (any shape, float32 or float64, either byte order) -> C99 hex text
    (shape + (16 or 24,)) and a mask of the infinities and NaNs.

    Every finite value has the same text width: ``[+-]0x1.800000p+001`` (float4) or
    ``[+-]0x1.8000000000000p+0001`` (float8), ``0x0.`` for zero and subnormals; the
    masked ones read ``[+-]Infinity`` followed by unused characters (callers drop those,
    and write NaN as NULL).  The same lookups as the float part of a line (one slot per
    value); arrays and scaled columns use it.
    """
    shape, single = vals.shape, vals.dtype.itemsize == 4
    slot = FLOAT_SLOT[4 if single else 8]
    flat = np.ascontiguousarray(vals).reshape(-1, 1)
    chars = np.empty((flat.shape[0], slot), np.uint8)
    special = np.zeros(flat.shape[0], bool)
    if flat.size:
        if single:
            nan, inf = _float4_part(chars, flat.astype("=f4").view(np.uint32), slot)
        else:
            nan, inf = _float8_part(chars, flat.astype("=f8").view(np.uint64), slot, 0)
        if nan is not None:
            special = (nan | inf)[:, 0]
            chars[special, 1:9] = np.frombuffer(b"Infinity", np.uint8)
    return chars[:, :slot - 1].reshape(shape + (slot - 1,)), special.reshape(shape)


def _digits(mag: np.ndarray, chunks: int, used: int) -> np.ndarray:
    """Magnitudes (N,) -> (N, 1 + 4 * chunks) characters: a '-' then the digits, right
    aligned; only the last ``used`` groups of four are written (the block's largest value
    needs no more), the characters before them are left unset."""
    chars = np.empty((mag.size, 1 + 4 * chunks), np.uint8)
    chars[:, 0] = 45
    rest = mag.copy() if used > 1 else mag
    ten4 = mag.dtype.type(10000)
    for i in range(chunks - 1, chunks - 1 - used, -1):       # four digits at a time, lowest first
        chars[:, 1 + 4 * i:5 + 4 * i] = np.take(_DEC4, (rest % ten4).astype(np.intp)).view(np.uint8).reshape(-1, 4)
        if i > chunks - used:
            rest //= ten4
    return chars


def _magnitude(flat: np.ndarray, wide: bool) -> tuple[np.ndarray, np.ndarray]:
    """(negative mask, |value|) as uint64 (``wide``) or uint32, safe for the minimum value."""
    if flat.dtype.kind == "u":
        return np.zeros(flat.size, bool), flat.astype(np.uint64 if wide else np.uint32)
    neg = flat < 0
    if wide:
        mag = flat.astype(np.int64).view(np.uint64).copy()
    else:
        mag = flat.astype(np.int64).astype(np.uint32)        # two's complement, 32 bits
    np.negative(mag, out=mag, where=neg)                    # magnitude of INT_MIN too (modular)
    return neg, mag


def ints(vals: np.ndarray, digits: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Integers (any integer dtype and shape) -> decimal text and keep mask, shape + (1 + W,).

    W is ``digits`` rounded up to whole groups of four (20 for 64-bit values, 12 for 32-bit,
    8 for 16-bit); character 0 is the sign slot, kept for negative values.
    """
    shape = vals.shape
    flat = vals.reshape(-1)
    chunks = (digits + 3) // 4
    neg, mag = _magnitude(flat, digits > 10)
    most = len(str(int(mag.max()))) if mag.size else 1      # digits of the largest magnitude
    chars = _digits(mag, chunks, (most + 3) // 4)
    width = 1 + 4 * chunks
    ndigits = 1 + np.searchsorted(_POW10[:most - 1], mag, side="right")
    keep = np.arange(width) >= (width - ndigits)[:, None]
    keep[:, 0] = neg
    return chars.reshape(shape + (width,)), keep.reshape(shape + (width,))


#: decimal digits of the largest magnitude of a 2-, 4- or 8-byte integer
INT_DIGITS = {2: 5, 4: 10, 8: 20}


# --------------------------------------------------------------------------- float writers

def _words(out: np.ndarray, n: int, stride: int, start: int, k: int, step: int, at: int) -> np.ndarray:
    """The (n, k) uint32 view of ``out`` at character ``at`` of each of k slots of ``step``
    characters that begin at ``start`` in lines of ``stride`` characters (unaligned)."""
    return np.ndarray((n, k), np.uint32, buffer=out, offset=start + at, strides=(stride, step))


def _chars(out: np.ndarray, n: int, stride: int, start: int, k: int, step: int, at: int) -> np.ndarray:
    return np.ndarray((n, k), np.uint8, buffer=out, offset=start + at, strides=(stride, step))


def _float4_part(out, b: np.ndarray, stride: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Write float4 texts (b: (n, k) native uint32 bits) at the start of each line of ``out``;
    returns (NaN mask, infinity mask), None when there is neither.

    Four table lookups per value (np.take with intp indexes: 1.8x faster than indexing
    with uint32, which converts them), each stored as an unaligned 32-bit word.
    """
    n, k = b.shape
    x = b.astype(np.intp)
    top = x >> 23                                           # sign and exponent
    _words(out, n, stride, 0, k, 17, 0)[...] = np.take(_F4_HEAD, top)
    _words(out, n, stride, 0, k, 17, 4)[...] = np.take(_HEX3_AFTER_DOT, (x >> 11) & 0xFFF)
    _words(out, n, stride, 0, k, 17, 8)[...] = np.take(_HEX3_P, (x << 1) & 0xFFF)
    exp = _words(out, n, stride, 0, k, 17, 12)
    exp[...] = np.take(_F4_EXP, top)
    _chars(out, n, stride, 0, k, 17, 16)[...] = 9
    s = b << 1                                              # without the sign
    sub = (s - 1) < 0x00FFFFFF                              # exponent 0, mantissa not 0
    if sub.any():
        exp[sub] = _word(b"-126")
    special = s >= 0xFF000000
    if not special.any():
        return None, None
    nan = special & (s != 0xFF000000)
    return nan, special & ~nan


def _float8_part(out, b: np.ndarray, stride: int,
                 start: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """As _float4_part for float8 (b: (n, k) native uint64 bits), from character ``start``."""
    n, k = b.shape
    top = (b >> np.uint64(52)).astype(np.intp)
    m = b & np.uint64((1 << 52) - 1)
    _words(out, n, stride, start, k, 25, 0)[...] = np.take(_F8_HEAD, top)
    _words(out, n, stride, start, k, 25, 4)[...] = np.take(_HEX3_AFTER_DOT, (m >> np.uint64(40)).astype(np.intp))
    _words(out, n, stride, start, k, 25, 8)[...] = np.take(
        _HEX4, ((m >> np.uint64(24)) & np.uint64(0xFFFF)).astype(np.intp))
    _words(out, n, stride, start, k, 25, 12)[...] = np.take(
        _HEX4, ((m >> np.uint64(8)) & np.uint64(0xFFFF)).astype(np.intp))
    low = _words(out, n, stride, start, k, 25, 16)
    low[...] = np.take(_HEX2, (m & np.uint64(0xFF)).astype(np.intp)) | np.take(_F8_P, top)
    exp = _words(out, n, stride, start, k, 25, 20)
    exp[...] = np.take(_F8_EXP, top)
    _chars(out, n, stride, start, k, 25, 24)[...] = 9
    e = top & 0x7FF
    sub = (e == 0) & (m != 0)
    if sub.any():
        low[sub] = _HEX2[m[sub] & np.uint64(0xFF)] | _word(b"\0\0p-")
        exp[sub] = _word(b"1022")
    special = e == 0x7FF
    if not special.any():
        return None, None
    nan = special & (m != 0)
    return nan, special & ~nan
