"""kill -9 trials of a pipeline writing window rows into Kafka with ``exactly_once=True``.

The job (this module, ``python -m tests.faults.test_kafka_eos_kill JOB-ARGS``): a bounded
``KafkaStream`` over an input topic (2 partitions) → ``key_by(user_id)`` → ``Tumbling(1h)`` with
count, distinct ids, sum of ids and sum of amounts → ``KafkaUpsert(exactly_once=True)`` keyed by
``(user_id, window_end)``, checkpoints every 200 ms, throttled so a run lasts a few seconds. A
trial kills it with SIGKILL at seeded moments, restarts it (``restore="latest"``) until a run
finishes, then reads the output topic:

- ``read_committed``: every (user, hour) window row exactly once, with the values of the DuckDB
  SQL reference over the input events (:func:`tests.faults.oracle.compare_hourly`: a lost or
  duplicated input record, or a second row for a window, fails);
- ``read_uncommitted``: also the aborted rows of the killed runs (the difference is reported and,
  over the trials, must be non-empty: a kill really landed inside an open transaction).

Default run: one trial with two kills; ``slow``: seeded trials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY = ["user_id", "window_end"]


def job_main(argv: Sequence[str]) -> None:
    import lambdasource as ls
    from lambdasource.checkpoints import Checkpoints
    from lambdasource.sinks.kafka import KafkaUpsert
    from lambdasource.sources.kafka.stream import KafkaStream
    from tests.faults.jobs import SCHEMA

    parser = argparse.ArgumentParser()
    for name in ("bootstrap", "input", "output", "checkpoints", "tid"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--throttle-ms", type=int, default=60)
    args = parser.parse_args(argv)
    stream = KafkaStream(
        args.input,
        args.bootstrap,
        time_column="event_time",
        schema=SCHEMA,
        stop_at="latest",
        max_batch_records=50,
        out_of_orderness="10m",  # > the data's 2 min jitter: no record is late in any
    )  # interleaving of the two partitions (with 0s, a restart's other interleaving drops some)
    sink = KafkaUpsert(
        args.output,
        KEY,
        args.bootstrap,
        exactly_once=True,
        transactional_id=args.tid,
        flush_interval="100ms",
    )
    pipeline = ls.Pipeline(
        checkpoints=Checkpoints(args.checkpoints, interval="200ms", keep=3),
        name="kafka-eos",
        flush="all",
    )
    delay = args.throttle_ms / 1000

    def throttle(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(delay)  # slow on purpose: kills land inside the run
        return batch

    (
        pipeline.source(stream)
        .map(throttle, schema=SCHEMA, on_error="raise")
        .key_by("user_id")
        .window(ls.Tumbling("1h"), emit="every")
        .aggregate(
            n=ls.count(),
            ids=ls.count_distinct("event_id"),
            id_sum=ls.sum("event_id"),
            amount=ls.sum("amount"),
        )
        .sink(sink)
    )
    print(json.dumps({"event": "start"}), flush=True)
    pipeline.run_sync(restore="latest")
    metrics = pipeline.metrics()
    print(
        json.dumps(
            {"event": "done", "late": metrics["late"], "sink": metrics["sinks"]}, default=str
        )
    )


def run_once(cmd: list[str], kill_after: float | None, timeout: float = 120) -> bool:
    """Run the job; SIGKILL it ``kill_after`` s after it says start. True when it finished."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert '"start"' in first, f"job did not start: {first!r} {proc.stderr.read()[-2000:]}"  # type: ignore[union-attr]
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return False
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0 and "already ended after checkpoint" in err:
        return True  # the kill came after the previous run's end commit: refused, not redone
    assert proc.returncode == 0, f"job failed ({proc.returncode}): {err[-3000:]}"
    done = json.loads(out.strip().splitlines()[-1])
    assert done["late"] == 0, f"the job dropped {done['late']} late records"
    return True


def window_rows(records: list[tuple[Any, Any]]) -> pa.Table:
    """Output records → ``user_id, window_start, window_end, n, ids, id_sum, amount``."""

    def ts(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    values = [v for _, v in records if v is not None]
    return pa.table(
        {
            "user_id": pa.array([v["user_id"] for v in values], pa.int64()),
            "window_start": pa.array(
                [ts(v["window_start"]) for v in values], pa.timestamp("us", tz="UTC")
            ),
            "window_end": pa.array(
                [ts(v["window_end"]) for v in values], pa.timestamp("us", tz="UTC")
            ),
            "n": pa.array([v["n"] for v in values], pa.int64()),
            "ids": pa.array([v["ids"] for v in values], pa.int64()),
            "id_sum": pa.array([v["id_sum"] for v in values], pa.int64()),
            "amount": pa.array([v["amount"] for v in values], pa.float64()),
        }
    )


async def read_all(bootstrap: str, topic: str, isolation: str) -> list[tuple[Any, Any]]:
    from tests.integration.test_kafka_exactly_once import read_topic

    return await read_topic(bootstrap, topic, isolation, settle=True)


def trial(service: Any, tmp: Path, seed: int, kills: int, events: int = 3000) -> dict[str, Any]:
    from tests.faults.jobs import clickstream, produce, split_partitions
    from tests.faults.oracle import compare_hourly

    rng = random.Random(seed)
    table = clickstream(events, seed, users=12)
    source, output = service.new_topic(partitions=2), service.new_topic()
    asyncio.run(produce(service.bootstrap, source, split_partitions(table, 2, seed)))
    cmd = [
        sys.executable,
        "-m",
        "tests.faults.test_kafka_eos_kill",
        "--bootstrap",
        service.bootstrap,
        "--input",
        source,
        "--output",
        output,
        "--checkpoints",
        str(tmp / f"ck-{seed}"),
        "--tid",
        f"eos-{uuid.uuid4().hex[:8]}",
    ]
    landed = 0
    finished = False
    while not finished:  # a finished job is never run again (see the README's limits)
        kill_after = rng.uniform(1.0, 3.5) if landed < kills else None
        finished = run_once(cmd, kill_after)
        landed += not finished
    committed = asyncio.run(read_all(service.bootstrap, output, "read_committed"))
    uncommitted = asyncio.run(read_all(service.bootstrap, output, "read_uncommitted"))
    check = compare_hourly(window_rows(committed), table)
    assert check.ok, check.message(f"seed={seed} read_committed")
    return {
        "seed": seed,
        "kills_landed": landed,
        "committed": len(committed),
        "aborted_seen_by_read_uncommitted": len(uncommitted) - len(committed),
        "uncommitted_exact": compare_hourly(window_rows(uncommitted), table).ok,
    }


@pytest.mark.apache_kafka
def test_kill9_read_committed_sees_every_window_row_once(apache_kafka: Any, tmp_path: Path) -> None:
    result = trial(apache_kafka, tmp_path, seed=1, kills=2)
    print(result)
    assert result["kills_landed"] >= 1


@pytest.mark.slow
@pytest.mark.apache_kafka
def test_kill9_seeded_trials(apache_kafka: Any, tmp_path: Path) -> None:
    results = [trial(apache_kafka, tmp_path, seed=seed, kills=3) for seed in range(2, 8)]
    print(results)
    assert sum(r["kills_landed"] for r in results) >= 6
    # how many aborted rows read_uncommitted showed is reported, not asserted: a kill lands in
    # an open transaction with rows only sometimes (test_kafka_exactly_once shows it for sure)


if __name__ == "__main__":
    job_main(sys.argv[1:])
