"""Property tests (Hypothesis): random column types, shapes, NaN and TNULL patterns,
encoded in both COPY formats and decoded again by an independent decoder."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from copyformat import decode_binary, decode_text
from desi_loader.encode import copy_order, encode_binary, encode_text
from desi_loader.fits.columns import FitsColumn, encoder_field

# (TFORM code, TZERO, stored dtype, PostgreSQL element type)
KINDS = [("I", None, ">i2", "int2"), ("J", None, ">i4", "int4"), ("K", None, ">i8", "int8"),
         ("I", 32768, ">i2", "int4"), ("J", 2 ** 31, ">i4", "int8"), ("B", None, "u1", "int2"),
         ("E", None, ">f4", "float4"), ("D", None, ">f8", "float8")]


@st.composite
def blocks(draw):
    n = draw(st.integers(1, 40))
    ncols = draw(st.integers(1, 5))
    cols, arrays, offset = [], [], 0
    for c in range(ncols):
        code, tzero, stored, pgtype = draw(st.sampled_from(KINDS))
        repeat = draw(st.sampled_from([1, 1, 3]))
        width = np.dtype(stored).itemsize
        # random bit patterns: every NaN payload, subnormal, infinity, -0.0 can appear
        raw = np.frombuffer(draw(st.binary(min_size=n * repeat * width, max_size=n * repeat * width)),
                            np.uint8).reshape(n, repeat * width)
        tnull = None
        if code in "IJK" and tzero is None and draw(st.booleans()):
            tnull = int(raw[0, :width].view(stored)[0])         # make row 0's first value the null
        cols.append(FitsColumn(f"C{c}", f"{repeat}{code}", code, repeat, offset,
                               dims=(repeat,) if repeat > 1 else (), tzero=tzero, tnull=tnull))
        arrays.append(raw)
        offset += repeat * width
    return np.ascontiguousarray(np.hstack(arrays)), cols


def expected(rows, col):
    """Python values per row (lists for arrays) with the NULL policy applied."""
    code = col.code
    stored = {"I": ">i2", "J": ">i4", "K": ">i8", "B": "u1", "E": ">f4", "D": ">f8"}[code]
    width = np.dtype(stored).itemsize
    vals = rows[:, col.offset:col.offset + width * col.repeat].copy().view(stored)
    out = []
    for r in range(len(rows)):
        row = []
        for v in vals[r]:
            if code in "ED":
                row.append(None if np.isnan(v) else np.array(v, stored).tobytes())
            elif col.tnull is not None and int(v) == col.tnull:
                row.append(None)
            else:
                row.append(int(v) + int(col.tzero or 0))
        out.append(row if col.repeat > 1 else row[0])
    return out


@settings(max_examples=150, deadline=None)
@given(blocks())
def test_random_blocks_round_trip_in_both_formats(block):
    rows, cols = block
    fields = [encoder_field(c) for c in cols]
    want = [list(r) for r in zip(*[expected(rows, c) for c in cols])]
    assert decode_binary(encode_binary(rows, fields), fields) == want
    order = copy_order(fields)                       # text lines list the columns in copy order
    perm = [next(i for i, g in enumerate(fields) if g is f) for f in order]
    assert decode_text(encode_text(rows, fields), order) == [[r[i] for i in perm] for r in want]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=4, max_size=400).map(lambda b: b[:len(b) // 4 * 4]))
def test_float32_bit_patterns_text_exact(raw):
    col = FitsColumn("F", "1E", "E", 1, 0)
    rows = np.frombuffer(raw, np.uint8).reshape(-1, 4).copy()
    got = decode_text(encode_text(rows, [encoder_field(col)]), [encoder_field(col)])
    assert [r[0] for r in got] == expected(rows, col)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.data())
def test_float_bit_patterns_in_many_columns_text_exact(n, data):
    # the fixed-width float part of a line: several float4 and float8 columns, every bit
    # pattern (NaN payloads, infinities, subnormals, -0.0), rows mixing them with ints
    codes = data.draw(st.lists(st.sampled_from("EEDJ"), min_size=2, max_size=7))
    cols, offset = [], 0
    for i, code in enumerate(codes):
        cols.append(FitsColumn(f"C{i}", f"1{code}", code, 1, offset))
        offset += 8 if code == "D" else 4
    raw = data.draw(st.binary(min_size=n * offset, max_size=n * offset))
    rows = np.frombuffer(raw, np.uint8).reshape(n, offset).copy()
    fields = [encoder_field(c) for c in cols]
    order = copy_order(fields)
    got = decode_text(encode_text(rows, fields), order)
    by_name = {c.name: expected(rows, c) for c in cols}
    assert got == [[by_name[f.name][r] for f in order] for r in range(n)]


@settings(max_examples=150, deadline=None)
@given(blocks())
def test_columnar_text_equals_the_fieldwise_reference(block):
    from desi_loader.encode import Codec, encode_text_fieldwise
    rows, cols = block
    fields = [encoder_field(c) for c in cols]
    assert encode_text(rows, Codec(fields), 7) == encode_text_fieldwise(rows, copy_order(fields), 7)
    assert encode_text(rows, fields, 7) == encode_text_fieldwise(rows, copy_order(fields), 7)


def test_columnar_text_equals_reference_on_the_fastspecfit_layout(tmp_path):
    from desi_loader.fits.config import load_settings
    from desi_loader.fits.discover import build_plan
    from desi_loader.pipeline.encodings import encoder_plan
    from desi_loader.encode import encode_text_fieldwise
    from desi_loader.fits.read import read_info, read_rows
    from desi_loader.samples.fastspecfit import write_fastspecfit_file
    path = write_fastspecfit_file(str(tmp_path / "fastspec-iron-sv3-bright.fits"), 60, seed=9)
    plan = build_plan([read_info(path)], load_settings().catalogs["fastspecfit"], "s")
    name = plan.files[0].info.name
    enc = encoder_plan(plan, {t: t for t in plan.tables}, {name: 3})[name]
    for table, te in enc.tables.items():
        rows = read_rows(path, te.hdus[0], 5, 60)
        assert encode_text(rows, te.fields, 5) == encode_text_fieldwise(rows, te.fields, 5), table


@st.composite
def blocks_with_bits_and_vlas(draw):
    """Random rows with bit columns and variable-length arrays (expanded: descriptor in the row,
    elements in a region after it) among plain ints and floats."""
    from desi_loader.encode import Field
    n = draw(st.integers(1, 20))
    specs = draw(st.lists(st.sampled_from(["bits", "vla_i", "vla_f", "int", "float"]), min_size=1, max_size=5))
    fields, parts, offset, regions = [], [], 0, []
    for c, kind in enumerate(specs):
        if kind == "bits":
            nbits = draw(st.integers(1, 12))
            nbytes = (nbits + 7) // 8
            parts.append(np.frombuffer(draw(st.binary(min_size=n * nbytes, max_size=n * nbytes)), np.uint8)
                         .reshape(n, nbytes))
            fields.append(Field(f"b{c}", "bits", "bool", offset, 1, nbits, (nbits,)))
            offset += nbytes
        elif kind.startswith("vla"):
            emax = draw(st.integers(0, 4))
            counts = np.array(draw(st.lists(st.integers(0, emax), min_size=n, max_size=n)), ">i4")
            parts.append(np.stack([counts, np.zeros(n, ">i4")], axis=1).view(np.uint8).reshape(n, 8))
            regions.append((c, kind, emax, offset))
            offset += 8
        else:
            w = 8 if kind == "int" else 4
            parts.append(np.frombuffer(draw(st.binary(min_size=n * w, max_size=n * w)), np.uint8).reshape(n, w))
            fields.append(Field(f"s{c}", kind, "int8" if kind == "int" else "float4", offset, w))
            offset += w
    for c, kind, emax, desc in regions:
        w = 4
        parts.append(np.frombuffer(draw(st.binary(min_size=n * emax * w, max_size=n * emax * w)), np.uint8)
                     .reshape(n, emax * w))
        fields.insert(c, Field(f"v{c}", "int" if kind == "vla_i" else "float", "int4" if kind == "vla_i" else "float4",
                               offset, w, emax, (emax,), vla=(desc, 4)))
        offset += emax * w
    return np.ascontiguousarray(np.hstack(parts)), fields


@settings(max_examples=150, deadline=None)
@given(blocks_with_bits_and_vlas())
def test_columnar_text_equals_fieldwise_with_bits_and_vlas(block):
    from desi_loader.encode import Codec, encode_text_fieldwise
    rows, fields = block
    assert encode_text(rows, Codec(fields), 3) == encode_text_fieldwise(rows, copy_order(fields), 3)
    assert encode_binary(rows, Codec(fields), 3)          # encodes (values: test_contract*)
