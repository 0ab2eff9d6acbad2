"""Attack: restarts a user makes — a job restarted without its checkpoints but with the same
consumer ``group_id`` (e.g. a new sink, ``restore=None``), a job restored from its checkpoint
after the topic received more records, and a user operator written with ``async def`` hooks
(the library is asyncio-based, so a natural thing to write).

Oracle: the multiset of generated event ids (lake rows before the cutoff + stream rows from it,
or every record once with offsets), never the library's counters.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.generator import generate_clickstream
from lake.maintenance import compact, expire_replaced
from lake.writer import ParquetLakeWriter
from lambdasource.timeutil import HOUR
from tests.integration.ordered import SCHEMA, TIME
from tests.services.kafka import KafkaService


def events(n: int, seed: int) -> pa.Table:
    table = generate_clickstream(n, 1, 30, seed=seed, jitter="0s").select(SCHEMA.names)
    return table.cast(SCHEMA).sort_by(TIME)


def jsons(rows: pa.Table) -> tuple[list[bytes], list[int]]:
    vals = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in rows.to_pylist()]
    return vals, (pc.cast(rows.column(TIME), pa.int64()).to_numpy() // 1000).tolist()


def ids(table: pa.Table) -> Counter[int]:
    return Counter(table.column("event_id").to_pylist())


async def setup(kafka: KafkaService, root: Path, seed: int) -> tuple[str, pa.Table, int]:
    """Lake: every event before hour 12 (one commit, offsets = what it archived); topic: every
    event (the lake's part first)."""
    table = events(3000, seed)
    times = pc.cast(table.column(TIME), pa.int64())
    cut = (int(pc.min(times).as_py()) // HOUR) * HOUR + 12 * HOUR
    lake_rows = table.filter(pc.less(times, cut))
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    vals, stamps = jsons(table)
    await kafka.aproduce(topic, vals, partition=0, timestamps_ms=stamps)
    ParquetLakeWriter(root, TIME, row_group_rows=100).write(
        lake_rows, offsets={0: lake_rows.num_rows}, topic=topic
    )
    return topic, table, cut


@pytest.mark.kafka
@pytest.mark.parametrize("handoff", ["timestamp", "offsets"])
async def test_a_fresh_start_with_the_same_group_id_replays_everything(
    kafka: KafkaService, tmp_path: Path, handoff: str
) -> None:
    topic, table, cut = await setup(kafka, tmp_path / "lake", seed=31)
    group = f"g-{uuid.uuid4().hex[:8]}"

    def source() -> ls.LambdaSource:
        return ls.LambdaSource(
            ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA),
            ls.KafkaStream(
                topic,
                kafka.bootstrap,
                time_column=TIME,
                schema=SCHEMA,
                stop_at="latest",
                group_id=group,
                commit_interval="50ms",
            ),
            handoff=handoff,
            cutoff=cut if handoff == "timestamp" else None,
            out_of_orderness="1m",
            idle_timeout="200ms",
        )

    for run in range(2):  # the second run: a fresh job (no checkpoints), same group
        sink = ls.CollectSink()
        p = ls.Pipeline()
        p.source(source()).sink(sink)
        await asyncio.wait_for(p.run(), 60)
        got = ids(sink.table())
        assert got == ids(table), (
            f"run {run}: missing {sum((ids(table) - got).values())}, "
            f"duplicated {sum((got - ids(table)).values())}"
        )


@pytest.mark.kafka
@pytest.mark.parametrize("handoff", ["timestamp", "offsets"])
async def test_restore_after_the_topic_grew(
    kafka: KafkaService, tmp_path: Path, handoff: str
) -> None:
    """Checkpoint mid-lake (file checkpoints, the run cancelled), more records produced, restored
    with the same URL: every record once across both runs, counted by a sink that records what
    it saw before the last completed checkpoint's barrier."""
    topic, table, cut = await setup(kafka, tmp_path / "lake", seed=32)
    more = events(500, 33)
    more = more.set_column(
        1, "event_id", pc.add(more.column("event_id"), pa.scalar(10**6, pa.int64()))
    )
    # newer than everything: shift by a day
    more = more.set_column(
        0,
        TIME,
        pc.cast(
            pc.add(pc.cast(more.column(TIME), pa.int64()), pa.scalar(24 * HOUR, pa.int64())),
            pa.timestamp("us", tz="UTC"),
        ),
    )
    url = (tmp_path / "ckpt").as_uri()

    class Sink(ls.CollectSink):
        def __init__(self) -> None:
            super().__init__()
            self.log: list[tuple[str, Any]] = []

        async def write(self, batch: pa.RecordBatch) -> None:
            await super().write(batch)
            self.log.append(("batch", batch))

        async def flush(self) -> None:
            self.log.append(("flush", None))

    def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
        import time

        time.sleep(0.01)
        return batch

    def build(sink: Sink) -> ls.Pipeline:
        source = ls.LambdaSource(
            ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA, batch_size=50),
            ls.KafkaStream(
                topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"
            ),
            handoff=handoff,
            cutoff=cut if handoff == "timestamp" else None,
            out_of_orderness="1m",
            idle_timeout="200ms",
            alignment=ls.Alignment(max_drift="10m"),
        )
        p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="100ms", keep=100))
        p.source(source).map(slow).sink(sink)
        return p

    first = Sink()
    task = asyncio.create_task(build(first).run())
    try:
        for _ in range(600):
            await asyncio.sleep(0.02)
            flushes = sum(1 for k, _ in first.log if k == "flush")
            if flushes >= 3:
                break
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    vals, stamps = jsons(more)
    await kafka.aproduce(topic, vals, partition=0, timestamps_ms=stamps)
    second = Sink()
    await asyncio.wait_for(build(second).run(), 120)
    after = ids(second.table())
    everything = ids(table) + ids(more)
    # the restored checkpoint is one of the first run's barriers: what the first run delivered
    # before that barrier plus what the second run delivered must be every record once
    prefixes: list[Counter[int]] = []
    seen: Counter[int] = Counter()
    for kind, payload in first.log:
        if kind == "flush":
            prefixes.append(Counter(seen))
        else:
            seen.update(payload.column("event_id").to_pylist())
    assert any(prefix + after == everything for prefix in prefixes), (
        f"no checkpoint prefix + restored run equals the input: restored run delivered "
        f"{sum(after.values())}, input {sum(everything.values())}, missing vs full prefix "
        f"{sum((everything - (prefixes[-1] + after)).values())}, duplicated "
        f"{sum(((prefixes[-1] + after) - everything).values())}"
    )


