"""Parquet test data: an Arrow table with every type the loader reads from Parquet, NULLs in
each kind, and what PostgreSQL must hold for each of its values (the loader's NULL policy:
NULL and NaN floats are NULL; a NULL fixed list is an array of NULLs, a NULL variable one
empty)."""
import math

import numpy as np
import pyarrow as pa

STRINGS = ["", "plain", "trailing  ", "  leading", "Ångström ☉", "tab\tnew\nline\\back", "x" * 40]


def all_arrow_types(n=300, seed=0):
    """An Arrow table of ``n`` rows: positions, every scalar type with NULLs and extremes,
    strings (UTF-8, spaces, escapes, NULL, empty), fixed arrays (1-D and 2-D) and lists."""
    rng = np.random.default_rng(seed)
    null = rng.random(n) < 0.15
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))

    def ints(dtype, lo, hi, with_null=True):
        v = rng.integers(lo, hi, n, dtype=np.int64 if lo < 0 or hi < 2 ** 63 else np.uint64, endpoint=True)
        v[:2] = (lo, hi)
        return pa.array(v.astype(dtype), mask=null if with_null else None)

    f32 = rng.normal(size=n).astype(np.float32)
    f32[2:6] = [np.nan, -0.0, np.inf, -np.inf]
    f32[6] = np.float32(1e-45)                       # the smallest subnormal
    f64 = rng.normal(size=n) * 1e300
    strings = [STRINGS[i % len(STRINGS)] if not null[i] else None for i in range(n)]
    elems = rng.normal(size=3 * n).astype(np.float32)
    elems[::7] = np.nan
    emask = rng.random(3 * n) < 0.1
    arr = pa.FixedSizeListArray.from_arrays(pa.array(elems, mask=emask), 3)
    arr = pa.array(arr.to_pylist()[:5] + [None] + arr.to_pylist()[6:], type=arr.type)   # one NULL list
    mat = pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(-300, 300, 6 * n).astype(np.int16)), 3), 2)
    vl = [None if i % 11 == 5 else [None if (i + j) % 5 == 0 else int(i * 10 + j) for j in range(i % 4)]
          for i in range(n)]
    vf = [list(rng.normal(size=i % 3)) for i in range(n)]
    return pa.table({
        "ID": pa.array(np.arange(n, dtype=np.int64) * 7 + 1),
        "RA": ra, "DEC": dec,
        "F32": pa.array(f32, mask=null), "F64": pa.array(f64, mask=null),
        "F16": pa.array(rng.normal(size=n).astype(np.float16)),
        "I8": ints(np.int8, -128, 126), "U8": ints(np.uint8, 0, 255, with_null=False),
        "I16": ints(np.int16, -2 ** 15, 2 ** 15 - 2), "U16": ints(np.uint16, 0, 2 ** 16 - 2),
        "I32": ints(np.int32, -2 ** 31 + 1, 2 ** 31 - 1), "U32": ints(np.uint32, 1, 2 ** 32 - 1),
        "I64": ints(np.int64, -2 ** 63, 2 ** 63 - 2), "U64": ints(np.uint64, 0, 2 ** 64 - 2),
        "FLAG": pa.array(rng.random(n) < 0.5, mask=null),
        "NAME": pa.array(strings, pa.string()), "LNAME": pa.array(strings, pa.large_string()),
        "ARR": arr, "MAT": mat,
        "VL": pa.array(vl, pa.list_(pa.int32())), "VF": pa.array(vf, pa.list_(pa.float64())),
    })


def _float(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def expected(value, arrow_type):
    """What PostgreSQL holds for one Arrow value of ``arrow_type``, as psycopg2 returns it."""
    if pa.types.is_fixed_size_list(arrow_type):
        if value is None:
            value = [None] * arrow_type.list_size
        return [expected(v, arrow_type.value_type) for v in value]
    if pa.types.is_list(arrow_type):
        return [expected(v, arrow_type.value_type) for v in (value or [])]
    if pa.types.is_floating(arrow_type):
        return _float(value)
    return value


def same(got, want, arrow_type):
    """``got`` (from PostgreSQL) equals ``want`` (expected()), floats bit for bit at the
    column's width (a float32's text from PostgreSQL read back as float32)."""
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(
            same(g, w, arrow_type.value_type) for g, w in zip(got, want))
    if want is None or got is None:
        return want is None and got is None
    if pa.types.is_floating(arrow_type):
        width = np.float64 if arrow_type == pa.float64() else np.float32
        g, w = np.array([got], width), np.array([want], width)
        return g.tobytes() == w.tobytes()
    return int(got) == want if pa.types.is_integer(arrow_type) else got == want
