"""Arrow tables → an hour-partitioned lake: Parquet (hive layout) or an Iceberg ``hours(ts)`` table.

One ``write`` call is one commit. Invariants both writers keep:

- **Event-time partitions.** A row lands in the partition of its event time (``[h, h+1h)``, or a
  day for the daily layout), wherever it arrived from; late rows land in their own (old) partition.
- **Sorted files.** Rows are stably sorted by event time before writing, so every file is sorted by
  time and its row groups cover increasing, non-overlapping time ranges — what lets a reader emit
  watermarks between row groups. Row groups hold at most ``row_group_rows`` rows and, when
  ``row_group_span`` is set, span at most that much event time (unless that would make a row group
  smaller than ``row_group_min_rows``).
- **Data first, commit record last, atomically** (:mod:`lambdasource.sources.lake.commits`):
  Parquet data files are written (and fsynced locally) before the commit record
  ``_lambdasource/commits/<sequence:020d>.json`` appears (local: fsynced temporary file, then
  ``os.link`` — atomic, and it fails if a concurrent writer took the sequence; S3: one PUT).
  A crash in between leaves orphan files that no commit lists; readers ignore them.
  Iceberg: one ``append`` snapshot per call carrying the commit in its summary properties.
- **Time column type.** By default (``normalize_time=True``) the time column is written as
  ``timestamp[us, UTC]`` — the engine's representation and Iceberg's ``timestamptz``, so every
  reader sees the same type whatever the input was (any timestamp unit, naive = UTC, or int64 epoch
  milliseconds). ``normalize_time=False`` keeps the user's type in Parquet files (partitioning still
  uses the normalised time; Parquet itself stores ``timestamp[s]`` as ``timestamp[ms]``). Iceberg always normalises (``hours()`` needs a timestamp column).
- **Split by Kafka partition** (rows given as ``{partition: rows}``, as the archiver does): a
  Parquet lake writes one file per (time partition, Kafka partition), the Kafka partition in
  the name — ``part-<sequence:020d>-p<partition>-<uuid>.parquet`` in the same hour directory,
  so hour partitioning, older lakes and every reader stay as they were; an Iceberg table gets the
  column ``_kafka_partition`` (int, identity partition field, added to an older table by schema
  and spec evolution). A scale-out task then reads only its partition's files
  (:mod:`lambdasource.sources.lake.partitioned`). Rows given as one table are written unsplit.
- Rows with a null event time are rejected (:class:`~lambdasource.errors.SchemaError`): they
  belong to no partition. The archiver dead-letters them before they reach a writer.

Dead letters (records that could not be decoded) are written beside the lake, one Parquet file per
commit, ``_lambdasource/dead_letters/<sequence:020d>.parquet`` (Iceberg: under the table location),
before the commit record; only files whose sequence is committed count.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lambdasource.errors import ConfigError, LambdaSourceError, SchemaError, SinkError
from lambdasource.s3 import S3Config, split_s3_url
from lambdasource.sources.lake.commits import (
    COMMITS_DIR,
    CommitRecord,
    ShardRecord,
    merge_offsets,
)
from lambdasource.sources.lake.partitioned import KAFKA_PARTITION_COLUMN, split_file_name
from lambdasource.timeutil import (
    DAY,
    HOUR,
    TIME_TYPE,
    Duration,
    check_time_type,
    micros_array,
    normalize_time_array,
    parse_duration,
)

__all__ = [
    "DEAD_LETTERS_DIR",
    "DEAD_LETTER_SCHEMA",
    "IcebergLakeWriter",
    "LakeWriter",
    "Layout",
    "ParquetLakeWriter",
    "partition_path",
    "row_group_bounds",
]

DEAD_LETTERS_DIR = "_lambdasource/dead_letters"

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary()),
        pa.field("reason", pa.string()),
        pa.field("sequence", pa.string()),
    ]
)
"""One row per malformed message: where it was (topic/partition/offset), what it was, and why.
Kinesis: ``partition`` is the shard number and ``sequence`` the record's sequence number as a
decimal string (``offset`` holds it too when it fits 64 bits); null for Kafka and in files written
before the column existed."""

Layout = Literal["hour", "dt_hour", "ymdh", "iso_hour", "day", "daily"]
_LAYOUTS = {
    "hour": "dt_hour",
    "dt_hour": "dt_hour",
    "ymdh": "ymdh",
    "iso_hour": "iso_hour",
    "day": "daily",
    "daily": "daily",
}
_COMMIT_NAME = re.compile(r"^(\d{20})\.json$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TableLike: TypeAlias = "pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch]"
Commit: TypeAlias = "TableLike | Mapping[int, TableLike]"
"""What one ``write`` takes: rows, or rows per Kafka partition (written split, see below)."""


def partition_path(start_us: int, layout: str) -> str:
    """The directory (relative, ``/``-separated) of the partition starting at ``start_us``."""
    when = _EPOCH + timedelta(microseconds=start_us)
    kind = _LAYOUTS.get(layout)
    if kind == "dt_hour":
        return f"dt={when:%Y-%m-%d}/hour={when:%H}"
    if kind == "ymdh":
        return f"year={when:%Y}/month={when:%m}/day={when:%d}/hour={when:%H}"
    if kind == "iso_hour":
        return f"hour={when:%Y-%m-%dT%H}"
    if kind == "daily":
        return f"dt={when:%Y-%m-%d}"
    raise ConfigError(f"unknown lake layout {layout!r}; use one of {sorted(_LAYOUTS)}")


def row_group_bounds(
    times: np.ndarray, max_rows: int, span_us: int | None = None, min_rows: int = 1
) -> list[tuple[int, int]]:
    """Row-group ``[start, stop)`` ranges over sorted ``times`` (µs).

    Cuts where the ``span_us`` bucket of the time changes (only when the row group so far has at
    least ``min_rows`` rows), then splits each piece into equal parts of at most ``max_rows``.
    Work is vectorised except a loop over the (few) bucket changes.
    """
    n = len(times)
    if n == 0:
        return []
    cuts = [0]
    if span_us:
        buckets = times // span_us
        for cut in (np.flatnonzero(np.diff(buckets)) + 1).tolist():
            if cut - cuts[-1] >= min_rows:
                cuts.append(cut)
    cuts.append(n)
    bounds: list[tuple[int, int]] = []
    for start, stop in itertools.pairwise(cuts):
        size = stop - start
        parts = -(-size // max_rows)
        edges = np.linspace(start, stop, parts + 1).round().astype(np.int64).tolist()
        bounds.extend(itertools.pairwise(edges))
    return bounds


def _as_table(data: TableLike) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    batches: list[pa.RecordBatch] = list(data)
    if not batches:
        raise ConfigError("write: an empty list of batches has no schema; pass a pa.Table")
    return pa.Table.from_batches(batches)


@dataclass(frozen=True)
class _Prepared:
    table: pa.Table  # sorted by event time (stable)
    micros: np.ndarray  # sorted event times, µs


def _prepare(data: TableLike, time_column: str, *, normalize: bool, where: str) -> _Prepared:
    """Validate the time column, normalise it if asked, and sort stably by event time."""
    table = _as_table(data)
    if time_column not in table.column_names:
        raise SchemaError(
            f"{where}: time column {time_column!r} not in columns {table.column_names}"
        )
    column = table.column(time_column)
    check_time_type(column.type, column=time_column, where=where)
    if column.null_count:
        raise SchemaError(
            f"{where}: {column.null_count} row(s) with a null event time in column "
            f"{time_column!r}; they belong to no partition (dead-letter them first)"
        )
    normalized = normalize_time_array(column)
    micros = micros_array(normalized)
    if normalize and column.type != TIME_TYPE:
        index = table.column_names.index(time_column)
        field = table.schema.field(index).with_type(TIME_TYPE)
        table = table.set_column(index, field, normalized)
    if len(micros) > 1 and bool(np.any(micros[1:] < micros[:-1])):
        order = np.argsort(micros, kind="stable")
        table = table.take(pa.array(order))
        micros = micros[order]
    return _Prepared(table.combine_chunks(), micros)


def _split(data: Commit) -> list[tuple[int | None, TableLike]]:
    """``data`` as (Kafka partition or None, rows) parts, partitions in order."""
    if isinstance(data, Mapping):
        for tag in data:
            if not isinstance(tag, int) or isinstance(tag, bool) or tag < 0:
                raise ConfigError(f"write: Kafka partitions must be ints >= 0, got {tag!r}")
        return [(tag, data[tag]) for tag in sorted(data)]
    return [(None, data)]


def _tagged_table(data: Commit) -> tuple[pa.Table, bool]:
    """One table of ``data``; rows given per Kafka partition get it in
    :data:`KAFKA_PARTITION_COLUMN` (the Iceberg writer's identity partition field)."""
    if not isinstance(data, Mapping):
        return _as_table(data), False
    tables = []
    for tag, rows in _split(data):
        table = _as_table(rows)
        if KAFKA_PARTITION_COLUMN in table.column_names:
            raise SchemaError(
                f"write: column {KAFKA_PARTITION_COLUMN!r} is reserved for the Kafka partition "
                "of rows written per partition"
            )
        column = pa.array(np.full(table.num_rows, tag, dtype=np.int32), pa.int32())
        tables.append(table.append_column(pa.field(KAFKA_PARTITION_COLUMN, pa.int32()), column))
    if not tables:
        raise ConfigError("write: no rows and no schema (an empty mapping); pass a pa.Table")
    return pa.concat_tables(tables, promote_options="permissive"), True


class _Root:
    """A lake root on a pyarrow file system: local directory or S3 prefix."""

    def __init__(self, root: str | Path, s3: S3Config | None) -> None:
        text = str(root)
        parsed = urlparse(text)
        if parsed.scheme in ("s3", "s3a"):
            bucket, prefix = split_s3_url(text)
            self.fs: pafs.FileSystem = (s3 or S3Config()).pyarrow_filesystem()
            self.base = f"{bucket}/{prefix}".rstrip("/")
            self.local = False
            self.url = f"s3://{self.base}"
        elif parsed.scheme == "file":
            self._local(unquote(parsed.path))
        elif parsed.scheme in ("", "c", "d") or len(parsed.scheme) == 1:
            self._local(text)
        else:
            raise ConfigError(f"lake root {text!r}: use a local path, file:// or s3:// URL")

    def _local(self, path: str) -> None:
        self.fs = pafs.LocalFileSystem()
        self.base = os.path.abspath(path)
        self.local = True
        self.url = self.base

    def full(self, relative: str) -> str:
        return f"{self.base}/{relative}"

    def makedirs(self, relative: str) -> None:
        if self.local:
            os.makedirs(self.full(relative), exist_ok=True)

    def exists(self, relative: str) -> bool:
        info = self.fs.get_file_info(self.full(relative))
        return bool(info.type != pafs.FileType.NotFound)

    def list_names(self, relative_dir: str) -> list[str]:
        selector = pafs.FileSelector(self.full(relative_dir), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector) if info.is_file)

    def read(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.full(relative)) as f:
            return bytes(f.read())

    def delete(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_file(self.full(relative))

    def put_atomic(self, relative: str, data: bytes, *, exclusive: bool) -> None:
        """Write ``data`` so that readers see all of it or nothing (no partial file)."""
        if exclusive and self.exists(relative):
            raise SinkError(
                f"commit record file={self.url}/{relative} already exists: "
                "another writer is committing to this lake"
            )
        if self.local:
            final = self.full(relative)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = f"{os.path.dirname(final)}/.{os.path.basename(final)}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if exclusive:  # link: atomic and fails if the name is taken, even in a race
                try:
                    os.link(tmp, final)
                except FileExistsError as exc:
                    raise SinkError(
                        f"commit record file={final} already exists: "
                        "another writer is committing to this lake"
                    ) from exc
                finally:
                    os.unlink(tmp)
            else:
                os.replace(tmp, final)
            _fsync_dir(os.path.dirname(final))
        else:  # S3: an object appears whole when its (single) PUT completes
            with self.fs.open_output_stream(self.full(relative)) as f:
                f.write(data)

    def write_parquet(
        self,
        relative: str,
        table: pa.Table,
        bounds: Sequence[tuple[int, int]],
        *,
        compression: str,
        sorting_columns: Sequence[pq.SortingColumn] | None = None,
    ) -> None:
        """Write ``table`` with one row group per ``bounds`` range (fsynced locally)."""
        path = self.full(relative)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with pq.ParquetWriter(
            path,
            table.schema,
            filesystem=self.fs,
            compression=compression,
            sorting_columns=sorting_columns,
        ) as writer:
            if not bounds:
                writer.write_table(table)
            for start, stop in bounds:
                writer.write_table(table.slice(start, stop - start), row_group_size=stop - start)
        if self.local:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _io_error(exc: Exception, what: str) -> LambdaSourceError:
    if isinstance(exc, LambdaSourceError):
        return exc
    err = SinkError(f"{what}: {exc}")
    err.retriable = isinstance(exc, OSError)
    return err


class LakeWriter:
    """What the archiver needs from a lake writer (both writers implement it)."""

    time_column: str
    _after_files_written: Callable[[CommitRecord], None] | None

    def write(
        self,
        data: Commit,
        *,
        offsets: Mapping[int, int] | None = None,
        topic: str | None = None,
        high_watermark: int | None = None,
        event_times: Mapping[int, int] | None = None,
        dead_letters: pa.Table | None = None,
        properties: Mapping[str, str] | None = None,
        stream_kind: str = "kafka",
        shards: Mapping[int, ShardRecord] | None = None,
    ) -> CommitRecord:
        raise NotImplementedError

    def commits(self) -> list[CommitRecord]:
        raise NotImplementedError

    def latest_commit(self) -> CommitRecord | None:
        commits = self.commits()
        return commits[-1] if commits else None

    def offsets(self) -> dict[int, int]:
        """Per Kafka partition, the next offset to archive (partitions never archived: absent)."""
        return merge_offsets(self.commits())

    def read_dead_letters(self) -> pa.Table:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _check_dead_letters(table: pa.Table) -> pa.Table:
    if "sequence" not in table.column_names:  # Kafka's: no sequence numbers
        table = table.append_column("sequence", pa.nulls(table.num_rows, pa.string()))
    try:
        return table.select(DEAD_LETTER_SCHEMA.names).cast(DEAD_LETTER_SCHEMA)
    except (KeyError, pa.ArrowInvalid, ValueError) as exc:
        raise SchemaError(
            f"dead letters must have the columns {DEAD_LETTER_SCHEMA}: {exc}"
        ) from exc


def _write_dead_letters(root: _Root, sequence: int, dead_letters: pa.Table | None) -> None:
    """Dead letters of commit ``sequence`` (idempotent: a retried sequence replaces the file)."""
    relative = f"{DEAD_LETTERS_DIR}/{sequence:020d}.parquet"
    if dead_letters is None or dead_letters.num_rows == 0:
        root.delete(relative)  # a stale file a crashed attempt at this sequence left behind
        return
    table = _check_dead_letters(dead_letters)
    tmp = f"{DEAD_LETTERS_DIR}/.{sequence:020d}.{uuid.uuid4().hex}.tmp"
    if root.local:
        root.write_parquet(tmp, table, [(0, table.num_rows)], compression="zstd")
        os.replace(root.full(tmp), root.full(relative))
    else:
        root.write_parquet(relative, table, [(0, table.num_rows)], compression="zstd")


def _read_dead_letters(root: _Root, committed: set[int]) -> pa.Table:
    tables = []
    for name in root.list_names(DEAD_LETTERS_DIR):
        match = re.match(r"^(\d{20})\.parquet$", name)
        if match and int(match.group(1)) in committed:
            tables.append(
                pq.read_table(root.full(f"{DEAD_LETTERS_DIR}/{name}"), filesystem=root.fs)
            )
    if not tables:
        return DEAD_LETTER_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")  # older files: no sequence


class ParquetLakeWriter(LakeWriter):
    """Writes hour (or day) partitions of Parquet files under ``root``; one commit per ``write``.

    ``root``: local path, ``file://`` or ``s3://bucket/prefix`` (``s3`` says how to reach S3;
    default: the AWS environment). ``layout``: ``"hour"`` (``dt=YYYY-MM-DD/hour=HH``),
    ``"iso_hour"`` (``hour=YYYY-MM-DDTHH``), ``"ymdh"`` (``year=/month=/day=/hour=``) or ``"day"``
    (``dt=YYYY-MM-DD``). Each commit writes one file per partition it touches, named
    ``part-<sequence:020d>-<uuid>.parquet`` (per Kafka partition when the rows are given as
    ``{partition: rows}``: ``part-<sequence:020d>-p<partition>-<uuid>.parquet``); the commit
    record lists them (paths relative to root).
    Not safe for several concurrent writers on one root (a taken sequence raises SinkError).
    """

    def __init__(
        self,
        root: str | Path,
        time_column: str,
        *,
        s3: S3Config | None = None,
        layout: Layout = "hour",
        row_group_rows: int = 65_536,
        row_group_span: Duration | None = "10m",
        row_group_min_rows: int = 1_024,
        compression: str = "zstd",
        normalize_time: bool = True,
        max_concurrent_files: int = 8,
    ) -> None:
        if layout not in _LAYOUTS:
            raise ConfigError(f"unknown lake layout {layout!r}; use one of {sorted(_LAYOUTS)}")
        if row_group_rows < 1:
            raise ConfigError(f"row_group_rows must be >= 1, got {row_group_rows}")
        self.root = _Root(root, s3)
        self.time_column = time_column
        self.layout = _LAYOUTS[layout]
        self.partition_us = DAY if self.layout == "daily" else HOUR
        self.row_group_rows = row_group_rows
        self.row_group_span = (
            None
            if row_group_span is None
            else parse_duration(row_group_span, name="row_group_span")
        )
        self.row_group_min_rows = max(1, row_group_min_rows)
        self.compression = compression
        self.normalize_time = normalize_time
        self.max_concurrent_files = max(1, max_concurrent_files)
        self._after_files_written = None
        self._next_sequence: int | None = None

    def describe(self) -> str:
        return f"lake={self.root.url}"

    # -- reading commit records ---------------------------------------------------------------

    def _sequences(self) -> list[int]:
        return [
            int(m.group(1))
            for name in self.root.list_names(COMMITS_DIR)
            if (m := _COMMIT_NAME.match(name))
        ]

    def commits(self) -> list[CommitRecord]:
        """Every commit record of the lake, by sequence."""
        try:
            names = [f"{COMMITS_DIR}/{seq:020d}.json" for seq in self._sequences()]
            if self.root.local or len(names) < 4:
                blobs = [self.root.read(name) for name in names]
            else:
                with ThreadPoolExecutor(self.max_concurrent_files) as pool:
                    blobs = list(pool.map(self.root.read, names))
        except OSError as exc:
            raise _io_error(exc, f"reading commit records of lake={self.root.url}") from exc
        records = [
            CommitRecord.from_json(blob, where=f"{self.root.url}/{name}")
            for name, blob in zip(names, blobs, strict=True)
        ]
        return sorted(records, key=lambda r: r.sequence)

    def read_dead_letters(self) -> pa.Table:
        """Dead letters of committed commits (orphans of a crashed attempt are left out)."""
        committed = set(self._sequences())
        return _read_dead_letters(self.root, committed)

    # -- writing ------------------------------------------------------------------------------

    def _sequence(self) -> int:
        if self._next_sequence is None:
            self._next_sequence = max(self._sequences(), default=0) + 1
        return self._next_sequence

    def write(
        self,
        data: Commit,
        *,
        offsets: Mapping[int, int] | None = None,
        topic: str | None = None,
        high_watermark: int | None = None,
        event_times: Mapping[int, int] | None = None,
        dead_letters: pa.Table | None = None,
        properties: Mapping[str, str] | None = None,
        stream_kind: str = "kafka",
        shards: Mapping[int, ShardRecord] | None = None,
    ) -> CommitRecord:
        """Write ``data`` as one commit; return its record. Blocking (use ``asyncio.to_thread``).

        ``offsets``: per Kafka partition the next offset to read after this commit;
        ``high_watermark`` (µs): every record with time < it is complete; ``event_times``: per
        Kafka partition the newest event time archived so far (µs); ``dead_letters``
        (schema :data:`DEAD_LETTER_SCHEMA`) are stored beside the lake under this commit.
        ``properties`` are accepted for API symmetry with Iceberg and ignored by Parquet lakes.
        ``stream_kind``/``shards``: a Kinesis archiver's commit (offsets are sequence numbers per
        shard number, ``shards`` the lineage; :mod:`lambdasource.sources.lake.commits`).
        """
        where = f"lake={self.root.url}"
        parts = [
            (tag, _prepare(rows, self.time_column, normalize=self.normalize_time, where=where))
            for tag, rows in _split(data)
        ]
        try:
            sequence = self._sequence()
            files = self._write_files(parts, sequence)
            _write_dead_letters(self.root, sequence, dead_letters)
            record = CommitRecord(
                sequence=sequence,
                offsets=dict(offsets or {}),
                topic=topic,
                files=tuple(files),
                rows=sum(prepared.table.num_rows for _, prepared in parts),
                high_watermark=high_watermark,
                event_times=dict(event_times or {}),
                stream_kind=stream_kind,
                shards=dict(shards or {}),
            )
            if self._after_files_written is not None:
                self._after_files_written(record)
            self.root.put_atomic(record.file_name(), record.to_json(), exclusive=True)
        except (OSError, pa.ArrowException) as exc:
            self._next_sequence = None  # re-list: the failed attempt may have left anything
            raise _io_error(exc, f"writing {where}") from exc
        except BaseException:
            self._next_sequence = None
            raise
        self._next_sequence = sequence + 1
        return record

    def _write_files(self, parts: list[tuple[int | None, _Prepared]], sequence: int) -> list[str]:
        """One file per (time partition, Kafka partition) of ``parts``; a Kafka partition's
        files carry it in their name (:func:`split_file_name`)."""
        jobs: list[tuple[str, _Prepared, int, int]] = []
        for tag, prepared in parts:
            micros = prepared.micros
            if len(micros) == 0:
                continue
            keys = micros // self.partition_us
            cuts = [0, *(np.flatnonzero(np.diff(keys)) + 1).tolist(), len(micros)]
            for start, stop in itertools.pairwise(cuts):
                directory = partition_path(int(keys[start]) * self.partition_us, self.layout)
                unique = uuid.uuid4().hex
                name = (
                    f"part-{sequence:020d}-{unique}.parquet"
                    if tag is None
                    else split_file_name(sequence, tag, unique)
                )
                jobs.append((f"{directory}/{name}", prepared, start, stop))

        def one(job: tuple[str, _Prepared, int, int]) -> str:
            relative, prepared, start, stop = job
            sorting = [pq.SortingColumn(prepared.table.column_names.index(self.time_column))]
            bounds = row_group_bounds(
                prepared.micros[start:stop],
                self.row_group_rows,
                self.row_group_span,
                self.row_group_min_rows,
            )
            table = prepared.table.slice(start, stop - start)
            self.root.write_parquet(
                relative,
                table,
                bounds,
                compression=self.compression,
                sorting_columns=sorting,
            )
            return relative

        if not jobs:
            return []
        if len(jobs) == 1 or self.max_concurrent_files == 1:
            return [one(job) for job in jobs]
        with ThreadPoolExecutor(min(self.max_concurrent_files, len(jobs))) as pool:
            return list(pool.map(one, jobs))


class IcebergLakeWriter(LakeWriter):
    """Appends to an Iceberg table partitioned by ``hours(time_column)``; one snapshot per ``write``.

    ``catalog``: a pyiceberg ``Catalog`` or a dict of its properties (optional ``"name"``, default
    ``"default"``); ``s3`` adds its ``s3.*`` properties. A missing table (and namespace) is created
    from the first written schema: every column optional, the time column ``timestamptz``
    (microseconds, UTC), partition spec ``hours(time)`` (``days(time)`` with ``partition="day"``),
    sort order ``time ASC``, and ``write.parquet.row-group-limit = row_group_rows``; rows given per
    Kafka partition (``{partition: rows}``) also fill ``_kafka_partition``, an identity partition
    field (module docstring). Data is sorted
    by time before each append, so each data file is sorted. Every snapshot carries its
    :class:`CommitRecord` in the summary (``CommitRecord.snapshot_properties()``) plus any custom
    ``properties``.
    """

    def __init__(
        self,
        identifier: str,
        catalog: Mapping[str, str] | Any,
        time_column: str,
        *,
        s3: S3Config | None = None,
        partition: Literal["hour", "day"] = "hour",
        row_group_rows: int = 65_536,
        table_properties: Mapping[str, str] | None = None,
    ) -> None:
        if partition not in ("hour", "day"):
            raise ConfigError(
                f"IcebergLakeWriter: partition must be 'hour' or 'day', got {partition!r}"
            )
        self.identifier = identifier
        self.time_column = time_column
        self.partition = partition
        self.row_group_rows = row_group_rows
        self.table_properties = dict(table_properties or {})
        self.s3 = s3
        self._catalog_arg = catalog
        self._catalog: Any = None
        self._after_files_written = None

    def describe(self) -> str:
        return f"iceberg={self.identifier}"

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            if isinstance(self._catalog_arg, Mapping):
                from pyiceberg.catalog import load_catalog

                props = dict(self._catalog_arg)
                name = props.pop("name", "default")
                if self.s3 is not None:
                    props = {**self.s3.pyiceberg_properties(), **props}
                try:
                    self._catalog = load_catalog(name, **props)
                except Exception as exc:
                    raise ConfigError(f"cannot load Iceberg catalog {name!r}: {exc}") from exc
            else:
                self._catalog = self._catalog_arg
        return self._catalog

    def _load(self) -> Any | None:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            return None

    def table(self) -> Any:
        """The Iceberg table (raises SinkError when it does not exist yet)."""
        table = self._load()
        if table is None:
            raise SinkError(f"Iceberg table={self.identifier} does not exist (nothing written)")
        return table

    def _create(self, schema: pa.Schema) -> Any:
        from pyiceberg.exceptions import TableAlreadyExistsError
        from pyiceberg.table import TableProperties
        from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform

        fields = [
            pa.field(f.name, TIME_TYPE if f.name == self.time_column else f.type, nullable=True)
            for f in schema
        ]
        namespace = self.identifier.rsplit(".", 1)[0] if "." in self.identifier else None
        if namespace:
            self.catalog.create_namespace_if_not_exists(namespace)
        props = {TableProperties.PARQUET_ROW_GROUP_LIMIT: str(self.row_group_rows)}
        props.update(self.table_properties)
        transform: Any = HourTransform() if self.partition == "hour" else DayTransform()
        try:
            with self.catalog.create_table_transaction(
                self.identifier, schema=pa.schema(fields), properties=props
            ) as tx:
                with tx.update_spec() as spec:
                    spec.add_field(
                        self.time_column, transform, f"{self.time_column}_{self.partition}"
                    )
                    if KAFKA_PARTITION_COLUMN in schema.names:
                        spec.add_identity(KAFKA_PARTITION_COLUMN)
                with tx.update_sort_order() as order:
                    order.asc(self.time_column, IdentityTransform())
        except TableAlreadyExistsError:
            pass  # created concurrently: use it
        return self.catalog.load_table(self.identifier)

    def _ensure_partition_column(self, table: Any) -> Any:
        """A table written per Kafka partition has the ``_kafka_partition`` column and an
        identity partition field on it: added to a table created before (schema and spec
        evolution; its older files have no value there and are read as unsplit)."""
        from pyiceberg.transforms import IdentityTransform
        from pyiceberg.types import IntegerType

        schema = table.schema()
        column = next((f for f in schema.fields if f.name == KAFKA_PARTITION_COLUMN), None)
        spec = table.spec()
        if column is not None and any(
            f.source_id == column.field_id and isinstance(f.transform, IdentityTransform)
            for f in spec.fields
        ):
            return table
        with table.transaction() as tx:
            if column is None:
                with tx.update_schema() as update:
                    update.add_column(KAFKA_PARTITION_COLUMN, IntegerType())
            with tx.update_spec() as update_spec:
                update_spec.add_identity(KAFKA_PARTITION_COLUMN)
        return self.catalog.load_table(self.identifier)

    def commits(self) -> list[CommitRecord]:
        """Commits carried by the current snapshot's lineage, by sequence (none when no table).

        Only the current snapshot and its ancestors count: after a rollback, the commits of the
        snapshots it removed are not in the table, so the archiver resumes at the offsets the
        remaining lineage recorded (and archives the rolled-back range again) and their dead
        letters are not reported.
        """
        table = self._load()
        return [] if table is None else self._commits(table)

    def _commits(self, table: Any) -> list[CommitRecord]:
        from pyiceberg.table.snapshots import ancestors_of

        records = []
        for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
            summary = snapshot.summary
            props = dict(summary.additional_properties) if summary is not None else {}
            record = CommitRecord.from_snapshot_properties(
                props,
                where=f"table={self.identifier} snapshot={snapshot.snapshot_id}",
                rows=int(props.get("added-records", 0)),
            )
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.sequence)

    def _next_sequence(self, table: Any) -> int:
        """One more than any commit the table ever carried, rolled-back snapshots included: a
        sequence (and the dead-letter file stored under it) is never reused, so a job pinned
        to a snapshot a rollback removed still reads its own dead letters on restore."""
        highest = 0
        for snapshot in table.snapshots():
            summary = snapshot.summary
            props = dict(summary.additional_properties) if summary is not None else {}
            record = CommitRecord.from_snapshot_properties(
                props, where=f"table={self.identifier} snapshot={snapshot.snapshot_id}"
            )
            if record is not None:
                highest = max(highest, record.sequence)
        return highest + 1

    def _dead_letter_root(self, table: Any) -> _Root:
        location: str = table.location()
        if urlparse(location).scheme in ("s3", "s3a") and self.s3 is None:
            io_props = table.io.properties
            s3 = S3Config(
                endpoint_url=io_props.get("s3.endpoint"),
                region=io_props.get("s3.region"),
                access_key_id=io_props.get("s3.access-key-id"),
                secret_access_key=io_props.get("s3.secret-access-key"),
                session_token=io_props.get("s3.session-token"),
            )
            return _Root(location, s3)
        return _Root(location, self.s3)

    def read_dead_letters(self) -> pa.Table:
        table = self._load()
        if table is None:
            return DEAD_LETTER_SCHEMA.empty_table()
        committed = {r.sequence for r in self._commits(table)}
        return _read_dead_letters(self._dead_letter_root(table), committed)

    def write(
        self,
        data: Commit,
        *,
        offsets: Mapping[int, int] | None = None,
        topic: str | None = None,
        high_watermark: int | None = None,
        event_times: Mapping[int, int] | None = None,
        dead_letters: pa.Table | None = None,
        properties: Mapping[str, str] | None = None,
        stream_kind: str = "kafka",
        shards: Mapping[int, ShardRecord] | None = None,
    ) -> CommitRecord:
        """Append ``data`` as one snapshot carrying the commit record (and ``properties``).

        Blocking (use ``asyncio.to_thread``). See :meth:`ParquetLakeWriter.write` for the arguments.
        """
        from pyiceberg.exceptions import CommitFailedException

        where = f"table={self.identifier}"
        rows, tagged = _tagged_table(data)
        prepared = _prepare(rows, self.time_column, normalize=True, where=where)
        try:
            table = self._load() or self._create(prepared.table.schema)
            if tagged:
                table = self._ensure_partition_column(table)
            target = table.schema().as_arrow()
            missing = [n for n in target.names if n not in prepared.table.column_names]
            extra = [n for n in prepared.table.column_names if n not in target.names]
            if extra:
                raise SchemaError(f"{where}: columns {extra} are not in the table schema")
            arrays = [
                prepared.table.column(f.name)
                if f.name not in missing
                else pa.nulls(prepared.table.num_rows, f.type)
                for f in target
            ]
            aligned = pa.Table.from_arrays(arrays, names=target.names)
            try:
                aligned = aligned.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"{where}: data does not fit the table schema: {exc}") from exc
            sequence = self._next_sequence(table)
            record = CommitRecord(
                sequence=sequence,
                offsets=dict(offsets or {}),
                topic=topic,
                rows=aligned.num_rows,
                high_watermark=high_watermark,
                event_times=dict(event_times or {}),
                stream_kind=stream_kind,
                shards=dict(shards or {}),
            )
            _write_dead_letters(self._dead_letter_root(table), sequence, dead_letters)
            if self._after_files_written is not None:
                self._after_files_written(record)
            snapshot_properties = {**dict(properties or {}), **record.snapshot_properties()}
            table.append(aligned, snapshot_properties=snapshot_properties)
        except CommitFailedException as exc:
            err = SinkError(f"{where}: commit conflict (concurrent writer?): {exc}")
            err.retriable = True
            raise err from exc
        except LambdaSourceError:
            raise
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise _io_error(exc, f"writing {where}") from exc
        return record
