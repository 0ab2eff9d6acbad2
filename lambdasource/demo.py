"""``lambdasource demo``: the whole product on embedded defaults, verified against a SQL reference.

1. Generate ``days`` of synthetic clickstream ending at the current hour (``lake.generator``).
2. Write the older part as an hour-partitioned Parquet lake and as an Iceberg table (SqlCatalog
   on SQLite, file warehouse) with the ``lake`` writer.
3. Start the embedded stream (``--stream kafka``: a Tansu broker; ``kinesis``: moto's Kinesis
   server, :mod:`.demo_streams`) on a free port and put the recent ``stream_days`` on it (JSON,
   keyed by user). The ``lake`` archiver lands the first part of them in both lakes, recording
   per-partition offsets (per-shard sequence numbers); the rest stays a backlog only the stream
   has.
4. Bootstrap: ``LambdaSource(lake, stream, handoff="offsets", alignment=…)`` → ``key_by(user_id)``
   → ``Sliding(30d, 5m)`` count + sum(amount), ``emit="latest"`` → ``DuckDBUpsert``, with live
   progress, from state by default (``run(bootstrap="state")``: the lake part in one columnar
   pass, then the stream); once the backlog is consumed, verify the store against the DuckDB SQL
   reference (``lambdasource.reference``) at the store's watermark: every key's value must match.
   For comparison, the same lake part is then replayed record by record into a scratch store, and
   both times are printed.
5. Stay live for ``live`` seconds while a producer adds events at the current time, showing the
   updates; then stop and print the summary.

The demo is a composition of the public API and the ``lake`` tools; it imports ``lake`` lazily
(``lambdasource``'s library modules never import it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .demo_streams import DemoStream, demo_stream
from .errors import ConfigError, LambdaSourceError
from .progress import ProgressPanel, lambda_metrics
from .timeutil import format_span, format_time, parse_duration, to_micros

SIZE = "30d"
SLIDE = "5m"
TABLE = "user_30d"


class VerificationError(LambdaSourceError):
    """The store differs from the SQL reference."""


@dataclass
class DemoConfig:
    """Options of the demo (CLI flags map one-to-one)."""

    events: int = 2_000_000
    days: int = 30
    users: int = 20_000
    stream_days: float = 3.0  # the recent days that are on Kafka
    archived_days: float = 2.0  # of those, how many the archiver lands in the lake
    partitions: int = 4
    live: float = 15.0  # seconds of live events after the bootstrap
    live_rate: int = 2_000  # live events per second
    alignment: bool = True
    max_drift: str = "30m"
    lake_format: str = "parquet"  # which lake the bootstrap reads: parquet | iceberg
    seed: int = 0
    keep: bool = False
    workdir: Path | None = None
    jitter: str = "30s"
    bootstrap: str = "state"  # Pipeline.run(bootstrap=...): "state" | "replay"
    compare: bool = True  # also time a replay of the lake part (bootstrap="state" only)
    stream: str = "kafka"  # the embedded stream: kafka (Tansu) | kinesis (moto)

    @property
    def unit(self) -> str:
        """What the stream's ``partitions`` are called."""
        return "shard" if self.stream == "kinesis" else "partition"

    @property
    def position(self) -> str:
        return "sequence number" if self.stream == "kinesis" else "offset"


