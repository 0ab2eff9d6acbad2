"""Attack (round 2): kill -9 while alignment holds rows of whole-topic fetches, then restart.

Three Kafka partitions — 0 and 2 dense over 12 hours, 1 sparse (one record every 2 hours over
4 days, so a single fetch of it spans days and alignment with ``max_drift="0s"`` holds almost all
of it) — ``max_batch_records=100000`` (one fetch takes a whole partition), a lake archived up to
recorded offsets, the exact offset handoff, a ``group_id``, checkpoints every 100 ms. The job
(this module run as ``python -m``) counts per (user, hour) — ``Tumbling(1h)``: count,
``count_distinct(event_id)``, ``sum(event_id)`` — into a DuckDB upsert store, ``flush="all"``.
It is SIGKILLed at several points and restarted until it finishes.

Oracle: DuckDB SQL over the generated input (written to a Parquet file by the test): the store
must equal it row for row — one lost record lowers a count, one duplicated raises count above
``count_distinct``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.timeutil import HOUR, MINUTE
from tests.integration.ordered import SCHEMA, TIME

T0 = 1_767_225_600_000_000
ROOT = Path(__file__).resolve().parents[2]


def part(p: int, times: np.ndarray) -> pa.Table:
    n = len(times)
    return pa.table(
        {
            TIME: pa.array(np.asarray(times, np.int64), pa.timestamp("us", tz="UTC")),
            "event_id": pa.array(p * 1_000_000 + np.arange(n), pa.int64()),
            "user_id": pa.array((np.arange(n) * 7 + p) % 11, pa.int64()),
            "amount": pa.array(np.ones(n), pa.float64()),
        }
    )


def dataset(seed: int) -> dict[int, pa.Table]:
    rng = np.random.default_rng(seed)
    return {
        0: part(0, np.sort(T0 + rng.integers(0, 12 * HOUR, 5000))),
        1: part(1, T0 + 17 * MINUTE + np.arange(48) * 2 * HOUR),
        2: part(2, np.sort(T0 + 3 * HOUR + rng.integers(0, 9 * HOUR, 4000))),
    }


# ---------------------------------------------------------------------------- the job (subprocess)


def job(args: argparse.Namespace) -> None:
    def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(0.01)
        return batch

    async def main() -> None:
        root = Path(args.root)
        source = ls.LambdaSource(
            ls.ParquetLake(root / "lake", TIME, schema=SCHEMA, batch_size=64),
            ls.KafkaStream(
                args.topic,
                args.bootstrap,
                time_column=TIME,
                schema=SCHEMA,
                stop_at="latest",
                group_id=args.group,
                commit_interval="50ms",
                max_batch_records=100_000,
            ),
            handoff="offsets",
            out_of_orderness="1m",
            idle_timeout="300ms",
            alignment=ls.Alignment(max_drift=args.drift),
        )
        p = ls.Pipeline(
            checkpoints=ls.Checkpoints((root / "ckpt").as_uri(), interval="100ms"), flush="all"
        )
        (
            p.source(source)
            .map(slow)
            .key_by("user_id")
            .window(ls.Tumbling("1h"))
            .aggregate(n=ls.count(), ids=ls.count_distinct("event_id"), id_sum=ls.sum("event_id"))
            .sink(
                ls.DuckDBUpsert(
                    str(root / "store.duckdb"), table="hourly", key=["user_id", "window_end"]
                )
            )
        )
        task = asyncio.create_task(p.run())
        while not task.done():
            print(json.dumps({"event": "progress"}), flush=True)
            await asyncio.sleep(0.05)
        await task
        print(json.dumps({"event": "done"}), flush=True)

    asyncio.run(main())


# ----------------------------------------------------------------------------------------- test


def run(cmd: list[str], kill_after: int | None, timeout: float = 120) -> bool:
    """Run; SIGKILL after ``kill_after`` progress lines. True when it was killed."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            if time.monotonic() > deadline:
                raise TimeoutError("job hung")
            if '"progress"' in line:
                seen += 1
                if kill_after is not None and seen >= kill_after:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return True
        proc.wait(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.returncode == 0, err[-3000:]
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        proc.stdout.close()


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.parametrize("drift", ["0s", "20m"])
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_while_alignment_holds_whole_partition_fetches(
    kafka: object, tmp_path: Path, drift: str, seed: int
) -> None:
    import duckdb

    parts = dataset(seed)
    topic = kafka.new_topic(3)  # type: ignore[attr-defined]
    for p, rows in parts.items():
        vals = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in rows.to_pylist()]
        stamps = (pc.cast(rows.column(TIME), pa.int64()).to_numpy() // 1000).tolist()
        kafka.produce(topic, vals, partition=p, timestamps_ms=stamps)  # type: ignore[attr-defined]
    offsets = {0: 1500, 1: 4, 2: 0}
    archived = pa.concat_tables([parts[p].slice(0, n) for p, n in offsets.items()])
    ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=100).write(
        archived, offsets=offsets, topic=topic
    )
    everything = pa.concat_tables(list(parts.values()))
    pq.write_table(everything, tmp_path / "input.parquet")
    cmd = [
        sys.executable,
        "-m",
        "tests.integration.test_attack2_kill_held",
        "--root",
        str(tmp_path),
        "--topic",
        topic,
        "--bootstrap",
        kafka.bootstrap,  # type: ignore[attr-defined]
        "--group",
        f"g-{topic}",
        "--drift",
        drift,
    ]
    rng = np.random.default_rng(seed)
    kills = 0
    for _ in range(4):
        if run(cmd, int(rng.integers(3, 20))):
            kills += 1
        else:
            break
    else:
        assert not run(cmd, None)
    assert kills >= 1, "the job finished before any kill"
    with duckdb.connect() as con:
        want = con.sql(
            f"""SELECT user_id, epoch_us(time_bucket(INTERVAL 1 hour, {TIME})) + 3600000000
                       AS end_us, count(*) AS n, count(DISTINCT event_id) AS ids,
                       sum(event_id) AS id_sum
                FROM read_parquet('{tmp_path / "input.parquet"}') GROUP BY ALL ORDER BY ALL"""
        ).fetchall()
        con.sql(f"ATTACH '{tmp_path / 'store.duckdb'}' AS s (READ_ONLY)")
        got = con.sql(
            """SELECT user_id, epoch_us(window_end) AS end_us, n, ids, id_sum
               FROM s.hourly ORDER BY ALL"""
        ).fetchall()
    wrong = sorted(set(got) ^ set(want))
    assert got == want, (
        f"{kills} kills: store has {len(got)} rows, reference {len(want)}; "
        f"differing rows (first 6): {wrong[:6]}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for name in ("root", "topic", "bootstrap", "group", "drift"):
        ap.add_argument(f"--{name}", required=True)
    job(ap.parse_args())
