"""The one independent decoder of COPY data in the tests (binary and text), for the
encoder's property and unit tests: values as Python ints, floats as their big-endian bytes
(bit for bit), arrays as lists, NULL as None."""
import struct

import numpy as np

from desi_loader.encode import OID

BIN = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "float4": ">f4", "float8": ">f8"}


def _bin_value(data, pgtype):
    if pgtype.startswith("float"):
        return data
    return int(np.frombuffer(data, BIN[pgtype])[0])


def decode_binary(data, fields):
    pos, out = 0, []
    while pos < len(data):
        (nf,), pos = struct.unpack_from(">h", data, pos), pos + 2
        assert nf == len(fields)
        row = []
        for f in fields:
            (ln,), pos = struct.unpack_from(">i", data, pos), pos + 4
            if ln < 0:
                row.append(None)
                continue
            buf, pos = data[pos:pos + ln], pos + ln
            if not f.dims:
                row.append(_bin_value(buf, f.pgtype))
                continue
            ndim, _flags, oid = struct.unpack_from(">iii", buf, 0)
            assert ndim == 1 and oid == OID[f.pgtype]
            count, _lb = struct.unpack_from(">ii", buf, 12)
            p, elems = 20, []
            for _ in range(count):
                (el,), p = struct.unpack_from(">i", buf, p), p + 4
                elems.append(None if el < 0 else _bin_value(buf[p:p + el], f.pgtype))
                p += max(el, 0)
            row.append(elems)
        out.append(row)
    return out


def _text_value(tok, pgtype):
    if tok in ("\\N", "NULL"):
        return None
    if pgtype.startswith("float"):
        v = {"Infinity": float("inf"), "-Infinity": float("-inf")}.get(tok)
        v = float.fromhex(tok) if v is None else v
        return np.array(v, BIN[pgtype]).tobytes()
    return int(tok)


def decode_text(data, fields):
    out = []
    for line in data.decode().split("\n")[:-1]:
        row = []
        for tok, f in zip(line.split("\t"), fields):
            if f.dims and tok != "\\N":
                row.append([_text_value(t, f.pgtype) for t in tok.strip("{}").split(",")])
            else:
                row.append(_text_value(tok, f.pgtype))
        out.append(row)
    return out
