"""Decoding and emitting the fetches of a :class:`~.stream.KafkaStream`: :class:`FetchEmitter`.

A ``getmany`` result becomes, per partition, one decode (:class:`~.decode.FetchDecode`) and one
emitted batch. JSON fetches are read by Arrow on the emitter's decode thread (the read releases
the GIL) while the stream's loop takes the next fetches; fetches are emitted in fetch order, on
the loop. Malformed messages, null event times and rows the caller rejects go to the dead
letters with their raw message and ``topic=… partition=… offset=…``.

Invariant: a split's state (position, max time seen, held rows, counts) moves on only after the
rows of its fetch are out, then its dead letters (:meth:`FetchEmitter._emit`): a barrier is
injected only at a row emit, so a barrier there snapshots the state before the fetch and both the
rows and the dead letters of the fetch come after it (a restore replays them once), and no
watermark covers rows still in decode.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import ConsumerRecord, TopicPartition

from ...timeutil import MS, TIME_TYPE
from ..alignment import AlignmentGroup
from ..base import SourceOutput
from .decode import Decoded, Decoder, FetchDecode
from .split import PartitionSplit, held_times

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("value", pa.binary()),
        pa.field("key", pa.binary()),
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("timestamp", TIME_TYPE),
    ]
)
"""Columns of a dead-lettered message (the runtime appends ``_error`` and ``_position``)."""

Transform = Callable[
    [PartitionSplit, pa.RecordBatch, np.ndarray], tuple[pa.RecordBatch, np.ndarray]
]
"""``(split, batch, offsets) -> (batch, offsets)``: filters rows, keeping offsets row for row."""


@dataclass
class DriveHooks:
    """How a caller (the lambda source) customises :meth:`~.stream.KafkaStream.drive`."""

    transform: Transform | None = None  # applied to each decoded batch before it is emitted
    aligner: AlignmentGroup | None = None  # partitions ahead are paused
    split_prefix: str = "stream"  # alignment split name: f"{prefix}:partition=N"
    on_progress: Callable[[], Awaitable[None]] | None = None  # replaces the own watermark
    # rows of a decoded batch to dead-letter, as (row, reason): e.g. values the caller's schema
    # cannot take; they leave with their raw message and position, before ``transform``
    reject: Callable[[pa.RecordBatch], list[tuple[int, str]]] | None = None


_VALUE, _TIMESTAMP, _OFFSET = attrgetter("value"), attrgetter("timestamp"), attrgetter("offset")


@dataclass
class PendingFetch:
    """A ``getmany`` result whose decode was started: per partition, in fetch order, (split,
    records before its stop offset, their decode); ``read``: done when the reads ran."""

    parts: list[tuple[PartitionSplit, list[ConsumerRecord[Any, Any]], FetchDecode]]
    read: asyncio.Future[None]
    now: float


def _run_all(reads: list[Callable[[], None]]) -> None:
    for read in reads:
        read()


def record_position(topic: str, partition: int | None = None, offset: int | None = None) -> str:
    """``topic=… partition=… offset=…``: how errors and dead letters name a place in a topic."""
    where = f"topic={topic}"
    if partition is not None:
        where += f" partition={partition}"
    if offset is not None:
        where += f" offset={offset}"
    return where


class FetchEmitter:
    """Decodes and emits one stream's fetches (see module docstring); :meth:`close` stops its
    decode thread."""

    def __init__(
        self,
        topic: str,
        schema: pa.Schema | None,
        *,
        format: str | Decoder,
        event_time_column: str | None,
        time_column: str,
        max_ahead: int | None,
    ) -> None:
        self.topic = topic
        self.schema = schema
        self.format = format
        self.event_time_column = event_time_column
        self.time_column = time_column
        self.max_ahead = max_ahead
        self._decode_thread: ThreadPoolExecutor | None = None  # created by the first JSON fetch

    def where(self, partition: int | None = None, offset: int | None = None) -> str:
        return record_position(self.topic, partition, offset)

    def close(self) -> None:
        thread, self._decode_thread = self._decode_thread, None
        if thread is not None:
            thread.shutdown(wait=False, cancel_futures=True)

    def readable_records(
        self, split: PartitionSplit, records: list[ConsumerRecord[Any, Any]]
    ) -> list[ConsumerRecord[Any, Any]]:
        """The records of a fetch before the split's stop offset (bounded reads)."""
        if split.stop_offset is not None and records and records[-1].offset >= split.stop_offset:
            return [r for r in records if r.offset < split.stop_offset]
        return records

    def _decode_job(self, records: list[ConsumerRecord[Any, Any]]) -> FetchDecode:
        """The decode of one partition's fetch, its checks before the read done; its
        :meth:`~FetchDecode.read` touches no stream state (it may run on the decode thread)."""
        n = len(records)
        values = list(map(_VALUE, records))
        stamps = (  # read by the decoder only for the record-timestamp column
            np.fromiter(map(_TIMESTAMP, records), dtype=np.int64, count=n)
            if self.event_time_column is None
            else np.zeros(0, dtype=np.int64)
        )
        return FetchDecode(
            values,
            self.schema,
            format=self.format,
            time_column=self.event_time_column,
            timestamps_ms=stamps,
            max_ahead=self.max_ahead,
        )

    def start(
        self,
        fetched: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
        splits: dict[int, PartitionSplit],
        now: float,
    ) -> PendingFetch | None:
        """Start decoding a ``getmany`` result: the JSON reads (Arrow's reader releases the GIL)
        run on the decode thread while the loop fetches the next records; ``None`` when it holds
        no record to emit. Nothing of the stream's state changes here."""
        parts = []
        for tp, records in fetched.items():
            split = splits[tp.partition]
            kept = self.readable_records(split, records)
            if kept:
                parts.append((split, kept, self._decode_job(kept)))
        if not parts:
            return None
        reads = [fetch.read for _, _, fetch in parts if fetch.reads]
        loop = asyncio.get_running_loop()
        if reads:
            if self._decode_thread is None:
                self._decode_thread = ThreadPoolExecutor(
                    1, thread_name_prefix=f"lambdasource-decode-{self.topic}"
                )
            done = loop.run_in_executor(self._decode_thread, _run_all, reads)
        else:
            done = loop.create_future()
            done.set_result(None)
        return PendingFetch(parts, done, now)

    async def finish(self, pending: PendingFetch, out: SourceOutput, hooks: DriveHooks) -> None:
        """Emit a started decode's rows, partition after partition in fetch order; each split's
        state moves on as its rows are out (see :meth:`_emit`)."""
        await pending.read
        for split, records, fetch in pending.parts:
            await self._emit(split, records, fetch.result(), out, hooks, pending.now)

    async def process(
        self,
        split: PartitionSplit,
        records: list[ConsumerRecord[Any, Any]],
        out: SourceOutput,
        hooks: DriveHooks,
        now: float,
    ) -> None:
        """Decode one partition's fetch on the loop and emit it."""
        records = self.readable_records(split, records)
        if records:
            fetch = self._decode_job(records)
            fetch.read()
            decoded = fetch.result()
            await self._emit(split, records, decoded, out, hooks, now)

    offsets_word = "offsets"  # how an emitted batch's position names its range

    def record_offsets(self, records: list[ConsumerRecord[Any, Any]]) -> np.ndarray:
        """The records' offsets, row for row (int64)."""
        n = len(records)
        first = records[0].offset
        if records[-1].offset - first == n - 1:  # offsets rise strictly: no gap, no per-record read
            return np.arange(first, first + n, dtype=np.int64)
        return np.fromiter(map(_OFFSET, records), dtype=np.int64, count=n)  # compacted, markers

    async def _emit(
        self,
        split: PartitionSplit,
        records: list[ConsumerRecord[Any, Any]],
        decoded: Decoded,
        out: SourceOutput,
        hooks: DriveHooks,
        now: float,
    ) -> None:
        """Filter, hold and emit one decoded fetch, then its dead letters; then move the split
        on (see the module docstring)."""
        n = len(records)
        dead = [(records[index], reason) for index, reason in decoded.errors]
        batch = decoded.batch
        times = batch.column(self.time_column)
        if times.null_count:  # dead-letter them here, with the raw message (not the runtime)
            null = np.asarray(times.is_null().to_numpy(zero_copy_only=False))
            reason = f"null event time in {self.time_column!r}"
            dead += [(records[index], reason) for index in decoded.row_indices(n)[null].tolist()]
            batch = batch.filter(pa.array(~null))
        offsets = self.record_offsets(records)[decoded.row_indices(n)]
        if times.null_count:
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
            # the bound holds per record (DESIGN §3): rows beyond it stay in the split
            bound = hooks.aligner.release_bound(split.out_of_orderness)
            row_times = held_times(batch, self.time_column)
            beyond = row_times > bound
            if beyond.any():
                held = (batch.filter(pa.array(beyond)), offsets[beyond], row_times[beyond])
                batch, offsets = batch.filter(pa.array(~beyond)), offsets[~beyond]
        # One fetch is sent as a unit: no other writer of ``out`` (the lambda source's lake
        # task) gets in between, so no barrier falls inside it.
        exclusive = getattr(out, "exclusive", None)
        async with exclusive() if exclusive is not None else contextlib.nullcontext():
            if batch.num_rows:
                await out.emit(
                    batch,
                    position=f"{self.where(split.partition)} {self.offsets_word}="
                    f"{records[0].offset}-{records[-1].offset}",
                )
            # The dead letters go after the rows: a barrier is injected only at a row emit
            # (before the rows), never at a dead letter, so both sides of the fetch fall after
            # any barrier and are replayed together from the state before the fetch.
            for record, reason in dead:
                await out.dead_letter(
                    self.raw_batch(record), reason, self.where(split.partition, record.offset)
                )
            # Only once the rows are out does the split's state move on, in one step: a barrier
            # injected at the emit snapshots the state before this fetch (the fetch is
            # replayed), and a watermark another task emits meanwhile cannot cover these rows.
            if held is not None:
                split.hold(*held)
            split.saw(max_time, now)
            split.records += n
            split.dead_letters += len(dead)
            split.position = records[-1].offset + 1

    @staticmethod
    def _reject(
        records: list[ConsumerRecord[Any, Any]],
        batch: pa.RecordBatch,
        offsets: np.ndarray,
        reject: Callable[[pa.RecordBatch], list[tuple[int, str]]],
        dead: list[tuple[ConsumerRecord[Any, Any], str]],
    ) -> tuple[pa.RecordBatch, np.ndarray]:
        """The rows ``reject`` keeps; the others are added to ``dead`` with their reasons."""
        rejected = reject(batch)
        if not rejected:
            return batch, offsets
        by_offset = {r.offset: r for r in records}
        keep = np.ones(batch.num_rows, dtype=bool)
        for row, reason in rejected:
            keep[row] = False
            dead.append((by_offset[int(offsets[row])], reason))
        return batch.filter(pa.array(keep)), offsets[keep]

    def raw_batch(self, record: ConsumerRecord[Any, Any]) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(
            [
                pa.array([record.value], pa.binary()),
                pa.array([record.key], pa.binary()),
                pa.array([self.topic], pa.string()),
                pa.array([record.partition], pa.int32()),
                pa.array([record.offset], pa.int64()),
                pa.array([record.timestamp * MS], pa.int64()).cast(TIME_TYPE),
            ],
            schema=DEAD_LETTER_SCHEMA,
        )
