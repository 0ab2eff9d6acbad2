"""Decoding many Kafka messages at once into one Arrow batch of a declared schema.

``decode_records`` is the one decoding path of the stream reader and the ``lake`` archiver
(:class:`FetchDecode` is the same in steps, for a caller that runs the read on another thread).
JSON takes the fast path first (:mod:`.decode_fast`): the whole fetch through Arrow's C++ JSON
reader in one call, used only when every message reads exactly as below (flat schemas, framing,
UTF-8, float and time checks), else ``None``. The exact path: one ``orjson.loads`` per message,
then per schema field one Python list of the messages' values and one ``pa.array`` call (what
``RecordBatch.from_pylist`` does internally); time fields are converted as whole arrays (ISO-8601
strings, epoch-millisecond ints or floats). A column that fails as a whole is converted again per
value to name exactly which messages are bad.

Invariants: every input index appears exactly once, either as a row of ``batch`` (in input order)
or in ``errors``; nothing is dropped silently. One decision per message: whether a message is a
row or an error, its values and its reason depend on that message alone (and on ``now_us`` for
``max_ahead``), never on the other messages of the fetch — decoding a list equals decoding any
split of it. Only exact conversions pass: Arrow's own conversion truncates ``3.7`` into an integer
column, so integer columns accept an integral float (``3.0`` → 3) and nothing else that changes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import repeat
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ConfigError, SchemaError
from ...timeutil import (
    MS,
    TIME_TYPE,
    float_ms_to_micros,
    format_duration,
    format_span,
    format_time,
    normalize_time_array,
    parse_iso_times,
)
from .decode_fast import JsonFetchRead, prepare_json_fetch

RECORD_TIMESTAMP = "timestamp"
"""Column holding the Kafka record timestamp when ``time_column is None``."""

RAW_SCHEMA = pa.schema([pa.field("value", pa.binary())])
"""Schema of ``format="raw"`` (plus ``timestamp`` when ``time_column is None``)."""

Decoder = Callable[[list[bytes | None]], pa.RecordBatch]
"""A user decoder: the raw values of one fetch → a RecordBatch with one row per value."""


@dataclass(frozen=True)
class Decoded:
    """Result of :func:`decode_records`: the good rows and, per bad message, (index, reason)."""

    batch: pa.RecordBatch
    errors: list[tuple[int, str]] = field(default_factory=list)
    indices: np.ndarray | None = None  # input index of each row of ``batch`` (None: all, in order)

    def row_indices(self, n_values: int) -> np.ndarray:
        """Input index of each row of ``batch``."""
        if self.indices is not None:
            return self.indices
        return np.arange(n_values, dtype=np.int64)


def _is_time_field(f: pa.Field, time_column: str | None) -> bool:
    return f.name == time_column or pa.types.is_timestamp(f.type)


def output_schema(
    schema: pa.Schema | None, *, format: str | Decoder = "json", time_column: str | None
) -> pa.Schema | None:
    """The schema of decoded batches: time fields become ``timestamp[us, UTC]``; when
    ``time_column is None`` a ``timestamp`` column (the record timestamp) is appended.
    ``None`` when a callable decoder's schema is unknown."""
    if format == "raw":
        base: pa.Schema | None = RAW_SCHEMA
    elif callable(format):
        base = schema
    elif format == "json":
        if schema is None:
            raise ConfigError("KafkaStream(format='json') needs schema= (a pyarrow Schema)")
        base = schema
    else:
        raise ConfigError(
            f"KafkaStream: format must be 'json', 'raw' or a callable, got {format!r}"
        )
    if base is None:
        return None
    fields = [
        pa.field(f.name, TIME_TYPE, f.nullable) if _is_time_field(f, time_column) else f
        for f in base
    ]
    if time_column is None:
        if RECORD_TIMESTAMP in base.names:
            raise SchemaError(
                f"schema already has a {RECORD_TIMESTAMP!r} column; pass time_column= to use it"
            )
        fields.append(pa.field(RECORD_TIMESTAMP, TIME_TYPE, False))
    elif time_column not in base.names:
        raise SchemaError(f"time column {time_column!r} not in schema columns {base.names}")
    return pa.schema(fields)


