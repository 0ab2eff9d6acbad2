"""The lake's commit records: which files a writer committed and which Kafka offsets they cover.

The exact-offset handoff (DESIGN §3) depends on this format; the ``lake`` archiver writes it and
the lake readers, ``inspect`` and the lambda source read it.

Parquet lakes: one JSON file per commit at ``<root>/_lambdasource/commits/<sequence:020d>.json``,
written atomically (temporary name + rename locally; a single PUT on S3) *after* the data files
it lists. When a lake has commit records, only files listed in some commit (and not listed as
``removed`` by a later one — compaction retires the files it rewrote) belong to the lake; files a
crashed writer left behind without a commit are orphans, ignored and reported.

Iceberg tables: the same content in snapshot summary properties (``PROP_*`` below) of the
snapshot that appended the data; the newest snapshot carrying them is the newest commit.

Offsets: ``offsets[p] = n`` means every record of Kafka partition ``p`` with offset ``< n`` is in
the lake (committed in this or an earlier commit) and none with offset ``>= n`` is: the stream
resumes at ``n``. Partitions absent from ``offsets`` were never archived (resume at the earliest).

Kinesis lakes (``stream_kind="kinesis"``, ``topic`` = the stream's name) use the same integer
model (issue 16): partition = shard number, offset = sequence number (an arbitrary-size int;
``offsets[s] = n`` means every record of shard ``s`` with sequence number ``< n`` is archived and
none ``>= n``), written as **decimal strings** in JSON (real sequence numbers exceed 64 bits; both
forms are read). ``shards`` records the shard lineage the archiver saw at the commit: per shard
number its id, its parents' numbers, whether it was closed (split/merged) and whether the lake
holds all of it (``finished``: its children may start). Records without ``stream_kind`` are Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from ...errors import LakeReadError

COMMITS_DIR = "_lambdasource/commits"
# the archiver's dead letters of commit n: <root>/_lambdasource/dead_letters/<n:020d>.parquet
# (Iceberg: under the table location); only files of committed sequences count
DEAD_LETTERS_DIR = "_lambdasource/dead_letters"


def dead_letters_path(sequence: int) -> str:
    """Where the dead letters of commit ``sequence`` live, relative to the lake root."""
    return f"{DEAD_LETTERS_DIR}/{sequence:020d}.parquet"


FORMAT_VERSION = 1

PROP_TOPIC = "lambdasource.kafka.topic"
PROP_OFFSETS = "lambdasource.kafka.offsets"  # JSON object {"<partition>": next_offset}
PROP_HIGH_WATERMARK = "lambdasource.high-watermark-us"  # int µs, as a string
PROP_SEQUENCE = "lambdasource.commit-sequence"
PROP_EVENT_TIMES = "lambdasource.kafka.max-event-time-us"  # JSON object {"<partition>": µs}
PROP_STREAM_KIND = "lambdasource.stream.kind"  # "kinesis" (absent: Kafka)
PROP_SHARDS = "lambdasource.kinesis.shards"  # JSON object {"<shard number>": ShardRecord JSON}

STREAM_KINDS = ("kafka", "kinesis")


@dataclass(frozen=True)
class ShardRecord:
    """One Kinesis shard as the archiver saw it at a commit (the lineage of the handoff)."""

    shard_id: str
    parents: tuple[int, ...] = ()  # shard numbers of its parent(s) (split: one, merge: two)
    closed: bool = False  # the stream closed it (split or merge): it has an ending sequence
    finished: bool = False  # closed and archived to its end: its children may be read

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.shard_id,
            "parents": list(self.parents),
            "closed": self.closed,
            "finished": self.finished,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ShardRecord:
        return cls(
            shard_id=str(raw["id"]),
            parents=tuple(int(p) for p in raw.get("parents", ())),
            closed=bool(raw.get("closed", False)),
            finished=bool(raw.get("finished", False)),
        )


def _shards_json(shards: dict[int, ShardRecord]) -> dict[str, Any]:
    return {str(n): shard.to_json() for n, shard in sorted(shards.items())}


def _shards_from(raw: Any) -> dict[int, ShardRecord]:
    return {int(n): ShardRecord.from_json(entry) for n, entry in (raw or {}).items()}


def _kind_of(raw: Any) -> str:
    kind = "kafka" if raw is None else str(raw)
    if kind not in STREAM_KINDS:
        raise ValueError(f"unknown stream kind {kind!r}")
    return kind


@dataclass(frozen=True)
class CommitRecord:
    """One commit of a lake writer (immutable)."""

    sequence: int
    offsets: dict[int, int] = field(default_factory=dict)
    topic: str | None = None
    files: tuple[str, ...] = ()  # paths relative to the lake root (Parquet lakes)
    removed: tuple[str, ...] = ()  # files this commit retires (compaction rewrote them)
    operation: str = "append"  # "append" | "compact"
    rows: int = 0
    high_watermark: int | None = None  # µs: every record with time < this is complete
    event_times: dict[int, int] = field(default_factory=dict)  # per partition: max time archived
    committed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    stream_kind: str = "kafka"  # "kafka" | "kinesis" (then topic is the Kinesis stream's name)
    shards: dict[int, ShardRecord] = field(default_factory=dict)  # Kinesis: the shard lineage

    def _offsets_json(self) -> dict[str, int | str]:
        """Kafka offsets as JSON ints (unchanged format); Kinesis sequence numbers as strings."""
        if self.stream_kind == "kinesis":
            return {str(p): str(o) for p, o in sorted(self.offsets.items())}
        return {str(p): o for p, o in sorted(self.offsets.items())}

    def describe_positions(self) -> str:
        """One line for humans: the stream and its recorded next offsets / sequence numbers."""
        positions = ", ".join(f"{p}:{o}" for p, o in sorted(self.offsets.items())) or "-"
        if self.stream_kind == "kinesis":
            return (
                f"recorded sequence numbers (commit {self.sequence}, kinesis stream "
                f"{self.topic or '-'}, next per shard): {positions}"
            )
        return f"recorded offsets (commit {self.sequence}, topic {self.topic or '-'}): {positions}"

    def file_name(self) -> str:
        return f"{COMMITS_DIR}/{self.sequence:020d}.json"

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT_VERSION,
                "sequence": self.sequence,
                "topic": self.topic,
                "offsets": self._offsets_json(),
                "files": list(self.files),
                "removed": list(self.removed),
                "operation": self.operation,
                "rows": self.rows,
                "high_watermark_us": self.high_watermark,
                "event_times_us": {str(p): t for p, t in sorted(self.event_times.items())},
                "committed_at": self.committed_at,
                **(
                    {"stream_kind": self.stream_kind, "shards": _shards_json(self.shards)}
                    if self.stream_kind != "kafka"
                    else {}
                ),
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> CommitRecord:
        try:
            raw: dict[str, Any] = orjson.loads(data)
            if raw.get("format") != FORMAT_VERSION:
                raise ValueError(f"unknown format {raw.get('format')!r}")
            return cls(
                sequence=int(raw["sequence"]),
                topic=raw.get("topic"),
                offsets={int(p): int(o) for p, o in raw.get("offsets", {}).items()},
                files=tuple(raw.get("files", ())),
                removed=tuple(raw.get("removed", ())),
                operation=str(raw.get("operation", "append")),
                rows=int(raw.get("rows", 0)),
                high_watermark=raw.get("high_watermark_us"),
                event_times={int(p): int(t) for p, t in raw.get("event_times_us", {}).items()},
                committed_at=str(raw.get("committed_at", "")),
                stream_kind=_kind_of(raw.get("stream_kind")),
                shards=_shards_from(raw.get("shards")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LakeReadError(f"unreadable commit record file={where}: {exc}") from exc

    def snapshot_properties(self) -> dict[str, str]:
        """The Iceberg snapshot summary properties carrying this commit."""
        props = {
            PROP_SEQUENCE: str(self.sequence),
            PROP_OFFSETS: orjson.dumps(self._offsets_json()).decode(),
        }
        if self.stream_kind != "kafka":
            props[PROP_STREAM_KIND] = self.stream_kind
            props[PROP_SHARDS] = orjson.dumps(_shards_json(self.shards)).decode()
        if self.topic is not None:
            props[PROP_TOPIC] = self.topic
        if self.high_watermark is not None:
            props[PROP_HIGH_WATERMARK] = str(self.high_watermark)
        if self.event_times:
            props[PROP_EVENT_TIMES] = orjson.dumps(
                {str(p): t for p, t in sorted(self.event_times.items())}
            ).decode()
        return props

    @classmethod
    def from_snapshot_properties(
        cls, props: dict[str, str], *, where: str, rows: int = 0
    ) -> CommitRecord | None:
        """The commit carried by a snapshot summary, or None when it carries none."""
        if PROP_OFFSETS not in props:
            return None
        try:
            offsets = {int(p): int(o) for p, o in orjson.loads(props[PROP_OFFSETS]).items()}
            hwm = props.get(PROP_HIGH_WATERMARK)
            times = orjson.loads(props[PROP_EVENT_TIMES]) if PROP_EVENT_TIMES in props else {}
            return cls(
                sequence=int(props.get(PROP_SEQUENCE, "0")),
                topic=props.get(PROP_TOPIC),
                offsets=offsets,
                rows=rows,
                high_watermark=int(hwm) if hwm else None,
                event_times={int(p): int(t) for p, t in times.items()},
                stream_kind=_kind_of(props.get(PROP_STREAM_KIND)),
                shards=_shards_from(
                    orjson.loads(props[PROP_SHARDS]) if PROP_SHARDS in props else {}
                ),
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise LakeReadError(f"unreadable commit properties in {where}: {exc}") from exc


def live_files(commits: list[CommitRecord]) -> set[str]:
    """Files that belong to the lake: every committed file not retired by a later commit."""
    added: set[str] = set()
    removed: set[str] = set()
    for commit in commits:
        added.update(commit.files)
        removed.update(commit.removed)
    return added - removed


def _merge_max(per_commit: list[dict[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for values in per_commit:
        for partition, value in values.items():
            merged[partition] = max(value, merged.get(partition, value))
    return merged


def merge_offsets(commits: list[CommitRecord]) -> dict[int, int]:
    """Per partition, the highest next-offset over all commits (commits only ever advance it)."""
    return _merge_max([c.offsets for c in commits])


def merge_shards(commits: list[CommitRecord]) -> dict[int, ShardRecord]:
    """The shard lineage up to the newest commit: per shard, its newest record (a shard's
    ``closed``/``finished`` only ever turn true; a shard trimmed from the stream stays listed)."""
    merged: dict[int, ShardRecord] = {}
    for commit in commits:
        merged.update(commit.shards)
    return merged


def stream_kind_of(commits: list[CommitRecord]) -> str:
    """The kind of stream the lake's commits record ("kafka" when none says otherwise)."""
    kinds = {c.stream_kind for c in commits if c.offsets or c.topic is not None}
    return "kinesis" if "kinesis" in kinds else "kafka"


def merge_event_times(commits: list[CommitRecord]) -> dict[int, int]:
    """Per partition, the maximum event time archived over all commits."""
    return _merge_max([c.event_times for c in commits])


def archived_high_watermark(event_times: dict[int, int], out_of_orderness: int) -> int | None:
    """The archiver's high-water mark (µs, exclusive): the minimum over Kafka partitions of the
    newest event time each has archived, + 1µs − ``out_of_orderness`` (DESIGN §3)."""
    if not event_times:
        return None
    return min(event_times.values()) + 1 - out_of_orderness
