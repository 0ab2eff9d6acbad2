"""Shard splits and the shard emitter: idleness needs an empty answer at the tip; held-row bookkeeping
and emitted positions stay exact for real Kinesis' 56-digit sequence numbers."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdasource.sources.alignment import AlignmentGroup
from lambdasource.sources.kafka.emit import DriveHooks
from lambdasource.sources.kinesis.emit import ShardEmitter
from lambdasource.sources.kinesis.reader import KinesisRecord
from lambdasource.sources.kinesis.split import INT64_MAX, ShardSplit, offsets_array
from lambdasource.timeutil import MS

BIG = 49590338271490256608559692538361571095921575989136588898
SCHEMA = pa.schema(
    [pa.field("event_time", pa.timestamp("us", tz="UTC")), pa.field("id", pa.int64())]
)


def test_a_shard_is_idle_only_when_caught_up_and_quiet() -> None:
    split = ShardSplit("s", 0, out_of_orderness=0, idle_timeout=1.0, confirm_window=5.0)
    split.responded(1, now=10.0)
    split.last_activity = 0.0
    split.millis_behind_latest = 4_000  # behind the tip: not idle however quiet
    split.update_idle(12.0)
    assert split.metrics()["idle"] is False
    split.millis_behind_latest = 0  # a non-empty answer 0 ms behind: maybe more to read
    split.update_idle(12.0)
    assert split.metrics()["idle"] is False
    split.at_tip = True  # an empty answer at the tip
    split.update_idle(12.0)
    assert split.metrics()["idle"] is True
    split.set_paused(True, 12.0)  # held by alignment: never idle
    split.update_idle(20.0)
    assert split.metrics()["idle"] is False


def test_offsets_array_is_int64_until_a_sequence_does_not_fit() -> None:
    assert offsets_array([1, 2]).dtype == np.int64
    assert offsets_array([INT64_MAX]).dtype == np.int64
    big = offsets_array([1, BIG])
    assert big.dtype == object and int(big[1]) == BIG


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 50), min_size=1, max_size=6), st.integers(-5, 60)),
        min_size=1,
        max_size=8,
    )
)
def test_held_rows_release_in_time_order_and_keep_every_sequence(
    steps: list[tuple[list[int], int]],
) -> None:
    """Hold fetches (times, 56-digit sequence numbers), release up to bounds: every sequence
    number leaves exactly once, in time order, and the restart position is the smallest held."""
    split = ShardSplit("s", 0, out_of_orderness=0, idle_timeout=1.0)
    sequence = BIG
    held: list[int] = []
    released: list[tuple[int, int]] = []
    for times, bound in steps:
        offsets = offsets_array(list(range(sequence, sequence + len(times))))
        sequence += len(times) * 1_000_000_007  # sparse, as on Kinesis
        batch = pa.RecordBatch.from_pydict({"t": times, "seq": [str(o) for o in offsets]})
        split.hold(batch, offsets, np.asarray(times, dtype=np.int64))
        held += [int(o) for o in offsets]
        due = split.due(bound)
        if due:
            rows, taken = split.taken(due)
            assert rows.column("seq").to_pylist() == [str(o) for o in taken]
            released += list(zip(rows.column("t").to_pylist(), map(int, taken), strict=True))
            split.released(due)
        assert all(t <= bound for t, _ in released[len(released) - due :])
        remaining = [] if split.held_offsets is None else [int(o) for o in split.held_offsets]
        assert Counter(remaining + [s for _, s in released]) == Counter(held)
        assert split.first_unemitted == (min(remaining) if remaining else None)


class Out:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.dead: list[tuple[str, str | None]] = []
        self.positions: list[str | None] = []

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        self.rows += batch.to_pylist()
        self.positions.append(position)

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        pass

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        self.dead.append((batch.column("sequence")[0].as_py(), position))

    async def barrier_point(self) -> None:
        pass


def test_the_emitter_keeps_56_digit_sequence_numbers_exact() -> None:
    records = [
        KinesisRecord(orjson.dumps({"event_time": 1000 + i, "id": i}), b"k", 3, BIG + i * 7, 5)
        for i in range(4)
    ] + [KinesisRecord(b"{broken", b"k", 3, BIG + 99, 5)]
    emitter = ShardEmitter(
        "orders",
        SCHEMA,
        format="json",
        event_time_column="event_time",
        time_column="event_time",
        max_ahead=None,
    )
    aligner = AlignmentGroup(max_drift=0)
    aligner.register("stream:partition=3")
    aligner.report("stream:partition=3", 1001 * MS)
    aligner.note_output(1001 * MS)  # rows after 1001 ms + 1 µs are held
    split = ShardSplit("orders", 3, out_of_orderness=0, idle_timeout=1.0)
    out = Out()
    asyncio.run(emitter.process(split, records, out, DriveHooks(aligner=aligner), 0.0))
    assert [row["id"] for row in out.rows] == [0, 1]
    assert out.positions == [f"stream=orders shard=shardId-000000000003 sequences={BIG}-{BIG + 99}"]
    assert out.dead == [
        (str(BIG + 99), f"stream=orders shard=shardId-000000000003 sequence={BIG + 99}")
    ]
    assert split.position == BIG + 100
    assert split.held_offsets is not None and [int(o) for o in split.held_offsets] == [
        BIG + 14,
        BIG + 21,
    ]
    assert split.first_unemitted == BIG + 14