def _record_times(timestamps_ms: Sequence[int] | np.ndarray, rows: np.ndarray) -> pa.Array:
    ms = np.asarray(timestamps_ms, dtype=np.int64)[rows]
    return pa.array(ms * MS, pa.int64()).cast(TIME_TYPE)


_CONVERT_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    TypeError,
    ValueError,
    OverflowError,
)


def _times(values: list[Any]) -> pa.Array:
    """Non-null JSON time values of one kind → µs; raise when any is not a time."""
    arr = pa.array(values)  # type inference: str / int64 / double / null, else not a time
    kind = arr.type
    if pa.types.is_string(kind):
        return parse_iso_times(arr)
    if pa.types.is_int64(kind):
        return pc.multiply_checked(arr, MS).cast(TIME_TYPE)
    if pa.types.is_floating(kind):
        if any(type(v) is bool for v in values):  # inference reads true as 1.0 among floats
            raise TypeError("a boolean is not a time")
        return float_ms_to_micros(arr)
    if pa.types.is_null(kind):
        return pa.nulls(len(arr), TIME_TYPE)
    raise TypeError(f"not a time: {kind}")


def _time_column(values: list[Any]) -> tuple[pa.Array, dict[int, str]]:
    """JSON time values (ISO strings, epoch-ms ints or floats, None) → (µs, {position: reason}).

    Each value's outcome depends on that value alone: on a failure the values are converted per
    Python type (one array call each), and per value only within a failing type."""
    try:
        return _times(values), {}
    except _CONVERT_ERRORS:
        pass
    micros = np.zeros(len(values), dtype=np.int64)
    valid = np.zeros(len(values), dtype=bool)
    bad: dict[int, str] = {}
    by_kind: dict[type, list[int]] = {}
    for i, value in enumerate(values):
        if value is not None:
            by_kind.setdefault(type(value), []).append(i)
    for positions in by_kind.values():
        try:
            parts = [(positions, _times([values[i] for i in positions]))]
        except _CONVERT_ERRORS:
            parts = []
            for i in positions:
                try:
                    parts.append(([i], _times([values[i]])))
                except _CONVERT_ERRORS:
                    bad[i] = (
                        f"unparseable time {values[i]!r} (expected ISO-8601 or epoch milliseconds)"
                    )
        for where, arr in parts:
            micros[where] = np.asarray(arr.cast(pa.int64()).to_numpy(zero_copy_only=False))
            valid[where] = True
    return pa.array(micros, mask=~valid).cast(TIME_TYPE), bad


_FLOAT_MAX = {16: 65504.0, 32: 3.4028234663852886e38}  # the largest finite value by width


def _counts(dtype: pa.DataType) -> bool:
    """Types that hold whole numbers (Arrow truncates a float into them)."""
    types = pa.types
    return (
        types.is_integer(dtype)
        or types.is_date(dtype)
        or types.is_time(dtype)
        or types.is_duration(dtype)
    )


def _nested(dtype: pa.DataType) -> bool:
    types = pa.types
    return (
        types.is_struct(dtype)
        or types.is_list(dtype)
        or types.is_large_list(dtype)
        or types.is_fixed_size_list(dtype)
        or types.is_map(dtype)
    )


def _nested_time(value: Any, dtype: pa.TimestampType) -> int:
    """A JSON time inside a nested value (ISO string or epoch ms) as ``dtype``'s integer."""
    if type(value) is str:  # the forms the time column accepts
        micros = parse_iso_times(pa.array([value])).cast(pa.int64())[0].as_py()
    elif type(value) is int:
        micros = value * MS
    elif type(value) is float:
        micros = float_ms_to_micros(pa.array([value])).cast(pa.int64())[0].as_py()
    else:
        raise TypeError(f"{value!r} is not a time (expected ISO-8601 or epoch milliseconds)")
    per_unit = {"s": 1_000_000, "ms": 1000, "us": 1}.get(dtype.unit)
    if per_unit is None:  # ns
        return micros * 1000
    if micros % per_unit:
        raise ValueError(f"{value!r} does not fit {dtype} without losing precision")
    return micros // per_unit


