"""``lambdasource bootstrap`` (a job from flags) and ``lambdasource run JOB.toml`` (from a file).

Both build a :class:`~lambdasource.job.JobSpec`, so the same job can move from the command line
to a file (``bootstrap --print-job`` prints the TOML) and back. Bounded jobs (lake only, or a
stream with ``stop_at = "latest"`` / ``--stop-at-latest``) end on their own; unbounded ones run
until interrupted (Ctrl-C stops them cleanly, exit code 130).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from . import kafka_security
from .errors import ConfigError
from .job import JobSpec, WindowSpec, all_dead_lettered, all_dead_lettered_message, build_job
from .metrics_endpoint import (
    MetricsEndpoint,
    add_metrics_arguments,
    endpoint_from_args,
    job_labels,
    serving,
)
from .progress import ProgressPanel, events_seen
from .timeutil import format_time


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _catalog(args: argparse.Namespace) -> dict[str, Any]:
    if not args.catalog_uri:
        raise ConfigError("--iceberg needs --catalog-uri (and usually --warehouse)")
    catalog: dict[str, Any] = {"name": args.catalog_name, "uri": args.catalog_uri, "type": "sql"}
    if args.warehouse:
        catalog["warehouse"] = args.warehouse
    return catalog


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """The job the ``bootstrap`` flags describe."""
    lake: dict[str, Any] = {"time_column": args.time_column}
    if args.iceberg:
        lake.update(identifier=args.iceberg, catalog=_catalog(args))
    else:
        lake["path"] = args.lake
    stream: dict[str, Any] | None = None
    if args.topic and args.kinesis:
        raise ConfigError("--topic (Kafka) and --kinesis: choose one stream")
    if args.topic:
        if not args.bootstrap_servers:
            raise ConfigError("--topic needs --bootstrap-servers")
        stream = {"topic": args.topic, "bootstrap_servers": args.bootstrap_servers}
        security = kafka_security.table_from_args(args)
        if security is not None:
            stream["security"] = security
    elif args.kinesis:
        stream = {"kind": "kinesis", "stream_name": args.kinesis}
        if args.kinesis_endpoint_url:
            stream["endpoint_url"] = args.kinesis_endpoint_url
        if args.region:
            stream["region"] = args.region
    if stream is not None:
        stream.update(time_column=args.time_column, format=args.format)
        stream["schema"] = args.schema or "lake"
        if args.stop_at_latest:
            stream["stop_at"] = "latest"
    source: dict[str, Any] = {}
    if stream is not None:
        source = {
            "handoff": args.handoff,
            "out_of_orderness": args.out_of_orderness,
            "idle_timeout": args.idle_timeout,
            "alignment": False if args.no_alignment else {"max_drift": args.max_drift},
        }
        if args.cutoff:
            source["cutoff"] = args.cutoff
    aggregates: dict[str, str] = {}
    for item in args.agg or ["events=count()"]:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--agg: expected NAME=FUNCTION(COLUMN), got {item!r}")
        aggregates[name.strip()] = text.strip()
    keys = _split(args.key)
    if not keys:
        raise ConfigError("--key names no column")
    if args.session:
        window = WindowSpec(key=keys, kind="session", gap=args.session)
    elif args.slide:
        window = WindowSpec(key=keys, kind="sliding", size=args.size, slide=args.slide)
    else:
        window = WindowSpec(key=keys, kind="tumbling", size=args.size)
    window.emit = args.emit
    window.allowed_lateness = args.allowed_lateness
    window.aggregates = aggregates
    window.bootstrap = args.bootstrap_mode
    checkpoints = None
    if args.checkpoints:
        checkpoints = {"url": args.checkpoints, "interval": args.checkpoint_interval}
    return JobSpec(
        lake=lake,
        stream=stream,
        source=source,
        where=args.where,
        window=window,
        sink={"url": args.into, "table": args.table},
        checkpoints=checkpoints,
    )


def to_toml(spec: JobSpec) -> str:
    """The job as a TOML file ``lambdasource run`` reads back."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def section(name: str, items: dict[str, Any]) -> str:
        body = "\n".join(f"{k} = {value(v)}" for k, v in items.items() if v is not None)
        return f"[{name}]\n{body}\n"

    parts = []
    if spec.lake:
        parts.append(section("lake", spec.lake))
    if spec.stream:
        parts.append(section("stream", spec.stream))
    if spec.source:
        parts.append(section("source", spec.source))
    if spec.where or spec.select:
        parts.append(section("transform", {"where": spec.where, "select": spec.select}))
    if spec.window:
        w = spec.window
        parts.append(
            section(
                "window",
                {
                    "key": w.key,
                    "kind": w.kind,
                    "size": w.size,
                    "slide": w.slide,
                    "gap": w.gap,
                    "emit": w.emit,
                    "allowed_lateness": w.allowed_lateness,
                    "aggregates": w.aggregates,
                    "bootstrap": w.bootstrap,
                },
            )
        )
    parts.append(section("sink", spec.sink))
    if spec.checkpoints:
        parts.append(section("checkpoints", spec.checkpoints))
    return "\n".join(parts)


