"""The fast path of :func:`~lambdasource.sources.kafka.decode.decode_records`: a whole fetch of JSON
messages through Arrow's C++ JSON reader in one call, or ``None`` to take the exact path.

Contract: when :func:`read_json_fetch` returns columns, they are exactly what the per-message exact
path (``orjson.loads`` per message, then exact conversions) produces for every message of the
fetch, with no message in error; in every other case it returns ``None`` and the caller decodes
the fetch the exact way. A fetch's outcome therefore never depends on which path ran.

The reader is asked only what it answers exactly like the exact path, and each divergence of
Arrow's parser (RapidJSON) from orjson found by probing is excluded before or after the read:

- message framing: every message must start with ``{`` and end with ``}`` and the read must give
  one row per message (a second value in a message adds a row; a value cannot continue into the
  next message, which starts with ``{`` where only ``,``/``}`` may follow);
- ``NaN``/``Infinity`` literals, numbers overflowing a double, deep nesting, duplicate keys and
  unknown fields: the read refuses unknown fields (``unexpected_field_behavior="error"``), so every
  value sits in a flat schema column whose conversion rejects them, and float columns are checked
  after the read (finite, below 2**53 — beyond it a JSON integer is exact for orjson and rounded
  by Arrow —, and no ``-0.0``, which Arrow reads from the integer ``-0``);
- invalid UTF-8 (Arrow does not validate it): the fetch must be ASCII or decode as UTF-8;
- a top-level ``null`` as the very first value crashes the reader: the first byte is ``{``;
- time fields are read as text (ISO-8601) or int64 (epoch ms), whichever the first message has,
  and converted by the exact path's own functions; float epoch ms and mixed kinds take the exact
  path.

Only schemas of flat types (bool, integers, float64, strings, plus time fields) are eligible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ...timeutil import MS, TIME_TYPE, parse_iso_times

_OPEN, _CLOSE = ord("{"), ord("}")
_EXACT_FLOAT_LIMIT = float(2**53)  # a JSON integer at or beyond it may not be a double exactly
_READ_FAILED = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError)


def _flat(dtype: pa.DataType) -> bool:
    types = pa.types
    return (
        types.is_boolean(dtype)
        or types.is_integer(dtype)
        or dtype == pa.float64()
        or types.is_string(dtype)
        or types.is_large_string(dtype)
    )


def eligible(schema: pa.Schema, time_fields: frozenset[str]) -> bool:
    """Whether the fast path can read ``schema`` (time fields of any declared type)."""
    return all(f.name in time_fields or _flat(f.type) for f in schema)


def _framed(joined: bytes, values: Sequence[bytes]) -> bool:
    """Every message starts with ``{`` and ends with ``}`` (``joined`` = ``b"\\n".join(values)``)."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    if lengths.min() < 2:
        return False
    ends = np.cumsum(lengths + 1) - 1  # index of the separator after each message
    starts = ends - lengths
    buf = np.frombuffer(joined, dtype=np.uint8)
    return bool((buf[starts] == _OPEN).all() and (buf[ends - 1] == _CLOSE).all())


def _utf8(joined: bytes) -> bool:
    if joined.isascii():
        return True
    try:
        joined.decode("utf-8")  # strict: no surrogates, no overlongs, like orjson
    except UnicodeDecodeError:
        return False
    return True


def _float_exact(arr: pa.Array) -> bool:
    """No value Arrow may have read differently from orjson + pyarrow: non-finite, ≥ 2**53 in
    magnitude, or a negative zero."""
    if arr.null_count == len(arr):
        return True
    values = np.asarray(arr.fill_null(1.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    if not (np.abs(values) < _EXACT_FLOAT_LIMIT).all():  # NaN compares false: refused too
        return False
    return not bool((np.signbit(values) & (values == 0.0)).any())


class JsonFetchRead:
    """One fetch's fast read in three steps: :func:`prepare_json_fetch` (which fetches may take
    it, on the caller's thread), :meth:`read` (the checks before the read, the join and Arrow's
    reader: the GIL is released while the join copies and while Arrow parses, so it may run on
    another thread; it touches nothing but this object) and :meth:`columns` (the checks and
    conversions after it, on the caller's thread)."""

    def __init__(
        self, values: Sequence[bytes | None], schema: pa.Schema, time_fields: frozenset[str]
    ) -> None:
        self._values = values
        self._schema = schema
        self._time_fields = time_fields
        self._table: pa.Table | None = None

    def read(self) -> None:
        """Check the fetch's framing and encoding, then run Arrow's JSON reader over it (any
        check or the read failing leaves no table)."""
        try:  # the copy runs without the GIL (CPython, over 1 MiB)
            joined = b"\n".join(self._values)  # type: ignore[arg-type]
        except TypeError:  # a null value (a tombstone)
            return
        values: Sequence[bytes] = self._values  # type: ignore[assignment]  # none is null
        if not (_utf8(joined) and _framed(joined, values)):
            return
        try:
            first = orjson.loads(values[0])
        except orjson.JSONDecodeError:
            return
        if type(first) is not dict:
            return
        read_fields = []
        for f in self._schema:
            if f.name in self._time_fields:
                kind = pa.int64() if type(first.get(f.name)) is int else pa.string()
                read_fields.append(pa.field(f.name, kind))
            else:
                read_fields.append(pa.field(f.name, f.type))
        try:
            self._table = pj.read_json(
                pa.BufferReader(joined),
                read_options=pj.ReadOptions(use_threads=False, block_size=len(joined) + 1),
                parse_options=pj.ParseOptions(
                    explicit_schema=pa.schema(read_fields), unexpected_field_behavior="error"
                ),
            )
        except _READ_FAILED:
            self._table = None

    def columns(self) -> dict[str, pa.Array] | None:
        """The fetch's columns (time fields as ``timestamp[us, UTC]``) when every message read
        exactly; ``None`` otherwise (also when :meth:`read` did not run)."""
        table = self._table
        if table is None or table.num_rows != len(self._values):
            return None
        columns: dict[str, pa.Array] = {}
        for f in self._schema:
            column = table.column(f.name)
            arr: Any = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            try:
                if f.name in self._time_fields:
                    if pa.types.is_int64(arr.type):
                        arr = pc.multiply_checked(arr, MS).cast(TIME_TYPE)
                    else:
                        arr = parse_iso_times(arr)
                elif arr.type == pa.float64() and not _float_exact(arr):
                    return None
            except _READ_FAILED:
                return None
            columns[f.name] = arr
        return columns


def prepare_json_fetch(
    values: Sequence[bytes | None], schema: pa.Schema, time_fields: frozenset[str]
) -> JsonFetchRead | None:
    """The fast read of ``values`` (not yet read) when the schema is one it takes; ``None``:
    decode the exact way."""
    if not values or not eligible(schema, time_fields):
        return None
    return JsonFetchRead(values, schema, time_fields)


def read_json_fetch(
    values: Sequence[bytes | None], schema: pa.Schema, time_fields: frozenset[str]
) -> dict[str, pa.Array] | None:
    """The fetch's columns (time fields as ``timestamp[us, UTC]``) when every message reads fast
    and exactly; ``None`` otherwise (then decode the exact way). All three steps at once."""
    fetch = prepare_json_fetch(values, schema, time_fields)
    if fetch is None:
        return None
    fetch.read()
    return fetch.columns()
