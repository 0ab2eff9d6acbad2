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

Delivery: the producer is idempotent by default (``idempotent=None``: retried sends are never
duplicated in the log) where the broker grants producer ids; a broker that refuses InitProducerId
(Tansu) gets a plain producer, a logged warning and ``metrics()["idempotent"] = False``
(``idempotent=True`` makes that an error, ``False`` never asks). ``exactly_once=True`` (or a
``transactional_id``) ties Kafka transactions to checkpoints — a completed checkpoint commits the
rows before its barrier — so a ``read_committed`` consumer sees every row exactly once across
kill -9 and restore (protocol and proof: ``kafka_transactions.py``). It needs checkpoints (without
them, rows commit only when a bounded run ends) and a broker with transactions (Apache Kafka, not
Tansu); ``transaction_timeout`` must exceed the longest restart, or the broker aborts the
pre-committed rows and recovery fails loudly. Consumers must read with
``isolation_level="read_committed"``: ``read_uncommitted`` also shows rows of aborted
transactions (the dead run's rows after its last checkpoint, produced again by the replay).

Several writers (one sink per task, :meth:`~.base.Sink.for_task`): every task has its own
producer, and with ``exactly_once`` its own transactional id ``<transactional_id>-<task id>``
(the default base is ``lambdasource-<topic>-<sink name>``), the same on every restart and on
whichever worker owns the task next, so starting the task again fences its previous producer: a
zombie's late commit fails with ``ProducerFenced`` and its rows stay invisible to
``read_committed`` consumers. Tasks write disjoint keys (keys are co-partitioned with the stream),
so last-write-wins per key still follows the task's order.

Connecting: ``open()`` starts the producer within ``connect_timeout`` (``security``: TLS/SASL, a
:class:`~lambdasource.KafkaSecurity`); when that fails (broker down, refusing, accepting TCP and
never answering, an untrusted certificate, a wrong password) the producer is stopped again and a
one-line :class:`~lambdasource.errors.SinkError` names the broker(s) and the cause
(:func:`~lambdasource.kafka_security.diagnose_connect_failure`). Nothing stays open.
"""

from __future__ import annotations

import asyncio
import logging
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
from .kafka_transactions import CheckpointTransactions, await_producer_id
from .upsert import DELETED, ApplyResult, RetriableSinkError, UpsertSink

log = logging.getLogger("lambdasource.sinks")

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
        idempotent: bool | None = None,
        exactly_once: bool = False,
        transactional_id: str | None = None,
        transaction_timeout: Duration = "15min",
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
        self.idempotent = idempotent
        self._idempotence: bool | None = None  # what the broker granted (None: not asked yet)
        self._transactions: CheckpointTransactions | None = None
        # the job's transactional id; a task's is ``<it>-<task id>`` (see ``for_task``)
        self.base_transactional_id: str | None = None
        if exactly_once or transactional_id is not None:
            self.base_transactional_id = transactional_id or f"lambdasource-{topic}-{self.name}"
            timeout_ms = parse_duration(transaction_timeout, name="transaction_timeout") // 1000
            self._transaction_timeout_ms = int(timeout_ms)
            self._transactions = self._new_transactions(self.base_transactional_id)

    def _new_transactions(self, transactional_id: str) -> CheckpointTransactions:
        return CheckpointTransactions(
            transactional_id=transactional_id,
            topic=self.topic,
            sink=self.name,
            transaction_timeout_ms=self._transaction_timeout_ms,
            start_producer=self._start_producer,
            client_options=self._client_options,
            timeout=self.connect_timeout,
        )

    def _fresh_for_task(self, task_id: str) -> None:
        """A task's own producer; with ``exactly_once`` its own transactional id
        ``<transactional_id>-<task_id>``: stable across restarts and rebalances, so the task's
        next owner fences the previous one's producer (a zombie's late commit fails)."""
        super()._fresh_for_task(task_id)
        self._producer = None
        self._idempotence = None
        if self.base_transactional_id is not None:
            self._transactions = self._new_transactions(f"{self.base_transactional_id}-{task_id}")

    @property
    def exactly_once(self) -> bool:
        return self._transactions is not None

    def _client_options(self) -> dict[str, Any]:
        """Connection options for a plain aiokafka client or admin client."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            **(self.security.client_options() if self.security else {}),
        }

    async def open(self) -> None:
        """Start the producer (idempotent where granted; transactional with ``exactly_once``,
        after settling a restored checkpoint's transaction); on failure stop it again and raise a
        one-line SinkError naming the broker(s) and the cause (retriable when the connection may
        come back)."""
        if self._transactions is not None:
            await self._transactions.open()
            return
        if self._producer is not None:
            return
        user_chose = "enable_idempotence" in self.producer_options
        if self.idempotent is False or user_chose or self._idempotence is False:
            self._producer = await self._start_producer({})
            return
        from aiokafka.errors import BrokerResponseError

        try:
            producer = await self._start_producer({"enable_idempotence": True})
            try:
                await await_producer_id(producer, self.connect_timeout)
            except BaseException:
                await producer.stop()
                raise
        except Exception as exc:
            refusal = exc if isinstance(exc, BrokerResponseError) else exc.__cause__
            if not isinstance(refusal, BrokerResponseError):
                raise  # not an answer to InitProducerId: the connection failed
            if self.idempotent:
                raise SinkError(
                    f"sink={self.name} topic={self.topic}: idempotent=True, but the broker(s) "
                    f"{self._servers()} refused a producer id: {type(refusal).__name__}"
                ) from exc
            log.warning(
                "sink=%s topic=%s: the broker(s) %s refused a producer id (%s); producing "
                "without idempotence (a retried send may be duplicated in the log)",
                self.name,
                self.topic,
                self._servers(),
                type(refusal).__name__,
            )
            self._idempotence = False
            self._producer = await self._start_producer({})
            return
        self._idempotence = True
        self._producer = producer

    async def _start_producer(self, extra: dict[str, Any]) -> Any:
        """A started producer with the sink's options plus ``extra``; on failure it is stopped
        again and a one-line SinkError names the broker(s) and the cause."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        options: dict[str, Any] = {
            "acks": "all",
            "linger_ms": 5,
            **(self.security.client_options() if self.security else {}),
            **self.producer_options,
            **extra,
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
        return producer

    def _servers(self) -> str:
        servers = self.bootstrap_servers
        return servers if isinstance(servers, str) else ",".join(servers)

    async def close(self) -> None:
        if self._transactions is not None:
            await self._transactions.close()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _reset(self) -> None:
        await self.close()

    def _is_transient(self, exc: BaseException) -> bool:
        from aiokafka.errors import KafkaError

        if self._transactions is not None:
            return False  # a new producer would abort the open transaction: fail, restore
        if isinstance(exc, KafkaError):
            return bool(getattr(exc, "retriable", False))
        return isinstance(exc, RetriableSinkError | ConnectionError | TimeoutError)

    # checkpoint hooks (exactly_once) --------------------------------------------------------------

    async def snapshot(self, checkpoint_id: int) -> Any:
        if self._transactions is None:
            return None
        return await self._transactions.precommit(checkpoint_id)

    def restore(self, state: Any) -> None:
        if self._transactions is not None:
            self._transactions.restore(state)

    async def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        if self._transactions is not None:
            await self._transactions.checkpoint_complete(checkpoint_id)

    async def on_checkpoint_failed(self, checkpoint_id: int) -> None:
        if self._transactions is not None:
            self._transactions.checkpoint_failed(checkpoint_id)

    async def on_end(self) -> None:
        if self._transactions is not None:
            await self._transactions.finish()

    def metrics(self) -> dict[str, Any]:
        figures = super().metrics()
        figures["idempotent"] = self.exactly_once or self._idempotence
        figures["exactly_once"] = self.exactly_once
        if self._transactions is not None:
            figures.update(self._transactions.metrics())
        return figures

    async def _apply(self, table: pa.Table) -> ApplyResult:
        if self._transactions is not None:
            producer = await self._transactions.producer_for_rows()
        else:
            await self.open()
            producer = self._producer
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
                await producer.send(
                    self.topic, payload, key=key_bytes, headers=[(VERSION_HEADER, header)]
                )
            )
        await asyncio.gather(*futures)
        n_deleted = sum(1 for gone in deleted if gone)
        return ApplyResult(written=table.num_rows - n_deleted, deletes=n_deleted)
