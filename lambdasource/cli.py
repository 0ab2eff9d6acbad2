"""The ``lambdasource`` command line (also ``python -m lambdasource``).

Commands (DESIGN §4): ``demo``, ``bench``, and — registered now, built by later issues —
``bootstrap``, ``backfill``, ``archive``, ``inspect`` and ``run JOB.toml``.

Conventions: errors are one line on stderr (``lambdasource: error: …``); ``--verbose`` adds the
full traceback. Exit codes: 0 success, 1 failure (including a failed verification), 2 usage
errors and commands not implemented yet, 130 interrupted.

The CLI is the one place that composes ``lambdasource`` with the ``lake`` tools and the
``benchmarks`` of a source checkout; it imports them lazily, inside the commands that need them,
so ``import lambdasource`` never imports ``lake``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PROG = "lambdasource"


class CliError(Exception):
    """A failure reported as one line; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# --- not implemented yet --------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    name: str
    issue: int
    help: str
    epilog: str
    positionals: tuple[tuple[str, str], ...] = ()


PLANNED: tuple[Planned, ...] = (
    Planned(
        "bootstrap",
        7,
        "lake + stream → windows → upsert store (the lambda source end to end)",
        "example (planned):\n  lambdasource bootstrap --lake data/clicks --bootstrap-servers "
        "127.0.0.1:9092 --topic clicks --into duckdb:///features.duckdb --table user_30d",
    ),
    Planned(
        "run",
        7,
        "run a declarative job file (lake, stream, handoff, windows, sink, checkpoints)",
        "example (planned):\n  lambdasource run job.toml",
        (("job", "the job file (TOML)"),),
    ),
)


@dataclass(frozen=True)
class Command:
    """A command implemented in its own module, which provides ``add_arguments(parser)`` and
    ``command(args) -> int`` (imported when the parser is built; heavy imports stay inside)."""

    name: str
    module: str
    help: str
    epilog: str


COMMANDS: tuple[Command, ...] = (
    Command(
        "inspect",
        "lambdasource.sources.lake.inspect",
        "a lake's partitions, row counts, time ranges, gaps, files and recorded offsets",
        "examples:\n"
        "  lambdasource inspect data/clicks\n"
        "  lambdasource inspect s3://bucket/clicks --s3-endpoint http://127.0.0.1:9000\n"
        "  lambdasource inspect --iceberg db.clicks --catalog-uri sqlite:///cat.db \\\n"
        "      --warehouse file:///data/wh",
    ),
    Command(
        "archive",
        "lake.archiver",
        "Kafka topic → hour-partitioned lake (Parquet or Iceberg), recording the offsets each "
        "commit covers",
        "examples:\n"
        "  lambdasource archive --bootstrap-servers 127.0.0.1:9092 --topic clicks \\\n"
        "      --lake data/clicks --time-column event_time --format json \\\n"
        "      --schema 'event_time:timestamp[ms, UTC],user_id:int64,kind:string' --stop-at latest",
    ),
    Command(
        "backfill",
        "lambdasource.backfill",
        "lake → upsert store (DuckDB, PostgreSQL, Iceberg, compacted Kafka, Parquet)",
        "examples:\n"
        "  lambdasource backfill --lake data/clicks --time-column event_time \\\n"
        "      --into duckdb:///clicks.duckdb --table clicks --key event_id\n"
        "  lambdasource backfill --lake s3://bucket/clicks --time-column event_time \\\n"
        "      --into postgresql://postgres@127.0.0.1:5432/app --table purchases --key event_id \\\n"
        "      --where \"kind = 'purchase'\" --start 2026-11-01 --until 2026-11-08",
    ),
)


def _not_implemented(planned: Planned) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        raise CliError(
            f"{planned.name}: not implemented yet (issue {planned.issue})", code=EXIT_USAGE
        )

    return command


# --- demo -----------------------------------------------------------------------------------------

DEMO_SIZE = "30d"
DEMO_SLIDE = "5m"


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _format_time(micros: int | None, pattern: str = "%Y-%m-%d %H:%M:%S") -> str:
    if micros is None:
        return "–"
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC).strftime(pattern)


def upsert_state(changelog: pa.Table, key: str) -> pa.Table:
    """What an upsert store keyed by ``key`` holds after applying ``changelog`` in order:
    each key's last row, without keys whose last row is a deletion. Sorted by key."""
    if changelog.num_rows == 0:
        return changelog.select([key, "clicks", "revenue"])
    indexed = changelog.append_column("__row", pa.array(range(changelog.num_rows), pa.int64()))
    last = indexed.group_by(key).aggregate([("__row", "max")]).column("__row_max")
    rows = indexed.take(last)
    rows = rows.filter(pc.invert(rows.column("_deleted")))
    return rows.select([key, "clicks", "revenue"]).sort_by(key)


@dataclass
class Verification:
    ok: bool
    keys: int
    message: str


