"""The stream's fetch fast path (:mod:`lambdasource.sources.kafka.fetch_records`) against
aiokafka's own ``getmany``, on Tansu and on Apache Kafka (transactions: Tansu refuses producer ids).

Oracle: two consumers with the same settings read the same static topic, one through
``getmany``, one through :class:`BatchFetcher`, partition by partition with a small record cap
(so caps fall inside batches and on their ends) and small fetches; every non-empty call's
records (offset, timestamp, key, value, partition, topic) and the consumer's ``position()``
after it must be identical, and so must the final positions (past control batches and aborted
transactions). A KafkaStream over a transactional topic read ``read_committed`` delivers exactly
the committed values. The guard: aiokafka 0.14's internals are accepted; a changed mirrored
function or a deserializer turns the fast path off with a warning, and the stream still reads
everything through getmany.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer import fetcher as aiokafka_fetcher

import lambdasource as ls
from lambdasource.sources.kafka import fetch_records
from lambdasource.sources.kafka.fetch_records import BatchFetcher, unavailable_reason
from tests.services.apache_kafka import ApacheKafkaService
from tests.services.kafka import KafkaService


def _value(group: int, i: int) -> bytes | None:
    if (group * 7 + i) % 23 == 0:
        return None  # a tombstone
    return b'{"g":%d,"i":%d,"pad":"%s"}' % (group, i, b"x" * ((group * 13 + i) % 40))


def _key(group: int, i: int) -> bytes | None:
    if i % 3 == 0 and _value(group, i) is not None:
        return None
    return b"k%d" % (i % 5)


async def _produce_groups(
    bootstrap: str, topic: str, partitions: int, groups: int, **options: Any
) -> dict[int, int]:
    """Groups of 1..40 records per partition, each group flushed: batches of many sizes; the
    end offset per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, **options)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        for group in range(groups):
            sent = []
            for p in range(partitions):
                for i in range(1 + (group * 11 + p * 5) % 40):
                    sent.append(
                        await producer.send(
                            topic,
                            _value(group, i),
                            key=_key(group, i),
                            partition=p,
                            timestamp_ms=1_700_000_000_000 + group * 1000 + i,
                        )
                    )
            for meta in await asyncio.gather(*sent):
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


Rows = list[tuple[Any, ...]]


def _rows(records: Any) -> Rows:
    return [(r.offset, r.timestamp, r.key, r.value, r.partition, r.topic) for r in records]


