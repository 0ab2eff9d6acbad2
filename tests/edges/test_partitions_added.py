"""Partitions added to a topic, and retention overtaking a reader — on Apache Kafka (issue 12).

Tansu cannot add partitions (CreatePartitions is unknown to it) and has no retention, so these
run on the Apache Kafka 4 test service. Oracle: the multiset of event ids delivered to the sink
(or archived into the lake) against the ids produced, partition by partition.

Before the fix: a stream or archiver opened on one partition never read the partitions added
later (no metadata refresh, no warning; the tests timed out waiting for their ids), and a reader
overtaken by retention jumped silently to the earliest retained offset (auto_offset_reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

import lambdasource as ls
from lake.archiver import Archiver
from lake.writer import ParquetLakeWriter
from tests.edges.test_topic_and_handoff import MINUTE, T0, events, messages
from tests.integration.ordered import SCHEMA, TIME, OrderedSink
from tests.services.apache_kafka import ApacheKafkaService

pytestmark = pytest.mark.apache_kafka

DISCOVERY = "200ms"
RETAINED_FROM = 19_000  # the retention test deletes the records before this offset


async def produce(kafka: ApacheKafkaService, topic: str, partition: int, ids: range) -> None:
    values, stamps = messages(events(ids, start=T0 + ids.start * MINUTE))
    await kafka.aproduce(topic, values, partition=partition, timestamps_ms=stamps)


async def wait_until(condition: Any, what: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def stream(kafka: ApacheKafkaService, topic: str) -> ls.KafkaStream:
    return ls.KafkaStream(
        topic,
        kafka.bootstrap,
        time_column=TIME,
        schema=SCHEMA,
        idle_timeout="300ms",
        partition_discovery=DISCOVERY,
    )


async def run_until_ids(source: Any, expected: Counter[int], grow: Any) -> OrderedSink:
    """Run ``source`` unbounded; call ``grow()`` once it delivered something; stop when every
    expected id is in (and half a second more, for late duplicates)."""
    sink = OrderedSink()
    pipeline = ls.Pipeline()
    pipeline.source(source).sink(sink)
    task = asyncio.create_task(pipeline.run(restore=None))
    try:
        await wait_until(lambda: bool(sink.ids()) or task.done(), "the first records")
        await grow()
        await wait_until(lambda: sink.ids() == expected or task.done(), "every id", 60.0)
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return sink


async def test_unbounded_stream_reads_added_partitions(apache_kafka: ApacheKafkaService) -> None:
    topic = await asyncio.to_thread(apache_kafka.new_topic, 1)
    await produce(apache_kafka, topic, 0, range(50))

    async def grow() -> None:
        await apache_kafka.aadd_partitions(topic, 3)
        await produce(apache_kafka, topic, 1, range(100, 130))
        await produce(apache_kafka, topic, 2, range(200, 220))
        await produce(apache_kafka, topic, 0, range(50, 60))

    source = stream(apache_kafka, topic)
    sink = await run_until_ids(
        source, Counter([*range(60), *range(100, 130), *range(200, 220)]), grow
    )
    assert sink.ids() == Counter([*range(60), *range(100, 130), *range(200, 220)])
    assert source.metrics()["partitions_added"] == [1, 2]


async def test_lambda_source_reads_added_partitions_aligned(
    apache_kafka: ApacheKafkaService, tmp_path: Path
) -> None:
    """Offsets handoff over an archived lake, aligned; a partition is added during the stream
    phase: its records (absent from the lake's recorded offsets: read from earliest) arrive once."""
    topic = await asyncio.to_thread(apache_kafka.new_topic, 1)
    await produce(apache_kafka, topic, 0, range(100))
    writer = ParquetLakeWriter(tmp_path / "lake", TIME)
    await Archiver(
        apache_kafka.bootstrap, topic, writer, TIME, schema=SCHEMA, stop_at="latest"
    ).run()
    await produce(apache_kafka, topic, 0, range(100, 120))

    async def grow() -> None:
        await apache_kafka.aadd_partitions(topic, 2)
        await produce(apache_kafka, topic, 1, range(120, 150))

    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA),
        stream(apache_kafka, topic),
        handoff="offsets",
        idle_timeout="300ms",
        alignment=ls.Alignment(max_drift="30m"),
    )
    sink = await run_until_ids(source, Counter(range(150)), grow)
    assert sink.ids() == Counter(range(150))


