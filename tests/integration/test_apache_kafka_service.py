"""Smoke test of the Apache Kafka test service (tests/services/apache_kafka.py).

Also pins what Apache Kafka answers correctly where Tansu does not (DESIGN §6): ``end_offsets`` is
the exact end right after producing, and ``offsets_for_times`` gives the first offset whose
record timestamp is >= the asked time (None past the last record).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.services import apache_kafka as service_module
from tests.services.apache_kafka import ApacheKafkaService, ApacheKafkaUnavailable

pytestmark = pytest.mark.apache_kafka

BASE_MS = 1_700_000_000_000


async def read_all(bootstrap: str, topic: str, ends: dict[int, int]) -> dict[int, list[bytes]]:
    """Every value of ``topic`` up to ``ends`` (partition -> end offset), per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: dict[int, list[bytes]] = {p: [] for p in ends}
        async with asyncio.timeout(30):
            while any(len(got[p]) < ends[p] for p in ends):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    got[tp.partition].extend(r.value for r in records)
        return got
    finally:
        await consumer.stop()


def test_topics_partitions_produce_consume_delete(apache_kafka: ApacheKafkaService) -> None:
    topic = apache_kafka.new_topic(partitions=1)
    first = [f"a{i}".encode() for i in range(50)]
    assert apache_kafka.produce(topic, first) == [(0, i) for i in range(50)]

    apache_kafka.add_partitions(topic, 3)
    second = [f"b{i}".encode() for i in range(20)]
    assert apache_kafka.produce(topic, second, partition=2) == [(2, i) for i in range(20)]

    got = asyncio.run(read_all(apache_kafka.bootstrap, topic, {0: 50, 1: 0, 2: 20}))
    assert got == {0: first, 1: [], 2: second}

    apache_kafka.delete_topic(topic)
    assert topic not in apache_kafka.topics


async def offsets_answers(bootstrap: str, topic: str) -> tuple[Any, Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        ends = await consumer.end_offsets([tp])
        times = {
            ask: await consumer.offsets_for_times({tp: ask})
            for ask in (0, BASE_MS, BASE_MS + 10_500, BASE_MS + 99_000, BASE_MS + 99_001)
        }
        return ends[tp], {
            ask: (None if r[tp] is None else r[tp].offset) for ask, r in times.items()
        }
    finally:
        await consumer.stop()


def test_end_offsets_and_offsets_for_times_are_right(apache_kafka: ApacheKafkaService) -> None:
    """Apache Kafka answers both exactly (Tansu: end lags, times use the broker's write time)."""
    topic = apache_kafka.new_topic(partitions=1)
    stamps = [BASE_MS + 1_000 * i for i in range(100)]  # record i at BASE + i s
    apache_kafka.produce(topic, [b"x"] * 100, timestamps_ms=stamps)
    end, by_time = asyncio.run(offsets_answers(apache_kafka.bootstrap, topic))
    assert end == 100
    assert by_time == {
        0: 0,
        BASE_MS: 0,
        BASE_MS + 10_500: 11,  # first record at or after the time
        BASE_MS + 99_000: 99,
        BASE_MS + 99_001: None,  # past the last record
    }


def test_missing_java_or_maven_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LAMBDASOURCE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no java, no mvn
    with pytest.raises(
        ApacheKafkaUnavailable, match=r"needs Java 17\+ \(`java` not on PATH\)"
    ) as err:
        ApacheKafkaService.start()
    assert "\n" not in str(err.value)
    with pytest.raises(ApacheKafkaUnavailable, match=r"needs Maven \(`mvn` not on PATH\)") as err:
        service_module.fetch_jars()
    assert "\n" not in str(err.value)


def test_unreachable_maven_central_is_a_one_line_error(tmp_path: Path) -> None:
    """Offline with an empty local repository stands in for an unreachable Maven Central."""
    with pytest.raises(ApacheKafkaUnavailable, match="could not fetch Apache Kafka") as err:
        service_module.fetch_jars(
            service_module.KAFKA_VERSION,
            mvn_args=["-o", f"-Dmaven.repo.local={tmp_path / 'm2'}"],
            cache=tmp_path / "cache",
        )
    assert "\n" not in str(err.value)
    assert "No plugin found" in str(err.value)  # Maven's own reason, not a bare "[ERROR]"
    assert not list((tmp_path / "cache").glob("kafka-*/jars"))  # no half cache left behind
