"""Lake maintenance: compaction of the small files frequent commits leave in an hour partition.

:func:`compact` rewrites every partition holding at least ``min_files`` live files into one file
per ``target_rows`` rows, sorted by event time (row groups as the writer makes them) — per Kafka
partition: the archiver's split files (``part-…-p<partition>-….parquet``) of one partition are
merged only with each other and keep the partition in their new names, unsplit files only with
unsplit ones, so a scale-out task still reads only its partition's files — then:

1. writes the new files;
2. writes a commit record (next sequence, atomically, exactly like a writer) listing the new files
   with ``rows = 0`` (compaction adds no rows) and the lake's merged offsets, newest topic and
   high-water mark (unchanged, so readers of only the newest commit see the same state),
   ``operation="compact"`` and ``removed`` = the replaced files — from this moment readers see
   only the new files (atomic for readers);
3. keeps the replaced files: jobs that pinned an earlier state of the lake (DESIGN §3: a job
   reads one state, also after a restart) still read them. Deleting them takes an explicit word:
   ``compact(..., delete_replaced=True)``, or :func:`expire_replaced` later, once jobs restarted.

Invariants: every commit record stays valid (:meth:`CommitRecord.from_json` reads it), the merged
offsets are unchanged, and the lake's rows are unchanged as a multiset. A crash before step 2
leaves orphans (ignored). A job restored into a state whose replaced files were deleted reads the
compaction's new files instead where that is exact (the compaction rewrote only files of that
state, in partitions the job has not begun), and fails naming the file otherwise.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from lambdasource.errors import LakeReadError, SinkError
from lambdasource.sources.lake.commits import (
    CommitRecord,
    merge_event_times,
    merge_offsets,
    merge_shards,
    stream_kind_of,
)
from lambdasource.sources.lake.commits import live_files as committed_files
from lambdasource.sources.lake.partitioned import file_kafka_partition, split_file_name

from .writer import ParquetLakeWriter, _prepare, row_group_bounds

__all__ = ["CompactionResult", "compact", "expire_replaced", "live_files"]


@dataclass(frozen=True)
class CompactionResult:
    """What :func:`compact` did (``sequence`` is None when nothing needed compacting)."""

    partitions: int
    files_before: int
    files_after: int
    rows: int
    sequence: int | None
    removed: tuple[str, ...]


def live_files(writer: ParquetLakeWriter) -> list[str]:
    """Committed, not retired, present data files (relative paths), in commit order."""
    commits = writer.commits()
    live = committed_files(commits)
    seen: set[str] = set()
    files = []
    for record in commits:
        for f in record.files:
            if f in live and f not in seen and writer.root.exists(f):
                seen.add(f)
                files.append(f)
    return files


def compact(
    writer: ParquetLakeWriter,
    *,
    min_files: int = 2,
    target_rows: int = 1_000_000,
    partitions: Iterable[str] | None = None,
    delete_replaced: bool = False,
) -> CompactionResult:
    """Compact the partitions of ``writer``'s lake that hold ``>= min_files`` live files.

    ``partitions`` restricts it to those partition directories (e.g. ``"dt=2026-01-01/hour=05"``).
    Blocking; not to be run concurrently with a writer committing to the same lake (a taken
    sequence raises :class:`SinkError`, leaving the lake valid). ``delete_replaced=True`` deletes
    the replaced files at once (jobs that pinned an older state may then fail on restart).
    """
    commits = writer.commits()
    # a group: one time partition's files of one Kafka partition (None: unsplit files); files
    # of different Kafka partitions are never merged, so tasks still read only their own
    by_partition: dict[tuple[str, int | None], list[str]] = {}
    for f in live_files(writer):
        group = (f.rsplit("/", 1)[0], file_kafka_partition(f))
        by_partition.setdefault(group, []).append(f)
    wanted = None if partitions is None else {p.strip("/") for p in partitions}
    chosen = {
        group: files
        for group, files in sorted(by_partition.items(), key=lambda item: _group_order(item[0]))
        if len(files) >= min_files and (wanted is None or group[0] in wanted)
    }
    if not chosen:
        return CompactionResult(0, 0, 0, 0, None, ())
    sequence = writer._sequence()
    new_files: list[str] = []
    replaced: list[str] = []
    rows = 0
    for (directory, tag), files in chosen.items():
        tables = []
        for f in files:
            try:
                tables.append(pq.read_table(writer.root.full(f), filesystem=writer.root.fs))
            except (OSError, pa.ArrowException) as exc:
                raise LakeReadError(f"compaction: cannot read file={f}: {exc}") from exc
        merged = pa.concat_tables(tables, promote_options="permissive")
        prepared = _prepare(
            merged, writer.time_column, normalize=writer.normalize_time, where=f"file={directory}"
        )
        sorting = [pq.SortingColumn(prepared.table.column_names.index(writer.time_column))]
        n = prepared.table.num_rows
        parts = max(1, -(-n // target_rows))
        for i in range(parts):
            start, stop = i * n // parts, (i + 1) * n // parts
            unique = uuid.uuid4().hex
            name = (
                f"part-{sequence:020d}-{unique}.parquet"
                if tag is None
                else split_file_name(sequence, tag, unique)
            )
            relative = f"{directory}/{name}"
            bounds = row_group_bounds(
                prepared.micros[start:stop],
                writer.row_group_rows,
                writer.row_group_span,
                writer.row_group_min_rows,
            )
            table = prepared.table.slice(start, stop - start)
            writer.root.write_parquet(
                relative,
                table,
                bounds,
                compression=writer.compression,
                sorting_columns=sorting,
            )
            new_files.append(relative)
        replaced.extend(files)
        rows += n
    records = commits
    record = CommitRecord(  # carries the lake's state so "newest commit" readers see no change
        sequence=sequence,
        offsets=merge_offsets(records),
        topic=next((r.topic for r in reversed(records) if r.topic is not None), None),
        files=tuple(new_files),
        rows=0,
        high_watermark=next(
            (r.high_watermark for r in reversed(records) if r.high_watermark is not None), None
        ),
        removed=tuple(replaced),
        operation="compact",
        event_times=merge_event_times(records),
        stream_kind=stream_kind_of(records),
        shards=merge_shards(records),
    )
    try:
        writer.root.put_atomic(record.file_name(), record.to_json(), exclusive=True)
    except BaseException:
        writer._next_sequence = None
        raise
    writer._next_sequence = sequence + 1
    if delete_replaced:
        _delete(writer, replaced)
    return CompactionResult(
        partitions=len({directory for directory, _ in chosen}),
        files_before=len(replaced),
        files_after=len(new_files),
        rows=rows,
        sequence=sequence,
        removed=tuple(replaced),
    )


def _group_order(group: tuple[str, int | None]) -> tuple[str, int]:
    directory, tag = group
    return directory, -1 if tag is None else tag


def expire_replaced(writer: ParquetLakeWriter, *, keep_last: int = 0) -> list[str]:
    """Delete the files compactions replaced — except those of the ``keep_last`` newest
    compactions — and return them. Jobs whose pinned state still needs a deleted file read the
    compaction's output where that is exact, else fail naming the file: run this once jobs have
    restarted past the compactions."""
    compactions = [c for c in writer.commits() if c.removed]
    expired = compactions[: max(0, len(compactions) - keep_last)]
    files = sorted({f for c in expired for f in c.removed if writer.root.exists(f)})
    _delete(writer, files)
    return files


def _delete(writer: ParquetLakeWriter, files: Iterable[str]) -> None:
    for f in files:
        try:
            writer.root.delete(f)
        except OSError as exc:
            raise SinkError(f"compaction committed but cannot delete file={f}: {exc}") from exc
