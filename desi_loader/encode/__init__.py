"""Pure encoder: blocks of FITS rows (big-endian record bytes) to PostgreSQL COPY bytes.

A FITS binary table row and a PostgreSQL binary COPY tuple are both sequences of
big-endian values; binary COPY only adds a 4-byte length word before each field.
Encoding is therefore a byte re-layout done column-block by column-block with numpy
slices, never a loop over rows.  Text COPY is built the same way from fixed-width
character slots (decimal integers, C99 hexadecimal floats) and a keep mask that
drops unused slot bytes in one compaction at the end.

This module imports neither psycopg2 nor fitsio; it sees only numpy arrays.

NULL policy (both formats):
- float NaN (scalars and array elements) -> NULL; +/-Infinity and -0.0 kept;
- integer columns with TNULL: the raw stored value equal to TNULL -> NULL;
- logical columns: the FITS null byte (0x00) -> NULL;
- strings: cut at the first NUL, trailing spaces removed, leading spaces kept;
  never NULL (an empty string stays an empty string);
- variable-length arrays: the row's elements, an empty one is '{}'; bits have no NULL.

The encoder lives in stage modules with imports pointing one way: fields.py (types, Field,
layout, raw values, copy order) <- binary.py, textnum.py <- textfield.py <- textenc.py; this
module is their one entry (encode_block) and re-exports the names callers use.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .binary import BINARY_HEADER, BINARY_TRAILER, encode_binary
from .fields import (OID, PG_TYPES, Codec, EncodeError, Field, PgType, copy_order, fixed_text_width, hpx_values,
                     is_plain, row_numbers, vla_counts)
from .textenc import encode_text as _columnar_text
from .textfield import encode_text_fieldwise

__all__ = ["BINARY_HEADER", "BINARY_TRAILER", "OID", "PG_TYPES", "Codec", "EncodeError", "Field", "PgType",
           "copy_order", "encode_binary", "encode_block", "encode_text", "encode_text_fieldwise",
           "fixed_text_width", "hpx_values", "is_plain", "row_numbers", "vla_counts"]


def encode_text(rows: np.ndarray, fields: Sequence[Field], first_row: int = 0) -> bytes:
    """Encode a block of FITS rows as text COPY lines (tab-separated, ``\\N`` for NULL), the
    columns in copy_order(fields) (textenc.py).
    """
    return _columnar_text(rows, fields, first_row)


def encode_block(rows: np.ndarray, fields: Sequence[Field], fmt: str, first_row: int = 0) -> bytes:
    """Encode a block in ``fmt`` ('binary' or 'text'); see encode_binary / encode_text."""
    if fmt == "binary":
        return encode_binary(rows, fields, first_row)
    if fmt == "text":
        return encode_text(rows, fields, first_row)
    raise ValueError(f"unknown COPY format {fmt!r}: expected 'binary' or 'text'")
