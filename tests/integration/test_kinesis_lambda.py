"""LambdaSource over a Kinesis stream against moto (real HTTP): the offsets handoff by sequence
number per shard and the timestamp handoff, exact (issue 16 §2).

Oracle: the multiset of event ids the sink right after the source saw, against the DuckDB union
that defines the handoff — lake rows ∪ stream records from the lake's recorded next sequence
number per shard (offsets), or lake rows before the cutoff ∪ stream records at or after it
(timestamp) — computed from what the test put (PutRecords' acknowledged shard and sequence
number per record) and what the lake holds; and no row at or before a watermark the sink had
already seen. Cases: a plain run, records put while the job plans its handoff, a split during
the stream phase, a gap (moto never trims: :func:`tests.integration.kinesis_moto.trim` deletes a
shard's oldest records in the in-process server, as retention would) → HandoffGapError naming
stream, shard and range, and ``allow_gaps=True`` continuing with the gap counted; a Kafka lake
with a Kinesis stream is refused.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.errors import HandoffError, HandoffGapError
from lambdasource.sources.kinesis.stream import KinesisStream
from lambdasource.timeutil import HOUR
from tests.integration.kinesis_moto import trim
from tests.integration.ordered import OrderedSink
from tests.integration.test_archiver import SCHEMA, TIME, encode, lake_table, rows
from tests.integration.test_kinesis_archiver import (
    archiver,
    config_of,
    merge_shards,
    put,
    split_shard,
)
from tests.services.kinesis import KinesisService
from tests.services.kinesis_reshard import kinesis_resharding  # noqa: F401 - a fixture

pytestmark = pytest.mark.kinesis


class Ledger:
    """Every record put: event id, event time (µs), shard number, sequence number."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []

    def put(
        self, kinesis: KinesisService, stream: str, table: pa.Table, shard: str | None = None
    ) -> None:
        acked = put(kinesis, stream, encode(table), shard=shard)
        # put() spreads records round-robin over the shards it targets; recover the order
        shards: list[int] = []
        sequences: list[int] = []
        order = sorted(acked)
        cursors = dict.fromkeys(order, 0)
        for i in range(table.num_rows):
            number = order[i % len(order)] if shard is None else order[0]
            shards.append(number)
            sequences.append(acked[number][cursors[number]])
            cursors[number] += 1
        self.parts.append(
            pa.table(
                {
                    "event_id": table.column("event_id"),
                    "t": pc.cast(table.column(TIME), pa.int64()),
                    "shard": pa.array(shards, pa.int64()),
                    "seq": pa.array(sequences, pa.int64()),
                }
            )
        )

    def table(self) -> pa.Table:
        return pa.concat_tables(self.parts)


def offsets_reference(lake: pa.Table, ledger: Ledger, recorded: dict[int, int]) -> Counter[int]:
    """lake ∪ stream records at or after the recorded next sequence number of their shard."""
    positions = pa.table(
        {"shard": list(recorded), "need": list(recorded.values())},
        schema=pa.schema([("shard", pa.int64()), ("need", pa.int64())]),
    )
    return union(
        "SELECT event_id FROM lake UNION ALL "
        "SELECT s.event_id FROM stream s LEFT JOIN positions p USING (shard) "
        "WHERE s.seq >= coalesce(p.need, 0)",
        lake=lake.select(["event_id"]),
        stream=ledger.table(),
        positions=positions,
    )


def union(sql: str, **tables: pa.Table) -> Counter[int]:
    """The multiset of event ids a DuckDB query over ``tables`` gives."""
    with duckdb.connect() as con:
        for name, table in tables.items():
            con.register(name, table)
        return Counter(event_id for (event_id,) in con.execute(sql).fetchall())


def timestamp_reference(lake: pa.Table, ledger: Ledger, cutoff: int) -> Counter[int]:
    """lake rows before the cutoff ∪ stream records at or after it."""
    lake_rows = pa.table(
        {"event_id": lake.column("event_id"), "t": pc.cast(lake.column(TIME), pa.int64())}
    )
    return union(
        f"SELECT event_id FROM lake WHERE t < {cutoff} UNION ALL "
        f"SELECT event_id FROM stream WHERE t >= {cutoff}",
        lake=lake_rows,
        stream=ledger.table(),
    )


