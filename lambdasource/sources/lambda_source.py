"""``ls.LambdaSource``: the lake's history, then the live stream, as one event-time-correct source.

Handoff (DESIGN §3, firm):

- ``handoff="timestamp"``: ``cutoff`` defaults to the lake's high-water mark. The lake contributes
  records with time < cutoff, the stream records with time >= cutoff; each stream partition starts
  at the first offset whose record timestamp is >= ``cutoff − out_of_orderness`` (a verified
  lookup, see :mod:`.kafka.positions`). Stream records with time < cutoff are dropped and counted
  (``metrics()["dropped_before_cutoff"]``). **Limit of timestamp mode:** a record with time <
  cutoff that reached the stream after the lake was written is in neither side: it is dropped
  (counted), not delivered. Record timestamps are not event times: a record whose record
  timestamp is earlier than ``cutoff − out_of_orderness`` but whose event time is >= cutoff is
  missed too. Use ``handoff="offsets"`` with an archiver-written lake for exactness. A partition
  whose earliest retained record is already at or after ``cutoff − out_of_orderness``, with
  earlier offsets deleted by retention, may have lost records after the cutoff:
  :class:`HandoffGapError` unless ``allow_gaps=True`` (counted in ``metrics()["deleted_before"]``).
- ``handoff="offsets"``: the lake contributes everything it holds; the stream every record from
  the per-partition offsets the lake's commits recorded (partitions absent: earliest). No
  duplicate, no gap, whatever the event times. If a partition's earliest retained offset is
  beyond the recorded one, :class:`HandoffGapError` names partition and missing range, unless
  ``allow_gaps=True`` (then the missing offsets are counted in ``metrics()["missing_offsets"]``).
  A recorded offset beyond the partition's end (the topic was deleted and recreated) is the same
  error (``allow_gaps=True``: read the partition from its earliest offset, counted in
  ``metrics()["recorded_beyond_end"]``).

Kinesis (issue 16): the stream may be a :class:`~lambdasource.KinesisStream`
(:class:`~.stream_protocol.HandoffStream`: partition = shard number, offset = sequence number).
``handoff="offsets"`` needs a lake the archiver wrote from that same stream (a lake of a Kafka
topic, or of another stream, is a :class:`HandoffError`); each shard the lake recorded resumes at
its recorded next sequence number; shards it never recorded (children created after its last
commit) are read from TRIM_HORIZON once their parents are done, so every record is read once. A
recorded position below the shard's first retained record is a :class:`HandoffGapError` naming
stream, shard id and the missing sequence numbers (``allow_gaps=True``: continue at the first
retained record, counted in ``metrics()["missing_offsets"]`` — sequence numbers, which are
records on moto but sparse on Kinesis); a position beyond a closed shard's end, or a recorded
unfinished shard the stream does not list, means the stream was recreated (same error;
``allow_gaps=True``: ``metrics()["recorded_beyond_end"]``). The timestamp handoff works as for
Kafka (AT_TIMESTAMP on the arrival time, verified on event time), except that Kinesis cannot tell
whether a shard's first retained record was its first, so the retention check of the timestamp
handoff is Kafka's only.

Pinned lake state (DESIGN §3): ``run`` first pins the lake (:meth:`Lake.pin`) — the commit
sequence, Iceberg snapshot or file list it reads — and takes the recorded offsets and the
high-water mark from that same state; the lake's snapshot carries it, so a restore reads it again.

Running: the stream opens before the lake is read (pre-warmed) and both run concurrently; each
partition hands over on its own (no barrier between readers). The output watermark is the minimum
over the lake (until it finishes) and the stream partitions that are neither idle nor finished, so
it never passes the lake's progress, and it never regresses. With ``alignment`` every split (the
lake, each partition) belongs to one :class:`AlignmentGroup` and the bound holds per record: a
stream row leaves only when its time is within ``global + max_drift + out_of_orderness`` (global
never ahead of the watermark already emitted) — rows beyond it are held in their partition, which
stays paused; a lake batch waits for the bound unless the lake holds the minimum itself, and lake
batches of sorted rows span at most ``max_drift + out_of_orderness``. ``alignment=None`` runs the
same job unaligned: the stream is read as fast as it comes, so downstream buffers grow;
``max_lead_us`` / ``rows_beyond_drift`` make that visible.

One task of a scale-out job (DESIGN §3 "Tasks"): :meth:`LambdaSource.for_partition` reads Kafka
partition ``p`` of ``N`` only — its stream split, the lake's part of ``p``
(:meth:`LakeSource.for_partition`: the archiver's split files, or the rows whose key maps to
``p``) and the handoff of ``p`` (its recorded offset, or the cutoff). Every stream record's key is
checked with Kafka's default partitioner: a non-null key that maps to another partition is a
:class:`~lambdasource.errors.MisplacedKeyError` naming topic, partition and offset (the topic is
not partitioned by that key, so the job's keyed state would be split across tasks — an error, not
a dead letter, because every later result of that key would be wrong). A record with a null key
stays with the partition it arrived on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, MisplacedKeyError, SchemaError
from ..partitioning import NULL_KEY, KeyPartitioner
from ..timeutil import (
    TIME_TYPE,
    Duration,
    format_duration,
    format_time,
    normalize_time_array,
    parse_duration,
    to_micros,
)
from .alignment import Alignment, AlignmentGroup
from .base import Source, SourceOutput
from .conform import cast_failures, conform
from .handoff import HandoffChecks, Lake
from .kafka.emit import DriveHooks
from .kafka.split import PartitionSplit
from .kafka.stream import KafkaStream
from .lake.commits import ShardRecord
from .lake.partitioned import make_partitioner
from .lake.pinned import LakeState
from .lake.source import LakeSource
from .stream_protocol import HandoffStream, stream_kind

log = logging.getLogger("lambdasource.lambda_source")

HANDOFFS = ("timestamp", "offsets")
LAKE = "lake"
_PENDING_CAP = 1 << 20


class _TaskLock:
    """An asyncio lock that the task holding it may take again (nested ``async with``)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if self._owner is not task or task is None:
            await self._lock.acquire()
            self._owner = task
        self._depth += 1

    async def __aexit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
            self._lock.release()


