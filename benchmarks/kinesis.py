"""Kinesis benchmark: KinesisStream ÷ a bare aiobotocore GetRecords loop over the same shards.

moto's Kinesis server is started in its own process (``moto_server``: its CPU is not the
client's), a stream with ``--shards`` shards gets ``--events`` JSON events (PutRecords, 500 a
call, random partition keys). Then, alternating, ``--repeat`` times each, in this process:

- **bare GetRecords loop** — per shard concurrently, GetShardIterator(TRIM_HORIZON) then
  GetRecords (``--limit`` records a call) until caught up, touching each record's data: what any
  aiobotocore consumer pays for HTTP and botocore's parsing;
- **KinesisStream** — ``KinesisStream(stop_at="latest")`` driven into a counting output: the same
  calls plus opening (ListShards, each shard's first retained record, a LATEST sentinel per
  shard), decoding every answer into an Arrow batch of the declared schema, per-shard watermarks;
  ``calls_per_second`` unlimited (the shard limit, 5 calls/s on Kinesis, is no cost moto has) and,
  as a second row, the default 5.

Reported: records/s of each, the stream's best ÷ the loop's best, and the same for process CPU
time (steadier than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from lambdasource.embedded import free_port, wait_for_port
from lambdasource.sources.kinesis import KinesisConfig, KinesisStream

from .common import Report, fmt, markdown_table

SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("user_id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)
BASE_MS = 1_700_000_000_000
STREAM = "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=50_000, help="events (default 50k)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--limit", type=int, default=10_000, help="records per GetRecords")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs each; best reported")
    parser.add_argument("--seed", type=int, default=0)


def _config(port: int) -> KinesisConfig:
    return KinesisConfig(
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        access_key_id="bench",
        secret_access_key="bench",
    )


def _fill(port: int, shards: int, events: int, seed: int) -> None:
    import botocore.session

    client = botocore.session.get_session().create_client(
        "kinesis", **_config(port).client_kwargs()
    )
    client.create_stream(StreamName=STREAM, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=STREAM, WaiterConfig={"Delay": 0.1})
    rng = random.Random(seed)
    for first in range(0, events, 500):
        entries = []
        for i in range(first, min(events, first + 500)):
            user = rng.randrange(10_000)
            value = {
                "event_time": BASE_MS + i * 10,
                "user_id": user,
                "kind": "click",
                "amount": i * 0.25,
            }
            entries.append({"Data": orjson.dumps(value), "PartitionKey": f"user{user}"})
        client.put_records(StreamName=STREAM, Records=entries)


async def _bare_loop(port: int, limit: int) -> int:
    """Every record of every shard through plain aiobotocore calls; returns the count."""
    async with _config(port).create_client() as client:
        listed = (await client.list_shards(StreamName=STREAM))["Shards"]

        async def shard(shard_id: str) -> int:
            iterator = (
                await client.get_shard_iterator(
                    StreamName=STREAM, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
                )
            )["ShardIterator"]
            count = 0
            while iterator:
                answer = await client.get_records(ShardIterator=iterator, Limit=limit)
                records = answer["Records"]
                count += sum(1 for record in records if record["Data"])
                iterator = answer.get("NextShardIterator")
                if not records and answer.get("MillisBehindLatest", 0) == 0:
                    break
            return count

        counts = await asyncio.gather(*(shard(s["ShardId"]) for s in listed))
        return sum(counts)


class _Count:
    """A SourceOutput counting rows."""

    def __init__(self) -> None:
        self.rows = 0

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        self.rows += batch.num_rows

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        pass

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        raise AssertionError(f"dead letter at {position}: {reason}")

    async def barrier_point(self) -> None:
        pass


async def _stream(port: int, limit: int, calls_per_second: float) -> int:
    stream = KinesisStream(
        STREAM,
        time_column="event_time",
        schema=SCHEMA,
        stop_at="latest",
        config=_config(port),
        max_records=limit,
        calls_per_second=calls_per_second,
    )
    out = _Count()
    await stream.run(out)
    return out.rows


def _timed(run: Any) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    count = asyncio.run(run())
    return time.perf_counter() - wall, time.process_time() - cpu, count


def run(args: argparse.Namespace) -> Report:
    report = Report(
        "kinesis",
        {
            "events": args.events,
            "shards": args.shards,
            "limit": args.limit,
            "repeat": args.repeat,
            "server": "moto_server (own process)",
        },
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, what="moto Kinesis")
        started = time.perf_counter()
        _fill(port, args.shards, args.events, args.seed)
        print(f"put {args.events} events in {time.perf_counter() - started:.1f}s", flush=True)
        variants: dict[str, Any] = {
            "bare GetRecords loop": lambda: _bare_loop(port, args.limit),
            "KinesisStream (unpaced)": lambda: _stream(port, args.limit, 1e6),
            "KinesisStream (5 calls/s/shard)": lambda: _stream(port, args.limit, 5.0),
        }
        best: dict[str, tuple[float, float]] = {}
        for attempt in range(args.repeat):
            for name, variant in variants.items():
                wall, cpu, count = _timed(variant)
                if count != args.events:
                    report.notes.append(f"RESULTS DIFFER: {name} read {count} of {args.events}")
                previous = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(previous[0], wall), min(previous[1], cpu))
                print(f"run {attempt + 1} {name}: {wall:.2f}s wall, {cpu:.2f}s CPU", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    base_wall, base_cpu = best["bare GetRecords loop"]
    for name, (wall, cpu) in best.items():
        report.rows.append(
            {
                "variant": name,
                "records": args.events,
                "wall_s": round(wall, 3),
                "records_per_s": round(args.events / wall),
                "ratio": round(base_wall / wall, 3),
                "cpu_s": round(cpu, 3),
                "cpu_ratio": round(base_cpu / cpu, 3) if cpu else None,
            }
        )
    return report


COLUMNS = [
    ("variant", "variant"),
    ("records", "records"),
    ("wall_s", "best wall s"),
    ("records_per_s", "records/s"),
    ("ratio", "throughput ÷ bare loop"),
    ("cpu_s", "CPU s"),
    ("cpu_ratio", "CPU: bare ÷ this"),
]


def summary(report: Report) -> str:
    lines = [markdown_table(report.rows, COLUMNS)]
    lines.append(
        f"\n{fmt(report.parameters['events'])} events over {report.parameters['shards']} shards "
        "on moto_server; best of each over alternating runs in one process."
    )
    lines.extend(f"Note: {note}" for note in report.notes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kinesis", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run(args)
    path = report.save(args.out) if args.out else report.save()
    print(summary(report))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
