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

from typing import Any

import numpy as np
import pyarrow as pa

from ...timeutil import MS, TIME_TYPE
from ..kafka.emit import FetchEmitter
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

    offsets_word = "sequences"

    def where(self, partition: int | None = None, offset: int | None = None) -> str:
        return record_position(self.topic, partition, offset)

    def record_offsets(self, records: list[Any]) -> np.ndarray:
        """Sequence numbers, row for row: int64 while they fit, else Python ints (object)."""
        return offsets_array([r.offset for r in records])

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