def _exact_value(value: Any, dtype: pa.DataType) -> Any:
    """``value`` as ``dtype`` takes it without change: an integral float becomes an int for an
    integer column (3.0 → 3), a float a Decimal of its shortest repr for a decimal column, a
    time inside a nested value µs-exact (ISO string or epoch ms); recursively into structs,
    lists and maps. ValueError for a float that is not an integer (3.7; 1e300 is one but will
    not fit) or one beyond a narrow float's range (1e39 is no float32)."""
    if value is None:
        return None
    types = pa.types
    if types.is_struct(dtype):
        if type(value) is not dict:
            raise TypeError(f"expected an object for {dtype}, got {type(value).__name__}")
        return {f.name: _exact_value(value.get(f.name), f.type) for f in dtype}
    if types.is_list(dtype) or types.is_large_list(dtype) or types.is_fixed_size_list(dtype):
        if type(value) is not list:
            raise TypeError(f"expected an array for {dtype}, got {type(value).__name__}")
        return [_exact_value(item, dtype.value_type) for item in value]
    if types.is_map(dtype):
        if type(value) is not dict:
            raise TypeError(f"expected an object for {dtype}, got {type(value).__name__}")
        return [
            (_exact_value(k, dtype.key_type), _exact_value(v, dtype.item_type))
            for k, v in value.items()
        ]
    if types.is_timestamp(dtype):
        return _nested_time(value, dtype)
    if type(value) is float:
        if _counts(dtype):
            if not value.is_integer():
                raise ValueError("not an integer")
            return int(value)
        if types.is_decimal(dtype):
            return Decimal(repr(value))
        limit = _FLOAT_MAX.get(dtype.bit_width) if types.is_floating(dtype) else None
        if limit is not None and math.isfinite(value) and abs(value) > limit:
            raise ValueError(f"out of {dtype}'s range")
    return value


def _exact_array(values: list[Any], dtype: pa.DataType) -> pa.Array:
    """``values`` as ``dtype``, or raise when any would change (Arrow truncates floats into
    integer columns: integer columns are inferred, and only all-int input is cast, safely;
    nested values are converted value by value; a narrow float column must not overflow)."""
    if pa.types.is_integer(dtype):
        arr = pa.array(values)
        if not (pa.types.is_int64(arr.type) or pa.types.is_null(arr.type)):
            raise TypeError(f"not all integers: {arr.type}")
        return arr.cast(dtype)  # safe: out of range raises
    if _counts(dtype) and any(type(v) is float for v in values):
        raise TypeError("floats for a column of whole units")  # per value: exact ones pass
    if _nested(dtype):
        return pa.array([_exact_value(v, dtype) for v in values], dtype)
    arr = pa.array(values, dtype)
    if dtype in (pa.float32(), pa.float16()):
        overflow = pc.and_(pc.invert(pc.is_finite(arr)), pc.invert(pc.is_nan(arr)))
        if pc.any(pc.fill_null(overflow, False)).as_py():
            for value in values:  # an input that was itself infinite passes
                _exact_value(value, dtype)
    return arr


def _plain_column(values: list[Any], dtype: pa.DataType) -> tuple[pa.Array, dict[int, str]]:
    """JSON values → ``dtype`` exactly, (array, {position: reason}); bad positions are null."""
    try:
        return _exact_array(values, dtype), {}
    except _CONVERT_ERRORS:
        pass
    fixed: list[Any] = []
    bad: dict[int, str] = {}
    for i, value in enumerate(values):
        try:
            exact = _exact_value(value, dtype)
            pa.array([exact], dtype)
            fixed.append(exact)
        except _CONVERT_ERRORS as exc:
            bad[i] = f"cannot convert {value!r} to {dtype}: {exc}"
            fixed.append(None)
    return pa.array(fixed, dtype), bad


