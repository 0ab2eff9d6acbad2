"""Exactly-once into Kafka: one Kafka transaction per checkpoint interval, committed by the checkpoint.

Two phases (``KafkaUpsert(exactly_once=True)``):

1. **Pre-commit** at barrier ``n``: the sink's ``flush()`` has sent every row since the last
   commit inside the open transaction ``T`` and the broker acknowledged them; ``snapshot(n)`` adds
   a *commit marker* to ``T`` (the offset ``n`` of partition 0 of the sink's topic for the consumer
   group :func:`marker_group`, via ``send_offsets_to_transaction``: it becomes visible atomically
   with ``T``'s rows) and returns ``T``'s handle ``(transactional id, producer id, epoch)``,
   which checkpoint ``n`` stores. No row is written after the barrier until ``T``'s fate is known
   (rows buffer in the sink; its ``_apply`` waits), so ``T`` holds exactly the rows before barrier
   ``n`` that no earlier checkpoint committed.
2. **Commit** when checkpoint ``n`` is durable (its manifest written; ``on_checkpoint_complete``):
   ``T`` is committed and its producer stopped. The next rows go into a new transaction of a *new*
   producer: every transaction gets its own producer epoch (InitProducerId bumps it), so a handle
   names one transaction and can never commit a later one (the broker answers
   ``INVALID_PRODUCER_EPOCH``). If checkpoint ``n`` is abandoned or not written
   (``on_checkpoint_failed``), ``T`` stays open and a later checkpoint commits it with later rows.

Recovery (a run restored from checkpoint ``n`` that carries handle ``H``), before the producer
starts: ``EndTxn(commit)`` with ``H``. The broker commits ``T`` if the dead run had not (killed
between the checkpoint write and the commit), answers success again if it had and nothing newer
started, or ``INVALID_PRODUCER_EPOCH`` when the epoch moved on — then the marker decides: a
marker ``>= n`` proves ``T`` committed; a smaller one means the broker aborted ``T`` (the
transaction timeout passed before the restart) and its rows are lost, which is a
:class:`~lambdasource.errors.SinkError`, never silence. Then the new producer's InitProducerId with
the same transactional id fences the dead run's producer and aborts its open transaction (rows
after checkpoint ``n``), which the replay from ``n`` produces again. Hence every row is in exactly
one committed transaction: rows up to barrier ``n`` are committed by ``n`` (or by recovery),
rows after it are aborted and replayed.

A run whose input ends commits its last transaction in ``on_end`` with an *end marker* (offset
``last checkpoint id + 1``, metadata ``"end"``): no checkpoint covers those rows, so a run that
restores a checkpoint older than the end marker (a kill between that commit and the exit, or
running a finished job again) would produce them twice — it fails at ``open`` instead, saying so.
On an error the
open transaction is aborted unless it awaits its checkpoint (then recovery decides). Retries of a
failed write would need a new producer, which aborts the transaction: errors fail the run instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import SinkError

log = logging.getLogger("lambdasource.sinks")

RETRY_SECONDS = 0.2
END = "end"  # commit-marker metadata of a run's last transaction (no checkpoint covers it)
# EndTxn answers that mean "ask again shortly"
_RETRY_CODES = {
    14: "COORDINATOR_LOAD_IN_PROGRESS",
    15: "COORDINATOR_NOT_AVAILABLE",
    16: "NOT_COORDINATOR",
    51: "CONCURRENT_TRANSACTIONS",
}
# EndTxn answers that mean "this epoch's transaction is over": the commit marker decides how
_ENDED_CODES = {
    47: "INVALID_PRODUCER_EPOCH",
    48: "INVALID_TXN_STATE",
    49: "INVALID_PRODUCER_ID_MAPPING",
    90: "PRODUCER_FENCED",
}


@dataclass(frozen=True)
class TransactionHandle:
    """What a checkpoint stores to commit a pre-committed transaction after a crash."""

    transactional_id: str
    producer_id: int
    producer_epoch: int


def marker_group(transactional_id: str) -> str:
    """The consumer group whose committed offset is the last checkpoint committed into Kafka."""
    return f"{transactional_id}.lambdasource-commits"


def transaction_manager(producer: Any) -> Any:
    """aiokafka's transaction manager of ``producer`` (private in aiokafka, present from 0.5 to
    0.14 — tested with 0.14): a release without it is a clear error, not an AttributeError deep
    in a checkpoint."""
    manager = getattr(producer, "_txn_manager", None)
    sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if manager is None or sender is None or not hasattr(manager, "producer_epoch"):
        import aiokafka

        raise SinkError(
            "an idempotent or exactly-once KafkaUpsert needs aiokafka's producer internals "
            f"(_txn_manager, _sender), which aiokafka {aiokafka.__version__} does not have "
            "(tested with 0.14); install aiokafka>=0.11,<0.15"
        )
    return manager


async def await_producer_id(producer: Any, within: float) -> None:
    """Wait until ``producer`` (idempotent or transactional) holds a producer id; raise the
    broker's error when it refuses InitProducerId (Tansu answers UNKNOWN) — aiokafka reports that
    only through its sender task, so both are watched (aiokafka 0.14 internals)."""
    manager = transaction_manager(producer)
    sender = producer._sender.sender_task
    waiting = asyncio.ensure_future(manager.wait_for_pid())
    try:
        done, _ = await asyncio.wait(
            {waiting, sender}, timeout=within, return_when="FIRST_COMPLETED"
        )
    finally:
        waiting.cancel()
    if waiting in done:
        return
    if sender in done:
        error = sender.exception()
        raise (
            error if error is not None else SinkError("the producer stopped before InitProducerId")
        )
    raise TimeoutError(f"no producer id from the broker within {within:g}s")


class CheckpointTransactions:
    """The transaction life cycle of one exactly-once KafkaUpsert (see the module docstring).

    ``start_producer(options)`` starts an aiokafka producer with extra options (the sink's
    connection and security settings included); ``client_options()`` are the connection
    options for the plain client and admin client that recovery uses."""

    def __init__(
        self,
        *,
        transactional_id: str,
        topic: str,
        sink: str,
        transaction_timeout_ms: int,
        start_producer: Callable[[dict[str, Any]], Awaitable[Any]],
        client_options: Callable[[], dict[str, Any]],
        timeout: float,
    ) -> None:
        self.transactional_id = transactional_id
        self.topic = topic
        self.sink = sink
        self.transaction_timeout_ms = transaction_timeout_ms
        self._start_producer = start_producer
        self._client_options = client_options
        self.timeout = timeout
        self._producer: Any = None
        self._in_transaction = False
        self._pending: tuple[int, TransactionHandle] | None = None  # pre-committed, awaiting n
        self._outcome: asyncio.Future[None] | None = None
        self._given_up: set[int] = set()  # checkpoints reported failed (maybe before their barrier)
        self._restored: tuple[int, TransactionHandle | None] | None = None
        self._last_checkpoint = 0  # the newest checkpoint id this run saw (or restored)
        self.committed = 0
        self.aborted = 0
        self.recovery: str | None = None

    # restore / open -----------------------------------------------------------------------------

    def restore(self, state: Any) -> None:
        """Take the handle checkpoint ``state["checkpoint"]`` pre-committed (if any)."""
        transaction = state.get("transaction")
        handle = TransactionHandle(**transaction) if transaction else None
        self._restored = (int(state["checkpoint"]), handle)
        self._last_checkpoint = int(state["checkpoint"])

    async def open(self) -> None:
        """Settle the restored checkpoint's transaction, then start the producer (fencing)."""
        if self._producer is not None:
            return
        if self._restored is not None:
            checkpoint_id, handle = self._restored
            if handle is not None:
                self.recovery = await self._recover(checkpoint_id, handle)
            marker, metadata = await self._marker()
            if metadata == END and marker is not None and marker > checkpoint_id:
                raise SinkError(
                    f"sink={self.sink} topic={self.topic}: a run already ended after checkpoint "
                    f"{checkpoint_id} and committed its output (end marker {marker}); restoring "
                    "it would write those rows twice. Start fresh (restore=None) to produce "
                    "everything again"
                )
            self._restored = None
            log.info(
                "sink=%s: transaction of checkpoint %d: %s", self.sink, checkpoint_id, self.recovery
            )
        await self._new_producer()

    async def _new_producer(self) -> None:
        from aiokafka.errors import BrokerResponseError

        options = {
            "transactional_id": self.transactional_id,
            "transaction_timeout_ms": self.transaction_timeout_ms,
        }
        try:
            producer = await self._start_producer(options)
            try:
                await await_producer_id(producer, self.timeout)
            except BaseException:
                await producer.stop()
                raise
        except Exception as exc:
            refusal = exc if isinstance(exc, BrokerResponseError) else exc.__cause__
            if not isinstance(refusal, BrokerResponseError):
                raise  # not an answer to InitProducerId: the connection failed
            raise SinkError(
                f"sink={self.sink} topic={self.topic}: exactly_once needs Kafka transactions; "
                f"the broker refused InitProducerId for transactional id "
                f"{self.transactional_id!r}: {type(refusal).__name__}"
            ) from exc
        self._producer = producer

    # writing ------------------------------------------------------------------------------------

    async def producer_for_rows(self) -> Any:
        """The producer, inside an open transaction that no checkpoint has pre-committed."""
        if self._outcome is not None:
            await asyncio.shield(self._outcome)
        if self._producer is None:
            await self._new_producer()
        if not self._in_transaction:
            await self._producer.begin_transaction()
            self._in_transaction = True
        return self._producer

    async def precommit(self, checkpoint_id: int) -> dict[str, Any]:
        """Barrier ``checkpoint_id`` (rows flushed): add the commit marker and return what the
        checkpoint stores (its id; the handle, None when no row was written since the last
        commit)."""
        self._last_checkpoint = max(self._last_checkpoint, checkpoint_id)
        if not self._in_transaction or checkpoint_id in self._given_up:
            return {"checkpoint": checkpoint_id, "transaction": None}
        from aiokafka import TopicPartition

        producer = self._producer
        await producer.send_offsets_to_transaction(
            {TopicPartition(self.topic, 0): checkpoint_id}, marker_group(self.transactional_id)
        )
        manager = transaction_manager(producer)
        handle = TransactionHandle(
            self.transactional_id, manager.producer_id, manager.producer_epoch
        )
        self._pending = (checkpoint_id, handle)
        self._outcome = asyncio.get_running_loop().create_future()
        return {"checkpoint": checkpoint_id, "transaction": asdict(handle)}

    async def checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is durable: commit the transaction it pre-committed."""
        if self._pending is None or self._pending[0] != checkpoint_id:
            return
        from aiokafka.errors import InvalidProducerEpoch, ProducerFenced

        try:
            await self._producer.commit_transaction()
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            raise SinkError(
                f"sink={self.sink} topic={self.topic}: fenced: another producer started with "
                f"transactional id {self.transactional_id!r} (the task runs elsewhere now), so "
                f"this instance's transaction of checkpoint {checkpoint_id} is aborted; its rows "
                "come from the new owner's replay"
            ) from exc
        self.committed += 1
        self._in_transaction = False
        producer, self._producer = self._producer, None
        await producer.stop()  # the next transaction gets a new producer epoch
        self._settle()

    def checkpoint_failed(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` never completes: its transaction stays open for later."""
        self._given_up.add(checkpoint_id)
        if self._pending is not None and self._pending[0] == checkpoint_id:
            self._settle()

    def _settle(self) -> None:
        self._pending = None
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(None)
        self._outcome = None

    async def finish(self) -> None:
        """The input ended: commit the last transaction (after a pending checkpoint's)."""
        if self._outcome is not None:
            await asyncio.shield(self._outcome)
        if self._in_transaction:
            from aiokafka import TopicPartition

            await self._producer.send_offsets_to_transaction(
                {TopicPartition(self.topic, 0): (self._last_checkpoint + 1, END)},
                marker_group(self.transactional_id),
            )
            await self._producer.commit_transaction()
            self.committed += 1
            self._in_transaction = False

    async def close(self) -> None:
        """Stop the producer; abort its transaction unless a checkpoint may commit it."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            if self._in_transaction and self._pending is None:
                async with asyncio.timeout(self.timeout):
                    await producer.abort_transaction()
                self.aborted += 1
        finally:
            self._in_transaction = False
            await producer.stop()

    # recovery -----------------------------------------------------------------------------------

    async def _recover(self, checkpoint_id: int, handle: TransactionHandle) -> str:
        """Commit ``handle``'s transaction if it is still open; prove it committed otherwise."""
        from aiokafka.client import AIOKafkaClient, CoordinationType
        from aiokafka.protocol.transaction import EndTxnRequest

        client = AIOKafkaClient(**self._client_options())
        deadline = time.monotonic() + self.timeout
        try:
            await client.bootstrap()
            while True:
                node = await client.coordinator_lookup(
                    CoordinationType.TRANSACTION, handle.transactional_id
                )
                request = EndTxnRequest(
                    handle.transactional_id, handle.producer_id, handle.producer_epoch, True
                )
                code = (await client.send(node, request)).error_code
                if code == 0:
                    return "committed (or already was)"
                if code in _ENDED_CODES:
                    break
                if code not in _RETRY_CODES or time.monotonic() > deadline:
                    raise SinkError(
                        f"sink={self.sink} topic={self.topic}: committing the transaction of "
                        f"checkpoint {checkpoint_id} ({handle}): the broker answered "
                        f"{_RETRY_CODES.get(code, code)}"
                    )
                await asyncio.sleep(RETRY_SECONDS)
        finally:
            await client.close()
        marker, _ = await self._marker()
        if marker is not None and marker >= checkpoint_id:
            return f"already committed ({_ENDED_CODES[code]}; commit marker {marker})"
        raise SinkError(
            f"sink={self.sink} topic={self.topic}: the transaction holding the rows up to "
            f"checkpoint {checkpoint_id} was aborted by the broker ({_ENDED_CODES[code]}, commit "
            f"marker {marker}): the restart came after transaction_timeout "
            f"({self.transaction_timeout_ms} ms); those rows are not in the topic. Restore an "
            "older checkpoint (its later rows are produced again) or rebuild the topic"
        )

    async def _marker(self) -> tuple[int | None, str]:
        """The commit marker: (offset, metadata), (None, "") when none was committed."""
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        admin = AIOKafkaAdminClient(**self._client_options())
        await admin.start()
        deadline = time.monotonic() + self.timeout
        tp = TopicPartition(self.topic, 0)
        try:
            while True:
                try:
                    offsets = await admin.list_consumer_group_offsets(
                        marker_group(self.transactional_id), partitions=[tp]
                    )
                    break
                except KafkaError as exc:  # e.g. the offsets topic is still being created
                    if not exc.retriable or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            await admin.close()
        found = offsets.get(tp)
        if found is None or found.offset < 0:
            return None, ""
        return int(found.offset), found.metadata or ""

    def metrics(self) -> dict[str, Any]:
        return {
            "transactional_id": self.transactional_id,
            "transactions_committed": self.committed,
            "transactions_aborted": self.aborted,
            "awaiting_checkpoint": self._pending[0] if self._pending else None,
            "recovery": self.recovery,
        }
