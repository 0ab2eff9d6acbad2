"""The ``lambdasource`` command line (also ``python -m lambdasource``).

Commands (DESIGN §4): ``demo``, ``bootstrap``, ``run JOB.toml``, ``backfill``, ``archive``,
``inspect`` and ``bench``. Each lives in the module named in :data:`COMMANDS`.

Conventions: errors are one line on stderr (``lambdasource: error: …``); ``--verbose`` adds the
full traceback. Exit codes: 0 success, 1 failure (including a failed verification), 2 usage
errors, 130 interrupted.

The CLI is the one place that composes ``lambdasource`` with the ``lake`` tools and the
``benchmarks`` of a source checkout; it imports them lazily, inside the commands that need them,
so ``import lambdasource`` never imports ``lake``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

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


# --- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A command implemented in its own module, which provides ``add_arguments(parser)`` and
    ``command(args) -> int`` (imported when the parser is built; heavy imports stay inside)."""

    name: str
    module: str
    help: str
    epilog: str
    add_arguments: str = "add_arguments"
    command: str = "command"


COMMANDS: tuple[Command, ...] = (
    Command(
        "bootstrap",
        "lambdasource.bootstrap",
        "lake + stream → windows → upsert store: the lambda source end to end, from flags",
        "examples:\n"
        "  lambdasource bootstrap --lake data/clicks --time-column event_time \\\n"
        "      --bootstrap-servers 127.0.0.1:9092 --topic clicks --key user_id \\\n"
        "      --size 30d --slide 5m --agg 'clicks=count()' --agg 'revenue=sum(amount)' \\\n"
        "      --into duckdb:///features.duckdb --table user_30d\n"
        "  lambdasource bootstrap ... --print-job > job.toml   # the same job as a file",
    ),
    Command(
        "run",
        "lambdasource.bootstrap",
        "run a declarative job file (lake, stream, handoff, alignment, window, sink, checkpoints)",
        "example:\n  lambdasource run job.toml\n  lambdasource run job.toml --check",
        add_arguments="add_run_arguments",
        command="run_command",
    ),
    Command(
        "demo",
        "lambdasource.demo",
        "the whole product on embedded defaults: generate 30 days of clickstream, write a "
        "Parquet lake and an Iceberg table, start a Kafka broker, archive, bootstrap 30-day "
        "sliding windows into DuckDB through the lambda source, verify against SQL, stay live",
        "examples:\n"
        "  lambdasource demo\n"
        "  lambdasource demo --events 200_000 --live 5 --keep --workdir demo-data\n"
        "  lambdasource demo --no-alignment --lake iceberg",
    ),
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
        "Kafka topic or Kinesis stream → hour-partitioned lake (Parquet or Iceberg), recording "
        "the offsets (sequence numbers) each commit covers",
        "examples:\n"
        "  lambdasource archive --bootstrap-servers 127.0.0.1:9092 --topic clicks \\\n"
        "      --lake data/clicks --time-column event_time --format json \\\n"
        "      --schema 'event_time:timestamp[ms, UTC],user_id:int64,kind:string' --stop-at latest\n"
        "  KAFKA_PASSWORD=… lambdasource archive --bootstrap-servers kafka.example.com:9096 \\\n"
        "      --security-protocol SASL_SSL --sasl-mechanism SCRAM-SHA-512 --sasl-username archiver \\\n"
        "      --sasl-password-env KAFKA_PASSWORD --ssl-ca-file ca.pem --topic clicks ...\n"
        "  lambdasource archive --kinesis clicks --region eu-west-1 --lake s3://bucket/clicks \\\n"
        "      --time-column event_time --schema-from sample.parquet",
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
        getattr(module, spec.add_arguments)(cmd)
        cmd.set_defaults(func=getattr(module, spec.command))

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
