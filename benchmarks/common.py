"""Shared plumbing for the benchmarks: timing, memory, results files and Markdown tables.

Memory is measured two ways. ``peak_rss_mb()`` is the process's lifetime peak (``getrusage``),
what an operator sees. For one phase of a benchmark we reset the kernel's peak counter first
(Linux: writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM``), so :class:`PhaseMemory`
gives the peak while that phase ran; elsewhere it falls back to the lifetime peak and says so.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# Peaks seen before each reset of the kernel's counter (which also resets ``ru_maxrss``).
_peak_before_resets_mb = 0.0


def peak_rss_mb() -> float:
    """Lifetime peak resident set size of this process, in MiB (``resource.getrusage``, combined
    with the peaks recorded before :func:`measure_phase` reset the kernel's counter)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    now = peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    return max(now, _peak_before_resets_mb)


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def _reset_peak() -> bool:
    global _peak_before_resets_mb
    _peak_before_resets_mb = peak_rss_mb()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


@dataclass
class PhaseMemory:
    """Peak RSS while a ``with measure_phase()`` block ran (MiB); ``exact`` False = lifetime peak."""

    start_mb: float | None = None
    peak_mb: float | None = None
    exact: bool = False

    @property
    def growth_mb(self) -> float | None:
        if self.start_mb is None or self.peak_mb is None:
            return None
        return self.peak_mb - self.start_mb


@contextmanager
def measure_phase() -> Iterator[PhaseMemory]:
    """Collect garbage, return Arrow's free memory to the OS, reset the peak-RSS counter, run the
    block, record the peak. ``growth_mb`` is what the block added on top of what was resident."""
    import pyarrow

    gc.collect()
    pyarrow.default_memory_pool().release_unused()
    phase = PhaseMemory(start_mb=current_rss_mb())
    phase.exact = _reset_peak()
    try:
        yield phase
    finally:
        hwm = _status_kib("VmHWM") if phase.exact else None
        phase.peak_mb = hwm / 1024 if hwm is not None else peak_rss_mb()


@dataclass
class Timer:
    seconds: float = 0.0


@contextmanager
def timed() -> Iterator[Timer]:
    timer = Timer()
    start = time.perf_counter()
    try:
        yield timer
    finally:
        timer.seconds = time.perf_counter() - start


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Machine and library versions, recorded next to every result."""
    import duckdb
    import numpy
    import pyarrow

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "pyarrow": pyarrow.__version__,
        "numpy": numpy.__version__,
        "duckdb": duckdb.__version__,
        "git_revision": git_revision(),
        # Other work on the machine skews timings; the load average shows how much there was.
        "load_average_1_5_15m": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


@dataclass
class Report:
    """One benchmark's output: parameters, rows of figures, notes; saved as JSON."""

    name: str
    parameters: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": self.parameters,
            "environment": environment(),
            "rows": self.rows,
            "notes": self.notes,
            **self.extra,
        }

    def save(self, directory: Path = RESULTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = directory / f"{self.name}-{stamp}.json"
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return path


def fmt(value: Any) -> str:
    """Compact human formatting for table cells."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Render ``rows`` as a Markdown table; ``columns`` are (key, heading) pairs."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])
