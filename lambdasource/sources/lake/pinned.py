"""One pinned lake state per job (DESIGN §3): what a job reads of a lake that keeps changing.

A job chooses the state once, at its first start, and every later step reads that same state:
planning (the file list), the recorded Kafka offsets of the exact handoff, the high-water mark of
the timestamp handoff, and every restore (the state travels in the checkpoint). Commits made after
it are not read from the lake — their records reach the job through the stream, which is what the
exact offsets mean.

Kinds of state:

- ``commits`` — a Parquet lake with commit records: the newest commit ``sequence`` at pin time;
  the lake is the live files of commits ``<= sequence`` (compactions after it are followed only
  where that is exact, see :func:`follow_compactions`).
- ``snapshot`` — an Iceberg table: the current ``snapshot_id``; offsets and the high-water mark
  come from that snapshot's lineage (its ancestors), never from snapshots a rollback removed.
- ``files`` — a Parquet lake without commit records: the list of data files (path and size) at
  pin time; files added later are not read (reported), a pinned file that vanished or changed
  size fails the job naming it.

Invariant: a state is immutable and plain data (``to_dict``/``from_dict`` round-trip through JSON).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ...checkpoints.codec import state_type
from ...errors import LakeStateError
from .commits import (
    CommitRecord,
    ShardRecord,
    live_files,
    merge_offsets,
    merge_shards,
    stream_kind_of,
)

Kind = Literal["commits", "snapshot", "files"]


@state_type("lake.state")
@dataclass(frozen=True)
class LakeState:
    """The state of a lake one job reads (see module docstring)."""

    kind: Kind
    sequence: int | None = None  # commits: newest commit sequence included
    snapshot_id: int | None = None  # snapshot: the Iceberg snapshot read
    files: tuple[tuple[str, int], ...] = ()  # files: (path relative to the lake root, size)
    offsets: dict[int, int] = field(default_factory=dict)  # recorded next offset per partition
    topic: str | None = None
    high_watermark: int | None = None  # recorded by the writer (µs, exclusive), if any
    rows: int = 0  # rows committed up to this state (commits/snapshot), for humans
    stream_kind: str = "kafka"  # "kinesis": offsets are sequence numbers per shard number
    shards: dict[int, ShardRecord] = field(default_factory=dict)  # Kinesis: shard lineage

    def commit_record(self) -> CommitRecord | None:
        """The recorded offsets as a :class:`CommitRecord` (None: the lake records none)."""
        if self.kind == "files" or (not self.offsets and self.topic is None):
            return None
        return CommitRecord(
            sequence=self.sequence or 0,
            offsets=dict(self.offsets),
            topic=self.topic,
            rows=self.rows,
            high_watermark=self.high_watermark,
            stream_kind=self.stream_kind,
            shards=dict(self.shards),
        )

    def describe(self) -> str:
        if self.kind == "commits":
            return f"commit sequence={self.sequence}"
        if self.kind == "snapshot":
            return f"snapshot_id={self.snapshot_id}"
        return f"{len(self.files)} pinned file(s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sequence": self.sequence,
            "snapshot_id": self.snapshot_id,
            "files": [[path, size] for path, size in self.files],
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "topic": self.topic,
            "high_watermark_us": self.high_watermark,
            "rows": self.rows,
            **(
                {
                    "stream_kind": self.stream_kind,
                    # Kinesis sequence numbers exceed 64 bits: decimal strings
                    "offsets": {str(p): str(o) for p, o in sorted(self.offsets.items())},
                    "shards": {str(n): s.to_json() for n, s in sorted(self.shards.items())},
                }
                if self.stream_kind != "kafka"
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LakeState:
        kind = raw.get("kind")
        if kind not in ("commits", "snapshot", "files"):
            raise LakeStateError(f"unknown pinned lake state kind {kind!r} in a checkpoint")
        hwm = raw.get("high_watermark_us")
        return cls(
            kind=kind,
            sequence=None if raw.get("sequence") is None else int(raw["sequence"]),
            snapshot_id=None if raw.get("snapshot_id") is None else int(raw["snapshot_id"]),
            files=tuple((str(path), int(size)) for path, size in raw.get("files", ())),
            offsets={int(p): int(o) for p, o in raw.get("offsets", {}).items()},
            topic=raw.get("topic"),
            high_watermark=None if hwm is None else int(hwm),
            rows=int(raw.get("rows", 0)),
            stream_kind=str(raw.get("stream_kind", "kafka")),
            shards={
                int(n): ShardRecord.from_json(entry)
                for n, entry in (raw.get("shards") or {}).items()
            },
        )

    @classmethod
    def of_commits(cls, commits: list[CommitRecord]) -> LakeState:
        """The state made of ``commits`` (all of them: the caller cuts at the pinned sequence)."""
        newest = commits[-1]
        return cls(
            kind="commits",
            sequence=newest.sequence,
            offsets=merge_offsets(commits),
            topic=next((c.topic for c in reversed(commits) if c.topic is not None), None),
            high_watermark=next(
                (c.high_watermark for c in reversed(commits) if c.high_watermark is not None), None
            ),
            rows=sum(c.rows for c in commits),
            stream_kind=stream_kind_of(commits),
            shards=merge_shards(commits),
        )


def directory_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def follow_compactions(
    pinned: set[str], later: Iterable[CommitRecord], missing: set[str]
) -> set[str]:
    """Map the pinned file set through compactions committed after the pin.

    Only directories (partitions) holding a ``missing`` pinned file are mapped. A compaction that
    rewrote exactly pinned files of a directory (its ``removed`` files there all pinned) holds the
    same rows, so its new files replace them. One that also rewrote files committed after the pin
    mixed in records the job reads from the stream: it is not followed, and the pinned files stay
    in the set, missing — the caller decides whether the job still needs them (a restored
    position past their partition does not) or fails naming them.
    """
    current = set(pinned)
    wanted = {directory_of(f) for f in missing}
    for commit in later:
        if not commit.removed:
            continue
        added: dict[str, list[str]] = {}
        for f in commit.files:
            added.setdefault(directory_of(f), []).append(f)
        by_dir: dict[str, set[str]] = {}
        for f in commit.removed:
            by_dir.setdefault(directory_of(f), set()).add(f)
        for directory, removed in by_dir.items():
            if directory in wanted and removed & current and removed <= current:
                current = (current - removed) | set(added.get(directory, []))
    return current


def pinned_commits(commits: list[CommitRecord], state: LakeState | None) -> list[CommitRecord]:
    """The commits a state covers (all when ``state`` is None or not commit-based)."""
    if state is None or state.kind != "commits" or state.sequence is None:
        return commits
    return [c for c in commits if c.sequence <= state.sequence]


def pinned_live_files(commits: list[CommitRecord], state: LakeState | None) -> set[str]:
    return {f.strip("/") for f in live_files(pinned_commits(commits, state))}
