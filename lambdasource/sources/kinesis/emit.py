"""Decoding and emitting a shard's fetches: Kafka's :class:`~..kafka.emit.FetchEmitter` with
Kinesis positions.

The decode (JSON / raw / callable, event time or arrival time, ``max_ahead``) is Kafka's, over
:class:`~.reader.KinesisRecord` (it has the attributes the decoder reads). What differs: sequence
numbers are arbitrary-size ints (offsets arrays become dtype=object beyond int64), a place is named
``stream=… shard=shardId-… sequence=…``, and a dead letter carries ``stream``, ``shard`` and
``sequence`` (a decimal string). The invariant is Kafka's: a split's state moves on only after
its rows, then its dead letters, are out.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...timeutil import MS, TIME_TYPE
from ..base import SourceOutput
from ..kafka.decode import Decoded
from ..kafka.emit import DriveHooks, FetchEmitter
from ..kafka.split import PartitionSplit, held_times
from .shards import shard_id
from .split import offsets_array

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("value", pa.binary()),
        pa.field("key", pa.binary()),
        pa.field("stream", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("sequence", pa.string()),
        pa.field("timestamp", TIME_TYPE),
    ]
)
"""Columns of a dead-lettered Kinesis record (the runtime appends ``_error`` and ``_position``)."""


def record_position(stream: str, shard: int | None = None, sequence: int | None = None) -> str:
    """``stream=… shard=shardId-… sequence=…``: how errors and dead letters name a place."""
    where = f"stream={stream}"
    if shard is not None:
        where += f" shard={shard_id(shard)}"
    if sequence is not None:
        where += f" sequence={sequence}"
    return where


class ShardEmitter(FetchEmitter):
    """Decodes and emits one shard fetch at a time (see module docstring)."""

    def where(self, partition: int | None = None, offset: int | None = None) -> str:
        return record_position(self.topic, partition, offset)

    def readable_records(self, split: PartitionSplit, records: list[Any]) -> list[Any]:
        if split.stop_offset is not None and records and records[-1].offset >= split.stop_offset:
            return [r for r in records if r.offset < split.stop_offset]
        return records

    async def _emit(
        self,
        split: PartitionSplit,
        records: list[Any],
        decoded: Decoded,
        out: SourceOutput,
        hooks: DriveHooks,
        now: float,
    ) -> None:
        """Filter, hold and emit one decoded fetch, then its dead letters; then move the split
        on (Kafka's order, with Kinesis offsets)."""
        n = len(records)
        dead = [(records[index], reason) for index, reason in decoded.errors]
        batch = decoded.batch
        times = batch.column(self.time_column)
        offsets = offsets_array([r.offset for r in records])[decoded.row_indices(n)]
        if times.null_count:
            null = np.asarray(times.is_null().to_numpy(zero_copy_only=False))
            reason = f"null event time in {self.time_column!r}"
            dead += [(records[index], reason) for index in decoded.row_indices(n)[null].tolist()]
            batch = batch.filter(pa.array(~null))
            offsets = offsets[~null]
        if hooks.reject is not None and batch.num_rows:
            batch, offsets = self._reject(records, batch, offsets, hooks.reject, dead)
        max_time: int | None = None
        if batch.num_rows:
            top = pc.max(batch.column(self.time_column))
            max_time = None if not top.is_valid else int(top.cast(pa.int64()).as_py())
        if hooks.transform is not None and batch.num_rows:
            batch, offsets = hooks.transform(split, batch, offsets)
        held: tuple[pa.RecordBatch, np.ndarray, np.ndarray] | None = None
        if batch.num_rows and hooks.aligner is not None:
            bound = hooks.aligner.release_bound(split.out_of_orderness)
            row_times = held_times(batch, self.time_column)
            beyond = row_times > bound
            if beyond.any():
                held = (batch.filter(pa.array(beyond)), offsets[beyond], row_times[beyond])
                batch, offsets = batch.filter(pa.array(~beyond)), offsets[~beyond]
        exclusive = getattr(out, "exclusive", None)
        async with exclusive() if exclusive is not None else contextlib.nullcontext():
            if batch.num_rows:
                await out.emit(
                    batch,
                    position=f"{self.where(split.partition)} sequences={records[0].offset}-"
                    f"{records[-1].offset}",
                )
            for record, reason in dead:
                await out.dead_letter(
                    self.raw_batch(record), reason, self.where(split.partition, record.offset)
                )
            if held is not None:
                split.hold(*held)
            split.saw(max_time, now)
            split.records += n
            split.dead_letters += len(dead)
            split.position = records[-1].offset + 1

    def raw_batch(self, record: Any) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(
            [
                pa.array([record.value], pa.binary()),
                pa.array([record.key], pa.binary()),
                pa.array([self.topic], pa.string()),
                pa.array([shard_id(record.partition)], pa.string()),
                pa.array([str(record.offset)], pa.string()),
                pa.array([record.timestamp * MS], pa.int64()).cast(TIME_TYPE),
            ],
            schema=DEAD_LETTER_SCHEMA,
        )