class _LockedOutput:
    """Serialises two writers (lake task, stream task) onto one :class:`SourceOutput`;
    :meth:`exclusive` keeps the other writer (and the barriers it would inject) out across
    several sends, e.g. a fetch's rows and dead letters."""

    def __init__(self, owner: LambdaSource, out: SourceOutput, kind: str) -> None:
        self.owner = owner
        self.out = out
        self.kind = kind

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        await self.owner._emit(self.kind, batch, position)

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        if self.kind == LAKE:
            await self.owner._lake_watermark(time)
        # stream watermarks are combined by the owner (on_progress)

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        async with self.owner._lock:
            await self.out.dead_letter(batch, reason, position)

    async def barrier_point(self) -> None:
        async with self.owner._lock:
            await self.out.barrier_point()

    def exclusive(self) -> _TaskLock:
        return self.owner._lock


class LambdaSource(HandoffChecks, Source):
    """Lake history + live stream (see module docstring for the firm semantics)."""

    def __init__(
        self,
        lake: Source,
        stream: HandoffStream,
        cutoff: Any = None,
        handoff: str = "timestamp",
        out_of_orderness: Duration = "5m",
        idle_timeout: Duration = "30s",
        alignment: Alignment | None = Alignment(max_drift="30m"),  # noqa: B008 - frozen config
        allow_gaps: bool = False,
        name: str = "lambda",
    ) -> None:
        if handoff not in HANDOFFS:
            raise ConfigError(f"LambdaSource: handoff must be one of {HANDOFFS}, got {handoff!r}")
        if not isinstance(lake, Source) or not isinstance(lake, Lake):
            raise ConfigError(
                "LambdaSource: lake must be a lake source (ls.ParquetLake / ls.IcebergLake) with "
                f"high_water_mark() and recorded_offsets(), got {lake!r}"
            )
        if not isinstance(stream, KafkaStream) and not (
            stream_kind(stream) == "kinesis" and isinstance(stream, HandoffStream)
        ):
            raise ConfigError(
                f"LambdaSource: stream must be a KafkaStream or a KinesisStream, got {stream!r}"
            )
        if stream.time_column != lake.time_column:
            raise SchemaError(
                f"LambdaSource: lake time column {lake.time_column!r} differs from the stream's "
                f"{stream.time_column!r}"
            )
        if handoff == "offsets" and cutoff is not None:
            raise ConfigError("LambdaSource: cutoff= applies to handoff='timestamp' only")
        self.lake = lake
        self.stream: HandoffStream = stream
        self.kind = stream_kind(stream)
        self.handoff = handoff
        self.cutoff: int | None = None if cutoff is None else to_micros(cutoff)
        self.out_of_orderness = parse_duration(out_of_orderness, name="out_of_orderness")
        self.idle_timeout = parse_duration(idle_timeout, name="idle_timeout")
        self.alignment = alignment
        self.allow_gaps = allow_gaps
        self.name = name
        self.time_column = lake.time_column
        self.bounded = stream.bounded
        self._lock = _TaskLock()
        self._group: AlignmentGroup | None = None
        self._lake_mark: int | None = None
        self._lake_done = False
        self._out: SourceOutput | None = None
        self._emitted: int | None = None
        self.dropped_before_cutoff = 0
        self.lake_rows_at_or_after_cutoff = 0
        self.missing_offsets: dict[int, tuple[int, int]] = {}
        self.beyond_end: dict[int, tuple[int, int]] = {}  # allow_gaps: (recorded, end)
        self.deleted_before: dict[int, int] = {}  # timestamp handoff, allow_gaps: earliest offset
        self.recorded: dict[int, int] = {}
        self.lake_shards: dict[int, ShardRecord] = {}  # Kinesis: the lineage the lake recorded
        self.pinned: LakeState | None = None
        self.lake_covers: int | None = None  # offsets handoff: the lake's high-water mark
        self.rows = {LAKE: 0, "stream": 0}
        self.max_lead = {LAKE: 0, "stream": 0}
        self.rows_beyond_drift = {LAKE: 0, "stream": 0}
        self.handoff_at: dict[int, float] = {}  # per partition: first stream row emitted
        self._started: float | None = None
        self._lake_finished: float | None = None
        self._finished: float | None = None
        self._pending: list[tuple[str, np.ndarray]] = []
        self._pending_rows = 0
        self.partitioner: KeyPartitioner | None = None  # for_partition: checks stream keys
        self.expected_partitions: int | None = None  # for_partition: the topic's partitions
        self.lake_only = False
        """Set by the state bootstrap for its pass: plan the handoff and open the stream (its
        start offsets, gap checks), read the lake alone with the lake's own watermarks (the
        stream, not read, holds nothing back), end with the lake's last one; the snapshot then
        holds the lake's end and the stream's start positions."""

    def for_partition(
        self,
        partition: int,
        partitions: int,
        key: list[str] | str,
        partitioner: KeyPartitioner | None = None,
    ) -> LambdaSource:
        """A copy of this (not yet run) source for the task of Kafka partition ``partition`` of
        ``partitions``: the stream reads only that partition, the lake is
        ``lake.for_partition(...)``, the handoff is that partition's, and a stream record whose
        ``key`` maps to another partition raises :class:`MisplacedKeyError` (module docstring).
        ``partitioner`` says how the producer serialised the key (default: as a string)."""
        if self.kind != "kafka":
            raise ConfigError(
                f"source={self.name}: for_partition (scale-out tasks) needs a KafkaStream; "
                f"tasks over Kinesis shards are not supported yet ({self.kind} stream "
                f"{self.stream.topic})"
            )
        chosen = make_partitioner(partition, partitions, key, partitioner)
        lake: object = self.lake
        if not isinstance(lake, LakeSource):
            raise ConfigError(
                f"source={self.name}: for_partition needs a lake source (ls.ParquetLake / "
                f"ls.IcebergLake), got {lake!r}"
            )
        if self.stream.schema is not None:
            chosen.check_schema(self.stream.schema, f"source={self.name} topic={self.stream.topic}")
        clone = LambdaSource(
            lake.for_partition(partition, partitions, key, chosen),
            self.stream.for_partitions([partition]),
            handoff=self.handoff,
            out_of_orderness=self.out_of_orderness,
            idle_timeout=self.idle_timeout,
            alignment=self.alignment,
            allow_gaps=self.allow_gaps,
            name=self.name,
        )
        clone.cutoff = self.cutoff
        clone.lake_only = self.lake_only
        clone.partitioner = chosen
        clone.expected_partitions = partitions
        return clone

    @property
    def schema(self) -> pa.Schema | None:
        """The one schema both sides are unified to: the lake's declared schema, else the
        stream's (missing columns null, safe casts; a stream value that does not cast is a dead
        letter with its topic/partition/offset and column; a type that cannot cast at all is a
        SchemaError naming the column)."""
        return self.lake.schema or self.stream.schema

    # running ------------------------------------------------------------------------------------

    async def run(self, out: SourceOutput) -> None:
        self._out = out
        self._started = time.perf_counter()
        if self.alignment is not None and not self.lake_only:
            self._group = self.alignment.build()
        else:  # unaligned runs still track split watermarks (never pausing) to report the skew
            self._group = AlignmentGroup(self.alignment_drift, enforce=False)
        self._group.register(LAKE, gate=True)
        lake: object = self.lake
        if self.alignment is not None and isinstance(lake, LakeSource) and lake.batch_span is None:
            # lake batches of sorted rows span at most max_drift + out_of_orderness of event
            # time, each followed by its watermark: lake records stay within the bound even
            # while the lake is the minimum split — and in the state bootstrap's pass, which
            # reads the lake alone (else an hour's batch leads its watermark by an hour)
            lake.batch_span = self.alignment_drift + self.out_of_orderness
        starts, default, floor = await self._plan_handoff()
        if self.partitioner is not None:  # a task: only its partition's recorded offset
            starts = {p: start for p, start in starts.items() if p in self._task_partitions()}
        await self.stream.open(
            starts=starts,
            default_start=default,
            floor=floor,
            out_of_orderness=self.out_of_orderness,
            idle_timeout=self.idle_timeout / 1e6,
            check_offsets=self.handoff != "offsets",  # _check_gaps names the lake instead
        )
        # timestamp handoff: the stream re-reads (and dead-letters) the topic from its start
        # offsets, so the lake emits only the archived dead letters before them (a restored
        # lake keeps the limits of its first run)
        if (
            self.handoff == "timestamp"
            and isinstance(lake, LakeSource)
            and lake.dead_letters_below is None
        ):
            lake.dead_letters_below = {
                p: s.start for p, s in self.stream.splits.items() if s.start is not None
            }
        try:
            self._check_partition_count()
            if self.handoff == "offsets":
                await self._check_gaps()
            else:
                self._check_retained_since_cutoff()
            hooks = DriveHooks(
                transform=self._transform,
                reject=self._uncastable,
                aligner=self._group,
                split_prefix="stream",
                on_progress=self._progress,
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._run_lake(), name=f"{self.name}:lake")
                if not self.lake_only:
                    tg.create_task(
                        self.stream.drive(_LockedOutput(self, out, "stream"), hooks),
                        name=f"{self.name}:stream",
                    )
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from group_error.exceptions[0].__cause__
        finally:
            await self.stream.close()
        self._finished = time.perf_counter()
        stream_mark = None if self.lake_only else self.stream.final_watermark()
        final = [m for m in (self._lake_mark, stream_mark) if m is not None]
        if final:
            async with self._lock:
                await self._emit_mark(max(final), False)

    async def _run_lake(self) -> None:
        await self.lake.run(_LockedOutput(self, self._out_or_fail(), LAKE))
        self._lake_finished = time.perf_counter()
        async with self._lock:
            self._lake_done = True
            assert self._group is not None
            self._group.report(LAKE, self._lake_mark, finished=True)
            if self._pending:
                self._measure_lead(LAKE, None)
        await self._progress()

    def _out_or_fail(self) -> SourceOutput:
        assert self._out is not None
        return self._out

    # the two inputs -----------------------------------------------------------------------------

    def _uncastable(self, batch: pa.RecordBatch) -> list[tuple[int, str]]:
        """Stream rows the unified schema cannot take: dead letters with their position."""
        schema = self.schema
        if schema is None or batch.schema == schema:
            return []
        return cast_failures(batch, schema)

    def _task_partitions(self) -> list[int]:
        return list(self.stream.partitions or [])

    def _check_partition_count(self) -> None:
        """A task's partition count must be the topic's: else keys map to other partitions."""
        expected = self.expected_partitions
        consumer = getattr(self.stream, "_consumer", None)
        if expected is None or consumer is None:
            return
        total = len(consumer.partitions_for_topic(self.stream.topic) or ())
        if total and total != expected:
            raise ConfigError(
                f"source={self.name} topic={self.stream.topic}: for_partition was given "
                f"partitions={expected}, but the topic has {total} partition(s): keys would "
                "map to the wrong tasks"
            )

    def _check_keys(
        self, split: PartitionSplit, batch: pa.RecordBatch, offsets: np.ndarray
    ) -> None:
        """A task's stream: every non-null key must map to the partition it arrived on."""
        partitioner = self.partitioner
        if partitioner is None or not batch.num_rows:
            return
        where = f"source={self.name} topic={self.stream.topic} partition={split.partition}"
        partitioner.check_schema(batch.schema, where)
        owners = partitioner.partitions_of(batch)
        wrong = np.flatnonzero((owners != NULL_KEY) & (owners != split.partition))
        if len(wrong):
            row = int(wrong[0])
            value = [batch.column(c)[row].as_py() for c in partitioner.key]
            shown = repr(value[0]) if len(value) == 1 else repr(tuple(value))
            raise MisplacedKeyError(
                f"{where} offset={int(offsets[row])}: key {','.join(partitioner.key)}={shown} "
                f"belongs to partition {int(owners[row])} of {partitioner.partitions} by Kafka's "
                f"default partitioner ({len(wrong)} such record(s) in this fetch): the topic is "
                "not partitioned by this key (check key= and the serializer)"
            )

    def _transform(
        self, split: PartitionSplit, batch: pa.RecordBatch, offsets: np.ndarray
    ) -> tuple[pa.RecordBatch, np.ndarray]:
        """Stream side: check a task's keys; drop (and count) records before the cutoff;
        conform to the lake schema."""
        self._check_keys(split, batch, offsets)
        if self.handoff == "timestamp":
            assert self.cutoff is not None
            keep = pc.fill_null(
                pc.greater_equal(batch.column(self.time_column), pa.scalar(self.cutoff, TIME_TYPE)),
                False,
            )
            kept = pc.sum(keep.cast(pa.int64())).as_py() or 0
            dropped = batch.num_rows - kept
            if dropped:
                split.dropped += dropped
                self.dropped_before_cutoff += dropped
                batch = batch.filter(keep)
                offsets = offsets[np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)]
        if batch.num_rows and split.partition not in self.handoff_at:
            self.handoff_at[split.partition] = time.perf_counter()
        schema = self.schema
        if schema is not None and batch.schema != schema:
            batch = conform(batch, schema, f"source={self.name} topic={self.stream.topic}")
        return batch, offsets

    async def _emit(self, kind: str, batch: pa.RecordBatch, position: str | None) -> None:
        group = self._group
        assert group is not None and self._out is not None
        aligned = self.alignment is not None and not self.lake_only
        if kind == LAKE:
            if aligned:
                await group.wait_allowed(LAKE)
            if self.handoff == "timestamp" and batch.num_rows:
                assert self.cutoff is not None
                times = normalize_time_array(batch.column(self.time_column))
                keep = pc.fill_null(pc.less(times, pa.scalar(self.cutoff, TIME_TYPE)), True)
                kept = pc.sum(keep.cast(pa.int64())).as_py() or 0
                if kept < batch.num_rows:
                    self.lake_rows_at_or_after_cutoff += batch.num_rows - kept
                    batch = batch.filter(keep)
        if not batch.num_rows:
            return
        schema = self.schema
        if kind == LAKE and schema is not None and batch.schema != schema:
            batch = conform(batch, schema, f"source={self.name} lake={self.lake.name} {position}")
        times = normalize_time_array(batch.column(self.time_column))
        top = pc.max(times)
        if kind == LAKE and aligned and top.is_valid:
            await self._wait_lake_bound(int(top.cast(pa.int64()).as_py()))
        async with self._lock:
            if top.is_valid:
                micros = np.asarray(times.drop_null().cast(pa.int64()))
                self._measure_lead(kind, micros)
            self.rows[kind] += batch.num_rows
            await self._out.emit(batch, position)

    async def _wait_lake_bound(self, newest: int) -> None:
        """Hold a lake batch until its newest record is within the alignment bound, unless the
        lake holds the global watermark back itself (then its rows lead by at most its own
        granularity: a row group's span for sorted files, else a partition)."""
        group = self._group
        assert group is not None
        waited = False
        while newest > group.release_bound(self.out_of_orderness) and not group.is_minimum(LAKE):
            if not waited:
                group.set_held(LAKE, True)
                waited = True
            await group.wait_change(0.2)
        if waited:
            group.set_held(LAKE, False)

    def _measure_lead(self, kind: str, micros: np.ndarray | None) -> None:
        """Lead of emitted rows over the global watermark (what downstream must buffer).

        Rows emitted before the lake's first watermark are measured against that watermark
        when it comes (a lower bound of their lead); at most ``_PENDING_CAP`` rows are kept.
        """
        assert self._group is not None
        reference = self._group.reference
        if reference is None:
            if micros is not None and self._pending_rows < _PENDING_CAP:
                self._pending.append((kind, micros))
                self._pending_rows += len(micros)
            return
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if micros is not None:
            pending.append((kind, micros))
        drift = self.alignment_drift
        for which, values in pending:
            if len(values):
                self.max_lead[which] = max(self.max_lead[which], int(values.max()) - reference)
                beyond = int(np.count_nonzero(values > reference + drift))
                self.rows_beyond_drift[which] += beyond

    @property
    def alignment_drift(self) -> int:
        """The configured max drift (30m when unaligned: the yardstick of the contrast)."""
        drift = self.alignment.max_drift if self.alignment is not None else "30m"
        return parse_duration(drift, name="max_drift")

    async def _lake_watermark(self, time: int) -> None:
        """The lake's watermark never promises more than the lake covers: the cutoff
        (timestamp handoff) or its high-water mark (offsets handoff: records after the recorded
        offsets may have any time from there on, e.g. the rest of a half-written hour)."""
        if self.handoff == "timestamp":
            assert self.cutoff is not None
            time = min(time, self.cutoff - 1)
        elif self.lake_covers is not None:
            time = min(time, self.lake_covers - 1)
        async with self._lock:
            if self._lake_mark is None or time > self._lake_mark:
                self._lake_mark = time
            assert self._group is not None
            self._group.report(LAKE, self._lake_mark)
            if self._pending:
                self._measure_lead(LAKE, None)
        await self._progress()

    async def _progress(self) -> None:
        """Emit the combined watermark (min over the lake until it ends and the live stream
        partitions that are not idle) when it advances."""
        async with self._lock:
            # the state bootstrap's pass reads the lake alone: the lake's marks are the watermark
            live = () if self.lake_only else self.stream.splits.values()
            splits = [s for s in live if not s.finished]
            values = [s.watermark for s in splits if not s.idle]
            if not self._lake_done:
                values.append(self._lake_mark)
            if values:
                if any(v is None for v in values):
                    return
                await self._emit_mark(min(v for v in values if v is not None), False)
                return
            known = [m for s in splits if (m := s.watermark) is not None]
            if self._lake_mark is not None:
                known.append(self._lake_mark)
            if known:
                await self._emit_mark(max(known), bool(splits))

    async def _emit_mark(self, mark: int, idle: bool) -> None:
        assert self._out is not None
        if self._emitted is None or mark > self._emitted:
            self._emitted = mark
        await self._out.emit_watermark(mark, idle)
        if self._group is not None:
            self._group.note_output(mark)

    # checkpoints and metrics --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Lake position, stream next offsets and the cutoff in force (a restored run must not
        recompute it: the lake may have grown since)."""
        return {
            "lake": self.lake.snapshot(),
            "stream": self.stream.snapshot(),
            "cutoff": self.cutoff,
        }

    async def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        await self.lake.on_checkpoint_complete(checkpoint_id)
        await self.stream.on_checkpoint_complete(checkpoint_id)

    def restore(self, state: dict[str, Any]) -> None:
        self.lake.restore(state.get("lake"))
        if state.get("stream"):
            self.stream.restore(state["stream"])
        if state.get("cutoff") is not None and self.handoff == "timestamp":
            self.cutoff = int(state["cutoff"])

    def phases(self) -> dict[str, float | None]:
        """Wall-clock phases (s): lake read (from ``run``), handoff stall (lake end → first
        stream row; negative = a pre-warmed partition handed over before the lake ended),
        last partition's handover after the lake end, stream after the lake, total."""
        start, lake_end, end = self._started, self._lake_finished, self._finished
        if start is None:
            return {}
        firsts = list(self.handoff_at.values())

        def since_lake(t: float | None) -> float | None:
            return None if lake_end is None or t is None else t - lake_end

        return {
            "lake_s": None if lake_end is None else lake_end - start,
            "handoff_stall_s": since_lake(min(firsts) if firsts else None),
            "last_partition_handover_s": since_lake(max(firsts) if firsts else None),
            "stream_after_lake_s": since_lake(end),
            "total_s": None if end is None else end - start,
        }

    def metrics(self) -> dict[str, Any]:
        group = self._group
        task = (
            None
            if self.partitioner is None
            else {"partition": self._task_partitions(), "key": list(self.partitioner.key)}
        )
        alignment = group.metrics() if group is not None else {}
        if self.alignment is None:
            alignment["max_drift"] = None
        return {
            "handoff": self.handoff,
            "cutoff": self.cutoff,
            "cutoff_time": format_time(self.cutoff),
            "out_of_orderness": format_duration(self.out_of_orderness),
            "watermark": self._emitted,
            "lake_watermark": self._lake_mark,
            "lake_finished": self._lake_done,
            "rows": dict(self.rows),
            "phases": self.phases(),
            "dropped_before_cutoff": self.dropped_before_cutoff,
            "lake_rows_at_or_after_cutoff": self.lake_rows_at_or_after_cutoff,
            "recorded_offsets": dict(self.recorded),
            "pinned": None if self.pinned is None else self.pinned.to_dict(),
            "deleted_before": dict(self.deleted_before),
            "recorded_beyond_end": {
                p: {"recorded": need, "end": end} for p, (need, end) in self.beyond_end.items()
            },
            # Kinesis: a range of sequence numbers, which are sparse: no record count is known
            "missing_offsets": {
                p: {"from": lo, "to": hi, "count": None if self.kind == "kinesis" else hi - lo}
                for p, (lo, hi) in self.missing_offsets.items()
            },
            "missing_offsets_total": (
                None
                if self.kind == "kinesis"
                else sum(hi - lo for lo, hi in self.missing_offsets.values())
            ),
            "aligned": self.alignment is not None,
            "alignment": alignment,
            "max_lead_us": dict(self.max_lead),
            "rows_beyond_drift": dict(self.rows_beyond_drift),
            "lake": self.lake.metrics(),
            "stream": self.stream.metrics(),
            "task": task,
        }
