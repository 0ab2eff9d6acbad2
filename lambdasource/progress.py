"""The live progress display of long CLI commands (``demo``, ``bootstrap``, ``run``).

Reads only ``pipeline.metrics()`` (plain data), so it shows the same figures a notebook or a
monitoring scrape sees: phase, lake partitions done/total, events from lake and stream, rate,
global watermark, alignment skew and held splits, store writes.
"""

from __future__ import annotations

import time
from typing import Any

from .timeutil import format_span, format_time


def lambda_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The lambda source's block of ``pipeline.metrics()`` (empty when there is none)."""
    for source in (metrics.get("sources") or {}).values():
        if "handoff" in source:
            return dict(source)
    return {}


def events_seen(metrics: dict[str, Any]) -> int:
    """Events read so far by every source (lake + stream for a lambda source)."""
    lam = lambda_metrics(metrics)
    if lam:
        rows = lam.get("rows", {})
        return int(rows.get("lake", 0)) + int(rows.get("stream", 0))
    return sum(int(s.get("records_out", 0)) for s in (metrics.get("sources") or {}).values())


class ProgressPanel:
    """Renders metrics as a small rich grid; ``started`` is the run's ``time.monotonic()``."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started

    def __call__(self, metrics: dict[str, Any]) -> Any:
        from rich.table import Table

        lam = lambda_metrics(metrics)
        seen = events_seen(metrics)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        grid = Table.grid(padding=(0, 2))
        if lam:
            lake = lam.get("lake", {})
            rows = lam.get("rows", {})
            alignment = lam.get("alignment", {})
            held = [n for n, s in (alignment.get("splits") or {}).items() if s.get("held")]
            grid.add_row(
                f"[bold]{'stream' if lam.get('lake_finished') else 'lake'}[/]",
                f"partitions {lake.get('partitions_done', 0)}/{lake.get('partitions_total', '?')}",
                f"lake {int(rows.get('lake', 0)):,} · stream {int(rows.get('stream', 0)):,} events",
                f"{seen / elapsed:,.0f} ev/s",
            )
            grid.add_row(
                "watermark",
                format_time(metrics.get("global_watermark"))[:19],
                f"skew {format_span(int(alignment.get('max_skew_us') or 0))}",
                f"held: {', '.join(held) or 'none'}",
            )
        else:
            grid.add_row(
                "[bold]running[/]",
                f"{seen:,} events",
                f"{seen / elapsed:,.0f} ev/s",
                f"watermark {format_time(metrics.get('global_watermark'))[:19]}",
            )
        for name, sink in (metrics.get("sinks") or {}).items():
            if "rows_written" in sink:
                grid.add_row(
                    name,
                    f"{int(sink.get('rows_written') or 0):,} rows written",
                    f"{int(sink.get('conflicts_skipped') or 0):,} older skipped",
                    f"late {int(metrics.get('late') or 0):,}",
                )
        return grid
