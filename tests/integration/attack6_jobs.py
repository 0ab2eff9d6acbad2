"""Shared by the attack-6 Kinesis tests: the archived stream through a proxy, moto's positions
of real sequence numbers, snapshot points, in-order rows, the hourly checkpointed job and its
SQL comparison, and the offsets handoff over malformed and duplicated records."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.sinks.duckdb import DuckDBUpsert
from lambdasource.sources.kinesis import KinesisStream
from tests.integration.attack6_sparse import to_moto, to_real
from tests.integration.kinesis_helpers import (
    BASE_MS,
    Recorder,
    put_events,
    stream_args,
)
from tests.integration.kinesis_moto import trim
from tests.integration.ordered import OrderedSink
from tests.integration.test_archiver import SCHEMA, rows
from tests.integration.test_kinesis_archiver import archiver
from tests.integration.test_kinesis_lambda import (
    Ledger,
    source,
)
from tests.services.kinesis import KinesisService


def moto_positions(recorded: dict[int, int]) -> dict[int, int]:
    """The lake's recorded next sequence numbers (real) in moto's dense numbering."""
    return {
        shard: int(to_moto(str(number), "AT_SEQUENCE_NUMBER")) for shard, number in recorded.items()
    }


async def sparse_archived(
    kinesis: KinesisService, sparse: KinesisService, tmp_path: Path, archived: int = 400
) -> tuple[str, Ledger, ParquetLakeWriter]:
    """A 2-shard stream whose first ``archived`` records the archiver wrote (through the proxy)."""
    stream = await asyncio.to_thread(kinesis.new_stream, 2)
    ledger = Ledger()
    await asyncio.to_thread(ledger.put, kinesis, stream, rows(archived, seed=1))
    writer = ParquetLakeWriter(tmp_path / "lake", "event_time")
    await archiver(sparse, stream, writer, commit_rows=150).run()
    return stream, ledger, writer


async def restart_after_trim(
    sparse: KinesisService, name: str, trim_through_snapshot: bool
) -> tuple[Recorder, Recorder, list[tuple[int, int, str]]]:
    """Read 100 records of one shard 9 per fetch, snapshot before the 6th emit, (optionally)
    let retention trim every record read so far, restore and read the rest."""
    put = [(i, BASE_MS + i * 10, f"user{i % 5}") for i in range(100)]
    await asyncio.to_thread(put_events, sparse, name, put)
    args = stream_args(sparse, max_records=9)
    first = KinesisStream(name, stop_at="latest", out_of_orderness="100ms", **args)
    recorder = Recorder()
    snapshots: list[dict[str, Any]] = []

    def barrier(_: Any) -> None:
        if len(recorder.positions) == 5:
            snapshots.append(first.snapshot())
            raise RuntimeError("killed")

    recorder.on_emit = barrier
    with pytest.raises(RuntimeError, match="killed"):
        await first.run(recorder)
    await first.close()
    [snapshot] = snapshots
    if trim_through_snapshot:
        read = len(recorder.rows)
        assert await asyncio.to_thread(trim, name, "shardId-000000000000", read + 1) == read
    second = KinesisStream(name, stop_at="latest", out_of_orderness="100ms", **args)
    second.restore(snapshot)
    resumed = Recorder()
    await second.run(resumed)
    await second.close()
    return recorder, resumed, put


async def snapshot_at(name: str, args: dict[str, Any], emits: int) -> tuple[Recorder, Any]:
    """Run until the ``emits``-th batch is about to be emitted, snapshot there and stop."""
    first = KinesisStream(name, stop_at="latest", out_of_orderness="100ms", **args)
    recorder = Recorder()
    snapshots: list[dict[str, Any]] = []

    def barrier(_: Any) -> None:
        if len(recorder.positions) == emits:
            snapshots.append(first.snapshot())
            raise RuntimeError("killed")

    recorder.on_emit = barrier
    with contextlib.suppress(RuntimeError):
        await first.run(recorder)
    await first.close()
    return recorder, snapshots[0] if snapshots else None


def ordered_rows(first_id: int, count: int, start_us: int, step_us: int) -> pa.Table:
    """``count`` rows with event ids from ``first_id``, times rising by ``step_us`` (ms-exact)."""
    times = [start_us + i * step_us for i in range(count)]
    return pa.table(
        {
            "event_time": pa.array(times, pa.int64()).cast(SCHEMA.field("event_time").type),
            "event_id": pa.array(range(first_id, first_id + count), pa.int64()),
            "user_id": pa.array([i % 7 for i in range(count)], pa.int64()),
            "session_id": pa.array([0] * count, pa.int64()),
            "kind": ["view"] * count,
            "page": ["/"] * count,
            "device": ["web"] * count,
            "amount": pa.array([1.0] * count),
        },
        schema=SCHEMA,
    )


def stream_lead(sink: OrderedSink, first_id: int) -> int:
    """Largest lead of a row with event id >= ``first_id`` over the watermark in force."""
    worst, mark = -(2**62), None
    for kind, payload in sink.events:
        if kind == "wm":
            mark = payload
        elif mark is not None:
            chosen = pc.greater_equal(payload.column("event_id"), first_id)
            times = sink.micros(payload.filter(chosen))
            if len(times):
                worst = max(worst, int(times.max()) - mark)
    return worst


def hourly_job(
    kinesis: KinesisService, stream: str, root: Path, seen: list[int] | None, *, bounded: bool
) -> ls.Pipeline:
    """Lake + Kinesis (offsets handoff) -> per user hourly count and id sum -> DuckDB upsert,
    file:// checkpoints every 100 ms; ``seen`` collects every event id the source gave (None:
    no step between the source and the window, as bootstrap='state' needs)."""
    lambda_source, _, _ = source(
        kinesis, stream, root / "lake", stop_at="latest" if bounded else None
    )

    def note(batch: pa.RecordBatch) -> pa.RecordBatch:
        assert seen is not None
        seen.extend(batch.column("event_id").to_pylist())
        return batch

    pipeline = ls.Pipeline(
        checkpoints=ls.Checkpoints(f"file://{root}/checkpoints", interval="100ms"),
        name="attack6-hourly",
        flush="all",
    )
    events = pipeline.source(lambda_source)
    if seen is not None:
        events = events.map(note, schema=SCHEMA)
    (
        events.key_by("user_id")
        .window(ls.Tumbling("1h"), emit="every")
        .aggregate(n=ls.count(), id_sum=ls.sum("event_id"))
        .sink(
            DuckDBUpsert(str(root / "store.duckdb"), table="hourly", key=["user_id", "window_end"])
        )
    )
    return pipeline


def hourly_store_mismatches(store: Path, everything: pa.Table) -> list[tuple[Any, ...]]:
    """(user, hour, expected n, expected id sum, stored n, stored id sum) where they differ."""
    with duckdb.connect(str(store), read_only=True) as con:
        con.register("events", everything.select(["event_time", "event_id", "user_id"]))
        return con.execute(
            """
            WITH ref AS (
                SELECT user_id, date_trunc('hour', event_time) AS hour, count(*) AS n,
                       sum(event_id)::BIGINT AS id_sum
                FROM events GROUP BY ALL
            ), got AS (
                SELECT user_id, window_start::TIMESTAMPTZ AS hour, n, id_sum::BIGINT AS id_sum
                FROM hourly
            )
            SELECT r.user_id, r.hour, r.n, r.id_sum, g.n, g.id_sum
            FROM ref r FULL OUTER JOIN got g ON r.user_id = g.user_id AND r.hour = g.hour
            WHERE r.n IS DISTINCT FROM g.n OR r.id_sum IS DISTINCT FROM g.id_sum
            ORDER BY 2, 1
            """
        ).fetchall()


async def handoff_with_bad_records(
    kinesis: KinesisService, sparse: KinesisService, root: Path
) -> tuple[Ledger, OrderedSink, ls.CollectSink, list[tuple[bytes, str, str]]]:
    """Malformed records and duplicate payloads before the archiver ran (the lake) and after
    (the stream), read through 56-digit sequence numbers by an offsets handoff: returns the
    ledger, the rows and dead letters the job gave and each malformed (payload, shard, real
    sequence number) put."""
    stream = await asyncio.to_thread(kinesis.new_stream, 2)
    ledger = Ledger()
    client = kinesis.client()
    bad: list[tuple[bytes, str, str]] = []

    def put_bad(count: int) -> None:
        for i in range(count):
            data = b"{broken %d" % i
            answer = client.put_record(StreamName=stream, Data=data, PartitionKey=str(i))
            bad.append((data, answer["ShardId"], to_real(answer["SequenceNumber"])))

    lake_rows = rows(200, seed=1)
    await asyncio.to_thread(ledger.put, kinesis, stream, lake_rows)
    await asyncio.to_thread(ledger.put, kinesis, stream, lake_rows.slice(0, 20))  # again
    await asyncio.to_thread(put_bad, 3)
    writer = ParquetLakeWriter(root / "lake", "event_time")
    summary = await archiver(sparse, stream, writer, commit_rows=100).run()
    assert summary.dead_letters == 3
    later = rows(100, seed=2, first_id=10_000)
    await asyncio.to_thread(ledger.put, kinesis, stream, later)
    await asyncio.to_thread(ledger.put, kinesis, stream, later.slice(0, 10))  # again
    await asyncio.to_thread(ledger.put, kinesis, stream, lake_rows.slice(0, 5))  # a third time
    await asyncio.to_thread(put_bad, 4)
    lambda_source, _, _ = source(sparse, stream, root / "lake")
    pipeline = ls.Pipeline()
    events = pipeline.source(lambda_source)
    sink, dead = OrderedSink(), ls.CollectSink()
    events.sink(sink)
    events.dead_letters().sink(dead)
    await pipeline.run()
    return ledger, sink, dead, bad