async def test_an_async_operator_hook_never_loses_records_silently(tmp_path: Path) -> None:
    """``async def on_batch`` on an ls.Operator subclass: the records must arrive (the hook
    awaited) or the pipeline must fail loudly — never an empty output with no error."""
    table = events(500, 34)

    class AsyncPass(ls.Operator):
        async def on_batch(self, batch: pa.RecordBatch, ctx: Any) -> None:  # type: ignore[override]
            ctx.emit(batch)

        async def on_watermark(self, watermark: int, ctx: Any) -> None:  # type: ignore[override]
            ctx.emit_watermark(watermark)

    p = ls.Pipeline()
    source = p.source(ls.MemorySource(table, TIME, batch_size=50))
    # refused when the graph is built, naming the hook, before any record could vanish
    with pytest.raises(ls.ConfigError, match=r"AsyncPass\.on_batch is `async def`"):
        source.process(AsyncPass())


class BarrierLog(ls.CollectSink):
    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Any]] = []

    async def write(self, batch: pa.RecordBatch) -> None:
        await super().write(batch)
        self.log.append(("batch", batch))

    async def flush(self) -> None:
        self.log.append(("flush", None))

    def prefixes(self) -> list[tuple[Counter[int], int | None]]:
        """(ids delivered before each barrier, max time delivered), starting with nothing."""
        out: list[tuple[Counter[int], int | None]] = [(Counter(), None)]
        seen: Counter[int] = Counter()
        newest: int | None = None
        for kind, payload in self.log:
            if kind == "flush":
                out.append((Counter(seen), newest))
            else:
                seen.update(payload.column("event_id").to_pylist())
                t = int(pc.max(pc.cast(payload.column(TIME), pa.int64())).as_py())
                newest = t if newest is None else max(newest, t)
        return out


def _slow(batch: pa.RecordBatch) -> pa.RecordBatch:
    import time

    time.sleep(0.015)
    return batch