async def _read_all(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    fast: bool,
    isolation: str = "read_uncommitted",
    start: int = 0,
    cap: int = 7,
    ends: dict[int, int] | None = None,
) -> dict[int, tuple[Rows, int]]:
    """Per partition (one after the other, calls capped at ``cap`` records): every record read
    and the final position (past trailing control batches), read up to ``ends`` (default: the
    broker's end offsets — Tansu's lag behind the records written)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        enable_auto_commit=False,
        auto_offset_reset="none",
        max_partition_fetch_bytes=2048,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start)
        if ends is None:
            ends = {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
        fetcher = BatchFetcher.for_consumer(consumer, topic) if fast else None
        assert (fetcher is not None) == fast
        read: dict[int, tuple[Rows, int]] = {}
        for tp in tps:
            rows: Rows = []
            deadline = time.monotonic() + 30
            while await consumer.position(tp) < ends[tp.partition]:
                assert time.monotonic() < deadline, f"{tp}: stuck at {await consumer.position(tp)}"
                if fetcher is not None:
                    got: dict[Any, Any] = await fetcher.getmany(tp, timeout_ms=200, max_records=cap)
                else:
                    got = await consumer.getmany(tp, timeout_ms=200, max_records=cap)
                records = got.get(tp, [])
                assert len(records) <= cap
                rows += _rows(records)
            read[tp.partition] = (rows, await consumer.position(tp))
        return read
    finally:
        await consumer.stop()


Fetch = tuple[TopicPartition, bytes, list[Any], int, tuple[Any, ...]]


def _capture_fetches(monkeypatch: pytest.MonkeyPatch) -> list[Fetch]:
    """Record every fetch response aiokafka turns into a PartitionRecords (its batches' bytes,
    aborted transactions, fetch offset and settings), to replay it through both paths."""
    fetches: list[Fetch] = []
    data: dict[int, tuple[Any, bytes]] = {}
    memory_records = aiokafka_fetcher.MemoryRecords
    init = aiokafka_fetcher.PartitionRecords.__init__

    def records_of(raw: bytes) -> Any:
        records = memory_records(raw)
        data[id(records)] = (records, bytes(raw))
        return records

    def capture(self: Any, tp: Any, records: Any, aborted: Any, offset: int, *rest: Any) -> None:
        fetches.append((tp, data[id(records)][1], list(aborted or []), offset, rest))
        init(self, tp, records, aborted, offset, *rest)

    monkeypatch.setattr(aiokafka_fetcher, "MemoryRecords", records_of)
    monkeypatch.setattr(aiokafka_fetcher.PartitionRecords, "__init__", capture)
    return fetches


def _replay(fetch: Fetch, cap: int) -> None:
    """One fetch response taken in calls of ``cap`` records by aiokafka's iterator (as its
    getall does) and by the fast path: the same records and ``next_fetch_offset`` per call."""
    tp, raw, aborted, offset, rest = fetch
    make = aiokafka_fetcher.PartitionRecords
    theirs = make(tp, aiokafka_fetcher.MemoryRecords(raw), list(aborted), offset, *rest)
    ours = make(tp, aiokafka_fetcher.MemoryRecords(raw), list(aborted), offset, *rest)
    while True:
        want = list(itertools.islice(theirs, cap))
        got, exhausted = fetch_records._take(ours, tp, cap)
        assert (_rows(got), ours.next_fetch_offset) == (_rows(want), theirs.next_fetch_offset)
        assert exhausted == (len(want) < cap)
        if exhausted:
            return


def _same_reads(
    bootstrap: str,
    topic: str,
    partitions: int,
    monkeypatch: pytest.MonkeyPatch,
    **options: Any,
) -> dict[int, tuple[Rows, int]]:
    """Both paths read the same records and end at the same positions; every fetch response
    the fast path took replays identically, call by call, at several caps."""
    slow = asyncio.run(_read_all(bootstrap, topic, partitions, fast=False, **options))
    with monkeypatch.context() as patch:
        fetches = _capture_fetches(patch)
        quick = asyncio.run(_read_all(bootstrap, topic, partitions, fast=True, **options))
    assert quick == slow
    assert fetches
    for fetch in fetches:
        for cap in (1, 3, 7, 1000):
            _replay(fetch, cap)
    return slow


@pytest.mark.kafka
def test_batch_fetcher_reads_and_positions_as_getmany_on_tansu(
    kafka: KafkaService, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = kafka.new_topic(partitions=2)
    ends = asyncio.run(_produce_groups(kafka.bootstrap, topic, 2, groups=12))
    for start, cap in ((0, 7), (5, 1), (3, 1000)):  # 5, 3: inside the first batch
        read = _same_reads(kafka.bootstrap, topic, 2, monkeypatch, start=start, cap=cap, ends=ends)
        assert all(len(rows) > 100 for rows, _ in read.values())


async def _produce_transactions(bootstrap: str, topic: str) -> list[bytes]:
    """Committed and aborted transactions between plain records; the values a read_committed
    reader must see, in order."""
    committed: list[bytes] = []
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-txn")
    await plain.start()
    await txn.start()
    try:
        for round_ in range(8):
            for i in range(1 + round_ * 3):
                value = b"plain-%d-%d" % (round_, i)
                await plain.send_and_wait(topic, value, partition=0)
                committed.append(value)
            abort = round_ % 3 == 1
            async with txn.transaction() if not abort else _Aborting(txn):
                for i in range(2 + round_ * 5):
                    value = b"txn-%d-%d" % (round_, i)
                    await txn.send(topic, value, partition=0)
                    if not abort:
                        committed.append(value)
    finally:
        await txn.stop()
        await plain.stop()
    return committed


class _Aborting:
    """A transaction that is aborted at its end."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def __aenter__(self) -> None:
        await self.producer.begin_transaction()

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.abort_transaction()


