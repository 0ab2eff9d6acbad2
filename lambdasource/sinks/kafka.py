"""``ls.KafkaUpsert``: keyed records to a (compacted) Kafka topic, tombstones for deletions.

Each flush coalesces rows per key (newest version wins, as every upsert sink does), then produces
one record per key: key = the key value(s) as JSON (a scalar for one key column, an array for
several), value = the row as a JSON object (orjson; timestamps as ISO-8601 UTC), or ``None`` — a
tombstone — for a ``_deleted`` row. The version is in the value and in the ``lambdasource-version``
header. ``flush()`` waits until the broker acknowledged every record (``acks="all"``).

Limits, stated honestly: Kafka cannot compare versions, so across flushes it is **last write wins in
log order** (per key: the default partitioner sends a key to one partition, so its records stay in
order); a consumer that wants version guarding compares the header. Compaction is a topic setting
(``cleanup.policy=compact``) the sink does not create; the Tansu broker used in tests does not
compact at all, so there every version stays in the log and the newest per key is the last one.

Connecting: ``open()`` starts the producer within ``connect_timeout`` (``security``: TLS/SASL, a
:class:`~lambdasource.KafkaSecurity`); when that fails (broker down, refusing, accepting TCP and
never answering, an untrusted certificate, a wrong password) the producer is stopped again and a
one-line :class:`~lambdasource.errors.SinkError` names the broker(s) and the cause
(:func:`~lambdasource.kafka_security.diagnose_connect_failure`). Nothing stays open.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from ..errors import ConfigError, SinkError, close_after
from ..kafka_security import KafkaSecurity, diagnose_connect_failure
from ..timeutil import Duration, parse_duration
from .upsert import DELETED, ApplyResult, RetriableSinkError, UpsertSink

VERSION_HEADER = "lambdasource-version"
PROBE_TIMEOUT = 2.0  # seconds per broker for the TCP probe that explains a failed connect


def broker_addresses(bootstrap_servers: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"a:9092,[::1]:9093"`` (or a list of such) → ``[("a", 9092), ("::1", 9093)]``."""
    items = [bootstrap_servers] if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
    found = []
    for item in items:
        for server in str(item).split(","):
            host, _, port = server.strip().rpartition(":")
            if host and port.isdigit():
                found.append((host.strip("[]"), int(port)))
    return found


def os_reason(exc: OSError) -> str:
    """``Connection refused`` rather than asyncio's ``Connect call failed ('h', 1)``."""
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return str(exc.strerror or exc)
    return os.strerror(exc.errno)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Decimal):
        return str(value)  # exact; JSON numbers would round
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


class KafkaUpsert(UpsertSink):
    """Produce keyed upserts to ``topic`` at ``bootstrap_servers`` (semantics in the module doc)."""

    kind = "kafka"

    def __init__(
        self,
        topic: str,
        key: str | Sequence[str],
        bootstrap_servers: str = "127.0.0.1:9092",
        version: str | None = None,
        *,
        batch_rows: int = 10_000,
        flush_interval: Duration = "1s",
        retries: int = 5,
        producer_options: dict[str, Any] | None = None,
        connect_timeout: Duration = "30s",
        security: KafkaSecurity | None = None,
        name: str | None = None,
    ) -> None:
        if not topic:
            raise ConfigError("KafkaUpsert: topic must be a non-empty string")
        super().__init__(
            table=topic,
            key=key,
            version=version,
            batch_rows=batch_rows,
            flush_interval=flush_interval,
            retries=retries,
            name=name,
        )
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.producer_options = dict(producer_options or {})
        self.security = security
        self.connect_timeout = parse_duration(connect_timeout, name="connect_timeout") / 1e6
        self._producer: Any = None

    async def open(self) -> None:
        """Start the producer; on failure stop it again and raise a one-line SinkError naming
        the broker(s) and the cause (retriable when the connection may come back)."""
        if self._producer is not None:
            return
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        options: dict[str, Any] = {
            "acks": "all",
            "linger_ms": 5,
            **(self.security.client_options() if self.security else {}),
            **self.producer_options,
        }
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, **options)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await producer.start()
        except BaseException as exc:
            await close_after("stopping the producer", producer.stop(), exc)
            if not isinstance(exc, Exception):
                raise  # cancelled: the producer is stopped, nothing else to say
            if isinstance(exc, TimeoutError):
                what = f"no connection within connect_timeout={self.connect_timeout:g}s"
            else:
                what = f"aiokafka: {type(exc).__name__}"
            diagnosis = await diagnose_connect_failure(
                self.bootstrap_servers, self.security, self.connect_timeout
            )
            retriable = not diagnosis.permanent and (
                isinstance(exc, TimeoutError | OSError)
                or (isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)))
            )
            error = RetriableSinkError if retriable else SinkError
            raise error(
                f"sink={self.name} topic={self.topic}: cannot connect to the Kafka broker(s) "
                f"{self._servers()}: {diagnosis} ({what})"
            ) from exc
        self._producer = producer

    def _servers(self) -> str:
        servers = self.bootstrap_servers
        return servers if isinstance(servers, str) else ",".join(servers)

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _reset(self) -> None:
        await self.close()

    def _is_transient(self, exc: BaseException) -> bool:
        from aiokafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            return bool(getattr(exc, "retriable", False))
        return isinstance(exc, RetriableSinkError | ConnectionError | TimeoutError)

    async def _apply(self, table: pa.Table) -> ApplyResult:
        await self.open()
        assert self.version is not None
        cols = self.stored_columns
        keys = table.select(self.keys).to_pylist()
        values = table.select(cols).to_pylist()
        deleted = table.column(DELETED).to_pylist()
        versions = table.column(self.version).to_pylist()
        single = len(self.keys) == 1
        futures = []
        for key, value, gone, version in zip(keys, values, deleted, versions, strict=True):
            key_bytes = orjson.dumps(
                key[self.keys[0]] if single else [key[k] for k in self.keys],
                default=_json_default,
            )
            payload = None if gone else orjson.dumps(value, default=_json_default)
            header = orjson.dumps(version, default=_json_default)
            futures.append(
                await self._producer.send(
                    self.topic, payload, key=key_bytes, headers=[(VERSION_HEADER, header)]
                )
            )
        await asyncio.gather(*futures)
        n_deleted = sum(1 for gone in deleted if gone)
        return ApplyResult(written=table.num_rows - n_deleted, deletes=n_deleted)
