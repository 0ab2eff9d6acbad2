"""``ls.KafkaStream``: a Kafka topic as a source of Arrow batches with per-partition watermarks.

Reading: one aiokafka consumer, partitions assigned manually (a ``group_id`` only adds offset
commits, for observability — positions are checkpointed by the pipeline, not the group), read
through :class:`~.fetch_records.BatchFetcher` (``getmany`` without a ``ConsumerRecord`` per message;
plain ``getmany`` when aiokafka's internals differ from the version it mirrors). Each
``getmany`` result is decoded and emitted by the stream's :class:`~.emit.FetchEmitter`: per
partition one decode and one batch, JSON read on a decode thread while the loop takes the next
fetches, emitted in fetch order; malformed messages go to the dead letters with their raw value
and ``topic=… partition=… offset=…``.

Watermarks: each partition is a :class:`PartitionSplit` with a bounded-out-of-orderness generator;
the stream's watermark is the minimum over partitions that are neither idle nor finished (DESIGN
§3: idle = caught up to the fetch highwater *and* quiet for ``idle_timeout``; a paused partition is
never idle). When every live partition is idle the stream forwards their maximum, marked idle.

Positions: an explicit start offset (a restored checkpoint, ``start={partition: offset}``, the lake's
recorded offsets) is checked against the partition's retained range when the stream opens: one
beyond the partition's end (the topic was deleted and recreated) or below its earliest retained
offset (retention deleted records never read) raises :class:`StreamGapError` naming partition and
offsets (``allow_gaps=True``: below the start, continue from the earliest offset, counted). The
consumer never resets a position by itself (``auto_offset_reset="none"``): retention overtaking
the reader mid-run is the same error, not a silent jump.

Partition discovery (``partition_discovery="30s"`` by default, ``None``: off): an unbounded stream
over all of a topic's partitions looks for partitions added to the topic at that interval (the
consumer's metadata refresh) and reads a new one from its earliest offset, logging a warning
(``metrics()["partitions_added"]``); its split holds the stream's watermark back until it has
data or idles.

Bounded reads (``stop_at="latest"``): each partition stops before the end offset seen when the
stream opened (the highwater of a fetch — ``end_offsets()`` lags on some brokers); the final
watermark is the maximum event time read.

The lambda source drives the same machinery: :meth:`KafkaStream.open` takes per-partition start
overrides and a watermark floor, :meth:`KafkaStream.drive` takes a batch transform, an alignment
group and a progress callback. With a group, the rows of a fetch beyond its release bound are held
in their split (see :mod:`.split`), which is paused (``consumer.pause``) until they are out; a
split's state (position, held rows, max time seen) moves on only after the rows it emits are
out, so a barrier or a watermark emitted meanwhile sees the state before the fetch. Snapshots
are ``{"positions": {partition: next offset}, "held": {partition: rows + offsets}}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, cast

import numpy as np
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from aiokafka.structs import OffsetAndMetadata

from ...errors import ConfigError, StreamError, StreamGapError
from ...kafka_security import KafkaSecurity, diagnose_connect_failure
from ...timeutil import MS, Duration, parse_duration, to_micros
from ..base import Source, SourceOutput
from .aligned import AlignedSplits
from .decode import RECORD_TIMESTAMP, Decoder, output_schema
from .emit import DriveHooks, FetchEmitter, PendingFetch, record_position
from .fetch_records import BatchFetcher
from .positions import OffsetProber, end_offsets, offset_for_time, topic_partitions
from .split import PartitionSplit, combined_watermark, held_times

log = logging.getLogger("lambdasource.kafka")

PartitionStart = tuple[str, int]
"""``("earliest", 0)``, ``("latest", 0)``, ``("offset", n)`` or ``("time", µs)``."""


def _parse_start(start: Any) -> Callable[[int], PartitionStart]:
    if start in ("earliest", "latest"):
        return lambda p: (start, 0)
    if isinstance(start, dict):
        offsets = {int(p): int(o) for p, o in start.items()}
        return lambda p: ("offset", offsets[p]) if p in offsets else ("earliest", 0)
    if isinstance(start, datetime | int) and not isinstance(start, bool):
        micros = to_micros(start)
        return lambda p: ("time", micros)
    raise ConfigError(
        "KafkaStream: start must be 'earliest', 'latest', {partition: offset}, a datetime or "
        f"µs since the epoch, got {start!r}"
    )


_DECODE_DEPTH = 2
"""Fetches in decode at most while the loop takes more (each holds at most max_batch_records)."""


class KafkaStream(AlignedSplits, Source):
    """A Kafka topic as a source (see module docstring).

    ``time_column=None`` uses the record timestamp, as a ``timestamp`` column. ``format``:
    ``"json"`` (needs ``schema``), ``"raw"`` (a ``value`` column) or a callable decoder.
    ``start``: ``"earliest"``, ``"latest"``, ``{partition: offset}`` (others: earliest) or a time
    (datetime or µs): the first record whose *record timestamp* is at or after it, found by a
    verified lookup. ``stop_at="latest"`` makes the stream bounded. ``max_ahead`` (default
    ``"1d"``, ``None`` disables): a record whose event time is more than this after the wall clock
    when it is decoded is a dead letter, not a watermark jump that makes every later record late.
    ``security``: TLS/SASL (:class:`~lambdasource.KafkaSecurity`); a consumer that does not
    connect within ``connect_timeout`` is a one-line StreamError naming the broker and the cause.
    """

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        time_column: str | None = None,
        format: str | Decoder = "json",
        schema: pa.Schema | None = None,
        stop_at: str | None = None,
        group_id: str | None = None,
        start: Any = "earliest",
        partitions: Sequence[int] | None = None,
        out_of_orderness: Duration = "0s",
        idle_timeout: Duration = "30s",
        max_batch_records: int = 10_000,
        *,
        fetch_max_wait_ms: int = 100,
        max_partition_fetch_bytes: int = 4 * 1024 * 1024,
        fetch_max_bytes: int = 50 * 1024 * 1024,
        commit_interval: Duration = "5s",
        consumer_options: dict[str, Any] | None = None,
        name: str = "stream",
        allow_gaps: bool = False,
        partition_discovery: Duration | None = "30s",
        max_ahead: Duration | None = "1d",
        security: KafkaSecurity | None = None,
        connect_timeout: Duration = "30s",
    ) -> None:
        # the arguments as given, for copies restricted to other partitions (for_partitions)
        self._arguments = {name: value for name, value in locals().items() if name != "self"}
        if stop_at not in (None, "latest"):
            raise ConfigError(f"KafkaStream: stop_at must be None or 'latest', got {stop_at!r}")
        if max_batch_records < 1:
            raise ConfigError(
                f"KafkaStream: max_batch_records must be >= 1, got {max_batch_records}"
            )
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.connect_timeout = parse_duration(connect_timeout, name="connect_timeout") / 1e6
        self.event_time_column = time_column
        self.time_column = time_column or RECORD_TIMESTAMP
        self.format = format
        self._schema = output_schema(schema, format=format, time_column=time_column)
        self._declared_schema = schema
        self.stop_at = stop_at
        self.bounded = stop_at is not None
        self.group_id = group_id
        self._pending_commit: dict[int, int] | None = None  # positions of the checkpoint in flight
        self._checkpointed: int | None = None  # last completed checkpoint id (0: one in flight)
        self._start = _parse_start(start)
        self.partitions = None if partitions is None else [int(p) for p in partitions]
        self.out_of_orderness = parse_duration(out_of_orderness, name="out_of_orderness")
        self.idle_timeout = parse_duration(idle_timeout, name="idle_timeout") / 1e6
        self.max_batch_records = max_batch_records
        self.commit_interval = parse_duration(commit_interval, name="commit_interval") / 1e6
        # a record whose event time is beyond the wall clock + max_ahead is a dead letter
        self.max_ahead = None if max_ahead is None else parse_duration(max_ahead, name="max_ahead")
        self.allow_gaps = allow_gaps
        # new partitions are looked for only when the stream reads all of an unbounded topic
        self.discovery: float | None = (
            None
            if partition_discovery is None or stop_at is not None or partitions is not None
            else parse_duration(partition_discovery, name="partition_discovery") / 1e6
        )
        self._consumer_options = {
            "fetch_max_wait_ms": fetch_max_wait_ms,
            # how soon the background fetcher notices resumed partitions (aiokafka: 200 ms)
            "consumer_timeout_ms": 20,
            "max_partition_fetch_bytes": max_partition_fetch_bytes,
            "fetch_max_bytes": fetch_max_bytes,
            **(
                {}
                if self.discovery is None
                else {"metadata_max_age_ms": max(100, int(self.discovery * 1000))}
            ),
            **(consumer_options or {}),
        }
        self.name = name
        self.splits: dict[int, PartitionSplit] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._batch_fetcher: BatchFetcher | None = None  # getmany without ConsumerRecords
        self._emitter = FetchEmitter(
            topic,
            self._declared_schema,
            format=format,
            event_time_column=time_column,
            time_column=self.time_column,
            max_ahead=self.max_ahead,
        )
        self._restored: dict[int, int] | None = None
        self._restored_held: dict[int, tuple[pa.RecordBatch, np.ndarray]] = {}
        self._last_commit = 0.0
        self.commit_failures = 0
        self.ranges: dict[int, tuple[int, int | None]] = {}  # (earliest, end) seen at open
        self.missing_offsets: dict[int, tuple[int, int]] = {}  # allow_gaps: skipped [lo, hi)
        self.partitions_added: list[int] = []
        self._split_options: dict[str, Any] = {}
        self.lookups: dict[int, dict[str, Any]] = {}  # per partition: start-time lookups
        self.lookup_probes = 0  # single-record reads spent verifying/searching them
        self.beginning_offsets: Callable[[list[int]], Awaitable[dict[int, int]]] = (
            self._beginning_offsets
        )
        """Earliest retained offset per partition (replaceable, e.g. to simulate retention)."""

    @property
    def schema(self) -> pa.Schema | None:
        return self._schema

    def for_partitions(self, partitions: Sequence[int]) -> KafkaStream:
        """A new stream with this one's settings that reads only ``partitions`` (a scale-out
        task's; no discovery of partitions added later: a task's set is fixed). Only a stream
        that has not run yet can be copied; a replaced ``beginning_offsets`` carries over."""
        if self.splits:
            raise ConfigError(f"stream={self.name}: for_partitions needs a stream that has not run")
        outside = sorted(set(partitions) - set(self.partitions or partitions))
        if outside:
            raise ConfigError(
                f"stream={self.name}: partitions {outside} are not among its partitions "
                f"{self.partitions}"
            )
        copy = KafkaStream(
            **{**self._arguments, "partitions": list(partitions), "partition_discovery": None}
        )
        if getattr(self.beginning_offsets, "__self__", None) is not self:
            copy.beginning_offsets = self.beginning_offsets
        return copy

    def _where(self, partition: int | None = None, offset: int | None = None) -> str:
        return record_position(self.topic, partition, offset)

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    def _new_consumer(self, **extra: Any) -> AIOKafkaConsumer:
        """A consumer that never moves a position by itself: an offset out of range is an error
        (:class:`StreamGapError`), never a silent reset (probe consumers pass their own)."""
        security = self.security.client_options() if self.security else {}
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            **{"auto_offset_reset": "none", **security, **self._consumer_options, **extra},
        )

    async def _connect_error(self, exc: BaseException) -> StreamError:
        """A one-line StreamError naming the broker(s) and why the consumer did not start
        (not retriable when the cause is permanent: credentials, certificates, TLS)."""
        diagnosis = await diagnose_connect_failure(
            self.bootstrap_servers, self.security, self.connect_timeout
        )
        what = (
            f"no connection within connect_timeout={self.connect_timeout:g}s"
            if isinstance(exc, TimeoutError)
            else f"aiokafka: {type(exc).__name__}"
        )
        error = StreamError(
            f"{self._where()}: cannot connect to the Kafka broker(s) {self.bootstrap_servers}: "
            f"{diagnosis} ({what})"
        )
        error.retriable = not diagnosis.permanent
        return error

    # opening ------------------------------------------------------------------------------------

    async def _beginning_offsets(self, partitions: list[int]) -> dict[int, int]:
        assert self._consumer is not None
        try:
            got = await self._consumer.beginning_offsets([self._tp(p) for p in partitions])
        except KafkaError as exc:
            raise StreamError(f"{self._where()}: beginning offsets failed: {exc!r}") from exc
        return {tp.partition: off for tp, off in got.items()}

    async def open(
        self,
        *,
        starts: dict[int, PartitionStart] | None = None,
        default_start: PartitionStart | None = None,
        floor: int | None = None,
        out_of_orderness: int | None = None,
        idle_timeout: float | None = None,
        check_offsets: bool = True,
    ) -> None:
        """Connect, assign partitions and seek each to its start.

        Per partition the start is, in order of precedence: a restored snapshot, ``starts``,
        ``default_start``, the constructor's ``start``. ``floor`` raises every partition's
        watermark (the lambda source's ``cutoff − 1µs``). ``check_offsets=False`` leaves the
        check of explicit start offsets against :attr:`ranges` to the caller (the lambda source
        names the lake in its error).
        """
        consumer = self._new_consumer(group_id=self.group_id)
        self._consumer = consumer
        self._last_commit = time.monotonic()  # first periodic commit after one interval
        try:
            async with asyncio.timeout(self.connect_timeout):
                await consumer.start()
        except (KafkaError, TimeoutError) as exc:
            await self.close()
            raise await self._connect_error(exc) from exc
        self._batch_fetcher = BatchFetcher.for_consumer(consumer, self._where())
        try:
            available = await topic_partitions(consumer, self.topic)
        except KafkaError as exc:
            await self.close()
            raise StreamError(
                f"{self._where()}: cannot connect to {self.bootstrap_servers}: {exc!r}"
            ) from exc
        if not available:
            await self.close()
            raise StreamError(f"{self._where()}: topic does not exist on {self.bootstrap_servers}")
        partitions = sorted(available) if self.partitions is None else self.partitions
        missing = [p for p in partitions if p not in available]
        if missing:
            await self.close()
            raise StreamError(
                f"{self._where()}: no partition(s) {missing} (has {sorted(available)})"
            )
        ooo = self.out_of_orderness if out_of_orderness is None else out_of_orderness
        idle = self.idle_timeout if idle_timeout is None else idle_timeout
        # a fetch response vouches for "caught up" for this long (responses come every fetch wait)
        # — but no longer than idle_timeout (at least two fetch waits): a lapse of answers as long
        # as the quiet a partition needs to go idle is an outage, not quiet
        fetch_wait = int(self._consumer_options["fetch_max_wait_ms"]) / 1000
        window = min(max(2.0, 20 * fetch_wait), max(idle, 2 * fetch_wait))
        self._split_options = {
            "out_of_orderness": ooo,
            "idle_timeout": idle,
            "floor": floor,
            "confirm_window": window,
        }
        self.splits = {p: PartitionSplit(self.topic, p, **self._split_options) for p in partitions}
        try:
            await self._seek_starts(partitions, starts or {}, default_start, check_offsets)
        except BaseException:
            await self.close()
            raise
        for p, (batch, offsets) in self._restored_held.items():
            if p in self.splits and batch.num_rows:
                times = held_times(batch, self.time_column)
                split = self.splits[p]
                split.hold(batch, offsets, times)
                split.max_seen = int(times.max())
                split.finished = False  # its held rows are still to be emitted

    async def _seek_starts(
        self,
        partitions: list[int],
        starts: dict[int, PartitionStart],
        default_start: PartitionStart | None,
        check_offsets: bool,
    ) -> None:
        assert self._consumer is not None
        plan: dict[int, PartitionStart] = {}
        added: list[int] = []  # partitions the restored checkpoint does not know
        for p in partitions:
            if self._restored is not None and p in self._restored:
                plan[p] = ("offset", self._restored[p])
            elif p in starts:
                plan[p] = starts[p]
            elif default_start is not None:
                plan[p] = default_start
            elif self._restored is not None:  # added since the checkpoint: none of it was read
                plan[p] = ("earliest", 0)
                added.append(p)
            else:
                plan[p] = self._start(p)
        if added:
            self.partitions_added.extend(added)
            log.warning(
                "%s: partition(s) %s are not in the restored checkpoint (added to the topic "
                "since): reading them from their earliest offsets",
                self._where(),
                added,
            )
        begins = await self.beginning_offsets(partitions)
        # the end offsets (for "latest" and stop_at) come from the highwater of a probe fetch
        need_probe = self.stop_at == "latest" or any(
            k in ("latest", "time", "offset") for k, _ in plan.values()
        )
        ends: dict[int, int] = {}
        resolved: dict[int, int] = {}
        if need_probe:
            probe_consumer = self._new_consumer(
                fetch_max_wait_ms=5,
                max_partition_fetch_bytes=64 * 1024,
                retry_backoff_ms=5,
                auto_offset_reset="earliest",  # a probe reads what is there (it checks offsets)
            )
            try:
                await probe_consumer.start()
                probe_consumer.assign([self._tp(p) for p in partitions])
                prober = OffsetProber(probe_consumer, self.topic)
                ends = await end_offsets(prober, {p: begins[p] for p in partitions})
                times = {p: v for p, (k, v) in plan.items() if k == "time"}
                answers: dict[int, int | None] = {}
                if times:
                    try:
                        got = await probe_consumer.offsets_for_times(
                            {self._tp(p): v // MS for p, v in times.items()}
                        )
                        answers = {tp.partition: (a.offset if a else None) for tp, a in got.items()}
                    except KafkaError as exc:
                        log.warning(
                            "%s: offsets_for_times failed (%r); searching", self._where(), exc
                        )
                for p, micros in times.items():
                    offset, verified = await offset_for_time(
                        prober,
                        p,
                        micros // MS,
                        begin=begins[p],
                        end=ends[p],
                        broker_answer=answers.get(p),
                    )
                    resolved[p] = offset
                    self.lookups[p] = {
                        "time_us": micros,
                        "broker_answer": answers.get(p),
                        "offset": offset,
                        "verified": verified,
                    }
                self.lookup_probes += prober.probes
            except KafkaError as exc:
                raise StreamError(
                    f"{self._where()}: resolving start positions failed: {exc!r}"
                ) from exc
            finally:
                await probe_consumer.stop()
        self.ranges = {p: (begins[p], ends.get(p)) for p in partitions}
        if check_offsets:
            for p, (kind, value) in plan.items():
                if kind == "offset" and (moved := self._check_start(p, value)) is not None:
                    plan[p] = ("offset", moved)
        self._consumer.assign([self._tp(p) for p in partitions])
        for p in partitions:
            kind, value = plan[p]
            if kind == "earliest":
                offset = begins[p]
            elif kind == "latest":
                offset = ends[p]
            elif kind == "time":
                offset = resolved[p]
            else:
                offset = value
            split = self.splits[p]
            split.start = split.position = offset
            if p in ends:
                split.highwater = ends[p]
            if self.stop_at == "latest" and p in ends:
                split.stop_offset = ends[p]
                split.finished = offset >= ends[p]
            self._consumer.seek(self._tp(p), offset)

    def _check_start(self, partition: int, offset: int) -> int | None:
        """Raise :class:`StreamGapError` when ``offset`` lies outside the partition's retained
        range; with ``allow_gaps``, the offset to continue from instead of a deleted one."""
        begin, end = self.ranges[partition]
        if end is not None and offset > end:
            raise StreamGapError(
                f"{self._where(partition)}: start offset {offset} is beyond the partition's end "
                f"offset {end}: offsets {end}..{offset - 1} do not exist (was the topic deleted "
                "and recreated?); start it elsewhere (restore=None, or start='earliest')"
            )
        if offset >= begin:
            return None
        if not self.allow_gaps:
            raise StreamGapError(
                f"{self._where(partition)}: offsets {offset}..{begin - 1} ({begin - offset} "
                f"records) were deleted (retention) before they were read; the earliest "
                f"retained offset is {begin}; pass allow_gaps=True to continue from there"
            )
        log.warning(
            "%s: offsets %d..%d were deleted before they were read; continuing at %d",
            self._where(partition),
            offset,
            begin - 1,
            begin,
        )
        self.missing_offsets[partition] = (offset, begin)
        return begin

    def seek(self, partition: int, offset: int) -> None:
        """Move an opened partition to ``offset`` before :meth:`drive` (e.g. past a gap)."""
        if self._consumer is None:
            raise StreamError(f"{self._where(partition)}: seek() before open()")
        split = self.splits[partition]
        split.start = split.position = offset
        if split.stop_offset is not None:
            split.finished = offset >= split.stop_offset
        self._consumer.seek(self._tp(partition), offset)

    async def close(self) -> None:
        self._emitter.close()
        consumer, self._consumer = self._consumer, None
        self._batch_fetcher = None
        if consumer is not None:
            try:
                await consumer.stop()
            except KafkaError as exc:  # closing must not mask the original error
                log.warning("%s: closing the consumer failed: %r", self._where(), exc)

    # reading ------------------------------------------------------------------------------------

    async def run(self, out: SourceOutput) -> None:
        await self.open()
        try:
            await self.drive(out)
        finally:
            await self.close()

    def combined_watermark(self) -> tuple[int | None, bool]:
        """(minimum over live non-idle partitions, all idle?) — see module docstring."""
        return combined_watermark(self.splits.values())

    def final_watermark(self) -> int | None:
        """End of a bounded read: the maximum event time read (or the floor)."""
        known = [m for s in self.splits.values() if (m := s.max_seen) is not None]
        floors = [s.floor for s in self.splits.values() if s.floor is not None]
        values = known + floors
        return max(values) if values else None

    async def drive(self, out: SourceOutput, hooks: DriveHooks | None = None) -> None:
        """Read until every partition finished (bounded) or forever; requires :meth:`open`.

        Pipelined: the JSON read of fetch k runs on the decode thread while the loop takes the
        next fetches from the consumer (without waiting: what is already buffered), at most
        ``_DECODE_DEPTH`` fetches in decode; fetches are emitted in the order they were
        fetched, when their read is done (all of them once the consumer has nothing buffered).
        A split with a fetch in decode keeps its state from before that fetch (position, max
        seen: a watermark or checkpoint meanwhile does not cover it; its position is not taken
        from the consumer). With an alignment group a fetch is emitted in the round it was
        fetched (its read still runs on the decode thread, the loop serves other tasks), as
        holding and pausing decide on emitted state; partition discovery (it re-seeks) emits
        the fetches in decode first.
        """
        hooks = hooks or DriveHooks()
        consumer = self._consumer
        if consumer is None:
            raise StreamError(f"{self._where()}: drive() before open()")
        aligner = hooks.aligner
        if aligner is not None:
            for split in self.splits.values():
                aligner.register(f"{hooks.split_prefix}:{split.key}")
                self._report(split, hooks)
        pending: deque[PendingFetch] = deque()  # fetches in decode, oldest first
        while True:
            if pending and self._added_partitions():
                while pending:
                    await self._emitter.finish(pending.popleft(), out, hooks)
            live = [s for s in self.splits.values() if not s.finished]
            if not live:
                break
            now = time.monotonic()
            if self.discovery is not None:
                await self._discover_partitions(hooks)
                live = [s for s in self.splits.values() if not s.finished]
            released = False
            if aligner is not None:
                released = await self._release_held(live, out, hooks, aligner)
                for split in live:
                    name = f"{hooks.split_prefix}:{split.key}"
                    allowed = aligner.allowed(name) and split.held is None
                    if not allowed and not split.paused:
                        await self._drain(split, out, hooks, now)
                        consumer.pause(self._tp(split.partition))
                        split.set_paused(True, now)
                        aligner.set_held(name, True)
                    elif allowed and split.paused:
                        consumer.resume(self._tp(split.partition))
                        split.set_paused(False, now)
                        aligner.set_held(name, False)
            readable = [s for s in live if not s.paused]
            if not readable:
                assert aligner is not None
                if not released:  # else the bound may already cover more: look again
                    await aligner.wait_change(0.2)
                await out.barrier_point()
                continue
            try:
                fetched = await self._getmany(
                    *[self._tp(s.partition) for s in readable],
                    timeout_ms=(
                        0  # a decode is running: take what is buffered, then emit it
                        if pending
                        else max(1, int(self._consumer_options["fetch_max_wait_ms"]))
                    ),
                    max_records=self.max_batch_records,
                )
            except OffsetOutOfRangeError as exc:
                where = ", ".join(f"partition={s.partition} offset={s.position}" for s in readable)
                raise StreamGapError(
                    f"topic={self.topic}: the next offsets to read ({where}) are out of the "
                    "partition's range: retention deleted records before they were read, or the "
                    f"topic was recreated: {exc!r}"
                ) from exc
            except KafkaError as exc:
                where = ", ".join(f"partition={s.partition} offset={s.position}" for s in readable)
                raise StreamError(f"topic={self.topic} fetch failed at {where}: {exc!r}") from exc
            now = time.monotonic()
            started = self._emitter.start(fetched, self.splits, now)
            if started is not None:
                pending.append(started)
            while pending and (
                started is None  # nothing more buffered: emit what is in decode
                or aligner is not None  # alignment decides on emitted state: no overlap
                or len(pending) > _DECODE_DEPTH
                or pending[0].read.done()
            ):
                await self._emitter.finish(pending.popleft(), out, hooks)
            decoding = {split.partition for fetch in pending for split, _, _ in fetch.parts}
            if not any(fetched.values()):
                await out.barrier_point()  # quiet: let a requested checkpoint through
            for split in readable:
                tp = self._tp(split.partition)
                hw = consumer.highwater(tp)
                split.responded(consumer.last_poll_timestamp(tp), now)
                if hw is not None:
                    split.highwater = hw
                    if self.stop_at == "latest" and split.stop_offset is None:
                        split.stop_offset = hw  # the end seen by the first fetch response
                if (
                    tp not in fetched
                    and split.partition not in decoding
                    and split.highwater is not None
                ):
                    try:
                        position = await consumer.position(tp)
                    except KafkaError as exc:
                        raise StreamError(f"{self._where(split.partition)}: {exc!r}") from exc
                    if split.stop_offset is not None:
                        position = min(position, split.stop_offset)
                    split.position = max(split.position or 0, position)
                if (
                    split.stop_offset is not None
                    and (split.position or 0) >= split.stop_offset
                    and split.held is None
                ):
                    split.finished = True
                    consumer.pause(tp)
                split.update_idle(now)
                self._report(split, hooks)
            await self._maybe_commit()
            await self._progress(out, hooks)
        while pending:  # not expected: a split with a fetch in decode is not finished
            await self._emitter.finish(pending.popleft(), out, hooks)
        await self._maybe_commit(force=True)
        if hooks.on_progress is not None:
            await hooks.on_progress()
        else:
            final = self.final_watermark()
            if final is not None:
                await out.emit_watermark(final)

    def _added_partitions(self) -> list[int]:
        """Partitions of the topic (as of the consumer's last metadata refresh) not yet read;
        only looked for with partition discovery."""
        if self.discovery is None:
            return []
        available = self._consumer_or_fail().partitions_for_topic(self.topic) or set()
        return sorted(set(available) - set(self.splits))

    async def _discover_partitions(self, hooks: DriveHooks) -> None:
        """Read partitions added to the topic since it opened, from their earliest offsets (the
        consumer refreshes its metadata every ``partition_discovery``)."""
        consumer = self._consumer_or_fail()
        added = self._added_partitions()
        if not added:
            return
        begins = await self.beginning_offsets(added)
        for p in added:
            split = PartitionSplit(self.topic, p, **self._split_options)
            split.start = split.position = begins[p]
            self.splits[p] = split
        consumer.assign([self._tp(p) for p in sorted(self.splits)])
        for split in self.splits.values():  # assign() forgets positions and pauses
            tp = self._tp(split.partition)
            consumer.seek(tp, split.position if split.position is not None else 0)
            if split.paused or split.finished:
                consumer.pause(tp)
        if hooks.aligner is not None:
            for p in added:
                hooks.aligner.register(f"{hooks.split_prefix}:{self.splits[p].key}")
                self._report(self.splits[p], hooks)
        self.partitions_added.extend(added)
        log.warning(
            "%s: partition(s) %s were added to the topic; reading them from their earliest "
            "offsets %s",
            self._where(),
            added,
            [begins[p] for p in added],
        )

    async def _drain(
        self, split: PartitionSplit, out: SourceOutput, hooks: DriveHooks, now: float
    ) -> None:
        """Take what the consumer already fetched for a partition about to be paused (emitted or
        held like any fetch, so held rows stay within one broker fetch): an undrained fetch
        result of a paused partition would keep aiokafka from fetching for the others during its
        prefetch backoff, a wall-clock cap on catch-up throughput."""
        tp = self._tp(split.partition)
        try:
            buffered = await self._getmany(tp, timeout_ms=0)
        except KafkaError as exc:
            raise StreamError(f"{self._where(split.partition)}: {exc!r}") from exc
        records = buffered.get(tp, [])
        if records:
            await self._emitter.process(split, records, out, hooks, now)

    async def _getmany(
        self, *partitions: TopicPartition, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """``consumer.getmany``, through the :class:`~.fetch_records.BatchFetcher` when aiokafka's
        internals allowed it at open (once it read, every read must go through it)."""
        if self._batch_fetcher is None:
            return await self._consumer_or_fail().getmany(
                *partitions, timeout_ms=timeout_ms, max_records=max_records
            )
        fetched = await self._batch_fetcher.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
        # a sequence of records with every ConsumerRecord field the emitter reads (same names)
        return cast(dict[TopicPartition, list[ConsumerRecord[Any, Any]]], fetched)

    def _consumer_or_fail(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise StreamError(f"{self._where()}: the stream is not open")
        return self._consumer

    async def _progress(self, out: SourceOutput, hooks: DriveHooks) -> None:
        """Emit the watermark (the caller's combination when it drives the stream)."""
        if hooks.on_progress is not None:
            await hooks.on_progress()
            return
        mark, idle = self.combined_watermark()
        if mark is not None:
            await out.emit_watermark(mark, idle)

    def _after_release(self, split: PartitionSplit) -> None:
        """A split whose held rows are all out and whose end is reached finishes here."""
        if (
            split.held is None
            and split.stop_offset is not None
            and (split.position or 0) >= split.stop_offset
        ):
            split.finished = True

    async def _maybe_commit(self, *, force: bool = False) -> None:
        """Commit read positions to the group every ``commit_interval`` — only when the job takes
        no checkpoints; with checkpoints, :meth:`on_checkpoint_complete` commits instead."""
        if self.group_id is None or self._consumer is None or self._checkpointed is not None:
            return
        now = time.monotonic()
        if not force and now - self._last_commit < self.commit_interval:
            return
        self._last_commit = now
        await self._commit(
            {p: o for p, s in self.splits.items() if (o := s.first_unemitted) is not None}
        )

    async def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Commit the positions of the checkpoint that just completed (what a restart resumes
        from) to the consumer group, for observability (lag dashboards)."""
        pending, self._pending_commit = self._pending_commit, None
        if pending is not None:
            self._checkpointed = checkpoint_id
            await self._commit(pending)

    async def _commit(self, positions: dict[int, int]) -> None:
        if self.group_id is None or self._consumer is None or not positions:
            return
        offsets = {self._tp(p): OffsetAndMetadata(o, "") for p, o in positions.items()}
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # observability only: positions live in checkpoints
            self.commit_failures += 1
            log.warning(
                "%s: committing offsets for group %s failed: %r", self._where(), self.group_id, exc
            )

    # checkpoints and metrics --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """``{"positions": next offset to read per partition, "held": rows alignment holds}``
        (immutable; held rows as Arrow IPC with their offsets). The consumer group is told the
        first unemitted offset per partition when this checkpoint completes (one checkpoint is
        in flight at a time)."""
        if not self.splits and self._restored is not None:
            positions = dict(self._restored)
            held = dict(self._restored_held)
            commit = {p: _first_offset(o, held.get(p)) for p, o in positions.items()}
        else:
            positions = {p: s.position for p, s in self.splits.items() if s.position is not None}
            held = {
                p: (s.held, s.held_offsets)
                for p, s in self.splits.items()
                if s.held is not None and s.held_offsets is not None
            }
            commit = {p: o for p, s in self.splits.items() if (o := s.first_unemitted) is not None}
        self._pending_commit = commit
        if self._checkpointed is None:
            self._checkpointed = 0  # checkpoints are on: stop periodic commits
        return {
            "positions": dict(positions),
            "held": {
                p: {"rows": _to_ipc(batch), "offsets": [int(o) for o in offsets]}
                for p, (batch, offsets) in held.items()
            },
        }

    def restore(self, state: dict[str, Any] | dict[int, int]) -> None:
        """Resume at the given next offsets (seeked when the stream opens), holding again the
        rows alignment held at the checkpoint. Accepts the older ``{partition: offset}`` form."""
        raw: dict[Any, Any] = dict(state)
        if "positions" in raw:
            positions, held = raw["positions"], raw.get("held") or {}
        else:
            positions, held = raw, {}
        self._restored = {int(p): int(o) for p, o in positions.items()}
        self._restored_held = {
            int(p): (_from_ipc(h["rows"]), np.asarray(h["offsets"], dtype=np.int64))
            for p, h in held.items()
        }

    def metrics(self) -> dict[str, Any]:
        mark, idle = self.combined_watermark()
        return {
            "topic": self.topic,
            "stream_watermark": mark,
            "stream_idle": idle,
            "records": sum(s.records for s in self.splits.values()),
            "dead_letters_decoded": sum(s.dead_letters for s in self.splits.values()),
            "commit_failures": self.commit_failures,
            "start_lookups": dict(self.lookups),
            "start_lookup_probes": self.lookup_probes,
            "partitions_added": list(self.partitions_added),
            "missing_offsets": {p: list(r) for p, r in self.missing_offsets.items()},
            "partitions": {p: s.metrics() for p, s in self.splits.items()},
        }


def _to_ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _from_ipc(data: bytes) -> pa.RecordBatch:
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        batches = list(reader)
        return (
            pa.concat_batches(batches) if batches else reader.schema.empty_table().to_batches()[0]
        )


def _first_offset(position: int, held: tuple[pa.RecordBatch, np.ndarray] | None) -> int:
    if held is None or not len(held[1]):
        return position
    return min(position, int(held[1].min()))
