"""One shard's GetRecords loop: :class:`ShardReader`.

Positions follow the Kafka model (see the package docstring): ``position`` is the next sequence
number to emit, i.e. the last read + 1; a reader resumes at ``p`` with ``AFTER_SEQUENCE_NUMBER``
of ``p - 1`` (``TRIM_HORIZON`` when ``p - 1`` lies before the shard's sequence range).

Invariants:

- at most one GetRecords per ``min_interval`` (default 0.2 s: Kinesis' 5 calls per second per
  shard), measured from the start of the previous call;
- throttling (``ProvisionedThroughputExceededException``, ``LimitExceededException``) is waited
  out with capped exponential backoff with jitter and counted (``throttled``); it never loses
  the iterator;
- an expired iterator (``ExpiredIteratorException``, 5 minutes unused on real Kinesis) is replaced
  by ``AFTER_SEQUENCE_NUMBER`` of the last record read — or the original seek when nothing was
  read — and counted (``iterators_renewed``): no record is skipped or read twice;
- ``ended`` is decided without relying on GetRecords to end a closed shard's iterator (moto never
  does; real Kinesis answers with no ``NextShardIterator``): the shard is closed (ListShards gave
  its ending sequence number, learned *before* the read was sent) and the read reached it —
  a record at or beyond the ending sequence number, or a caught-up empty read
  (``MillisBehindLatest`` 0). No record enters a closed shard, so a caught-up read that started
  after the closure was known has seen everything.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from botocore.exceptions import ClientError

from ...errors import ConfigError, StreamError
from .calls import EXPIRED, THROTTLING, backoff_delay, describe_failure, error_code, is_transient
from .shards import Shard

SEEK_KINDS = ("trim_horizon", "latest", "position", "time")


class KinesisRecord(NamedTuple):
    """A Kinesis record with the attribute names of aiokafka's ConsumerRecord that the Kafka
    emitter reads: ``partition`` is the shard number, ``offset`` the sequence number (any size),
    ``timestamp`` the approximate arrival time in ms, ``key`` the partition key (UTF-8)."""

    value: bytes
    key: bytes
    partition: int
    offset: int
    timestamp: int


@dataclass
class ShardFetch:
    """One GetRecords answer: its records (in sequence order), how far behind the tip the shard
    is, and whether the shard is now read to its end (see the module docstring)."""

    records: list[KinesisRecord]
    millis_behind_latest: int
    ended: bool


@dataclass
class ShardReader:
    """Reads one shard (not thread-safe; one task per reader). ``where`` names it in errors."""

    client: Any
    stream: str
    shard: Shard
    endpoint: str | None = None  # how errors name it (default: the client's endpoint URL)
    retries: int = 5
    limit: int = 10_000
    min_interval: float = 0.2
    seed: int = 0
    position: int | None = None  # next sequence number to emit (None: nothing read yet)
    ended: bool = False
    calls: int = 0
    records: int = 0
    throttled: int = 0
    iterators_renewed: int = 0
    millis_behind_latest: int | None = None
    _iterator: str | None = None
    _seek: tuple[str, int] = ("trim_horizon", 0)
    _next_call_at: float = 0.0
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed * 1_000_003 + self.shard.number)
        if self.endpoint is None:
            meta = getattr(self.client, "meta", None)
            self.endpoint = str(getattr(meta, "endpoint_url", None) or "Kinesis")
        if self.limit < 1 or self.limit > 10_000:
            raise ConfigError(f"{self.where}: GetRecords limit must be 1..10000, got {self.limit}")

    @property
    def where(self) -> str:
        return f"stream={self.stream} shard={self.shard.shard_id}"

    def update_shard(self, shard: Shard) -> None:
        """A newer listing of the same shard (it may have closed since)."""
        if shard.number != self.shard.number:
            raise ValueError(f"{self.where}: update with another shard {shard.shard_id}")
        self.shard = shard

    async def seek(self, kind: str, value: int = 0) -> None:
        """Position the reader: ``"trim_horizon"``, ``"latest"``, ``"position"`` (``value``: the
        next sequence number to read) or ``"time"`` (``value``: µs since the epoch, the first
        record that arrived at or after it: AT_TIMESTAMP)."""
        if kind not in SEEK_KINDS:
            raise ConfigError(f"{self.where}: seek kind must be one of {SEEK_KINDS}, got {kind!r}")
        self._seek = (kind, int(value))
        self.position = int(value) if kind == "position" else None
        self.ended = False
        self._iterator = await self._call(self._new_iterator, "GetShardIterator")
        if (
            kind == "position"
            and self.shard.ending_sequence is not None
            and int(value) > self.shard.ending_sequence
        ):
            self.ended = True  # resumed beyond a closed shard's last record

    def reposition(self, position: int) -> None:
        """Move to ``position`` (the next sequence number to read) without a call: the next
        :meth:`read` asks for the iterator."""
        self._seek = ("position", int(position))
        self.position = int(position)
        self._iterator = None
        ending = self.shard.ending_sequence
        self.ended = ending is not None and int(position) > ending

    def _iterator_request(self) -> dict[str, Any]:
        """GetShardIterator's arguments for the current position (or the original seek)."""
        request: dict[str, Any] = {"StreamName": self.stream, "ShardId": self.shard.shard_id}
        if self.position is not None:
            after = self.position - 1
            if after < self.shard.starting_sequence:
                request["ShardIteratorType"] = "TRIM_HORIZON"
            else:
                request["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
                request["StartingSequenceNumber"] = str(after)
            return request
        kind, value = self._seek
        if kind == "time":
            request["ShardIteratorType"] = "AT_TIMESTAMP"
            request["Timestamp"] = datetime.fromtimestamp(value / 1e6, tz=UTC)
        else:
            request["ShardIteratorType"] = "LATEST" if kind == "latest" else "TRIM_HORIZON"
        return request

    async def _new_iterator(self) -> str:
        response = await self.client.get_shard_iterator(**self._iterator_request())
        return str(response["ShardIterator"])

    async def read(self) -> ShardFetch:
        """One GetRecords (after waiting for the shard's call budget); see the module docstring
        for throttling, renewal and ``ended``."""
        if self.ended:
            return ShardFetch([], 0, True)
        closed_before = self.shard.ending_sequence
        response = await self._call(self._get_records, "GetRecords")
        number = self.shard.number
        fetched = [
            KinesisRecord(
                value=item["Data"],
                key=str(item.get("PartitionKey", "")).encode(),
                partition=number,
                offset=int(item["SequenceNumber"]),
                timestamp=_millis(item.get("ApproximateArrivalTimestamp")),
            )
            for item in response.get("Records", [])
        ]
        behind = int(response.get("MillisBehindLatest", 0) or 0)
        self.millis_behind_latest = behind
        self.records += len(fetched)
        if fetched:
            self.position = fetched[-1].offset + 1
        next_iterator = response.get("NextShardIterator")
        self._iterator = next_iterator
        if next_iterator is None:
            self.ended = True  # real Kinesis: the closed shard is read to its end
        elif closed_before is not None and (
            (fetched and fetched[-1].offset >= closed_before) or (not fetched and behind == 0)
        ):
            self.ended = True
        return ShardFetch(fetched, behind, self.ended)

    async def _get_records(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = await self._new_iterator()
        delay = self._next_call_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._next_call_at = time.monotonic() + self.min_interval
        self.calls += 1
        try:
            response: dict[str, Any] = await self.client.get_records(
                ShardIterator=self._iterator, Limit=self.limit
            )
        except ClientError as exc:
            if error_code(exc) == EXPIRED:
                self._iterator = None  # the next attempt asks for a fresh one
            raise
        return response

    async def _call(self, attempt: Any, what: str) -> Any:
        """``await attempt()`` until it succeeds: throttling backs off (counted), an expired
        iterator is renewed (counted), transient failures are retried ``retries`` times;
        anything else is a StreamError naming stream, shard and sequence number."""
        throttled = failed = 0
        while True:
            try:
                return await attempt()
            except Exception as exc:
                code = error_code(exc)
                if code in THROTTLING:
                    self.throttled += 1
                    await asyncio.sleep(backoff_delay(throttled, self._rng))
                    throttled += 1
                    continue
                if code == EXPIRED:
                    self.iterators_renewed += 1
                    continue
                if is_transient(exc) and failed < self.retries:
                    await asyncio.sleep(backoff_delay(failed, self._rng))
                    failed += 1
                    continue
                where = f"{self.where} sequence={self.position}"
                error = StreamError(f"{what}: {describe_failure(str(self.endpoint), where, exc)}")
                error.retriable = is_transient(exc)
                raise error from exc

    def metrics(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "records": self.records,
            "throttled": self.throttled,
            "iterators_renewed": self.iterators_renewed,
            "millis_behind_latest": self.millis_behind_latest,
            "position": self.position,
            "ended": self.ended,
        }


def _millis(value: Any) -> int:
    """ApproximateArrivalTimestamp (a datetime from botocore, or epoch seconds) → ms."""
    if value is None:
        return 0
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return round(value.timestamp() * 1000)
    return round(float(value) * 1000)


async def first_retained(reader: ShardReader, max_calls: int = 20) -> int | None:
    """The sequence number of the shard's first retained record (None: it holds none), read from
    TRIM_HORIZON with a probe reader (real Kinesis may answer empty before the first record,
    so it reads on while the shard reports being behind, at most ``max_calls`` times)."""
    await reader.seek("trim_horizon")
    for _ in range(max_calls):
        fetch = await reader.read()
        if fetch.records:
            return fetch.records[0].offset
        if fetch.ended or fetch.millis_behind_latest == 0:
            return None
    return None
