"""Text COPY, column block by column block: pure numpy, a small constant of operations per value.

Every output row is laid out in a fixed template: each column has a slot wide enough for
its longest text (a float4 needs 17 characters, a float8 24, an integer 21, a string twice
its width when every character needs escaping) followed by its separator.  A block of rows
becomes a (rows, template width) character matrix and a mask of the characters used; the
COPY bytes are the masked characters in row order (one boolean compress).

Scalar float4, float8 and plain integer columns are encoded together, all columns of a type
at once, with lookup tables (two hex digits per mantissa byte, four decimal digits per
exponent or per integer chunk); the other columns (strings, arrays, logical, scaled and
derived values, constants, row numbers) go through encode.py's per-column text functions
into their slots.  The plan (slots, groups, gather indexes) is made once per table and
cached on the Codec.

Output is byte-for-byte the text of encode.encode_text_fieldwise (tests compare them), so
exactness stays what the round-trip tests prove against the server: floats as C99
hexadecimal (``-0x1.8p+0001`` style with fixed-width fields), NaN as ``\\N``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import encode as E

def _packed(texts: list) -> np.ndarray:
    """Short ASCII strings packed little-endian into uint32 (a 4-byte view writes them)."""
    return np.array([int.from_bytes(t.encode().ljust(4, b"\0")[:4], "little")
                     for t in texts], np.uint32)


def _word(text: bytes) -> np.uint32:
    return np.uint32(int.from_bytes(text, "little"))


_HEX2 = _packed([f"{v:02x}" for v in range(256)])
_HEX3 = _packed([f"{v:03x}" for v in range(4096)])
_HEX3_AFTER_DOT = _packed([f".{v:03x}" for v in range(4096)])
_HEX4 = _packed([f"{v:04x}" for v in range(65536)])
_DEC3_SIGNED = {s: _packed([f"{s}{v:03d}" for v in range(1000)]) for s in "+-"}
_DEC4 = _packed([f"{v:04d}" for v in range(10000)])
_HEX3_P = _packed([f"{v:03x}p" for v in range(4096)])
#: float4 words that depend only on the sign and exponent bits (the top 9 bits):
#: "[+-]0x<lead>" and the exponent "[+-]ddd" (subnormals are patched: their exponent is -126)
_F4_HEAD = _packed([("-" if t >> 8 else "+") + ("0x1" if t & 0xFF else "0x0") for t in range(512)])
_F4_EXP = _packed([f"{(t & 0xFF) - 127:+04d}" if t & 0xFF else "+000" for t in range(512)])
#: powers of ten up to 10**19, for the number of decimal digits of a uint64
_POW10 = np.array([10 ** i for i in range(1, 20)], np.uint64)

#: characters of a float's text: [+-]0x<lead>.<6 hex>p[+-]<3 digits> (float4: its exponent
#: has at most 3 digits) or [+-]0x<lead>.<13 hex>p[+-]<4 digits> (float8)
FLOAT_WIDTH = {4: 16, 8: 24}
#: 4-byte words per float text and its separator (the slot: text, tab, unused padding)
FLOAT_WORDS = {4: 5, 8: 7}
INT_WIDTH = 21                    # sign + 20 digits


@dataclass
class _Group:
    """Scalar columns of one type, encoded together; each slot ends with its tab."""

    kind: str                     # f4 | f8 | int
    width: int                    # stored bytes per value
    src: np.ndarray               # (k * width,) byte offsets in the FITS row to gather
    pos: np.ndarray               # (k,) template position of each member's slot
    runs: list                    # (template position, first member, members) of adjacent slots
    slot: int                     # characters per slot, the tab included
    tnull: Optional[np.ndarray] = None       # ints: per-column TNULL (0 where none)
    null_cols: Optional[np.ndarray] = None   # ints: columns that have a TNULL
    pattern: Optional[np.ndarray] = None     # floats: characters of a slot that are kept


@dataclass
class TextPlan:
    """The output template of one table's text COPY rows."""

    width: int
    groups: list                  # _Group
    generic: list                 # (field, slot offset, slot width), each followed by sep_pos
    sep_pos: np.ndarray
    sep_chr: np.ndarray
    keep: Optional[np.ndarray] = None   # characters kept unless a block says otherwise (float slots, tabs)


