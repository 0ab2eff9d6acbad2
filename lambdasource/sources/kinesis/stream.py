"""``ls.KinesisStream``: a Kinesis data stream as a source, with KafkaStream's options and behaviour.

The stream is presented in Kafka's integer model (see the package docstring): a shard is a split
(:class:`~.split.ShardSplit`, partition = shard number), a sequence number an offset. Each ready
shard has a :class:`~.reader.ShardReader`; the drive loop keeps at most one GetRecords in flight per
shard (5 calls/s per shard at most; a caught-up shard is polled every ``poll_interval``) and emits
each answer when it arrives, through Kafka's decoders (:class:`~.emit.ShardEmitter`).

Watermarks: per shard bounded out-of-orderness; the stream's watermark is the minimum over live
shards (neither idle nor finished); a shard is idle only when caught up (a recent answer was
empty, ``MillisBehindLatest`` 0) and quiet for ``idle_timeout``, never while paused; when all are
idle the stream forwards their maximum, marked idle — as KafkaStream.

Resharding: shards are listed at open and every ``shard_discovery``; a child shard is read only
once all its parents ended (:class:`~.shards.ShardLineage`), and starts with the watermark its
parents reached as a floor (never below what the stream emitted). A parent that ended stays in the
watermark minimum until all its children have splits (a merge's first parent waits for the
second), so records handed over to a child are never late. Ended parents are finished splits.

Starts: ``"trim_horizon"`` (or ``"earliest"``), ``"latest"`` (closed shards are skipped: nothing
arrives on them), a time (AT_TIMESTAMP on arrival time; the first record found is checked to have
arrived at or after it, in :attr:`lookups`) or ``{shard id or number: next sequence number}``
(others from the trim horizon). An explicit position is checked against the shard's retained
range (:attr:`ranges`): below the first retained record is a :class:`StreamGapError` (records
were trimmed before they were read; ``allow_gaps=True`` continues from there, counted), beyond a
closed shard's end likewise.

Bounded reads (``stop_at="latest"``): each shard open at open gets a sentinel iterator at LATEST;
the first record it returns is the stop (exclusive), and an empty answer at the tip with the
sentinel still empty ends the shard: exactly the records present when the stream opened (each
read costs a sentinel read until the sentinel sees a record). The final watermark is
the maximum event time read.

Checkpoints: ``{"positions": {shard: next sequence (decimal string)}, "held": {shard: rows +
sequences}, "unread": {shard: [seek kind, value]}, "finished": {shard: watermark}, "carried":
{shard: floor}}``; restore resumes each shard, skips finished ones and carries their watermarks
to the children.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, cast

import pyarrow as pa

from ...errors import ConfigError, StreamError
from ...timeutil import Duration, parse_duration
from ..base import Source, SourceOutput
from ..kafka.aligned import AlignedSplits
from ..kafka.decode import RECORD_TIMESTAMP, Decoder, output_schema
from ..kafka.emit import DriveHooks
from ..kafka.split import PartitionSplit
from .calls import all_or_nothing, call_with_retries
from .config import KinesisConfig
from .emit import ShardEmitter, record_position
from .reader import ShardFetch, ShardReader, first_retained
from .shards import Shard, ShardLineage, list_shards
from .shardset import ShardSet
from .split import ShardSplit
from .starts import (
    PartitionStart,
    check_start,
    lookup_time,
    parse_start,
    shard_key,
)

log = logging.getLogger("lambdasource.kinesis")


class KinesisStream(AlignedSplits, Source):
    """A Kinesis data stream as a source (see module docstring).

    ``time_column=None`` uses the arrival time (ApproximateArrivalTimestamp), as a ``timestamp``
    column. ``format``: ``"json"`` (needs ``schema``), ``"raw"`` or a callable decoder.
    ``config``: endpoint and credentials (:class:`KinesisConfig`; default: the AWS environment).
    ``shards``: shard numbers or ids to read (default all, children included as they appear).
    ``poll_interval``: the wait before polling a caught-up shard again; ``calls_per_second``: the
    GetRecords budget per shard (Kinesis allows 5); ``max_records``: records per GetRecords;
    ``shard_discovery``: how often ListShards looks for closures and children (unbounded reads
    of all shards only); ``max_ahead``, ``allow_gaps``, ``out_of_orderness``, ``idle_timeout``:
    as KafkaStream's.
    """

    kind = "kinesis"

    def __init__(
        self,
        stream_name: str,
        time_column: str | None = None,
        format: str | Decoder = "json",
        schema: pa.Schema | None = None,
        stop_at: str | None = None,
        start: Any = "trim_horizon",
        shards: Sequence[int | str] | None = None,
        out_of_orderness: Duration = "0s",
        idle_timeout: Duration = "30s",
        max_ahead: Duration | None = "1d",
        config: KinesisConfig | None = None,
        poll_interval: Duration = "200ms",
        *,
        shard_discovery: Duration | None = "30s",
        max_records: int = 10_000,
        calls_per_second: float = 5.0,
        allow_gaps: bool = False,
        name: str = "stream",
    ) -> None:
        self._arguments = {key: value for key, value in locals().items() if key != "self"}
        if stop_at not in (None, "latest"):
            raise ConfigError(f"KinesisStream: stop_at must be None or 'latest', got {stop_at!r}")
        if not 1 <= max_records <= 10_000:
            raise ConfigError(f"KinesisStream: max_records must be 1..10000, got {max_records}")
        if calls_per_second <= 0:
            raise ConfigError(f"KinesisStream: calls_per_second must be > 0: {calls_per_second}")
        if not isinstance(stream_name, str) or not stream_name:
            raise ConfigError(
                f"KinesisStream: stream_name must be a non-empty string, got {stream_name!r}"
            )
        self.stream_name = self.topic = stream_name
        self.config = config or KinesisConfig()
        self.event_time_column = time_column
        self.time_column = time_column or RECORD_TIMESTAMP
        self.format = format
        self._schema = output_schema(schema, format=format, time_column=time_column)
        self.stop_at = stop_at
        self.bounded = stop_at is not None
        self._start = parse_start(start)
        # shards a {shard: sequence number} start names: each must exist (checked at open)
        self._start_shards = sorted(shard_key(k) for k in start) if isinstance(start, dict) else []
        self.partitions = None if shards is None else sorted({shard_key(s) for s in shards})
        self.out_of_orderness = parse_duration(out_of_orderness, name="out_of_orderness")
        self.idle_timeout = parse_duration(idle_timeout, name="idle_timeout") / 1e6
        self.max_ahead = None if max_ahead is None else parse_duration(max_ahead, name="max_ahead")
        self.poll_interval = parse_duration(poll_interval, name="poll_interval") / 1e6
        self.discovery: float | None = (
            None
            if shard_discovery is None or stop_at is not None or shards is not None
            else parse_duration(shard_discovery, name="shard_discovery") / 1e6
        )
        self.max_records = max_records
        self.min_interval = 1.0 / calls_per_second
        self.allow_gaps = allow_gaps
        self.name = name
        self.shardset = self._new_shardset()
        self.ranges: dict[int, tuple[int | None, int | None]] = {}  # (first retained, end)
        self.lookups: dict[int, dict[str, Any]] = {}
        self.missing_offsets: dict[int, tuple[int, int]] = {}
        self.shards_added: list[int] = []
        self._emitter = ShardEmitter(
            stream_name,
            schema,
            format=format,
            event_time_column=time_column,
            time_column=self.time_column,
            max_ahead=self.max_ahead,
        )
        self._client: Any = None
        self._client_context: Any = None
        self._next_poll: dict[int, float] = {}
        self._listed_at = 0.0
        self._rng = random.Random(0)  # backoff jitter of control-plane calls

    def _new_shardset(self) -> ShardSet:
        shardset = ShardSet(
            self.stream_name, self.time_column, self._start, self._new_reader, self._in_scope
        )
        shardset.bounded = self.bounded
        return shardset

    def _reset_run(self) -> None:
        """Every open starts from no splits and readers (as KafkaStream's does): a stream
        opened again — the state bootstrap's stream phase after its pass — must not read
        through the previous run's readers (their client is closed) or positions; what
        :meth:`restore` gave is kept."""
        restored, raw = self.shardset.restored, self.shardset.restored_raw
        self.shardset = self._new_shardset()
        self.shardset.restored, self.shardset.restored_raw = restored, raw
        self.ranges, self.lookups, self.missing_offsets = {}, {}, {}
        self._next_poll = {}

    @property
    def schema(self) -> pa.Schema | None:
        return self._schema

    @property
    def splits(self) -> dict[int, ShardSplit]:
        """Shard number → split, for the shards started so far."""
        return self.shardset.splits

    @property
    def readers(self) -> dict[int, ShardReader]:
        return self.shardset.readers

    @property
    def lineage(self) -> ShardLineage:
        return self.shardset.lineage

    @property
    def endpoint(self) -> str:
        return self.config.describe_endpoint()

    def for_partitions(self, partitions: Sequence[int]) -> KinesisStream:
        """A new stream with these settings reading only ``partitions`` (shard numbers), without
        discovery; only a stream that has not run can be copied."""
        if self.splits:
            raise ConfigError(f"stream={self.name}: for_partitions needs a stream that has not run")
        outside = sorted(set(partitions) - set(self.partitions or partitions))
        if outside:
            raise ConfigError(
                f"stream={self.name}: shards {outside} are not among its shards {self.partitions}"
            )
        return KinesisStream(**{**self._arguments, "shards": list(partitions)})

    def _where(self, partition: int | None = None, sequence: int | None = None) -> str:
        return record_position(self.stream_name, partition, sequence)

    # opening ------------------------------------------------------------------------------------

    async def _list(self) -> list[Shard]:
        assert self._client is not None
        client = self._client

        async def attempt() -> list[Shard]:
            return await list_shards(client, self.stream_name)

        shards = await call_with_retries(
            attempt,
            endpoint=self.endpoint,
            where=f"ListShards: {self._where()}",
            retries=self.config.retries,
            rng=self._rng,
        )
        self._listed_at = time.monotonic()
        return shards

    def _in_scope(self, number: int) -> bool:
        return self.partitions is None or number in self.partitions

    def _new_reader(self, shard: Shard, limit: int | None = None) -> ShardReader:
        return ShardReader(
            self._client,
            self.stream_name,
            shard,
            endpoint=self.endpoint,
            retries=self.config.retries,
            limit=limit or self.max_records,
            min_interval=self.min_interval,
        )

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
        """Connect, list the shards, resolve each one's start (a restored snapshot, ``starts``,
        ``default_start``, the constructor's ``start``, in that order), check explicit positions
        against the retained ranges and start the shards that are ready. ``floor`` raises every
        shard's watermark (the lambda source's ``cutoff − 1µs``)."""
        self._reset_run()
        self._client_context = self.config.create_client()
        self._client = await self._client_context.__aenter__()
        try:
            await self._open(starts or {}, default_start, floor, out_of_orderness, idle_timeout)
            if check_offsets:
                for number, (kind, value) in list(self.shardset.plan.items()):
                    if kind != "position" or number not in self.ranges:
                        continue
                    moved = check_start(
                        self._where(number),
                        value,
                        self.ranges[number],
                        allow_gaps=self.allow_gaps,
                    )
                    if moved is not None:
                        self.missing_offsets[number] = (value, moved)
                        self.shardset.plan[number] = ("position", moved)
            await self.shardset.advance(None)
        except BaseException:
            await self.close()
            raise

    async def _open(
        self,
        starts: dict[int, PartitionStart],
        default_start: PartitionStart | None,
        floor: int | None,
        out_of_orderness: int | None,
        idle_timeout: float | None,
    ) -> None:
        listed = await self._list()
        if not listed:
            raise StreamError(f"{self._where()}: the stream has no shards on {self.endpoint}")
        self.lineage.update(listed)
        known = {shard.number for shard in listed}
        missing = sorted(set(self.partitions or []) - known)
        if missing:
            raise StreamError(f"{self._where()}: no shard(s) {missing} (has {sorted(known)})")
        unknown = sorted(set(self._start_shards) - known)
        if unknown:
            raise StreamError(
                f"{self._where()}: start names shard(s) {unknown}, which the stream does not "
                f"have (it has {sorted(known)})"
            )
        idle = self.idle_timeout if idle_timeout is None else idle_timeout
        self.shardset.floor = floor
        self.shardset.split_options = {
            "out_of_orderness": (
                self.out_of_orderness if out_of_orderness is None else out_of_orderness
            ),
            "idle_timeout": idle,
            "confirm_window": min(
                max(2.0, 10 * self.poll_interval), max(idle, 2 * self.poll_interval)
            ),
        }
        self.shardset.plan_starts(listed, starts, default_start)
        scope = [shard for shard in listed if self._in_scope(shard.number)]
        begins = await all_or_nothing(
            first_retained(self._new_reader(shard, limit=1)) for shard in scope
        )
        for shard, begin in zip(scope, begins, strict=True):
            end = None if shard.ending_sequence is None else shard.ending_sequence + 1
            self.ranges[shard.number] = (begin, end)
        if self.stop_at == "latest":
            for shard in scope:
                if not shard.closed and shard.number not in self.shardset.ended:
                    sentinel = self._new_reader(shard, limit=1)
                    await sentinel.seek("latest")
                    self.shardset.sentinels[shard.number] = sentinel
        await self._resolve_times()

    async def _resolve_times(self) -> None:
        """Time starts: the first record that arrived at or after the time, checked, as
        :attr:`lookups`; the shard then starts at that record (else at the time)."""
        for number, (kind, micros) in list(self.shardset.plan.items()):
            if kind == "time":
                probe = self._new_reader(self.lineage.shards[number], limit=1)
                self.lookups[number] = lookup = await lookup_time(probe, micros)
                if lookup["offset"] is not None:
                    self.shardset.plan[number] = ("position", lookup["offset"])

    def seek(self, partition: int, offset: int) -> None:
        """Move an opened shard to ``offset`` (the next sequence number) before :meth:`drive`
        (a shard not started yet, waiting for its parents, starts there)."""
        if partition not in self.splits and partition in self.shardset.plan:
            self.shardset.plan[partition] = ("position", offset)
            return
        if partition not in self.splits:
            raise StreamError(
                f"{self._where(partition)}: seek() before open() or before it is ready"
            )
        split = self.splits[partition]
        split.start = split.position = offset
        self.readers[partition].reposition(offset)

    async def close(self) -> None:
        self._emitter.close()
        context, self._client_context, self._client = self._client_context, None, None
        if context is not None:
            with contextlib.suppress(Exception):  # closing must not mask the original error
                await context.__aexit__(None, None, None)

    # reading ------------------------------------------------------------------------------------

    async def run(self, out: SourceOutput) -> None:
        await self.open()
        try:
            await self.drive(out)
        finally:
            await self.close()

    def combined_watermark(self) -> tuple[int | None, bool]:
        """(minimum over live non-idle shards, all idle?) — KafkaStream's rule."""
        return self.shardset.combined_watermark()

    def final_watermark(self) -> int | None:
        """End of a bounded read: the maximum event time read (or the floor)."""
        return self.shardset.final_watermark()

    def _readable(self, split: ShardSplit, now: float) -> bool:
        return (
            not split.finished
            and not split.ended
            and not split.paused
            and split.held is None
            and now >= self._next_poll.get(split.partition, 0.0)
        )

    async def _fetch(self, split: ShardSplit) -> tuple[ShardFetch, bool]:
        """One read of a shard; bounded: then one of its sentinel, which decides the stop
        (True: the read was caught up and no record arrived since the stream opened)."""
        fetch = await self.readers[split.partition].read()
        sentinel = self.shardset.sentinels.get(split.partition)
        if sentinel is None or split.stop_offset is not None:
            return fetch, False
        after = await sentinel.read()
        if after.records:
            split.stop_offset = after.records[0].offset
            del self.shardset.sentinels[split.partition]
            return fetch, False
        # an empty answer at the tip: a non-empty one may say 0 ms behind with more to read
        # (MillisBehindLatest has millisecond resolution)
        return fetch, not fetch.records and fetch.millis_behind_latest == 0

    async def _handle(
        self,
        split: ShardSplit,
        fetch: ShardFetch,
        complete: bool,
        out: SourceOutput,
        hooks: DriveHooks,
    ) -> None:
        now = time.monotonic()
        if fetch.records:
            await self._emitter.process(split, fetch.records, out, hooks, now)
            stop = split.stop_offset
            if stop is not None and fetch.records[-1].offset >= stop:
                split.stop_reached = True
                split.position = stop if split.position is None else max(split.position, stop)
        reader = self.readers[split.partition]
        split.millis_behind_latest = fetch.millis_behind_latest
        split.at_tip = not fetch.records and fetch.millis_behind_latest == 0
        split.responded(reader.calls, now)
        if complete:
            split.stop_reached = True
        self._next_poll[split.partition] = now + (self.poll_interval if split.at_tip else 0.0)
        self.shardset.check_ended(split)

    async def drive(self, out: SourceOutput, hooks: DriveHooks | None = None) -> None:
        """Read until every shard finished (bounded) or forever; requires :meth:`open`.

        At most one GetRecords per shard in flight; answers are emitted as they come. With an
        alignment group a shard beyond the bound is paused (no read is started for it) and the
        rows of an answer beyond the release bound are held in its split until covered."""
        hooks = hooks or DriveHooks()
        if self._client is None:
            raise StreamError(f"{self._where()}: drive() before open()")
        aligner = hooks.aligner
        if aligner is not None:
            for split in self.splits.values():
                aligner.register(f"{hooks.split_prefix}:{split.key}")
                self._report(split, hooks)
        inflight: dict[int, asyncio.Task[tuple[ShardFetch, bool]]] = {}
        try:
            while True:
                now = time.monotonic()
                if self.discovery is not None and now - self._listed_at >= self.discovery:
                    await self._discover(hooks)
                await self.shardset.advance(lambda split: self._register(split, hooks))
                live = [s for s in self.splits.values() if not s.finished]
                if not live and not inflight:
                    break
                released = False
                if aligner is not None:
                    released = await self._release_held(live, out, hooks, aligner)
                    for split in live:
                        name = f"{hooks.split_prefix}:{split.key}"
                        allowed = aligner.allowed(name) and split.held is None
                        if allowed == split.paused:
                            split.set_paused(not allowed, now)
                            aligner.set_held(name, not allowed)
                for split in live:
                    if split.partition not in inflight and self._readable(split, now):
                        inflight[split.partition] = asyncio.create_task(self._fetch(split))
                if inflight:
                    wake = min(
                        [self.poll_interval]
                        + [
                            max(0.0, t - now)
                            for n, t in self._next_poll.items()
                            if n not in inflight
                        ]
                    )
                    done, _ = await asyncio.wait(
                        inflight.values(),
                        timeout=max(wake, 0.005),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    for number in sorted(n for n, task in inflight.items() if task in done):
                        fetch, complete = inflight.pop(number).result()
                        await self._handle(self.splits[number], fetch, complete, out, hooks)
                    if not done:
                        await out.barrier_point()
                elif aligner is not None and all(s.paused for s in live if not s.ended):
                    if not released:
                        await aligner.wait_change(0.2)
                    await out.barrier_point()
                else:
                    pending = [t for n, t in self._next_poll.items() if n in self.splits]
                    await asyncio.sleep(
                        max(0.005, min([self.poll_interval, *[t - now for t in pending]]))
                    )
                    await out.barrier_point()
                now = time.monotonic()
                for split in self.splits.values():
                    split.update_idle(now)
                    self._report(split, hooks)
                await self._progress(out, hooks)
        finally:
            for task in inflight.values():
                task.cancel()
            for task in inflight.values():
                with contextlib.suppress(BaseException):
                    await task
        if hooks.on_progress is not None:
            await hooks.on_progress()
        else:
            final = self.final_watermark()
            if final is not None:
                await out.emit_watermark(final)

    async def _discover(self, hooks: DriveHooks) -> None:
        """List the shards again: closures reach the readers (so a parent can end), new shards
        join the lineage (children start once their parents ended)."""
        listed = await self._list()
        added = self.lineage.update(listed)
        for shard in listed:
            if shard.number in self.readers:
                self.readers[shard.number].update_shard(shard)
        if added:
            self.shards_added.extend(s.number for s in added)
            log.info("%s: new shard(s) %s", self._where(), [s.shard_id for s in added])

    async def _progress(self, out: SourceOutput, hooks: DriveHooks) -> None:
        mark, _ = self.combined_watermark()
        if mark is not None and (self.shardset.emitted is None or mark > self.shardset.emitted):
            self.shardset.emitted = mark  # a child without a read parent starts here
        if hooks.on_progress is not None:
            await hooks.on_progress()
            return
        mark, idle = self.combined_watermark()
        if mark is not None:
            await out.emit_watermark(mark, idle)

    offsets_word = "sequences"

    def _after_release(self, split: PartitionSplit) -> None:
        self.shardset.check_ended(cast(ShardSplit, split))

    def _register(self, split: ShardSplit, hooks: DriveHooks) -> None:
        """A split started (registered with alignment) or finished."""
        self._next_poll.setdefault(split.partition, 0.0)
        if hooks.aligner is not None:
            hooks.aligner.register(f"{hooks.split_prefix}:{split.key}")
        self._report(split, hooks)

    async def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Nothing to commit: positions live in checkpoints (Kinesis has no consumer offsets)."""

    # checkpoints and metrics --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Positions per shard (decimal strings), held rows, shard lineage state (see
        :meth:`.shardset.ShardSet.snapshot`)."""
        return self.shardset.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`snapshot` (sequence numbers as strings or ints)."""
        self.shardset.restore(state)

    def metrics(self) -> dict[str, Any]:
        mark, idle = self.combined_watermark()
        shards: dict[int, Any] = {}
        for number, split in self.splits.items():
            reader = self.readers[number].metrics()
            shards[number] = {
                **split.metrics(),
                "throttled": reader["throttled"],
                "iterators_renewed": reader["iterators_renewed"],
                "calls": reader["calls"],
            }
        return {
            "stream": self.stream_name,
            "stream_watermark": mark,
            "stream_idle": idle,
            "records": sum(s.records for s in self.splits.values()),
            "dead_letters_decoded": sum(s.dead_letters for s in self.splits.values()),
            "throttled": sum(r.throttled for r in self.readers.values()),
            "iterators_renewed": sum(r.iterators_renewed for r in self.readers.values()),
            "start_lookups": dict(self.lookups),
            "shards_added": list(self.shards_added),
            "missing_offsets": {n: [str(v) for v in r] for n, r in self.missing_offsets.items()},
            "shards": shards,
            "partitions": shards,
        }
