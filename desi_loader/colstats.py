"""Column statistics as PostgreSQL's ANALYZE computes them, in numpy (pure: no database).

For a sample of a column's values this gives what ``compute_scalar_stats`` and
``analyze_mcv_list`` of src/backend/commands/analyze.c (PostgreSQL 18) would store:
null fraction, width, the number of distinct values (Haas and Stokes' Duj1 estimator), the
most common values and their frequencies, the histogram of the rest and the correlation of
physical to sorted order.  Given the sample ANALYZE would take, the result is the same.

Why: ANALYZE reads every column of every sampled row with ``heap_getattr`` and sorts each
column with a comparison function call per step; for the 887 columns of FASTSPEC that is
8-9 s of one server core whatever the table's size, and two ANALYZE of one table cannot run
at once.  Here the sort is numpy's (SIMD, no function calls), one sort per column gives the
values and the order of ties at once, and the results go back with
``pg_restore_attribute_stats`` (control/analyze.py).

Fixed-width scalar columns only (integers, floats, booleans): their order needs no collation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class ColumnStats:
    """One column's row of pg_statistic, as pg_stats shows it."""

    null_frac: float
    avg_width: int
    n_distinct: float
    mcv: Optional[np.ndarray] = None          # most common values, most common first
    mcf: Optional[np.ndarray] = None          # their frequencies in the sample
    histogram: Optional[np.ndarray] = None    # bounds of the values not in the MCV list
    correlation: Optional[float] = None