def _time_fields(schema: pa.Schema, time_column: str | None) -> frozenset[str]:
    return frozenset(f.name for f in schema if _is_time_field(f, time_column))


def _decode_json(
    values: Sequence[bytes | None],
    schema: pa.Schema,
    time_column: str | None,
    fast: JsonFetchRead | None,
) -> tuple[dict[str, pa.Array], np.ndarray, list[tuple[int, str]]]:
    """Columns of the good messages, their input indices, and (index, reason) of the others
    (``fast``: the fetch's fast read, already read, or None).

    One decision per message: a message's outcome depends on its own bytes only (never on the
    other messages of the fetch); a bad value's reason names the first bad column in schema
    order."""
    columns_fast = None if fast is None else fast.columns()
    if columns_fast is not None:  # exactly what the code below gives without a bad message
        return columns_fast, np.arange(len(values), dtype=np.int64), []
    loads = orjson.loads
    objs: list[dict[str, Any]] = []
    index: list[int] | None = None
    errors: list[tuple[int, str]] = []
    try:  # every message a JSON object (the common case)
        parsed = list(map(loads, values))  # type: ignore[arg-type]
        if all(type(o) is dict for o in parsed):
            objs = parsed
    except (orjson.JSONDecodeError, TypeError):
        pass
    if len(objs) != len(values):
        objs, index = [], []
        for i, value in enumerate(values):
            if value is None:
                errors.append((i, "null message value (tombstone)"))
                continue
            try:
                obj = loads(value)
            except orjson.JSONDecodeError as exc:
                errors.append((i, f"malformed JSON: {exc}"))
                continue
            if type(obj) is not dict:
                errors.append((i, f"expected a JSON object, got {type(obj).__name__}"))
                continue
            objs.append(obj)
            index.append(i)
    rows = np.arange(len(objs), dtype=np.int64) if index is None else np.asarray(index, np.int64)
    bad: dict[int, str] = {}
    columns: dict[str, pa.Array] = {}
    get = dict.get
    for f in schema:
        name = f.name
        raw = list(map(get, objs, repeat(name)))  # the C loop of [o.get(name) for o in objs]
        if _is_time_field(f, time_column):
            arr, bad_here = _time_column(raw)
        else:
            arr, bad_here = _plain_column(raw, f.type)
        for pos, reason in bad_here.items():
            bad.setdefault(pos, f"column {name!r}: {reason}")
        columns[name] = arr
    if bad:
        keep = np.ones(len(objs), dtype=bool)
        keep[list(bad)] = False
        errors.extend((int(rows[pos]), reason) for pos, reason in bad.items())
        errors.sort()
        mask = pa.array(keep)
        columns = {k: v.filter(mask) for k, v in columns.items()}
        rows = rows[keep]
    return columns, rows, errors


