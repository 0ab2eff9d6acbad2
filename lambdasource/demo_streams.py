"""The demo's stream side: the embedded Kafka broker (Tansu) or an embedded Kinesis endpoint.

A backend starts its service, creates the stream (``partitions`` partitions or shards), puts JSON
rows keyed by ``user_id``, builds the archiver that lands them in a lake and the source that reads
them, and stops everything it started. ``lambdasource demo --stream kafka|kinesis`` picks one; the
rest of the demo is the same job.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import pyarrow as pa

KEY = "user_id"


class DemoStream(Protocol):
    kind: str  # "kafka" | "kinesis"

    async def start(self, name: str, partitions: int) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str: ...

    async def put(self, table: pa.Table) -> None:
        """Put ``table``'s rows as JSON keyed by ``user_id``, in table order per key."""

    def archiver(self, writer: Any, schema: pa.Schema, **options: Any) -> Any:
        """The ``lake`` archiver of this stream into ``writer`` (``stop_at="latest"``)."""

    def source(self, schema: pa.Schema, **options: Any) -> Any:
        """The stream as a source (KafkaStream / KinesisStream) with the JSON ``schema``."""


class DemoKafka:
    """Tansu on a free loopback port, one topic, one producer kept open."""

    kind = "kafka"

    def __init__(self) -> None:
        self.broker: Any = None
        self.producer: Any = None
        self.topic = ""

    async def start(self, name: str, partitions: int) -> None:
        from aiokafka import AIOKafkaProducer

        from .embedded import EmbeddedBroker, create_topic

        self.broker = EmbeddedBroker().start()
        self.topic = name
        await create_topic(self.broker.bootstrap_servers, name, partitions)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.broker.bootstrap_servers,
            linger_ms=20,
            max_batch_size=1 << 20,
            acks=1,
        )
        await self.producer.start()

    async def stop(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        broker, self.broker = self.broker, None
        if broker is not None:
            broker.stop()

    def describe(self) -> str:
        return f"kafka: broker {self.broker.bootstrap_servers}, topic {self.topic!r}"

    async def put(self, table: pa.Table) -> None:
        from .embedded import send_json

        chunk = 50_000
        for first in range(0, table.num_rows, chunk):
            await send_json(self.producer, self.topic, table.slice(first, chunk), KEY)

    def archiver(self, writer: Any, schema: pa.Schema, **options: Any) -> Any:
        from lake.archiver import Archiver

        return Archiver(
            self.broker.bootstrap_servers,
            self.topic,
            writer,
            "event_time",
            schema=schema,
            stop_at="latest",
            **options,
        )

    def source(self, schema: pa.Schema, **options: Any) -> Any:
        import lambdasource as ls

        return ls.KafkaStream(
            self.topic,
            bootstrap_servers=self.broker.bootstrap_servers,
            time_column="event_time",
            format="json",
            schema=schema,
            **options,
        )


def demo_stream(kind: str) -> DemoStream:
    """The backend for ``--stream kind``."""
    if kind == "kafka":
        return DemoKafka()
    from .errors import ConfigError

    raise ConfigError(f"demo: --stream must be kafka or kinesis, got {kind!r}")
