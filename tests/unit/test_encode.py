"""Pure encoder: golden bytes for every kind, text escaping, and a decode property test."""
import struct

import numpy as np
import pytest

from copyformat import decode_binary
from desi_loader.encode import Codec, EncodeError, Field, copy_order, encode_binary, encode_text


def rows_of(*cols):
    """Raw FITS row bytes from big-endian numpy columns."""
    parts = [np.ascontiguousarray(c).view(np.uint8).reshape(len(c), -1) for c in cols]
    return np.ascontiguousarray(np.hstack(parts))


def tup(*fields):
    return struct.pack(">h", len(fields)) + b"".join(fields)


def fld(data):
    return b"\xff\xff\xff\xff" if data is None else struct.pack(">i", len(data)) + data


def test_binary_golden_float_int_nan_inf_negzero():
    f4 = np.array([1.5, np.nan, -0.0, np.inf], ">f4")
    i8 = np.array([-1, 2 ** 63 - 1, -2 ** 63, 0], ">i8")
    rows = rows_of(f4, i8)
    fields = [Field("a", "float", "float4", 0, 4), Field("b", "int", "int8", 4, 8)]
    got = encode_binary(rows, fields)
    want = b"".join(tup(fld(None if np.isnan(f4[r]) else f4[r:r + 1].tobytes()), fld(i8[r:r + 1].tobytes()))
                    for r in range(4))
    assert got == want