def _slot_width(f: E.Field) -> int:
    if f.kind == "null":
        return 2
    if f.kind == "const":
        return 2 if f.value is None else 2 * len(str(f.value).encode("utf-8"))
    if f.kind == "rownum":
        return INT_WIDTH
    if f.kind == "text":
        return 2 * f.width
    if f.kind == "bool":
        elem = 2
    elif f.kind in ("float", "scaled", "derived"):
        elem = FLOAT_WIDTH[8 if f.pgtype == "float8" else 4]
    else:
        elem = INT_WIDTH
    if f.dims:
        count = int(np.prod(f.dims))
        seps = E._array_separators(f.dims)
        return 2 * len(f.dims) + count * (max(elem, 4) + max(len(s) for s in seps))
    return elem


def _group_key(f: E.Field) -> Optional[tuple]:
    if f.dims or f.count != 1:
        return None
    if f.kind == "float":
        return ("f4", 4) if f.width == 4 else ("f8", 8)
    if f.kind == "int" and not f.tzero and f.width in (2, 4, 8):
        return ("int", f.width)
    return None


_GROUP_SLOT = {"f4": 4 * FLOAT_WORDS[4], "f8": 4 * FLOAT_WORDS[8], "int": INT_WIDTH + 1}


def plan(fields: Sequence[E.Field]) -> TextPlan:
    """Lay out the text row of ``fields`` (see the module docstring).  The last column is
    always encoded on its own, so that every grouped slot ends with a tab."""
    pos, members, generic, seps = 0, {}, [], []
    for i, f in enumerate(fields):
        key = _group_key(f) if i < len(fields) - 1 else None
        if key:
            members.setdefault(key, []).append((f, pos))
            pos += _GROUP_SLOT[key[0]]
            continue
        slot = _slot_width(f)
        generic.append((f, pos, slot))
        pos += slot
        seps.append((pos, ord("\n") if i == len(fields) - 1 else ord("\t")))
        pos += 1
    groups = []
    for (kind, width), cols in members.items():
        slot = _GROUP_SLOT[kind]
        starts = np.array([p for _, p in cols], np.intp)
        runs, first = [], 0
        for j in range(1, len(cols) + 1):
            if j == len(cols) or starts[j] != starts[j - 1] + slot:
                runs.append((int(starts[first]), first, j - first))
                first = j
        g = _Group(kind, width, np.concatenate([f.offset + np.arange(width) for f, _ in cols]), starts, runs, slot)
        if kind != "int":                  # float slots: the text and its tab, not the padding
            g.pattern = np.arange(slot) <= FLOAT_WIDTH[4 if kind == "f4" else 8]
        if kind == "int":
            nulls = [f.tnull for f, _ in cols]
            if any(t is not None for t in nulls):
                g.tnull = np.array([t if t is not None else 0 for t in nulls], np.int64)
                g.null_cols = np.array([t is not None for t in nulls])
        groups.append(g)
    tp = TextPlan(pos, groups, generic, np.array([p for p, _ in seps], np.intp),
                  np.array([c for _, c in seps], np.uint8))
    tp.keep = np.zeros(pos, bool)
    tp.keep[tp.sep_pos] = True
    for g in groups:
        if g.pattern is not None:
            for start, _first, count in g.runs:
                tp.keep[start:start + count * g.slot] = np.tile(g.pattern, count)
    return tp


# --------------------------------------------------------------------------- numbers

def _put(chars: np.ndarray, pos: int, packed: np.ndarray) -> None:
    """Write packed 4-character words at column ``pos`` (the 4th byte may be overwritten later)."""
    chars[:, pos:pos + 4] = packed.view(np.uint8).reshape(-1, 4)


