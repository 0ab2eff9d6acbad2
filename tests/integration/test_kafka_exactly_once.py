"""KafkaUpsert's delivery guarantees on a real Apache Kafka broker (and what Tansu lacks).

- The idempotent producer is on by default where the broker grants producer ids (Apache Kafka);
  Tansu refuses InitProducerId: the sink falls back, warns and reports ``idempotent: False``.
- ``exactly_once``: the two phases driven by hand (``snapshot`` = pre-commit at a barrier,
  ``on_checkpoint_complete`` = commit), a "crashed" sink left without closing, and a new sink
  restored with the checkpoint's state: the recovery commits a pre-committed transaction exactly
  once, and fences (aborts) the rows written after the checkpoint — visible to a
  ``read_uncommitted`` consumer, never to a ``read_committed`` one. A restart after the broker
  aborted the checkpoint's transaction (``transaction_timeout`` passed) is a SinkError.
- Compaction: a compacted topic (small ``segment.ms``, ``min.cleanable.dirty.ratio``) written
  through transactions (one aborted), read back after the log cleaner ran, equals the reference
  store computed by DuckDB SQL (newest version per key, deleted keys absent).

The kill -9 trials through a whole pipeline are in tests/faults/test_kafka_eos_kill.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest

from lambdasource.errors import SinkError
from lambdasource.sinks.kafka import KafkaUpsert
from tests.services.apache_kafka import ApacheKafkaService
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.apache_kafka

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.int64()), ("_deleted", pa.bool_())])


def rows(keys: list[int], version: int, deleted: bool = False) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {"k": keys, "v": [version] * len(keys), "_deleted": [deleted] * len(keys)}, schema=SCHEMA
    )


def eos_sink(bootstrap: str, topic: str, tid: str) -> KafkaUpsert:
    sink = KafkaUpsert(
        topic, "k", bootstrap, "v", exactly_once=True, transactional_id=tid, batch_rows=10**6
    )
    sink.bind(SCHEMA)
    return sink


async def settled_end(bootstrap: str, consumer: Any, tp: Any, isolation: str) -> int:
    """The end offset to read to; for read_committed, once no transaction is open or still
    writing its markers (a commit returns before its markers are written: until then the last
    stable offset lags the high watermark)."""
    from aiokafka import AIOKafkaConsumer

    end = int((await consumer.end_offsets([tp]))[tp])
    if isolation != "read_committed":
        return end
    plain = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    await plain.start()
    try:
        deadline = time.monotonic() + 20
        while end < (high := int((await plain.end_offsets([tp]))[tp])):
            assert time.monotonic() < deadline, f"{tp}: a transaction stays open below {high}"
            await asyncio.sleep(0.1)
            end = int((await consumer.end_offsets([tp]))[tp])
    finally:
        await plain.stop()
    return end


async def read_topic(
    bootstrap: str, topic: str, isolation: str, settle: bool = False
) -> list[tuple[Any, Any]]:
    """Every record of partition 0 as (key, value) decoded from JSON, up to the end the
    isolation level allows (the last stable offset for read_committed; ``settle``: once every
    transaction has ended)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        if settle:
            end = await settled_end(bootstrap, consumer, tp, isolation)
        else:
            end = int((await consumer.end_offsets([tp]))[tp])
        out: list[tuple[Any, Any]] = []
        deadline = time.monotonic() + 20
        while await consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"{topic}: stuck below offset {end}"
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                for r in records:
                    value = None if r.value is None else orjson.loads(r.value)
                    out.append((orjson.loads(r.key), value))
        return out
    finally:
        await consumer.stop()


def versions_of(records: list[tuple[Any, Any]]) -> list[tuple[int, int]]:
    return sorted((key, value["v"]) for key, value in records if value is not None)


