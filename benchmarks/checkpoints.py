"""Checkpoint overhead: the engine benchmark's job with checkpoints vs without, same run.

The job is ``benchmarks.engine``'s (``key_by(user_id)`` → ``Sliding(30d, 5m)`` count + sum,
``emit="changes"`` → ``CollectSink``) on a smaller input: ``--events`` (2M) generated over
``--days`` (30), replayed ``--passes`` times (10) with event times shifted by ``days`` per pass by
:class:`ReplaySource` (checkpointable: its position is (pass, batch)). So the run is long enough
for a 10 s interval to fire while the state stays that of a 30-day window. Variants run
interleaved, best of ``--repeat``: no checkpoints (the baseline), then checkpoints every
``--intervals`` (10 s, 1 s) to a local directory. Every variant's output is checked equal to the
baseline's (checkpoints must not change results).

Also reported: the measured cost *per checkpoint* (extra seconds over the baseline ÷ checkpoints
taken, from the shortest interval) and the slowdown it implies at each interval (cost ÷ interval),
the figure that holds for runs of any length. Checkpoint duration (trigger → manifest written) and
size come from ``pipeline.metrics()["checkpoints"]``.

Run: ``python -m benchmarks.checkpoints [--events 2000000] [--passes 10] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from lake.generator import generate_clickstream
from lambdasource.sources.base import Source, SourceOutput

from .common import RESULTS_DIR, Report, fmt, markdown_table, timed
from .engine import KEY, TIME, US_PER_DAY, VALUE, compare, parse_duration

console = Console(highlight=False)


class ReplaySource(Source):
    """``batches`` replayed ``passes`` times, event time shifted by ``period`` µs per pass.

    Watermark after each batch: the max time so far (the input is sorted by time within a pass).
    Position: (pass, batches emitted in that pass, max time seen).
    """

    name = "replay"

    def __init__(self, batches: list[pa.RecordBatch], passes: int, period: int) -> None:
        self.time_column = TIME
        self.batches = batches
        self.passes = passes
        self.period = period
        self._pass = 0
        self._index = 0
        self._max: int | None = None

    @property
    def schema(self) -> pa.Schema:
        return self.batches[0].schema

    async def run(self, out: SourceOutput) -> None:
        column = self.batches[0].schema.get_field_index(TIME)
        field = self.batches[0].schema.field(TIME)
        while self._pass < self.passes:
            shift = pa.scalar(self._pass * self.period, pa.int64())
            while self._index < len(self.batches):
                batch = self.batches[self._index]
                times = pc.add(batch.column(column).cast(pa.int64()), shift)
                await out.emit(batch.set_column(column, field, times.cast(field.type)))
                self._index += 1
                top = int(pc.max(times).as_py())
                self._max = top if self._max is None else max(self._max, top)
                await out.emit_watermark(self._max)
                await asyncio.sleep(0)
            self._pass += 1
            self._index = 0

    def snapshot(self) -> tuple[int, int, int | None]:
        return (self._pass, self._index, self._max)

    def restore(self, state: tuple[int, int, int | None]) -> None:
        self._pass, self._index, self._max = state


def run_job(
    batches: list[pa.RecordBatch],
    passes: int,
    period: int,
    size: int,
    slide: int,
    checkpoints: Any,
) -> tuple[pa.Table, dict[str, Any]]:
    import lambdasource as ls

    pipeline = ls.Pipeline(checkpoints=checkpoints)
    sink = ls.CollectSink()
    (
        pipeline.source(ReplaySource(batches, passes, period))
        .key_by(KEY)
        .window(ls.Sliding(size, slide), emit="changes")
        .aggregate(clicks=ls.count(), revenue=ls.sum(VALUE))
        .sink(sink)
    )
    asyncio.run(pipeline.run(restore=None))
    return sink.table(), pipeline.metrics()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=2_000_000, help="events (default 2M)")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct users (default 100k)")
    parser.add_argument("--days", type=int, default=30, help="days of event time (default 30)")
    parser.add_argument("--passes", type=int, default=10, help="replays of the input (10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=parse_duration, default="30d", help="window size (30d)")
    parser.add_argument("--slide", type=parse_duration, default="5m", help="window slide (5m)")
    parser.add_argument("--batch-size", type=int, default=100_000, help="source batch rows")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs each; best is reported")
    parser.add_argument(
        "--intervals",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=["10s", "1s"],
        help="checkpoint intervals, comma-separated (default 10s,1s)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="checkpoint directory (temp)")


def run(args: argparse.Namespace) -> Report:
    from lambdasource.checkpoints import Checkpoints

    parameters = {
        "events": args.events,
        "keys": args.keys,
        "days": args.days,
        "passes": args.passes,
        "seed": args.seed,
        "size_us": args.size,
        "slide_us": args.slide,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "intervals": args.intervals,
    }
    report = Report("checkpoints", parameters)
    total = args.events * args.passes
    label = f"{args.events:,} events · {args.keys:,} keys · {args.days} d, × {args.passes} passes"
    console.print(f"[bold]checkpoint benchmark[/]: {label}; engine job, checkpoints vs none")
    table = generate_clickstream(args.events, args.days, args.keys, seed=args.seed)
    batches = table.combine_chunks().to_batches(max_chunksize=args.batch_size)
    period = args.days * US_PER_DAY
    base_dir = Path(args.dir or tempfile.mkdtemp(prefix="ls-ckpt-bench-"))
    variants: list[str | None] = [None, *args.intervals]
    times: dict[str | None, list[float]] = {v: [] for v in variants}
    stats: dict[str | None, list[dict[str, Any]]] = {v: [] for v in variants}
    reference: pa.Table | None = None
    equal: dict[str | None, bool] = {}
    try:
        for i in range(args.repeat):
            for variant in variants:
                directory = base_dir / (variant or "none")
                shutil.rmtree(directory, ignore_errors=True)
                config = None if variant is None else Checkpoints(str(directory), variant)
                gc.collect()
                with timed() as t:
                    result, metrics = run_job(
                        batches, args.passes, period, args.size, args.slide, config
                    )
                times[variant].append(t.seconds)
                ck = metrics["checkpoints"]
                stats[variant].append(ck)
                if variant is None and reference is None:
                    reference = result
                elif variant not in equal:
                    assert reference is not None
                    equal[variant] = compare(result, reference).equal
                del result
                console.print(
                    f"  run {i + 1}: {variant or 'none':>6} {t.seconds:6.2f}s "
                    f"checkpoints={ck.get('count', 0)} "
                    f"mean={fmt(ck.get('mean_duration_s'))}s size={fmt(ck.get('size_bytes'))}B"
                )
    finally:
        if args.dir is None:
            shutil.rmtree(base_dir, ignore_errors=True)

    base = min(times[None])
    per_checkpoint: float | None = None
    for variant in reversed(variants):  # the shortest interval takes the most checkpoints
        if variant is None:
            continue
        best = min(range(len(times[variant])), key=lambda j: times[variant][j])
        count = stats[variant][best].get("count", 0)
        if count:
            per_checkpoint = max(0.0, (times[variant][best] - base) / count)
            break
    for variant in variants:
        best_i = min(range(len(times[variant])), key=lambda j: times[variant][j])
        ck = stats[variant][best_i]
        seconds = times[variant][best_i]
        interval_s = None if variant is None else parse_duration(variant) / 1e6
        report.rows.append(
            {
                "checkpoints": variant or "none",
                "seconds": seconds,
                "events_per_s": total / seconds,
                "ratio_vs_none": seconds / base,
                "times": times[variant],
                "taken": ck.get("count", 0),
                "mean_duration_s": ck.get("mean_duration_s"),
                "max_duration_s": ck.get("max_duration_s"),
                "size_bytes": ck.get("size_bytes"),
                "projected_slowdown": (
                    per_checkpoint / interval_s
                    if per_checkpoint is not None and interval_s
                    else None
                ),
                "equal": equal.get(variant, True),
            }
        )
    report.extra["cost_per_checkpoint_s"] = per_checkpoint
    if not all(equal.values()):
        report.notes.append("RESULTS DIFFER between checkpointed and plain runs")
    return report


def summary(report: Report) -> str:
    columns = [
        ("checkpoints", "checkpoints"),
        ("seconds", "best s"),
        ("events_per_s", "events/s"),
        ("ratio_vs_none", "× none"),
        ("taken", "taken"),
        ("mean_duration_s", "mean dur s"),
        ("max_duration_s", "max dur s"),
        ("size_bytes", "size B"),
        ("projected_slowdown", "cost/interval"),
        ("equal", "same output"),
    ]
    per = report.extra.get("cost_per_checkpoint_s")
    return (
        markdown_table(report.rows, columns)
        + f"\n\ncost per checkpoint (extra s over no checkpoints ÷ checkpoints taken): {fmt(per)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoints", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    report = run(args)
    path = report.save(args.out)
    console.print(summary(report))
    console.print(f"saved {path}")
    return 0 if all(r["equal"] for r in report.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
