"""Parquet as virtual FITS tables, pure: task ranges by row group, NULL sentinels, the record
layout of each Arrow type (golden bytes), and the encoder over it."""
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from desi_loader.encode import Codec, encode_binary
from desi_loader.errors import SchemaError
from desi_loader.fits.arrow import _tnull, read_info, read_rows
from desi_loader.fits.columns import encoder_field
from desi_loader.fits.discover import _group_ranges


def test_tasks_are_whole_row_groups():
    bounds = [0, 70, 140, 210, 280, 300]
    assert _group_ranges(bounds, 100) == [(0, 140), (140, 280), (280, 300)]
    assert _group_ranges(bounds, 10) == [(0, 70), (70, 140), (140, 210), (210, 280), (280, 300)]
    assert _group_ranges(bounds, 10 ** 6) == [(0, 300)]
    assert _group_ranges([0], 100) == [(0, 0)]                  # an empty file: one empty task


def test_null_sentinel_outside_the_values():
    assert _tnull("int16", 0, -5, 5, "c") is None                # no NULL: no sentinel
    assert _tnull("int16", 3, -5, 5, "c") == -2 ** 15
    assert _tnull("int16", 3, -2 ** 15, 5, "c") == 2 ** 15 - 1
    assert _tnull("uint16", 1, 0, 10, "c") == 2 ** 16 - 1 - 2 ** 15     # stored: value - TZERO
    assert _tnull("uint64", 1, 1, 10, "c") == -2 ** 63
    assert _tnull("int8", 1, -128, 0, "c") == 127 + 128
    with pytest.raises(SchemaError, match="no value is left to stand for NULL"):
        _tnull("uint8", 1, 0, 255, "column 'x'")


def test_virtual_record_golden_bytes(tmp_path):
    t = pa.table({"I": pa.array([1, None], pa.int32()), "U": pa.array([65535, 0], pa.uint16()),
                  "F": pa.array([1.5, None], pa.float32()), "B": pa.array([True, None]),
                  "S": pa.array(["é ", None]), "L": pa.array([[7], []], pa.list_(pa.int16()))})
    pq.write_table(t, tmp_path / "g.parquet")
    info = read_info(str(tmp_path / "g.parquet"))
    h, = info.hdus
    assert [(c.name, c.tform) for c in h.columns] == [("I", "1J"), ("U", "1I"), ("F", "1E"), ("B", "1L"),
                                                      ("S", "3U"), ("L", "1PI(1)")]
    assert h.columns[0].tnull == -2 ** 31 and h.columns[1].tnull is None and h.columns[1].tzero == 2 ** 15
    rows = read_rows(info.path, h, 0, 2)
    want0 = (struct.pack(">i", 1) + struct.pack(">h", 65535 - 2 ** 15) + struct.pack(">f", 1.5) + b"T"
             + struct.pack(">i", 3) + "é ".encode() + struct.pack(">i", 1) + b"\0" * 4 + struct.pack(">h", 7))
    assert rows[0].tobytes() == want0
    assert rows[1, :4].tobytes() == struct.pack(">i", -2 ** 31)           # NULL: the sentinel
    assert np.isnan(np.frombuffer(rows[1, 6:10].tobytes(), ">f4")[0]) and rows[1, 10] == 0
    assert rows[1, 11:15].tobytes() == struct.pack(">i", -1)               # NULL string
    fields = Codec([encoder_field(c) for c in h.columns])
    assert [f.name for f in fields] == ["F", "I", "U", "B", "S", "L"]          # copy order: float4 first

    def fld(data):
        return b"\xff\xff\xff\xff" if data is None else struct.pack(">i", len(data)) + data

    def int2_array(values):
        head = struct.pack(">iii", 1 if values else 0, 0, 21) + (struct.pack(">ii", len(values), 1) if values else b"")
        return head + b"".join(struct.pack(">ih", 2, v) for v in values)

    want = (struct.pack(">h", 6) + fld(struct.pack(">f", 1.5)) + fld(struct.pack(">i", 1))
            + fld(struct.pack(">i", 65535)) + fld(b"\x01") + fld("é ".encode()) + fld(int2_array([7]))
            + struct.pack(">h", 6) + fld(None) + fld(None) + fld(struct.pack(">i", 0)) + fld(None) + fld(None)
            + fld(int2_array([])))
    assert encode_binary(rows, fields) == want
