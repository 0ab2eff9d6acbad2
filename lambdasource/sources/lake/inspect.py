"""``lambdasource inspect``: what a lake holds — partitions, rows, time ranges, gaps, files, offsets.

Everything comes from listings, footers (Parquet) or manifests (Iceberg): no data page is read.
``inspect_parquet`` / ``inspect_iceberg`` return a :class:`LakeReport` (plain data);
``format_report`` renders it as a table. ``add_arguments`` / ``command`` are the CLI glue.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ...errors import ConfigError, SchemaError
from ...s3 import S3Config
from ...timeutil import format_time
from .commits import CommitRecord
from .reader import LakeMetrics, LakePartition, note_missing_partitions


@dataclass
class PartitionSummary:
    """One partition (or, for unpartitioned lakes, one file): counts and time range (µs)."""

    label: str
    start: int | None
    end: int | None
    files: int
    rows: int
    bytes: int
    min_time: int | None
    max_time: int | None


@dataclass
class LakeReport:
    """What ``inspect`` found (plain data)."""

    kind: str
    location: str
    layout: str
    time_column: str
    partitions: list[PartitionSummary] = field(default_factory=list)
    missing_partitions: list[str] = field(default_factory=list)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    unreadable_files: list[dict[str, str]] = field(default_factory=list)
    recorded: CommitRecord | None = None
    high_water_mark: int | None = None

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def files(self) -> int:
        return sum(p.files for p in self.partitions)


def _summaries(partitions: list[LakePartition]) -> list[PartitionSummary]:
    out = []
    for p in partitions:
        lows = [f.min_time for f in p.files if f.min_time is not None]
        highs = [f.max_time for f in p.files if f.max_time is not None]
        out.append(
            PartitionSummary(
                label=p.label,
                start=p.start,
                end=p.end,
                files=len(p.files),
                rows=sum(f.rows or 0 for f in p.files),
                bytes=sum(f.size for f in p.files),
                min_time=min(lows) if lows else None,
                max_time=max(highs) if highs else None,
            )
        )
    return out


def _guess_time_column(schema: pa.Schema) -> str:
    for f in schema:
        if pa.types.is_timestamp(f.type):
            return f.name
    raise SchemaError(f"no timestamp column to inspect in {schema.names}; pass time_column")


async def ainspect_parquet(
    path: str | Path, s3: S3Config | None = None, time_column: str | None = None
) -> LakeReport:
    """Inspect a Parquet lake (async)."""
    from .parquet import ParquetLake
    from .reader import parse_metadata

    lake = ParquetLake(path, time_column or "", on_corrupt="quarantine", name="inspect")
    lake.s3 = s3
    async with lake._storage() as storage:
        plan = await lake.plan(storage, read_footers=False)
        if not time_column:
            first = next((f for p in plan.partitions for f in p.files), None)
            if first is None:
                time_column = "?"
            else:
                tail = await storage.read_footer(first.path, first.size)
                metadata = parse_metadata(tail, storage.url(first.path))
                time_column = _guess_time_column(metadata.schema.to_arrow_schema())
            lake.time_column = time_column
        await lake._read_footers(storage, plan.partitions)
        commits = plan.commits
    partitions = plan.partitions
    metrics: LakeMetrics = lake._metrics
    if plan.layout is not None and plan.layout.flat:
        partitions = [p for p in partitions if p.files]
    else:
        note_missing_partitions(partitions, metrics, name="inspect")
    recorded = await lake.recorded_offsets() if commits else None
    hwm = lake._plan_high_water_mark(plan)
    return LakeReport(
        kind="parquet",
        location=str(path),
        layout=plan.layout.kind if plan.layout else "?",
        time_column=time_column,
        partitions=_summaries(partitions),
        missing_partitions=list(metrics.missing_partition_labels),
        skipped_files=list(metrics.skipped_files),
        orphan_files=list(metrics.orphan_files),
        unreadable_files=list(metrics.quarantined_files),
        recorded=recorded,
        high_water_mark=hwm,
    )


async def ainspect_iceberg(
    identifier: str, catalog: Any, time_column: str | None = None
) -> LakeReport:
    """Inspect an Iceberg table (async); ``time_column`` defaults to its first timestamp column."""
    from .iceberg import IcebergLake, load_catalog_from

    cat = load_catalog_from(catalog)
    if time_column is None:
        table = await asyncio.to_thread(cat.load_table, identifier)
        time_column = _guess_time_column(table.schema().as_arrow())
    lake = IcebergLake(identifier, cat, time_column, name="inspect")
    planned = await asyncio.to_thread(lake._plan_sync, bounded=False)
    metrics = LakeMetrics()
    if planned.event_time_partitioned:
        note_missing_partitions(planned.partitions, metrics, name="inspect")
    return LakeReport(
        kind="iceberg",
        location=identifier,
        layout="hours/days partition" if planned.event_time_partitioned else "unpartitioned",
        time_column=time_column,
        partitions=_summaries(planned.partitions),
        missing_partitions=list(metrics.missing_partition_labels),
        recorded=await lake.recorded_offsets(),
        high_water_mark=await lake.high_water_mark(),
    )


def inspect_parquet(
    path: str | Path, s3: S3Config | None = None, time_column: str | None = None
) -> LakeReport:
    """Inspect a Parquet lake (local path, ``file://`` or ``s3://``); blocking."""
    return asyncio.run(ainspect_parquet(path, s3, time_column))


def inspect_iceberg(identifier: str, catalog: Any, time_column: str | None = None) -> LakeReport:
    """Inspect an Iceberg table; ``catalog`` as for ``IcebergLake``; blocking."""
    return asyncio.run(ainspect_iceberg(identifier, catalog, time_column))


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_report(report: LakeReport) -> str:
    """A plain-text table of partitions followed by totals, gaps, left-out files and offsets."""
    head = ("partition", "files", "rows", "size", "min time", "max time")
    rows = [
        (
            p.label,
            f"{p.files:,}",
            f"{p.rows:,}",
            _human_bytes(p.bytes),
            format_time(p.min_time),
            format_time(p.max_time),
        )
        for p in report.partitions
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    right = {1, 2, 3}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [
        f"{report.kind} lake {report.location}  (layout: {report.layout}, "
        f"time column: {report.time_column})",
        "",
        line(head),
        line(tuple("-" * w for w in widths)),
        *(line(r) for r in rows),
        "",
        f"partitions: {len(report.partitions):,}   files: {report.files:,}   rows: {report.rows:,}",
        f"high-water mark: {format_time(report.high_water_mark)}",
    ]
    if report.missing_partitions:
        shown = ", ".join(report.missing_partitions[:20])
        more = " …" if len(report.missing_partitions) > 20 else ""
        out.append(f"gaps ({len(report.missing_partitions)} missing partitions): {shown}{more}")
    else:
        out.append("gaps: none")
    if report.skipped_files:
        out.append(f"skipped non-data files ({len(report.skipped_files)}):")
        out += [f"  {s['file']}  ({s['reason']})" for s in report.skipped_files[:50]]
    if report.orphan_files:
        out.append(f"orphan files, in no commit ({len(report.orphan_files)}):")
        out += [f"  {f}" for f in report.orphan_files[:50]]
    if report.unreadable_files:
        out.append(f"unreadable files ({len(report.unreadable_files)}):")
        out += [f"  {u['file']}: {u['reason']}" for u in report.unreadable_files[:50]]
    if report.recorded is not None:
        out.append(report.recorded.describe_positions())
    else:
        out.append("recorded offsets: none")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``inspect PATH`` or ``inspect --iceberg IDENT --catalog-uri URI --warehouse W``."""
    parser.add_argument("path", nargs="?", help="Parquet lake: local path, file:// or s3://")
    parser.add_argument("--iceberg", metavar="IDENT", help="Iceberg table identifier (db.table)")
    parser.add_argument("--catalog-uri", metavar="URI", help="catalog URI (sqlite:///…, http://…)")
    parser.add_argument("--warehouse", metavar="W", help="Iceberg warehouse location")
    parser.add_argument("--catalog-name", default="default", help="catalog name")
    parser.add_argument(
        "--time-column", default=None, help="event-time column (default: first timestamp)"
    )
    parser.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (e.g. moto)")
    parser.add_argument(
        "--checkpoint",
        metavar="URL",
        help="show a checkpoint at URL (file:// path or s3://): its nodes with their state "
        "sizes, the pinned lake state and the positions",
    )
    parser.add_argument(
        "--checkpoint-id", type=int, default=None, help="which checkpoint (default: the newest)"
    )
    parser.add_argument(
        "--export", metavar="NODE", help="with --checkpoint: write NODE's state as Parquet files"
    )
    parser.add_argument("--to", metavar="DIR", help="folder for --export (created if missing)")


async def acheckpoint_sources(url: str, s3: S3Config | None = None) -> tuple[int, dict[str, Any]]:
    """The newest complete checkpoint at ``url``: its id and, per source that has one, the
    pinned lake state and positions (plain data). Reads only checkpoints this job wrote."""
    from ...checkpoints.inspect import read_checkpoint

    newest, _, payload = await read_checkpoint(url, s3, state=True)
    assert payload is not None
    return newest, _source_states(payload)


def _source_states(payload: dict[str, Any]) -> dict[str, Any]:
    """Per lake or lambda source of a decoded checkpoint: its state (plain data)."""
    from ...checkpoints.format import thaw

    sources: dict[str, Any] = {}
    for name, node in payload["nodes"].items():
        state = thaw(node)
        if isinstance(state, dict) and ("lake" in state or "state" in state):
            sources[name] = state
    return sources


def format_checkpoint(checkpoint_id: int, sources: dict[str, Any]) -> str:
    """Render what :func:`acheckpoint_sources` found."""
    out = [f"checkpoint {checkpoint_id}"]
    if not sources:
        out.append("  no lake source state in this checkpoint")
    for name, state in sorted(sources.items()):
        lake = state.get("lake", state)
        pinned = (lake or {}).get("state") or {}
        position = (lake or {}).get("position") or {}
        out.append(f"source {name}:")
        kind = pinned.get("kind", "-")
        what = {
            "commits": f"commit sequence {pinned.get('sequence')}",
            "snapshot": f"Iceberg snapshot_id {pinned.get('snapshot_id')}",
            "files": f"{len(pinned.get('files', []))} pinned file(s)",
        }.get(kind, "none (a checkpoint from before pinned states)")
        out.append(f"  pinned lake state: {what}")
        offsets = pinned.get("offsets") or {}
        if offsets:
            shown = ", ".join(
                f"{p}:{o}" for p, o in sorted(offsets.items(), key=lambda i: int(i[0]))
            )
            out.append(f"  recorded offsets (topic {pinned.get('topic') or '-'}): {shown}")
        hwm = pinned.get("high_watermark_us")
        out.append(f"  recorded high-water mark: {format_time(hwm) if hwm is not None else '-'}")
        if position:
            where = f"partition {position.get('partition')} chunk {position.get('chunk')}"
            if position.get("file"):
                where += f" file={position['file']} row_group={position.get('row_group')}"
            out.append(f"  lake position: {where} rows={position.get('rows')}")
        if "cutoff" in state and state["cutoff"] is not None:
            out.append(f"  cutoff: {format_time(state['cutoff'])}")
        stream = state.get("stream") or {}
        if stream:
            positions = stream.get("positions", stream)
            shown = ", ".join(f"{p}:{o}" for p, o in sorted(positions.items()))
            out.append(f"  stream next offsets: {shown}")
            held = stream.get("held") or {}
            if held:
                rows = ", ".join(f"{p}:{len(h['offsets'])}" for p, h in sorted(held.items()))
                out.append(f"  rows held by alignment: {rows}")
    return "\n".join(out)


def _inspect_checkpoint(args: argparse.Namespace, s3: S3Config | None) -> int:
    from ...checkpoints.inspect import export_node, format_nodes, read_checkpoint

    url: str = args.checkpoint
    if args.export and not args.to:
        raise ConfigError("inspect --export NODE needs --to DIR")
    checkpoint_id, manifest, payload = asyncio.run(
        read_checkpoint(url, s3, args.checkpoint_id, state=True)
    )
    assert payload is not None
    if args.export:
        files = export_node(payload, args.export, Path(args.to))
        for path in files:
            print(f"wrote {path}")
        if not files:
            print(f"node {args.export!r} holds no tables in checkpoint {checkpoint_id}")
        return 0
    print(format_nodes(checkpoint_id, manifest))
    print(format_checkpoint(checkpoint_id, _source_states(payload)))
    return 0


def command(args: argparse.Namespace) -> int:
    """Run ``inspect`` from parsed arguments; prints the report; returns the exit code."""
    s3 = S3Config(endpoint_url=args.s3_endpoint) if getattr(args, "s3_endpoint", None) else None
    if getattr(args, "checkpoint", None):
        return _inspect_checkpoint(args, s3)
    if getattr(args, "export", None):
        raise ConfigError("inspect --export needs --checkpoint URL")
    if args.iceberg:
        if not args.catalog_uri:
            raise ConfigError("inspect --iceberg needs --catalog-uri")
        uri = str(args.catalog_uri)
        props: dict[str, str] = {
            "name": args.catalog_name,
            "type": "rest" if uri.startswith(("http://", "https://")) else "sql",
            "uri": uri,
        }
        if args.warehouse:
            props["warehouse"] = args.warehouse
        if s3 is not None:
            props.update(s3.pyiceberg_properties())
        report = inspect_iceberg(args.iceberg, props, args.time_column)
    elif args.path:
        report = inspect_parquet(args.path, s3, args.time_column)
    else:
        raise ConfigError("inspect: give a lake PATH or --iceberg IDENT --catalog-uri URI")
    print(format_report(report))
    return 0
