"""Per-key coalescing (vectorised) against a plain-Python reference; store URLs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lambdasource.errors import ConfigError
from lambdasource.sinks.duckdb import DuckDBUpsert
from lambdasource.sinks.iceberg import IcebergUpsert
from lambdasource.sinks.kafka import KafkaUpsert
from lambdasource.sinks.parquet import ParquetSink
from lambdasource.sinks.postgres import PostgresUpsert
from lambdasource.sinks.upsert import coalesce
from lambdasource.sinks.urls import sink_from_url


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 3)), max_size=60))
def test_coalesce_keeps_newest_version_then_latest_arrival(
    events: list[tuple[int, int, int]],
) -> None:
    table = pa.table(
        {
            "a": pa.array([e[0] for e in events], pa.int64()),
            "b": pa.array([str(e[1] % 2) for e in events]),
            "v": pa.array([e[2] for e in events], pa.int64()),
            "i": pa.array(range(len(events)), pa.int64()),
        }
    )
    expected: dict[tuple[int, str], tuple[int, int]] = {}
    for i, (a, b, v) in enumerate(events):
        key = (a, str(b % 2))
        if key not in expected or v >= expected[key][0]:
            expected[key] = (v, i)
    got = coalesce(table, ["a", "b"], "v")
    assert {(r["a"], r["b"]): (r["v"], r["i"]) for r in got.to_pylist()} == expected
    assert got.num_rows == len(expected)


def test_urls(tmp_path: Path) -> None:
    rel = sink_from_url("duckdb:///rel/x.db", table="t", key="k", version="v")
    assert isinstance(rel, DuckDBUpsert) and rel.path == "rel/x.db"
    absolute = sink_from_url(f"duckdb:///{tmp_path}/x.db", table="t", key=["k"], version="v")
    assert isinstance(absolute, DuckDBUpsert) and absolute.path == f"{tmp_path}/x.db"
    pg = sink_from_url("postgresql://u@127.0.0.1:5432/db", table="t", key="k")
    assert isinstance(pg, PostgresUpsert) and pg.dsn == "postgresql://u@127.0.0.1:5432/db"
    ice = sink_from_url(
        "iceberg://?uri=sqlite:///cat.db&warehouse=file:///wh", table="db.t", key="k"
    )
    assert isinstance(ice, IcebergUpsert)
    assert ice._catalog_arg == {"uri": "sqlite:///cat.db", "warehouse": "file:///wh", "type": "sql"}
    kafka = sink_from_url("kafka://127.0.0.1:9092/topic", table="t", key="k")
    assert isinstance(kafka, KafkaUpsert) and (kafka.topic, kafka.bootstrap_servers) == (
        "topic",
        "127.0.0.1:9092",
    )
    assert sink_from_url("kafka://h:1", table="tt", key="k").topic == "tt"  # type: ignore[attr-defined]
    pq = sink_from_url("parquet:///out", table="-", key="-", time_column="t")
    assert isinstance(pq, ParquetSink)
    with pytest.raises(ConfigError, match="unknown store URL scheme"):
        sink_from_url("mysql://x/y", table="t", key="k")
    with pytest.raises(ConfigError, match="not a store URL"):
        sink_from_url("x.db", table="t", key="k")
    with pytest.raises(ConfigError, match=r"namespace\.table"):
        sink_from_url("iceberg://?uri=sqlite:///c.db", table="t", key="k")


async def test_flush_by_size_and_time_and_metrics(tmp_path: Path) -> None:
    sink = DuckDBUpsert(tmp_path / "f.duckdb", "t", "k", "v", batch_rows=4, flush_interval="1h")
    rb = pa.record_batch({"k": [1, 2, 3], "v": [1, 1, 1]})
    sink.bind(rb.schema)
    await sink.open()
    await sink.write(rb)
    assert sink.metrics()["batches"] == 0 and sink.metrics()["buffered_rows"] == 3
    await sink.write(rb)  # 6 rows >= batch_rows: one flush of the coalesced 3 keys
    m = sink.metrics()
    assert (m["batches"], m["buffered_rows"], m["coalesced"], m["rows_written"]) == (1, 0, 3, 3)
    sink.flush_interval = 0.0  # time-based: the next batch or watermark after the interval flushes
    await sink.write(pa.record_batch({"k": [4], "v": [1]}))
    assert sink.metrics()["batches"] == 2
    await sink.write(pa.record_batch({"k": [1], "v": [0]}))  # older than stored: rejected
    m = sink.metrics()
    assert (m["batches"], m["conflicts_skipped"]) == (3, 1)
    assert m["flush_latency_max_s"] >= m["flush_latency_mean_s"] > 0
    await sink.close()


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="batch_rows"):
        DuckDBUpsert("x.db", "t", "k", "v", batch_rows=0)
    with pytest.raises(ConfigError, match="key"):
        DuckDBUpsert("x.db", "t", [], "v")
    with pytest.raises(ConfigError, match="flush_interval"):
        DuckDBUpsert("x.db", "t", "k", "v", flush_interval="soon")


def test_a_producer_without_aiokafkas_transaction_internals_is_a_clear_error() -> None:
    """Exactly-once reads aiokafka's private transaction manager: a release that dropped it
    fails naming what is missing and the versions that have it."""
    from lambdasource.errors import SinkError
    from lambdasource.sinks.kafka_transactions import transaction_manager

    with pytest.raises(SinkError, match=r"_txn_manager.*install aiokafka>=0.11,<0.15"):
        transaction_manager(object())
