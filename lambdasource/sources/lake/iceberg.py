"""``ls.IcebergLake``: an Iceberg table read in event-time order through pyiceberg's planning.

Planning (pyiceberg, in a thread): ``table.scan(row_filter=start/until on the time column,
snapshot_id=...).plan_files()``. Files are grouped by the value of an ``hours(ts)`` / ``days(ts)``
partition field on the time column (partition-end watermarks, as for an event-time partitioned
Parquet lake). Tables without such a partition are read file by file in the order of the time
column's lower bound (data file ``lower_bounds``); then a file's data is complete up to the next
file's lower bound − 1µs, which is the watermark (or max seen − ``out_of_orderness`` when given,
capped the same way). Data files are read with pyarrow from the same storage layer as
``ParquetLake`` (local or S3 ranged GETs), so row-group watermarks work too.

Delete files (row-level deletes, merge-on-read) are **not applied**: a scan that plans any raises
:class:`LakeReadError` naming the table and file — compact the table first, or read it with
pyiceberg. Columns are matched by name (files written before a column rename read it as null).
"""

from __future__ import annotations

import asyncio
import struct
from contextlib import AsyncExitStack
from datetime import date
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...errors import ConfigError, LakeReadError, LakeStateError, SchemaError
from ...s3 import S3Config
from ...timeutil import DAY, HOUR, Duration, parse_duration
from ..base import SourceOutput
from .commits import CommitRecord, dead_letters_path
from .partitioned import KAFKA_PARTITION_COLUMN, PartitionCounts
from .pinned import LakeState
from .reader import (
    BATCH_ROWS,
    Chunk,
    LakeFile,
    LakeMetrics,
    LakePartition,
    note_missing_partitions,
    plan_row_groups,
    reference_schema,
)
from .source import LakeSource
from .storage import LocalStorage, S3Storage, Storage


def load_catalog_from(catalog: Any) -> Any:
    """A pyiceberg Catalog, or a property dict with an optional ``name`` (default "default")."""
    if isinstance(catalog, dict):
        from pyiceberg.catalog import load_catalog

        props = {k: str(v) for k, v in catalog.items()}
        name = props.pop("name", "default")
        return load_catalog(name, **props)
    return catalog


def _s3_from_props(props: dict[str, str]) -> S3Config:
    return S3Config(
        endpoint_url=props.get("s3.endpoint"),
        region=props.get("s3.region") or props.get("client.region"),
        access_key_id=props.get("s3.access-key-id") or props.get("client.access-key-id"),
        secret_access_key=props.get("s3.secret-access-key")
        or props.get("client.secret-access-key"),
        session_token=props.get("s3.session-token"),
    )


def _split_location(location: str) -> tuple[str, str]:
    """A data file location → (storage root, path under it)."""
    parsed = urlparse(location)
    if parsed.scheme in ("s3", "s3a"):
        return f"s3://{parsed.netloc}", parsed.path.lstrip("/")
    if parsed.scheme in ("file", ""):
        path = unquote(parsed.path) if parsed.scheme else location
        return "/", path.lstrip("/")
    raise ConfigError(f"unsupported data file location {location!r} (file:// or s3:// only)")


class _Planned:
    def __init__(self) -> None:
        self.partitions: list[LakePartition] = []
        self.event_time_partitioned = False
        self.roots: dict[str, str] = {}  # file path → storage root
        self.io_props: dict[str, str] = {}
        self.max_upper: int | None = None
        self.file_schema: pa.Schema | None = None


