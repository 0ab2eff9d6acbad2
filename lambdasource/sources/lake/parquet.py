"""``ls.ParquetLake``: an hour- (or day-) partitioned Parquet lake as a bounded, ordered source.

Planning lists the lake (async, paginated on S3), drops non-data files (reported), applies commit
records when present (files no commit lists are orphans: skipped, reported), maps directories to
time partitions (:mod:`.layout`), prunes partitions by path and row groups by statistics for
``start``/``until``/``filter``, and reads every remaining footer (one ranged GET of the tail per
file, concurrently) — the statistics feed the watermark rule of :mod:`.reader`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ConfigError, LakeReadError
from ...s3 import S3Config
from ...timeutil import Duration
from ..base import SourceOutput
from .commits import COMMITS_DIR, CommitRecord, live_files, merge_offsets
from .layout import Layout, classify, detect
from .reader import (
    BATCH_ROWS,
    Chunk,
    LakeFile,
    LakeMetrics,
    LakePartition,
    first_error,
    note_missing_partitions,
    parse_metadata,
    plan_row_groups,
    quarantine_or_raise,
    reference_schema,
)
from .source import LakeSource
from .storage import FOOTER_PROBE, LocalStorage, Storage, StoredFile, open_storage

log = logging.getLogger("lambdasource.lake")

FOOTER_CONCURRENCY = 16
TAIL_BUDGET = 64 * 1024 * 1024  # probed file tails kept between planning and loading
SMALL_FILE = 1024 * 1024  # on S3, files up to this size are fetched whole by the footer probe


class LakePlan:
    """What planning found: partitions in time order, commits, and files left out."""

    def __init__(self) -> None:
        self.partitions: list[LakePartition] = []
        self.commits: list[CommitRecord] = []
        self.layout: Layout | None = None
        self.footers_read = False


def _file_order(f: LakeFile) -> tuple[int, str]:
    """Files of a partition are read by their minimum time (statistics), then by path."""
    return (f.min_time if f.min_time is not None else -(2**62), f.path)


async def read_commits(storage: Storage, listed: list[StoredFile]) -> list[CommitRecord]:
    """Every commit record under ``_lambdasource/commits/``, by sequence."""
    paths = [
        f.path for f in listed if f.path.startswith(COMMITS_DIR + "/") and f.path.endswith(".json")
    ]
    datas = await asyncio.gather(*(storage.read(p) for p in paths))
    commits = [
        CommitRecord.from_json(d, where=storage.url(p)) for p, d in zip(paths, datas, strict=True)
    ]
    return sorted(commits, key=lambda c: c.sequence)


class ParquetLake(LakeSource):
    """Hive-partitioned Parquet files read in event-time order (see :mod:`.reader` for the rules).

    ``path``: local directory, ``file://`` or ``s3://bucket/prefix``. ``start``/``until`` select
    records with ``start <= time < until``. ``on_corrupt="quarantine"`` skips unreadable files
    (reported in ``metrics()["quarantined_files"]``) instead of raising :class:`LakeReadError`.
    """

    small_file_bytes = SMALL_FILE  # S3 files up to this size are fetched whole with the footer

    def __init__(
        self,
        path: str | Path,
        time_column: str,
        partitioning: str = "hour",
        event_time_partitioned: bool = True,
        start: Any = None,
        until: Any = None,
        s3: S3Config | None = None,
        out_of_orderness: Duration | None = None,
        columns: list[str] | None = None,
        filter: pc.Expression | None = None,
        schema: pa.Schema | None = None,
        layout: str | None = None,
        prefetch: int = 4,
        max_bytes_in_flight: int = 256 * 1024 * 1024,
        on_corrupt: Literal["raise", "quarantine"] = "raise",
        name: str = "lake",
        batch_size: int = BATCH_ROWS,
    ) -> None:
        if partitioning not in ("hour", "day"):
            raise ConfigError(f"partitioning must be 'hour' or 'day', got {partitioning!r}")
        super().__init__(
            name=name,
            time_column=time_column,
            start=start,
            until=until,
            s3=s3,
            out_of_orderness=out_of_orderness,
            columns=columns,
            filter=filter,
            schema=schema,
            prefetch=prefetch,
            max_bytes_in_flight=max_bytes_in_flight,
            on_corrupt=on_corrupt,
            batch_size=batch_size,
        )
        self.path = str(path)
        self.partitioning = partitioning
        self.event_time_partitioned = event_time_partitioned
        self.layout_template = layout
        self._tail_bytes = 0
        open_storage(self.path, s3)  # validate the URL early

    def _storage(self) -> Storage:
        return open_storage(self.path, self.s3)

    # planning -----------------------------------------------------------------------------------

    async def plan(self, storage: Storage, *, read_footers: bool | None = True) -> LakePlan:
        """List and map the lake; footers are read now if ``read_footers`` (None: only for a
        flat layout, which needs them to order its files)."""
        metrics = self._metrics = LakeMetrics()
        self._tail_bytes = 0
        result = LakePlan()
        listed = await storage.list()
        result.commits = await read_commits(storage, listed)
        committed: set[str] | None = None
        retired: set[str] = set()
        if result.commits:
            committed = {f.strip("/") for f in live_files(result.commits)}
            retired = {f.strip("/") for c in result.commits for f in c.removed}
        data: list[StoredFile] = []
        for f in listed:
            reason = classify(f.path)
            if reason is not None:
                if not f.path.startswith(COMMITS_DIR + "/"):
                    metrics.skipped_files.append({"file": f.path, "reason": reason})
                continue
            if f.path in retired:
                metrics.skipped_files.append({"file": f.path, "reason": "retired by compaction"})
                continue
            if committed is not None and f.path not in committed:
                metrics.orphan_files.append(f.path)
                continue
            data.append(f)
        layout = detect(
            [f.path for f in data], template=self.layout_template, partitioning=self.partitioning
        )
        result.layout = layout
        groups: dict[str, LakePartition] = {}
        for f in data:
            if layout.flat:
                groups[f.path] = LakePartition(f.path, None, None, [LakeFile(f.path, f.size)])
                continue
            key = layout.key(f.path)
            if key is None:
                metrics.skipped_files.append(
                    {"file": f.path, "reason": f"outside the {layout.kind} partition layout"}
                )
                continue
            part = groups.setdefault(key.label, LakePartition(key.label, key.start, key.end))
            part.files.append(LakeFile(f.path, f.size))
        self._report_left_out(metrics)
        partitions = sorted(groups.values(), key=lambda p: (p.start or 0, p.label))
        # merge partitions of the same range (e.g. dt=/hour=3 and dt=/hour=03)
        merged: list[LakePartition] = []
        for p in partitions:
            if merged and not layout.flat and merged[-1].start == p.start:
                merged[-1].files.extend(p.files)
            else:
                merged.append(p)
        partitions = merged
        trust = self.event_time_partitioned and not layout.flat
        if trust:
            kept = []
            for p in partitions:
                assert p.start is not None and p.end is not None
                if (self.until is not None and p.start >= self.until) or (
                    self.start is not None and p.end <= self.start
                ):
                    metrics.files_pruned += len(p.files)
                    continue
                kept.append(p)
            partitions = kept
        if read_footers or (read_footers is None and layout.flat):
            await self._read_footers(storage, partitions)
            result.footers_read = True
        if layout.flat:
            partitions = [p for p in partitions if p.files]
            for p in partitions:
                p.start = p.end = None
            partitions.sort(key=lambda p: (p.files[0].min_time or 0, p.label))
        else:
            note_missing_partitions(partitions, metrics, name=self.name)
        for p in partitions:
            p.files.sort(key=_file_order)
        metrics.partitions_total = len(partitions)
        metrics.files_total = sum(len(p.files) for p in partitions)
        result.partitions = partitions
        return result

    def _report_left_out(self, metrics: LakeMetrics) -> None:
        if metrics.skipped_files:
            shown = ", ".join(f"{s['file']} ({s['reason']})" for s in metrics.skipped_files[:10])
            log.warning(
                "lake=%s: skipped %d non-data file(s): %s%s",
                self.name,
                len(metrics.skipped_files),
                shown,
                " …" if len(metrics.skipped_files) > 10 else "",
            )
        if metrics.orphan_files:
            log.warning(
                "lake=%s: %d orphan file(s) not listed in any commit record, ignored: %s",
                self.name,
                len(metrics.orphan_files),
                ", ".join(metrics.orphan_files[:10]),
            )

    async def _footer(self, storage: Storage, f: LakeFile, limit: asyncio.Semaphore) -> bool:
        """Read ``f``'s footer and select its row groups; False if quarantined or all pruned."""
        metrics = self._metrics
        async with limit:
            try:
                small = f.size <= self.small_file_bytes and self._tail_bytes + f.size <= TAIL_BUDGET
                probe = f.size if small and not isinstance(storage, LocalStorage) else 0
                tail = await storage.read_footer(f.path, f.size, probe or FOOTER_PROBE)
                metadata = await asyncio.to_thread(parse_metadata, tail, storage.url(f.path))
                # Keep the whole probed tail (the load reuses it) within a budget; beyond it
                # keep only the footer, so planning a huge lake holds little memory.
                if self._tail_bytes + len(tail) > TAIL_BUDGET:
                    footer_len = int.from_bytes(tail[-8:-4], "little") + 8
                    tail = tail[-footer_len:]
                self._tail_bytes += len(tail)
                f.footer = tail
                metrics.bytes_read += len(tail)
            except LakeReadError as exc:
                quarantine_or_raise(
                    exc, storage.url(f.path), self.on_corrupt, metrics, name=self.name
                )
                return False
        metrics.row_groups_pruned += plan_row_groups(
            f,
            metadata,
            time_column=self.time_column,
            start=self.start,
            until=self.until,
            filter=self.filter,
            where=storage.url(f.path),
        )
        if not f.row_groups:
            metrics.files_pruned += 1
            return False
        return True

    async def _read_footers(self, storage: Storage, partitions: list[LakePartition]) -> None:
        limit = asyncio.Semaphore(FOOTER_CONCURRENCY)
        for p in partitions:
            kept = await asyncio.gather(*(self._footer(storage, f, limit) for f in p.files))
            p.files = [f for f, ok in zip(p.files, kept, strict=True) if ok]
        self._metrics.files_total = sum(len(p.files) for p in partitions)

    # reading ------------------------------------------------------------------------------------

    async def run(self, out: SourceOutput) -> None:
        async with self._storage() as storage:
            plan = await self.plan(storage, read_footers=None)
            try:
                async with asyncio.TaskGroup() as tg:
                    await self._run(out, storage, plan, tg)
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            metrics = self._metrics
            if metrics.rows_outside_partition:
                log.warning(
                    "lake=%s: %d row(s) outside their partition's time range",
                    self.name,
                    metrics.rows_outside_partition,
                )

    async def _run(
        self, out: SourceOutput, storage: Storage, plan: LakePlan, tg: asyncio.TaskGroup
    ) -> None:
        """Footers are read in the background (overlapping the first loads) unless planning
        already did; a partition's load waits for its own files' footers only."""
        assert plan.layout is not None
        trust = self.event_time_partitioned and not plan.layout.flat
        decoder = self._decoder(trust)
        metrics = self._metrics
        originals = {p.label: list(p.files) for p in plan.partitions}
        limit = asyncio.Semaphore(FOOTER_CONCURRENCY)
        footers: dict[str, asyncio.Task[bool]] = {}
        if not plan.footers_read:
            for p in plan.partitions:
                for f in p.files:
                    footers[f.path] = tg.create_task(self._footer(storage, f, limit))

        async def files_of(p: LakePartition) -> list[LakeFile]:
            if plan.footers_read:
                return p.files
            kept = [f for f in originals[p.label] if await footers[f.path]]
            return sorted(kept, key=_file_order)

        async def settle() -> None:
            for p in plan.partitions:
                p.files = await files_of(p)
            metrics.files_total = sum(len(p.files) for p in plan.partitions)

        schema_lock = asyncio.Lock()

        async def ensure_schema() -> None:
            async with schema_lock:
                if decoder.schema is not None:
                    return
                for p in plan.partitions:
                    for f in await files_of(p):
                        if f.metadata is not None:
                            decoder.schema = reference_schema(
                                f.metadata.schema.to_arrow_schema(),
                                self.columns,
                                self.time_column,
                            )
                            return

        async def load(partition: LakePartition) -> list[Chunk]:
            files = await files_of(partition)
            await ensure_schema()
            return await self._load_files(
                files, partition, decoder, metrics, lambda _: storage, lambda *_: None
            )

        reader = self._new_reader(metrics, trust)
        end = self.until - 1 if self.until is not None else None
        if end is None:
            hwm = self._plan_high_water_mark(plan)
            end = None if hwm is None else hwm - 1
        await reader.run(out, plan.partitions, load, end, ready=settle)

    # positions and lake facts -------------------------------------------------------------------

    def _plan_high_water_mark(self, plan: LakePlan) -> int | None:
        if plan.commits and plan.commits[-1].high_watermark is not None:
            return int(plan.commits[-1].high_watermark)
        ends = [p.end for p in plan.partitions if p.end is not None]
        if ends:
            return max(ends)
        highs = [f.max_time for p in plan.partitions for f in p.files if f.max_time is not None]
        return max(highs) + 1 if highs else None

    async def high_water_mark(self) -> int | None:
        """µs: every record with time < this is in the lake (newest commit, else last partition end)."""
        lake = self._unbounded_copy()
        async with lake._storage() as storage:
            plan = await lake.plan(storage, read_footers=False)
            if plan.commits and plan.commits[-1].high_watermark is not None:
                return int(plan.commits[-1].high_watermark)
            if plan.layout is not None and plan.layout.flat:
                await lake._read_footers(storage, plan.partitions)
            return lake._plan_high_water_mark(plan)

    async def recorded_offsets(self) -> CommitRecord | None:
        """All commits merged: highest next-offset per Kafka partition, newest sequence/topic."""
        async with self._storage() as storage:
            commits = await read_commits(storage, await storage.list(COMMITS_DIR))
        if not commits:
            return None
        newest = commits[-1]
        return CommitRecord(
            sequence=newest.sequence,
            offsets=merge_offsets(commits),
            topic=newest.topic,
            rows=sum(c.rows for c in commits),
            high_watermark=newest.high_watermark,
            committed_at=newest.committed_at,
        )

    def _unbounded_copy(self) -> ParquetLake:
        return ParquetLake(
            self.path,
            self.time_column,
            partitioning=self.partitioning,
            event_time_partitioned=self.event_time_partitioned,
            s3=self.s3,
            layout=self.layout_template,
            on_corrupt="quarantine",
            name=self.name,
        )
