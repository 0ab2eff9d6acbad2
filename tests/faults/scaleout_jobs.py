"""The hourly job of the fault suite run as scale-out tasks, and its co-partitioned data set.

:func:`prepare_partitioned` makes a topic whose records are partitioned by ``user_id``
(``user_id % partitions``: every key on one partition, as a keyed producer does) and, per
partition ``p``, a lake ``<root>/p<p>`` holding that partition's records before an hour
boundary with a commit recording ``{p: offset}`` — what a task of ``p`` reads with the offsets
handoff. :class:`HourlyTasks` is the task factory (picklable: spawned workers get it): lambda
source of the partition's lake and ``KafkaStream(partitions=[p], stop_at="latest")`` →
``Tumbling(1h)`` ``emit="every"`` (count, distinct ids, id sum, amount) → ``PostgresUpsert``
keyed by ``(user_id, window_end)``, ``flush="all"`` — the store :func:`tests.faults.oracle.
compare_hourly` checks record by record.

``python -m tests.faults.scaleout_jobs --join GROUP ...`` runs one worker and prints JSON lines:
``{"event": "start"}``, ``{"event": "assigned", "partitions": [...]}`` after each rebalance,
``{"event": "progress", ...}`` every ``--progress`` s, ``{"event": "done", "runs": [...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.checkpoints import Checkpoints
from lambdasource.partitioning import KeyPartitioner
from lambdasource.scaleout import TaskContext, Worker, serve
from lambdasource.sinks.postgres import PostgresUpsert
from lambdasource.sources.alignment import Alignment
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.sources.lambda_source import LambdaSource
from tests.faults.jobs import (
    HOUR_US,
    HOURLY_KEY,
    HOURLY_TABLE,
    KEY,
    OUT_OF_ORDERNESS,
    SCHEMA,
    clickstream,
    hour_ordered,
    produce_parts,
)


@dataclass(frozen=True)
class PartitionedDataset:
    """Every record (``table``), where each lives (``positions``), the per-partition lakes."""

    table: pa.Table
    topic: str
    lake_root: str
    offsets: dict[int, int]
    cutoff: int
    positions: pa.Table


async def prepare_partitioned(
    bootstrap: str,
    topic: str,
    lake_root: str | Path,
    *,
    partitions: int,
    events: int,
    seed: int,
    users: int = 40,
    archived: float = 0.5,
) -> PartitionedDataset:
    """Produce ``events`` records keyed to partitions by ``user_id % partitions`` (the topic
    must exist with ``partitions`` partitions) and write each partition's records before the
    hour nearest ``archived`` of the day into its own lake with the offsets they cover."""
    table = clickstream(events, seed, users)
    cutoff, parts, offsets = _split(
        table, table.column(KEY).to_numpy() % partitions, partitions, archived
    )
    await produce_parts(bootstrap, topic, parts)
    for p, part in parts.items():
        writer = ParquetLakeWriter(f"{lake_root}/p{p}", "event_time", row_group_rows=256)
        writer.write(part.slice(0, offsets[p]), offsets={p: offsets[p]}, topic=topic)
    return PartitionedDataset(
        table=pa.concat_tables(parts.values()),
        topic=topic,
        lake_root=str(lake_root),
        offsets=offsets,
        cutoff=cutoff,
        positions=_positions(parts),
    )


def _split(
    table: pa.Table, owner: np.ndarray, partitions: int, archived: float
) -> tuple[int, dict[int, pa.Table], dict[int, int]]:
    """``(cutoff, parts, offsets)``: the hour nearest ``archived`` of the day, each partition's
    rows (``owner`` per row) in hour order, and per partition how many lie before the cutoff."""
    micros = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    cutoff = int(micros.min()) // HOUR_US * HOUR_US + round(24 * archived) * HOUR_US
    parts = {p: hour_ordered(table.filter(pa.array(owner == p))) for p in range(partitions)}
    offsets = {
        p: int(np.count_nonzero(pc.cast(part.column("event_time"), pa.int64()).to_numpy() < cutoff))
        for p, part in parts.items()
    }
    return cutoff, parts, offsets


async def prepare_keyed_lake(
    bootstrap: str,
    topic: str,
    lake: str | Path,
    *,
    partitions: int,
    events: int,
    seed: int,
    users: int = 40,
    archived: float = 0.5,
) -> PartitionedDataset:
    """One lake for every partition, as an archiver writes it (a commit recording every
    partition's offset), over a topic keyed by ``str(user_id)`` with Kafka's default
    partitioner: what a job file's tasks split with ``for_partition`` (murmur2 over the key)."""
    table = clickstream(events, seed, users)
    owner = KeyPartitioner([KEY], partitions).partitions_of(table)  # key str(user_id), murmur2
    cutoff, parts, offsets = _split(table, owner, partitions, archived)
    await produce_parts(bootstrap, topic, parts, keyed=True)
    writer = ParquetLakeWriter(str(lake), "event_time", row_group_rows=256)
    prefix = pa.concat_tables(part.slice(0, offsets[p]) for p, part in parts.items())
    writer.write(prefix, offsets=offsets, topic=topic)
    return PartitionedDataset(
        table=pa.concat_tables(parts.values()),
        topic=topic,
        lake_root=str(lake),
        offsets=offsets,
        cutoff=cutoff,
        positions=_positions(parts),
    )


def _positions(parts: dict[int, pa.Table]) -> pa.Table:
    return pa.concat_tables(
        pa.table(
            {
                "event_id": part.column("event_id"),
                "partition": pa.array(np.full(part.num_rows, p), pa.int64()),
                "offset": pa.array(np.arange(part.num_rows), pa.int64()),
            }
        )
        for p, part in parts.items()
    )


@dataclass(frozen=True)
class HourlyTasks:
    """The task factory of the scaled-out hourly job (see the module docstring)."""

    lake_root: str
    topic: str
    bootstrap: str
    postgres: str
    interval: str = "300ms"
    batch: int = 100
    throttle_ms: float = 0.0

    def __call__(self, context: TaskContext) -> ls.Pipeline:
        lake = ParquetLake(
            f"{self.lake_root}/p{context.partition}",
            "event_time",
            schema=SCHEMA,
            batch_size=self.batch,
        )
        stream = KafkaStream(
            self.topic,
            self.bootstrap,
            time_column="event_time",
            schema=SCHEMA,
            stop_at="latest",
            partitions=[context.partition],
            max_batch_records=self.batch,
        )
        source = LambdaSource(
            lake,
            stream,
            handoff="offsets",
            out_of_orderness=OUT_OF_ORDERNESS,
            idle_timeout="300ms",
            alignment=Alignment(max_drift="30m"),
        )
        pipeline = ls.Pipeline(
            checkpoints=Checkpoints(context.checkpoint_url, interval=self.interval, keep=3),
            name="scaleout-hourly",
            flush="all",
        )
        flow = pipeline.source(source)
        if self.throttle_ms > 0:
            delay = self.throttle_ms / 1000

            def throttle(batch: pa.RecordBatch) -> pa.RecordBatch:
                time.sleep(delay)  # deliberately slow: the test rebalances mid-job
                return batch

            flow = flow.map(throttle, schema=SCHEMA, on_error="raise")
        (
            flow.key_by(KEY)
            .window(ls.Tumbling("1h"), emit="every")
            .aggregate(
                n=ls.count(),
                ids=ls.count_distinct("event_id"),
                id_sum=ls.sum("event_id"),
                amount=ls.sum("amount"),
            )
            .sink(
                PostgresUpsert(
                    self.postgres, table=HOURLY_TABLE, key=HOURLY_KEY, flush_interval="200ms"
                )
            )
        )
        return pipeline


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}, default=str) + "\n")
    sys.stdout.flush()


