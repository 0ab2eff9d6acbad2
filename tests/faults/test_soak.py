"""A checkpointed live stream soak: a producer writes continuously while the bootstrap job
(lake → offsets handoff → live stream → sliding window → DuckDB upsert) runs with checkpoints
every 200 ms. Memory (RSS) must stay flat and checkpoint durations stable; every produced record
is read exactly once (source counts) and the store matches the SQL reference at the end.

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
import pytest

from tests.faults import jobs
from tests.faults.live import more_events
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

RATE = 1_500  # records per second produced


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


async def soak(kafka: KafkaService, root: Path, seconds: float) -> dict[str, Any]:
    topic = f"soak-{uuid.uuid4().hex[:8]}"
    ds = await jobs.prepare(kafka.bootstrap, topic, str(root / "lake"), events=4_000, seed=21)
    days = max(1, int(seconds * RATE / 20_000))  # about 20k records per event-time day
    live = more_events(int(seconds * RATE), 2, seed=22, id_offset=10**7, days=days)
    args = jobs.parse(
        [
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
    pipeline, source, _ = jobs.build(args)
    job = asyncio.create_task(pipeline.run(restore=None))
    stop = asyncio.Event()
    producer = asyncio.create_task(
        produce_continuously(kafka.bootstrap, topic, live, seconds, stop)
    )
    proc = psutil.Process()
    rss: list[float] = []
    durations: list[float] = []
    seen_ids: set[int] = set()
    total = ds.table.num_rows + live.num_rows
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
        deadline = time.perf_counter() + 30
        while sum(source.metrics()["rows"].values()) < total:
            assert time.perf_counter() < deadline, source.metrics()["rows"]
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a checkpoint after the end: every emitted row flushed
        metrics = pipeline.metrics()
        final_watermark = metrics["sinks"]["duckdb"]["watermark"]
        rows = source.metrics()["rows"]
    finally:
        stop.set()
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        await asyncio.gather(producer, return_exceptions=True)
    assert sent == live.num_rows
    assert rows["lake"] + rows["stream"] == total, rows  # exactly once at the source
    store = jobs.read_duckdb(root / "soak.duckdb")
    everything = pa.concat_tables([ds.table, live])
    diff = jobs.diff_stores(
        store, jobs.reference_store(everything, final_watermark), final_watermark
    )
    assert not diff, "\n".join(diff)
    warm = rss[2:] if len(rss) > 6 else rss
    first, last = third_means(warm)
    d_first, d_last = third_means(durations)
    figures = {
        "seconds": seconds,
        "records": total,
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


async def test_soak_short(kafka: KafkaService, tmp_path: Path) -> None:
    await soak(kafka, tmp_path, 20.0)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_soak_long(kafka: KafkaService, tmp_path: Path) -> None:
    await soak(kafka, tmp_path, 180.0)