def run_job(
    spec: JobSpec, *, quiet: bool = False, metrics_endpoint: MetricsEndpoint | None = None
) -> dict[str, Any]:
    """Run a job with a live progress display; returns the final metrics, plus
    ``first_dead_letter`` (the first dead letter's reason and position, or None).
    ``metrics_endpoint`` (``--metrics-port``) serves the job's metrics while it runs."""
    from rich.console import Console
    from rich.live import Live

    built = build_job(spec)
    pipeline = built.pipeline
    console = Console(highlight=False, stderr=True)
    panel = ProgressPanel()
    started = time.monotonic()

    async def main() -> None:
        if metrics_endpoint is not None:
            metrics_endpoint.register(pipeline, job_labels())  # read on this loop
        task = asyncio.create_task(pipeline.run(bootstrap=built.bootstrap))
        try:
            with Live(console=console, refresh_per_second=4, transient=True) as live:
                while not task.done():
                    await asyncio.wait({task}, timeout=0.25)
                    if not quiet:
                        live.update(panel(pipeline.metrics()))
            await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    interrupted = False
    try:
        with serving(metrics_endpoint, console.print):
            asyncio.run(main())
    except KeyboardInterrupt:
        interrupted = True
    metrics: dict[str, Any] = pipeline.metrics()
    metrics["first_dead_letter"] = built.dead_letters.first
    elapsed = time.monotonic() - started
    seen = events_seen(metrics)
    written = sum(int(s.get("rows_written") or 0) for s in (metrics.get("sinks") or {}).values())
    console.print(
        f"{'interrupted' if interrupted else 'done'}: {seen:,} events in {elapsed:.1f}s "
        f"({seen / max(elapsed, 1e-9):,.0f} ev/s), {written:,} rows written, "
        f"late {int(metrics.get('late') or 0):,}, "
        f"dead letters {int(metrics.get('dead_letters') or 0):,}, "
        f"watermark {format_time(metrics.get('global_watermark'))}"
    )
    line = bootstrap_line(metrics.get("bootstrap"))
    if line:
        console.print(line)
    if interrupted:
        raise KeyboardInterrupt
    return metrics


