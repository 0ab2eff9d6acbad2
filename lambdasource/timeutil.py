"""Event time, durations and the engine's single time representation.

Invariant: inside the engine every time is an ``int`` (or int64 array) of **microseconds since the
Unix epoch, UTC**. Time columns are normalised once, at the source edge, to
``pa.timestamp("us", tz="UTC")``; accepted inputs are Arrow timestamps of any unit, with or without a
time zone (naive means UTC), and int64 epoch milliseconds. Text times (:func:`parse_iso_times`) are
ISO-8601 / RFC 3339: any number of fractional digits (beyond 6 floored to the µs), date-only
(midnight UTC), ``T``/``Z`` in either case, naive = UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ConfigError, SchemaError

US = 1
MS = 1_000
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

TIME_TYPE = pa.timestamp("us", tz="UTC")

_UNITS = {
    "us": US,
    "µs": US,
    "ms": MS,
    "s": SECOND,
    "sec": SECOND,
    "m": MINUTE,
    "min": MINUTE,
    "h": HOUR,
    "d": DAY,
    "w": 7 * DAY,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zµ]+)\s*$")

Duration = timedelta | str | int
"""A duration: ``timedelta``, a string like ``"30d"``, ``"5m"``, ``"90s"``, ``"200ms"``, or int µs."""


def parse_duration(value: Duration, *, name: str = "duration") -> int:
    """Return ``value`` as whole microseconds (``>= 0``); raise ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, timedelta):
        micros = value // timedelta(microseconds=1)
    elif isinstance(value, int):
        micros = value
    elif isinstance(value, str):
        match = _DURATION.match(value.lower())
        if not match or match.group(2) not in _UNITS:
            raise ConfigError(
                f"{name}: cannot parse duration {value!r} (use e.g. '30d', '5m', '90s', '200ms')"
            )
        micros = round(float(match.group(1)) * _UNITS[match.group(2)])
    else:
        raise ConfigError(f"{name}: expected a timedelta or a string like '5m', got {value!r}")
    if micros < 0:
        raise ConfigError(f"{name}: duration must not be negative, got {value!r}")
    return int(micros)


def format_duration(micros: int) -> str:
    """Render µs as the largest exact unit: ``format_duration(300_000_000) == '5m'``."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", SECOND), ("ms", MS)):
        if micros and micros % size == 0:
            return f"{micros // size}{unit}"
    return f"{micros}us"


def format_span(micros: int) -> str:
    """Render µs approximately, for humans: ``'29.9d'``, ``'1.5h'``, ``'42s'``, ``'0'``."""
    if micros == 0:
        return "0"
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", SECOND), ("ms", MS)):
        if micros >= size:
            value = micros / size
            return f"{sign}{value:.1f}{unit}" if value < 10 else f"{sign}{value:.0f}{unit}"
    return f"{sign}{micros}us"


def to_micros(value: datetime | int | str) -> int:
    """A point in time as µs since the epoch; naive datetimes and ISO strings without offset are UTC."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(f"cannot parse time {value!r} (use ISO-8601)") from exc
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        return delta // timedelta(microseconds=1)
    raise ConfigError(f"expected a datetime, got {value!r}")


def from_micros(micros: int) -> datetime:
    """µs since the epoch as an aware UTC datetime."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def format_time(micros: int | None) -> str:
    """Human-readable UTC time for messages and progress lines (``None`` → ``'-'``)."""
    if micros is None:
        return "-"
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_ISO_ZONE = r"(?:Z|[+-]\d\d(?::?\d\d)?)$"
_ISO_DATE_ONLY = r"^(\d{4}-\d\d-\d\d)$"
_ISO_BEYOND_MICROS = r"(:\d\d\.\d{6})\d+"
_MAX_MICROS = float(2**63)


def parse_iso_times(strings: pa.Array) -> pa.Array:
    """ISO-8601 strings → ``timestamp[us, UTC]``; raise ``pa.ArrowInvalid`` if any is not one.

    Accepted beyond Arrow's own parser: more than 6 fractional digits (Java ``Instant``, Go
    ``RFC3339Nano``) — truncated to the µs, which floors the instant, also before 1970; a date
    alone (midnight UTC); lowercase ``t``/``z``; no offset (UTC). Element-wise: the result for one
    string does not depend on the others (a failure names the first bad string)."""
    try:
        return strings.cast(TIME_TYPE)  # every string has a zone and ≤ 6 digits (the common case)
    except pa.ArrowInvalid:
        pass
    text = pc.utf8_upper(strings)
    text = pc.replace_substring_regex(text, _ISO_DATE_ONLY, r"\1T00:00:00")
    text = pc.replace_substring_regex(text, _ISO_BEYOND_MICROS, r"\1")
    zoned = pc.match_substring_regex(text, _ISO_ZONE)
    text = pc.if_else(zoned, text, pc.binary_join_element_wise(text, "Z", ""))
    return text.cast(TIME_TYPE)


def float_ms_to_micros(ms: pa.Array) -> pa.Array:
    """Float epoch milliseconds → ``timestamp[us, UTC]``, rounded to the nearest µs; raise
    ``pa.ArrowInvalid`` naming the first value that is NaN, infinite or beyond the µs range."""
    valid = np.asarray(ms.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(ms.to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        micros = np.rint(np.where(valid, values, 0.0) * MS)
        fits = np.isfinite(micros) & (np.abs(micros) < _MAX_MICROS)
    if not fits.all():
        first = float(values[np.flatnonzero(~fits)[0]])
        raise pa.ArrowInvalid(f"epoch milliseconds {first!r} is not a time in range")
    return pa.array(micros.astype(np.int64), mask=~valid).cast(TIME_TYPE)


def check_time_type(dtype: pa.DataType, *, column: str, where: str) -> None:
    """Raise SchemaError unless ``dtype`` is an accepted event-time type."""
    if pa.types.is_timestamp(dtype) or pa.types.is_int64(dtype):
        return
    raise SchemaError(
        f"{where}: time column {column!r} has type {dtype}; expected a timestamp "
        "(any unit, naive = UTC) or int64 epoch milliseconds"
    )


def normalize_time_array(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Convert an accepted time column to ``timestamp[us, UTC]`` (int64 epoch ms are milliseconds)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    dtype = arr.type
    if dtype == TIME_TYPE:
        return arr
    if pa.types.is_int64(dtype):
        micros = pc.multiply_checked(arr, pa.scalar(MS, pa.int64()))
        return micros.cast(TIME_TYPE)
    if pa.types.is_timestamp(dtype):
        as_int = arr.cast(pa.timestamp(dtype.unit)).cast(pa.int64())
        if dtype.unit == "ns":  # floor division keeps times before the epoch exact
            ns = as_int.to_numpy(zero_copy_only=False)
            mask = np.asarray(arr.is_null()) if arr.null_count else None
            ns = np.where(mask, 0, ns) if mask is not None else ns
            return pa.array(np.floor_divide(ns.astype(np.int64), 1000), mask=mask).cast(TIME_TYPE)
        factor = {"s": SECOND, "ms": MS, "us": 1}[dtype.unit]
        if factor != 1:
            as_int = pc.multiply_checked(as_int, pa.scalar(factor, pa.int64()))
        return as_int.cast(TIME_TYPE)
    raise SchemaError(f"time column has type {dtype}; expected a timestamp or int64 epoch ms")


def micros_array(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``timestamp[us]`` column (no nulls) as an int64 numpy view."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return np.asarray(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
