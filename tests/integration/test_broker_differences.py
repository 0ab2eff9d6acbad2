"""Every behaviour in which Tansu and Apache Kafka 4 differ that lambdasource meets, pinned on both.

Each test asserts what each broker does (``EXPECTED[broker.name]`` or a branch on it), so a broker
that changes its behaviour fails here, by name, before a product test fails obscurely. What the
product does about each difference is named in the test's docstring.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, RecordsToDelete
from aiokafka.errors import IncompatibleBrokerVersion, KafkaConnectionError, KafkaError

import lambdasource as ls
from lambdasource.embedded import create_topic
from lambdasource.sources.kafka.positions import topic_partitions
from lambdasource.sources.kafka.stream import KafkaStream
from tests.services.brokers import Broker

BASE_MS = 1_700_000_000_000


async def new_topic(broker: Broker, partitions: int = 1) -> str:
    return await asyncio.to_thread(broker.new_topic, partitions)


async def consumer(broker: Broker) -> AIOKafkaConsumer:
    started = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await started.start()
    return started


async def admin(broker: Broker) -> AIOKafkaAdminClient:
    started = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
    await started.start()
    return started


async def test_offsets_for_times(broker: Broker) -> None:
    """Apache Kafka answers from record timestamps (first offset at or after the time; None past
    the last record); Tansu from broker write time: offset 0 for any older time, and for a time
    past every record. positions.offset_for_time verifies the answer either way and searches
    when it fails (test_kafka_stream: verified on Apache Kafka, searched on Tansu)."""
    topic = await new_topic(broker)
    stamps = [BASE_MS + 1000 * i for i in range(200)]
    await broker.aproduce(topic, [b"%d" % i for i in range(200)], partition=0, timestamps_ms=stamps)
    tp = TopicPartition(topic, 0)
    c = await consumer(broker)
    try:
        inside = (await c.offsets_for_times({tp: BASE_MS + 150_500}))[tp]
        past = (await c.offsets_for_times({tp: BASE_MS + 10**9}))[tp]
    finally:
        await c.stop()
    if broker.is_apache:
        assert inside is not None and inside.offset == 151 and inside.timestamp == BASE_MS + 151_000
        assert past is None
    else:
        assert inside is not None and inside.offset == 0
        assert past is not None and past.offset == 0


async def test_end_offsets(broker: Broker) -> None:
    """Apache Kafka's end_offsets is the end right after an acknowledged produce; Tansu's stays
    behind (the last batch's base offset + 1, as if a batch were one record), also a second
    later. KafkaStream takes end offsets from a fetch's highwater, which both answer right: a
    bounded stream reads every record on both."""
    topic = await new_topic(broker)
    await broker.aproduce(topic, [b"x"] * 50, partition=0)
    await broker.aproduce(topic, [b"y"] * 30, partition=0)
    tp = TopicPartition(topic, 0)
    c = await consumer(broker)
    try:
        first = (await c.end_offsets([tp]))[tp]
        await asyncio.sleep(1.0)
        later = (await c.end_offsets([tp]))[tp]
        c.assign([tp])
        c.seek(tp, 79)
        await c.getmany(tp, timeout_ms=2000)
        highwater = c.highwater(tp)
    finally:
        await c.stop()
    assert highwater == 80  # the fetch response is right on both
    if broker.is_apache:
        assert first == later == 80
    else:
        assert first == later and 50 < first < 80
    stream = KafkaStream(topic, broker.bootstrap, format="raw", stop_at="latest")
    pipeline = ls.Pipeline()
    sink = pipeline.source(stream).sink(ls.CollectSink())
    assert isinstance(sink, ls.CollectSink)
    await pipeline.run()
    assert stream.ranges == {0: (0, 80)} and sink.table().num_rows == 80


async def test_metadata_for_untracked_topics(broker: Broker) -> None:
    """A consumer's ``partitions_for_topic`` answers from its own metadata view: on Apache Kafka
    that covers only topics the consumer tracks (None for an existing topic), Tansu answers every
    topic. positions.topic_partitions asks a fresh metadata request (right on both) and leaves
    the consumer's view as it was."""
    topic = await new_topic(broker, 3)
    c = await consumer(broker)
    try:
        view = c.partitions_for_topic(topic)
        fresh = await topic_partitions(c, topic)
        tracked = c.partitions_for_topic(topic)
        missing = await topic_partitions(c, f"{topic}-missing")
    finally:
        await c.stop()
    assert fresh == {0, 1, 2} and missing is None
    assert view == (None if broker.is_apache else {0, 1, 2})
    assert tracked == view  # the consumer's own view is unchanged


async def test_create_partitions(broker: Broker) -> None:
    """Apache Kafka adds partitions to a topic (CreatePartitions); Tansu does not advertise the
    API, so aiokafka refuses before sending. Partition discovery is therefore tested on Apache
    Kafka only (tests/edges/test_partitions_added.py)."""
    topic = await new_topic(broker, 1)
    client = await admin(broker)
    try:
        if broker.is_apache:
            response = await client.create_partitions({topic: NewPartitions(3)})
            assert [error[1] for error in response.topic_errors] == [0]
        else:
            with pytest.raises(IncompatibleBrokerVersion, match="CreatePartitions"):
                await client.create_partitions({topic: NewPartitions(3)})
    finally:
        await client.close()
    c = await consumer(broker)
    try:
        partitions = await topic_partitions(c, topic)
    finally:
        await c.stop()
    assert partitions == ({0, 1, 2} if broker.is_apache else {0})


async def test_delete_records(broker: Broker) -> None:
    """Apache Kafka deletes records below an offset (what retention does): the earliest offset
    moves and a fetch below it is out of range (KafkaStream: StreamGapError). Tansu closes the
    connection on DeleteRecords and keeps every record (it has no retention to test against)."""
    topic = await new_topic(broker)
    await broker.aproduce(topic, [b"%d" % i for i in range(100)], partition=0)
    tp = TopicPartition(topic, 0)
    client = await admin(broker)
    try:
        if broker.is_apache:
            low = await client.delete_records({tp: RecordsToDelete(50)}, timeout_ms=5000)
            assert low == {tp: 50}
        else:
            with pytest.raises(KafkaConnectionError):
                await client.delete_records({tp: RecordsToDelete(50)}, timeout_ms=5000)
    finally:
        await client.close()
    c = await consumer(broker)
    try:
        earliest = (await c.beginning_offsets([tp]))[tp]
    finally:
        await c.stop()
    assert earliest == (50 if broker.is_apache else 0)


async def test_idempotent_producer(broker: Broker) -> None:
    """Apache Kafka grants a producer id (idempotent, exactly-once sends); Tansu answers
    InitProducerId with an unknown error, so an ``enable_idempotence=True`` producer fails to
    start or to send (at once, not after a timeout)."""
    topic = await new_topic(broker)
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, enable_idempotence=True, request_timeout_ms=5000
    )
    outcome: Any
    try:
        async with asyncio.timeout(30):  # bounded on both: an answer, never a hang
            try:
                await producer.start()
                outcome = await producer.send_and_wait(topic, b"once", partition=0)
            except KafkaError as exc:
                outcome = exc
    finally:
        await producer.stop()
    if broker.is_apache:
        assert not isinstance(outcome, KafkaError) and outcome.offset == 0
    else:
        assert isinstance(outcome, KafkaError), outcome


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_time_retention_by_record_timestamp(broker: Broker) -> None:
    """Apache Kafka deletes records by time retention measured on their record timestamps: a
    record stamped 2023 is past the default 7 days at once, and the next retention check (every
    5 min by default, the first 30 s after the broker started; every 1 s on the dedicated broker
    here) deletes the whole partition, the active segment included. Tansu has no retention.
    Hence the test service turns time retention off (``log.retention.ms=-1``) and test topics on
    Apache Kafka are created with ``retention.ms=-1`` (tests/services/brokers.py)."""
    if broker.is_apache:
        from tests.services.apache_kafka import ApacheKafkaService

        service: Any = await asyncio.to_thread(
            ApacheKafkaService.start,
            # Kafka's own defaults (the test service turns time retention off)
            overrides={"log.retention.check.interval.ms": "1000", "log.retention.ms": "604800000"},
        )
        target = Broker("apache", service)
    else:
        service, target = None, broker
    try:
        kept = await asyncio.to_thread(target.new_topic, 1)  # retention.ms=-1 on Apache Kafka
        default = f"default-{kept}"
        await create_topic(target.bootstrap, default)  # the broker's default retention
        for topic in (kept, default):
            await target.aproduce(topic, [b"old"] * 10, partition=0, timestamps_ms=[BASE_MS] * 10)
        tps = [TopicPartition(kept, 0), TopicPartition(default, 0)]
        c = await consumer(target)
        try:
            # Apache Kafka's first retention check runs 30 s after its start (measured: the
            # records went 29.6 s after producing); Tansu never deletes them
            for _ in range(60 if target.is_apache else 3):
                earliest = await c.beginning_offsets(tps)
                if earliest[tps[1]] > 0:
                    break
                await asyncio.sleep(1.0)
        finally:
            await c.stop()
        assert earliest[tps[0]] == 0  # retention.ms=-1 keeps them on both
        assert earliest[tps[1]] == (10 if target.is_apache else 0)
    finally:
        if service is not None:
            await asyncio.to_thread(service.stop)