def _ahead_errors(
    times: pa.Array, rows: np.ndarray, name: str, max_ahead: int, now_us: int
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Rows whose time is more than ``max_ahead`` after ``now_us``: (keep mask, errors)."""
    micros = np.asarray(times.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
    ahead = micros > now_us + max_ahead
    if not ahead.any():
        return ~ahead, []
    bound = format_duration(max_ahead)
    errors = [
        (
            int(rows[i]),
            f"event time {format_time(int(micros[i]))} in {name!r} is "
            f"{format_span(int(micros[i]) - now_us)} ahead of the wall clock "
            f"(max_ahead={bound})",
        )
        for i in np.flatnonzero(ahead).tolist()
    ]
    return ~ahead, errors


def _call_decoder(decoder: Decoder, values: list[bytes | None]) -> pa.RecordBatch:
    batch = decoder(values)
    if not isinstance(batch, pa.RecordBatch) or batch.num_rows != len(values):
        raise TypeError(
            f"decoder must return a RecordBatch with {len(values)} rows, got "
            f"{type(batch).__name__}"
            + (f" with {batch.num_rows} rows" if isinstance(batch, pa.RecordBatch) else "")
        )
    return batch


def _user_decoded(
    decoder: Decoder, values: Sequence[bytes | None]
) -> tuple[pa.RecordBatch | None, np.ndarray, list[tuple[int, str]]]:
    """A user decoder over the fetch; when it fails, over each message alone, so one bad message
    is one error and the others pass, whatever the fetch holds: (batch of the good messages or
    None, their indices, (index, reason) of the others)."""
    with contextlib.suppress(Exception):
        return _call_decoder(decoder, list(values)), np.arange(len(values), dtype=np.int64), []
    good: list[pa.RecordBatch] = []
    rows: list[int] = []
    errors: list[tuple[int, str]] = []
    for i, value in enumerate(values):
        try:
            good.append(_call_decoder(decoder, [value]))
            rows.append(i)
        except Exception as exc:
            errors.append((i, f"decoder failed: {exc!r}"))
    if not good:
        return None, np.zeros(0, dtype=np.int64), errors
    try:
        table = pa.concat_tables([pa.Table.from_batches([b]) for b in good])
    except pa.ArrowInvalid as exc:  # the decoder's batches disagree with each other
        raise SchemaError(f"the decoder returned batches of different schemas: {exc}") from exc
    return table.combine_chunks().to_batches()[0], np.asarray(rows, dtype=np.int64), errors


def decode_records(
    values: Sequence[bytes | None],
    schema: pa.Schema | None,
    *,
    format: str | Decoder = "json",
    time_column: str | None,
    timestamps_ms: Sequence[int] | np.ndarray,
    max_ahead: int | None = None,
    now_us: int | None = None,
) -> Decoded:
    """Decode ``values`` (one fetch of one partition, in offset order) into one RecordBatch.

    - ``format="json"``: one JSON object per message; fields of ``schema`` are read by name
      (missing → null, unknown → ignored). Values convert only exactly: an integral float fits an
      integer column (``3.0`` → 3), ``3.7``, out-of-range numbers and ``true`` do not. The time
      column and every timestamp-typed field accept ISO-8601 strings (see
      :func:`~lambdasource.timeutil.parse_iso_times`: naive = UTC, date-only = midnight UTC,
      more than 6 fractional digits floored to the µs, ``t``/``z`` in either case) or epoch
      milliseconds, ints or finite floats (rounded to the µs), and become ``timestamp[us, UTC]``.
    - ``format="raw"``: a ``value: binary`` column.
    - a callable: ``format(values) -> RecordBatch`` with one row per value; if it raises (or
      returns something else), it is called again for each message alone: the messages it
      fails on are errors (the reason names the exception), the others pass.
    - ``time_column is None``: the Kafka record timestamp (``timestamps_ms``) is appended as a
      ``timestamp`` column (``timestamp[us, UTC]``).
    - ``max_ahead`` (µs, None = no bound): a record whose event time (the time column, or the
      record timestamp when ``time_column is None``) is more than ``max_ahead`` after ``now_us``
      (default: the wall clock at the call) is an error — one implausible time would otherwise
      move the watermark so far that every later record is late.

    Malformed messages (null value for JSON, invalid JSON, not an object, a value that does not
    fit its column, an unparseable time, a time too far ahead) are returned in ``errors`` as
    (index into ``values``, reason), sorted by index; the batch holds the others, in input order,
    with schema :func:`output_schema`.
    """
    fetch = FetchDecode(
        values,
        schema,
        format=format,
        time_column=time_column,
        timestamps_ms=timestamps_ms,
        max_ahead=max_ahead,
    )
    fetch.read()
    return fetch.result(now_us)


class FetchDecode:
    """:func:`decode_records` in steps, so that the part that releases the GIL can overlap the
    caller's own work: construction runs the checks before the read (caller's thread);
    :meth:`read` runs Arrow's JSON reader over the fetch (any thread — it touches only this
    object; nothing for other formats or when the fast path declined); :meth:`result` (caller's
    thread) finishes it, taking the exact path when the fast read did not answer. The result is
    the same as :func:`decode_records`' whichever thread ran :meth:`read`, and whether it ran."""

    def __init__(
        self,
        values: Sequence[bytes | None],
        schema: pa.Schema | None,
        *,
        format: str | Decoder = "json",
        time_column: str | None,
        timestamps_ms: Sequence[int] | np.ndarray,
        max_ahead: int | None = None,
    ) -> None:
        self._target = output_schema(schema, format=format, time_column=time_column)
        self._values = values
        self._schema = schema
        self._format = format
        self._time_column = time_column
        self._timestamps_ms = timestamps_ms
        self._max_ahead = max_ahead
        self._fast = (
            prepare_json_fetch(values, schema, _time_fields(schema, time_column))
            if format == "json" and schema is not None
            else None
        )

    @property
    def reads(self) -> bool:
        """Whether :meth:`read` has work (a fast read to run)."""
        return self._fast is not None

    def read(self) -> None:
        """The fast path's read (GIL released while Arrow parses); safe on another thread."""
        if self._fast is not None:
            self._fast.read()

    def result(self, now_us: int | None = None) -> Decoded:
        """The decoded fetch (``now_us``: see :func:`decode_records`)."""
        values, schema, format = self._values, self._schema, self._format
        time_column, timestamps_ms, max_ahead = (
            self._time_column,
            self._timestamps_ms,
            self._max_ahead,
        )
        target = self._target
        n = len(values)
        errors: list[tuple[int, str]] = []
        if format == "json":
            assert schema is not None
            columns, rows, errors = _decode_json(values, schema, time_column, self._fast)
        elif format == "raw":
            rows = np.arange(n, dtype=np.int64)
            columns = {"value": pa.array(list(values), pa.binary())}
        elif callable(format):
            user, rows, errors = _user_decoded(format, values)
            columns = {}
            if user is not None:
                for f in user.schema:
                    col = user.column(f.name)
                    if _is_time_field(f, time_column) and col.type != TIME_TYPE:
                        col = normalize_time_array(col)
                    columns[f.name] = col
            elif target is None:  # nothing decoded and no declared schema: just the time column
                target = pa.schema([pa.field(time_column or RECORD_TIMESTAMP, TIME_TYPE)])
            if target is None:
                fields = [pa.field(k, v.type) for k, v in columns.items()]
                if time_column is None:
                    fields.append(pa.field(RECORD_TIMESTAMP, TIME_TYPE, False))
                target = pa.schema(fields)
        else:  # pragma: no cover - output_schema rejected it
            raise ConfigError(f"unknown format {format!r}")
        assert target is not None
        if time_column is None:
            columns[RECORD_TIMESTAMP] = _record_times(timestamps_ms, rows)
        arrays = []
        for f in target:
            col = columns.get(f.name)
            if col is None:
                col = pa.nulls(len(rows), f.type)
            elif col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaError(
                        f"decoded column {f.name!r} of type {col.type} does not fit {f.type}"
                    ) from exc
            arrays.append(col)
        batch = pa.RecordBatch.from_arrays(arrays, schema=target)
        time_name = time_column or RECORD_TIMESTAMP
        if max_ahead is not None and batch.num_rows and time_name in target.names:
            times = batch.column(time_name)
            if times.type == TIME_TYPE:
                now = int(time.time() * 1e6) if now_us is None else now_us
                keep, ahead = _ahead_errors(times, rows, time_name, max_ahead, now)
                if ahead:
                    batch = batch.filter(pa.array(keep))
                    rows = rows[keep]
                    errors = sorted(errors + ahead)
        return Decoded(batch, errors, None if len(rows) == n else rows)
