"""``getmany`` without aiokafka's per-record work: :class:`BatchFetcher`.

aiokafka's ``getmany`` builds one ``ConsumerRecord`` per message through a Python generator
(``PartitionRecords._unpack_records``) — about three quarters of what consuming costs in Python.
:class:`BatchFetcher` takes the same completed fetches from the consumer's fetcher, walks their
record batches whole (the C reader, fields taken in C loops) and returns per partition a
:class:`LiteRecords` sequence: plain tuples, read as :class:`LiteRecord` (``ConsumerRecord``'s
field names).

Invariants (what makes it a drop-in for ``consumer.getmany``): the same records, in the same
order, for the same calls; the consumer's ``position()`` after each call equals getmany's
(positions move exactly as aiokafka's generator moves ``next_fetch_offset``: past control
batches, aborted transactions under ``read_committed``, compacted gaps, and a record-count cap
mid-batch); errors are raised at the same point. It mirrors aiokafka 0.14's private
``Fetcher.fetched_records`` / ``FetchResult.getall`` / ``PartitionRecords._unpack_records``:
:meth:`BatchFetcher.for_consumer` checks those internals (attributes and the source text of the
three mirrored functions) and returns ``None`` — the caller then uses ``getmany``, with a one-line
warning — when anything differs.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cache, partial
from operator import attrgetter
from typing import Any, ClassVar, NamedTuple, overload

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import ConsumerStoppedError, CorruptRecordException

log = logging.getLogger("lambdasource.kafka")


class _RecordFields(NamedTuple):
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class LiteRecord(_RecordFields):
    """A record as the stream reads it: the fields of aiokafka's ``ConsumerRecord`` it uses, by
    the same names. ``topic`` and ``partition`` are class attributes of the per-partition
    subclass (:func:`record_type`), so a record holds only its own fields."""

    __slots__ = ()
    topic: ClassVar[str]
    partition: ClassVar[int]


@cache
def record_type(topic: str, partition: int) -> type[LiteRecord]:
    """The :class:`LiteRecord` subclass of one partition (``topic``, ``partition`` set)."""
    return type(
        "LiteRecord",
        (LiteRecord,),
        {"__slots__": (), "topic": topic, "partition": partition},
    )


_FIELDS = attrgetter(*LiteRecord._fields)  # one C call per record: a tuple of its fields

Row = tuple[int, int, bytes | None, bytes | None]
"""A record's fields as a plain tuple, :class:`LiteRecord`'s order."""


class LiteRecords(Sequence[LiteRecord]):
    """One partition's records of a call: plain tuples of their fields, each a
    :class:`LiteRecord` when read (indexing, iterating). Plain tuples of numbers and bytes are
    soon untracked by the garbage collector: a fetch waiting in decode does not make each
    collection walk its records (kept as LiteRecords, 300k records cost 0.1 s more of GC)."""

    __slots__ = ("_make", "rows")

    def __init__(self, rows: list[Row], kind: type[LiteRecord]) -> None:
        self.rows = rows
        self._make: Callable[[Row], LiteRecord] = partial(tuple.__new__, kind)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> LiteRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[LiteRecord]: ...

    def __getitem__(self, index: int | slice) -> LiteRecord | Sequence[LiteRecord]:
        if isinstance(index, slice):
            return [self._make(row) for row in self.rows[index]]
        return self._make(self.rows[index])

    def __iter__(self) -> Iterator[LiteRecord]:
        return map(self._make, self.rows)


# The aiokafka functions BatchFetcher mirrors, by the first 16 hex digits of the SHA-256 of their
# source (aiokafka 0.14): any change there (a new release) turns the fast path off rather than
# letting it diverge from getmany.
MIRRORED_DIGESTS = {
    "PartitionRecords._unpack_records": "b803e6d46480732c",
    "FetchResult.getall": "3e717e30de5068d5",
    "Fetcher.fetched_records": "be4348896b9b66af",
    "AIOKafkaConsumer.getmany": "bc6d248e42a4e9d9",
}


def _source_digest(function: Any) -> str | None:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):  # no source shipped: nothing to compare
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


_FETCH_RESULT: Any = getattr(aiokafka_fetcher, "FetchResult", None)
_PARTITION_RECORDS: Any = getattr(aiokafka_fetcher, "PartitionRecords", None)
_READ_COMMITTED: Any = getattr(aiokafka_fetcher, "READ_COMMITTED", None)


def _mirrored_functions() -> dict[str, Any]:
    """The mirrored functions (None where aiokafka lacks one)."""
    fetcher_class = getattr(aiokafka_fetcher, "Fetcher", None)
    return {
        "PartitionRecords._unpack_records": getattr(_PARTITION_RECORDS, "_unpack_records", None),
        "FetchResult.getall": getattr(_FETCH_RESULT, "getall", None),
        "Fetcher.fetched_records": getattr(fetcher_class, "fetched_records", None),
        "AIOKafkaConsumer.getmany": getattr(AIOKafkaConsumer, "getmany", None),
    }


_NEEDED = {  # attributes read or called, per object
    "consumer": ("_closed", "_coordinator", "_subscription", "_fetcher", "_max_poll_records"),
    "fetcher": (
        "_records",
        "_subscriptions",
        "_closed",
        "_notify",
        "_wait_consume_future",
        "_create_fetch_waiter",
        "_key_deserializer",
        "_value_deserializer",
        "_check_crcs",
    ),
    "FetchResult": ("check_assignment", "_update_position", "has_more"),
    "PartitionRecords": ("_consume_aborted_up_to", "_contains_abort_marker"),
}


def unavailable_reason(consumer: AIOKafkaConsumer) -> str | None:
    """Why :class:`BatchFetcher` cannot read for ``consumer`` (a started consumer), or ``None``."""
    import aiokafka

    fetcher: Any = getattr(consumer, "_fetcher", None)
    objects = {
        "consumer": consumer,
        "fetcher": fetcher,
        "FetchResult": _FETCH_RESULT,
        "PartitionRecords": _PARTITION_RECORDS,
    }
    if _READ_COMMITTED is None:
        return f"aiokafka {aiokafka.__version__}: no READ_COMMITTED"
    for what, names in _NEEDED.items():
        missing = [name for name in names if not hasattr(objects[what], name)]
        if missing:
            return f"aiokafka {aiokafka.__version__}: {what} has no {', '.join(missing)}"
    if fetcher._key_deserializer is not None or fetcher._value_deserializer is not None:
        return "the consumer has a key or value deserializer"
    for name, function in _mirrored_functions().items():
        if _source_digest(function) != MIRRORED_DIGESTS[name]:
            return f"aiokafka {aiokafka.__version__}: {name} differs from aiokafka 0.14's"
    return None


class _Cursor:
    """Where a partially taken ``PartitionRecords`` stands: the rest of the current batch's
    records and the batch's next offset (applied once they are taken, as aiokafka's generator
    does on resuming after the batch's last record)."""

    __slots__ = ("batch_end", "rest")

    def __init__(self) -> None:
        self.rest: list[Row] = []
        self.batch_end: int | None = None