@dataclass
class DemoResult:
    """What the demo measured (also printed)."""

    workdir: Path
    events: int
    lake_rows: int = 0
    stream_rows: int = 0
    backlog_rows: int = 0
    live_rows: int = 0
    handoff: dict[int, int] = field(default_factory=dict)
    bootstrap_s: float = 0.0
    bootstrap_mode: str = "replay"
    state_pass_s: float | None = None  # the state bootstrap's lake pass
    replay_s: float | None = None  # the same lake part replayed, for comparison
    verified_keys: int = 0
    watermark: int | None = None
    max_skew_us: int = 0
    max_lead_us: int | None = None  # measured at the operator after the source
    lead_bound_us: int = 0  # max_drift + out_of_orderness
    peak_rss_mib: float = 0.0
    rows_written: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    sample: pa.Table | None = None


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def _live_producer(
    backend: DemoStream, cfg: DemoConfig, seconds: float, counter: list[int]
) -> None:
    """Events at the current wall-clock time, ``live_rate`` per second, for ``seconds``."""
    from lake.generator import generate_clickstream

    started = time.monotonic()
    tick = 0
    while time.monotonic() - started < seconds:
        now = datetime.now(UTC).replace(microsecond=0)
        batch = generate_clickstream(
            max(cfg.live_rate // 4, 1), 1, cfg.users, seed=cfg.seed + 1_000 + tick, start=now
        )
        # squeeze the day's spread into the next quarter second of event time
        times = pc.add(
            pa.scalar(to_micros(now), pa.int64()),
            pc.divide(
                pc.subtract(batch.column("event_time").cast(pa.int64()), to_micros(now)),
                345_600,  # 1 day → 0.25 s
            ),
        ).cast(pa.timestamp("us", tz="UTC"))
        await backend.put(batch.set_column(0, "event_time", times))
        counter[0] += batch.num_rows
        tick += 1
        await asyncio.sleep(0.25)


def _store_state(path: Path) -> pa.Table:
    import duckdb

    con = duckdb.connect(str(path), read_only=False)
    try:
        return con.sql(
            f"SELECT user_id, clicks, revenue FROM {TABLE} ORDER BY user_id"
        ).to_arrow_table()
    finally:
        con.close()


def verify_store(events: pa.Table, store: pa.Table, watermark: int) -> int:
    """Compare the store with the SQL reference at ``watermark``; returns the number of keys.

    The reference (``lambdasource.reference.sliding_changelog``, DuckDB SQL) gives each user's
    value at every completed window end ``<= watermark + 1``; an upsert store fed by
    ``emit="latest"`` holds each user's newest value, without users whose window became empty.
    """
    from . import reference
    from .windows.assigners import Sliding

    changelog = reference.sliding_changelog(
        events,
        time_column="event_time",
        keys="user_id",
        window=Sliding(SIZE, SLIDE),
        aggregates={"clicks": ("count", None), "revenue": ("sum", "amount")},
        until=watermark + 1,
    ).sort_by("window_end")
    expected = reference.upsert_state(changelog, "user_id").select(["user_id", "clicks", "revenue"])
    actual = store.cast(expected.schema) if store.schema != expected.schema else store
    if actual.num_rows != expected.num_rows:
        raise VerificationError(
            f"store has {actual.num_rows:,} keys, the SQL reference {expected.num_rows:,}"
        )
    if not actual.equals(expected):
        differs = pc.sum(
            pc.or_(
                pc.not_equal(actual.column("clicks"), expected.column("clicks")),
                pc.not_equal(actual.column("revenue"), expected.column("revenue")),
            ).cast(pa.int64())
        ).as_py()
        raise VerificationError(
            f"{differs:,} of {actual.num_rows:,} keys differ from the reference"
        )
    return int(actual.num_rows)


def _first_at_or_after(events: pa.Table, micros: int) -> int:
    """Index of the first row with event time >= ``micros`` (``num_rows`` when none)."""
    times = events.column("event_time")
    found = pc.index(pc.greater_equal(times, pa.scalar(micros, pa.int64()).cast(times.type)), True)
    index = int(found.as_py())
    return events.num_rows if index < 0 else index


Report = Callable[[str], None]


async def run_demo(
    cfg: DemoConfig, say: Report, show: Callable[[dict[str, Any]], None]
) -> DemoResult:
    """Run the demo; ``say`` prints a line, ``show`` receives live metrics (progress display)."""
    import lambdasource as ls
    from lake.generator import CLICKSTREAM_SCHEMA, generate_clickstream
    from lake.writer import IcebergLakeWriter, ParquetLakeWriter

    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="lambdasource-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = DemoResult(workdir=workdir, events=cfg.events)
    end = _hour_floor(datetime.now(UTC))
    start = end - timedelta(days=cfg.days)
    stream_from = to_micros(end - timedelta(days=cfg.stream_days))
    archive_until = to_micros(end - timedelta(days=cfg.stream_days - cfg.archived_days))

    t0 = time.perf_counter()
    events = generate_clickstream(
        cfg.events, cfg.days, cfg.users, seed=cfg.seed, start=start, jitter=cfg.jitter
    ).combine_chunks()
    # Split by arrival order (the generator's row order), as a real stream delivers them.
    first_stream = _first_at_or_after(events, stream_from)
    first_backlog = _first_at_or_after(events, archive_until)
    history = events.slice(0, first_stream)
    archived = events.slice(first_stream, first_backlog - first_stream)
    backlog = events.slice(first_backlog)
    say(
        f"generated {events.num_rows:,} events for {cfg.users:,} users, "
        f"{format_time(to_micros(start))[:16]} → {format_time(to_micros(end))[:16]} UTC "
        f"({time.perf_counter() - t0:.1f}s)"
    )

    lake_dir = workdir / "lake"
    catalog = {
        "name": "demo",
        "type": "sql",
        "uri": f"sqlite:///{workdir / 'catalog.db'}",
        "warehouse": (workdir / "warehouse").as_uri(),
    }
    (workdir / "warehouse").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    parquet_writer = ParquetLakeWriter(lake_dir, "event_time")
    await asyncio.to_thread(parquet_writer.write, history)
    iceberg_writer = IcebergLakeWriter("demo.clicks", catalog, "event_time")
    await asyncio.to_thread(iceberg_writer.write, history)
    say(
        f"lake: {history.num_rows:,} events as hour partitions in {lake_dir} (Parquet) and "
        f"Iceberg table demo.clicks ({time.perf_counter() - t0:.1f}s)"
    )

    backend = demo_stream(cfg.stream)
    live_counter = [0]
    try:
        await backend.start("clicks", cfg.partitions)
        t0 = time.perf_counter()
        await backend.put(archived)
        for writer in (parquet_writer, iceberg_writer):
            archiver = backend.archiver(
                writer, CLICKSTREAM_SCHEMA, commit_interval="5s", progress_interval="60s"
            )
            await archiver.run()
        await backend.put(backlog)
        say(
            f"{backend.describe()} ({cfg.partitions} {cfg.unit}s): "
            f"{archived.num_rows + backlog.num_rows:,} recent events; the archiver "
            f"landed {archived.num_rows:,} in both lakes with their {cfg.position}s, "
            f"{backlog.num_rows:,} are only on the stream ({time.perf_counter() - t0:.1f}s)"
        )

        def make_lake() -> Any:
            if cfg.lake_format == "iceberg":
                return ls.IcebergLake("demo.clicks", catalog, time_column="event_time")
            return ls.ParquetLake(str(lake_dir), time_column="event_time")

        lake = make_lake()
        stream = backend.source(CLICKSTREAM_SCHEMA, out_of_orderness=cfg.jitter, idle_timeout="2s")
        source = ls.LambdaSource(
            lake,
            stream,
            handoff="offsets",
            out_of_orderness=cfg.jitter,
            idle_timeout="2s",
            alignment=ls.Alignment(max_drift=cfg.max_drift) if cfg.alignment else None,
        )
        store_path = workdir / "features.duckdb"
        bound = parse_duration(cfg.max_drift) + parse_duration(cfg.jitter)
        meter = ls.LeadMeter("event_time", bound_us=bound)  # the lead the window operator sees
        pipeline = ls.Pipeline()
        _features(
            pipeline.source(source).process(meter, name="lead"),
            ls.DuckDBUpsert(str(store_path), table=TABLE, key=["user_id"], flush_interval="0.5s"),
        )
        say(
            f"bootstrap: LambdaSource({cfg.lake_format} lake, {cfg.stream}, handoff=offsets, "
            f"alignment={'Alignment(' + cfg.max_drift + ')' if cfg.alignment else 'None'}) → "
            f"key_by(user_id) → Sliding({SIZE}, {SLIDE}) count + sum(amount), emit=latest → "
            f"DuckDB {store_path.name}:{TABLE}"
        )
        expected_rows = events.num_rows
        started = time.perf_counter()
        task = asyncio.create_task(pipeline.run(bootstrap=cfg.bootstrap))  # type: ignore[arg-type]
        try:
            watermark = await _until_caught_up(pipeline, task, expected_rows, show, result)
            result.bootstrap_s = time.perf_counter() - started
            report = pipeline.metrics().get("bootstrap") or {}
            result.bootstrap_mode = str(report.get("mode", "replay"))
            if result.bootstrap_mode == "state":
                result.state_pass_s = float(report["seconds"])
                say(f"bootstrap from state: the lake part in one pass, {result.state_pass_s:.1f}s")
            elif report.get("reason"):
                say(f"bootstrap: replayed ({report['reason']})")
            result.watermark = watermark
            metrics = pipeline.metrics()
            lam = lambda_metrics(metrics)
            rows = lam.get("rows", {})
            result.lake_rows = int(rows.get("lake", 0))
            result.stream_rows = int(rows.get("stream", 0))
            result.backlog_rows = backlog.num_rows
            result.handoff = {int(p): int(o) for p, o in lam.get("recorded_offsets", {}).items()}
            say(
                f"caught up in {result.bootstrap_s:.1f}s: {result.lake_rows:,} events from the "
                f"lake + {result.stream_rows:,} from the stream "
                f"({expected_rows / max(result.bootstrap_s, 1e-9):,.0f} ev/s); "
                f"store watermark {format_time(watermark)}"
            )
            late = int(metrics.get("late", 0) or 0)
            if late:
                raise VerificationError(f"{late:,} records were late (none expected)")
            store = await asyncio.to_thread(_store_state, store_path)
            result.verified_keys = await asyncio.to_thread(verify_store, events, store, watermark)
            result.sample = store.sort_by(
                [("clicks", "descending"), ("user_id", "ascending")]
            ).slice(0, 5)
            say(f"verified: {result.verified_keys:,} keys match the DuckDB SQL reference")
            if result.state_pass_s is not None and cfg.compare:
                result.replay_s = await _replay_lake_part(make_lake(), workdir / "replay.duckdb")
                say(
                    f"the same lake part replayed record by record: {result.replay_s:.1f}s "
                    f"(state pass {result.state_pass_s:.1f}s, "
                    f"{result.replay_s / max(result.state_pass_s, 1e-9):.1f}x faster)"
                )

            if cfg.live > 0:
                say(
                    f"live for {cfg.live:.0f}s: producing ~{cfg.live_rate:,} events/s at the current time …"
                )
                await _live_producer(backend, cfg, cfg.live, live_counter)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not task.done():
                    show(pipeline.metrics())
                    await asyncio.sleep(0.25)
                result.live_rows = live_counter[0]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        result.metrics = pipeline.metrics()
        lam = lambda_metrics(result.metrics)
        result.max_skew_us = int(lam.get("alignment", {}).get("max_skew_us", 0) or 0)
        result.max_lead_us = meter.max_lead_us
        result.lead_bound_us = bound
        sinks = result.metrics.get("sinks", {})
        result.rows_written = sum(int(s.get("rows_written", 0) or 0) for s in sinks.values())
        result.peak_rss_mib = _peak_rss_mib()
        return result
    finally:
        await backend.stop()
        if not cfg.keep and cfg.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _features(events: Any, store: Any) -> None:
    """The demo's job after its source: ``key_by(user_id)`` → ``Sliding(30d, 5m)`` count +
    sum(amount), ``emit="latest"`` → ``store``."""
    import lambdasource as ls

    (
        events.key_by("user_id")
        .window(ls.Sliding(SIZE, SLIDE), emit="latest")
        .aggregate(clicks=ls.count(), revenue=ls.sum("amount"))
        .sink(store)
    )


async def _replay_lake_part(lake: Any, store_path: Path) -> float:
    """Seconds a replay of ``lake`` alone (the lake part of the job: same lake, same window,
    a scratch store) takes, for comparison with the state bootstrap's pass."""
    import lambdasource as ls

    replay = ls.Pipeline()
    _features(replay.source(lake), ls.DuckDBUpsert(str(store_path), table=TABLE, key=["user_id"]))
    started = time.perf_counter()
    await replay.run(bootstrap="replay")
    return time.perf_counter() - started


async def _until_caught_up(
    pipeline: Any,
    task: asyncio.Task[None],
    expected_rows: int,
    show: Callable[[dict[str, Any]], None],
    result: DemoResult,
) -> int:
    """Wait until every produced event went through and the store flushed; return its watermark."""
    stable_since: float | None = None
    last: tuple[Any, ...] = ()
    while True:
        if task.done():
            await task  # surfaces the pipeline's error
            raise LambdaSourceError("the pipeline ended before the backlog was consumed")
        metrics = pipeline.metrics()
        show(metrics)
        lam = lambda_metrics(metrics)
        rows = lam.get("rows", {})
        seen = int(rows.get("lake", 0)) + int(rows.get("stream", 0))
        sinks = list((metrics.get("sinks") or {}).values())
        sink = sinks[0] if sinks else {}
        watermark = sink.get("watermark")
        state = (seen, watermark, sink.get("rows_written"), sink.get("buffered_rows"))
        if seen >= expected_rows and watermark is not None and not sink.get("buffered_rows"):
            if state == last and stable_since is not None:
                if time.monotonic() - stable_since >= 1.0:
                    return int(watermark)
            else:
                stable_since = time.monotonic()
        else:
            stable_since = None
        last = state
        await asyncio.sleep(0.2)


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lambdasource demo``."""
    d = DemoConfig()
    parser.add_argument("--events", type=_positive, default=d.events, help=f"events ({d.events:,})")
    parser.add_argument(
        "--days", type=_positive, default=d.days, help=f"days of history ({d.days})"
    )
    parser.add_argument(
        "--users", "--keys", type=_positive, default=d.users, help=f"distinct users ({d.users:,})"
    )
    parser.add_argument(
        "--stream-days",
        type=float,
        default=d.stream_days,
        help=f"recent days on Kafka ({d.stream_days:g})",
    )
    parser.add_argument(
        "--archived-days",
        type=float,
        default=d.archived_days,
        help=f"of those, days the archiver lands in the lake ({d.archived_days:g})",
    )
    parser.add_argument(
        "--partitions",
        type=_positive,
        default=d.partitions,
        help=f"Kafka partitions or Kinesis shards ({d.partitions})",
    )
    parser.add_argument(
        "--live",
        type=float,
        default=d.live,
        help=f"seconds to stay live after the bootstrap ({d.live:g})",
    )
    parser.add_argument(
        "--stream",
        choices=("kafka", "kinesis"),
        default=d.stream,
        help="the embedded stream: kafka (a Tansu broker) or kinesis (moto's server; "
        "pip install -e '.[kinesis-demo]')",
    )
    parser.add_argument(
        "--lake",
        choices=("parquet", "iceberg"),
        default=d.lake_format,
        help="which lake the bootstrap reads (both are written)",
    )
    parser.add_argument(
        "--no-alignment", action="store_true", help="run the same job without watermark alignment"
    )
    parser.add_argument("--max-drift", default=d.max_drift, help=f"alignment drift ({d.max_drift})")
    parser.add_argument(
        "--bootstrap",
        choices=("state", "replay"),
        default=d.bootstrap,
        help="state (default): the lake part in one columnar pass, then the stream; replay: "
        "every lake record through the window",
    )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip timing a replay of the lake part for comparison",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="generator seed (0)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the lake, Iceberg table and store for inspection"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where to put the data (default: a temporary directory)"
    )


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def command(args: argparse.Namespace) -> int:
    """``lambdasource demo``; returns the exit code (verification failures raise)."""
    from rich.console import Console
    from rich.live import Live

    if not 0 <= args.archived_days <= args.stream_days <= args.days:
        raise ConfigError("demo: need 0 <= --archived-days <= --stream-days <= --days")
    cfg = DemoConfig(
        events=args.events,
        days=args.days,
        users=args.users,
        stream_days=args.stream_days,
        archived_days=args.archived_days,
        partitions=args.partitions,
        live=args.live,
        alignment=not args.no_alignment,
        max_drift=args.max_drift,
        lake_format=args.lake,
        stream=args.stream,
        bootstrap=args.bootstrap,
        compare=not args.no_compare,
        seed=args.seed,
        keep=args.keep or args.workdir is not None,
        workdir=args.workdir,
    )
    console = Console(highlight=False)
    console.print(
        f"[bold]lambdasource demo[/] — lake + {'Kinesis' if cfg.stream == 'kinesis' else 'Kafka'}"
        " → 30-day sliding windows → DuckDB upsert store"
    )
    started = time.monotonic()

    panel = ProgressPanel(started)

    with Live(console=console, refresh_per_second=4, transient=True) as live:

        def show(metrics: dict[str, Any]) -> None:
            live.update(panel(metrics))

        def say(line: str) -> None:
            live.console.print(line)

        result = asyncio.run(run_demo(cfg, say, show))
    _summary(console, cfg, result)
    return 0


def _summary(console: Any, cfg: DemoConfig, result: DemoResult) -> None:
    from rich.table import Table

    table = Table(title="summary", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("events", f"{result.events:,} generated + {result.live_rows:,} live")
    table.add_row("from the lake", f"{result.lake_rows:,} ({cfg.lake_format})")
    table.add_row("from the stream", f"{result.stream_rows:,} before going live")
    label = "shard" if cfg.stream == "kinesis" else "p"
    offsets = ", ".join(f"{label}{p}@{o:,}" for p, o in sorted(result.handoff.items())) or "-"
    table.add_row("handoff", f"exact {cfg.position}s: {offsets}")
    table.add_row(
        "bootstrap",
        f"{result.bootstrap_s:.1f}s to catch up, from {result.bootstrap_mode} "
        f"({(result.lake_rows + result.stream_rows) / max(result.bootstrap_s, 1e-9):,.0f} ev/s "
        "incl. waits)",
    )
    if result.state_pass_s is not None:
        replayed = "-" if result.replay_s is None else f"{result.replay_s:.1f}s"
        table.add_row("lake part", f"state pass {result.state_pass_s:.1f}s; replayed {replayed}")
    lead = "-" if result.max_lead_us is None else format_span(max(0, result.max_lead_us))
    table.add_row(
        "alignment",
        f"max_drift {cfg.max_drift}: max lead {lead} over the watermark at the window's input "
        f"(bound max_drift + out_of_orderness = {format_span(result.lead_bound_us)})"
        if cfg.alignment
        else f"off — max lead {lead} over the watermark at the window's input",
    )
    table.add_row("store rows written", f"{result.rows_written:,}")
    table.add_row("store watermark", format_time(result.watermark))
    table.add_row("peak memory", f"{result.peak_rss_mib:,.0f} MiB RSS")
    table.add_row(
        "verification", f"[green]{result.verified_keys:,} keys match[/] the DuckDB SQL reference"
    )
    if cfg.keep or cfg.workdir:
        table.add_row("data kept in", str(result.workdir))
    console.print(table)
    if result.sample is not None and result.sample.num_rows:
        sample = Table(title="busiest users, last 30 days")
        for name in result.sample.column_names:
            sample.add_column(name, justify="right")
        for row in result.sample.to_pylist():
            sample.add_row(
                *(
                    f"{v:,}"
                    if isinstance(v, int)
                    else f"{v:,.2f}"
                    if isinstance(v, float)
                    else str(v)
                    for v in row.values()
                )
            )
        console.print(sample)
    console.print(f"verified: {result.verified_keys:,} keys match")


__all__ = [
    "DemoConfig",
    "DemoResult",
    "VerificationError",
    "add_arguments",
    "command",
    "run_demo",
    "verify_store",
]