def test_binary_golden_tzero_tnull_uint8_bool_u64_text():
    u2 = (np.array([0, 65535], np.int64) - 32768).astype(">i2")
    j = np.array([7, -99], ">i4")
    b = np.array([255, 0], "u1")
    lg = np.array([ord("T"), 0], "u1")
    u8 = np.array([np.int64(-1) ^ np.int64(-2**63), np.int64(-2**63)], ">i8")   # stored = value - 2**63
    s = np.array([b" ab\x00\x00", b"x  \x00\x00"], "S5")
    rows = rows_of(u2, j, b, lg, u8, s)
    fields = [Field("u2", "int", "int4", 0, 2, tzero=32768),
              Field("j", "int", "int4", 2, 4, tnull=-99),
              Field("b", "uint8", "int2", 6, 1),
              Field("l", "bool", "bool", 7, 1),
              Field("u8", "u64", "numeric", 8, 8, tzero=2 ** 63),
              Field("s", "text", "text", 16, 5)]
    got = encode_binary(rows, fields)

    def numeric(v):
        digits = [(v // 10000 ** (4 - i)) % 10000 for i in range(5)]
        return struct.pack(">hhhh", 5, 4, 0, 0) + struct.pack(">5h", *digits)

    want = (tup(fld(struct.pack(">i", 0)), fld(struct.pack(">i", 7)), fld(struct.pack(">h", 255)),
                fld(b"\x01"), fld(numeric(2 ** 64 - 1)), fld(b" ab"))
            + tup(fld(struct.pack(">i", 65535)), fld(None), fld(struct.pack(">h", 0)),
                  fld(None), fld(numeric(0)), fld(b"x")))
    assert got == want


def test_binary_golden_array_with_null_element():
    a = np.array([[1, np.nan, 3]], ">f4")
    rows = rows_of(a)
    got = encode_binary(rows, [Field("a", "float", "float4", 0, 4, 3, (3,))])
    body = struct.pack(">iii", 1, 1, 700) + struct.pack(">ii", 3, 1)
    body += fld(np.array([1], ">f4").tobytes())
    body += fld(None) + fld(np.array([3], ">f4").tobytes())
    assert got == tup(fld(body))


def test_binary_const_rownum_null():
    rows = np.zeros((2, 0), np.uint8)
    fields = [Field("file_id", "const", "int8", value=5), Field("row_num", "rownum", "int8"),
              Field("alg", "const", "text", value="ZOBOV"), Field("gone", "null")]
    got = encode_binary(rows, fields, first_row=10)
    want = b"".join(tup(fld(struct.pack(">q", 5)), fld(struct.pack(">q", r)), fld(b"ZOBOV"), fld(None))
                    for r in (10, 11))
    assert got == want


def test_text_golden_and_escaping():
    f8 = np.array([1.5, np.nan, -0.0, -np.inf], ">f8")
    i4 = np.array([-2147483648, 0, 42, 7], ">i4")
    s = np.array([b"a\tb\\", b"\\N", b" x\n", b""], "S4")
    rows = rows_of(f8, i4, s)
    fields = [Field("f", "float", "float8", 0, 8), Field("i", "int", "int4", 8, 4),
              Field("s", "text", "text", 12, 4)]
    lines = encode_text(rows, fields).split(b"\n")
    assert lines[0] == b"+0x1.8000000000000p+0000\t-2147483648\ta\\tb\\\\"
    assert lines[1] == b"\\N\t0\t\\\\N"
    assert lines[2] == b"-0x0.0000000000000p+0000\t42\t x\\n"
    assert lines[3] == b"-Infinity\t7\t"
    assert lines[4] == b""


def test_text_copy_order_and_fixed_width_float_part():
    # scalar float4 columns first, then float8, then the rest; the float part of a line has
    # a fixed width unless a value is NaN (NULL) or infinite
    i4 = np.array([5, -7, 0], ">i4")
    a = np.array([1.5, np.nan, 2.0 ** -149], ">f4")              # 2**-149: the smallest subnormal
    d = np.array([-0.0, 1.0, np.inf], ">f8")
    s = np.array([b"x", b"", b"y"], "S1")
    b = np.array([-np.inf, 3.0, 0.0], ">f4")
    rows = rows_of(i4, a, d, s, b)
    fields = [Field("i", "int", "int4", 0, 4), Field("a", "float", "float4", 4, 4),
              Field("d", "float", "float8", 8, 8), Field("s", "text", "text", 16, 1),
              Field("b", "float", "float4", 17, 4)]
    assert [f.name for f in copy_order(fields)] == ["a", "b", "d", "i", "s"]
    assert [f.name for f in Codec(fields)] == ["a", "b", "d", "i", "s"]
    assert encode_text(rows, fields) == (
        b"+0x1.800000p+000\t-Infinity\t-0x0.0000000000000p+0000\t5\tx\n"
        b"\\N\t+0x1.800000p+001\t+0x1.0000000000000p+0000\t-7\t\n"
        b"+0x0.000002p-126\t+0x0.000000p+000\t+Infinity\t0\ty\n")
    assert encode_text(rows, Codec(fields)) == encode_text(rows, fields)


def test_text_arrays_2d_and_null_elements():
    a = np.array([[1, 2, 3, 4, 5, 6]], ">i2")
    rows = rows_of(a)
    got = encode_text(rows, [Field("a", "int", "int2", 0, 2, 6, (2, 3))])
    assert got == b"{{1,2,3},{4,5,6}}\n"
    f = np.array([[np.nan, 0.5]], ">f4")
    got = encode_text(rows_of(f), [Field("f", "float", "float4", 0, 4, 2, (2,))])
    assert got == b"{NULL,+0x1.000000p-001}\n"


def test_bad_logical_and_non_ascii_name_column_and_row():
    rows = rows_of(np.array([ord("T"), ord("x")], "u1"))
    with pytest.raises(EncodeError, match=r"column 'flag' row 8"):
        encode_binary(rows, [Field("flag", "bool", "bool", 0, 1)], first_row=7)
    rows = rows_of(np.array([b"ok", b"\xe9"], "S2"))
    with pytest.raises(EncodeError, match=r"column 'name' row 1: .*non-ASCII"):
        encode_text(rows, [Field("name", "text", "text", 0, 2)])


@pytest.mark.parametrize("seed", range(5))
def test_property_random_blocks_round_trip(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    f4 = bits.view(np.float32).astype(">f4")            # every bit pattern, NaNs included
    i8 = rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64).astype(">i8")
    f8 = (rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)).astype(">f8")
    rows = rows_of(f4, i8, f8)
    fields = [Field("a", "float", "float4", 0, 4), Field("b", "int", "int8", 4, 8),
              Field("c", "float", "float8", 12, 8)]
    dec = decode_binary(encode_binary(rows, fields), fields)
    for r, (a, b, c) in enumerate(dec):
        assert a == (None if np.isnan(f4[r]) else f4[r:r + 1].tobytes())
        assert b == i8[r] and c == f8[r:r + 1].tobytes()


def test_mixed_int_float_run_nan_only_for_floats():
    # an int32 column whose bit pattern is a float NaN must stay an integer, not NULL
    f4 = np.array([np.nan, 2.0], ">f4")
    i4 = np.array([0x7FC00000, 5], ">i4")
    rows = rows_of(f4, i4)
    got = encode_binary(rows, [Field("a", "float", "float4", 0, 4), Field("b", "int", "int4", 4, 4)])
    want = (tup(fld(None), fld(i4[0:1].tobytes())) + tup(fld(f4[1:2].tobytes()), fld(i4[1:2].tobytes())))
    assert got == want


def test_binary_golden_bits_and_vla():
    """X bits -> boolean[]; a VLA region -> 1-D array of its row's count ('{}' has no dims)."""
    bits = np.array([[0b10100000, 0b01000000], [0xff, 0xff]], "u1")           # 10 bits: 1010000001
    desc = np.array([[2, 0], [0, 8]], ">i4")
    region = np.array([[1.5, np.nan], [0.0, 0.0]], ">f4")
    rows = rows_of(bits, desc, region)
    fields = [Field("x", "bits", "bool", 0, 1, 10, (10,)),
              Field("v", "float", "float4", 10, 4, 2, (2,), vla=(2, 4))]
    got = encode_binary(rows, fields)

    def boolarr(vals):
        body = b"".join(struct.pack(">i", 1) + bytes([v]) for v in vals)
        return struct.pack(">iiiii", 1, 0, 16, len(vals), 1) + body
    row0 = tup(fld(boolarr([1, 0, 1, 0, 0, 0, 0, 0, 0, 1])),
               fld(struct.pack(">iiiii", 1, 1, 700, 2, 1) + fld(np.float32(1.5).byteswap().tobytes()) + fld(None)))
    row1 = tup(fld(boolarr([1] * 10)), fld(struct.pack(">iii", 0, 0, 700)))
    assert got == row0 + row1
    assert encode_text(rows, fields) == (b"{t,f,t,f,f,f,f,f,f,t}\t{+0x1.800000p+000,NULL}\n"
                                         b"{t,t,t,t,t,t,t,t,t,t}\t{}\n")


def test_vla_of_at_most_zero_elements():
    """astropy writes PJ(0) when every array of a file is empty: both formats give '{}'."""
    desc = np.array([[0, 0], [0, 0]], ">i4")
    rows = rows_of(desc)
    f = Field("v", "int", "int4", 8, 4, 0, (0,), vla=(0, 4))
    assert encode_text(rows, [f]) == b"{}\n{}\n"
    assert encode_binary(rows, [f]) == tup(fld(struct.pack(">iii", 0, 0, 23))) * 2


def test_text_vla_between_columns_keeps_its_tab():
    """Found by the contract's property layer: a VLA of one element before another column lost
    the tab after it (its text slot was one character short)."""
    rows = rows_of(np.array([[0b10100000]], "u1"), np.array([[1, 0]], ">i4"), np.array([-2 ** 63], ">i8"),
                   np.array([[7]], ">i4"))
    fields = [Field("x", "bits", "bool", 0, 1, 5, (5,)), Field("v", "int", "int4", 17, 4, 1, (1,), vla=(1, 4)),
              Field("k", "int", "int8", 9, 8)]
    assert encode_text(rows, fields) == b"{t,f,t,f,f}\t{7}\t-9223372036854775808\n"


def test_utf8_golden_binary_and_text():
    """A Parquet string's slot (length word, -1 for NULL, then its bytes): kept exactly,
    spaces and UTF-8 included, NULL distinct from the empty string."""
    values = ["Ångström  ", None, "", " a\tb\\"]
    width = max(len(v.encode()) for v in values if v is not None)
    slot = np.zeros((len(values), 4 + width), np.uint8)
    for r, v in enumerate(values):
        data = b"" if v is None else v.encode()
        slot[r, :4] = np.frombuffer(struct.pack(">i", -1 if v is None else len(data)), np.uint8)
        slot[r, 4:4 + len(data)] = np.frombuffer(data, np.uint8)
    ids = np.array([1, 2, 3, 4], ">i4")
    rows = rows_of(ids, slot)
    fields = [Field("id", "int", "int4", 0, 4), Field("s", "utf8", "text", 4, width)]
    want = b"".join(tup(fld(ids[r:r + 1].tobytes()), fld(None if v is None else v.encode()))
                    for r, v in enumerate(values))
    assert encode_binary(rows, fields) == want
    assert encode_text(rows, fields) == "1\tÅngström  \n2\t\\N\n3\t\n4\t a\\tb\\\\\n".encode()