_CURSOR = "_lambdasource_cursor"  # attribute of a PartitionRecords this module reads from


class BatchFetcher:
    """``getmany`` for one started consumer, returning :class:`LiteRecord` lists (see module
    docstring). Use :meth:`for_consumer`; every read of the consumer's buffered fetches must go
    through it once it has taken part of one (``getmany`` would restart that fetch's records)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer: Any = consumer
        self._fetcher: Any = self._consumer._fetcher

    @classmethod
    def for_consumer(cls, consumer: AIOKafkaConsumer, where: str) -> BatchFetcher | None:
        """The fast path for ``consumer``, or ``None`` (logged once: ``getmany`` is used)."""
        reason = unavailable_reason(consumer)
        if reason is not None:
            log.warning("%s: reading through aiokafka's getmany (slower): %s", where, reason)
            return None
        return cls(consumer)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, LiteRecords]:
        """``consumer.getmany(*partitions, timeout_ms=…, max_records=…)`` (aiokafka 0.14's
        ``AIOKafkaConsumer.getmany`` and ``Fetcher.fetched_records``)."""
        consumer = self._consumer
        if consumer._closed:
            raise ConsumerStoppedError()
        if max_records is not None and max_records < 1:
            raise ValueError("`max_records` must be a positive Integer")
        consumer._coordinator.check_errors()
        cap = max_records or consumer._max_poll_records or sys.maxsize  # None: no cap
        with consumer._subscription.fetch_context():
            return await self._fetched(partitions, timeout_ms / 1000, cap)

    async def _fetched(
        self, partitions: tuple[TopicPartition, ...], wait_s: float, max_records: int
    ) -> dict[TopicPartition, LiteRecords]:
        fetcher = self._fetcher
        timeout = wait_s
        while True:
            if fetcher._subscriptions.reassignment_in_progress:
                await fetcher._subscriptions.wait_for_assignment()
            start_time = time.monotonic()
            drained: dict[TopicPartition, LiteRecords] = {}
            for tp in list(fetcher._records.keys()):
                if partitions and tp not in partitions:
                    if not fetcher._subscriptions.is_assigned(tp):
                        del fetcher._records[tp]
                    continue
                res_or_error = fetcher._records[tp]
                if type(res_or_error) is _FETCH_RESULT:
                    records = _getall(res_or_error, tp, max_records)
                    if not res_or_error.has_more():
                        del fetcher._records[tp]
                        fetcher._notify(fetcher._wait_consume_future)
                    if not records:
                        continue
                    drained[tp] = records
                    max_records -= len(records)
                    if max_records == 0:
                        break
                elif drained:
                    return drained
                else:
                    del fetcher._records[tp]
                    fetcher._notify(fetcher._wait_consume_future)
                    res_or_error.check_raise()
            if drained or not timeout:
                return drained
            waiter = fetcher._create_fetch_waiter()
            done, pending = await asyncio.wait([waiter], timeout=timeout)
            if not done or fetcher._closed:
                if pending:
                    pending.pop().cancel()
                return {}
            if waiter.done():
                waiter.result()
            timeout = max(0.0, timeout - (time.monotonic() - start_time))


def _getall(result: Any, tp: TopicPartition, max_records: int) -> LiteRecords:
    """``FetchResult.getall(max_records)``: up to ``max_records`` records, the position moved
    to the fetch's next offset (the whole fetch taken: the result has no more)."""
    if not result.check_assignment(tp) or not result.has_more():
        return LiteRecords([], record_type(tp.topic, tp.partition))
    records = result._partition_records
    taken, exhausted = _take(records, tp, max_records)
    result._update_position()
    if exhausted:
        result._partition_records = None
    return taken


