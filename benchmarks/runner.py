"""The runner behind ``python -m benchmarks`` and ``lambdasource bench``: one benchmark or all."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import (
    bootstrap,
    checkpoints,
    engine,
    kinesis,
    lake,
    partition_reads,
    peers,
    scaleout,
    sinks,
    skew,
    stream,
)
from .common import RESULTS_DIR, Report


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Report]
    summary: Callable[[Report], str]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "engine",
            "Sliding(30d, 5m) count+sum per user, emit=changes: lambdasource vs DuckDB SQL "
            "(+ naive one-copy-per-window on a small input)",
            engine.add_arguments,
            engine.run,
            engine.summary,
        ),
        Benchmark(
            "lake",
            "lake scan rows/s: ParquetLake/IcebergLake (ordered, watermarked) vs pyarrow.dataset "
            "and pyiceberg to_arrow, local and moto S3",
            lake.add_arguments,
            lake.run,
            lake.summary,
        ),
        Benchmark(
            "sinks",
            "upsert sinks vs native bulk paths (DuckDB insert from Arrow, PostgreSQL COPY, "
            "pyiceberg append), insert and update-heavy",
            sinks.add_arguments,
            sinks.run,
            sinks.summary,
        ),
        Benchmark(
            "stream",
            "KafkaStream decode + watermarks vs raw aiokafka; lambda bootstrap phases",
            stream.add_arguments,
            stream.run,
            stream.summary,
        ),
        Benchmark(
            "kinesis",
            "KinesisStream ÷ a bare aiobotocore GetRecords loop over the same shards on moto",
            kinesis.add_arguments,
            kinesis.run,
            kinesis.summary,
        ),
        Benchmark(
            "checkpoints",
            "engine job throughput with checkpoints every 1 s and 10 s vs none; duration and size",
            checkpoints.add_arguments,
            checkpoints.run,
            checkpoints.summary,
        ),
        Benchmark(
            "bootstrap",
            "30d/5m latest bootstrap into DuckDB: from state vs replay vs one DuckDB query over "
            "the same lake files; peak RSS and state size",
            bootstrap.add_arguments,
            bootstrap.run,
            bootstrap.summary,
        ),
        Benchmark(
            "skew",
            "skew/memory: LambdaSource aligned vs unaligned — peak buffered state, RSS growth, "
            "throughput vs stream backlog",
            skew.add_arguments,
            skew.run,
            skew.summary,
        ),
        Benchmark(
            "partition_reads",
            "read amplification of N partition tasks over a lake: split (archiver) vs unsplit "
            "(every task filters by key) ÷ one read of the lake",
            partition_reads.add_arguments,
            partition_reads.run,
            partition_reads.summary,
        ),
        Benchmark(
            "scaleout",
            "bootstrap throughput of one job as 2 workers ÷ 1 worker of a consumer group, "
            "lake split per Kafka partition (issue 15 target >= 1.7 on 2 cores)",
            scaleout.add_arguments,
            scaleout.run,
            scaleout.summary,
        ),
        Benchmark(
            "peers",
            "the same Sliding(1d, 1h) count+sum per user on lambdasource (emit=every), DuckDB SQL, "
            "PyFlink SQL (HOP) and Bytewax, each peer in its own venv (skipped with a note if "
            "unavailable; first use downloads ~850 MB)",
            peers.add_arguments,
            peers.run,
            peers.summary,
        ),
    ]
}


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run lambdasource benchmarks (all of them when no name is given).",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help=f"results directory (default {RESULTS_DIR})"
    )
    # --out is accepted before or after the benchmark's name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=argparse.SUPPRESS, help="results directory")
    sub = parser.add_subparsers(dest="benchmark", metavar="NAME")
    for bench in BENCHMARKS.values():
        sub_parser = sub.add_parser(
            bench.name, parents=[common], help=bench.description, description=bench.description
        )
        bench.add_arguments(sub_parser)
    return parser


def run_one(bench: Benchmark, args: argparse.Namespace, out: Path) -> Report:
    """Run one benchmark; save its JSON and its Markdown section; print the section."""
    report = bench.run(args)
    path = report.save(out)
    section = f"## {bench.name}\n\n{bench.description}\n\n{bench.summary(report)}\n"
    path.with_suffix(".md").write_text(section)
    print()
    print(section)
    print(f"results: {path} (+ .md)")
    return report


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.list:
        for bench in BENCHMARKS.values():
            print(f"{bench.name:10} {bench.description}")
        return 0
    if args.benchmark is not None:
        reports = [run_one(BENCHMARKS[args.benchmark], args, args.out)]
    else:
        reports = []
        for bench in BENCHMARKS.values():
            sub_parser = argparse.ArgumentParser(prog=f"{prog} {bench.name}")
            bench.add_arguments(sub_parser)
            reports.append(run_one(bench, sub_parser.parse_args([]), args.out))
    if len(reports) > 1:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        combined = args.out / f"all-{stamp}.md"
        combined.write_text(
            "# lambdasource benchmarks\n\n"
            + "\n".join(
                f"## {b.name}\n\n{b.summary(r)}\n"
                for b, r in zip(BENCHMARKS.values(), reports, strict=True)
            )
        )
        print(f"all results: {combined}")
    failed = [note for r in reports for note in r.notes if note.startswith("RESULTS DIFFER")]
    return 1 if failed else 0