@pytest.mark.apache_kafka
def test_batch_fetcher_skips_aborted_transactions_as_getmany(
    apache_kafka: ApacheKafkaService, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = apache_kafka.new_topic(partitions=1)
    committed = asyncio.run(_produce_transactions(apache_kafka.bootstrap, topic))
    for isolation in ("read_committed", "read_uncommitted"):
        for cap in (3, 1000):
            read = _same_reads(
                apache_kafka.bootstrap, topic, 1, monkeypatch, isolation=isolation, cap=cap
            )
            values = [row[3] for row in read[0][0]]
            if isolation == "read_committed":
                assert values == committed
            else:
                assert len(values) > len(committed)

    stream = ls.KafkaStream(
        topic,
        apache_kafka.bootstrap,
        format="raw",
        stop_at="latest",
        max_batch_records=5,
        consumer_options={"isolation_level": "read_committed"},
    )
    rows = asyncio.run(_collect(stream))
    assert stream._batch_fetcher is None  # closed
    assert Counter(rows) == Counter(committed)


class _Rows:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        self.values += batch.column("value").to_pylist()

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        return None

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        raise AssertionError(f"dead letter at {position}: {reason}")

    async def barrier_point(self) -> None:
        return None


async def _collect(stream: ls.KafkaStream, used: list[bool] | None = None) -> list[bytes]:
    out = _Rows()
    await stream.open()
    try:
        if used is not None:
            used.append(stream._batch_fetcher is not None)
        await stream.drive(out)
    finally:
        await stream.close()
    return out.values


@pytest.mark.kafka
def test_guard_accepts_aiokafka_014_and_falls_back_to_getmany(
    kafka: KafkaService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    topic = kafka.new_topic(partitions=2)
    values = [b"v%d" % i for i in range(500)]
    kafka.produce(topic, values)

    async def reason(**options: Any) -> str | None:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, **options)
        await consumer.start()
        try:
            return unavailable_reason(consumer)
        finally:
            await asyncio.sleep(0.01)  # aiokafka's stop() fails on a task that never ran
            await consumer.stop()

    assert asyncio.run(reason()) is None  # the internals of the aiokafka this was written for
    assert "deserializer" in (asyncio.run(reason(value_deserializer=bytes)) or "")

    used: list[bool] = []
    rows = asyncio.run(_collect(_raw_stream(kafka, topic), used))
    assert used == [True] and Counter(rows) == Counter(values)

    # an aiokafka whose mirrored code differs: one warning, then getmany reads everything
    monkeypatch.setitem(fetch_records.MIRRORED_DIGESTS, "FetchResult.getall", "0" * 16)
    used.clear()
    with caplog.at_level(logging.WARNING, logger="lambdasource.kafka"):
        rows = asyncio.run(_collect(_raw_stream(kafka, topic), used))
    assert used == [False] and Counter(rows) == Counter(values)
    warnings = [r.getMessage() for r in caplog.records if "getmany" in r.getMessage()]
    assert len(warnings) == 1 and "FetchResult.getall differs" in warnings[0]


def _raw_stream(kafka: KafkaService, topic: str) -> ls.KafkaStream:
    return ls.KafkaStream(
        topic, kafka.bootstrap, format="raw", stop_at="latest", max_batch_records=64
    )


def test_lite_records_read_as_consumer_records() -> None:
    """What the emitter reads of a fetch: length, indexing from either end, iteration, slices —
    each record with its topic and partition."""
    kind = fetch_records.record_type("topic-a", 3)
    rows: list[fetch_records.Row] = [(10, 1000, None, b"a"), (12, 1001, b"k", None)]
    records = fetch_records.LiteRecords(rows, kind)
    assert len(records) == 2
    assert records[-1].offset == 12 and records[-1].key == b"k" and records[-1].value is None
    assert [r.value for r in records] == [b"a", None]
    assert [(r.topic, r.partition, r.offset, r.timestamp) for r in records[:1]] == [
        ("topic-a", 3, 10, 1000)
    ]
    assert fetch_records.record_type("topic-a", 3) is kind