def source(
    kinesis: KinesisService, stream: str, root: Path, **kwargs: Any
) -> tuple[ls.LambdaSource, OrderedSink, ls.Pipeline]:
    bounded = kwargs.pop("stop_at", "latest")
    kwargs.setdefault("handoff", "offsets")
    lambda_source = ls.LambdaSource(
        ls.ParquetLake(root, TIME),
        KinesisStream(
            stream,
            time_column=TIME,
            schema=SCHEMA,
            stop_at=bounded,
            config=config_of(kinesis),
            poll_interval="50ms",
            idle_timeout="300ms",
            shard_discovery="300ms",
        ),
        out_of_orderness="5m",
        idle_timeout="300ms",
        **kwargs,
    )
    sink = OrderedSink()
    pipeline = ls.Pipeline()
    pipeline.source(lambda_source).sink(sink)
    return lambda_source, sink, pipeline


async def archived_stream(
    kinesis: KinesisService, tmp_path: Path, shards: int = 2, archived: int = 800
) -> tuple[str, Ledger, ParquetLakeWriter]:
    """A stream whose first ``archived`` records are in an archiver-written lake."""
    stream = await asyncio.to_thread(kinesis.new_stream, shards)
    ledger = Ledger()
    await asyncio.to_thread(ledger.put, kinesis, stream, rows(archived, seed=1))
    writer = ParquetLakeWriter(tmp_path / "lake", TIME)
    await archiver(kinesis, stream, writer, commit_rows=300).run()
    return stream, ledger, writer


def check(sink: OrderedSink, expected: Counter[int], *, in_order: bool = True) -> None:
    """Every expected event id exactly once; with ``in_order`` (the data put after the lake
    was archived is newer than the lake), no row at or before a watermark seen earlier."""
    got = sink.ids()
    assert got == expected, (
        f"missing {sum((expected - got).values())}, duplicated {sum((got - expected).values())}"
    )
    if in_order:
        assert not sink.late()


