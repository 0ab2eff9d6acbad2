"""The lambda source's handoff plan and its checks (DESIGN §3 "Handoff"), a mixin of
:class:`~.lambda_source.LambdaSource`.

:meth:`HandoffChecks._plan_handoff` pins the lake and decides where the stream starts: at
``cutoff − out_of_orderness`` by record time (timestamp handoff; the stream's floor is
``cutoff − 1µs``), or per partition at the offset the lake recorded (offsets handoff). After the
stream opened, the checks make sure every partition continues exactly where the lake stopped —
offsets retention deleted are a :class:`~lambdasource.errors.HandoffGapError` naming partition
and range, a recorded offset beyond a partition's end means another topic (deleted and
recreated) — or, with ``allow_gaps=True``, continue and count what is missing. Kinesis: the same
in the integer model of :mod:`.stream_protocol` (shard numbers, sequence numbers, which are
sparse: a gap is a range that may hold no record).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

from ..errors import HandoffError, HandoffGapError
from ..timeutil import Duration, format_time
from .kafka.stream import PartitionStart
from .lake.commits import CommitRecord, ShardRecord
from .lake.pinned import LakeState
from .stream_protocol import HandoffStream

log = logging.getLogger("lambdasource.lambda_source")


@runtime_checkable
class Lake(Protocol):
    """What the lambda source needs of a lake besides being a bounded :class:`Source`: one
    pinned state (:meth:`pin`) from which the recorded offsets and the high-water mark come."""

    async def pin(self) -> LakeState: ...

    async def high_water_mark(self, out_of_orderness: Duration = 0) -> int | None: ...

    async def recorded_offsets(self) -> CommitRecord | None: ...


class HandoffChecks:
    """The handoff plan and checks; the lambda source sets every attribute below."""

    name: str
    lake: Any
    stream: HandoffStream
    kind: str  # "kafka" | "kinesis"
    handoff: str
    cutoff: int | None
    out_of_orderness: int
    allow_gaps: bool
    pinned: LakeState | None
    recorded: dict[int, int]
    lake_shards: dict[int, ShardRecord]
    lake_covers: int | None
    missing_offsets: dict[int, tuple[int, int]]
    beyond_end: dict[int, tuple[int, int]]
    deleted_before: dict[int, int]

    async def _plan_handoff(
        self,
    ) -> tuple[dict[int, PartitionStart], PartitionStart | None, int | None]:
        lake: Lake = self.lake
        self.pinned = await lake.pin()  # the one lake state of this job (DESIGN §3)
        if self.handoff == "timestamp":
            if self.cutoff is None:
                self.cutoff = await lake.high_water_mark(self.out_of_orderness)
                if self.cutoff is None:
                    raise HandoffError(
                        f"source={self.name}: the lake {self.lake.name!r} is empty, so it has no "
                        "high-water mark; pass cutoff= explicitly"
                    )
            return {}, ("time", self.cutoff - self.out_of_orderness), self.cutoff - 1
        record = await lake.recorded_offsets()
        if record is None:
            raise HandoffError(
                f"source={self.name}: handoff='offsets' needs a lake written by the lambdasource "
                f"archiver; lake {self.lake.name!r} has no commit records with Kafka offsets"
            )
        if record.stream_kind != self.kind:
            raise HandoffError(
                f"source={self.name}: the lake recorded positions of a {record.stream_kind} "
                f"stream ({record.topic or '?'}), but the stream is a {self.kind} stream "
                f"({self.stream.topic}): an exact handoff needs the stream the lake archived"
            )
        if record.topic is not None and record.topic != self.stream.topic:
            noun = "topic" if self.kind == "kafka" else "stream"
            raise HandoffError(
                f"source={self.name}: the lake recorded offsets of {noun}={record.topic}, but the "
                f"stream reads {noun}={self.stream.topic}"
            )
        self.lake_shards = dict(record.shards)
        self.recorded = dict(record.offsets)
        self.lake_covers = await lake.high_water_mark(self.out_of_orderness)
        starts: dict[int, PartitionStart] = {p: ("offset", o) for p, o in record.offsets.items()}
        return starts, ("earliest", 0), None

    async def _check_gaps(self) -> None:
        """Every partition must continue exactly where the lake stopped: a recorded offset
        below the earliest retained one is a gap (retention), one beyond the partition's end
        means the topic is not the one the lake archived (deleted and recreated)."""
        if self.kind == "kinesis":
            self._check_shard_gaps()
            return
        for p, split in sorted(self.stream.splits.items()):
            need = self.recorded.get(p, 0) if split.start is None else split.start
            begin, end = self.stream.ranges[p]
            assert begin is not None  # Kafka: the earliest offset is always known
            if end is not None and need > end:
                if not self.allow_gaps:
                    raise HandoffGapError(
                        f"source={self.name}: topic={self.stream.topic} partition={p}: the lake "
                        f"is complete up to offset {need}, but the partition ends at offset "
                        f"{end}: offsets {end}..{need - 1} do not exist (was the topic deleted "
                        f"and recreated?), so its records {begin}..{end - 1} are not the ones "
                        "the lake archived; pass allow_gaps=True to read the partition from "
                        f"offset {begin}"
                    )
                log.warning(
                    "source=%s topic=%s partition=%d: the lake recorded offset %d beyond the "
                    "partition's end %d (topic recreated?); reading it from offset %d",
                    self.name,
                    self.stream.topic,
                    p,
                    need,
                    end,
                    begin,
                )
                self.beyond_end[p] = (need, end)
                self.stream.seek(p, begin)
            elif begin > need:
                if not self.allow_gaps:
                    raise HandoffGapError(
                        f"source={self.name}: topic={self.stream.topic} partition={p}: offsets "
                        f"{need}..{begin - 1} ({begin - need} records) are neither in the lake "
                        f"(complete up to offset {need}) nor in the stream (earliest retained "
                        f"offset {begin}); pass allow_gaps=True to continue without them"
                    )
                self.missing_offsets[p] = (need, begin)
                self.stream.seek(p, begin)

    def _check_shard_gaps(self) -> None:
        """Kinesis (module docstring): per shard the lake recorded a position ``need`` for,
        ``begin > need`` is a gap (records trimmed by retention before they were archived),
        ``need > end`` of a closed shard or a recorded shard the stream does not list (and the
        lake did not finish) means another stream (deleted and recreated). Shards the lake never
        recorded are read from TRIM_HORIZON once their parents are done."""
        stream = self.stream.topic
        for number, need in sorted(self.recorded.items()):
            shard = self.lake_shards.get(number)
            shard_name = shard.shard_id if shard is not None else f"shard number {number}"
            if number not in self.stream.ranges:
                if shard is not None and shard.finished:
                    continue  # archived to its end, then trimmed: nothing is missing
                if not self.allow_gaps:
                    raise HandoffGapError(
                        f"source={self.name}: stream={stream} shard={shard_name}: the lake is "
                        f"complete up to sequence number {need}, but the stream does not list "
                        "this shard: was the stream deleted and recreated (or the shard trimmed "
                        "before it was archived)? Its records are not the ones the lake archived; "
                        "pass allow_gaps=True to continue without it"
                    )
                log.warning(
                    "source=%s stream=%s shard=%s: recorded by the lake but not in the stream; "
                    "continuing (allow_gaps)",
                    self.name,
                    stream,
                    shard_name,
                )
                self.beyond_end[number] = (need, need)
                continue
            begin, end = self.stream.ranges[number]
            if end is not None and need > end:
                if not self.allow_gaps:
                    raise HandoffGapError(
                        f"source={self.name}: stream={stream} shard={shard_name}: the lake is "
                        f"complete up to sequence number {need}, but the shard ends at {end} "
                        "(closed): was the stream deleted and recreated? Its records are not "
                        "the ones the lake archived; pass allow_gaps=True to read the shard from "
                        "its first retained record"
                    )
                log.warning(
                    "source=%s stream=%s shard=%s: the lake recorded sequence number %d beyond "
                    "the shard's end %d (stream recreated?); reading it from its start",
                    self.name,
                    stream,
                    shard_name,
                    need,
                    end,
                )
                self.beyond_end[number] = (need, end)
                if begin is not None:
                    self.stream.seek(number, begin)
            elif begin is not None and begin > need:
                if not self.allow_gaps:
                    raise HandoffGapError(
                        f"source={self.name}: stream={stream} shard={shard_name}: records with "
                        f"sequence numbers {need}..{begin - 1} may be neither in the lake "
                        f"(complete up to sequence number {need}) nor in the stream: its first "
                        f"retained record is {begin}, so retention trimmed the last record the "
                        "lake archived and any after it (Kinesis' sequence numbers are sparse: "
                        "the range may hold none); pass allow_gaps=True to continue from there"
                    )
                self.missing_offsets[number] = (need, begin)
                self.stream.seek(number, begin)  # a shard waiting for its parents starts there

    def _check_retained_since_cutoff(self) -> None:
        """Timestamp handoff: each partition must still hold its records from ``cutoff −
        out_of_orderness`` on. When the first such record is the earliest one retained and
        earlier offsets were deleted (retention), the deleted records may have been after that
        time too: a possible gap, raised like one (``allow_gaps=True``: counted in
        ``metrics()["deleted_before"]``)."""
        if self.kind == "kinesis":
            return  # Kinesis does not say whether a shard's first retained record was its first
        for p in sorted(self.stream.splits):
            lookup = self.stream.lookups.get(p)
            begin, _ = self.stream.ranges.get(p, (0, None))
            if lookup is None or begin is None or begin == 0 or lookup["offset"] != begin:
                continue
            if not self.allow_gaps:
                raise HandoffGapError(
                    f"source={self.name}: topic={self.stream.topic} partition={p}: the stream "
                    f"must hold every record from {format_time(lookup['time_us'])} (the cutoff "
                    f"− out_of_orderness) on, but its earliest retained record, offset {begin}, "
                    f"is already at or after that time and the offsets before it were deleted "
                    "(retention): records between the lake's cutoff and it may be in neither "
                    "side; pass allow_gaps=True to continue without them"
                )
            log.warning(
                "source=%s topic=%s partition=%d: offsets before %d were deleted and may have "
                "held records after the cutoff; continuing (allow_gaps)",
                self.name,
                self.stream.topic,
                p,
                begin,
            )
            self.deleted_before[p] = begin
