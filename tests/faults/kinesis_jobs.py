"""The fault suite's hourly job over Kinesis, runnable as ``python -m tests.faults.kinesis_jobs``.

Kinesis-archiver-written lake (ParquetLake) → ``LambdaSource(KinesisStream, handoff=…)`` →
``key_by("user_id")`` → ``Tumbling(1h)`` ``emit="every"`` (count, distinct ids, id sum, amount
sum) → DuckDB upsert keyed by ``(user_id, window_end)``, ``flush="all"``, file:// checkpoints:
the same job, store and oracle as :mod:`tests.faults.jobs` ``--job hourly`` (whose helpers it
reuses), with the stream on moto's Kinesis server (the test process serves it over HTTP).

:func:`prepare_hourly` builds the data set: each shard holds its records ordered by event hour,
the records before an hour boundary are put first and archived by
:class:`lake.kinesis_archiver.KinesisArchiver` (recording next sequence numbers per shard), then
the rest is put — so both handoffs are exact. Progress lines as :mod:`tests.faults.jobs`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import lambdasource as ls
from lake.kinesis_archiver import KinesisArchiver
from lambdasource.checkpoints import Checkpoints
from lambdasource.sinks.duckdb import DuckDBUpsert
from lambdasource.sources.alignment import Alignment
from lambdasource.sources.kinesis.config import KinesisConfig
from lambdasource.sources.kinesis.stream import KinesisStream
from lambdasource.sources.lambda_source import LambdaSource
from tests.faults import jobs

REGION = "us-east-1"


def config(endpoint: str) -> KinesisConfig:
    return KinesisConfig(
        endpoint_url=endpoint,
        region=REGION,
        access_key_id="testing",
        secret_access_key="testing",
    )


def put_in_order(client: Any, stream: str, shard_id: str, table: pa.Table) -> list[int]:
    """Put ``table``'s rows into shard ``shard_id`` in order (explicit hash key); returns their
    sequence numbers."""
    shard = next(
        s for s in client.list_shards(StreamName=stream)["Shards"] if s["ShardId"] == shard_id
    )
    hash_key = shard["HashKeyRange"]["StartingHashKey"]
    sequences: list[int] = []
    values = jobs.to_json(table)
    for start in range(0, len(values), 500):
        response = client.put_records(
            StreamName=stream,
            Records=[
                {"Data": value, "PartitionKey": "k", "ExplicitHashKey": hash_key}
                for value in values[start : start + 500]
            ],
        )
        assert not response.get("FailedRecordCount"), response
        sequences += [int(r["SequenceNumber"]) for r in response["Records"]]
    assert sequences == sorted(sequences)
    return sequences


async def prepare_hourly(
    client: Any,
    endpoint: str,
    stream: str,
    lake: str,
    *,
    events: int,
    seed: int,
    shards: int = 2,
    archived: float = 0.5,
    commit_rows: int = 500,
) -> jobs.HourlyDataset:
    """``events`` records over one day on the ``shards`` shards of ``stream`` (a new stream):
    see the module docstring. ``positions``: ``event_id, partition`` (shard), ``offset``
    (sequence number)."""
    table = jobs.clickstream(events, seed)
    micros = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    first_hour = int(micros.min()) // jobs.HOUR_US * jobs.HOUR_US
    cutoff = first_hour + round(24 * archived) * jobs.HOUR_US
    parts = [jobs.hour_ordered(part) for part in jobs.split_partitions(table, shards, seed)]
    counts: dict[int, int] = {}
    for number, part in enumerate(parts):
        times = pc.cast(part.column("event_time"), pa.int64()).to_numpy()
        counts[number] = int(np.count_nonzero(times < cutoff))
    sequences: dict[int, list[int]] = {}
    for number, part in enumerate(parts):
        shard_id = f"shardId-{number:012d}"
        sequences[number] = await asyncio.to_thread(
            put_in_order, client, stream, shard_id, part.slice(0, counts[number])
        )
    summary = await KinesisArchiver(
        stream,
        jobs.lake_writer(lake),
        "event_time",
        config=config(endpoint),
        schema=jobs.SCHEMA,
        commit_rows=commit_rows,
        stop_at="latest",
        min_call_interval="10ms",
    ).run()
    offsets = {n: seqs[-1] + 1 for n, seqs in sequences.items() if seqs}
    assert summary.offsets == offsets, (summary.offsets, offsets)
    for number, part in enumerate(parts):
        shard_id = f"shardId-{number:012d}"
        sequences[number] += await asyncio.to_thread(
            put_in_order, client, stream, shard_id, part.slice(counts[number])
        )
    positions = pa.concat_tables(
        [
            pa.table(
                {
                    "event_id": part.column("event_id"),
                    "partition": pa.array(np.full(part.num_rows, number), pa.int64()),
                    "offset": pa.array(sequences[number], pa.int64()),
                }
            )
            for number, part in enumerate(parts)
        ]
    )
    return jobs.HourlyDataset(
        table=pa.concat_tables(parts),
        lake=lake,
        topic=stream,
        offsets=offsets,
        cutoff=cutoff,
        lake_rows=sum(counts.values()),
        commits=summary.commits,
        positions=positions,
    )


def build(args: argparse.Namespace) -> tuple[ls.Pipeline, LambdaSource]:
    stream = KinesisStream(
        args.stream,
        time_column="event_time",
        schema=jobs.SCHEMA,
        stop_at="latest",
        config=config(args.endpoint),
        max_records=args.batch,
        calls_per_second=50.0,  # moto does not throttle
        poll_interval="50ms",
        idle_timeout="300ms",
    )
    source = LambdaSource(
        jobs.lake_source(args.lake, args.batch),
        stream,
        handoff=args.handoff,
        out_of_orderness=jobs.OUT_OF_ORDERNESS,
        idle_timeout="300ms",
        alignment=Alignment(max_drift="30m"),
    )
    checkpoints = Checkpoints(args.checkpoints, interval=args.interval, keep=3)
    pipeline = ls.Pipeline(checkpoints=checkpoints, name="faults-kinesis-job", flush="all")
    sink = DuckDBUpsert(
        args.duckdb, table=jobs.HOURLY_TABLE, key=jobs.HOURLY_KEY, flush_interval="200ms"
    )
    delay = args.throttle_ms / 1000

    def throttle(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(delay)  # deliberately slow: lets the test kill inside each phase
        return batch

    (
        pipeline.source(source)
        .map(throttle, schema=jobs.SCHEMA, on_error="raise")
        .key_by(jobs.KEY)
        .window(ls.Tumbling("1h"), emit="every")
        .aggregate(
            n=ls.count(),
            ids=ls.count_distinct("event_id"),
            id_sum=ls.sum("event_id"),
            amount=ls.sum("amount"),
        )
        .sink(sink)
    )
    return pipeline, source


async def main_async(args: argparse.Namespace) -> None:
    pipeline, source = build(args)
    jobs.say("start")
    task = asyncio.create_task(pipeline.run(restore="latest"))
    handoff_said = False
    while not task.done():
        await asyncio.wait({task}, timeout=args.progress)
        if task.done():
            break
        phase = "lake"
        if source.metrics()["lake_finished"]:
            phase = "stream" if handoff_said else "handoff"
            handoff_said = True
        jobs.say("progress", **jobs.progress(pipeline, source, phase))
    await task
    metrics = pipeline.metrics()
    jobs.say(
        "done",
        rows=source.metrics()["rows"],
        checkpoints=metrics["checkpoints"],
        late=metrics["late"],
        dead_letters=metrics["dead_letters"],
        handoff={k: source.metrics().get(k) for k in ("handoff", "cutoff")},
        recorded_offsets=source.recorded if args.handoff == "offsets" else None,
    )


def command(**options: Any) -> list[str]:
    """The job's command line (``python -m tests.faults.kinesis_jobs --name value …``)."""
    cmd = [sys.executable, "-m", "tests.faults.kinesis_jobs"]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    return cmd


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.faults.kinesis_jobs", description=__doc__)
    ap.add_argument("--lake", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--endpoint", required=True, help="the Kinesis endpoint URL (moto)")
    ap.add_argument("--checkpoints", required=True, help="file:///dir")
    ap.add_argument("--duckdb", required=True, help="DuckDB file of the upsert store")
    ap.add_argument("--handoff", choices=("offsets", "timestamp"), default="offsets")
    ap.add_argument("--interval", default="200ms", help="checkpoint interval")
    ap.add_argument("--batch", type=int, default=100, help="rows per source batch")
    ap.add_argument("--throttle-ms", type=float, default=0.0, help="sleep per batch")
    ap.add_argument("--progress", type=float, default=0.05, help="seconds between lines")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(main_async(parse(argv)))


if __name__ == "__main__":
    main()
