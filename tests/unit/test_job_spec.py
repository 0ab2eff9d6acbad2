"""Job-file building blocks: types, schemas and aggregate specs parse or fail naming the problem."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lambdasource.errors import ConfigError
from lambdasource.job import parse_aggregate, parse_schema, parse_type


def test_schema_strings_and_tables() -> None:
    schema = parse_schema("event_time:timestamp[ms, UTC], user_id:int64,kind:string, ok:bool")
    assert schema == pa.schema(
        [
            ("event_time", pa.timestamp("ms", tz="UTC")),
            ("user_id", pa.int64()),
            ("kind", pa.string()),
            ("ok", pa.bool_()),
        ]
    )
    assert parse_schema({"a": "float64", "t": "timestamp"}) == pa.schema(
        [("a", pa.float64()), ("t", pa.timestamp("us", tz="UTC"))]
    )
    assert parse_type("timestamp[ns]") == pa.timestamp("ns")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("a:int65", "unknown type"), ("a", "column:type"), ("", "no columns")],
)
def test_schema_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_schema(spec)


def test_aggregates() -> None:
    assert parse_aggregate("count()").name == "count"
    assert parse_aggregate(" sum( amount ) ").column == "amount"
    assert parse_aggregate("avg(x)").name == "mean"
    assert parse_aggregate('count_distinct("page")').column == "page"
    with pytest.raises(ConfigError, match="needs a column"):
        parse_aggregate("sum()")
    with pytest.raises(ConfigError, match="expected one of"):
        parse_aggregate("median(x)")
