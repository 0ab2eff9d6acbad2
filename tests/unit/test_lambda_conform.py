"""Unifying stream batches to the lake's schema: nulls for missing columns, safe casts, errors
naming the column; LambdaSource configuration errors."""

from __future__ import annotations

import pyarrow as pa
import pytest

import lambdasource as ls
from lambdasource.errors import ConfigError, SchemaError
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.lambda_source import LambdaSource, conform

TS = pa.timestamp("us", tz="UTC")


def test_conform_fills_casts_and_drops() -> None:
    target = pa.schema([("t", TS), ("a", pa.int64()), ("b", pa.string())])
    batch = pa.RecordBatch.from_pydict(
        {"a": pa.array([1, 2], pa.int32()), "t": pa.array([1000, 2000], pa.int64()), "x": [0, 0]}
    )
    out = conform(batch, target, "here")
    assert out.schema == target
    assert out.column("t").cast(pa.int64()).to_pylist() == [1_000_000, 2_000_000]  # epoch ms
    assert out.column("b").to_pylist() == [None, None]


def test_conform_names_the_column_it_cannot_cast() -> None:
    target = pa.schema([("a", pa.int64())])
    batch = pa.RecordBatch.from_pydict({"a": ["x"]})
    with pytest.raises(SchemaError, match="column 'a'"):
        conform(batch, target, "source=lambda")


def test_configuration_errors() -> None:
    table = pa.table({"event_time": pa.array([0], TS), "v": [1]})
    memory = ls.MemorySource(table, time_column="event_time")
    stream = KafkaStream("t", "127.0.0.1:1", format="raw")
    with pytest.raises(ConfigError, match="high_water_mark"):
        LambdaSource(memory, stream)
    with pytest.raises(ConfigError, match="stop_at"):
        KafkaStream("t", "127.0.0.1:1", format="raw", stop_at="earliest")
    with pytest.raises(ConfigError, match="schema"):
        KafkaStream("t", "127.0.0.1:1", format="json")
    with pytest.raises(ConfigError, match="start"):
        KafkaStream("t", "127.0.0.1:1", format="raw", start="middle")