class IcebergLake(LakeSource):
    """An Iceberg table as a bounded source in event-time order (see the module docstring)."""

    def __init__(
        self,
        identifier: str,
        catalog: Any,
        time_column: str,
        start: Any = None,
        until: Any = None,
        snapshot_id: int | None = None,
        columns: list[str] | None = None,
        filter: pc.Expression | None = None,
        s3: S3Config | None = None,
        prefetch: int = 4,
        max_bytes_in_flight: int = 256 * 1024 * 1024,
        out_of_orderness: Duration | None = None,
        schema: pa.Schema | None = None,
        on_corrupt: Literal["raise", "quarantine"] = "raise",
        name: str = "lake",
        batch_size: int = BATCH_ROWS,
    ) -> None:
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
        self.identifier = identifier
        self.catalog = catalog
        self.snapshot_id = snapshot_id
        self._catalog_obj: Any = None

    def _table(self) -> Any:
        if self._catalog_obj is None:
            self._catalog_obj = load_catalog_from(self.catalog)
        try:
            return self._catalog_obj.load_table(self.identifier)
        except Exception as exc:
            raise LakeReadError(f"cannot load Iceberg table={self.identifier}: {exc}") from exc

    # planning -----------------------------------------------------------------------------------

    def _plan_sync(self, *, bounded: bool = True) -> _Planned:
        from pyiceberg.conversions import from_bytes
        from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, LessThan
        from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform

        table = self._table()
        planned = _Planned()
        planned.io_props = dict(table.io.properties)
        try:
            field = table.schema().find_field(self.time_column)
        except ValueError as exc:
            raise SchemaError(
                f"table={self.identifier} has no time column {self.time_column!r}"
            ) from exc
        row_filter: Any = AlwaysTrue()
        if bounded and self.start is not None:
            row_filter = And(row_filter, GreaterThanOrEqual(self.time_column, self.start))  # type: ignore[call-arg,arg-type]
        if bounded and self.until is not None:
            row_filter = And(row_filter, LessThan(self.time_column, self.until))  # type: ignore[call-arg,arg-type]
        state = self._pinned
        snapshot_id = self.snapshot_id if state is None else state.snapshot_id
        if state is not None and snapshot_id is None:  # pinned while the table was empty
            return planned
        if snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None:
            raise LakeStateError(
                f"table={self.identifier}: the pinned snapshot_id={snapshot_id} no longer exists "
                "(expired?); start the job fresh, or keep snapshots until jobs have restarted"
            )
        try:
            scan = table.scan(row_filter=row_filter, snapshot_id=snapshot_id)
            tasks = list(scan.plan_files())
        except Exception as exc:
            raise LakeReadError(f"cannot plan a scan of table={self.identifier}: {exc}") from exc
        specs = table.specs()
        time_fields: dict[int, tuple[int, int]] = {}  # spec id → (position, width)
        tag_fields: dict[int, int] = {}  # spec id → position of the archiver's Kafka partition
        schema = table.schema()
        tag_id = next((f.field_id for f in schema.fields if f.name == KAFKA_PARTITION_COLUMN), None)
        for spec_id, spec in specs.items():
            for pos, pf in enumerate(spec.fields):
                if pf.source_id == tag_id and isinstance(pf.transform, IdentityTransform):
                    tag_fields[spec_id] = pos
                if pf.source_id == field.field_id and isinstance(pf.transform, HourTransform):
                    time_fields[spec_id] = (pos, HOUR)
                elif pf.source_id == field.field_id and isinstance(pf.transform, DayTransform):
                    time_fields.setdefault(spec_id, (pos, DAY))
        files: list[tuple[LakeFile, int | None, int | None]] = []
        restricted = self._partition_filter
        if restricted is not None:
            restricted.counts = PartitionCounts()
        for task in tasks:
            df = task.file
            if task.delete_files:
                raise LakeReadError(
                    f"table={self.identifier} has delete files for file={df.file_path}: "
                    "row-level deletes are not applied by IcebergLake; compact the table "
                    "or read it with pyiceberg"
                )
            root, rel = _split_location(df.file_path)
            low = df.lower_bounds.get(field.field_id) if df.lower_bounds else None
            high = df.upper_bounds.get(field.field_id) if df.upper_bounds else None
            lf = LakeFile(
                rel,
                int(df.file_size_in_bytes),
                rows=int(df.record_count),
                min_time=_bound(from_bytes, field.field_type, low),
                max_time=_bound(from_bytes, field.field_type, high),
                est_bytes=int(df.file_size_in_bytes) * 3,
            )
            if df.spec_id in tag_fields:
                raw_tag = df.partition[tag_fields[df.spec_id]]
                lf.kafka_partition = None if raw_tag is None else int(raw_tag)
            planned.roots[rel] = root
            if lf.max_time is not None:
                planned.max_upper = max(planned.max_upper or lf.max_time, lf.max_time)
            part_value: int | None = None
            width: int | None = None
            if df.spec_id in time_fields:
                pos, width = time_fields[df.spec_id]
                raw = df.partition[pos]
                if isinstance(raw, date):
                    raw = (raw - date(1970, 1, 1)).days
                part_value = None if raw is None else int(raw)
            files.append((lf, part_value, width))
        widths = {w for _, v, w in files if v is not None}
        if files and all(v is not None for _, v, _ in files) and len(widths) == 1:
            planned.event_time_partitioned = True
            groups: dict[int, LakePartition] = {}
            for lf, value, width in files:
                assert value is not None and width is not None
                begin = value * width
                label = f"{'hour' if width == HOUR else 'day'}={value}"
                groups.setdefault(value, LakePartition(label, begin, begin + width)).files.append(
                    lf
                )
            planned.partitions = [groups[k] for k in sorted(groups)]
            for p in planned.partitions:
                p.files.sort(key=lambda f: (f.min_time if f.min_time is not None else 0, f.path))
        else:
            ordered = sorted(
                (lf for lf, _, _ in files),
                key=lambda f: (f.min_time if f.min_time is not None else -(2**62), f.path),
            )
            planned.partitions = [LakePartition(f.path, None, None, [f]) for f in ordered]
        if restricted is not None:
            # other partitions' split files are not read; their hours stay (empty), so the
            # watermarks are the whole table's (see :mod:`.partitioned`)
            every = [f for p in planned.partitions for f in p.files]
            for p in planned.partitions:
                p.files = [f for f in p.files if restricted.wants(f.kafka_partition)]
            if not planned.event_time_partitioned:
                planned.partitions = [p for p in planned.partitions if p.files]
            read = [f for p in planned.partitions for f in p.files]
            restricted.counts.files_other_partitions = len(every) - len(read)
            restricted.counts.split_files = sum(f.kafka_partition is not None for f in read)
            restricted.counts.filtered_files = sum(f.kafka_partition is None for f in read)
        arrow_schema = schema.as_arrow()
        if KAFKA_PARTITION_COLUMN in arrow_schema.names and not self._wants_tag_column():
            # the archiver's bookkeeping column is not part of the records
            arrow_schema = arrow_schema.remove(arrow_schema.get_field_index(KAFKA_PARTITION_COLUMN))
        planned.file_schema = arrow_schema
        return planned

    def _wants_tag_column(self) -> bool:
        """Whether the user asked for the archiver's ``_kafka_partition`` column."""
        declared = self.declared
        return (self.columns is not None and KAFKA_PARTITION_COLUMN in self.columns) or (
            declared is not None and KAFKA_PARTITION_COLUMN in declared.names
        )

    # reading ------------------------------------------------------------------------------------

    async def run(self, out: SourceOutput) -> None:
        try:
            await self._run(out)
        finally:
            self._end_of_run()

    async def _run(self, out: SourceOutput) -> None:
        state = await self.pin()
        metrics = self._metrics = LakeMetrics()
        planned = await asyncio.to_thread(self._plan_sync)
        archived = await asyncio.to_thread(self._archived_dead_letters_sync, state)
        await self._emit_archived_dead_letters(out, archived)
        trust = planned.event_time_partitioned
        metrics.partitions_total = len(planned.partitions)
        metrics.files_total = sum(len(p.files) for p in planned.partitions)
        if trust:
            note_missing_partitions(planned.partitions, metrics, name=self.name)
        decoder = self._decoder(trust)
        if decoder.schema is None and planned.file_schema is not None:
            decoder.schema = reference_schema(planned.file_schema, self.columns, self.time_column)
        s3 = self.s3 or _s3_from_props(planned.io_props)
        async with AsyncExitStack() as stack:
            storages: dict[str, Storage] = {}
            for root in sorted(set(planned.roots.values())):
                storage: Storage = LocalStorage("/") if root == "/" else S3Storage(root, s3)
                storages[root] = await stack.enter_async_context(storage)

            def plan_file(f: LakeFile, metadata: pq.FileMetaData) -> None:
                metrics.row_groups_pruned += plan_row_groups(
                    f,
                    metadata,
                    time_column=self.time_column,
                    start=self.start,
                    until=self.until,
                    filter=self.filter,
                    where=f.path,
                )

            async def load(partition: LakePartition) -> list[Chunk]:
                return await self._load_files(
                    partition.files,
                    partition,
                    decoder,
                    metrics,
                    lambda f: storages[planned.roots[f.path]],
                    plan_file,
                )

            reader = self._new_reader(metrics, trust)
            if self.until is not None:  # a bounded run ends at its bound (DESIGN §3)
                end: int | None = self.until - 1
            else:
                hwm = self._high_water_mark(planned, self.out_of_orderness or 0)
                end = None if hwm is None else hwm - 1
            await reader.run(out, planned.partitions, load, end)

    # positions and table facts ------------------------------------------------------------------

    def _choose_state_sync(self) -> LakeState:
        """The snapshot to pin (the given ``snapshot_id``, else the current one) with the
        commits its lineage carries: offsets merged over its ancestors only, so a snapshot a
        rollback removed never counts."""
        table = self._table()
        snapshot = (
            table.current_snapshot()
            if self.snapshot_id is None
            else table.snapshot_by_id(self.snapshot_id)
        )
        if snapshot is None:
            if self.snapshot_id is not None:
                raise LakeStateError(
                    f"table={self.identifier} has no snapshot_id={self.snapshot_id}"
                )
            return LakeState("snapshot")
        lineage = []
        while snapshot is not None:
            lineage.append(snapshot)
            parent = snapshot.parent_snapshot_id
            snapshot = None if parent is None else table.snapshot_by_id(parent)
        commits = []
        for snap in reversed(lineage):
            sid, props, rows = _summary(snap)
            commit = CommitRecord.from_snapshot_properties(
                props, where=f"table={self.identifier} snapshot={sid}", rows=rows
            )
            if commit is not None:
                commits.append(commit)
        pinned_id = int(lineage[0].snapshot_id)
        if not commits:
            return LakeState("snapshot", snapshot_id=pinned_id)
        of_commits = LakeState.of_commits(commits)
        return LakeState(
            "snapshot",
            snapshot_id=pinned_id,
            offsets=of_commits.offsets,
            topic=of_commits.topic,
            high_watermark=of_commits.high_watermark,
            rows=of_commits.rows,
            sequence=of_commits.sequence,
            stream_kind=of_commits.stream_kind,
            shards=of_commits.shards,
        )

    async def _choose_state(self) -> LakeState:
        return await asyncio.to_thread(self._choose_state_sync)

    def _archived_dead_letters_sync(self, state: LakeState) -> list[tuple[int, pa.Table, str]]:
        """The archiver's dead letters of the commits in the pinned snapshot's lineage, stored
        under the table location (see :mod:`lake.writer`), by commit sequence."""
        if state.snapshot_id is None or state.sequence is None:
            return []  # an empty table, or no archiver commits
        table = self._table()
        sequences = []
        snapshot = table.snapshot_by_id(state.snapshot_id)
        while snapshot is not None:
            sid, props, rows = _summary(snapshot)
            commit = CommitRecord.from_snapshot_properties(
                props, where=f"table={self.identifier} snapshot={sid}", rows=rows
            )
            if commit is not None:
                sequences.append(commit.sequence)
            parent = snapshot.parent_snapshot_id
            snapshot = None if parent is None else table.snapshot_by_id(parent)
        root = table.location().rstrip("/")
        out = []
        for sequence in sorted(sequences):
            where = f"{root}/{dead_letters_path(sequence)}"
            try:
                stored = table.io.new_input(where)
                if not stored.exists():
                    continue
                with stored.open() as f:
                    data = f.read()
                out.append((sequence, pq.read_table(pa.BufferReader(data)), where))
            except (OSError, pa.ArrowException, ValueError) as exc:
                raise LakeReadError(
                    f"unreadable archived dead letters file={where}: {exc}"
                ) from exc
        return out

    def _check_state_kind(self, state: LakeState) -> None:
        if state.kind != "snapshot":
            raise LakeStateError(
                f"table={self.identifier}: the checkpoint pinned a Parquet lake state "
                f"({state.describe()}), not an Iceberg snapshot"
            )

    def _high_water_mark(self, planned: _Planned, out_of_orderness: int) -> int | None:
        """µs, exclusive: the pinned lineage's recorded mark, else the maximum upper bound of the
        pinned snapshot's files + 1µs − ``out_of_orderness``; never past ``until``."""
        state = self._pinned
        mark: int | None
        if state is not None and state.high_watermark is not None:
            mark = state.high_watermark
        else:
            upper = planned.max_upper
            mark = None if upper is None else upper + 1 - out_of_orderness
        if mark is not None and self.until is not None:
            mark = min(mark, self.until)
        return mark

    async def high_water_mark(self, out_of_orderness: Duration = 0) -> int | None:
        """µs, exclusive: every record with time < this is in the pinned snapshot."""
        ooo = parse_duration(out_of_orderness, name="out_of_orderness")
        state = await self.pin()
        if state.high_watermark is not None:
            return self._high_water_mark(_Planned(), ooo)
        planned = await asyncio.to_thread(self._plan_sync)
        return self._high_water_mark(planned, ooo)


def _summary(snap: Any) -> tuple[int, dict[str, str], int]:
    props: dict[str, str] = {}
    if snap.summary is not None:
        props = dict(snap.summary.additional_properties)
    rows = int(props.get("added-records", "0") or 0)
    return int(snap.snapshot_id), props, rows


def _bound(from_bytes: Any, field_type: Any, raw: bytes | None) -> int | None:
    """An Iceberg lower/upper bound of a timestamp column in µs (None: absent or not a time)."""
    if raw is None:
        return None
    type_name = str(field_type)
    if type_name in ("timestamp", "timestamptz"):
        return (
            int(struct.unpack("<q", raw)[0]) if len(raw) == 8 else int(from_bytes(field_type, raw))
        )
    if type_name in ("timestamp_ns", "timestamptz_ns"):
        return int(struct.unpack("<q", raw)[0]) // 1000
    if type_name == "long":
        return int(struct.unpack("<q", raw)[0]) * 1000
    return None