async def test_archiver_archives_added_partitions(
    apache_kafka: ApacheKafkaService, tmp_path: Path
) -> None:
    topic = await asyncio.to_thread(apache_kafka.new_topic, 1)
    await produce(apache_kafka, topic, 0, range(40))
    writer = ParquetLakeWriter(tmp_path / "lake", TIME)
    archiver = Archiver(
        apache_kafka.bootstrap,
        topic,
        writer,
        TIME,
        schema=SCHEMA,
        commit_interval="200ms",
        partition_discovery=DISCOVERY,
    )
    task = asyncio.create_task(archiver.run())
    try:
        await wait_until(lambda: archiver.metrics()["offsets"].get(0) == 40, "partition 0")
        await apache_kafka.aadd_partitions(topic, 2)
        await produce(apache_kafka, topic, 1, range(100, 125))
        await wait_until(lambda: archiver.metrics()["offsets"].get(1) == 25, "partition 1")
    finally:
        archiver.stop()
        await asyncio.wait_for(task, 30)
    lake = ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA)
    sink = OrderedSink()
    pipeline = ls.Pipeline()
    pipeline.source(lake).sink(sink)
    await pipeline.run()
    assert sink.ids() == Counter([*range(40), *range(100, 125)])
    assert writer.latest_commit() is not None
    assert writer.latest_commit().offsets == {0: 40, 1: 25}  # type: ignore[union-attr]
    assert archiver.metrics()["partitions_added"] == [1]


async def delete_before(kafka: ApacheKafkaService, topic: str, offset: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(offset)})
    finally:
        await admin.close()


async def test_retention_overtaking_the_reader_is_an_error(
    apache_kafka: ApacheKafkaService,
) -> None:
    """Records are deleted up to offset 19,000 while the stream is still reading far below it
    (tiny fetches). Before: the consumer reset itself to offset 19,000 (auto_offset_reset=
    "earliest") and the run ended without the deleted records and without a word. After:
    ``StreamGapError`` naming the partition and offset; a restart from before the deleted range
    is the same error at open, and ``allow_gaps=True`` continues at 19,000, counted."""
    topic = await asyncio.to_thread(apache_kafka.new_topic, 1)
    await produce(apache_kafka, topic, 0, range(RETAINED_FROM + 100))
    source = ls.KafkaStream(
        topic,
        apache_kafka.bootstrap,
        time_column=TIME,
        schema=SCHEMA,
        stop_at="latest",
        max_batch_records=5,
        max_partition_fetch_bytes=256,  # a record or two per fetch: thousands of round trips
    )
    sink = OrderedSink()
    pipeline = ls.Pipeline()
    pipeline.source(source).sink(sink)
    task = asyncio.create_task(pipeline.run())
    await wait_until(lambda: len(sink.ids()) >= 10 or task.done(), "the first records")
    await delete_before(apache_kafka, topic, RETAINED_FROM)
    with pytest.raises(ls.StreamGapError, match=r"partition=0 offset=\d+.*out of the partition"):
        await asyncio.wait_for(task, 60)
    assert set(sink.ids()) < set(range(RETAINED_FROM))  # what was read before is intact

    async def restart(**options: Any) -> tuple[ls.KafkaStream, OrderedSink]:
        restarted = ls.KafkaStream(
            topic, apache_kafka.bootstrap, TIME, schema=SCHEMA, stop_at="latest", **options
        )
        restarted.restore({"positions": {0: 20}, "held": {}})
        out = OrderedSink()
        pipeline = ls.Pipeline()
        pipeline.source(restarted).sink(out)
        await asyncio.wait_for(pipeline.run(), 30)
        return restarted, out

    gap = rf"partition=0: offsets 20..{RETAINED_FROM - 1} \({RETAINED_FROM - 20} records\)"
    with pytest.raises(ls.StreamGapError, match=gap):
        await restart()
    allowed, out = await restart(allow_gaps=True)
    assert out.ids() == Counter(range(RETAINED_FROM, RETAINED_FROM + 100))
    assert allowed.metrics()["missing_offsets"] == {0: [20, RETAINED_FROM]}
