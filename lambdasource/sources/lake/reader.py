"""The core shared by ``ParquetLake`` and ``IcebergLake``: ordered prefetch, decoding, watermarks.

A lake is planned as a list of :class:`LakePartition` in time order, each holding
:class:`LakeFile` s. :class:`LakeReader` loads up to ``prefetch`` partitions concurrently (bounded
by ``max_bytes_in_flight`` of estimated decoded size; the partition being emitted is always
loaded), and emits strictly in partition order, files by their minimum time, row groups in file
order ("chunks").

Watermark rule (DESIGN §3, never a watermark that makes a later record of the lake late). After a
chunk, the candidate is the partition end − 1µs (event-time partitioned) or max seen −
``out_of_orderness`` (otherwise; none when it is None). The emitted watermark is
``min(candidate, B − 1µs)`` where ``B`` is a lower bound of every record still to come: the exact
minimum time of the remaining chunks of the loaded partition, and the statistics-based lower bound
(file/row-group minima, clipped to ``start``) of every later partition. So a sorted single-file
partition gets ``min(row group i+1) − 1µs`` after row group i; overlapping files only get what is
safe; a row stored in a later partition but earlier in time holds the watermark back (and is
counted in ``rows_outside_partition``). Watermarks never regress. After a missing partition gap
the watermark jumps to the next partition's start − 1µs (capped the same way). A bounded run ends
with ``end_watermark`` (``until − 1µs`` or the lake's high-water mark − 1µs).

Position (``snapshot()``): partition label, index of the chunk in the partition, rows of that
chunk already emitted, and the file and row group of that chunk (the next chunk to read at a chunk
boundary; none at a partition start). Restoring checks that the planned partition holds that very
chunk at that index — the pinned state makes this hold across restarts — and raises
:class:`LakeStateError` naming the file otherwise, then skips exactly what was emitted.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ...checkpoints.codec import state_type
from ...errors import LakeReadError, LakeStateError, LambdaSourceError, SchemaError
from ...timeutil import TIME_TYPE, normalize_time_array, to_micros
from ..base import SourceOutput
from .partitioned import PartitionFilter
from .schema import unify
from .storage import LocalStorage, Storage

log = logging.getLogger("lambdasource.lake")

INF = math.inf
END = "<end>"  # the partition label of a position past the last partition
BATCH_ROWS = 131_072
WHOLE_FILE_FRACTION = 0.6  # fetch the whole object when the needed ranges cover more than this


@dataclass
class LakeFile:
    """One data file. ``row_groups`` None = all; bounds are µs (None: unknown)."""

    path: str
    size: int
    rows: int | None = None
    min_time: int | None = None
    max_time: int | None = None
    row_groups: list[int] | None = None
    footer: bytes | None = None
    metadata: pq.FileMetaData | None = None
    est_bytes: int = 0
    kafka_partition: int | None = None  # the Kafka partition a split file holds (archiver)


@dataclass
class LakePartition:
    """A time range ``[start, end)`` (None for units ordered by statistics) and its files."""

    label: str
    start: int | None
    end: int | None
    files: list[LakeFile] = field(default_factory=list)

    def lower_bound(self, *, start: int | None, trust_layout: bool) -> float:
        """A lower bound of every time this partition can emit (+inf when it has no files)."""
        if not self.files:
            return INF
        bound = INF
        for f in self.files:
            if f.min_time is not None:
                bound = min(bound, f.min_time)
            elif trust_layout and self.start is not None:
                bound = min(bound, self.start)
            else:
                return -INF if start is None else start
        return bound if start is None else max(bound, start)


@dataclass
class Chunk:
    """Decoded rows of one row group (or of a partition merged by time), ready to emit;
    ``min_time`` exact (None: no rows); ``times`` the µs of its rows when they are sorted."""

    file: str
    row_group: int
    table: pa.Table
    min_time: int | None
    max_time: int | None
    dead: pa.Table | None = None
    outside: int = 0
    times: np.ndarray | None = None
    null_keys: pa.Table | None = None  # rows of a restricted lake with a null key (dead letters)


MERGED = "<files merged by time>"  # the file of a partition's merged chunk


def _sorted_times(chunk: Chunk, time_column: str) -> np.ndarray | None:
    column = chunk.table.column(time_column)
    if column.null_count:
        return None
    times = np.asarray(column.cast(pa.int64()).to_numpy(), dtype=np.int64)
    return times if len(times) < 2 or bool(np.all(times[1:] >= times[:-1])) else None


def in_time_order(chunks: list[Chunk], time_column: str) -> list[Chunk]:
    """A partition's chunks as they are emitted: unchanged when each is sorted by time and
    none overlaps the next (the ``lake`` writer's files, one commit after another); otherwise
    one chunk of all their rows sorted by time (stable: ties keep file order, so the order is
    the same on every read of the same files). Sorted chunks get ``times``, which lets the
    watermark follow every emitted slice — so a record never leads the watermark by more than
    a slice's span."""
    for chunk in chunks:
        chunk.times = _sorted_times(chunk, time_column)
    rows = [c for c in chunks if c.table.num_rows]
    ordered = all(c.times is not None for c in rows) and all(
        a.max_time is not None and b.min_time is not None and a.max_time <= b.min_time
        for a, b in itertools.pairwise(rows)
    )
    if ordered or any(c.table.column(time_column).null_count for c in rows):
        return chunks
    try:
        table = pa.concat_tables([c.table for c in rows], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return chunks  # schemas that do not combine: emitted as they are (coarser watermarks)
    times = np.asarray(table.column(time_column).cast(pa.int64()).to_numpy(), dtype=np.int64)
    order = np.argsort(times, kind="stable")
    deads = [c.dead for c in chunks if c.dead is not None and c.dead.num_rows]
    nulls = [c.null_keys for c in chunks if c.null_keys is not None and c.null_keys.num_rows]
    merged = Chunk(
        MERGED,
        -1,
        table.take(pa.array(order)),
        int(times.min()),
        int(times.max()),
        pa.concat_tables(deads, promote_options="permissive") if deads else None,
        sum(c.outside for c in chunks),
        times[order],
        pa.concat_tables(nulls, promote_options="permissive") if nulls else None,
    )
    return [merged]


@dataclass
class LakeMetrics:
    """Plain-data figures reported through ``Source.metrics()``."""

    partitions_total: int = 0
    partitions_done: int = 0
    files_total: int = 0
    rows_emitted: int = 0
    bytes_read: int = 0
    row_groups_read: int = 0
    row_groups_pruned: int = 0
    files_pruned: int = 0
    missing_partitions: int = 0
    missing_partition_labels: list[str] = field(default_factory=list)
    rows_outside_partition: int = 0
    dead_letters: int = 0
    archived_dead_letters: int = 0  # of them: the archiver's, emitted from the pinned commits
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    files_after_pin: int = 0  # committed after the pinned state: the stream holds their records
    quarantined_files: list[dict[str, str]] = field(default_factory=list)
    watermark: int | None = None
    watermarks_emitted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "partitions_total": self.partitions_total,
            "partitions_done": self.partitions_done,
            "files_total": self.files_total,
            "rows_emitted": self.rows_emitted,
            "bytes_read": self.bytes_read,
            "row_groups_read": self.row_groups_read,
            "row_groups_pruned": self.row_groups_pruned,
            "files_pruned": self.files_pruned,
            "missing_partitions": self.missing_partitions,
            "missing_partition_labels": list(self.missing_partition_labels),
            "rows_outside_partition": self.rows_outside_partition,
            "dead_letters": self.dead_letters,
            "archived_dead_letters": self.archived_dead_letters,
            "skipped_files": [dict(s) for s in self.skipped_files],
            "orphan_files": list(self.orphan_files),
            "files_after_pin": self.files_after_pin,
            "quarantined_files": [dict(q) for q in self.quarantined_files],
            "watermark": self.watermark,
            "watermarks_emitted": self.watermarks_emitted,
        }


def time_bound(value: Any) -> int | None:
    """Parse ``start``/``until`` (µs, datetime or ISO string); None stays None."""
    return None if value is None else to_micros(value)


# --- statistics -------------------------------------------------------------------------------


def _raw_to_micros(raw: Any, dtype: pa.DataType) -> int | None:
    if raw is None or isinstance(raw, bool | bytes | str | float):
        return None
    if isinstance(raw, datetime):
        return to_micros(raw)
    if not isinstance(raw, int):
        return None
    if pa.types.is_timestamp(dtype):
        unit = dtype.unit
        if unit == "ns":
            return raw // 1000
        return raw * {"s": 1_000_000, "ms": 1000, "us": 1}[unit]
    if pa.types.is_int64(dtype):
        return raw * 1000  # epoch milliseconds
    return None


def row_group_bounds(
    metadata: pq.FileMetaData, time_column: str
) -> list[tuple[int | None, int | None]]:
    """Per row group, (min, max) of the time column in µs from statistics (None: unknown)."""
    arrow_schema = metadata.schema.to_arrow_schema()
    index = arrow_schema.get_field_index(time_column)
    if index < 0:
        return [(None, None)] * metadata.num_row_groups
    dtype = arrow_schema.field(index).type
    leaf = metadata.schema.names.index(time_column) if time_column in metadata.schema.names else -1
    out: list[tuple[int | None, int | None]] = []
    for rg in range(metadata.num_row_groups):
        if leaf < 0:
            out.append((None, None))
            continue
        stats = metadata.row_group(rg).column(leaf).statistics
        if stats is None or not stats.has_min_max:
            out.append((None, None))
            continue
        out.append((_raw_to_micros(stats.min_raw, dtype), _raw_to_micros(stats.max_raw, dtype)))
    return out


def parse_metadata(tail: bytes, where: str) -> pq.FileMetaData:
    try:
        return pq.read_metadata(pa.BufferReader(tail))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise LakeReadError(f"corrupt Parquet footer file={where}: {exc}") from exc


def plan_row_groups(
    file: LakeFile,
    metadata: pq.FileMetaData,
    *,
    time_column: str,
    start: int | None,
    until: int | None,
    filter: pc.Expression | None,
    where: str,
) -> int:
    """Fill ``file``'s stats and select its row groups; return how many were pruned."""
    bounds = row_group_bounds(metadata, time_column)
    selected = list(range(metadata.num_row_groups))
    if file.row_groups is not None:
        selected = [rg for rg in selected if rg in set(file.row_groups)]
    keep: list[int] = []
    for rg in selected:
        lo, hi = bounds[rg]
        if until is not None and lo is not None and lo >= until:
            continue
        if start is not None and hi is not None and hi < start:
            continue
        if metadata.row_group(rg).num_rows == 0:
            continue
        keep.append(rg)
    if filter is not None and keep:
        try:
            fragment = ds.ParquetFileFormat().make_fragment(pa.py_buffer(file.footer or b""))
            if file.footer is not None:
                allowed = {rg.id for rg in fragment.subset(filter).row_groups}
                keep = [rg for rg in keep if rg in allowed]
        except (pa.ArrowException, TypeError, ValueError):
            pass  # statistics cannot decide: keep everything, the filter still applies to rows
    pruned = len(selected) - len(keep)
    file.row_groups = keep
    file.metadata = metadata
    file.rows = sum(metadata.row_group(rg).num_rows for rg in keep)
    lows = [bounds[rg][0] for rg in keep]
    highs = [bounds[rg][1] for rg in keep]
    file.min_time = min(lows) if keep and None not in lows else None  # type: ignore[type-var]
    file.max_time = max(highs) if keep and None not in highs else None  # type: ignore[type-var]
    file.est_bytes = sum(metadata.row_group(rg).total_byte_size for rg in keep)
    return pruned


# --- decoding ---------------------------------------------------------------------------------


class _SparseFile(io.RawIOBase):
    """A read-only file of ``size`` bytes of which only some ranges were fetched (S3)."""

    def __init__(self, size: int, ranges: list[tuple[int, bytes]], where: str) -> None:
        super().__init__()
        self._size = size
        merged: list[tuple[int, bytes]] = []
        for begin, data in sorted(ranges, key=lambda r: r[0]):
            if merged and merged[-1][0] + len(merged[-1][1]) >= begin:
                prev_begin, prev = merged[-1]
                merged[-1] = (prev_begin, prev + data[prev_begin + len(prev) - begin :])
            else:
                merged.append((begin, data))
        self._ranges = merged
        self._pos = 0
        self._where = where

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        n = self._size - self._pos if size is None or size < 0 else size
        for begin, data in self._ranges:
            if begin <= self._pos and self._pos + n <= begin + len(data):
                out = data[self._pos - begin : self._pos - begin + n]
                self._pos += len(out)
                return out
        raise OSError(f"byte range {self._pos}+{n} was not fetched file={self._where}")

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _chunk_ranges(
    metadata: pq.FileMetaData, row_groups: Sequence[int], columns: list[str] | None
) -> list[tuple[int, int]]:
    wanted = None if columns is None else set(columns)
    ranges: list[tuple[int, int]] = []
    for rg in row_groups:
        group = metadata.row_group(rg)
        for c in range(group.num_columns):
            col = group.column(c)
            top = col.path_in_schema.split(".", 1)[0]
            if wanted is not None and top not in wanted:
                continue
            begin = col.data_page_offset
            if col.has_dictionary_page and col.dictionary_page_offset:
                begin = min(begin, col.dictionary_page_offset)
            ranges.append((begin, begin + col.total_compressed_size))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for begin, end in ranges:
        if merged and begin <= merged[-1][1] + 8 * 1024:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


@dataclass
class Decoder:
    """How rows of a file become emitted tables (shared settings of one lake)."""

    time_column: str
    start: int | None
    until: int | None
    columns: list[str] | None
    filter: pc.Expression | None
    schema: pa.Schema | None  # declared (time column already TIME_TYPE) or learnt from file 1
    trust_layout: bool
    partition_filter: PartitionFilter | None = None  # a task's lake: its Kafka partition's rows

    def read_columns(self, file_schema: pa.Schema) -> list[str] | None:
        if self.filter is not None:
            return None  # the filter may reference any column
        names = self.columns if self.columns is not None else self.schema_names()
        if names is None:
            return None
        wanted = set(names) | {self.time_column}
        if self.partition_filter is not None:
            wanted |= set(self.partition_filter.key)
        return [n for n in file_schema.names if n in wanted]

    def schema_names(self) -> list[str] | None:
        return None if self.schema is None else list(self.schema.names)

    def prepare(
        self, table: pa.Table, where: str, partition: LakePartition, tag: int | None = None
    ) -> Prepared:
        """Normalise time, apply start/until/filter, a task's key partition (``tag``: the
        Kafka partition of a split file), projection and schema; count outside rows."""
        column = self.time_column
        if column not in table.schema.names:
            raise SchemaError(f"time column {column!r} missing in file={where}")
        raw = table.column(column)
        dead: pa.Table | None = None
        if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
            times, bad = _parse_string_times(raw)
            if bad is not None:
                dead = table.filter(bad)
                keep = pc.invert(bad)
                table, times = table.filter(keep), times.filter(keep)
        else:
            try:
                times = normalize_time_array(raw)
            except SchemaError as exc:
                raise SchemaError(f"{exc} file={where}") from exc
        table = table.set_column(
            table.schema.get_field_index(column), pa.field(column, TIME_TYPE), times
        )
        if self.start is not None or self.until is not None:
            mask: pa.Array | None = None
            if self.start is not None:
                mask = pc.greater_equal(times, pa.scalar(self.start, TIME_TYPE))
            if self.until is not None:
                upper = pc.less(times, pa.scalar(self.until, TIME_TYPE))
                mask = upper if mask is None else pc.and_(mask, upper)
            assert mask is not None
            if mask.false_count:
                table = table.filter(pc.fill_null(mask, True))
        if self.filter is not None:
            table = table.filter(self.filter)
        null_keys: pa.Table | None = None
        other_rows = null_rows = 0
        if self.partition_filter is not None:
            table, null_keys, other_rows, null_rows = self.partition_filter.apply(
                table, tag, f"file={where}"
            )
        if self.columns is not None:
            keep_cols = [c for c in self.columns if c in table.schema.names]
            if column not in keep_cols:
                keep_cols.insert(0, column)
            table = table.select(keep_cols)
        if self.schema is not None:
            table = unify(table, self.schema, where=f"file={where}")
        times_out = table.column(column)
        low = high = None
        if table.num_rows:
            bounds = pc.min_max(times_out)  # one pass; nulls ignored
            low_s, high_s = bounds["min"], bounds["max"]
            if low_s.is_valid:
                low, high = low_s.cast(pa.int64()).as_py(), high_s.cast(pa.int64()).as_py()
        outside_rows = 0
        if (
            self.trust_layout
            and partition.start is not None
            and partition.end is not None
            and low is not None
            and high is not None
            and (low < partition.start or high >= partition.end)
        ):
            outside = pc.or_(
                pc.less(times_out, pa.scalar(partition.start, TIME_TYPE)),
                pc.greater_equal(times_out, pa.scalar(partition.end, TIME_TYPE)),
            )
            outside_rows = int(pc.sum(outside).as_py() or 0)
        return Prepared(table, dead, low, high, outside_rows, null_keys, other_rows, null_rows)


class Prepared(NamedTuple):
    """A decoded row group: rows to emit, dead letters, time bounds and what was left out."""

    table: pa.Table
    dead: pa.Table | None
    low: int | None
    high: int | None
    outside: int
    null_keys: pa.Table | None  # a restricted lake's null-key rows to dead-letter
    other_rows: int  # rows of other Kafka partitions (restricted lake)
    null_rows: int  # rows with a null key (restricted lake)


def reference_schema(
    file_schema: pa.Schema, columns: list[str] | None, time_column: str
) -> pa.Schema:
    """The emitted schema learnt from a lake's first file (projection applied, time as µs UTC)."""
    names = list(file_schema.names)
    if columns is not None:
        names = [c for c in columns if c in file_schema.names]
        if time_column not in names:
            names.insert(0, time_column)
    fields = []
    for name in names:
        f = file_schema.field(name)
        fields.append(pa.field(name, TIME_TYPE, f.nullable) if name == time_column else f)
    return pa.schema(fields)


def _parse_string_times(raw: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """ISO-8601 strings → µs UTC; returns (times, mask of unparseable non-null rows or None)."""
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    try:
        parsed = pc.cast(raw, pa.timestamp("us", tz="UTC"))
        return parsed, None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Slow path, only for batches that hold a bad value: parse each string.
    values = raw.to_pylist()
    micros: list[int | None] = []
    bad = np.zeros(len(values), dtype=bool)
    for i, text in enumerate(values):
        if text is None:
            micros.append(None)
            continue
        try:
            micros.append(to_micros(text))
        except LambdaSourceError:
            micros.append(None)
            bad[i] = True
    return pa.array(micros, pa.int64()).cast(TIME_TYPE), pa.array(bad)


async def load_file(
    storage: Storage,
    file: LakeFile,
    partition: LakePartition,
    decoder: Decoder,
    metrics: LakeMetrics,
    *,
    plan: Callable[[LakeFile, pq.FileMetaData], None],
) -> list[Chunk]:
    """Fetch and decode ``file``'s selected row groups (footer first when not known yet)."""
    where = storage.url(file.path)
    if file.metadata is None:
        file.footer = await storage.read_footer(file.path, file.size)
        metadata = await asyncio.to_thread(parse_metadata, file.footer, where)
        plan(file, metadata)
    metadata = file.metadata
    assert metadata is not None
    row_groups = (
        list(range(metadata.num_row_groups)) if file.row_groups is None else file.row_groups
    )
    if not row_groups:
        return []
    columns = decoder.read_columns(metadata.schema.to_arrow_schema())
    source: Any
    if isinstance(storage, LocalStorage):
        source = storage.local_path(file.path)
        metrics.bytes_read += sum(
            metadata.row_group(rg).column(c).total_compressed_size
            for rg in row_groups
            for c in range(metadata.num_columns)
        )
    else:
        # The tail fetched for the footer (up to 64 KiB) is reused, never fetched twice.
        tail = file.footer or b""
        tail_start = file.size - len(tail)
        ranges = [(a, min(b, tail_start)) for a, b in _chunk_ranges(metadata, row_groups, columns)]
        ranges = [(a, b) for a, b in ranges if b > a]
        needed = sum(b - a for a, b in ranges)
        if tail_start == 0:  # the probe fetched the whole (small) file
            source = pa.BufferReader(tail)
        elif needed > WHOLE_FILE_FRACTION * file.size:
            head = await storage.read_range(file.path, 0, tail_start) if tail_start else b""
            metrics.bytes_read += len(head)
            source = pa.BufferReader(head + tail)
        else:
            parts = await storage.read_ranges(file.path, ranges)
            metrics.bytes_read += sum(len(p) for p in parts)
            fetched = [(a, p) for (a, _), p in zip(ranges, parts, strict=True)]
            if tail:
                fetched.append((tail_start, tail))
            source = pa.PythonFile(_SparseFile(file.size, fetched, where), mode="r")

    left_out = [0, 0]  # rows of other partitions, null-key rows (a restricted lake)

    def decode() -> list[Chunk]:
        try:
            reader = pq.ParquetFile(source, metadata=metadata, memory_map=False)
            chunks = []
            for rg in row_groups:
                table = reader.read_row_group(rg, columns=columns)
                got = decoder.prepare(
                    table, f"{where} row_group={rg}", partition, file.kafka_partition
                )
                chunks.append(
                    Chunk(
                        file.path,
                        rg,
                        got.table,
                        got.low,
                        got.high,
                        got.dead,
                        got.outside,
                        null_keys=got.null_keys,
                    )
                )
                left_out[0] += got.other_rows
                left_out[1] += got.null_rows
            return chunks
        except LambdaSourceError:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise LakeReadError(f"corrupt or unreadable Parquet data file={where}: {exc}") from exc

    chunks = await asyncio.to_thread(decode)
    file.footer = None  # the tail was only kept for this load
    metrics.row_groups_read += len(chunks)
    metrics.rows_outside_partition += sum(c.outside for c in chunks)
    restricted = decoder.partition_filter
    if restricted is not None:
        restricted.counts.rows_other_partitions += left_out[0]
        restricted.counts.null_key_rows += left_out[1]
    return chunks


# --- ordered emission -------------------------------------------------------------------------


@state_type("lake.position")
@dataclass(frozen=True)
class Position:
    """Resume position: partition label, chunks fully emitted in it, rows of the next chunk."""

    partition: str
    partition_index: int
    chunk: int = 0
    rows: int = 0
    file: str | None = None
    row_group: int | None = None
    chunk_rows: int | None = None  # rows the chunk decoded to (a changed selection shows here)

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "partition_index": self.partition_index,
            "chunk": self.chunk,
            "rows": self.rows,
            "file": self.file,
            "row_group": self.row_group,
            "chunk_rows": self.chunk_rows,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Position:
        return cls(
            partition=str(raw["partition"]),
            partition_index=int(raw.get("partition_index", 0)),
            chunk=int(raw.get("chunk", 0)),
            rows=int(raw.get("rows", 0)),
            file=raw.get("file"),
            row_group=raw.get("row_group"),
            chunk_rows=raw.get("chunk_rows"),
        )


Loader = Callable[[LakePartition], Coroutine[Any, Any, list[Chunk]]]
EndWatermark = int | None | Callable[[], int | None]


class LakeReader:
    """Emits planned partitions in order with prefetch and the watermark rule of the module."""

    def __init__(
        self,
        *,
        name: str,
        time_column: str,
        event_time_partitioned: bool,
        out_of_orderness: int | None,
        start: int | None,
        prefetch: int,
        max_bytes_in_flight: int,
        metrics: LakeMetrics,
        batch_rows: int = BATCH_ROWS,
        max_span: int | None = None,
        until: int | None = None,
    ) -> None:
        self.name = name
        self.time_column = time_column
        self.event_time_partitioned = event_time_partitioned
        self.out_of_orderness = out_of_orderness
        self.start = start
        self.until = until
        self.prefetch = max(1, prefetch)
        self.max_bytes = max_bytes_in_flight
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.max_span = max_span  # µs of event time one emitted slice of sorted rows may span
        self.position: Position | None = None
        self.restored: Position | None = None
        self._last_watermark: int | None = None
        # why a restricted lake's null-key rows are dead letters (set by the lake source)
        self.null_key_reason = "null key: the record belongs to no Kafka partition"

    async def _advance(self, out: SourceOutput, candidate: float, bound: float) -> None:
        value = min(candidate, bound - 1)
        if self.until is not None:  # a bounded read promises nothing beyond its bound
            value = min(value, self.until - 1)
        if math.isinf(value):
            return
        w = int(value)
        if self._last_watermark is None or w > self._last_watermark:
            self._last_watermark = w
            self.metrics.watermark = w
            self.metrics.watermarks_emitted += 1
            await out.emit_watermark(w)

    def _first_partition(self, partitions: list[LakePartition]) -> int:
        restored = self.restored
        if restored is None:
            return 0
        for i, part in enumerate(partitions):
            if part.label == restored.partition:
                return i
        if restored.partition == END and restored.partition_index == len(partitions):
            return len(partitions)
        raise LakeStateError(
            f"lake={self.name}: the restored position names partition={restored.partition} "
            f"(index {restored.partition_index}"
            + (f", file={restored.file}" if restored.file else "")
            + f"), which the lake no longer plans ({len(partitions)} partitions): a changed "
            "start/until/filter, or files outside the pinned state"
        )

    def _check_resume(self, part: LakePartition, chunks: list[Chunk], resume: Position) -> None:
        """The restored chunk index must still hold the recorded file and row group."""
        if resume.chunk == 0 and resume.rows == 0:
            return  # a partition start: nothing of it was emitted
        at = chunks[resume.chunk] if resume.chunk < len(chunks) else None
        if resume.file is None:  # an older position without the chunk's identity
            if resume.chunk <= len(chunks) and (at is None or resume.rows <= at.table.num_rows):
                return
        elif (
            at is not None
            and at.file == resume.file
            and at.row_group == resume.row_group
            and resume.rows <= at.table.num_rows
            and resume.chunk_rows in (None, at.table.num_rows)
        ):
            return
        found = (
            "nothing"
            if at is None
            else f"file={at.file} row_group={at.row_group} ({at.table.num_rows} rows)"
        )
        raise LakeStateError(
            f"lake={self.name}: cannot resume partition={part.label} at chunk {resume.chunk} "
            f"(file={resume.file} row_group={resume.row_group} rows={resume.rows} of "
            f"{resume.chunk_rows}): the "
            f"partition now holds {found} there — a file was rewritten (compaction) or "
            "start/until/filter changed since the checkpoint; start the job fresh"
        )

    async def run(
        self,
        out: SourceOutput,
        partitions: list[LakePartition],
        load: Loader,
        end_watermark: EndWatermark,
        ready: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Emit ``partitions``; ``ready`` (if given) completes the files' statistics — it is
        awaited once the first partition is loaded, before any watermark is computed.
        ``end_watermark`` (or a callable evaluated after the last partition) ends the run."""
        estimate = [sum(f.est_bytes or 3 * f.size for f in p.files) for p in partitions]
        first = self._first_partition(partitions)
        if self.position is None:  # resumed and nothing emitted yet: still where it resumed
            self.position = self.restored
        try:
            await self._run(out, partitions, load, end_watermark, ready, estimate, first)
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    def _rest_bounds(self, partitions: list[LakePartition]) -> list[float]:
        """``rest[i]``: a lower bound of every time partitions ``i…`` can still emit."""
        n = len(partitions)
        trust = self.event_time_partitioned
        bounds = [p.lower_bound(start=self.start, trust_layout=trust) for p in partitions]
        rest = [INF] * (n + 1)
        for i in range(n - 1, -1, -1):
            rest[i] = min(bounds[i], rest[i + 1])
        return rest

    async def _run(
        self,
        out: SourceOutput,
        partitions: list[LakePartition],
        load: Loader,
        end_watermark: EndWatermark,
        ready: Callable[[], Coroutine[Any, Any, None]] | None,
        estimate: list[int],
        first: int,
    ) -> None:
        n = len(partitions)
        trust = self.event_time_partitioned
        max_seen: int | None = None
        rest: list[float] | None = None
        async with asyncio.TaskGroup() as tg:
            tasks: dict[int, asyncio.Task[list[Chunk]]] = {}
            in_flight = 0
            next_start = first
            for i in range(first, n):
                while next_start < n and next_start < i + self.prefetch:
                    cost = estimate[next_start]
                    if next_start > i and in_flight + cost > self.max_bytes:
                        break
                    tasks[next_start] = tg.create_task(load(partitions[next_start]))
                    in_flight += cost
                    next_start += 1
                part = partitions[i]
                task = tasks.pop(i)
                while not task.done():  # let checkpoints through while a slow load runs
                    await asyncio.wait({task}, timeout=0.5)
                    point = getattr(out, "barrier_point", None)
                    if point is not None and not task.done():
                        await point()
                chunks = in_time_order(task.result(), self.time_column)
                suffix = [INF] * (len(chunks) + 1)
                for k in range(len(chunks) - 1, -1, -1):
                    low = chunks[k].min_time
                    suffix[k] = min(INF if low is None else low, suffix[k + 1])

                async def later_bound(i: int = i) -> float:
                    """Lower bound of partitions after ``i``; the first call waits for every
                    file's statistics (``ready``), so data flows before all footers arrive."""
                    nonlocal rest
                    if rest is None:
                        if ready is not None:
                            await ready()
                        rest = self._rest_bounds(partitions)
                    return rest[i + 1]

                resume = (
                    self.restored
                    if self.restored and self.restored.partition == part.label
                    else None
                )
                self.restored = None
                if resume is not None:
                    self._check_resume(part, chunks, resume)
                for k, chunk in enumerate(chunks):
                    skip = 0
                    if resume is not None:
                        if k < resume.chunk:
                            continue
                        if k == resume.chunk:
                            skip = resume.rows
                    where = f"file={chunk.file} row_group={chunk.row_group}"
                    if chunk.dead is not None and chunk.dead.num_rows and skip == 0:
                        self.metrics.dead_letters += chunk.dead.num_rows
                        for batch in chunk.dead.to_batches():
                            await out.dead_letter(batch, "unparseable event time", where)
                    if chunk.null_keys is not None and chunk.null_keys.num_rows and skip == 0:
                        self.metrics.dead_letters += chunk.null_keys.num_rows
                        for batch in chunk.null_keys.to_batches():
                            await out.dead_letter(batch, self.null_key_reason, where)
                    table, times = chunk.table, chunk.times
                    done = skip
                    while done < table.num_rows:
                        stop = self._slice_end(times, done, table.num_rows)
                        piece = table.slice(done, stop - done).combine_chunks()
                        for batch in piece.to_batches():
                            self.position = Position(
                                part.label, i, k, done, chunk.file, chunk.row_group, table.num_rows
                            )
                            await out.emit(batch, position=f"{where} row={done}")
                            done += batch.num_rows
                            self.metrics.rows_emitted += batch.num_rows
                        if times is not None and done < table.num_rows:
                            # sorted rows: the watermark follows the slice (every later row of
                            # this chunk is at or after the next one)
                            seen = int(times[done - 1])
                            max_seen = seen if max_seen is None else max(max_seen, seen)
                            self.position = Position(
                                part.label, i, k, done, chunk.file, chunk.row_group, table.num_rows
                            )
                            await self._advance(
                                out,
                                self._candidate(part, max_seen),
                                min(float(times[done]), suffix[k + 1], await later_bound()),
                            )
                    top = chunk.max_time
                    if top is not None:
                        max_seen = top if max_seen is None else max(max_seen, top)
                    following = chunks[k + 1] if k + 1 < len(chunks) else None
                    self.position = Position(
                        part.label,
                        i,
                        k + 1,
                        0,
                        None if following is None else following.file,
                        None if following is None else following.row_group,
                        None if following is None else following.table.num_rows,
                    )
                    await self._advance(
                        out,
                        self._candidate(part, max_seen),
                        min(suffix[k + 1], await later_bound()),
                    )
                # partition end
                self.position = Position(partitions[i + 1].label if i + 1 < n else END, i + 1)
                await self._advance(out, self._candidate(part, max_seen), await later_bound())
                if trust and part.end is not None and i + 1 < n:
                    nxt = partitions[i + 1].start
                    if nxt is not None and nxt > part.end:
                        await self._advance(out, nxt - 1, await later_bound())
                    # up to just before the next record (statistics): no gap between partitions
                    # counts as lead of the next partition's first rows
                    later = await later_bound()
                    await self._advance(out, later, later)
                self.metrics.partitions_done += 1
                in_flight -= estimate[i]
        end = end_watermark() if callable(end_watermark) else end_watermark
        if end is not None:
            await self._advance(out, end, INF)

    def _slice_end(self, times: np.ndarray | None, done: int, total: int) -> int:
        """End of the next emitted slice: at most ``batch_rows`` rows and, for sorted rows when
        ``max_span`` is set, at most that much event time (at least one row)."""
        end = min(done + self.batch_rows, total)
        if times is not None and self.max_span is not None:
            limit = int(np.searchsorted(times, times[done] + self.max_span, side="right"))
            end = min(end, max(done + 1, limit))
        return end

    def _candidate(self, part: LakePartition, max_seen: int | None) -> float:
        if self.event_time_partitioned and part.end is not None:
            return part.end - 1
        if self.out_of_orderness is None:
            return INF
        if max_seen is None:
            return -INF
        return max_seen - self.out_of_orderness


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a task group (errors of one load cancel the others)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def note_missing_partitions(
    partitions: list[LakePartition], metrics: LakeMetrics, *, name: str
) -> None:
    """Count (and warn about) missing time partitions between the first and the last."""
    from ...timeutil import format_time

    missing: list[str] = []
    for prev, nxt in itertools.pairwise(partitions):
        if prev.end is None or nxt.start is None or prev.start is None:
            continue
        width = prev.end - prev.start
        t = prev.end
        while t < nxt.start and width > 0:
            missing.append(format_time(t))
            t += width
    metrics.missing_partitions = len(missing)
    metrics.missing_partition_labels = missing[:100]
    if missing:
        log.warning(
            "lake=%s: %d missing partition(s) between the first and last: %s%s",
            name,
            len(missing),
            ", ".join(missing[:10]),
            " …" if len(missing) > 10 else "",
        )


def quarantine_or_raise(
    exc: LakeReadError, path: str, on_corrupt: str, metrics: LakeMetrics, *, name: str
) -> None:
    if on_corrupt != "quarantine":
        raise exc
    metrics.quarantined_files.append({"file": path, "reason": str(exc)})
    log.warning("lake=%s: quarantined file=%s: %s", name, path, exc)
