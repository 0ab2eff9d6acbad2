"""The small text languages of job files: Arrow type names, schemas and aggregate specs."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pyarrow as pa

from ..errors import ConfigError
from ..windows import aggregates as agg

_AGGREGATE = re.compile(r"^\s*(\w+)\s*\(\s*([\w.\"]*)\s*\)\s*$")
_FUNCTIONS = {
    "count": agg.count,
    "sum": agg.sum,
    "mean": agg.mean,
    "avg": agg.mean,
    "min": agg.min,
    "max": agg.max,
    "first": agg.first,
    "last": agg.last,
    "count_distinct": agg.count_distinct,
}
_TYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "utf8": pa.string(),
    "binary": pa.binary(),
    "date32": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:,\s*(?:tz=)?([\w/+:-]+))?\]$")


def parse_type(text: str) -> pa.DataType:
    """``"int64"``, ``"string"``, ``"timestamp[ms, UTC]"`` … → an Arrow type (ConfigError if unknown)."""
    if not isinstance(text, str):
        raise ConfigError(f"expected a type name such as 'int64', got {text!r}")
    name = text.strip().lower()
    if name in _TYPES:
        return _TYPES[name]
    match = _TIMESTAMP.match(name)
    if match:
        tz = match.group(2)
        return pa.timestamp(match.group(1), tz="UTC" if tz and tz.lower() == "utc" else tz)
    raise ConfigError(
        f"unknown type {text!r} (use e.g. int64, float64, string, timestamp[us, UTC])"
    )


def parse_schema(spec: str | Mapping[str, str]) -> pa.Schema:
    """``"a:int64,b:string"`` or ``{"a": "int64"}`` → ``pa.Schema`` (order kept)."""
    if isinstance(spec, str):
        pairs: list[tuple[str, str]] = []
        for part in re.split(r",(?![^\[]*\])", spec):
            if not part.strip():
                continue
            name, sep, dtype = part.partition(":")
            if not sep or not name.strip():
                raise ConfigError(f"schema: expected 'column:type', got {part.strip()!r}")
            pairs.append((name.strip(), dtype))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        raise ConfigError(f"schema: expected 'column:type,…' or a table, got {spec!r}")
    if not pairs:
        raise ConfigError("schema: no columns")
    fields = []
    for name, dtype in pairs:
        try:
            fields.append(pa.field(name, parse_type(dtype)))
        except ConfigError as exc:
            raise ConfigError(f"schema: column {name!r}: {exc}") from None
    return pa.schema(fields)


def parse_aggregate(text: str) -> agg.Kernel:
    """``"count()"``, ``"sum(amount)"``, ``"count_distinct(page)"`` → an aggregate kernel."""
    match = _AGGREGATE.match(text) if isinstance(text, str) else None
    if not match or match.group(1).lower() not in _FUNCTIONS:
        raise ConfigError(
            f"aggregate {text!r}: expected one of {', '.join(f'{f}(…)' for f in _FUNCTIONS)}"
        )
    function, column = match.group(1).lower(), match.group(2).strip('"')
    if function == "count":
        return agg.count(column or None)
    if not column:
        raise ConfigError(f"aggregate {text!r}: {function} needs a column")
    return _FUNCTIONS[function](column)


def aggregate_column(text: str) -> str | None:
    """The column an aggregate spec reads (``"sum(amount)"`` → ``"amount"``; ``count()`` → None)."""
    match = _AGGREGATE.match(text)
    return (match.group(2).strip('"') or None) if match else None
