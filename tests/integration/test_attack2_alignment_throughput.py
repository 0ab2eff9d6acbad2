"""Attack (round 2): alignment must not cap backlog throughput (DESIGN §3 "Alignment": "Flink's
older alignment limited a replay to drift ÷ update-interval of event time per wall second; ours
must not"; README: "Nothing caps backlog throughput: held rows leave the moment the global
catches up").

A live (unbounded) job on a topic whose partition 0 holds a sparse backlog — one record per hour,
a gap wider than ``max_drift + out_of_orderness`` — and (second case) an empty partition
1, idle after ``idle_timeout``. Unaligned, the backlog is delivered in tens
of milliseconds. Aligned, with one partition it is too (regression); with the idle empty
partition beside it (found: fails), each record waits for one fetch round (~``fetch_max_wait_ms``) before
the global watermark lets it out: ~0.1 s of wall time per record, i.e. at most one hour of event
time per 0.1 s — the capped replay the design rules out. A 30-day backlog of hourly records
takes over a minute instead of a blink; a year of them a quarter of an hour.

Oracle: every generated event id delivered once; wall time to deliver them all.
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
from lambdasource.timeutil import HOUR
from tests.integration.ordered import SCHEMA, TIME
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

T0 = 1_767_225_600_000_000  # 2026-01-01


def rows(times: np.ndarray, first_id: int) -> pa.Table:
    n = len(times)
    return pa.table(
        {
            TIME: pa.array(times.astype(np.int64), pa.timestamp("us", tz="UTC")),
            "event_id": pa.array(first_id + np.arange(n), pa.int64()),
            "user_id": pa.array(np.arange(n) % 7, pa.int64()),
            "amount": pa.array(np.ones(n), pa.float64()),
        }
    )


async def deliver_all(source: ls.LambdaSource, expected: Counter[int], limit: float) -> float:
    """Run the live pipeline until every expected id arrived; return the seconds it took."""
    sink = ls.CollectSink()
    p = ls.Pipeline()
    p.source(source).sink(sink)
    started = time.perf_counter()
    task = asyncio.create_task(p.run())
    total = sum(expected.values())
    try:
        while time.perf_counter() - started < limit and not task.done():
            await asyncio.sleep(0.02)
            if sum(b.num_rows for b in sink.batches) >= total:
                break
        elapsed = time.perf_counter() - started
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    got = Counter(sink.table().column("event_id").to_pylist())
    assert got == expected or elapsed >= limit, (
        f"missing {sum((expected - got).values())}, duplicated {sum((got - expected).values())}"
    )
    return elapsed


@pytest.mark.parametrize("partitions", [1, 2])
@pytest.mark.parametrize("drift", ["0s", "30m"])
async def test_a_sparse_live_backlog_is_not_throttled_by_alignment(
    kafka: KafkaService, tmp_path: Path, drift: str, partitions: int
) -> None:
    """Partition 0 holds the backlog; with 2 partitions, partition 1 is empty (idle)."""
    backlog = rows(T0 + HOUR + np.arange(100) * HOUR, 1_000_000)  # 100 hourly records
    topic = await asyncio.to_thread(kafka.new_topic, partitions)
    vals = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in backlog.to_pylist()]
    stamps = (pc.cast(backlog.column(TIME), pa.int64()).to_numpy() // 1000).tolist()
    await kafka.aproduce(topic, vals, partition=0, timestamps_ms=stamps)
    lake = rows(T0 + np.arange(100) * (HOUR // 100), 0)  # one dense hour before it
    ParquetLakeWriter(tmp_path / "lake", TIME).write(
        lake, offsets=dict.fromkeys(range(partitions), 0), topic=topic
    )
    expected = Counter(lake.column("event_id").to_pylist())
    expected.update(backlog.column("event_id").to_pylist())

    def source(alignment: ls.Alignment | None) -> ls.LambdaSource:
        return ls.LambdaSource(
            ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA),
            ls.KafkaStream(
                topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, max_batch_records=100000
            ),
            handoff="offsets",
            out_of_orderness="1m",
            idle_timeout="300ms",
            alignment=alignment,
        )

    unaligned = await deliver_all(source(None), expected, 60)
    aligned = await deliver_all(source(ls.Alignment(max_drift=drift)), expected, 60)
    # generous: a backlog of 100 records must not take seconds more than it does unaligned
    assert aligned <= 10 * unaligned + 2.0, (
        f"aligned {aligned:.2f}s vs unaligned {unaligned:.2f}s for 100 hourly records: "
        f"~{aligned / 100 * 1000:.0f} ms per record — one hour of event time per fetch round"
    )