async def main_async(args: argparse.Namespace) -> None:
    tasks = HourlyTasks(
        args.lake_root,
        args.topic,
        args.bootstrap,
        args.postgres,
        interval=args.interval,
        batch=args.batch,
        throttle_ms=args.throttle_ms,
    )
    worker = Worker(
        tasks,
        topic=args.topic,
        bootstrap_servers=args.bootstrap,
        group=args.join,
        checkpoints=args.checkpoints,
        worker_id=args.worker_id,
        session_timeout=args.session_timeout,
        heartbeat_interval="500ms",
    )
    say("start", pid=os.getpid(), worker=worker.worker_id)
    run = asyncio.create_task(serve(worker))
    rebalances = 0
    while not run.done():
        await asyncio.wait({run}, timeout=args.progress)
        if worker.membership.rebalances != rebalances:
            rebalances = worker.membership.rebalances
            say("assigned", partitions=sorted(worker.membership.assigned))
        say(
            "progress",
            tasks={
                t.task_id: {"records": t.summary()["records"], "state": t.metrics()["state"]}
                for t in worker.tasks.values()
            },
        )
    await run
    say("done", runs=worker.runs, finished=sorted(worker.finished))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.faults.scaleout_jobs")
    ap.add_argument("--join", required=True, help="consumer group")
    ap.add_argument("--lake-root", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--postgres", required=True)
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--worker-id", default=None)
    ap.add_argument("--interval", default="300ms")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--throttle-ms", type=float, default=0.0)
    ap.add_argument("--session-timeout", default="6s")
    ap.add_argument("--progress", type=float, default=0.2)
    return ap.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main_async(parse()))
