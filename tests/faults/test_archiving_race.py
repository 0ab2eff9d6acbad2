"""Fresh offsets-handoff jobs starting while the archiver commits every ~0.2 s: every record must
arrive exactly once.

A producer writes the data set to a 2-partition topic over ~3 s; ``lake.archiver.Archiver``
follows it into a lake, committing every 200 ms (files, then a commit record with the offsets).
While it does, several fresh jobs (``LambdaSource(handoff="offsets")`` over an unbounded stream →
a sink that keeps every delivered event id) start at moments drawn from the seed. A job reads the
lake's recorded offsets and its file list: if those came from different commits (a commit
landing in between), the records of that commit are read twice (lake and stream) or never. The
oracle is the input alone: every generated event id exactly once (a multiset check), reported per
(user, hour) like the kill suite (:func:`tests.faults.oracle.compare_delivered`).

Figures per test (``FIGURES …``): runs, job starts, archiver commits during the run, time to
deliver everything. Replay one run with ``-k "seed-3"`` (start moments come from the seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from lambdasource.embedded import create_topic
from tests.faults import jobs, oracle
from tests.faults.live import LiveJob
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

EVENTS = 6_000
PARTITIONS = 2
PRODUCE_S = 3.0
COMMIT_INTERVAL = "200ms"
JOBS_PER_RUN = 3
SLOW_SEEDS = list(range(10))


async def produce_paced(
    bootstrap: str, topic: str, parts: list[pa.Table], seconds: float
) -> list[float]:
    """Produce each partition's records in order, the partitions interleaved, paced evenly over
    ``seconds``; returns the wall-clock times of the chunks."""
    from aiokafka import AIOKafkaProducer

    sends = [
        (p, v, ts)
        for p, part in enumerate(parts)
        for v, ts in zip(jobs.to_json(part), jobs.arrival_ms(part), strict=True)
    ]
    # interleave: i-th record of each partition at the same relative position
    order = np.argsort(
        np.concatenate([np.arange(part.num_rows) / max(1, part.num_rows) for part in parts]),
        kind="stable",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    chunks = max(1, int(seconds / 0.05))
    size = -(-len(order) // chunks)
    started = time.perf_counter()
    stamps: list[float] = []
    try:
        for c in range(chunks):
            futures = []
            for i in order[c * size : (c + 1) * size].tolist():
                p, value, ts = sends[i]
                futures.append(await producer.send(topic, value, partition=p, timestamp_ms=ts))
            await asyncio.gather(*futures)
            stamps.append(time.perf_counter())
            ahead = started + seconds * (c + 1) / chunks - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return stamps


async def race_run(
    kafka: KafkaService, root: Path, seed: int, lake_kind: str = "parquet"
) -> dict[str, Any]:
    """One run: produce + archive concurrently, start ``JOBS_PER_RUN`` fresh jobs meanwhile;
    check each job's delivered ids against the input. ``lake_kind``: parquet or iceberg."""
    rng = random.Random(seed)
    topic = f"race-{uuid.uuid4().hex[:8]}"
    lake = str(root / f"lake-{seed}")
    if lake_kind == "iceberg":
        lake = jobs.ICEBERG + lake
    table = jobs.clickstream(EVENTS, 1000 + seed)
    parts = jobs.split_partitions(table, PARTITIONS, seed)
    positions = pa.concat_tables(
        [
            pa.table(
                {
                    "event_id": part.column("event_id"),
                    "partition": pa.array(np.full(part.num_rows, p), pa.int64()),
                    "offset": pa.array(np.arange(part.num_rows), pa.int64()),
                }
            )
            for p, part in enumerate(parts)
        ]
    )
    events = pa.concat_tables(parts)
    expected = events.column("event_id").to_numpy()
    await create_topic(kafka.bootstrap, topic, PARTITIONS)
    archiver = jobs.make_archiver(
        kafka.bootstrap,
        topic,
        lake,
        commit_rows=10**6,  # commits by time only: every COMMIT_INTERVAL with something new
        commit_interval=COMMIT_INTERVAL,
        stop_at=None,
    )
    producing = asyncio.create_task(produce_paced(kafka.bootstrap, topic, parts, PRODUCE_S))
    archiving = asyncio.create_task(archiver.run())
    started_jobs: list[tuple[LiveJob, int, float]] = []  # job, archiver commits at start, t
    t0 = time.perf_counter()
    try:
        while archiver.metrics()["commits"] < 1:  # offsets handoff needs a commit
            assert not archiving.done(), archiving.result()
            assert time.perf_counter() - t0 < 20, "the archiver made no commit"
            await asyncio.sleep(0.02)
        t1 = time.perf_counter()
        moments = sorted(rng.uniform(0.0, PRODUCE_S * 0.8) for _ in range(JOBS_PER_RUN))
        for moment in moments:
            await asyncio.sleep(max(0.0, t1 + moment - time.perf_counter()))
            job = LiveJob(lake, topic, kafka.bootstrap, None, expected).start()
            started_jobs.append((job, archiver.metrics()["commits"], time.perf_counter() - t0))
        await producing
        results = []
        for job, commits_at_start, at in started_jobs:
            waited = None
            with contextlib.suppress(AssertionError):
                waited = await job.wait_rows(len(expected), 30.0)
            await asyncio.sleep(0.5)  # late duplicates would arrive now
            ids = job.sink.ids()
            check, figures = oracle.compare_delivered(ids, events, positions=positions)
            results.append(
                {
                    "started_s": round(at, 3),
                    "archiver_commits_at_start": commits_at_start,
                    "recorded_offsets": dict(job.source.recorded),
                    "lake_rows": job.source.metrics()["rows"].get("lake"),
                    "stream_rows": job.source.metrics()["rows"].get("stream"),
                    "caught_up_after_producer_s": None if waited is None else round(waited, 2),
                    "check": check,
                    **figures,
                }
            )
    finally:
        for job, _, _ in started_jobs:
            await job.stop()
        archiver.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(archiving, 10)
        if not producing.done():
            producing.cancel()
    return {"seed": seed, "commits": archiver.metrics()["commits"], "jobs": results}