def verify_latest(events: pa.Table, result: pa.Table, window: Any) -> Verification | None:
    """Check the ``latest`` output against the DuckDB SQL reference (``lambdasource.reference``).

    The reference's ``changes`` changelog gives each key's value at every window end; the newest
    value per key is what an upsert store fed by ``emit="latest"`` must hold after the run.
    Returns None when the reference module is not available.
    """
    try:
        from lambdasource import reference
    except ImportError:  # hook: the reference is optional for the CLI
        return None
    expected_log = reference.sliding_changelog(
        events,
        time_column="event_time",
        keys="user_id",
        window=window,
        aggregates={"clicks": ("count", None), "revenue": ("sum", "amount")},
    )
    expected = upsert_state(expected_log.sort_by("window_end"), "user_id")
    actual = upsert_state(result, "user_id")
    if expected.num_rows != actual.num_rows:
        return Verification(
            False,
            actual.num_rows,
            f"MISMATCH: {actual.num_rows:,} keys in the output, {expected.num_rows:,} expected",
        )
    differs = pc.sum(
        pc.or_(
            pc.or_(
                pc.not_equal(actual.column("user_id"), expected.column("user_id")),
                pc.not_equal(actual.column("clicks"), expected.column("clicks")),
            ),
            pc.not_equal(actual.column("revenue"), expected.column("revenue")),
        ).cast(pa.int64())
    ).as_py()
    if differs:
        return Verification(False, actual.num_rows, f"MISMATCH: {differs:,} keys differ")
    return Verification(True, actual.num_rows, f"verified: {actual.num_rows:,} keys match")


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    import lambdasource as ls
    from lake.generator import generate_clickstream  # the CLI composes lake + engine

    console = Console(highlight=False)
    console.print(
        "[bold]lambdasource demo[/] — the engine on generated, in-memory data.\n"
        "[yellow]Not wired yet:[/] the Parquet/Iceberg lake (issue 3), the Kafka stream and "
        "handoff (issue 4), the upsert store (issue 5) and checkpoints (issue 6); the end-to-end "
        "demo arrives with issue 7. Results go to an in-memory CollectSink."
    )

    with console.status(f"generating {args.events:,} clickstream events …"):
        start = time.perf_counter()
        events = generate_clickstream(args.events, args.days, args.keys, seed=args.seed)
        events = events.combine_chunks()
        generated = time.perf_counter() - start
    times = events.column("event_time").cast(pa.int64())
    first_us = pc.min(times).as_py() if events.num_rows else None
    last_us = pc.max(times).as_py() if events.num_rows else None
    console.print(
        f"generated {events.num_rows:,} events for {args.keys:,} users over {args.days} days "
        f"({_format_time(first_us)} → {_format_time(last_us)} UTC) in {generated:.1f}s"
    )

    window = ls.Sliding(DEMO_SIZE, DEMO_SLIDE)
    pipeline = ls.Pipeline()
    sink = ls.CollectSink()
    (
        pipeline.source(
            ls.MemorySource(
                events, time_column="event_time", batch_size=args.batch_size, out_of_orderness="0s"
            )
        )
        .key_by("user_id")
        .window(window, emit="latest")
        .aggregate(clicks=ls.count(), revenue=ls.sum("amount"))
        .sink(sink)
    )
    console.print(
        f"running: key_by(user_id) → Sliding({DEMO_SIZE}, {DEMO_SLIDE}) count + sum(amount), "
        'emit="latest" → CollectSink'
    )

    progress = Progress(
        BarColumn(bar_width=20),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} events"),
        TextColumn("{task.fields[rate]} ev/s · watermark {task.fields[watermark]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task_id = progress.add_task("run", total=events.num_rows, rate="–", watermark="–")
    started = time.perf_counter()

    def show(metrics: dict[str, Any]) -> None:
        sources = metrics.get("sources") or {}
        done = sum(int(s.get("records_out", 0)) for s in sources.values())
        elapsed = max(time.perf_counter() - started, 1e-9)
        progress.update(
            task_id,
            completed=done,
            rate=f"{done / elapsed:,.0f}",
            watermark=_format_time(metrics.get("global_watermark"), "%m-%d %H:%M"),
        )

    async def run_with_progress() -> None:
        task = asyncio.create_task(pipeline.run())
        while not task.done():
            await asyncio.wait({task}, timeout=0.1)
            show(pipeline.metrics())
        await task

    with progress:
        asyncio.run(run_with_progress())
        show(pipeline.metrics())
    elapsed = time.perf_counter() - started

    result = sink.table()
    metrics = pipeline.metrics()
    buffered = metrics.get("buffered") or {}
    deleted = int(pc.sum(result.column("_deleted").cast(pa.int64())).as_py() or 0)
    store = upsert_state(result, "user_id")

    summary = Table(title="summary", show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("events", f"{events.num_rows:,} (in memory; not read from a lake)")
    summary.add_row(
        "run time", f"{elapsed:.2f}s ({events.num_rows / max(elapsed, 1e-9):,.0f} ev/s)"
    )
    summary.add_row("output rows", f"{result.num_rows:,} ({deleted:,} deletions)")
    summary.add_row("keys in final state", f"{store.num_rows:,}")
    summary.add_row("final watermark", f"{_format_time(metrics.get('global_watermark'))} UTC")
    summary.add_row("window state", f"{_count(buffered.get('state_rows'))} rows at the end")
    summary.add_row("late records", _count(metrics.get("late")))
    summary.add_row("peak RSS", f"{_peak_rss_mib():,.0f} MiB")
    console.print(summary)

    top = store.sort_by([("clicks", "descending"), ("user_id", "ascending")]).slice(0, 5)
    sample = Table(title=f"busiest users, last {DEMO_SIZE}")
    for name in ("user_id", "clicks", "revenue"):
        sample.add_column(name, justify="right")
    for row in top.to_pylist():
        sample.add_row(f"{row['user_id']}", f"{row['clicks']:,}", f"{row['revenue']:,.2f}")
    console.print(sample)

    with console.status("verifying against the DuckDB SQL reference …"):
        verification = verify_latest(events, result, window)
    if verification is None:
        # HOOK: lambdasource.reference (the DuckDB SQL reference) is not importable here.
        console.print("[yellow]not verified:[/] lambdasource.reference is not available")
        return EXIT_OK
    if not verification.ok:
        raise CliError(f"demo: {verification.message} (DuckDB SQL reference)")
    console.print(f"[green]{verification.message}[/] (DuckDB SQL reference)")
    return EXIT_OK


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "–"


def _peak_rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# --- bench ----------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.runner import main as bench_main
    except ImportError as exc:
        raise CliError(
            "bench: the benchmarks live in the source checkout; run this from a checkout "
            'installed with `pip install -e ".[dev]"`',
            code=EXIT_USAGE,
        ) from exc
    return bench_main(list(args.bench_args), prog=f"{PROG} bench")


# --- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show full tracebacks on errors",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Union a data lake and a live stream into one event-time-correct stream.",
        epilog="Run `lambdasource COMMAND --help` for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show full tracebacks")
    from lambdasource import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run the engine on generated clickstream data and verify the result",
        description="Generate synthetic clickstream events in memory, run a 30-day sliding window "
        "(5-minute slide) of clicks and revenue per user with emit='latest', show progress and a "
        "summary, and verify the result against the DuckDB SQL reference. (The lake, Kafka and "
        "the upsert store join in later issues.)",
        epilog="example:\n  lambdasource demo --events 200_000 --keys 2_000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--events", type=_positive, default=1_000_000, help="events (1,000,000)")
    demo.add_argument("--days", type=_positive, default=30, help="days of event time (30)")
    demo.add_argument("--keys", type=_positive, default=10_000, help="distinct users (10,000)")
    demo.add_argument("--seed", type=int, default=0, help="generator seed (0)")
    demo.add_argument("--batch-size", type=_positive, default=100_000, help="rows per batch")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser(
        "bench",
        parents=[common],
        add_help=False,
        help="run the benchmarks (`lambdasource bench --help` for theirs)",
        description="Run the benchmarks; arguments go to `python -m benchmarks`.",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    bench.set_defaults(func=_bench)

    for spec in COMMANDS:
        module = importlib.import_module(spec.module)
        cmd = sub.add_parser(
            spec.name,
            parents=[common],
            help=spec.help,
            description=f"{spec.help}.",
            epilog=spec.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(func=module.command)

    for planned in PLANNED:
        cmd = sub.add_parser(
            planned.name,
            parents=[common],
            help=f"{planned.help} [not implemented yet: issue {planned.issue}]",
            description=f"{planned.help}. Not implemented yet (issue {planned.issue}).",
            epilog=planned.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for name, text in planned.positionals:
            cmd.add_argument(name, nargs="?", help=text)
        cmd.set_defaults(func=_not_implemented(planned))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lambdasource`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "bench":
        args.bench_args = [*extra, *args.bench_args]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    try:
        code: int = args.func(args)
    except CliError as exc:
        _report(exc, verbose)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        _report(_first_error(exc), verbose)
        return EXIT_FAILURE
    return code


def _first_error(exc: BaseException) -> BaseException:
    """The first leaf of an ExceptionGroup (a TaskGroup's failure), else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _report(exc: BaseException, verbose: bool) -> None:
    """One line on stderr; with ``verbose`` the traceback first (for a CliError: of its cause)."""
    expected = isinstance(exc, CliError)
    if verbose and (not expected or exc.__cause__ is not None):
        traceback.print_exception(exc, file=sys.stderr)
    detail = str(exc) or type(exc).__name__
    if not expected:
        detail = f"{type(exc).__name__}: {detail}"
    line = " ".join(detail.split())
    hint = "" if verbose or expected else " (--verbose for the traceback)"
    print(f"{PROG}: error: {line}{hint}", file=sys.stderr)
