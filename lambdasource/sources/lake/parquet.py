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
import pyarrow.parquet as pq

from ...errors import ConfigError, LakeReadError, LakeStateError
from ...s3 import S3Config
from ...timeutil import TIME_TYPE, Duration, parse_duration
from ..base import SourceOutput
from .commits import COMMITS_DIR, DEAD_LETTERS_DIR, CommitRecord, dead_letters_path
from .layout import Layout, classify, detect
from .partitioned import PartitionCounts, file_kafka_partition
from .pinned import LakeState, follow_compactions, pinned_commits, pinned_live_files
from .reader import (
    BATCH_ROWS,
    END,
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
from .schema import union_schema
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
        self.dead_letter_files: list[tuple[int, str]] = []  # (sequence, path) of pinned commits


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

    ``path_pruning``: partitions whose path lies outside ``[start, until)`` are pruned, but with
    ``"verify"`` (default) a file there whose footer statistics overlap the range (or that has
    none) is read anyway, so a row filed under the wrong hour is never lost (one footer read per
    such file while planning; skipped for lakes with commit records, whose writer files every row
    under its own hour). ``"trust"`` prunes by path alone.

    Undeclared schema: the union over the files read (types widen where safe; a column a file
    lacks reads as null there; types with no safe cast raise :class:`SchemaError` naming the
    column and both files). A declared ``schema`` rules instead.
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
        path_pruning: Literal["verify", "trust"] = "verify",
    ) -> None:
        if partitioning not in ("hour", "day"):
            raise ConfigError(f"partitioning must be 'hour' or 'day', got {partitioning!r}")
        if path_pruning not in ("verify", "trust"):
            raise ConfigError(f"path_pruning must be 'verify' or 'trust', got {path_pruning!r}")
        self.path_pruning = path_pruning
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
        """List and map the pinned state of the lake; footers are read now if ``read_footers``
        (None: only for a flat layout, which needs them to order its files)."""
        metrics = self._metrics = LakeMetrics()
        self._tail_bytes = 0
        result = LakePlan()
        listed = await storage.list()
        all_commits = await read_commits(storage, listed)
        if not self._pin_active or self._pinned is None:
            self._set_pin(self._restored_state or choose_state(all_commits, listed))
        state = await self.pin()
        present = {f.path: f for f in listed}
        result.commits = pinned_commits(all_commits, state)
        result.dead_letter_files = [
            (c.sequence, dead_letters_path(c.sequence))
            for c in result.commits
            if dead_letters_path(c.sequence) in present
        ]
        committed, retired, later = self._pinned_files(state, all_commits, present)
        missing = sorted(f for f in committed or () if f not in present)
        data: list[StoredFile] = []
        for f in listed:
            reason = classify(f.path)
            if reason is not None:
                if not f.path.startswith((COMMITS_DIR + "/", DEAD_LETTERS_DIR + "/")):
                    metrics.skipped_files.append({"file": f.path, "reason": reason})
                continue
            if f.path in retired:
                metrics.skipped_files.append({"file": f.path, "reason": "retired by compaction"})
                continue
            if committed is not None and f.path not in committed:
                if f.path in later:
                    metrics.files_after_pin += 1
                else:
                    metrics.orphan_files.append(f.path)
                continue
            data.append(f)
        layout = detect(
            [f.path for f in data], template=self.layout_template, partitioning=self.partitioning
        )
        result.layout = layout
        groups: dict[str, LakePartition] = {}
        restricted = self._partition_filter
        if restricted is not None:
            restricted.counts = PartitionCounts()
            missing = [f for f in missing if restricted.wants(file_kafka_partition(f))]
        for f in data:
            tag = file_kafka_partition(f.path)
            # a task's lake: other partitions' split files are not read, but their hour stays
            # (empty): the watermarks are the whole lake's, no hour is reported missing
            wanted = restricted is None or restricted.wants(tag)
            lake_file = LakeFile(f.path, f.size, kafka_partition=tag)
            if layout.flat:
                if wanted:
                    groups[f.path] = LakePartition(f.path, None, None, [lake_file])
                continue
            key = layout.key(f.path)
            if key is None:
                metrics.skipped_files.append(
                    {"file": f.path, "reason": f"outside the {layout.kind} partition layout"}
                )
                continue
            part = groups.setdefault(key.label, LakePartition(key.label, key.start, key.end))
            if wanted:
                part.files.append(lake_file)
        if restricted is not None:
            read = [f for p in groups.values() for f in p.files]
            restricted.counts.files_other_partitions = sum(
                not restricted.wants(file_kafka_partition(f.path)) for f in data
            )
            restricted.counts.split_files = sum(f.kafka_partition is not None for f in read)
            restricted.counts.filtered_files = sum(f.kafka_partition is None for f in read)
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
        in_range = partitions
        if trust:
            in_range, pruned = [], []
            for p in partitions:
                assert p.start is not None and p.end is not None
                if (self.until is not None and p.start >= self.until) or (
                    self.start is not None and p.end <= self.start
                ):
                    pruned.append(p)
                else:
                    in_range.append(p)
            rescued = await self._verify_pruned(storage, pruned, state)
            partitions = sorted(in_range + rescued, key=lambda p: (p.start or 0, p.label))
        if read_footers or (read_footers is None and layout.flat):
            await self._read_footers(storage, partitions)
            result.footers_read = True
        if layout.flat:
            partitions = [p for p in partitions if p.files]
            for p in partitions:
                p.start = p.end = None
            partitions.sort(key=lambda p: (p.files[0].min_time or 0, p.label))
        else:  # partitions read for misplaced rows are no gap (nor their absence)
            note_missing_partitions(in_range, metrics, name=self.name)
        if missing:
            self._check_missing(missing, partitions, layout, state)
        for p in partitions:
            p.files.sort(key=_file_order)
        metrics.partitions_total = len(partitions)
        metrics.files_total = sum(len(p.files) for p in partitions)
        result.partitions = partitions
        return result

    def _pinned_files(
        self, state: LakeState, commits: list[CommitRecord], present: dict[str, StoredFile]
    ) -> tuple[set[str] | None, set[str], set[str]]:
        """(files of the pinned state or None for every data file, files it retired, files
        committed after it) — a pinned file that vanished is followed through a compaction's
        record where that is exact, else :class:`LakeStateError` names it."""
        if state.kind == "files":
            pinned = dict(state.files)
            for path, size in sorted(pinned.items()):
                found = present.get(path)
                if found is None or found.size != size:
                    what = "is missing" if found is None else f"changed size {size} -> {found.size}"
                    raise LakeStateError(
                        f"lake={self.name}: file={path} of the pinned file list {what}: the "
                        "lake has no commit records, so a rewritten file cannot be followed; "
                        "start the job fresh (run(restore=None))"
                    )
            return set(pinned), set(), {p for p in present if p not in pinned}
        if not commits:
            raise LakeStateError(
                f"lake={self.name}: the pinned state ({state.describe()}) names commit records, "
                f"but {self.path} has none any more"
            )
        mine = pinned_commits(commits, state)
        committed = pinned_live_files(commits, state)
        retired = {f.strip("/") for c in mine for f in c.removed}
        after = [c for c in commits if c not in mine]
        later = {f.strip("/") for c in after for f in c.files}
        missing = {f for f in committed if f not in present}
        if missing:
            committed = follow_compactions(committed, after, missing)
            later -= committed
        return committed, retired, later

    def _check_missing(
        self, missing: list[str], partitions: list[LakePartition], layout: Layout, state: LakeState
    ) -> None:
        """Pinned files that are gone (a compaction deleted them and its record cannot stand in
        for them) are fine in partitions a restored position has passed; else the job would
        read a different lake: :class:`LakeStateError` names the file."""
        restored = self._restored
        passed: int | None = None  # partitions starting before this were fully emitted
        if restored is not None and restored.partition == END:
            return
        if restored is not None:
            here = next((p for p in partitions if p.label == restored.partition), None)
            passed = None if here is None else here.start
        for path in missing:
            key = None if layout.flat else layout.key(path)
            if passed is not None and key is not None and key.start < passed:
                continue
            raise LakeStateError(
                f"lake={self.name}: file={path} of the pinned lake state ({state.describe()}) is "
                "missing and no compaction record can stand in for it (deleted with "
                "delete_replaced/expire_replaced, or rewritten together with later commits); "
                "the job has not yet read its partition: start the job fresh"
                + (f" ({len(missing)} files in all)" if len(missing) > 1 else "")
            )

    async def _choose_state(self) -> LakeState:
        async with self._storage() as storage:
            listed = await storage.list()
            return choose_state(await read_commits(storage, listed), listed)

    def _check_state_kind(self, state: LakeState) -> None:
        if state.kind == "snapshot":
            raise LakeStateError(
                f"lake={self.name}: the checkpoint pinned an Iceberg snapshot "
                f"({state.describe()}), but this lake is the Parquet lake {self.path}"
            )

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

    async def _verify_pruned(
        self, storage: Storage, pruned: list[LakePartition], state: LakeState
    ) -> list[LakePartition]:
        """Of the partitions outside ``[start, until)`` by their path, those still to read: a
        file whose footer statistics overlap the range (or that has none) may hold rows filed
        under the wrong hour. One footer read per file (concurrent), skipped when
        ``path_pruning="trust"`` or the pinned state is made of commit records (the ``lake``
        writer files every row under its own hour)."""
        if not pruned:
            return []
        if self.path_pruning == "trust" or state.kind == "commits":
            self._metrics.files_pruned += sum(len(p.files) for p in pruned)
            return []
        await self._read_footers(storage, pruned)
        rescued = [p for p in pruned if p.files]
        if rescued:
            log.warning(
                "lake=%s: %d partition(s) outside start/until by path hold rows inside it "
                "(statistics), read as well: %s",
                self.name,
                len(rescued),
                ", ".join(p.label for p in rescued[:10]),
            )
        return rescued

    async def _footer(self, storage: Storage, f: LakeFile, limit: asyncio.Semaphore) -> bool:
        """Read ``f``'s footer and select its row groups; False if quarantined or all pruned
        (a footer read before, while planning, is not read again)."""
        if f.metadata is not None:
            return bool(f.row_groups)
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
        """Footers of every file of ``partitions``, ``FOOTER_CONCURRENCY`` at a time across
        partitions (one file per hour is common: per-partition batches would be serial)."""
        limit = asyncio.Semaphore(FOOTER_CONCURRENCY)
        files = [f for p in partitions for f in p.files]
        kept = await asyncio.gather(*(self._footer(storage, f, limit) for f in files))
        ok = {id(f) for f, keep in zip(files, kept, strict=True) if keep}
        for p in partitions:
            p.files = [f for f in p.files if id(f) in ok]
        self._metrics.files_total = sum(len(p.files) for p in partitions)

    # reading ------------------------------------------------------------------------------------

    async def run(self, out: SourceOutput) -> None:
        try:
            async with self._storage() as storage:
                plan = await self.plan(storage, read_footers=None)
                try:
                    async with asyncio.TaskGroup() as tg:
                        await self._run(out, storage, plan, tg)
                except BaseExceptionGroup as group:
                    raise first_error(group) from None
        finally:
            self._end_of_run()
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
        archived = []
        for sequence, path in plan.dead_letter_files:
            where = storage.url(path)
            data = await storage.read(path)
            try:
                table = await asyncio.to_thread(pq.read_table, pa.BufferReader(data))
            except (pa.ArrowException, OSError) as exc:
                raise LakeReadError(
                    f"unreadable archived dead letters file={where}: {exc}"
                ) from exc
            archived.append((sequence, table, where))
        await self._emit_archived_dead_letters(out, archived)
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
            """Undeclared: the union over every file read (waits for all their footers)."""
            async with schema_lock:
                if decoder.schema is not None:
                    return
                schemas = [
                    (storage.url(f.path), self._file_schema(f.metadata))
                    for p in plan.partitions
                    for f in await files_of(p)
                    if f.metadata is not None
                ]
                union = union_schema(schemas)
                if union is not None:
                    decoder.schema = reference_schema(union, self.columns, self.time_column)

        async def load(partition: LakePartition) -> list[Chunk]:
            files = await files_of(partition)
            await ensure_schema()
            return await self._load_files(
                files, partition, decoder, metrics, lambda _: storage, lambda *_: None
            )

        reader = self._new_reader(metrics, trust)
        ooo = self.out_of_orderness or 0

        def end() -> int | None:  # after the last partition: every footer is known by then
            if self.until is not None:  # a bounded run ends at its bound (DESIGN §3)
                return self.until - 1
            mark = self._plan_high_water_mark(plan, ooo)
            return None if mark is None else mark - 1

        await reader.run(out, plan.partitions, load, end, ready=settle)

    def _file_schema(self, metadata: pq.FileMetaData) -> pa.Schema:
        """A file's Arrow schema with the time column as the engine's type (files differ in
        time units and zones; the decoder normalises them, so they never conflict)."""
        schema = metadata.schema.to_arrow_schema()
        index = schema.get_field_index(self.time_column)
        if index >= 0:
            nullable = schema.field(index).nullable
            schema = schema.set(index, pa.field(self.time_column, TIME_TYPE, nullable))
        return schema.remove_metadata()

    # positions and lake facts -------------------------------------------------------------------

    def _plan_high_water_mark(self, plan: LakePlan, out_of_orderness: int = 0) -> int | None:
        """µs, exclusive: the pinned state's recorded mark, else the newest data's maximum time
        (statistics) + 1µs − ``out_of_orderness``; never past ``until`` (DESIGN §3)."""
        state = self._pinned
        if state is not None and state.high_watermark is not None:
            mark: int | None = state.high_watermark
        else:
            mark = data_high_water_mark(plan.partitions, out_of_orderness)
        if mark is not None and self.until is not None:
            mark = min(mark, self.until)
        return mark

    async def high_water_mark(self, out_of_orderness: Duration = 0) -> int | None:
        """µs, exclusive: every record with time < this is in the pinned lake state (see
        :meth:`_plan_high_water_mark`); reads footers of the newest partitions only."""
        ooo = parse_duration(out_of_orderness, name="out_of_orderness")
        async with self._storage() as storage:
            plan = await self.plan(storage, read_footers=False)
            state = await self.pin()
            if state.high_watermark is None:
                # footers of the newest partitions, until one keeps rows
                for partition in reversed(plan.partitions):
                    await self._read_footers(storage, [partition])
                    if partition.files:
                        break
            return self._plan_high_water_mark(plan, ooo)


def choose_state(commits: list[CommitRecord], listed: list[StoredFile]) -> LakeState:
    """The state a job pins now: the newest commit, else the current data files."""
    if commits:
        return LakeState.of_commits(commits)
    files = tuple(sorted((f.path, f.size) for f in listed if classify(f.path) is None))
    return LakeState("files", files=files)


def data_high_water_mark(partitions: list[LakePartition], out_of_orderness: int) -> int | None:
    """Newest statistics-known maximum time + 1µs − ``out_of_orderness`` (a newest partition
    whose files lack statistics counts from its start: never a partition end beyond the data)."""
    for partition in reversed(partitions):
        if not partition.files:
            continue
        highs = [f.max_time for f in partition.files]
        if any(h is None for h in highs):
            if partition.start is None:
                continue
            return partition.start - out_of_orderness
        top = max(h for h in highs if h is not None)
        return top + 1 - out_of_orderness
    return None