def bootstrap_line(report: dict[str, Any] | None) -> str | None:
    """How the window state was bootstrapped, in one line (None: nothing to say)."""
    if not report:
        return None
    if report["mode"] == "state":
        windows = ", ".join(
            f"{name}: {w.get('rows', 0):,} lake rows → {w.get('slices', 0):,} slices"
            for name, w in report["windows"].items()
        )
        where = f", first checkpoint {report['checkpoint_id']}" if report["checkpoint_id"] else ""
        return f"bootstrap from state: lake pass {report['seconds']:.1f}s ({windows}){where}"
    if report["requested"] == "state":
        return f"bootstrap: replayed ({report['reason']})"
    return None


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lambdasource bootstrap``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--lake", metavar="PATH", help="Parquet lake: path, file:// or s3://")
    src.add_argument("--iceberg", metavar="IDENT", help="Iceberg table identifier (db.table)")
    parser.add_argument("--catalog-uri", help="Iceberg SQL catalog URI (sqlite:///cat.db)")
    parser.add_argument("--warehouse", help="Iceberg warehouse (file:///… or s3://…)")
    parser.add_argument("--catalog-name", default="default", help="Iceberg catalog name")
    parser.add_argument("--time-column", required=True, help="event-time column")
    parser.add_argument("--bootstrap-servers", help="Kafka host:port (with --topic)")
    kafka_security.add_arguments(parser)
    parser.add_argument("--topic", help="Kafka topic to hand over to (omit: lake only)")
    parser.add_argument("--kinesis", metavar="STREAM", help="or a Kinesis stream to hand over to")
    parser.add_argument(
        "--kinesis-endpoint-url", help="Kinesis endpoint (default: the AWS environment's)"
    )
    parser.add_argument("--region", help="Kinesis region (default: the AWS environment's)")
    parser.add_argument("--format", default="json", choices=("json", "raw"))
    parser.add_argument("--schema", help="stream schema 'col:type,…' (default: the lake's)")
    parser.add_argument("--handoff", default="offsets", choices=("offsets", "timestamp"))
    parser.add_argument("--cutoff", help="timestamp handoff cutoff (default: lake high-water mark)")
    parser.add_argument("--out-of-orderness", default="5m", help="bounded out-of-orderness (5m)")
    parser.add_argument("--idle-timeout", default="30s", help="partition idleness timeout (30s)")
    parser.add_argument("--max-drift", default="30m", help="watermark alignment drift (30m)")
    parser.add_argument("--no-alignment", action="store_true", help="disable watermark alignment")
    parser.add_argument(
        "--stop-at-latest", action="store_true", help="end at the topic's (stream's) end"
    )
    parser.add_argument("--key", required=True, help="key column(s), comma-separated")
    parser.add_argument("--size", default="30d", help="window size (30d)")
    parser.add_argument("--slide", help="sliding window slide (e.g. 5m; omit: tumbling)")
    parser.add_argument("--session", metavar="GAP", help="session windows with this gap")
    parser.add_argument(
        "--agg",
        action="append",
        metavar="NAME=FUNC(COL)",
        help="aggregate, repeatable: count(), sum(c), mean(c), min(c), max(c), first(c), "
        "last(c), count_distinct(c) (default: events=count())",
    )
    parser.add_argument("--emit", default="latest", choices=("latest", "changes", "every"))
    parser.add_argument("--allowed-lateness", default="0s")
    parser.add_argument(
        "--bootstrap-mode",
        default="state",
        choices=("state", "replay"),
        help="state (default): build the window state from the lake in one columnar pass, "
        "then continue on the stream; replay: every lake record through the window (a graph "
        "the state pass cannot take replays, saying why)",
    )
    parser.add_argument("--where", help="filter, e.g. \"kind = 'click'\"")
    parser.add_argument("--into", required=True, help="store URL (duckdb:///f.db, postgresql://…)")
    parser.add_argument("--table", required=True, help="store table")
    parser.add_argument("--checkpoints", metavar="URL", help="checkpoint store (file://…, s3://…)")
    parser.add_argument("--checkpoint-interval", default="30s")
    parser.add_argument("--print-job", action="store_true", help="print the job as TOML and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_metrics_arguments(parser)


def command(args: argparse.Namespace) -> int:
    """``lambdasource bootstrap``."""
    spec = spec_from_args(args)
    if args.print_job:
        print(to_toml(spec), end="")
        return 0
    _succeeded(run_job(spec, quiet=args.quiet, metrics_endpoint=endpoint_from_args(args)))
    return 0


def _succeeded(metrics: dict[str, Any]) -> None:
    """A run whose every input record went to dead letters is a failure (CliError)."""
    from .cli import CliError

    if all_dead_lettered(metrics):
        raise CliError(all_dead_lettered_message(metrics, metrics.get("first_dead_letter")))


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lambdasource run``."""
    parser.add_argument("job", type=Path, help="the job file (TOML)")
    parser.add_argument("--check", action="store_true", help="validate the job and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    from .scaleout import jobs as scaleout_jobs

    scaleout_jobs.add_arguments(parser)  # --workers N, --join GROUP
    add_metrics_arguments(parser)


def run_command(args: argparse.Namespace) -> int:
    """``lambdasource run JOB.toml``."""
    spec = JobSpec.from_toml(args.job)
    from .scaleout import jobs as scaleout_jobs

    if scaleout_jobs.scaled(args):  # N workers of one consumer group (DESIGN §3 "Tasks")
        return scaleout_jobs.run(spec, args)
    if args.check:
        build_job(spec)  # validates every key and checks the job against the source's schema
        print(f"{args.job}: ok")
        return 0
    _succeeded(run_job(spec, quiet=args.quiet, metrics_endpoint=endpoint_from_args(args)))
    return 0