def test_idempotent_by_default_on_apache_kafka(apache_kafka: ApacheKafkaService) -> None:
    topic = apache_kafka.new_topic()

    async def main() -> dict[str, Any]:
        sink = KafkaUpsert(topic, "k", apache_kafka.bootstrap, "v")
        sink.bind(SCHEMA)
        await sink.open()
        try:
            await sink.write(rows([1, 2], 1))
            await sink.flush()
            assert sink._producer._txn_manager.producer_id >= 0  # a broker-granted id
        finally:
            await sink.close()
        return sink.metrics()

    metrics = asyncio.run(main())
    assert metrics["idempotent"] is True and metrics["exactly_once"] is False


@pytest.mark.kafka
def test_tansu_refuses_producer_ids_fallback_and_no_exactly_once(
    kafka: KafkaService, caplog: pytest.LogCaptureFixture
) -> None:
    """Broker difference: Tansu answers InitProducerId with UNKNOWN (-1)."""
    topic = kafka.new_topic()

    async def main() -> dict[str, Any]:
        sink = KafkaUpsert(topic, "k", kafka.bootstrap, "v")
        sink.bind(SCHEMA)
        await sink.open()
        try:
            await sink.write(rows([1], 1))
            await sink.flush()
        finally:
            await sink.close()
        strict = KafkaUpsert(topic, "k", kafka.bootstrap, "v", idempotent=True)
        with pytest.raises(SinkError, match="idempotent=True, but the broker"):
            await strict.open()
        eos = eos_sink(kafka.bootstrap, topic, f"tid-{uuid.uuid4().hex[:8]}")
        with pytest.raises(SinkError, match="exactly_once needs Kafka transactions"):
            await eos.open()
        return sink.metrics()

    with caplog.at_level(logging.WARNING, logger="lambdasource.sinks"):
        metrics = asyncio.run(main())
    assert metrics["idempotent"] is False and metrics["rows_written"] == 1
    assert any("refused a producer id" in r.getMessage() for r in caplog.records)


def test_restore_commits_precommitted_transaction_once_and_fences_later_rows(
    apache_kafka: ApacheKafkaService,
) -> None:
    bootstrap, topic = apache_kafka.bootstrap, apache_kafka.new_topic()
    tid = f"tid-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        # run 1: checkpoint 1 pre-committed (rows 1..3), then "killed" before its commit
        dead = eos_sink(bootstrap, topic, tid)
        await dead.open()
        await dead.write(rows([1, 2, 3], 1))
        await dead.flush()
        state1 = await dead.snapshot(1)
        assert state1 is not None and state1["checkpoint"] == 1
        assert await read_topic(bootstrap, topic, "read_committed") == []
        assert versions_of(await read_topic(bootstrap, topic, "read_uncommitted")) == [
            (1, 1),
            (2, 1),
            (3, 1),
        ]
        # run 2 restores checkpoint 1: recovery commits the dead run's transaction
        run2 = eos_sink(bootstrap, topic, tid)
        run2.restore(state1)
        await run2.open()
        assert run2.metrics()["recovery"] == "committed (or already was)"
        committed = await read_topic(bootstrap, topic, "read_committed", settle=True)
        assert versions_of(committed) == [(1, 1), (2, 1), (3, 1)]
        # run 2 checkpoints 2 (committed), then writes rows after it and dies
        await run2.write(rows([4], 2))
        await run2.flush()
        state2 = await run2.snapshot(2)
        await run2.on_checkpoint_complete(2)
        await run2.write(rows([5, 6], 3))  # after checkpoint 2: must never become visible
        await run2.flush()
        # run 3 restores checkpoint 2: its transaction is already committed (the epoch moved
        # on, the commit marker proves it); the rows after it are aborted by the fencing
        run3 = eos_sink(bootstrap, topic, tid)
        run3.restore(state2)
        await run3.open()
        assert "already committed" in run3.metrics()["recovery"]
        await run3.write(rows([5, 6], 3))  # the replay produces them again
        await run3.flush()
        await run3.on_end()  # a bounded run's end commits its last transaction
        await run3.close()
        committed = await read_topic(bootstrap, topic, "read_committed", settle=True)
        uncommitted = await read_topic(bootstrap, topic, "read_uncommitted")
        assert versions_of(committed) == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 3), (6, 3)]
        # the aborted rows of the dead run 2 (5 and 6 once more) only read_uncommitted sees
        assert versions_of(uncommitted) == sorted([*versions_of(committed), (5, 3), (6, 3)])
        # running the finished job again from checkpoint 2 would write 5 and 6 twice: refused
        again = eos_sink(bootstrap, topic, tid)
        again.restore(state2)
        with pytest.raises(SinkError, match="already ended after checkpoint 2"):
            await again.open()
        await again.close()
        zombie_producer = run2._transactions._producer  # type: ignore[union-attr]
        with pytest.raises(Exception, match=r"(?i)fenced|epoch"):  # the zombie is fenced
            await zombie_producer.commit_transaction()
        for zombie in (dead, run2):
            zombie._transactions._pending = None  # type: ignore[union-attr]
            zombie._transactions._in_transaction = False  # type: ignore[union-attr]
            await zombie.close()

    asyncio.run(main())


