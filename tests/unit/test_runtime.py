"""Runtime behaviour: errors, cancellation, backpressure, timers, keyed state, barriers, dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls

from .scripted import Scripted, batch


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


class Boom(ls.Operator):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.seen = 0
        self.closed = False

    def on_batch(self, b: pa.RecordBatch, ctx: ls.Context) -> None:
        self.seen += 1
        if self.seen > self.after:
            raise ValueError("boom on purpose")
        ctx.emit(b)

    def close(self, ctx: ls.Context) -> None:
        self.closed = True


async def test_operator_error_surfaces_with_cause_and_no_task_survives() -> None:
    p = ls.Pipeline()
    op = Boom(after=1)
    p.source(Scripted("s", [batch((1, 1, 1))] * 5)).process(op, name="boom").sink(ls.CollectSink())
    with pytest.raises(ls.OperatorError, match="operator=boom failed in on_batch") as info:
        await p.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert op.closed
    assert not _other_tasks()
    assert p.metrics()["status"] == "failed"


async def test_sink_error_is_a_sink_error() -> None:
    class Broken(ls.CollectSink):
        closed = False

        async def write(self, b: pa.RecordBatch) -> None:
            raise ConnectionError("store down")

        async def close(self) -> None:
            Broken.closed = True

    p = ls.Pipeline()
    p.source(Scripted("s", [batch((1, 1, 1))])).sink(Broken(), name="store")
    with pytest.raises(ls.SinkError, match="sink=store failed in write") as info:
        await p.run()
    assert isinstance(info.value.__cause__, ConnectionError)
    assert Broken.closed
    assert not _other_tasks()


async def test_source_error_is_a_source_error() -> None:
    async def fail() -> None:
        raise OSError("disk gone")

    p = ls.Pipeline()
    p.source(Scripted("s", [batch((1, 1, 1)), fail])).sink(ls.CollectSink())
    with pytest.raises(ls.SourceError, match="source=s failed") as info:
        await p.run()
    assert isinstance(info.value.__cause__, OSError)
    assert not _other_tasks()


async def test_cancelling_an_unbounded_run_stops_every_task() -> None:
    forever = asyncio.Event()

    async def hang() -> None:
        await forever.wait()

    class Closing(ls.CollectSink):
        closed = False

        async def close(self) -> None:
            Closing.closed = True

    p = ls.Pipeline()
    sink = p.source(Scripted("s", [batch((1, 1, 1)), hang])).sink(Closing())
    task = asyncio.create_task(p.run())
    for _ in range(100):
        await asyncio.sleep(0.005)
        if len(sink):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert Closing.closed
    assert p.metrics()["status"] == "cancelled"
    assert not _other_tasks()


async def test_bounded_queues_give_backpressure() -> None:
    class Slow(ls.CollectSink):
        async def write(self, b: pa.RecordBatch) -> None:
            await asyncio.sleep(0.002)
            await super().write(b)

    source = Scripted("s", [batch((i, 1, 1)) for i in range(60)])
    lead: list[int] = []

    class Probe(ls.Operator):
        def on_batch(self, b: pa.RecordBatch, ctx: ls.Context) -> None:
            lead.append(source.emitted - len(sink.batches))
            ctx.emit(b)

    p = ls.Pipeline(queue_size=2)
    sink = p.source(source).process(Probe()).sink(Slow())
    await p.run()
    assert len(sink) == 60
    assert max(lead) <= 8  # two queues of 2 plus what is in flight, never the whole input


class CountPerKey(ls.Operator):
    """Counts records per key in keyed state; an event timer per key emits the count."""

    def on_batch(self, b: pa.RecordBatch, ctx: ls.Context) -> None:
        for key, part in ctx.split_by_key(b):
            ctx.state[key] = ctx.state.get(key, 0) + part.num_rows
            ctx.register_event_timer(100, key=key)

    def on_timer(self, timer: ls.Timer, ctx: ls.Context) -> None:
        ctx.emit(
            pa.record_batch(
                {"k": [ctx.current_key], "n": [ctx.state[ctx.current_key]], "at": [timer.time]}
            )
        )

    def on_watermark(self, watermark: int, ctx: ls.Context) -> None:
        pass  # output has no time column; nothing to forward


async def test_keyed_state_and_event_timers_fire_at_the_watermark() -> None:
    p = ls.Pipeline()
    steps = [
        batch((1, 1, 0), (2, 2, 0), (3, 1, 0)),
        ls.Watermark(99),
        batch((4, 1, 0)),
        ls.Watermark(100),
        batch((150, 3, 0)),
        ls.Watermark(120),
    ]
    sink = p.source(Scripted("s", steps)).key_by("k").process(CountPerKey()).sink(ls.CollectSink())
    await p.run()
    rows = sink.table().to_pylist()
    # timers fire once per key at watermark 100 (after records up to then), in registration order;
    # key 3 registered after watermark 100 so its timer (time 100 <= 120) fires at the next advance
    assert rows == [
        {"k": 1, "n": 3, "at": 100},
        {"k": 2, "n": 1, "at": 100},
        {"k": 3, "n": 1, "at": 100},
    ]


async def test_timers_require_a_keyed_stream_for_keys() -> None:
    class Bad(ls.Operator):
        def on_batch(self, b: pa.RecordBatch, ctx: ls.Context) -> None:
            ctx.register_event_timer(5, key="x")

    p = ls.Pipeline()
    p.source(Scripted("s", [batch((1, 1, 1))])).process(Bad()).sink(ls.CollectSink())
    with pytest.raises(ls.StateError, match=r"needs a keyed stream; call .key_by"):
        await p.run()


async def test_processing_time_timer_fires() -> None:
    fired = asyncio.Event()
    release = asyncio.Event()

    class Ticker(ls.Operator):
        def on_batch(self, b: pa.RecordBatch, ctx: ls.Context) -> None:
            ctx.register_processing_timer(ctx.processing_time() + 20_000)

        def on_timer(self, timer: ls.Timer, ctx: ls.Context) -> None:
            assert timer.domain == "processing"
            fired.set()
            release.set()

    async def wait() -> None:
        await release.wait()

    p = ls.Pipeline()
    p.source(Scripted("s", [batch((1, 1, 1)), wait])).process(Ticker()).sink(ls.CollectSink())
    await asyncio.wait_for(p.run(), 5)
    assert fired.is_set()


async def test_barriers_align_across_union_inputs_and_collect_snapshots() -> None:
    p_ref: list[ls.Pipeline] = []
    go = asyncio.Event()
    checkpoint: list[int] = []

    async def trigger() -> None:
        checkpoint.append(p_ref[0].trigger_checkpoint())
        go.set()

    async def wait() -> None:
        await go.wait()
        await asyncio.sleep(0.01)

    class Snap(ls.Operator):
        def __init__(self) -> None:
            super().__init__()
            self.rows = 0

        def on_batch(self, b: pa.RecordBatch, ctx: ls.Context) -> None:
            self.rows += b.num_rows
            ctx.emit(b)

        def snapshot(self) -> int:
            return self.rows

    p = ls.Pipeline()
    p_ref.append(p)
    b_started = asyncio.Event()

    async def started() -> None:
        b_started.set()

    async def wait_b() -> None:
        await b_started.wait()

    a = p.source(Scripted("a", [batch((1, 1, 1)), wait_b, trigger, batch((2, 1, 1))]))
    b = p.source(Scripted("b", [batch((3, 2, 2)), started, wait, batch((4, 2, 2))]))
    sink = a.union(b).process(Snap(), name="snap").sink(ls.CollectSink())
    await p.run()
    assert len(sink) == 4
    (cid,) = checkpoint
    snaps = p.snapshots[cid]
    # exactly the records before the barrier of each input are in the snapshot
    assert snaps["a"] is None and snaps["b"] is None
    assert snaps["snap"]["operator"] == 2
    assert p.metrics()["checkpoints"]["completed"] == [cid]


async def test_map_errors_dead_letter_only_the_failing_rows() -> None:
    def parse(b: pa.RecordBatch) -> pa.RecordBatch:
        if pc.any(pc.equal(b.column("x"), 13)).as_py():
            raise ValueError("x=13 is unlucky")
        return b

    p = ls.Pipeline()
    rows = [(i, 1, i) for i in range(40)]
    mapped = p.source(Scripted("s", [batch(*rows)])).map(parse, name="parse")
    good = mapped.sink(ls.CollectSink())
    bad = mapped.dead_letters().sink(ls.CollectSink())
    await p.run()
    assert good.table().column("x").to_pylist() == [i for i in range(40) if i != 13]
    dead = bad.table().to_pylist()
    assert [d["x"] for d in dead] == [13]
    assert dead[0]["_error"] == "ValueError: x=13 is unlucky"
    assert dead[0]["_position"] == "operator=parse row=13"
    assert p.metrics()["dead_letters"] == 1


async def test_map_on_error_raise_fails_the_run() -> None:
    p = ls.Pipeline()
    p.source(Scripted("s", [batch((1, 1, 1))])).map(lambda b: 1 / 0, on_error="raise").sink(
        ls.CollectSink()
    )
    with pytest.raises(ls.OperatorError) as info:
        await p.run()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


async def test_null_event_times_go_to_source_dead_letters() -> None:
    table = pa.table({"ts": pa.array([1, None, 3], pa.timestamp("ms")), "x": [1, 2, 3]})
    p = ls.Pipeline()
    s = p.source(ls.MemorySource(table, "ts"))
    good = s.sink(ls.CollectSink())
    dead = s.dead_letters().sink(ls.CollectSink())
    await p.run()
    assert good.table().column("x").to_pylist() == [1, 3]
    assert dead.table().to_pylist()[0]["_error"] == "null event time in 'ts'"
    assert dead.table().to_pylist()[0]["_position"] == "batch=0"


def test_run_sync_and_single_use() -> None:
    table = pa.table({"ts": pa.array([1, 2], pa.int64()), "x": [1, 2]})
    p = ls.Pipeline()
    sink = p.source(ls.MemorySource(table, "ts")).sink(ls.CollectSink())
    p.run_sync()
    assert len(sink) == 2
    with pytest.raises(ls.ConfigError, match="runs once"):
        p.run_sync()