@pytest.mark.kafka
@pytest.mark.parametrize(
    "change", ["compact-done-deleted", "commit-then-compact-done-deleted", "commit-compact-expire"]
)
async def test_restore_after_the_lake_was_compacted_under_the_job(
    kafka: KafkaService, tmp_path: Path, change: str
) -> None:
    """Offsets handoff, lake written in 4 commits (several files per partition); the job is
    cancelled after checkpoints mid-lake; then compactions rewrite partitions the job has
    finished (replaced files deleted), optionally after a new commit into those partitions, or
    everything is compacted and ``expire_replaced`` runs. The restored job needs none of the
    deleted files except in the last case, where it may fail with LakeStateError naming a file —
    but never lose or repeat a record."""
    table = events(4000, 35)
    times = pc.cast(table.column(TIME), pa.int64())
    cut = (int(pc.min(times).as_py()) // HOUR) * HOUR + 16 * HOUR
    archived = table.filter(pc.less(times, cut))
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    vals, stamps = jsons(table)
    await kafka.aproduce(topic, vals, partition=0, timestamps_ms=stamps)
    root = tmp_path / "lake"
    # 4 commits of interleaved rows (ids mod 4): every partition gets 4 files
    n = archived.num_rows
    writer = ParquetLakeWriter(root, TIME, row_group_rows=50)
    for k in range(4):
        rows = archived.filter(pc.equal(pc.bit_wise_and(archived.column("event_id"), 3), k))
        # offsets only advance to n on the commit that completes the archive
        writer.write(rows, offsets={0: n if k == 3 else 0}, topic=topic)
    url = (tmp_path / "ckpt").as_uri()

    def build(sink: BarrierLog) -> ls.Pipeline:
        source = ls.LambdaSource(
            ls.ParquetLake(root, TIME, schema=SCHEMA, batch_size=40),
            ls.KafkaStream(
                topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"
            ),
            handoff="offsets",
            out_of_orderness="1m",
            idle_timeout="200ms",
            alignment=ls.Alignment(max_drift="20m"),
        )
        p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="100ms", keep=100))
        p.source(source).map(_slow).sink(sink)
        return p

    first = BarrierLog()
    task = asyncio.create_task(build(first).run())
    try:
        for _ in range(1000):
            await asyncio.sleep(0.02)
            newest = first.prefixes()[-1][1]
            if newest is not None and newest >= cut - 8 * HOUR:
                break
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    prefixes = first.prefixes()
    # the restored checkpoint is at least the one of the barrier before the last (complete by
    # then); partitions an hour before what it had delivered are done
    assert len(prefixes) >= 3 and prefixes[-2][1] is not None
    done_before = prefixes[-2][1] // HOUR * HOUR
    first_hour = int(pc.min(times).as_py()) // HOUR * HOUR
    done = []
    for h in range(first_hour, done_before - HOUR, HOUR):
        stamp = pa.scalar(h, pa.timestamp("us", tz="UTC")).as_py()
        done.append(f"dt={stamp:%Y-%m-%d}/hour={stamp:%H}")
    assert len(done) >= 2, "the job did not get far enough before the cancel"
    w2 = ParquetLakeWriter(root, TIME, row_group_rows=50)
    if change == "commit-then-compact-done-deleted":
        extra = events(300, 36)
        extra = extra.set_column(
            1, "event_id", pc.add(extra.column("event_id"), pa.scalar(10**6, pa.int64()))
        )
        # records the archiver would have added later: beyond offset n on the topic
        e_times = pc.cast(extra.column(TIME), pa.int64())
        extra = extra.filter(pc.less(e_times, done_before - HOUR))
        vals, stamps = jsons(extra)
        await kafka.aproduce(topic, vals, partition=0, timestamps_ms=stamps)
        w2.write(extra, offsets={0: table.num_rows + extra.num_rows}, topic=topic)
        table = pa.concat_tables([table, extra])
    if change == "commit-compact-expire":
        compact(w2, min_files=1)
        expire_replaced(w2)
    else:
        result = compact(w2, min_files=1, partitions=done, delete_replaced=True)
        assert result.removed
    second = BarrierLog()
    refused: ls.LakeStateError | None = None
    try:
        await asyncio.wait_for(build(second).run(), 120)
    except ls.LakeStateError as exc:
        refused = exc
    if refused is not None:
        assert change == "commit-compact-expire", f"restore refused needlessly: {refused}"
        assert "file=" in str(refused)
        return
    after = ids(second.table())
    everything = ids(table)
    matches = [i for i, (pre, _) in enumerate(prefixes) if pre + after == everything]
    last = prefixes[-1][0] + after
    assert matches, (
        f"no checkpoint prefix + restored run is the input: restored run {sum(after.values())} "
        f"rows; vs the newest prefix missing {sum((everything - last).values())}, duplicated "
        f"{sum((last - everything).values())}"
    )
