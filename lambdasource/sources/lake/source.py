"""What every lake source shares: reading options, the decoder, the ordered reader, positions,
and the pinned lake state (:mod:`.pinned`) a run reads.

Pinning lifecycle: :meth:`LakeSource.pin` chooses the state once per run (or takes the one a
checkpoint restored) and every later call in that run — planning, ``recorded_offsets()``,
``high_water_mark()`` — returns the same; a new ``run()`` without a restore pins afresh.
``snapshot()`` is ``{"state": pinned state, "position": reader position,
"archived_dead_letters": {"emitted": n, "below": {partition: offset} | None}}`` (older checkpoints
without the last key read as nothing emitted yet).

Archived dead letters: messages the ``lake`` archiver could not decode are stored per commit
(:func:`~.commits.dead_letters_path`). A run emits those of its pinned commits to the job's
dead-letter output before the first row — the Kafka stream's dead-letter columns, the original
reason, and the position ``topic=… partition=… offset=… (archived: lake=… commit=…)`` — in a fixed
order (commit, partition, offset), so the count emitted (in the snapshot) is exactly what a
restore skips. ``dead_letters_below`` (set by a lambda source whose stream re-reads part of the
archived range, the timestamp handoff) leaves a partition's dead letters at or beyond that offset
to the stream, which dead-letters them itself.

``ParquetLake`` and ``IcebergLake`` differ only in how they *plan* (list a directory vs scan an
Iceberg table) and where files live; once partitions are planned, both hand them to one
:class:`~.reader.LakeReader` through :meth:`LakeSource._load_files` and :meth:`_new_reader`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable
from typing import Any, Literal, Self

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...errors import ConfigError, LakeReadError, LakeStateError
from ...partitioning import KeyPartitioner
from ...s3 import S3Config
from ...timeutil import TIME_TYPE, Duration, parse_duration
from ..base import Source, SourceOutput
from ..kafka.emit import DEAD_LETTER_SCHEMA
from .commits import CommitRecord
from .partitioned import PartitionFilter, make_partitioner
from .pinned import LakeState
from .reader import (
    BATCH_ROWS,
    Chunk,
    Decoder,
    LakeFile,
    LakeMetrics,
    LakePartition,
    LakeReader,
    Position,
    load_file,
    quarantine_or_raise,
    time_bound,
)
from .storage import Storage

ARCHIVED_DEAD_LETTER_SCHEMA = DEAD_LETTER_SCHEMA
"""An archived dead letter's columns: those of the stream's own dead letters (the runtime appends
``_error`` and ``_position``), so one dead-letter sink takes both — Kafka's, or for a lake
archived from Kinesis :data:`~lambdasource.sources.kinesis.emit.DEAD_LETTER_SCHEMA` (stream,
shard id, sequence number)."""


def archived_dead_letter_rows(table: pa.Table, where: str) -> pa.Table:
    """A stored dead-letter file as Kafka's dead-letter columns plus ``reason`` and ``sequence``
    (Kinesis; null in Kafka's and older files), sorted by (partition, sequence number)."""
    try:
        rows = pa.table(
            {
                "value": table.column("value").cast(pa.binary()),
                "key": table.column("key").cast(pa.binary()),
                "topic": table.column("topic").cast(pa.string()),
                "partition": table.column("partition").cast(pa.int32()),
                "offset": table.column("offset").cast(pa.int64()),
                "timestamp": table.column("timestamp").cast(TIME_TYPE),
                "reason": table.column("reason").cast(pa.string()),
                "sequence": (
                    table.column("sequence").cast(pa.string())
                    if "sequence" in table.column_names
                    else pa.nulls(table.num_rows, pa.string())
                ),
            }
        )
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise LakeReadError(f"unreadable archived dead letters file={where}: {exc}") from exc
    order = sorted(range(rows.num_rows), key=lambda row: _archived_position(rows, row))
    return rows.take(pa.array(order, pa.int64()))


def _archived_position(rows: pa.Table, row: int) -> tuple[int, int]:
    """(partition, offset or sequence number as an int of any size; -1 when unknown)."""
    sequence = rows.column("sequence")[row].as_py()
    offset = rows.column("offset")[row].as_py()
    number = int(sequence) if sequence is not None else offset
    return rows.column("partition")[row].as_py(), -1 if number is None else number


def kinesis_dead_letter(row: pa.Table) -> tuple[pa.RecordBatch, int | None]:
    """One archived dead letter of a Kinesis lake in the Kinesis stream's dead-letter columns,
    and its sequence number."""
    from ..kinesis.emit import DEAD_LETTER_SCHEMA as KINESIS_DEAD_LETTERS
    from ..kinesis.shards import shard_id

    partition, number = _archived_position(row, 0)
    sequence = None if number < 0 else number
    batch = pa.RecordBatch.from_arrays(
        [
            row.column("value").combine_chunks(),
            row.column("key").combine_chunks(),
            row.column("topic").combine_chunks(),
            pa.array([shard_id(partition)], pa.string()),
            pa.array([None if sequence is None else str(sequence)], pa.string()),
            row.column("timestamp").combine_chunks(),
        ],
        schema=KINESIS_DEAD_LETTERS,
    )
    return batch, sequence


def declared_schema(
    schema: pa.Schema | None, columns: list[str] | None, time_column: str
) -> pa.Schema | None:
    """The declared schema restricted to ``columns`` with the time column as ``TIME_TYPE``."""
    if schema is None:
        return None
    if time_column not in schema.names:
        raise ConfigError(f"declared schema has no time column {time_column!r}")
    if columns is not None:
        keep = set(columns) | {time_column}
        schema = pa.schema([f for f in schema if f.name in keep], metadata=schema.metadata)
    index = schema.get_field_index(time_column)
    return schema.set(index, pa.field(time_column, TIME_TYPE, schema.field(index).nullable))


class LakeSource(Source):
    """Base of the lake sources: bounded, read in partition order with the watermark rules of
    :mod:`.reader`; ``snapshot()`` is the reader's :class:`~.reader.Position`."""

    bounded = True

    def __init__(
        self,
        *,
        name: str,
        time_column: str,
        start: Any,
        until: Any,
        s3: S3Config | None,
        out_of_orderness: Duration | None,
        columns: list[str] | None,
        filter: pc.Expression | None,
        schema: pa.Schema | None,
        prefetch: int,
        max_bytes_in_flight: int,
        on_corrupt: Literal["raise", "quarantine"],
        batch_size: int = BATCH_ROWS,
    ) -> None:
        if on_corrupt not in ("raise", "quarantine"):
            raise ConfigError(f"on_corrupt must be 'raise' or 'quarantine', got {on_corrupt!r}")
        if prefetch < 1:
            raise ConfigError(f"prefetch must be >= 1, got {prefetch}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.time_column = time_column
        self.start = time_bound(start)
        self.until = time_bound(until)
        if self.start is not None and self.until is not None and self.until <= self.start:
            raise ConfigError(f"lake={name}: until must be after start")
        self.s3 = s3
        self.out_of_orderness = (
            None
            if out_of_orderness is None
            else parse_duration(out_of_orderness, name="out_of_orderness")
        )
        self.columns = None if columns is None else list(columns)
        self.filter = filter
        self.declared = declared_schema(schema, self.columns, time_column)
        self.prefetch = prefetch
        self.max_bytes_in_flight = max_bytes_in_flight
        self.on_corrupt = on_corrupt
        self.batch_size = batch_size
        # µs of event time one emitted batch of sorted rows may span (None: rows only); the
        # lambda source sets it to its alignment's max_drift, so lake records stay in the bound
        self.batch_span: int | None = None
        self._metrics = LakeMetrics()
        self._reader: LakeReader | None = None
        self._restored: Position | None = None
        self._restored_state: LakeState | None = None
        self._pinned: LakeState | None = None
        self._pin_active = False  # the pin of the current run is chosen
        # archived dead letters: per Kafka partition, leave offsets >= this to the stream
        self.dead_letters_below: dict[int, int] | None = None
        self._dead_emitted = 0  # archived dead letters emitted by this job (the checkpoint's)
        self._restored_dead = 0
        # for_partition: a task's lake, only its Kafka partition's rows (:mod:`.partitioned`)
        self._partition_filter: PartitionFilter | None = None

    def for_partition(
        self,
        partition: int,
        partitions: int,
        key: list[str] | str,
        partitioner: KeyPartitioner | None = None,
    ) -> Self:
        """A copy of this (not yet run) lake source that reads only Kafka partition
        ``partition`` of ``partitions``'s part of the lake: the archiver's split files of that
        partition, and of every other file the rows whose ``key`` Kafka's default partitioner
        (``partitioner``, default: the key serialised as a string) maps to it. Its recorded
        offsets are that partition's; its watermarks are the whole lake's (see
        :mod:`.partitioned`)."""
        if self._partition_filter is not None:
            raise ConfigError(
                f"lake={self.name}: for_partition of a lake already restricted to partition "
                f"{self._partition_filter.partition}"
            )
        chosen = make_partitioner(partition, partitions, key, partitioner)
        clone = copy.copy(self)
        clone._metrics = LakeMetrics()
        clone._reader = None
        clone._restored = None
        clone._restored_state = None
        clone._pinned = None
        clone._pin_active = False
        clone.dead_letters_below = None
        clone._dead_emitted = clone._restored_dead = 0
        clone._partition_filter = PartitionFilter(partition, chosen)
        return clone

    @property
    def partition_filter(self) -> PartitionFilter | None:
        """The Kafka partition this lake is restricted to (None: the whole lake)."""
        return self._partition_filter

    @property
    def schema(self) -> pa.Schema | None:
        return self.declared

    def metrics(self) -> dict[str, Any]:
        out = self._metrics.as_dict()
        out["pinned"] = None if self._pinned is None else self._pinned.to_dict()
        if self._partition_filter is not None:
            out["kafka_partition"] = self._partition_filter.as_dict()
        return out

    # the pinned state ---------------------------------------------------------------------------

    async def pin(self) -> LakeState:
        """The lake state this run reads: the restored one, else chosen now (once per run)."""
        if not self._pin_active or self._pinned is None:
            self._set_pin(self._restored_state or await self._choose_state())
        assert self._pinned is not None
        return self._pinned

    def _set_pin(self, state: LakeState) -> None:
        self._check_state_kind(state)
        self._pinned = state
        self._pin_active = True

    def _end_of_run(self) -> None:
        """A finished run: the next ``run()`` pins afresh unless a checkpoint is restored."""
        self._pin_active = False
        self._restored_state = None
        self._restored = None
        self._restored_dead = 0
        self.dead_letters_below = None

    async def _choose_state(self) -> LakeState:
        raise NotImplementedError

    def _check_state_kind(self, state: LakeState) -> None:
        """Refuse a restored state of another kind of lake (e.g. a Parquet pin on Iceberg)."""

    async def recorded_offsets(self) -> CommitRecord | None:
        """The Kafka offsets recorded up to the pinned state (None: the lake records none);
        a lake restricted to one Kafka partition records that partition's offset only."""
        record = (await self.pin()).commit_record()
        restricted = self._partition_filter
        if record is None or restricted is None:
            return record
        mine = restricted.partition
        offsets = {mine: record.offsets[mine]} if mine in record.offsets else {}
        return dataclasses.replace(record, offsets=offsets)

    # positions ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        position: Position | None = self._restored
        if self._reader is not None and self._reader.position is not None:
            position = self._reader.position
        state = self._pinned if self._pinned is not None else self._restored_state
        if position is None and state is None:
            return None
        below = self.dead_letters_below
        return {
            "state": None if state is None else state.to_dict(),
            "position": None if position is None else position.to_dict(),
            "archived_dead_letters": {
                "emitted": self._dead_emitted,
                "below": None if below is None else {str(p): o for p, o in sorted(below.items())},
            },
        }

    def restore(self, state: Any) -> None:
        """Resume in the pinned state and at the position of a checkpoint (validated when the
        lake is planned again: :class:`LakeStateError` names what no longer matches)."""
        self._restored = None
        self._restored_state = None
        self._pin_active = False
        self._restored_dead = self._dead_emitted = 0
        self.dead_letters_below = None
        if state is None:
            return
        if not isinstance(state, dict):
            raise LakeStateError(f"lake={self.name}: unreadable lake position {state!r}")
        if "partition" in state:  # a position from before pinned states (no state recorded)
            self._restored = Position.from_dict(state)
            return
        if state.get("position") is not None:
            self._restored = Position.from_dict(state["position"])
        if state.get("state") is not None:
            self._restored_state = LakeState.from_dict(state["state"])
        dead = state.get("archived_dead_letters")
        if isinstance(dead, dict):
            self._restored_dead = self._dead_emitted = int(dead.get("emitted", 0))
            if dead.get("below") is not None:
                self.dead_letters_below = {int(p): int(o) for p, o in dead["below"].items()}

    # reading ------------------------------------------------------------------------------------

    async def _emit_archived_dead_letters(
        self, out: SourceOutput, archived: list[tuple[int, pa.Table, str]]
    ) -> None:
        """Emit the archiver's dead letters of the pinned commits ``(sequence, table, where)``
        (in sequence order), skipping the ones a restored checkpoint already emitted; counted in
        ``metrics()["dead_letters"]`` and ``["archived_dead_letters"]``."""
        below = self.dead_letters_below
        skip = self._restored_dead
        self._dead_emitted = index = skip
        seen = 0
        for sequence, table, where in archived:
            rows = archived_dead_letter_rows(table, where)
            if self._partition_filter is not None:  # a task emits its own partition's
                mine = pa.scalar(self._partition_filter.partition, pa.int32())
                rows = rows.filter(pc.equal(rows.column("partition"), mine))
            kinesis = self._pinned is not None and self._pinned.stream_kind == "kinesis"
            if below:  # positions compared as ints of any size (Kinesis sequence numbers)
                limits = below
                positions = [_archived_position(rows, row) for row in range(rows.num_rows)]
                keep = [at < limits.get(part, 2**200) for part, at in positions]
                rows = rows.filter(pa.array(keep, pa.bool_()))
            for i in range(rows.num_rows):
                seen += 1
                if seen <= skip:
                    continue
                row = rows.slice(i, 1)
                topic, partition, offset = (
                    row.column(c)[0].as_py() for c in ("topic", "partition", "offset")
                )
                reason = row.column("reason")[0].as_py() or "dead-lettered by the archiver"
                archived_in = f"(archived: lake={self.name} commit={sequence})"
                if kinesis:
                    from ..kinesis.emit import record_position

                    batch, number = kinesis_dead_letter(row)
                    position = f"{record_position(topic, partition, number)} {archived_in}"
                else:
                    batch = (
                        row.drop_columns(["reason", "sequence"]).combine_chunks().to_batches()[0]
                    )
                    position = f"topic={topic} partition={partition} offset={offset} {archived_in}"
                await out.dead_letter(batch, reason, position)
                index += 1
                self._dead_emitted = index
                self._metrics.dead_letters += 1
                self._metrics.archived_dead_letters += 1
        if seen < skip:
            raise LakeStateError(
                f"lake={self.name}: the checkpoint emitted {skip} archived dead letters, but the "
                f"pinned lake state holds only {seen}: its dead-letter files changed; start the "
                "job fresh"
            )

    def _decoder(self, trust: bool) -> Decoder:
        return Decoder(
            time_column=self.time_column,
            start=self.start,
            until=self.until,
            columns=self.columns,
            filter=self.filter,
            schema=self.declared,
            trust_layout=trust,
            partition_filter=self._partition_filter,
        )

    def _new_reader(self, metrics: LakeMetrics, trust: bool) -> LakeReader:
        """The ordered reader of this run, resuming at the restored position if any."""
        reader = LakeReader(
            name=self.name,
            time_column=self.time_column,
            event_time_partitioned=trust,
            out_of_orderness=self.out_of_orderness,
            start=self.start,
            prefetch=self.prefetch,
            max_bytes_in_flight=self.max_bytes_in_flight,
            metrics=metrics,
            batch_rows=self.batch_size,
            max_span=self.batch_span,
            until=self.until,
        )
        reader.restored = self._restored
        if self._partition_filter is not None:
            reader.null_key_reason = self._partition_filter.null_reason()
        self._reader = reader
        return reader

    async def _load_files(
        self,
        files: list[LakeFile],
        partition: LakePartition,
        decoder: Decoder,
        metrics: LakeMetrics,
        storage_of: Callable[[LakeFile], Storage],
        plan: Callable[[LakeFile, pq.FileMetaData], None],
    ) -> list[Chunk]:
        """Load a partition's files concurrently; corrupt ones raise or are quarantined."""

        async def one(f: LakeFile) -> list[Chunk]:
            storage = storage_of(f)
            try:
                return await load_file(storage, f, partition, decoder, metrics, plan=plan)
            except LakeReadError as exc:
                quarantine_or_raise(
                    exc, storage.url(f.path), self.on_corrupt, metrics, name=self.name
                )
                return []

        results = await asyncio.gather(*(one(f) for f in files))
        return [c for chunks in results for c in chunks]
