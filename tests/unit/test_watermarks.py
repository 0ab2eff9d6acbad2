"""Watermark propagation (DESIGN §3): min over inputs, never regressing, idle/ended inputs excluded."""

from __future__ import annotations

import asyncio
import contextlib

import pyarrow as pa

import lambdasource as ls
from lambdasource.channels import _Gate

from .scripted import Scripted, batch


def test_gate_min_over_inputs_and_no_regression() -> None:
    gate = _Gate(2)
    gate.watermarks = [10, None]
    assert gate.recompute() == (False, False) and gate.combined is None  # input 1 holds it back
    gate.watermarks = [10, 7]
    assert gate.recompute() == (True, False) and gate.combined == 7
    gate.watermarks = [10, 12]
    assert gate.recompute() == (True, False) and gate.combined == 10
    gate.watermarks = [10, 12]
    assert gate.recompute() == (False, False) and gate.combined == 10


def test_gate_idle_input_does_not_hold_back_and_never_regresses() -> None:
    gate = _Gate(2)
    gate.watermarks = [50, 5]
    gate.idle = [False, True]
    assert gate.recompute() == (True, False) and gate.combined == 50
    gate.idle = [False, False]  # the idle input wakes up behind: the output does not go back
    assert gate.recompute() == (False, False) and gate.combined == 50
    gate.watermarks = [80, 60]
    assert gate.recompute() == (True, False) and gate.combined == 60


def test_gate_all_idle_forwards_maximum_and_reports_idleness() -> None:
    gate = _Gate(2)
    gate.watermarks = [20, 30]
    gate.idle = [True, True]
    assert gate.recompute() == (True, True) and gate.combined == 30 and gate.all_idle
    gate.idle = [False, True]
    assert gate.recompute() == (False, True) and not gate.all_idle


def test_gate_ended_inputs_are_excluded() -> None:
    gate = _Gate(2)
    gate.watermarks = [100, 5]
    gate.ended = [False, True]
    assert gate.recompute() == (True, False) and gate.combined == 100


def _union_pipeline(a: list, b: list) -> tuple[ls.Pipeline, ls.CollectSink]:
    p = ls.Pipeline()
    left = p.source(Scripted("a", a))
    right = p.source(Scripted("b", b))
    sink = left.union(right).sink(ls.CollectSink())
    return p, sink


async def test_union_forwards_min_of_inputs_monotonically() -> None:
    gate_a, gate_b = asyncio.Event(), asyncio.Event()

    async def wait(event: asyncio.Event) -> None:
        await event.wait()

    async def release(event: asyncio.Event) -> None:
        await asyncio.sleep(0.01)
        event.set()

    a = [
        batch((1, 1, 1)),
        ls.Watermark(100),
        lambda: release(gate_b),
        lambda: wait(gate_a),
        ls.Watermark(300),
    ]
    b = [
        lambda: wait(gate_b),
        batch((2, 2, 2)),
        ls.Watermark(50),
        ls.Watermark(200),
        lambda: release(gate_a),
        ls.Watermark(400),
    ]
    p, sink = _union_pipeline(a, b)
    await p.run()
    assert sink.watermarks == sorted(sink.watermarks)
    assert sink.watermarks[0] == 50  # min(100, 50)
    assert 100 in sink.watermarks and sink.watermarks[-1] == 400  # ended inputs stop holding back
    assert all(w in (50, 100, 200, 300, 400) for w in sink.watermarks)
    assert len(sink) == 2


class _Watching(ls.CollectSink):
    """A collect sink that signals when a given watermark arrives."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target
        self.reached = asyncio.Event()

    async def on_watermark(self, watermark: int) -> None:
        await super().on_watermark(watermark)
        if watermark >= self.target:
            self.reached.set()


async def _watermarks_seen_while_b_is_live(b_goes_idle: bool, wait: float) -> list[int]:
    """Union of a (watermarks 100, 500) and b (watermark 10, optionally marked idle, then silent
    but still running). Returns the watermarks the sink saw *before b ended*: once every input
    ends the gate forwards the maximum anyway, so only what arrives while b is live shows
    whether b's idleness stopped it holding the minimum back."""
    done = asyncio.Event()
    seen: list[int] = []
    sink = _Watching(500)

    async def observe() -> None:
        # wait (bounded) until 500 reaches the sink while b is still running, then record
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.reached.wait(), wait)
        seen.extend(sink.watermarks)
        done.set()

    async def hold() -> None:
        await done.wait()

    a = [ls.Watermark(100), ls.Watermark(500), observe]
    b = [ls.Watermark(10), ls.Watermark(10, idle=b_goes_idle), hold]
    p = ls.Pipeline()
    p.source(Scripted("a", a)).union(p.source(Scripted("b", b))).sink(sink)
    await asyncio.wait_for(p.run(), 30)
    assert sink.watermarks[-1] == 500  # both ended: the run's end time
    return seen


async def test_idle_input_does_not_stall_downstream() -> None:
    """b goes idle at 10 and then stays live and silent: a's watermarks flow past it while b is
    still running (not only once b ends)."""
    seen = await _watermarks_seen_while_b_is_live(b_goes_idle=True, wait=10.0)
    assert 500 in seen, f"idle input held the watermark back: sink saw {seen} while it was live"
    assert seen == sorted(seen) and set(seen) <= {10, 100, 500}


async def test_quiet_but_not_idle_input_holds_the_watermark_back() -> None:
    """The contrast: the same script without the idle mark keeps the output at b's 10."""
    seen = await _watermarks_seen_while_b_is_live(b_goes_idle=False, wait=0.3)
    assert seen and max(seen) == 10, seen


async def test_sink_sees_watermarks_after_the_data_they_cover() -> None:
    class Recorder(ls.CollectSink):
        def __init__(self) -> None:
            super().__init__()
            self.log: list[object] = []

        async def write(self, b: pa.RecordBatch) -> None:
            self.log.append(b.num_rows)

        async def on_watermark(self, watermark: int) -> None:
            self.log.append(("wm", watermark))

    table = pa.table({"ts": pa.array([1, 2, 3, 4], pa.int64()), "x": [1, 2, 3, 4]})
    p = ls.Pipeline()
    rec = p.source(ls.MemorySource(table, "ts", batch_size=2, out_of_orderness="0s")).sink(
        Recorder()
    )
    await p.run()
    assert rec.log == [2, ("wm", 2000), 2, ("wm", 4000)]  # int64 ms → µs
