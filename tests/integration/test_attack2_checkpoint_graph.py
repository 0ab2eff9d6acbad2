"""Attack (round 2): checkpoints across runs a user makes — the graph edited between runs, restore
by id, ``restore=None`` then ``"latest"``, ``Checkpoints.clear()``.

A bounded lake job (``Tumbling(1h)`` count per user, ``emit="every"``, ``flush="all"``) is
cancelled after a few completed checkpoints, then run again. Oracle: every (user, window_end) row
any run emits must equal the reference count (computed from the input table with pyarrow), and
the rows of both runs together must cover the reference — a window restored empty emits a lower
count, one restored twice a higher one. Graph edits that change state must fail with
``IncompatibleStateError`` instead.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.generator import generate_clickstream
from lake.writer import ParquetLakeWriter
from lambdasource.timeutil import HOUR
from tests.integration.ordered import SCHEMA, TIME


def events(n: int = 3000, seed: int = 5) -> pa.Table:
    table = generate_clickstream(n, 1, 10, seed=seed, jitter="0s").select(SCHEMA.names)
    return table.cast(SCHEMA).sort_by(TIME)


def reference(table: pa.Table, size: int = HOUR) -> dict[tuple[int, int], int]:
    t = pc.cast(table.column(TIME), pa.int64())
    end = pc.add(pc.multiply(pc.divide(t, size), size), size)
    g = (
        pa.table({"u": table.column("user_id"), "e": end})
        .group_by(["u", "e"])
        .aggregate([("u", "count")])
    )
    return {
        (u, e): n
        for u, e, n in zip(
            g.column("u").to_pylist(),
            g.column("e").to_pylist(),
            g.column("u_count").to_pylist(),
            strict=True,
        )
    }


def rows(sink: ls.CollectSink) -> list[tuple[int, int, int]]:
    t = sink.table()
    if t.num_rows == 0:
        return []
    end = pc.cast(t.column("window_end"), pa.int64()).to_pylist()
    return list(zip(t.column("user_id").to_pylist(), end, t.column("n").to_pylist(), strict=True))


class Sink(ls.CollectSink):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


def _slow(batch: pa.RecordBatch) -> pa.RecordBatch:
    time.sleep(0.01)
    return batch


def build(root: Path, sink: Sink, variant: str = "base", **kw: Any) -> ls.Pipeline:
    url = (root / "ckpt").as_uri()
    p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="100ms", keep=100), flush="all")
    lake_kw: dict[str, Any] = {"schema": SCHEMA, "batch_size": 7 if variant == "batch" else 30}
    s = p.source(ls.ParquetLake(root / "lake", TIME, **lake_kw)).map(_slow)
    if variant == "filter":  # a stateless step added before the window: state must carry over
        s = s.filter(pc.field("amount") >= 0).map(lambda b: b)
    s.key_by("user_id").window(ls.Tumbling("1h")).aggregate(n=ls.count()).sink(sink)
    return p


async def run_until_checkpoints(p: ls.Pipeline, sink: Sink, n: int = 3, **kw: Any) -> None:
    task = asyncio.create_task(p.run(**kw))
    try:
        for _ in range(3000):
            await asyncio.sleep(0.02)
            if sink.flushes >= n or task.done():
                break
        assert not task.done(), "the run ended before it could be interrupted"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def check(table: pa.Table, *sinks: Sink) -> None:
    ref = reference(table)
    seen: dict[tuple[int, int], int] = {}
    wrong = []
    for sink in sinks:
        for u, e, n in rows(sink):
            if ref.get((u, e)) != n:
                wrong.append((u, e, n, ref.get((u, e))))
            seen[(u, e)] = n
    assert not wrong, f"{len(wrong)} windows with a wrong count (user, end, got, want): {wrong[:5]}"
    missing = set(ref) - set(seen)
    assert not missing, f"{len(missing)} windows never emitted, e.g. {sorted(missing)[:5]}"


def setup(tmp_path: Path) -> pa.Table:
    table = events()
    ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=50).write(table)
    return table


@pytest.mark.parametrize("variant", ["base", "filter", "batch"])
async def test_restore_with_compatible_edits_is_exact(tmp_path: Path, variant: str) -> None:
    """Regression: unchanged graph, a filter + map added before the window, a different lake
    batch size — the restore continues exactly."""
    table = setup(tmp_path)
    first = Sink()
    await run_until_checkpoints(build(tmp_path, first), first)
    second = Sink()
    await asyncio.wait_for(build(tmp_path, second, variant).run(), 120)
    check(table, first, second)


async def test_restore_none_then_latest_then_by_id(tmp_path: Path) -> None:
    """Regression: run 1 checkpoints and is cancelled; run 2 (restore=None) starts fresh in a new
    lineage and is cancelled; ``restore="latest"`` resumes run 2's lineage (exact w.r.t. run 2's
    output); restoring one of run 1's checkpoints by id resumes run 1 exactly."""
    table = setup(tmp_path)
    first = Sink()
    await run_until_checkpoints(build(tmp_path, first), first)
    ckpt = tmp_path / "ckpt"
    ids_after_first = sorted(
        int(d.name.split("-")[-1]) for d in ckpt.rglob("chk-*") if (d / "MANIFEST.json").exists()
    )
    assert ids_after_first, "no complete checkpoint found on disk"
    second = Sink()
    await run_until_checkpoints(build(tmp_path, second), second, n=2, restore=None)
    # a fresh start must have re-emitted windows from the very beginning
    first_hour_rows = [r for r in rows(second) if r[1] == min(e for _, e in reference(table))]
    assert first_hour_rows or not rows(second)
    third = Sink()
    await asyncio.wait_for(build(tmp_path, third).run(restore="latest"), 120)
    check(table, second, third)
    fourth = Sink()
    await asyncio.wait_for(build(tmp_path, fourth).run(restore=ids_after_first[-1]), 120)
    check(table, first, fourth)


async def test_restore_of_a_missing_id_fails_clearly(tmp_path: Path) -> None:
    setup(tmp_path)
    first = Sink()
    await run_until_checkpoints(build(tmp_path, first), first)
    with pytest.raises((ls.CheckpointError, ls.ConfigError, ls.StateError)):
        await asyncio.wait_for(build(tmp_path, Sink()).run(restore=987654), 60)


async def test_clear_then_run_starts_fresh(tmp_path: Path) -> None:
    """Regression: after ``clear()`` the default run (restore="latest") starts from the start."""
    table = setup(tmp_path)
    first = Sink()
    await run_until_checkpoints(build(tmp_path, first), first)
    deleted = await ls.Checkpoints((tmp_path / "ckpt").as_uri()).clear()
    assert deleted
    second = Sink()
    await asyncio.wait_for(build(tmp_path, second).run(), 120)
    check(table, second)