def test_failed_checkpoint_keeps_the_transaction_for_the_next_one(
    apache_kafka: ApacheKafkaService,
) -> None:
    bootstrap, topic = apache_kafka.bootstrap, apache_kafka.new_topic()

    async def main() -> None:
        sink = eos_sink(bootstrap, topic, f"tid-{uuid.uuid4().hex[:8]}")
        await sink.open()
        await sink.write(rows([1], 1))
        await sink.flush()
        assert await sink.snapshot(1) is not None
        await sink.on_checkpoint_failed(1)  # checkpoint 1 was never written
        await sink.write(rows([2], 2))
        await sink.flush()  # does not wait: the transaction continues
        assert await read_topic(bootstrap, topic, "read_committed") == []
        await sink.snapshot(2)
        await sink.on_checkpoint_complete(2)
        assert versions_of(await read_topic(bootstrap, topic, "read_committed", settle=True)) == [
            (1, 1),
            (2, 2),
        ]
        await sink.close()
        assert sink.metrics()["transactions_committed"] == 1

    asyncio.run(main())


def test_restart_after_the_transaction_timeout_is_a_sink_error(
    apache_kafka: ApacheKafkaService,
) -> None:
    """A run killed after checkpoint 1 was written but before its transaction was committed, and
    restarted only after ``transaction_timeout``: the broker has aborted that transaction, so
    its rows are in no committed transaction. The restart says so (checkpoint, timeout, what to
    do) instead of going on without them."""
    bootstrap, topic = apache_kafka.bootstrap, apache_kafka.new_topic()
    tid = f"tid-{uuid.uuid4().hex[:8]}"

    def sink() -> KafkaUpsert:
        upsert = KafkaUpsert(
            topic, "k", bootstrap, "v", exactly_once=True, transactional_id=tid,
            transaction_timeout="2s", batch_rows=10**6,
        )  # fmt: skip
        upsert.bind(SCHEMA)
        return upsert

    async def main() -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        dead = sink()
        await dead.open()
        await dead.write(rows([1, 2, 3], 1))
        await dead.flush()
        state = await dead.snapshot(1)  # checkpoint 1 holds the handle; then the run dies
        # the broker aborts the timed-out transaction (its check runs every 10 s by default):
        # the abort marker makes the last stable offset reach the high watermark
        tp = TopicPartition(topic, 0)
        committed_view = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, isolation_level="read_committed"
        )
        await committed_view.start()
        try:
            await settled_end(bootstrap, committed_view, tp, "read_committed")
        finally:
            await committed_view.stop()
        assert await read_topic(bootstrap, topic, "read_committed") == []
        restarted = sink()
        restarted.restore(state)
        with pytest.raises(SinkError) as failure:
            await restarted.open()
        message = str(failure.value)
        assert "checkpoint 1 was aborted by the broker" in message, message
        assert "transaction_timeout (2000 ms)" in message, message
        await restarted.close()
        dead._transactions._pending = None  # type: ignore[union-attr]
        dead._transactions._in_transaction = False  # type: ignore[union-attr]
        await dead.close()

    asyncio.run(main())