async def wait_for(predicate: Any, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def run_until(pipeline: ls.Pipeline, sink: OrderedSink, total: int, seconds: float) -> None:
    """Run an unbounded job until the sink saw ``total`` rows (and a little longer), then stop."""
    task = asyncio.create_task(pipeline.run())
    try:
        await wait_for(lambda: task.done() or sum(sink.ids().values()) >= total, seconds)
        await asyncio.sleep(0.4)  # duplicates, if any, would arrive now
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("handoff", ["offsets", "timestamp"])
async def test_handoff_exact(kinesis: KinesisService, tmp_path: Path, handoff: str) -> None:
    stream, ledger, writer = await archived_stream(kinesis, tmp_path)
    await asyncio.to_thread(ledger.put, kinesis, stream, rows(700, seed=2, first_id=10_000))
    lake = lake_table(writer)
    if handoff == "offsets":
        lambda_source, sink, pipeline = source(kinesis, stream, tmp_path / "lake")
        await pipeline.run()
        recorded = writer.offsets()
        assert lambda_source.recorded == recorded
        expected = offsets_reference(lake, ledger, recorded)
        assert sum(expected.values()) == 1_500  # every record once: the handoff is exact
    else:
        times = pc.cast(lake.column(TIME), pa.int64()).to_numpy()
        cutoff = int(times.min()) + 20 * HOUR  # records on both sides of it in both sources
        lambda_source, sink, pipeline = source(
            kinesis, stream, tmp_path / "lake", handoff="timestamp", cutoff=cutoff
        )
        await pipeline.run()
        expected = timestamp_reference(lake, ledger, cutoff)
        assert lambda_source.dropped_before_cutoff > 0
    check(sink, expected)


async def test_records_put_while_the_job_plans_its_handoff(
    kinesis: KinesisService, tmp_path: Path
) -> None:
    stream, ledger, writer = await archived_stream(kinesis, tmp_path, archived=400)
    more = [rows(150, seed=10 + i, first_id=20_000 + 1_000 * i) for i in range(4)]
    _, sink, pipeline = source(kinesis, stream, tmp_path / "lake", stop_at=None)
    done = threading.Event()

    def put_meanwhile() -> None:
        for table in more:
            ledger.put(kinesis, stream, table)
        done.set()

    putter = threading.Thread(target=put_meanwhile)
    putter.start()  # records arrive while the source pins the lake, lists shards and opens
    try:
        await run_until(pipeline, sink, 400 + 600, 30)
    finally:
        await asyncio.to_thread(putter.join)
    assert done.is_set()
    # each put spans the same two days again: late by construction, so ids only
    check(sink, offsets_reference(lake_table(writer), ledger, writer.offsets()), in_order=False)


@pytest.mark.usefixtures("kinesis_resharding")
async def test_split_during_the_stream_phase(kinesis: KinesisService, tmp_path: Path) -> None:
    stream, ledger, writer = await archived_stream(kinesis, tmp_path)
    await asyncio.to_thread(ledger.put, kinesis, stream, rows(300, seed=3, first_id=30_000))
    _, sink, pipeline = source(kinesis, stream, tmp_path / "lake", stop_at=None)
    task = asyncio.create_task(run_until(pipeline, sink, 800 + 300 + 600, 40))
    assert await wait_for(lambda: sum(sink.ids().values()) >= 1_100, 20)
    await asyncio.to_thread(split_shard, kinesis, stream, "shardId-000000000000")
    await asyncio.to_thread(ledger.put, kinesis, stream, rows(600, seed=4, first_id=40_000))
    await task
    assert {2, 3} <= set(ledger.parts[-1].column("shard").to_pylist())  # children got records
    check(sink, offsets_reference(lake_table(writer), ledger, writer.offsets()), in_order=False)


@pytest.mark.usefixtures("kinesis_resharding")
async def test_merge_during_the_stream_phase(kinesis: KinesisService, tmp_path: Path) -> None:
    """Both recorded shards merge into a child while the job reads them: the child is read
    only after both parents ended, every record once."""
    stream, ledger, writer = await archived_stream(kinesis, tmp_path)
    await asyncio.to_thread(ledger.put, kinesis, stream, rows(300, seed=6, first_id=60_000))
    _, sink, pipeline = source(kinesis, stream, tmp_path / "lake", stop_at=None)
    task = asyncio.create_task(run_until(pipeline, sink, 800 + 300 + 600, 40))
    assert await wait_for(lambda: sum(sink.ids().values()) >= 1_100, 20)
    await asyncio.to_thread(merge_shards, kinesis, stream, "shardId-000000000000", 1)
    await asyncio.to_thread(ledger.put, kinesis, stream, rows(600, seed=7, first_id=70_000))
    await task
    assert set(ledger.parts[-1].column("shard").to_pylist()) == {2}  # the child took them all
    check(sink, offsets_reference(lake_table(writer), ledger, writer.offsets()), in_order=False)


async def test_gap_is_an_error_naming_stream_shard_and_range_unless_allowed(
    kinesis: KinesisService, tmp_path: Path
) -> None:
    stream, ledger, writer = await archived_stream(kinesis, tmp_path)
    await asyncio.to_thread(ledger.put, kinesis, stream, rows(400, seed=5, first_id=50_000))
    need = writer.offsets()[0]
    # retention trims shard 0's records up to 5 past what the lake holds
    assert await asyncio.to_thread(trim, stream, "shardId-000000000000", need + 5) == need + 4
    _, _, pipeline = source(kinesis, stream, tmp_path / "lake")
    with pytest.raises(HandoffGapError) as caught:
        await pipeline.run()
    message = str(caught.value)
    assert f"stream={stream} shard=shardId-000000000000" in message
    assert f"sequence numbers {need}..{need + 4}" in message

    lambda_source, sink, pipeline = source(kinesis, stream, tmp_path / "lake", allow_gaps=True)
    await pipeline.run()
    assert lambda_source.metrics()["missing_offsets"] == {
        0: {"from": need, "to": need + 5, "count": None}  # sparse numbers: no count
    }
    expected = offsets_reference(lake_table(writer), ledger, writer.offsets())
    ledger_table = ledger.table()
    trimmed = ledger_table.filter(
        pc.and_(pc.equal(ledger_table.column("shard"), 0), pc.less(ledger_table["seq"], need + 5))
    )
    lost = Counter(trimmed.column("event_id").to_pylist())
    expected = expected - (lost - Counter(lake_table(writer).column("event_id").to_pylist()))
    assert sum(expected.values()) == 1_200 - 5
    check(sink, expected)


async def test_a_kafka_lake_or_an_unknown_shard_is_refused(
    kinesis: KinesisService, tmp_path: Path
) -> None:
    stream = await asyncio.to_thread(kinesis.new_stream, 1)
    await asyncio.to_thread(put, kinesis, stream, encode(rows(20)))
    kafka_lake = ParquetLakeWriter(tmp_path / "kafka", TIME)
    kafka_lake.write(rows(10), offsets={0: 10}, topic=stream)  # a Kafka topic of the same name
    _, _, pipeline = source(kinesis, stream, tmp_path / "kafka")
    with pytest.raises(HandoffError, match=r"positions of a kafka stream.*is a kinesis stream"):
        await pipeline.run()
    recreated = ParquetLakeWriter(tmp_path / "recreated", TIME)
    recreated.write(rows(10), offsets={0: 11, 4: 9}, topic=stream, stream_kind="kinesis")
    _, _, pipeline = source(kinesis, stream, tmp_path / "recreated")
    with pytest.raises(HandoffGapError, match=r"shard number 4.*does not list this shard"):
        await pipeline.run()
