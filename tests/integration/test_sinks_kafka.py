"""KafkaUpsert against both brokers (Tansu in the default run, Apache Kafka in -m slow): keyed
records, JSON values, tombstones, version header."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pyarrow as pa

from lambdasource.sinks.kafka import VERSION_HEADER, KafkaUpsert
from tests.integration.test_sinks_common import batch, reference_state, write_all
from tests.services.brokers import Broker, both_brokers

broker = both_brokers(default=("tansu",))


async def read_topic(bootstrap: str, topic: str, expected: int) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[Any] = []
        for _ in range(50):
            got = await consumer.getmany(tp, timeout_ms=200)
            records.extend(got.get(tp, []))
            if len(records) >= expected:
                break
        return records
    finally:
        await consumer.stop()


async def test_keyed_records_and_tombstones(broker: Broker) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 1)
    batches = [
        batch([1, 2, 1, 3], [1, 1, 2, 1], ["a1", "b1", "a2", "c1"]),
        batch([3, 2], [2, 2], [None, "b2"], deleted=[True, False]),
    ]
    sink = KafkaUpsert(topic, key="k", bootstrap_servers=broker.bootstrap, version="v")
    await write_all(sink, batches)
    records = await read_topic(broker.bootstrap, topic, 5)
    assert len(records) == 5  # 3 keys after coalescing the first flush, then 2
    # newest per key = last record per key in log order (what compaction would keep)
    last: dict[int, Any] = {}
    for r in records:
        last[orjson.loads(r.key)] = r
    state = {k: orjson.loads(r.value) for k, r in last.items() if r.value is not None}
    expected = reference_state(batches, ["k"], "v").to_pylist()
    assert state == {row["k"]: row for row in expected}
    assert last[3].value is None  # tombstone
    assert dict(last[2].headers)[VERSION_HEADER] == b"2"
    m = sink.metrics()
    assert (m["rows_written"], m["deletes"], m["coalesced"]) == (4, 1, 1)


async def test_composite_key_and_timestamps(broker: Broker) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 1)
    data = pa.table(
        {
            "user": [1, 1],
            "page": ["/", "/a"],
            "window_end": pa.array([1_000_000, 2_000_000], pa.timestamp("us", tz="UTC")),
            "n": [3, 4],
        }
    )
    await write_all(KafkaUpsert(topic, ["user", "page"], broker.bootstrap), [data])
    records = await read_topic(broker.bootstrap, topic, 2)
    assert sorted(orjson.loads(r.key) for r in records) == [[1, "/"], [1, "/a"]]
    value = orjson.loads(records[0].value)
    assert value["window_end"].startswith("1970-01-01T00:00:01")
