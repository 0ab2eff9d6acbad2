"""Sinks for several writers: ``for_task`` copies, the single-writer check, and DuckDB releasing
its file when a run is cancelled in the middle of a flush."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from lambdasource.errors import ConfigError
from lambdasource.sinks.base import require_multi_writer
from lambdasource.sinks.collect import CollectSink
from lambdasource.sinks.duckdb import DuckDBUpsert
from lambdasource.sinks.iceberg import IcebergUpsert
from lambdasource.sinks.kafka import KafkaUpsert
from lambdasource.sinks.parquet import ParquetSink
from lambdasource.sinks.postgres import PostgresUpsert

ROWS = pa.table({"k": np.arange(1000), "v": np.full(1000, 3), "x": np.arange(1000) * 0.5})


def test_single_writer_sinks_are_refused_before_a_multi_worker_run(tmp_path: Path) -> None:
    duck = DuckDBUpsert(tmp_path / "f.duckdb", table="t", key="k", name="features")
    shared = [
        PostgresUpsert("postgresql://u@h/db", "t", key="k"),
        IcebergUpsert("db.t", {"uri": "sqlite://"}, key="k"),
        KafkaUpsert("out", "k"),
        ParquetSink(tmp_path / "p", time_column="t"),
    ]
    assert duck.single_writer and CollectSink().single_writer
    assert not any(sink.single_writer for sink in shared)
    require_multi_writer([*shared, duck], workers=1)  # one worker: anything goes
    require_multi_writer(shared, workers=4)
    for workers in (2, None):
        with pytest.raises(ConfigError) as refused:
            require_multi_writer([*shared, duck], workers=workers)
        text = str(refused.value)
        assert "sink=features (DuckDBUpsert)" in text and "PostgresUpsert" in text
        assert "--workers 1" in text


async def test_for_task_copies_share_no_runtime_state(tmp_path: Path) -> None:
    job = DuckDBUpsert(tmp_path / "f.duckdb", table="t", key="k", version="v", batch_rows=10**6)
    one, two = job.for_task("events-0"), job.for_task("events-1")
    assert (one.task_id, two.task_id, job.task_id) == ("events-0", "events-1", None)
    assert isinstance(one, DuckDBUpsert) and isinstance(two, DuckDBUpsert)
    await one.write(ROWS.to_batches()[0])
    assert one.metrics()["buffered_rows"] == 1000
    assert two.metrics()["buffered_rows"] == 0 and job.metrics()["buffered_rows"] == 0
    assert one._using is not two._using
    collect = CollectSink()
    copy = collect.for_task("events-0")
    assert isinstance(copy, CollectSink) and copy.batches is not collect.batches


def test_kafka_task_transactional_ids_are_stable_and_distinct() -> None:
    job = KafkaUpsert("out", "k", exactly_once=True, name="store")
    ids = [
        sink._transactions.transactional_id
        for sink in (job.for_task("events-0"), job.for_task("events-1"), job.for_task("events-0"))
        if isinstance(sink, KafkaUpsert) and sink._transactions is not None
    ]
    assert ids == [
        "lambdasource-out-store-events-0",
        "lambdasource-out-store-events-1",
        "lambdasource-out-store-events-0",  # the same task on a restart: fences its zombie
    ]
    named = KafkaUpsert("out", "k", transactional_id="job7").for_task("events-3")
    assert isinstance(named, KafkaUpsert) and named._transactions is not None
    assert named._transactions.transactional_id == "job7-events-3"
    assert job._transactions is not None and job._transactions.transactional_id.endswith("store")
    plain = KafkaUpsert("out", "k").for_task("events-0")
    assert isinstance(plain, KafkaUpsert) and plain._transactions is None


def test_duckdb_cancelled_mid_flush_releases_the_file(tmp_path: Path) -> None:
    """The run is cancelled while a flush runs in its thread (inside the flush's transaction a
    long DuckDB query is running): ``close`` interrupts and awaits it, the flush rolls back, and
    the same process can connect read-only at once and, later, write again. Without the fix
    ``close`` raises "connection is busy" and leaves the connection open, so the read-only
    connect fails ("different configuration than existing connections")."""
    path = tmp_path / "f.duckdb"
    sink = DuckDBUpsert(path, table="t", key="k", version="v", batch_rows=10**6)
    inside = threading.Event()
    statements = sink._statements

    def slow_statements(con: Any, n_rows: int, has_deletes: bool) -> Any:
        inside.set()
        con.execute("SELECT count(*) FROM range(1000000000000)").fetchall()  # until interrupted
        return statements(con, n_rows, has_deletes)

    sink._statements = slow_statements  # type: ignore[method-assign]

    async def cancelled_run() -> None:
        await sink.open()
        await sink.write(ROWS.to_batches()[0])
        flushing = asyncio.create_task(sink.flush())
        assert await asyncio.to_thread(inside.wait, 30), "the flush never started"
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        await sink.close()  # as the runtime does after a cancel

    asyncio.run(asyncio.wait_for(cancelled_run(), timeout=60))
    reader = duckdb.connect(str(path), read_only=True)
    try:
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)  # rolled back
    finally:
        reader.close()

    async def write_again() -> None:
        again = DuckDBUpsert(path, table="t", key="k", version="v")
        await again.write(ROWS.to_batches()[0])
        await again.flush()
        await again.close()

    asyncio.run(write_again())
    with duckdb.connect(str(path), read_only=True) as reader:
        stored = reader.sql("SELECT k, v, x FROM t ORDER BY k").to_arrow_table()
    assert stored.equals(ROWS.cast(stored.schema))


def test_duckdb_task_sinks_of_one_process_take_turns(tmp_path: Path) -> None:
    """One worker runs several tasks: their DuckDBUpsert copies flush into one file from
    threads at once, with overlapping keys and deletions; the file equals the reference (without
    the file lock, DuckDB fails concurrent upserts of one key with a ConstraintException)."""
    from tests.integration.test_sinks_concurrent import SCHEMA, assert_store_equals, workload

    path = tmp_path / "f.duckdb"
    sent = workload(writers=4, keys=200, versions=3, overlap=True, seed=21)
    job = DuckDBUpsert(path, table="store", key="k", version="v", batch_rows=10**6)
    job.bind(SCHEMA)

    async def task(sink: DuckDBUpsert, rows: pa.Table) -> None:
        try:
            for start in range(0, rows.num_rows, 25):
                for batch in rows.slice(start, 25).to_batches():
                    await sink.write(batch)
                await sink.flush()
        finally:
            await sink.close()

    async def run() -> None:
        copies = [job.for_task(f"events-{i}") for i in range(len(sent))]
        await asyncio.gather(
            *(task(sink, rows) for sink, rows in zip(copies, sent, strict=True))  # type: ignore[arg-type]
        )

    asyncio.run(run())
    with duckdb.connect(str(path), read_only=True) as reader:
        rows = reader.execute("SELECT k, v, payload FROM store").fetchall()
    assert_store_equals({k: (v, payload) for k, v, payload in rows}, sent)
