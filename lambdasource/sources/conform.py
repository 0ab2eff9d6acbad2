"""Conforming the lambda source's batches to its one schema (the lake's), value by value.

A value converts only when nothing of its meaning is lost (DESIGN §3 "safe casts"):

- numbers, decimals and booleans: Arrow's safe cast (out of range and truncated fractions
  raise), then the value must come back from a cast to its own type — so ``0.125`` does not
  become the decimal ``0.12`` and ``2`` does not become ``true``; a float narrowed to a smaller
  float keeps its rounding but must stay finite (``1e39`` is no float32);
- timestamps: ISO-8601 strings as the stream decoder reads them
  (:func:`~lambdasource.timeutil.parse_iso_times`), int64 epoch milliseconds into the time type,
  other timestamps by unit (a cast that would drop precision raises);
- everything else: Arrow's safe cast.

:func:`cast_failures` names the rows whose values do not convert (the lambda source dead-letters
them with their position); :func:`conform` casts what is left and raises :class:`SchemaError`
for types that have no conversion at all (a configuration error, not a bad record).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pt

from ..errors import SchemaError
from ..timeutil import TIME_TYPE, normalize_time_array, parse_iso_times


def _numeric(dtype: pa.DataType) -> bool:
    return (
        pt.is_integer(dtype)
        or pt.is_floating(dtype)
        or pt.is_decimal(dtype)
        or pt.is_boolean(dtype)
    )


def _check_lossless(source: pa.Array, out: pa.Array) -> None:
    """Raise ``pa.ArrowInvalid`` naming the first value ``out`` does not hold exactly."""
    if not (_numeric(source.type) and _numeric(out.type)):
        return
    if pt.is_floating(source.type) and pt.is_floating(out.type):
        changed = pc.and_(pc.is_finite(source), pc.invert(pc.is_finite(out)))
    else:
        changed = pc.not_equal(out.cast(source.type, safe=False), source)
    changed = pc.fill_null(changed, False)
    if pc.any(changed).as_py():
        first = pc.index(changed, True).as_py()
        raise pa.ArrowInvalid(
            f"{source[first].as_py()!r} would become {out[first].as_py()!r} as {out.type}"
        )


def cast_exact(column: pa.Array | pa.ChunkedArray, dtype: pa.DataType) -> pa.Array:
    """``column`` as ``dtype`` (see the module rules); ``pa.ArrowInvalid`` when a value does not
    convert exactly, ``pa.ArrowNotImplementedError`` when the types have no conversion. Element-wise: whether a value converts never depends on the others."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type == dtype:
        return column
    if pt.is_timestamp(dtype):
        if pt.is_string(column.type) or pt.is_large_string(column.type):
            times = parse_iso_times(column.cast(pa.string()))
        elif pt.is_int64(column.type) or pt.is_timestamp(column.type):
            times = normalize_time_array(column)  # epoch ms, or a timestamp of any unit
        else:
            raise pa.ArrowNotImplementedError(f"no conversion from {column.type} to {dtype}")
        return times if dtype == TIME_TYPE else times.cast(dtype)  # safe: no silent truncation
    out = column.cast(dtype)
    _check_lossless(column, out)
    return out


def conform(batch: pa.RecordBatch, schema: pa.Schema, where: str) -> pa.RecordBatch:
    """``batch`` with exactly ``schema``'s columns: missing → null, others :func:`cast_exact`."""
    arrays = []
    for field in schema:
        if field.name not in batch.schema.names:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(field.name)
        try:
            arrays.append(cast_exact(column, field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"{where}: column {field.name!r} of type {column.type} cannot be cast to the "
                f"lake's {field.type}: {exc}"
            ) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _failing_rows(column: pa.Array, dtype: pa.DataType, start: int = 0) -> list[tuple[int, str]]:
    """(row, message) of each value of ``column`` that does not convert to ``dtype``; the
    conversion is element-wise, so halves are tried (a few casts per bad value, not one per
    row)."""
    try:
        cast_exact(column, dtype)
        return []
    except pa.ArrowInvalid as exc:
        if len(column) == 1:
            return [(start, str(exc))]
    half = len(column) // 2
    return _failing_rows(column.slice(0, half), dtype, start) + _failing_rows(
        column.slice(half), dtype, start + half
    )


def cast_failures(batch: pa.RecordBatch, schema: pa.Schema) -> list[tuple[int, str]]:
    """(row, reason) of every row of ``batch`` with a value :func:`conform` cannot convert to
    ``schema`` (a string that is no number or time, an overflow, precision a cast would lose);
    the reason names the column, the value and the target type. Types with no conversion at all
    are left to :func:`conform`'s :class:`SchemaError`."""
    bad: dict[int, str] = {}
    for field in schema:
        if field.name not in batch.schema.names:
            continue
        column = batch.column(field.name)
        if column.type == field.type:
            continue
        try:
            cast_exact(column, field.type)
            continue
        except pa.ArrowInvalid:
            pass
        except pa.ArrowNotImplementedError:
            continue
        for row, message in _failing_rows(column, field.type):
            bad.setdefault(
                row,
                f"column {field.name!r}: cannot cast {column[row].as_py()!r} ({column.type}) to "
                f"the lake's {field.type}: {message}",
            )
    return sorted(bad.items())