REFERENCE_SQL = """
SELECT k, v FROM (
    SELECT *, row_number() OVER (PARTITION BY k ORDER BY v DESC, arrival DESC) AS rn FROM input
) WHERE rn = 1 AND NOT deleted ORDER BY k
"""


@pytest.mark.slow  # 15 s; the kill -9 read-committed trial stays in the default run
def test_compacted_topic_reads_back_as_the_reference_store(
    apache_kafka: ApacheKafkaService,
) -> None:
    """cleanup.policy=compact, segment.ms=100: after the log cleaner ran, the topic holds one
    record per live key (plus the active segment) and folds to the DuckDB reference store."""
    config = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "0",
    }
    bootstrap, topic = apache_kafka.bootstrap, apache_kafka.new_topic(config=config)
    keys = list(range(40))
    batches = [(keys, 1, False), (keys[::2], 2, False), (keys[::3], 3, True), (keys[:5], 4, False)]

    async def main() -> list[tuple[Any, Any]]:
        sink = eos_sink(bootstrap, topic, f"tid-{uuid.uuid4().hex[:8]}")
        await sink.open()
        for checkpoint, (ks, version, deleted) in enumerate(batches, start=1):
            await sink.write(rows(ks, version, deleted))
            await sink.flush()
            await sink.snapshot(checkpoint)
            await sink.on_checkpoint_complete(checkpoint)
            await asyncio.sleep(0.15)  # past segment.ms: the next write rolls a segment
        await sink.write(rows(keys, 99))  # a transaction that is aborted (a failed run)
        await sink.flush()
        await sink.close()
        await asyncio.sleep(0.15)
        roll = eos_sink(bootstrap, topic, f"tid-{uuid.uuid4().hex[:8]}")
        await roll.open()
        await roll.write(rows([1000], 1))  # rolls the last data segment: it can be cleaned
        await roll.flush()
        await roll.on_end()
        await roll.close()
        produced = sum(len(ks) for ks, _, _ in batches) + len(keys) + 1
        deadline = time.monotonic() + 90  # log.cleaner.backoff.ms defaults to 15 s
        while True:
            records = await read_topic(bootstrap, topic, "read_uncommitted")
            counts: dict[Any, int] = {}
            for key, _ in records:
                counts[key] = counts.get(key, 0) + 1
            if max(counts.values()) == 1 and len(records) < produced:
                return records
            assert time.monotonic() < deadline, (
                f"no compaction within 90 s: {len(records)} of {produced} records remain"
            )
            await asyncio.sleep(1)

    records = asyncio.run(main())
    arrivals = [
        (k, version, deleted, arrival)
        for arrival, (ks, version, deleted) in enumerate(batches)
        for k in ks
    ]
    con = duckdb.connect()
    con.register(
        "input",
        pa.table(
            {
                "k": [a[0] for a in arrivals],
                "v": [a[1] for a in arrivals],
                "deleted": [a[2] for a in arrivals],
                "arrival": [a[3] for a in arrivals],
            }
        ),
    )
    reference = con.sql(REFERENCE_SQL).fetchall()
    folded: dict[int, int | None] = {}
    for key, value in records:  # last write in log order wins; a tombstone removes the key
        folded[key] = None if value is None else value["v"]
    store = sorted((k, v) for k, v in folded.items() if v is not None and k != 1000)
    assert store == [(int(k), int(v)) for k, v in reference]
    # every record of the aborted transaction is gone from the compacted log
    assert all(value is None or value["v"] != 99 for _, value in records)
