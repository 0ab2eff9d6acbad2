"""What every archiver shares, whatever stream it reads: decode into a per-partition buffer, commit
it to the lake with the positions it covers, one commit in flight at a time.

An input (:class:`lake.archiver.Archiver` for Kafka, :class:`lake.kinesis_archiver.
KinesisArchiver` for Kinesis) subclasses :class:`ArchiverCore` and provides :meth:`_fetch_once`
(read what is there within a timeout, decode it with :meth:`_decode` and advance ``_next``, the
next position per partition), :meth:`_done` and :meth:`_dead_letter_row`. Partitions are the
integer model of both streams (Kafka partition, Kinesis shard number); positions are the next
offset / sequence number to read (arbitrary-size ints).

Invariants: a commit holds exactly the records decoded since the previous commit and records
``_next`` as of its hand-off, so the lake is exactly once across crashes (the commit record is
written last, atomically); a failed commit surfaces before the next one is handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lambdasource.errors import ConfigError
from lambdasource.sources.kafka.decode import (
    RECORD_TIMESTAMP,
    Decoder,
    decode_records,
    output_schema,
)
from lambdasource.sources.lake.commits import CommitRecord, archived_high_watermark
from lambdasource.sources.lake.partitioned import KAFKA_PARTITION_COLUMN
from lambdasource.timeutil import Duration, parse_duration

from .writer import DEAD_LETTER_SCHEMA, Commit, IcebergLakeWriter, LakeWriter, ParquetLakeWriter

__all__ = ["ArchiveSummary", "ArchiverCore"]

log = logging.getLogger("lake.archiver")

T = TypeVar("T")


@dataclass(frozen=True)
class ArchiveSummary:
    """What one archiver ``run`` did."""

    records: int  # messages consumed
    rows: int  # rows written to the lake
    dead_letters: int
    commits: int
    offsets: dict[int, int]  # next offset (Kinesis: sequence number) per partition (shard)
    elapsed_s: float


@dataclass
class _Buffer:
    """Decoded rows (per partition) and dead letters consumed since the last commit."""

    batches: dict[int, list[pa.RecordBatch]] = field(default_factory=dict)
    rows: int = 0
    dead: list[dict[str, Any]] = field(default_factory=list)


async def to_thread_uncancellable(func: Callable[[], T]) -> T:
    """Run blocking ``func`` in a thread; if cancelled meanwhile, wait for it, then re-raise.

    A lake commit must not keep running unsupervised after its task was cancelled (a restarted
    archiver could otherwise race it for the same commit sequence).
    """
    future = asyncio.ensure_future(asyncio.to_thread(func))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


class ArchiverCore:
    """The stream-independent part of an archiver (module docstring); ``name`` is the topic or
    stream, ``label`` how messages call it ("topic" / "stream")."""

    stream_kind = "kafka"
    label = "topic"

    def __init__(
        self,
        name: str,
        lake: ParquetLakeWriter | IcebergLakeWriter | LakeWriter,
        time_column: str | None,
        *,
        format: Literal["json", "raw"] | Decoder,
        schema: pa.Schema | None,
        commit_interval: Duration,
        commit_rows: int,
        stop_at: Literal["latest"] | None,
        progress_interval: Duration,
        max_records: int,
        out_of_orderness: Duration,
        max_ahead: Duration | None,
    ) -> None:
        if stop_at not in (None, "latest"):
            raise ConfigError(f"archive: stop_at must be None or 'latest', got {stop_at!r}")
        if commit_rows < 1:
            raise ConfigError(f"archive: commit_rows must be >= 1, got {commit_rows}")
        expected_time = time_column if time_column is not None else RECORD_TIMESTAMP
        if expected_time != lake.time_column:
            raise ConfigError(
                f"archive: time column {expected_time!r} differs from the lake writer's "
                f"{lake.time_column!r}"
                + (
                    " (time_column=None archives the record timestamp)"
                    if time_column is None
                    else ""
                )
            )
        self.output_schema = output_schema(schema, format=format, time_column=time_column)
        if self.output_schema is not None and KAFKA_PARTITION_COLUMN in self.output_schema.names:
            raise ConfigError(
                f"archive: column {KAFKA_PARTITION_COLUMN!r} is reserved: the archiver writes "
                "each record's partition (Kinesis: shard number) there (Iceberg)"
            )
        self.topic = name
        self.lake = lake
        self.time_column = time_column
        self.format = format
        self.schema = schema
        self.commit_interval_s = parse_duration(commit_interval, name="commit_interval") / 1e6
        self.commit_rows = commit_rows
        self.stop_at = stop_at
        self.progress_interval_s = parse_duration(progress_interval, name="progress_interval") / 1e6
        self.max_records = max_records
        self.out_of_orderness = parse_duration(out_of_orderness, name="out_of_orderness")
        # a record whose event time is beyond the wall clock + max_ahead is a dead letter
        self.max_ahead = None if max_ahead is None else parse_duration(max_ahead, name="max_ahead")
        self._event_times: dict[int, int] = {}  # newest event time consumed, per partition
        self._after_files_written: Callable[[CommitRecord], None] | None = None
        self._stopping = asyncio.Event()
        self._buffer = _Buffer()
        self._next: dict[int, int] = {}  # next position per partition, as consumed
        self._committed: dict[int, int] = {}  # positions of the last durable commit
        self._submitted: dict[int, int] = {}  # positions of the last commit handed to the writer
        self._inflight: asyncio.Future[None] | None = None
        self._metrics: dict[str, Any] = {
            "records": 0,
            "rows": 0,
            "dead_letters": 0,
            "commits": 0,
            "offset_gaps": 0,
            "missing_offsets": 0,
            "last_sequence": None,
        }
        self._started = 0.0

    # -- what an input provides ---------------------------------------------------------------

    async def run(self) -> ArchiveSummary:
        """Archive until cancelled, :meth:`stop` is called, or (``stop_at="latest"``) caught up."""
        raise NotImplementedError

    async def _fetch_once(self, timeout_s: float) -> None:
        """Read what arrives within ``timeout_s``, decode it, advance ``_next``."""
        raise NotImplementedError

    def _done(self) -> bool:
        """``stop_at="latest"``: every partition reached its target."""
        raise NotImplementedError

    def _dead_letter_row(self, partition: int, message: Any, reason: str) -> dict[str, Any]:
        raise NotImplementedError

    def _commit_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the lake writer's ``write`` (Kinesis: kind and shard lineage)."""
        return {}

    async def _after_commit(self, positions: dict[int, int]) -> None:
        """Called after each durable commit (Kafka: mirror offsets into a consumer group)."""

    def _lag(self) -> dict[int, int]:
        return {}

    def _high_watermark(self, event_times: dict[int, int]) -> int | None:
        """The commit's high-water mark from the newest event time per partition (Kinesis
        leaves out shards archived to their end: they hold nothing back)."""
        return archived_high_watermark(event_times, self.out_of_orderness)

    # -- shared ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to commit what it has and return (safe from signal handlers)."""
        self._stopping.set()

    def metrics(self) -> dict[str, Any]:
        """Plain-data progress: counts, committed positions and lag per partition."""
        elapsed = max(time.monotonic() - self._started, 1e-9) if self._started else 0.0
        lag = self._lag()
        return {
            **self._metrics,
            self.label: self.topic,
            "lake": self.lake.describe(),
            "offsets": dict(sorted(self._committed.items())),
            "lag": lag,
            "total_lag": sum(lag.values()),
            "buffered_rows": self._buffer.rows,
            "records_per_s": self._metrics["records"] / elapsed if elapsed else 0.0,
        }

    def _reset(self) -> None:
        """Fresh per-run state (an archiver may be run again, e.g. under another event loop)."""
        self._started = time.monotonic()
        if not self._stopping.is_set():
            self._stopping = asyncio.Event()
        self._buffer = _Buffer()
        self._next, self._committed, self._submitted = {}, {}, {}
        self._event_times = {}
        self._inflight = None
        for key in ("records", "rows", "dead_letters", "commits", "offset_gaps", "missing_offsets"):
            self._metrics[key] = 0

    def _summary(self) -> ArchiveSummary:
        summary = ArchiveSummary(
            records=self._metrics["records"],
            rows=self._metrics["rows"],
            dead_letters=self._metrics["dead_letters"],
            commits=self._metrics["commits"],
            offsets=dict(sorted(self._committed.items())),
            elapsed_s=time.monotonic() - self._started,
        )
        log.info(
            "archive %s=%s done: %d records, %d rows, %d dead letters, %d commits in %.1fs",
            self.label,
            self.topic,
            summary.records,
            summary.rows,
            summary.dead_letters,
            summary.commits,
            summary.elapsed_s,
        )
        return summary

    def _check_lake_stream(self, commits: list[CommitRecord]) -> None:
        """A lake archives one stream: the same kind and name as this archiver's."""
        recorded = {(c.stream_kind, c.topic) for c in commits if c.offsets and c.topic is not None}
        if recorded - {(self.stream_kind, self.topic)}:
            shown = sorted(f"{kind} {name}" for kind, name in recorded)
            raise ConfigError(
                f"archive: {self.lake.describe()} already archives {shown}, not "
                f"{self.stream_kind} {self.label}={self.topic}"
            )

    def _has_new(self) -> bool:
        return bool(self._buffer.rows or self._buffer.dead or self._next != self._submitted)

    async def _loop(self) -> None:
        """Fetch, commit every ``commit_rows`` rows or ``commit_interval``, log progress; on
        :meth:`stop` or ``stop_at`` reached, commit what is left."""
        last_commit = time.monotonic()
        last_progress = time.monotonic()
        last_records = 0
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                if self._stopping.is_set() or self._done():
                    break
                remaining = self.commit_interval_s - (time.monotonic() - last_commit)
                fetch = asyncio.ensure_future(self._fetch_once(max(0.01, min(remaining, 1.0))))
                done, _ = await asyncio.wait(
                    {fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                if fetch not in done:
                    fetch.cancel()
                    try:
                        await fetch
                    except asyncio.CancelledError:
                        if not self._stopping.is_set():  # we were cancelled, not stopped
                            raise
                    break
                fetch.result()
                if self._inflight is not None and self._inflight.done():
                    await self._wait_inflight()  # surfaces a failed commit promptly
                now = time.monotonic()
                if self._buffer.rows >= self.commit_rows or (
                    self._has_new() and now - last_commit >= self.commit_interval_s
                ):
                    await self._commit()
                    last_commit = time.monotonic()
                if now - last_progress >= self.progress_interval_s:
                    rate = (self._metrics["records"] - last_records) / (now - last_progress)
                    m = self.metrics()
                    log.info(
                        "archive %s=%s records=%d (%.0f/s) rows=%d dead_letters=%d "
                        "commits=%d lag=%d",
                        self.label,
                        self.topic,
                        m["records"],
                        rate,
                        m["rows"],
                        m["dead_letters"],
                        m["commits"],
                        m["total_lag"],
                    )
                    last_progress, last_records = now, self._metrics["records"]
        except BaseException:
            stop_wait.cancel()
            if self._inflight is not None:  # let a commit in flight finish (all or nothing)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._inflight)
            raise
        stop_wait.cancel()
        if self._has_new():
            await self._commit()
        await self._wait_inflight()

    def _decode(self, partition: int, messages: list[Any]) -> None:
        """Decode ``messages`` of one partition into the buffer (bad ones: dead letters)."""
        values = [m.value for m in messages]
        timestamps = np.fromiter(
            (m.timestamp for m in messages), dtype=np.int64, count=len(messages)
        )
        decoded = decode_records(
            values,
            self.schema,
            format=self.format,
            time_column=self.time_column,
            timestamps_ms=timestamps,
            max_ahead=self.max_ahead,
        )
        for index, reason in decoded.errors:
            self._dead_letter(partition, messages[index], reason)
        batch = decoded.batch
        time_name = self.time_column or RECORD_TIMESTAMP
        times = batch.column(time_name)
        if times.null_count:
            rows = decoded.row_indices(len(messages))
            nulls = np.flatnonzero(np.asarray(times.is_null()))
            for i in nulls.tolist():
                self._dead_letter(
                    partition, messages[int(rows[i])], f"null event time in column {time_name!r}"
                )
            batch = batch.filter(pc.is_valid(times))
        if batch.num_rows:
            self._buffer.batches.setdefault(partition, []).append(batch)
            self._buffer.rows += batch.num_rows
            newest = pc.max(batch.column(time_name))
            if newest.is_valid:
                micros = int(newest.cast(pa.int64()).as_py())
                self._event_times[partition] = max(micros, self._event_times.get(partition, micros))

    def _dead_letter(self, partition: int, message: Any, reason: str) -> None:
        self._buffer.dead.append(self._dead_letter_row(partition, message, reason))

    async def _wait_inflight(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    async def _commit(self) -> None:
        """Hand the buffer to a background write (one commit in flight at most, in order) and
        keep consuming meanwhile; the previous commit must have succeeded first."""
        await self._wait_inflight()
        buffer, self._buffer = self._buffer, _Buffer()
        offsets = dict(self._next)
        table: Commit
        if buffer.batches:  # written split by partition (the partition in the file)
            table = {
                p: pa.Table.from_batches(batches, schema=self.output_schema)
                for p, batches in sorted(buffer.batches.items())
            }
        elif self.output_schema is not None:
            table = self.output_schema.empty_table()
        else:  # a callable decoder with unknown schema and nothing decoded: offsets only
            table = pa.table({self.lake.time_column: pa.array([], pa.timestamp("us", tz="UTC"))})
        dead = pa.Table.from_pylist(buffer.dead, schema=DEAD_LETTER_SCHEMA) if buffer.dead else None
        self._submitted = offsets
        times = dict(self._event_times)
        extra = self._commit_kwargs()  # taken with the offsets: one consistent state
        extra["high_watermark"] = self._high_watermark(times)
        self._inflight = asyncio.ensure_future(
            self._write(table, buffer.rows, dead, offsets, times, extra)
        )

    async def _write(
        self,
        table: Commit,
        rows: int,
        dead: pa.Table | None,
        offsets: dict[int, int],
        event_times: dict[int, int],
        extra: dict[str, Any],
    ) -> None:
        lake = self.lake

        def write() -> CommitRecord:
            if self._after_files_written is not None:
                lake._after_files_written = self._after_files_written
            return lake.write(
                table,
                offsets=offsets,
                topic=self.topic,
                event_times=event_times,
                dead_letters=dead,
                **extra,
            )

        record = await to_thread_uncancellable(write)
        self._metrics["rows"] += rows
        self._metrics["dead_letters"] += 0 if dead is None else dead.num_rows
        self._metrics["commits"] += 1
        self._metrics["last_sequence"] = record.sequence
        self._committed = offsets
        await self._after_commit(offsets)
        log.debug(
            "archive %s=%s commit sequence=%d rows=%d files=%d positions=%s",
            self.label,
            self.topic,
            record.sequence,
            record.rows,
            len(record.files),
            offsets,
        )
