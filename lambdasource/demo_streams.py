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


class DemoKinesis:
    """moto's Kinesis server on a free loopback port (:mod:`..embedded_kinesis`), one stream
    of ``partitions`` shards, one aiobotocore client kept open for the puts."""

    kind = "kinesis"

    def __init__(self) -> None:
        self.server: Any = None
        self.client: Any = None
        self._clients: contextlib.AsyncExitStack | None = None
        self.stream = ""

    def config(self) -> Any:
        from .embedded_kinesis import CREDENTIALS, REGION
        from .sources.kinesis.config import KinesisConfig

        return KinesisConfig(
            endpoint_url=self.server.endpoint_url,
            region=REGION,
            access_key_id=CREDENTIALS["aws_access_key_id"],
            secret_access_key=CREDENTIALS["aws_secret_access_key"],
        )

    async def start(self, name: str, partitions: int) -> None:
        from aiobotocore.session import get_session

        from .embedded_kinesis import EmbeddedKinesis, create_stream

        self.server = EmbeddedKinesis().start()
        self.stream = name
        self._clients = contextlib.AsyncExitStack()
        self.client = await self._clients.enter_async_context(
            get_session().create_client("kinesis", **self.server.client_kwargs())
        )
        await create_stream(self.client, name, partitions)

    async def stop(self) -> None:
        clients, self._clients = self._clients, None
        if clients is not None:
            with contextlib.suppress(Exception):
                await clients.aclose()
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def describe(self) -> str:
        return f"kinesis: moto at {self.server.endpoint_url}, stream {self.stream!r}"

    async def put(self, table: pa.Table) -> None:
        from .embedded_kinesis import put_json

        await put_json(self.client, self.stream, table, KEY)

    def archiver(self, writer: Any, schema: pa.Schema, **options: Any) -> Any:
        from lake.kinesis_archiver import KinesisArchiver

        return KinesisArchiver(
            self.stream,
            writer,
            "event_time",
            config=self.config(),
            schema=schema,
            stop_at="latest",
            **options,
        )

    def source(self, schema: pa.Schema, **options: Any) -> Any:
        import lambdasource as ls

        return ls.KinesisStream(
            self.stream,
            time_column="event_time",
            format="json",
            schema=schema,
            config=self.config(),
            **options,
        )


def demo_stream(kind: str) -> DemoStream:
    """The backend for ``--stream kind``."""
    if kind == "kafka":
        return DemoKafka()
    if kind == "kinesis":
        return DemoKinesis()
    from .errors import ConfigError

    raise ConfigError(f"demo: --stream must be kafka or kinesis, got {kind!r}")
