"""Decoding many Kafka messages at once into one Arrow batch of a declared schema.

``decode_records`` is the one decoding path of the stream reader and the ``lake`` archiver.
JSON needs one ``orjson.loads`` per message (unavoidable); everything after that is columnar:
one ``RecordBatch.from_pylist`` builds all columns in C++ (time fields read as all-string or
all-int), and time fields are converted as whole arrays (epoch-millisecond ints and ISO-8601
strings, naive = UTC). A per-message slow path runs only when a batch holds a malformed message
or mixed time encodings, to name exactly which ones; both paths give the same rows (the unit
tests compare them with a per-message reference). Measured alternative: Arrow's C++ JSON reader
over the newline-joined messages was no faster single-threaded and is stricter/looser in corner
cases (NaN, duplicate keys), so it is not used.

Invariants: every input index appears exactly once, either as a row of ``batch`` (in input order)
or in ``errors``; nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ConfigError, SchemaError
from ...timeutil import MS, TIME_TYPE

RECORD_TIMESTAMP = "timestamp"
"""Column holding the Kafka record timestamp when ``time_column is None``."""

RAW_SCHEMA = pa.schema([pa.field("value", pa.binary())])
"""Schema of ``format="raw"`` (plus ``timestamp`` when ``time_column is None``)."""

Decoder = Callable[[list[bytes | None]], pa.RecordBatch]
"""A user decoder: the raw values of one fetch → a RecordBatch with one row per value."""

_ZONE = r"(?:[zZ]|[+-]\d\d(?::?\d\d)?)$"


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


def _parse_strings(strings: pa.Array) -> pa.Array:
    """ISO-8601 strings → timestamp[us, UTC]; strings without a zone are UTC."""
    try:
        return strings.cast(TIME_TYPE)  # every string has a zone (the common case)
    except pa.ArrowInvalid:
        pass
    zoned = pc.match_substring_regex(strings, _ZONE)
    fixed = pc.if_else(zoned, strings, pc.binary_join_element_wise(strings, "Z", ""))
    return fixed.cast(TIME_TYPE)


def _convert_time_values(raw: list[Any]) -> tuple[pa.Array, dict[int, str]]:
    """Time values (epoch-ms ints, ISO strings, None) → (µs timestamps, {position: reason})."""
    try:
        arr = pa.array(raw)
        if pa.types.is_null(arr.type):
            return pa.nulls(len(raw), TIME_TYPE), {}
        if pa.types.is_integer(arr.type):
            return pc.multiply_checked(arr.cast(pa.int64()), MS).cast(TIME_TYPE), {}
        if pa.types.is_string(arr.type):
            return _parse_strings(arr), {}
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    # slow path: mixed or bad values; find each bad one
    bad: dict[int, str] = {}
    micros = np.zeros(len(raw), dtype=np.int64)
    valid = np.zeros(len(raw), dtype=bool)
    for i, value in enumerate(raw):
        if value is None:
            continue
        try:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TypeError(f"expected ISO-8601 string or epoch ms, got {value!r}")
            if isinstance(value, int):
                micros[i] = pc.multiply_checked(pa.scalar(value, pa.int64()), MS).as_py()
            else:
                micros[i] = _parse_strings(pa.array([value])).cast(pa.int64())[0].as_py()
            valid[i] = True
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            bad[i] = f"unparseable time {value!r} (expected ISO-8601 or epoch milliseconds)"
    return pa.array(micros, mask=~valid).cast(TIME_TYPE), bad


def _plain_columns(
    objs: list[dict[str, Any]], schema: pa.Schema
) -> tuple[pa.RecordBatch, set[int]]:
    """Non-time columns via ``from_pylist``; on a type error, find the offending objects."""
    try:
        return pa.RecordBatch.from_pylist(objs, schema=schema), set()
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    bad: set[int] = set()
    for i, obj in enumerate(objs):
        try:
            pa.RecordBatch.from_pylist([obj], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            bad.add(i)
    good = [o for i, o in enumerate(objs) if i not in bad]
    return pa.RecordBatch.from_pylist(good, schema=schema), bad


def _type_error(obj: dict[str, Any], schema: pa.Schema) -> str:
    for f in schema:
        try:
            pa.array([obj.get(f.name)], f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            return f"column {f.name!r}: cannot convert {obj.get(f.name)!r} to {f.type}: {exc}"
    return "type mismatch"


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError)


def _columns_fast(
    objs: list[dict[str, Any]], plain: pa.Schema, time_fields: list[pa.Field]
) -> dict[str, pa.Array] | None:
    """All columns with one ``from_pylist`` (time fields read as all-string or all-int);
    None when any value does not fit, so the caller takes the per-message path."""
    kinds = [pa.string(), pa.int64()] if time_fields else [pa.null()]
    for kind in kinds:
        fields = [pa.field(f.name, kind) for f in time_fields] + list(plain)
        try:
            batch = pa.RecordBatch.from_pylist(objs, schema=pa.schema(fields))
            columns: dict[str, pa.Array] = {}
            for f in time_fields:
                col = batch.column(f.name)
                columns[f.name] = (
                    _parse_strings(col)
                    if kind == pa.string()
                    else pc.multiply_checked(col, MS).cast(TIME_TYPE)
                )
        except _ARROW_ERRORS:
            continue
        for f in plain:
            columns[f.name] = batch.column(f.name)
        return columns
    return None


def _decode_json(
    values: Sequence[bytes | None], schema: pa.Schema, time_column: str | None
) -> tuple[dict[str, pa.Array], np.ndarray, list[tuple[int, str]]]:
    time_fields = [f for f in schema if _is_time_field(f, time_column)]
    plain = pa.schema([f for f in schema if not _is_time_field(f, time_column)])
    loads = orjson.loads
    try:  # fast path: every message a well-formed object of the right types
        parsed = list(map(loads, values))  # type: ignore[arg-type]
        if all(type(o) is dict for o in parsed):
            fast = _columns_fast(parsed, plain, time_fields)
            if fast is not None:
                return fast, np.arange(len(parsed), dtype=np.int64), []
    except (orjson.JSONDecodeError, TypeError):
        pass
    objs: list[dict[str, Any]] = []
    index: list[int] = []
    errors: list[tuple[int, str]] = []
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
    bad: dict[int, str] = {}
    columns: dict[str, pa.Array] = {}
    for f in time_fields:
        name = f.name
        arr, bad_times = _convert_time_values([o.get(name) for o in objs])
        for pos, reason in bad_times.items():
            bad.setdefault(pos, f"column {name!r}: {reason}")
        columns[name] = arr
    batch, bad_plain = _plain_columns(objs, plain)
    for pos in bad_plain:
        bad.setdefault(pos, _type_error(objs[pos], plain))
    keep = np.ones(len(objs), dtype=bool)
    if bad:
        keep[list(bad)] = False
        errors.extend((index[pos], reason) for pos, reason in bad.items())
        errors.sort()
        mask = pa.array(keep)
        columns = {k: v.filter(mask) for k, v in columns.items()}
        if bad_plain:  # ``batch`` already lacks the rows bad in plain columns
            keep_plain = np.array([i not in bad_plain for i in range(len(objs))], dtype=bool)
            batch = batch.filter(pa.array(keep[keep_plain]))
        else:
            batch = batch.filter(mask)
    for f in plain:
        columns[f.name] = batch.column(f.name)
    rows = np.asarray(index, dtype=np.int64)[keep]
    return columns, rows, errors


def decode_records(
    values: Sequence[bytes | None],
    schema: pa.Schema | None,
    *,
    format: str | Decoder = "json",
    time_column: str | None,
    timestamps_ms: Sequence[int] | np.ndarray,
) -> Decoded:
    """Decode ``values`` (one fetch of one partition, in offset order) into one RecordBatch.

    - ``format="json"``: one JSON object per message; fields of ``schema`` are read by name
      (missing → null, unknown → ignored). The time column and every timestamp-typed field accept
      ISO-8601 strings (naive = UTC) or epoch-millisecond ints and become ``timestamp[us, UTC]``.
    - ``format="raw"``: a ``value: binary`` column.
    - a callable: ``format(values) -> RecordBatch`` with one row per value; if it raises, every
      message of the call is an error (the reason names the exception).
    - ``time_column is None``: the Kafka record timestamp (``timestamps_ms``) is appended as a
      ``timestamp`` column (``timestamp[us, UTC]``).

    Malformed messages (null value for JSON, invalid JSON, not an object, a value that does not
    fit its column, an unparseable time) are returned in ``errors`` as (index into ``values``,
    reason); the batch holds the others, in input order, with schema :func:`output_schema`.
    """
    target = output_schema(schema, format=format, time_column=time_column)
    n = len(values)
    errors: list[tuple[int, str]] = []
    if format == "json":
        assert schema is not None
        columns, rows, errors = _decode_json(values, schema, time_column)
    elif format == "raw":
        rows = np.arange(n, dtype=np.int64)
        columns = {"value": pa.array(list(values), pa.binary())}
    elif callable(format):
        try:
            user = format(list(values))
            if not isinstance(user, pa.RecordBatch) or user.num_rows != n:
                raise TypeError(
                    f"decoder must return a RecordBatch with {n} rows, got {type(user).__name__}"
                    + (f" with {user.num_rows} rows" if isinstance(user, pa.RecordBatch) else "")
                )
        except Exception as exc:
            reason = f"decoder failed: {exc!r}"
            empty = target.empty_table().to_batches() if target is not None else []
            batch = empty[0] if empty else pa.RecordBatch.from_pylist([], schema=target)
            return Decoded(batch, [(i, reason) for i in range(n)], np.zeros(0, dtype=np.int64))
        rows = np.arange(n, dtype=np.int64)
        columns = {}
        for f in user.schema:
            col = user.column(f.name)
            if _is_time_field(f, time_column) and col.type != TIME_TYPE:
                from ...timeutil import normalize_time_array

                col = normalize_time_array(col)
            columns[f.name] = col
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
    return Decoded(batch, errors, None if len(rows) == n else rows)
