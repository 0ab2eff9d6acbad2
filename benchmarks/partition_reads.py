"""Read amplification of a lake read by N partition tasks (issue 15 §2), same run, same files.

A scale-out job runs one task per Kafka partition; each reads its part of the lake with
``ParquetLake.for_partition(p, N, key)``. Two lakes hold the same rows:

- ``split`` — written per Kafka partition, as the ``lake`` archiver writes now (the partition in
  the file name): a task lists only its partition's files, so N tasks together read the lake
  about once;
- ``unsplit`` — one file per hour, no partition in the path (a lake not written by the archiver,
  or archived before the split): every task reads every file and keeps the rows whose key maps
  to its partition (Kafka's default partitioner), so N tasks read it N times.

Baseline: the whole lake read once by one ``ParquetLake`` (same lake). Reported per lake and N:
the tasks' summed read time and bytes ÷ the baseline's (the read amplification; tasks run one
after the other here, so the ratio is total work, not wall time on N cores), and a check that
the tasks' rows add up to the lake's. Timings are best of ``--repeat``. Run:
``python -m benchmarks partition_reads`` (or ``python -m benchmarks.partition_reads``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from lake.generator import generate_clickstream
from lake.writer import ParquetLakeWriter
from lambdasource.partitioning import KeyPartitioner
from lambdasource.sources.lake.parquet import ParquetLake

from .common import Report, markdown_table
from .lake import CountingOutput

KEY = "user_id"


def _read(lake: ParquetLake) -> tuple[int, int]:
    """(rows emitted, bytes read) of one run of ``lake``."""
    out = CountingOutput()
    asyncio.run(lake.run(out))
    return out.rows, int(lake.metrics()["bytes_read"])


def _timed(lakes: list[ParquetLake], repeat: int) -> tuple[float, int, int]:
    """Best-of-``repeat`` summed time of reading ``lakes`` one after the other; rows, bytes."""
    best = float("inf")
    rows = size = 0
    for _ in range(repeat):
        start = time.perf_counter()
        results = [_read(lake) for lake in lakes]
        best = min(best, time.perf_counter() - start)
        rows = sum(r for r, _ in results)
        size = sum(b for _, b in results)
    return best, rows, size


def write_lakes(root: Path, table: pa.Table, partitions: int) -> None:
    """The same rows as an ``unsplit`` lake and a ``split`` one (per Kafka partition)."""
    ParquetLakeWriter(root / "unsplit", "event_time").write(table)
    owners = KeyPartitioner(KEY, partitions).partitions_of(table)
    per_partition = {p: table.filter(pa.array(owners == p)) for p in range(partitions)}
    ParquetLakeWriter(root / "split", "event_time").write(per_partition)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=1_000_000, help="events (default 1M)")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--partitions",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[2, 4, 8],
        help="task counts N measured (default 2,4,8)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="timed runs each; best reported")


def run(args: argparse.Namespace) -> Report:
    table = generate_clickstream(args.events, args.days, args.users, seed=args.seed)
    report = Report(
        "partition_reads",
        {
            "events": args.events,
            "days": args.days,
            "users": args.users,
            "partitions": args.partitions,
            "repeat": args.repeat,
        },
    )
    for partitions in args.partitions:
        with tempfile.TemporaryDirectory(prefix="partition-reads-") as tmp:
            root = Path(tmp)
            write_lakes(root, table, partitions)
            for kind in ("split", "unsplit"):
                path = root / kind
                base_s, base_rows, base_bytes = _timed(
                    [ParquetLake(path, "event_time")], args.repeat
                )
                tasks = [
                    ParquetLake(path, "event_time").for_partition(p, partitions, KEY)
                    for p in range(partitions)
                ]
                tasks_s, task_rows, task_bytes = _timed(tasks, args.repeat)
                report.rows.append(
                    {
                        "lake": kind,
                        "tasks": partitions,
                        "rows": base_rows,
                        "rows_match": task_rows == base_rows == table.num_rows,
                        "baseline_s": round(base_s, 3),
                        "tasks_s": round(tasks_s, 3),
                        "time_ratio": tasks_s / base_s,
                        "bytes_ratio": task_bytes / base_bytes if base_bytes else None,
                    }
                )
                print(
                    f"lake={kind} N={partitions}: one read {base_s:.2f}s, {partitions} tasks "
                    f"{tasks_s:.2f}s (x{tasks_s / base_s:.2f} time, "
                    f"x{task_bytes / max(base_bytes, 1):.2f} bytes)",
                    flush=True,
                )
    if not all(row["rows_match"] for row in report.rows):
        report.notes.append("RESULTS DIFFER: the tasks' rows do not add up to the lake's")
    report.extra["files"] = {
        "unsplit": "one file per hour",
        "split": "one file per (hour, Kafka partition)",
    }
    return report


COLUMNS = [
    ("lake", "lake"),
    ("tasks", "tasks N"),
    ("rows", "rows"),
    ("baseline_s", "one read s"),
    ("tasks_s", "N tasks s (summed)"),
    ("time_ratio", "time ÷ one read"),
    ("bytes_ratio", "bytes ÷ one read"),
    ("rows_match", "rows match"),
]


def summary(report: Report) -> str:
    lines = [markdown_table(report.rows, COLUMNS)]
    lines.append(
        "\nsplit: the archiver's layout (a task lists its partition's files); unsplit: every "
        "task reads every file and filters rows by key (read amplification ≈ N)."
    )
    lines.extend(f"Note: {note}" for note in report.notes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.partition_reads", description=__doc__
    )
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