def _take(records: Any, tp: TopicPartition, max_records: int) -> tuple[LiteRecords, bool]:
    """Up to ``max_records`` records of a ``PartitionRecords`` and whether it has no more;
    ``records.next_fetch_offset`` moves as aiokafka's ``_unpack_records`` moves it."""
    cursor: _Cursor | None = records.__dict__.get(_CURSOR)
    if cursor is None:
        cursor = _Cursor()
        setattr(records, _CURSOR, cursor)
        records._records_iterator = None  # aiokafka's generator must not run as well
    taken: list[Row] = []
    batches = records._records
    while True:
        if cursor.rest:
            room = max_records - len(taken)
            if room <= 0:
                break
            rest = cursor.rest
            if room >= len(rest):
                part, cursor.rest = rest, []
            else:
                part, cursor.rest = rest[:room], rest[room:]
            taken += part
            records.next_fetch_offset = part[-1][0] + 1
            continue
        if len(taken) >= max_records:
            break
        if cursor.batch_end is not None:  # the batch's records are all taken
            records.next_fetch_offset = cursor.batch_end
            cursor.batch_end = None
        if not batches.has_next():
            return LiteRecords(taken, record_type(tp.topic, tp.partition)), True
        batch = batches.next_batch()
        if records._check_crcs and not batch.validate_crc():
            raise CorruptRecordException(f"Invalid CRC - {tp}")
        if records._isolation_level == _READ_COMMITTED and batch.producer_id is not None:
            records._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and records._contains_abort_marker(batch):
                records._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in records._aborted_producers:
                records.next_fetch_offset = batch.next_offset
                continue
        if batch.is_control_batch:
            records.next_fetch_offset = batch.next_offset
            continue
        rest = list(map(_FIELDS, batch))  # no aiokafka record outlives this line
        floor = records.next_fetch_offset
        if rest and rest[0][0] < floor:  # offsets rise within a batch
            rest = [r for r in rest if r[0] >= floor]
        cursor.rest = rest
        cursor.batch_end = batch.next_offset
    return LiteRecords(taken, record_type(tp.topic, tp.partition)), False
