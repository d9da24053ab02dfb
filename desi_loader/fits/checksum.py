"""FITS CHECKSUM/DATASUM arithmetic: 32-bit ones'-complement sums of big-endian words.

Sums over disjoint byte ranges combine by ones'-complement addition, so each worker
sums exactly the bytes it loads (no second pass over 79 GB) and the coordinator adds
the partial sums per HDU and compares them with the DATASUM card.
"""
from __future__ import annotations

import numpy as np

_MASK = 0xFFFFFFFF


def fold(value: int) -> int:
    """Fold carries back into 32 bits (ones'-complement addition)."""
    while value > _MASK:
        value = (value & _MASK) + (value >> 32)
    return value


def partial_sum(data: np.ndarray, offset: int) -> int:
    """Ones'-complement sum of ``data`` (uint8, any shape) placed at byte ``offset`` of a unit."""
    flat = data.reshape(-1)
    if flat.size == 0:
        return 0
    head = (-offset) % 4
    total = 0
    for i in range(min(head, flat.size)):
        total += int(flat[i]) << (8 * (3 - (offset + i) % 4))
    body = flat[head:]
    nwords = body.size // 4
    if nwords:
        total += int(body[:nwords * 4].view(">u4").sum(dtype=np.uint64))
    for i, b in enumerate(body[nwords * 4:]):
        total += int(b) << (8 * (3 - i))
    return fold(total)


def combine(sums) -> int:
    """Ones'-complement sum of partial sums."""
    return fold(sum(int(s) for s in sums))


def checksum_ok(header_sum: int, data_sum: int) -> bool:
    """A valid CHECKSUM card makes the whole HDU sum to negative zero (all ones)."""
    return combine([header_sum, data_sum]) == _MASK
