"""Barrier alignment is bounded: an input that delivered its barrier is backpressured.

While a multi-input operator waits for a checkpoint barrier on its other inputs, the inputs that
already delivered it are not read any more: their bounded queue fills and their producer waits,
instead of the operator buffering an unbounded list. These tests measure that from outside (how
far the fast source got before the slow one's barrier) and check the output stays exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import lambdasource as ls

from .scripted import Scripted, batch


class Snap(ls.Operator):
    """Counts rows; its snapshot is that count (so the aligned cut is visible)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def on_batch(self, b: pa.RecordBatch, ctx: ls.Context) -> None:
        self.rows += b.num_rows
        ctx.emit(b)

    def snapshot(self) -> int:
        return self.rows


async def _until_stalled(counter: Any, limit: int, quiet_steps: int = 20) -> None:
    """Wait until ``counter()`` reaches ``limit`` or stops moving for ``quiet_steps`` polls."""
    last, quiet = counter(), 0
    while counter() < limit and quiet < quiet_steps:
        await asyncio.sleep(0.005)
        now = counter()
        quiet = quiet + 1 if now == last else 0
        last = now


async def test_input_that_delivered_its_barrier_is_backpressured_while_aligning() -> None:
    n, queue_size = 120, 2
    p = ls.Pipeline(queue_size=queue_size)
    triggered = asyncio.Event()
    checkpoint: list[int] = []
    fast_at_release: list[int] = []
    queued_rows: list[int] = []

    slow_started = asyncio.Event()

    async def started() -> None:
        slow_started.set()

    async def trigger() -> None:  # once the slow input emitted its first batch
        await slow_started.wait()
        checkpoint.append(p.trigger_checkpoint())
        triggered.set()

    async def slow() -> None:  # the slow input: lets the fast one run as far as it can
        await triggered.wait()

        def progress() -> int:
            queued_rows.append(p.metrics()["buffered"]["queue_rows"])
            return fast.emitted

        await _until_stalled(progress, n + 1)
        fast_at_release.append(fast.emitted)

    fast = Scripted("fast", [batch((1, 1, 1)), trigger, *(batch((10 + i, 1, i)) for i in range(n))])
    slow_source = Scripted("slow", [batch((2, 2, 0)), started, slow, batch((3, 2, 0))])
    out = p.source(fast).union(p.source(slow_source)).process(Snap(), name="snap")
    sink = out.sink(ls.CollectSink())
    await asyncio.wait_for(p.run(), 30)

    # the fast source stopped after filling its input's bounded queue (plus one put in flight),
    # instead of emitting all n batches into an alignment buffer
    (emitted,) = fast_at_release
    assert emitted <= 1 + queue_size + 2, emitted
    assert max(queued_rows) <= 2 * queue_size + 2  # bounded queues, nothing hidden elsewhere
    # the output is exact and the snapshot is the aligned cut (one row of each input before it)
    table = sink.table()
    assert table.num_rows == n + 3
    assert sorted(table.column("x").to_pylist()) == sorted([1, 0, 0, *range(n)])
    (cid,) = checkpoint
    assert p.snapshots[cid]["snap"]["operator"] == 2
    assert p.metrics()["checkpoints"]["completed"] == [cid]


async def test_diamond_graph_aligns_without_deadlock() -> None:
    """One source feeding both inputs of a union through two branches, tiny queues, many
    checkpoints: the paused branch never blocks the barrier of the other."""
    n = 300
    p = ls.Pipeline(queue_size=1)
    steps: list[Any] = []
    ids: list[int] = []

    async def trigger() -> None:
        ids.append(p.trigger_checkpoint())

    for i in range(n):
        steps.append(batch((i, i % 3, i)))
        if i % 25 == 5:
            steps.append(trigger)
    source = p.source(Scripted("s", steps))
    evens = source.filter(pc.equal(pc.bit_wise_and(pc.field("x"), 1), 0))
    odds = source.map(lambda b: b.filter(pc.equal(pc.bit_wise_and(b.column("x"), 1), 1)))
    sink = evens.union(odds).process(Snap(), name="snap").sink(ls.CollectSink())
    await asyncio.wait_for(p.run(), 30)
    assert sorted(sink.table().column("x").to_pylist()) == list(range(n))
    assert p.metrics()["checkpoints"]["completed"] == ids
    # every aligned snapshot counts exactly the rows before its barrier (both branches)
    assert len(ids) == 12
    for k, cid in enumerate(ids):
        before = 25 * k + 6
        assert p.snapshots.get(cid, {}).get("snap", {"operator": before})["operator"] == before


async def test_self_union_aligns() -> None:
    p = ls.Pipeline(queue_size=1)
    ids: list[int] = []

    async def trigger() -> None:
        ids.append(p.trigger_checkpoint())

    s = p.source(Scripted("s", [batch((1, 1, 1)), trigger, *(batch((i, 1, i)) for i in range(50))]))
    sink = s.union(s).process(Snap(), name="snap").sink(ls.CollectSink())
    await asyncio.wait_for(p.run(), 30)
    assert sink.table().num_rows == 2 * 51
    assert p.snapshots[ids[0]]["snap"]["operator"] == 2