def _sorted_order(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys in sorted order, tuple numbers in sorted order): ascending values, equal values
    by tuple number (compare_scalars); equal as PostgreSQL compares (-0 = 0)."""
    if values.dtype.kind == "b":
        keys = values.astype(np.uint16)
    elif values.dtype.kind == "f":
        v = values + values.dtype.type(0)                   # -0.0 -> +0.0
        if np.isnan(v).any():                               # NaN = NaN, above everything
            v = np.where(np.isnan(v), values.dtype.type(np.nan), v)
        bits = v.view(np.uint32 if v.dtype.itemsize == 4 else np.uint64)
        top = bits.dtype.type(1) << bits.dtype.type(8 * bits.dtype.itemsize - 1)
        keys = np.where(bits & top, ~bits, bits | top)      # unsigned order = float order
    else:                                                   # signed: flip the sign bit
        unsigned = values.view(values.dtype.str.replace("i", "u"))
        keys = unsigned ^ unsigned.dtype.type(1 << (8 * values.dtype.itemsize - 1))
    order = _radix_order(keys)
    return keys[order], order


def _radix_order(keys: np.ndarray) -> np.ndarray:
    """The stable order of unsigned ``keys``: 16 bits at a time, the least significant first,
    each a stable sort of uint16 (numpy's is a radix sort: 0.1 ms for 30,000 values, where
    one sort of 64-bit (value, tuple number) pairs takes 0.9 ms)."""
    order = np.arange(len(keys), dtype=np.int64)
    for shift in range(0, 8 * keys.dtype.itemsize, 16):
        digit = (keys >> keys.dtype.type(shift)).astype(np.uint16)   # the low 16 bits
        if digit.min() == digit.max():                      # the same in every row: no reorder
            continue
        order = order[np.argsort(digit[order], kind="stable")]
    return order


def mcv_count(counts: np.ndarray, stadistinct: float, stanullfrac: float, samplerows: int,
              totalrows: float) -> int:
    """How many of the most common values (``counts``, most common first) are worth keeping
    (analyze_mcv_list)."""
    num_mcv = len(counts)
    if samplerows == totalrows or totalrows <= 1.0:
        return num_mcv
    ndistinct_table = -stadistinct * totalrows if stadistinct < 0 else stadistinct
    sumcount = float(counts[:num_mcv - 1].sum())
    while num_mcv > 0:
        selec = min(max(1.0 - sumcount / samplerows - stanullfrac, 0.0), 1.0)
        otherdistinct = ndistinct_table - (num_mcv - 1)
        if otherdistinct > 1:
            selec /= otherdistinct
        N, n = float(totalrows), float(samplerows)
        K = N * float(counts[num_mcv - 1]) / n
        stddev = math.sqrt(n * K * (N - K) * (N - n) / (N * N * (N - 1)))
        if counts[num_mcv - 1] > selec * samplerows + 2 * stddev + 0.5:
            break
        num_mcv -= 1
        if num_mcv == 0:
            break
        sumcount -= float(counts[num_mcv - 1])
    return num_mcv


def n_distinct(ndistinct: int, nmultiple: int, null_cnt: int, samplerows: int, totalrows: float) -> float:
    """stadistinct from the sample's distinct values and those seen more than once: -1 x the
    non-null fraction when none repeats, the count when all do, else Haas and Stokes' Duj1;
    negative (a fraction of the rows) above 10 % of them."""
    stanullfrac = null_cnt / samplerows
    if nmultiple == 0:
        stadistinct = -1.0 * (1.0 - stanullfrac)
    elif nmultiple == ndistinct:
        stadistinct = float(ndistinct)
    else:
        f1 = ndistinct - nmultiple
        d = f1 + nmultiple
        nn, N = float(samplerows - null_cnt), totalrows * (1.0 - stanullfrac)
        est = (nn * d) / ((nn - f1) + f1 * nn / N) if N > 0 else 0.0
        est = min(max(est, d), N)
        stadistinct = math.floor(est + 0.5)
    if stadistinct > 0.1 * totalrows:
        stadistinct = -(stadistinct / totalrows)
    return stadistinct


def _histogram(values: np.ndarray, tupno: np.ndarray, starts: np.ndarray, counts: np.ndarray,
               track: np.ndarray, num_hist: int) -> np.ndarray:
    """``num_hist`` bounds spread evenly over the sorted values not in the MCV list (``track``)."""
    keep = np.ones(len(tupno), dtype=bool)
    for run in track:
        keep[starts[run]:starts[run] + counts[run]] = False
    rest = tupno[keep]
    i = np.arange(num_hist, dtype=np.int64)
    delta, deltafrac = divmod(len(rest) - 1, num_hist - 1)
    return values[rest[i * delta + (i * deltafrac) // (num_hist - 1)]]


def _correlation(tupno: np.ndarray) -> float:
    """Correlation of physical order (tuple numbers) with sorted order, as ANALYZE sums it."""
    n = len(tupno)
    xysum = float(np.dot(np.arange(n, dtype=np.int64), tupno))
    xsum = (n - 1) * n / 2.0
    x2sum = (n - 1) * n * (2 * n - 1) / 6.0
    return (n * xysum - xsum * xsum) / (n * x2sum - xsum * xsum)


def scalar_stats(values: np.ndarray, null_cnt: int, samplerows: int, totalrows: float,
                 target: int = 100) -> ColumnStats:
    """compute_scalar_stats for a fixed-width column.

    ``values``: the non-null values of the sample in the sample's (physical) order;
    ``null_cnt``: the sample's NULLs; ``samplerows``: rows sampled; ``totalrows``: rows in
    the table; ``target``: the column's statistics target."""
    width = values.dtype.itemsize
    n = len(values)
    if n == 0:
        return ColumnStats(1.0 if null_cnt else 0.0, width, 0.0)
    keys, tupno = _sorted_order(values)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    counts = np.diff(np.append(starts, n))
    ndistinct = len(starts)
    multiple = counts > 1
    stanullfrac = null_cnt / samplerows
    stadistinct = n_distinct(ndistinct, int(multiple.sum()), null_cnt, samplerows, totalrows)

    # the track list: repeated values, most repeated first, the smaller value first on ties
    rep = np.flatnonzero(multiple)
    track = rep[np.lexsort((starts[rep], -counts[rep]))][:target]
    num_mcv = len(track)
    if not (num_mcv == ndistinct and stadistinct > 0 and num_mcv <= target):
        num_mcv = mcv_count(counts[track], stadistinct, stanullfrac, samplerows, totalrows) if num_mcv else 0
    track = track[:num_mcv]
    mcv = mcf = hist = None
    if num_mcv:
        mcv = values[tupno[starts[track]]]
        mcf = (counts[track] / samplerows).astype(np.float32)
    num_hist = min(ndistinct - num_mcv, target + 1)
    if num_hist >= 2:
        hist = _histogram(values, tupno, starts, counts, track, num_hist)
    corr = _correlation(tupno) if n > 1 else None
    return ColumnStats(float(np.float32(stanullfrac)), width, float(np.float32(stadistinct)), mcv, mcf, hist,
                       None if corr is None else float(np.float32(corr)))


def literal(values: np.ndarray) -> str:
    """An array literal of ``values`` that PostgreSQL reads back as exactly these values.

    Floats are written as the shortest text of the same value as a double (``repr``): a
    float32 widens to double exactly, and that text lies far closer to it than half a
    float32 step, so ``float4in`` reads back the same float32 ("nan", "inf" are read too)."""
    if values.dtype.kind == "b":
        return "{" + ",".join("t" if v else "f" for v in values.tolist()) + "}"
    if values.dtype.kind == "f":
        return "{" + ",".join(map(repr, values.astype(np.float64).tolist())) + "}"
    return "{" + ",".join(map(str, values.tolist())) + "}"
