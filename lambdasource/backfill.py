"""Backfill: a bounded source (a lake) → filter → select → an upsert store, idempotently.

``await backfill(source, into, key=..., version=...)`` builds an ordinary :class:`Pipeline`
(source → ``filter(where)`` → ``map(select)`` → sink) and runs it to the end. The version defaults
to the source's time column, so replaying a backfill (or any older range) never regresses the
store: a killed backfill is simply run again. ``progress`` is called about every
``progress_interval`` seconds (and once at the end) with a :class:`BackfillProgress`.

The CLI command ``lambdasource backfill`` is :func:`add_arguments` + :func:`command`; it renders the
progress with rich and closes with a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import kafka_security
from .errors import ConfigError, SchemaError
from .expressions import check_filter, parse_filter
from .pipeline import Pipeline
from .sinks.base import Sink
from .sinks.upsert import UpsertSink, as_key_list
from .sources.base import Source


@dataclass(frozen=True)
class BackfillProgress:
    """A progress report (``partitions_*`` are None when the source does not expose them)."""

    rows_read: int
    rows_written: int
    elapsed_s: float
    rows_per_s: float
    partitions_done: int | None
    partitions_total: int | None
    eta_s: float | None
    watermark: int | None


@dataclass(frozen=True)
class BackfillSummary:
    """What a backfill did: rows read from the source, written to the store (inserted/updated),
    skipped as older than the stored version, deletions applied, dead letters.

    ``all_dead_lettered``: the source read records and every one went to dead letters (the CLI
    exits non-zero then; the Python API only reports it). ``first_dead_letter``: the first one's
    reason and position."""

    rows_read: int
    rows_written: int
    skipped_older: int
    deletes: int
    dead_letters: int
    elapsed_s: float
    rows_per_s: float
    all_dead_lettered: bool = False
    first_dead_letter: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _selection(
    select: Sequence[str], required: Sequence[str], schema: pa.Schema | None
) -> list[str]:
    columns = list(dict.fromkeys([*select, *[c for c in required if c not in select]]))
    if schema is not None:
        for column in columns:
            if column not in schema.names:
                raise SchemaError(
                    f"backfill: select names unknown column {column!r}; {schema.names}"
                )
    return columns


def _progress(metrics: dict[str, Any], source_name: str, sink_name: str) -> BackfillProgress:
    src = metrics.get("sources", {}).get(source_name, {})
    snk = metrics.get("sinks", {}).get(sink_name, {})
    elapsed = float(metrics.get("elapsed_s") or 0.0)
    read = int(src.get("records_out") or 0)
    rate = read / elapsed if elapsed > 0 else 0.0
    done, total = src.get("partitions_done"), src.get("partitions_total")
    eta = None
    if isinstance(done, int) and isinstance(total, int) and done > 0 and total >= done:
        eta = elapsed / done * (total - done)
    return BackfillProgress(
        rows_read=read,
        rows_written=int(snk.get("rows_written") or 0),
        elapsed_s=elapsed,
        rows_per_s=rate,
        partitions_done=done if isinstance(done, int) else None,
        partitions_total=total if isinstance(total, int) else None,
        eta_s=eta,
        watermark=metrics.get("global_watermark"),
    )


async def backfill(
    source: Source,
    into: Sink,
    *,
    key: str | Sequence[str] | None = None,
    version: str | None = None,
    select: Sequence[str] | None = None,
    where: pc.Expression | None = None,
    progress: Callable[[BackfillProgress], Any] | None = None,
    progress_interval: float = 0.5,
) -> BackfillSummary:
    """Run ``source`` (bounded) into ``into``; see the module docstring.

    ``key`` must match the sink's key when given; ``version`` (default: the source's time column)
    is set on an upsert sink that has none. ``select`` keeps those columns (plus the key, version
    and time columns); ``where`` is a pyarrow expression (``lambdasource.expressions.parse_filter``
    turns text into one). Before anything runs, ``where`` and ``select`` are checked against the
    source's schema (a lake without a declared one is read for it): SchemaError names the column.
    """
    from .jobfile.build import check_against_source
    from .jobfile.outcome import DeadLetterLog, all_dead_lettered

    if not getattr(source, "bounded", True):
        raise ConfigError(f"backfill: source {source.name!r} is unbounded; backfills need an end")
    required = [source.time_column]
    if isinstance(into, UpsertSink):
        if key is not None and as_key_list(key, "backfill") != into.keys:
            raise ConfigError(f"backfill: key {key!r} differs from the sink's key {into.keys}")
        if version is not None and into.version not in (None, version):
            raise ConfigError(
                f"backfill: version {version!r} differs from the sink's version {into.version!r}"
            )
        if into.version is None:
            into.version = version or source.time_column
        required += [*into.keys, into.version]

    def check(schema: pa.Schema, described: str) -> None:
        if where is not None:
            check_filter(where, schema, source=described)
        if select:
            _selection(select, required, schema)

    await asyncio.to_thread(check_against_source, source, check)
    pipeline = Pipeline(name="backfill")
    dead_letters = DeadLetterLog()
    stream = pipeline.source(source)
    watched = [stream]
    if where is not None:
        stream = stream.filter(where)
        watched.append(stream)
    if select:
        columns = _selection(select, required, stream.schema)
        schema = (
            pa.schema([stream.schema.field(c) for c in columns])
            if stream.schema is not None
            else None
        )

        def project(batch: pa.RecordBatch) -> pa.RecordBatch:
            return batch.select(columns)

        stream = stream.map(project, schema=schema, name="select")
        watched.append(stream)
    stream.sink(into)
    for node in watched:
        dead_letters.watch(node)
    sink_name = into.name
    started = time.perf_counter()

    async def report(run: asyncio.Task[None]) -> None:
        assert progress is not None
        while not run.done():
            await asyncio.sleep(progress_interval)
            progress(_progress(pipeline.metrics(), source.name, sink_name))

    async with asyncio.TaskGroup() as group:
        run = group.create_task(pipeline.run())
        if progress is not None:
            group.create_task(report(run))
    metrics = pipeline.metrics()
    if progress is not None:
        progress(_progress(metrics, source.name, sink_name))
    elapsed = time.perf_counter() - started
    src = metrics["sources"].get(source.name, {})
    snk = metrics["sinks"].get(sink_name, {})
    read = int(src.get("records_out") or 0)
    return BackfillSummary(
        rows_read=read,
        rows_written=int(snk.get("rows_written") or 0),
        skipped_older=int(snk.get("conflicts_skipped") or 0),
        deletes=int(snk.get("deletes") or 0),
        dead_letters=int(metrics.get("dead_letters") or 0),
        elapsed_s=elapsed,
        rows_per_s=read / elapsed if elapsed > 0 else 0.0,
        all_dead_lettered=all_dead_lettered(metrics),
        first_dead_letter=dead_letters.first,
    )


# --- CLI ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lambdasource backfill``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--lake", metavar="PATH", help="hour-partitioned Parquet lake (path, s3://)")
    src.add_argument("--iceberg", metavar="IDENT", help="Iceberg table identifier (db.table)")
    parser.add_argument("--catalog-uri", help="Iceberg SQL catalog URI (e.g. sqlite:///cat.db)")
    parser.add_argument("--warehouse", help="Iceberg warehouse (file:///… or s3://…)")
    parser.add_argument(
        "--catalog-name", default="default", help="Iceberg catalog name (default: default)"
    )
    parser.add_argument("--time-column", required=True, help="event-time column")
    parser.add_argument(
        "--into",
        required=True,
        metavar="URL",
        help="store URL: duckdb:///file.db, postgresql://user@host:port/db, "
        "iceberg://?uri=…&warehouse=…, kafka://host:port/topic",
    )
    parser.add_argument("--table", required=True, help="target table (Iceberg: namespace.table)")
    parser.add_argument("--key", required=True, help="key column(s), comma-separated")
    parser.add_argument("--version", help="version column (default: the time column)")
    parser.add_argument("--start", help="first event time (ISO-8601, inclusive)")
    parser.add_argument("--until", help="end event time (ISO-8601, exclusive)")
    parser.add_argument("--where", help="filter, e.g. \"kind = 'click' AND amount > 0\"")
    parser.add_argument("--select", help="columns to keep, comma-separated")
    parser.add_argument("--batch-rows", type=int, default=100_000, help="rows per store write")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    kafka_security.add_arguments(parser)  # for a kafka:// store


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _source(args: argparse.Namespace) -> Source:
    from .timeutil import to_micros

    start = to_micros(args.start) if args.start else None
    until = to_micros(args.until) if args.until else None
    if args.lake:
        from .sources.lake.parquet import ParquetLake

        return ParquetLake(args.lake, time_column=args.time_column, start=start, until=until)
    from .sources.lake.iceberg import IcebergLake

    catalog: dict[str, str] = {"name": args.catalog_name}
    if args.catalog_uri:
        catalog.update(type="sql", uri=args.catalog_uri)
    if args.warehouse:
        catalog["warehouse"] = args.warehouse
    lake: Source = IcebergLake(
        args.iceberg, catalog=catalog, time_column=args.time_column, start=start, until=until
    )
    return lake


def command(args: argparse.Namespace) -> int:
    """``lambdasource backfill``: returns the exit code (0 on success)."""
    from rich.console import Console

    from .cli import CliError
    from .jobfile.build import check_against_source
    from .sinks.urls import sink_from_url
    from .timeutil import format_time

    console = Console(highlight=False, stderr=True)
    keys = _split(args.key)
    if not keys:
        raise ConfigError("backfill: --key names no column")
    source = _source(args)
    version = args.version or args.time_column
    security = kafka_security.from_args(args)
    extra: dict[str, Any] = {}
    if security is not None:
        if not args.into.startswith("kafka://"):
            raise ConfigError(
                "backfill: the --security-protocol/--sasl-*/--ssl-* flags apply to a kafka:// store"
            )
        extra["security"] = security
    sink = sink_from_url(
        args.into, table=args.table, key=keys, version=version, batch_rows=args.batch_rows, **extra
    )
    where = None
    if args.where:
        text = args.where
        try:
            where = parse_filter(text)
            check_against_source(
                source, lambda s, described: check_filter(text, s, source=described)
            )
        except ConfigError as exc:
            raise type(exc)(f"--where: {exc}") from None
    select = _split(args.select) or None

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[cyan]backfill[/]"),
        BarColumn(),
        TextColumn("{task.fields[parts]}"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=args.quiet) as bar:
        task = bar.add_task("backfill", total=None, parts="", stats="")

        def show(p: BackfillProgress) -> None:
            parts = (
                f"{p.partitions_done}/{p.partitions_total} partitions"
                if p.partitions_total is not None
                else ""
            )
            eta = f" · ETA {p.eta_s:,.0f}s" if p.eta_s is not None else ""
            stats = (
                f"{p.rows_read:,} read · {p.rows_written:,} written · {p.rows_per_s:,.0f} rows/s"
                f" · watermark {format_time(p.watermark)}{eta}"
            )
            bar.update(
                task,
                total=p.partitions_total,
                completed=p.partitions_done or 0,
                parts=parts,
                stats=stats,
            )

        summary = asyncio.run(
            backfill(
                source, sink, key=keys, version=version, select=select, where=where, progress=show
            )
        )
    out = Console(highlight=False)
    out.print(
        f"backfill done: {summary.rows_read:,} rows read, {summary.rows_written:,} written, "
        f"{summary.skipped_older:,} skipped as older, {summary.deletes:,} deletes, "
        f"{summary.dead_letters:,} dead letters in {summary.elapsed_s:.1f}s "
        f"({summary.rows_per_s:,.0f} rows/s) → {args.table}"
    )
    if summary.all_dead_lettered:
        raise CliError(
            f"all {summary.dead_letters:,} input records went to dead letters, nothing was "
            f"written (first: {summary.first_dead_letter})"
        )
    return 0