def float_words(vals: np.ndarray, sep: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Float values (any shape, float32 or float64, either byte order) -> C99 hex text as words.

    Every finite value has the same text width: ``[+-]0x1.800000p+001`` (float4, 16
    characters) or ``[+-]0x1.8000000000000p+0001`` (float8, 24), ``0x0.`` for zero and
    subnormals; then ``sep`` and padding up to whole 4-byte words.  Built from lookup
    tables of packed characters, one uint32 word at a time: a few operations per value.
    Returns (words (N, 5 or 7) uint32 whose bytes are the characters, infinity mask (N,));
    NaN must be handled by the caller.
    """
    flat = np.ascontiguousarray(vals).reshape(-1)
    single = vals.dtype.itemsize == 4
    if single:
        return _float4_words(flat, sep)
    else:
        b = flat.astype("=f8").view(np.uint64)
        sign = (b >> np.uint64(63)).astype(np.uint32)
        exp = ((b >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int32)
        mant = b & np.uint64((1 << 52) - 1)                # 52 bits: 13 hex digits
        nonzero = mant != 0
    bias, emax = (127, 0xFF) if single else (1023, 0x7FF)
    normal = exp != 0
    e = np.where(normal, exp - bias, np.where(nonzero, 1 - bias, 0))
    words = np.empty((flat.size, FLOAT_WORDS[4 if single else 8]), np.uint32)
    # "+0x0" with the sign ('+' 43, '-' 45) in byte 0 and the lead digit in byte 3
    words[:, 0] = _word(b"+0x0") + (sign << 1) + (normal.astype(np.uint32) << 24)
    neg_e = e < 0
    if single:
        words[:, 1] = _HEX3_AFTER_DOT[(mant >> 12).astype(np.intp)]
        words[:, 2] = _HEX3[(mant & 0xFFF).astype(np.intp)] | _word(b"\0\0\0p")
        words[:, 3] = _DEC3_SIGNED["+"][np.abs(e)] + (neg_e.astype(np.uint32) << 1)   # '+' 43 -> '-' 45
        words[:, 4] = sep
    else:
        words[:, 1] = _HEX3_AFTER_DOT[(mant >> np.uint64(40)).astype(np.intp)]
        words[:, 2] = _HEX4[((mant >> np.uint64(24)) & np.uint64(0xFFFF)).astype(np.intp)]
        words[:, 3] = _HEX4[((mant >> np.uint64(8)) & np.uint64(0xFFFF)).astype(np.intp)]
        words[:, 4] = (_HEX2[(mant & np.uint64(0xFF)).astype(np.intp)] | _word(b"\0\0p+")
                       ) + (neg_e.astype(np.uint32) << 25)       # '+' 43 -> '-' 45 in byte 3
        words[:, 5] = _DEC4[np.abs(e)]
        words[:, 6] = sep
    return words, exp == emax


def _float4_words(flat: np.ndarray, sep: int) -> tuple[np.ndarray, np.ndarray]:
    """float_words for float4: four table lookups per value, subnormals patched."""
    b = flat.astype("=f4").view(np.uint32)
    top = (b >> 23).astype(np.intp)                         # sign and exponent
    words = np.empty((flat.size, FLOAT_WORDS[4]), np.uint32)
    words[:, 0] = _F4_HEAD[top]
    words[:, 1] = _HEX3_AFTER_DOT[((b >> 11) & 0xFFF).astype(np.intp)]   # mantissa << 1, top 12 bits
    words[:, 2] = _HEX3_P[((b << 1) & 0xFFF).astype(np.intp)]           # low 12 bits, then 'p'
    words[:, 3] = _F4_EXP[top]
    words[:, 4] = sep
    exp = top & 0xFF
    sub = np.nonzero((exp == 0) & ((b & 0x7FFFFF) != 0))[0]
    if sub.size:
        words[sub, 3] = _word(b"-126")
    return words, exp == 0xFF


def floats(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float values (any shape) -> text characters (shape + (16 or 24,)) and infinity mask.

    The characters of float_words (without separator); an infinity reads
    ``[+-]Infinity`` followed by unused characters (callers mask them).
    """
    shape, single = vals.shape, vals.dtype.itemsize == 4
    words, inf = float_words(vals)
    width = FLOAT_WIDTH[4 if single else 8]
    chars = words.view(np.uint8).reshape(-1, words.shape[1] * 4)[:, :width]
    if inf.any():
        chars = chars.copy()
        chars[inf, 1:9] = np.frombuffer(b"Infinity", np.uint8)
    return chars.reshape(shape + (width,)), inf.reshape(shape)


def ints(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers (int64 or uint64, any shape) -> decimal text (sign slot + 20 digits), keep mask."""
    shape = vals.shape
    flat = vals.reshape(-1)
    if flat.dtype.kind == "i":
        neg = flat < 0
        mag = flat.view(np.uint64).copy()
        mag[neg] = (~mag[neg]) + np.uint64(1)               # two's complement magnitude, safe for INT64_MIN
    else:
        neg = np.zeros(flat.size, bool)
        mag = flat.astype(np.uint64)
    n = flat.size
    chars = np.empty((n, 24), np.uint8)                      # 21 used; room for the last 4-byte word
    chars[:, 0] = 45
    rest = mag.copy()
    for i in range(4, -1, -1):                               # five chunks of four digits, lowest first
        _put(chars, 1 + 4 * i, _DEC4[(rest % np.uint64(10000)).astype(np.intp)])
        rest //= np.uint64(10000)
    ndigits = 1 + np.searchsorted(_POW10, mag, side="right")
    keep = np.arange(21) >= (21 - ndigits)[:, None]
    keep[:, 0] = neg
    return chars[:, :21].reshape(shape + (21,)), keep.reshape(shape + (21,))


# --------------------------------------------------------------------------- rows

def _fill_group(g: _Group, rows: np.ndarray, out: np.ndarray, keep: np.ndarray) -> None:
    n = rows.shape[0]
    raw = np.ascontiguousarray(rows[:, g.src])              # (n, k * width)
    k, slot = g.pos.size, g.slot
    fixes = []                                              # (rows, members, slot contents, characters used)
    if g.kind == "int":
        vals = raw.view(f">i{g.width}").astype(np.int64)
        digits, kp = ints(vals)                             # (n, k, 21)
        chars = np.empty((n, k, slot), np.uint8)
        chars[..., :21] = digits
        chars[..., 21] = 9
        mask = np.empty((n, k, slot), bool)
        mask[..., :21] = kp
        mask[..., 21] = True
        null = ((vals == g.tnull) & g.null_cols) if g.tnull is not None else None
    else:
        vals = raw.view(">f4" if g.kind == "f4" else ">f8")
        words, inf = float_words(vals)
        chars = words.view(np.uint8).reshape(n, k, slot)
        mask = None                                         # text and tab kept, padding dropped: TextPlan.keep
        null = np.isnan(vals)
        null = null if null.any() else None
        if inf.any():
            r, j = np.nonzero(inf.reshape(n, k) & ~null if null is not None else inf.reshape(n, k))
            content = np.zeros((r.size, slot), np.uint8)
            content[:, 0] = chars[r, j, 0]
            content[:, 1:10] = np.frombuffer(b"Infinity\t", np.uint8)
            fixes.append((r, j, content, 10))
    if null is not None:
        r, j = np.nonzero(null)
        content = np.zeros((r.size, slot), np.uint8)
        content[:, :3] = np.frombuffer(b"\\N\t", np.uint8)
        fixes.append((r, j, content, 3))
    flat = chars.reshape(n, k * slot)                       # rows of slots: runs are 2-D slices
    flat_mask = None if mask is None else mask.reshape(n, k * slot)
    for start, first, count in g.runs:
        w, a = count * slot, first * slot
        out[:, start:start + w] = flat[:, a:a + w]
        if flat_mask is not None:                           # floats: kept by the plan's template
            keep[:, start:start + w] = flat_mask[:, a:a + w]
    for r, j, content, used in fixes:
        cols = g.pos[j][:, None] + np.arange(slot)
        out[r[:, None], cols] = content
        keep[r[:, None], cols] = np.arange(slot) < used


def _fill_generic(f: E.Field, pos: int, rows: np.ndarray, first_row: int, out: np.ndarray,
                  keep: np.ndarray) -> None:
    """One column through encode.py's per-column text functions, into its slot."""
    n = rows.shape[0]
    layout = E._Layout(n)
    E._text_field(layout, f, rows, first_row)
    chars, kp = layout.matrix()
    w = chars.shape[1]
    out[:, pos:pos + w] = chars
    keep[:, pos:pos + w] = kp


def encode_text(rows: np.ndarray, fields: Sequence[E.Field], first_row: int = 0) -> bytes:
    """Encode a block of FITS rows as text COPY lines (tab-separated, ``\\N`` for NULL)."""
    n = rows.shape[0]
    if n == 0:
        return b""
    tp = getattr(fields, "text_plan", None)
    if tp is None:
        tp = plan(fields)
        if isinstance(fields, E.Codec):
            fields.text_plan = tp
    out = np.empty((n, tp.width), np.uint8)
    keep = np.empty((n, tp.width), bool)
    keep[:] = tp.keep
    out[:, tp.sep_pos] = tp.sep_chr
    for g in tp.groups:
        _fill_group(g, rows, out, keep)
    for f, pos, _slot in tp.generic:
        _fill_generic(f, pos, rows, first_row, out, keep)
    return out[keep].tobytes()
