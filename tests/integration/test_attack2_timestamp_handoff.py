"""Attack (round 2): the timestamp handoff over several partitions whose first record after the
cutoff comes at very different times — partition 1's only a day after the others', partition 2
empty — with ``max_drift="0s"`` and ``"10m"``, bounded and live.

Oracle: lake rows before the cutoff plus stream rows at or after it, each exactly once (event-id
multiset); no row at or before a watermark the next operator already received; no lead beyond
``max_drift + out_of_orderness`` (measured by our own pass-through operator).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.timeutil import HOUR, MINUTE
from tests.integration.ordered import SCHEMA, TIME, Recorder
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

T0 = 1_767_225_600_000_000
CUT = T0 + 8 * HOUR


def part(p: int, times: np.ndarray) -> pa.Table:
    n = len(times)
    return pa.table(
        {
            TIME: pa.array(np.asarray(times, np.int64), pa.timestamp("us", tz="UTC")),
            "event_id": pa.array(p * 1_000_000 + np.arange(n), pa.int64()),
            "user_id": pa.array(np.arange(n) % 5, pa.int64()),
            "amount": pa.array(np.ones(n), pa.float64()),
        }
    )


def data() -> dict[int, pa.Table]:
    rng = np.random.default_rng(7)
    dense0 = np.sort(T0 + rng.integers(0, 12 * HOUR, 3000))
    before1 = np.sort(T0 + rng.integers(0, 8 * HOUR, 800))
    late1 = CUT + 26 * HOUR + np.arange(50) * MINUTE  # first record after the cutoff: a day on
    return {
        0: part(0, dense0),
        1: part(1, np.concatenate([before1, late1])),
        2: part(2, np.zeros(0, np.int64)),
    }


async def produce(kafka: KafkaService, topic: str, p: int, rows: pa.Table) -> None:
    if rows.num_rows:
        vals = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in rows.to_pylist()]
        stamps = (pc.cast(rows.column(TIME), pa.int64()).to_numpy() // 1000).tolist()
        await kafka.aproduce(topic, vals, partition=p, timestamps_ms=stamps)


def expected(parts: dict[int, pa.Table]) -> Counter[int]:
    out: Counter[int] = Counter()
    for rows in parts.values():
        out.update(rows.column("event_id").to_pylist())
    return out


def check(rec: Recorder, want: Counter[int], bound: int) -> None:
    got = rec.ids()
    assert got == want, (
        f"missing {sum((want - got).values())} e.g. {sorted((want - got).elements())[:5]}, "
        f"duplicated {sum((got - want).values())} e.g. {sorted((got - want).elements())[:5]}"
    )
    late = rec.late()
    assert not late, f"{len(late)} late rows, first (id, time, watermark) {late[:3]}"
    assert rec.worst_lead() <= bound, (rec.worst_lead(), bound)


def setup_lake(root: Path, parts: dict[int, pa.Table]) -> None:
    everything = pa.concat_tables(list(parts.values()))
    t = pc.cast(everything.column(TIME), pa.int64())
    ParquetLakeWriter(root, TIME, row_group_rows=100).write(everything.filter(pc.less(t, CUT)))


def source(root: Path, kafka: KafkaService, topic: str, drift: str, live: bool) -> ls.LambdaSource:
    return ls.LambdaSource(
        ls.ParquetLake(root, TIME, schema=SCHEMA, batch_size=100),
        ls.KafkaStream(
            topic,
            kafka.bootstrap,
            time_column=TIME,
            schema=SCHEMA,
            stop_at=None if live else "latest",
            max_batch_records=50_000,
        ),
        handoff="timestamp",
        cutoff=CUT,
        out_of_orderness="2m",
        idle_timeout="300ms",
        alignment=ls.Alignment(max_drift=drift),
    )


@pytest.mark.parametrize("drift", ["0s", "10m"])
async def test_bounded_partitions_that_resume_at_different_times(
    kafka: KafkaService, tmp_path: Path, drift: str
) -> None:
    """Regression (passes)."""
    parts = data()
    topic = await asyncio.to_thread(kafka.new_topic, 3)
    for p, rows in parts.items():
        await produce(kafka, topic, p, rows)
    setup_lake(tmp_path / "lake", parts)
    rec = Recorder()
    p = ls.Pipeline()
    p.source(source(tmp_path / "lake", kafka, topic, drift, live=False)).process(rec).sink(
        ls.CollectSink()
    )
    await asyncio.wait_for(p.run(), 120)
    check(rec, expected(parts), {"0s": 0, "10m": 10 * MINUTE}[drift] + 2 * MINUTE)


@pytest.mark.parametrize("drift", ["0s", "10m"])
async def test_live_partitions_that_resume_at_different_times(
    kafka: KafkaService, tmp_path: Path, drift: str
) -> None:
    """Live: partition 1's post-cutoff records are already on the topic when the job starts
    (a backlog, not future data): they must arrive once, not late, within the bound."""
    parts = data()
    topic = await asyncio.to_thread(kafka.new_topic, 3)
    for p, rows in parts.items():
        await produce(kafka, topic, p, rows)
    setup_lake(tmp_path / "lake", parts)
    rec = Recorder()
    p = ls.Pipeline()
    p.source(source(tmp_path / "lake", kafka, topic, drift, live=True)).process(rec).sink(
        ls.CollectSink()
    )
    want = expected(parts)
    task = asyncio.create_task(p.run())
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < 60 and not task.done():
            await asyncio.sleep(0.05)
            if sum(rec.ids().values()) >= sum(want.values()):
                break
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    check(rec, want, {"0s": 0, "10m": 10 * MINUTE}[drift] + 2 * MINUTE)