def report(name: str, runs: list[dict[str, Any]]) -> None:
    starts = [j for r in runs for j in r["jobs"]]
    bad = [j for j in starts if not j["check"].ok]
    figures = {
        "runs": len(runs),
        "job_starts": len(starts),
        "archiver_commits": [r["commits"] for r in runs],
        "starts_failed": len(bad),
        "duplicated_records": sum(j["duplicated_records"] for j in starts),
        "missing_records": sum(j["missing_records"] for j in starts),
        "caught_up_after_producer_max_s": max(
            (j["caught_up_after_producer_s"] or 0.0) for j in starts
        )
        if starts
        else None,
    }
    for r in runs:
        for j in r["jobs"]:
            fields = {k: v for k, v in j.items() if k != "check"}
            print(f"seed={r['seed']} job: {json.dumps(fields, default=str)}")
    print(f"FIGURES {name}: {json.dumps(figures)}")
    messages = []
    for r in runs:
        for j in r["jobs"]:
            if not j["check"].ok:
                label = (
                    f"seed={r['seed']} job started at {j['started_s']}s after "
                    f"{j['archiver_commits_at_start']} archiver commits, recorded offsets "
                    f"{j['recorded_offsets']}, lake rows {j['lake_rows']}, stream rows "
                    f"{j['stream_rows']}; duplicated ids {j['duplicated_ids']}, missing ids "
                    f"{j['missing_ids']}"
                )
                messages.append(j["check"].message(label))
    assert not messages, "\n\n".join(messages)


@pytest.mark.slow
@pytest.mark.parametrize("lake_kind", ["parquet", "iceberg"])
@pytest.mark.parametrize("seed", SLOW_SEEDS, ids=[f"seed-{s}" for s in SLOW_SEEDS])
async def test_fresh_start_while_archiving_seeded(
    kafka: KafkaService, tmp_path: Path, seed: int, lake_kind: str
) -> None:
    """One run per seed and lake kind (the default run's case is in tests/edges)."""
    report(
        f"archiving-race-{lake_kind}-seed-{seed}",
        [await race_run(kafka, tmp_path, seed, lake_kind)],
    )
