"""A checkpointed live stream soak: a producer writes continuously while the hourly job
(archiver-written lake → offsets handoff → live stream → ``Tumbling(1h)`` ``emit="every"`` →
DuckDB upsert keyed by ``(user_id, window_end)``) runs with checkpoints every 200 ms. Memory (RSS)
must stay flat and checkpoint durations stable, and at the end the whole store must equal the
DuckDB SQL reference over every produced event (:mod:`tests.faults.oracle`): one lost or
duplicated record anywhere fails.

To close every window of the data without asking the job, the producer ends with one sentinel
record per partition a day after the last event (user ``SENTINEL_USER``, not in the reference):
the watermark then passes every data window, while the sentinels' own window stays open (a
store row for it would be a premature emission, and fails as an unexpected row).

Default run: ~20 s. ``-m slow``: ~3 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.faults import jobs, oracle
from tests.faults.live import more_events
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

RATE = 1_500  # records per second produced
HOUR_US = 3_600_000_000


async def produce_continuously(
    bootstrap: str, topic: str, table: pa.Table, seconds: float, stop: asyncio.Event
) -> int:
    """Produce ``table`` in order, paced over ``seconds``, partitions interleaved."""
    from aiokafka import AIOKafkaProducer

    rng = np.random.default_rng(0)
    assign = rng.integers(0, 2, size=table.num_rows).tolist()
    values = jobs.to_json(table)
    stamps = jobs.arrival_ms(table)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent = 0
    started = time.perf_counter()
    chunk = max(1, table.num_rows // int(seconds * 10))
    try:
        while sent < table.num_rows and not stop.is_set():
            futures = [
                await producer.send(topic, values[i], partition=assign[i], timestamp_ms=stamps[i])
                for i in range(sent, min(sent + chunk, table.num_rows))
            ]
            await asyncio.gather(*futures)
            sent += len(futures)
            ahead = started + seconds * sent / table.num_rows - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return sent


def third_means(values: list[float]) -> tuple[float, float]:
    n = max(1, len(values) // 3)
    return statistics.fmean(values[:n]), statistics.fmean(values[-n:])


SENTINEL_USER = 0
SENTINEL_ID = 2 * 10**7


def sentinels(after: pa.Table, partitions: int) -> pa.Table:
    """One record per partition, a day after ``after``'s last event (see module docstring)."""
    last = pc.max(after.column("event_time")).value  # µs
    return pa.table(
        {
            "event_time": pa.array([last + 86_400_000_000] * partitions, pa.timestamp("us", "UTC")),
            "event_id": pa.array([SENTINEL_ID + p for p in range(partitions)], pa.int64()),
            "user_id": pa.array([SENTINEL_USER] * partitions, pa.int64()),
            "kind": pa.array(["view"] * partitions, pa.string()),
            "amount": pa.array([0.0] * partitions, pa.float64()),
        }
    ).cast(jobs.SCHEMA)


async def soak(kafka: KafkaService, root: Path, seconds: float) -> dict[str, Any]:
    topic = f"soak-{uuid.uuid4().hex[:8]}"
    ds = await jobs.prepare_hourly(
        kafka.bootstrap, topic, str(root / "lake"), events=4_000, seed=21, archived=16 / 24
    )
    days = max(1, int(seconds * RATE / 20_000))  # about 20k records per event-time day
    live = more_events(int(seconds * RATE), 2, seed=22, id_offset=10**7, days=days)
    assert pc.min(live.column("event_id")).as_py() > pc.max(ds.table.column("event_id")).as_py()
    args = jobs.parse(
        [
            "--job",
            "hourly",
            "--lake",
            ds.lake,
            "--topic",
            topic,
            "--bootstrap",
            kafka.bootstrap,
            "--checkpoints",
            (root / "ckpt").as_uri(),
            "--duckdb",
            str(root / "soak.duckdb"),
            "--interval",
            "200ms",
            "--batch",
            "500",
            "--live",
        ]
    )
    pipeline, _, _ = jobs.build(args)
    job = asyncio.create_task(pipeline.run(restore=None))
    stop = asyncio.Event()
    producer = asyncio.create_task(
        produce_continuously(kafka.bootstrap, topic, live, seconds, stop)
    )
    proc = psutil.Process()
    rss: list[float] = []
    durations: list[float] = []
    seen_ids: set[int] = set()
    ends = sentinels(live, 2)
    everything = pa.concat_tables([ds.table, live])  # the input the store must reflect
    last_window_end = (pc.max(everything.column("event_time")).value // HOUR_US + 1) * HOUR_US
    try:
        while not producer.done():
            await asyncio.sleep(1.0)
            if job.done():
                job.result()
                raise AssertionError("the job ended during the soak")
            rss.append(proc.memory_info().rss / 2**20)
            ck = pipeline.metrics()["checkpoints"]
            for cid, d in ck["durations_s"].items():
                if cid not in seen_ids:
                    seen_ids.add(cid)
                    durations.append(float(d))
        sent = producer.result()
        await jobs.produce_parts(
            kafka.bootstrap, topic, {p: ends.slice(p, 1) for p in range(ends.num_rows)}
        )
        # readiness only (what is compared comes from the input): wait until the sink has seen
        # a watermark past every data window, then a few flush intervals
        deadline = time.perf_counter() + 30
        while (pipeline.metrics()["sinks"]["duckdb"]["watermark"] or 0) < last_window_end - 1:
            if time.perf_counter() > deadline or job.done():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a checkpoint after the end: every emitted row flushed
        metrics = pipeline.metrics()
    finally:
        stop.set()
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        await asyncio.gather(producer, return_exceptions=True)
    assert sent == live.num_rows
    store = jobs.read_hourly_duckdb(root / "soak.duckdb")
    check = oracle.compare_hourly(store, everything, cutoff=ds.cutoff)
    print(f"soak oracle: {check.totals()}")
    assert check.ok, check.message(
        f"soak of {seconds}s (job's own figures: late={metrics['late']} "
        f"dead_letters={metrics['dead_letters']})"
    )
    warm = rss[2:] if len(rss) > 6 else rss
    first, last = third_means(warm)
    d_first, d_last = third_means(durations)
    figures = {
        "seconds": seconds,
        "records": everything.num_rows,
        "store_groups": check.store_groups,
        "checkpoints": len(durations),
        "rss_mb_first_third": round(first, 1),
        "rss_mb_last_third": round(last, 1),
        "rss_mb_max": round(max(rss), 1),
        "ckpt_s_first_third": round(d_first, 4),
        "ckpt_s_last_third": round(d_last, 4),
        "ckpt_s_max": round(max(durations), 4),
        "ckpt_failed": metrics["checkpoints"]["failed"],
    }
    print(f"FIGURES soak: {figures}")
    assert metrics["checkpoints"]["failed"] == 0, metrics["checkpoints"]
    assert last - first < max(40.0, 0.15 * first), figures  # flat: no growth with records
    assert d_last < 3 * d_first + 0.05, figures  # stable checkpoint times
    return figures


@pytest.mark.slow  # 23 s of the default run's 15 minutes; the kill/restart trials stay in it
async def test_soak_short(kafka: KafkaService, tmp_path: Path) -> None:
    await soak(kafka, tmp_path, 20.0)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_soak_long(kafka: KafkaService, tmp_path: Path) -> None:
    await soak(kafka, tmp_path, 180.0)
