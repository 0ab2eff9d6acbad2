"""Engine benchmark: a 30-day sliding window (5-minute slide), count + sum per user, ``changes``.

Three implementations compute the same changelog from the same Arrow table, in the same process:

- **lambdasource** — the public API: ``MemorySource`` → ``key_by`` → ``Sliding(size, slide)`` with
  ``emit="changes"`` → ``CollectSink``.
- **DuckDB** — one SQL query: aggregate per (key, slice); each slice contributes ``+`` at the first
  window end that contains it and ``−`` at the first that no longer does; running sums per key
  (window functions) give each window's value at every end where it changes; keep those ends, with a
  deletion row where the count drops to 0. Never expands records into their size/slide windows.
- **naive** — pure Python + pyarrow that materialises a copy of every window's records
  (O(records × size/slide) work and copies); run on a small input only, to show the contrast.

Results are compared first (they must be equal, row for row, as multisets), then timed. The
changelog is exactly DESIGN §3 ``changes``: one row per (key, window end) whose aggregates differ
from the key's previous window end, a deletion row when the key's window becomes empty, up to the
last window the final watermark completes (a bounded ``MemorySource`` ends at the max event time).
Amounts from the generator are multiples of 0.25, so float sums are exact in any order and the
comparison can demand equality.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from lake.generator import generate_clickstream

from .common import Report, fmt, markdown_table, measure_phase, peak_rss_mb, timed

TIME = "event_time"
KEY = "user_id"
VALUE = "amount"
US_PER_MINUTE = 60_000_000
US_PER_DAY = 1_440 * US_PER_MINUTE
TS = pa.timestamp("us", tz="UTC")

RESULT_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.int64()),
        pa.field("window_start", TS),
        pa.field("window_end", TS),
        pa.field("clicks", pa.int64()),
        pa.field("revenue", pa.float64()),
        pa.field("_deleted", pa.bool_()),
    ]
)

console = Console(highlight=False)


@dataclass(frozen=True)
class WindowParams:
    size: int  # µs
    slide: int  # µs

    @property
    def slice(self) -> int:
        return math.gcd(self.size, self.slide)

    @property
    def windows_per_record(self) -> int:
        return self.size // self.slide


def parse_duration(text: str) -> int:
    """Durations as the engine spells them (``30d``, ``5m``); kept local so DuckDB/naive do not
    depend on the engine being importable."""
    units = {"ms": 1_000, "s": 1_000_000, "m": US_PER_MINUTE, "h": 60 * US_PER_MINUTE}
    units["d"] = US_PER_DAY
    for suffix in ("ms", "s", "m", "h", "d"):
        number = text[: -len(suffix)]
        if text.endswith(suffix) and number.isdigit():
            return int(number) * units[suffix]
    raise argparse.ArgumentTypeError(f"cannot parse duration {text!r} (use e.g. 30d, 5m, 90s)")


def final_watermark(table: pa.Table) -> int:
    """The watermark a bounded MemorySource (no ``until``) ends with: the max event time."""
    return int(pc.max(table.column(TIME)).cast(pa.int64()).as_py())


def normalise(table: pa.Table) -> pa.Table:
    """Project and cast a result to :data:`RESULT_SCHEMA` (for comparison)."""
    missing = [f.name for f in RESULT_SCHEMA if f.name not in table.schema.names]
    if missing:
        raise ValueError(f"result lacks columns {missing}; has {table.schema.names}")
    return table.select(RESULT_SCHEMA.names).cast(RESULT_SCHEMA)


def fetch_arrow(cursor: Any) -> pa.Table:
    """A DuckDB result as an Arrow table (``to_arrow_table`` in duckdb 2, ``fetch_arrow_table``
    before)."""
    fetch = getattr(cursor, "to_arrow_table", None) or cursor.fetch_arrow_table
    table: pa.Table = fetch()
    return table


# --- DuckDB ---------------------------------------------------------------------------------------

DUCKDB_CHANGELOG = """
WITH slices AS (
    SELECT {key} AS k, (epoch_us({time}) // {g}) * {g} AS a, count(*) AS c, sum({value}) AS s
    FROM events
    GROUP BY ALL
),
deltas AS (
    SELECT k, ((a + {g} + {d} - 1) // {d}) * {d} AS e, c AS dc, s AS ds FROM slices
    UNION ALL
    SELECT k, ((a + {size}) // {d}) * {d} + {d} AS e, -c AS dc, -s AS ds FROM slices
),
changes AS (
    SELECT k, e, sum(dc) AS dc, sum(ds) AS ds
    FROM deltas
    WHERE e <= {last_end}
    GROUP BY ALL
    HAVING sum(dc) <> 0 OR sum(ds) <> 0
),
running AS (
    SELECT k, e,
           sum(dc) OVER w AS n,
           sum(ds) OVER w AS total
    FROM changes
    WINDOW w AS (PARTITION BY k ORDER BY e ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT k AS {key},
       e - {size} AS window_start,
       e AS window_end,
       CASE WHEN n > 0 THEN n::BIGINT END AS clicks,
       CASE WHEN n > 0 THEN total END AS revenue,
       n = 0 AS _deleted
FROM running
"""


def duckdb_changelog(table: pa.Table, window: WindowParams, threads: int | None = None) -> pa.Table:
    """The ``changes`` changelog computed by DuckDB from ``table`` (see the module docstring)."""
    import duckdb

    last_end = final_watermark(table) + 1  # windows with end - 1 <= final watermark are complete
    sql = DUCKDB_CHANGELOG.format(
        key=KEY,
        time=TIME,
        value=VALUE,
        g=window.slice,
        d=window.slide,
        size=window.size,
        last_end=last_end,
    )
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.register("events", table)
        result = fetch_arrow(con.sql(sql))
    finally:
        con.close()
    return pa.table(
        {
            KEY: result.column(KEY),
            "window_start": result.column("window_start").cast(TS),
            "window_end": result.column("window_end").cast(TS),
            "clicks": result.column("clicks"),
            "revenue": result.column("revenue"),
            "_deleted": result.column("_deleted"),
        }
    )


def duckdb_threads() -> int:
    import duckdb

    con = duckdb.connect()
    try:
        row = con.execute("SELECT current_setting('threads')").fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


# --- naive: one copy per window -------------------------------------------------------------------


@dataclass
class NaiveStats:
    windows: int = 0
    rows_copied: int = 0


def naive_changelog(table: pa.Table, window: WindowParams, stats: NaiveStats) -> pa.Table:
    """Materialise every (key, window) — a copy of its records — then diff consecutive windows."""
    size, slide = window.size, window.slide
    last_end = final_watermark(table) + 1
    data = table.select([KEY, TIME, VALUE]).sort_by([(KEY, "ascending"), (TIME, "ascending")])
    keys = data.column(KEY).to_numpy()
    times = data.column(TIME).cast(pa.int64()).to_numpy()
    bounds = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(keys)]])
    out: dict[str, list[Any]] = {name: [] for name in RESULT_SCHEMA.names}
    for lo, hi in zip(starts.tolist(), stops.tolist(), strict=True):
        key = int(keys[lo])
        rows = data.slice(lo, hi - lo)
        key_times = times[lo:hi]
        first_end = (int(key_times[0]) // slide + 1) * slide  # first end > earliest record
        stop_end = min((int(key_times[-1]) + size) // slide * slide + slide, last_end)
        previous: tuple[int, float] | None = None
        for end in range(first_end, stop_end + 1, slide):
            a = int(np.searchsorted(key_times, end - size, side="left"))
            b = int(np.searchsorted(key_times, end, side="left"))
            records = rows.take(pa.array(np.arange(a, b)))  # the copy: one per window
            stats.windows += 1
            stats.rows_copied += records.num_rows
            value: tuple[int, float] | None = None
            if records.num_rows:
                value = (records.num_rows, float(pc.sum(records.column(VALUE)).as_py()))
            if value != previous:
                out[KEY].append(key)
                out["window_start"].append(end - size)
                out["window_end"].append(end)
                out["clicks"].append(value[0] if value else None)
                out["revenue"].append(value[1] if value else None)
                out["_deleted"].append(value is None)
            previous = value
    return pa.table(
        {
            KEY: pa.array(out[KEY], pa.int64()),
            "window_start": pa.array(out["window_start"], pa.int64()).cast(TS),
            "window_end": pa.array(out["window_end"], pa.int64()).cast(TS),
            "clicks": pa.array(out["clicks"], pa.int64()),
            "revenue": pa.array(out["revenue"], pa.float64()),
            "_deleted": pa.array(out["_deleted"], pa.bool_()),
        }
    )


# --- lambdasource ---------------------------------------------------------------------------------


@dataclass
class EngineRun:
    result: pa.Table
    metrics: dict[str, Any]
    peak_state_rows: int | None = None
    peak_state_bytes: int | None = None


def state_size(metrics: dict[str, Any]) -> tuple[int | None, int | None]:
    """(rows, bytes) of window state from ``pipeline.metrics()``, wherever it is reported."""
    buffered = metrics.get("buffered")
    if isinstance(buffered, dict) and "state_rows" in buffered:
        return int(buffered["state_rows"]), _int_or_none(buffered.get("state_bytes"))
    # Hook: other layouts — sum every "state_rows"/"state_bytes" found anywhere.
    rows = _find_numbers(metrics, "state_rows")
    nbytes = _find_numbers(metrics, "state_bytes")
    return (sum(rows) if rows else None), (sum(nbytes) if nbytes else None)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _find_numbers(node: Any, name: str) -> list[int]:
    found: list[int] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == name and isinstance(value, int | float):
                found.append(int(value))
            else:
                found.extend(_find_numbers(value, name))
    return found


def engine_changelog(
    table: pa.Table,
    window: WindowParams,
    batch_size: int,
    *,
    sample_state: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> EngineRun:
    """Run the job through ``lambdasource``'s public API; optionally sample state size while it runs.

    Without ``sample_state`` and ``on_progress`` this is exactly ``pipeline.run_sync()``.
    """
    import lambdasource as ls

    pipeline = ls.Pipeline()
    sink = ls.CollectSink()
    (
        pipeline.source(
            ls.MemorySource(table, time_column=TIME, batch_size=batch_size, out_of_orderness="0s")
        )
        .key_by(KEY)
        .window(ls.Sliding(window.size, window.slide), emit="changes")
        .aggregate(clicks=ls.count(), revenue=ls.sum(VALUE))
        .sink(sink)
    )
    peak_rows: int | None = None
    peak_bytes: int | None = None

    if not sample_state and on_progress is None:
        pipeline.run_sync()
    else:

        def sample() -> None:
            nonlocal peak_rows, peak_bytes
            metrics = pipeline.metrics()
            rows, nbytes = state_size(metrics)
            if rows is not None:
                peak_rows = max(peak_rows or 0, rows)
            if nbytes is not None:
                peak_bytes = max(peak_bytes or 0, nbytes)
            if on_progress is not None:
                on_progress(metrics)

        async def run_and_sample() -> None:
            task = asyncio.create_task(pipeline.run())
            while not task.done():
                await asyncio.wait({task}, timeout=0.1)
                sample()
            await task

        asyncio.run(run_and_sample())
    result = sink.table()
    metrics = pipeline.metrics()
    rows, nbytes = state_size(metrics)
    if rows is not None:
        peak_rows = max(peak_rows or 0, rows)
    if nbytes is not None:
        peak_bytes = max(peak_bytes or 0, nbytes)
    return EngineRun(result, metrics, peak_rows, peak_bytes)


# --- comparison -----------------------------------------------------------------------------------


@dataclass
class Comparison:
    equal: bool
    rows_left: int
    rows_right: int
    only_left: int
    only_right: int
    sample: list[dict[str, Any]] = field(default_factory=list)

    def describe(self, left: str, right: str) -> str:
        if self.equal:
            return f"{left} == {right}: {self.rows_left:,} rows match"
        return (
            f"{left} != {right}: {self.rows_left:,} vs {self.rows_right:,} rows; "
            f"{self.only_left:,} only in {left}, {self.only_right:,} only in {right}; "
            f"e.g. {self.sample[:6]}"
        )


def compare(left: pa.Table, right: pa.Table) -> Comparison:
    """Multiset equality of two changelogs (NULLs equal), computed by DuckDB ``EXCEPT ALL``."""
    import duckdb

    a, b = normalise(left), normalise(right)
    con = duckdb.connect()
    try:
        con.register("a", a)
        con.register("b", b)
        # fetchall() consumes each result fully (a pending result blocks the next query)
        n_a = int(
            con.execute(
                "SELECT count(*) FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b)"
            ).fetchall()[0][0]
        )
        n_b = int(
            con.execute(
                "SELECT count(*) FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM a)"
            ).fetchall()[0][0]
        )
        sample: list[dict[str, Any]] = []
        if n_a or n_b:
            query = """
                (SELECT 'left' AS side, * FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b))
                UNION ALL
                (SELECT 'right' AS side, * FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM a))
                ORDER BY user_id, window_end, side LIMIT 20
            """
            sample = fetch_arrow(con.sql(query)).to_pylist()
    finally:
        con.close()
    return Comparison(
        n_a == 0 and n_b == 0 and a.num_rows == b.num_rows, a.num_rows, b.num_rows, n_a, n_b, sample
    )


# --- the benchmark --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=10_000_000, help="events (default 10M)")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct users (default 100k)")
    parser.add_argument("--days", type=int, default=30, help="days of event time (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=parse_duration, default="30d", help="window size (30d)")
    parser.add_argument("--slide", type=parse_duration, default="5m", help="window slide (5m)")
    parser.add_argument("--batch-size", type=int, default=100_000, help="source batch rows")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs each; best is reported")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all)")
    parser.add_argument(
        "--single-thread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time DuckDB on 1 thread, for information (the ratio stays against --threads)",
    )
    parser.add_argument("--naive-events", type=int, default=20_000, help="small input for naive")
    parser.add_argument("--naive-keys", type=int, default=100)
    parser.add_argument("--naive-days", type=int, default=3)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive contrast")


def _row(
    contender: str,
    dataset: str,
    events: int,
    seconds: float,
    baseline: float | None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "contender": contender,
        "input": dataset,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds > 0 else None,
        "ratio_vs_duckdb": seconds / baseline if baseline else None,
        **extra,
    }


def _best(times: list[float]) -> float:
    return min(times)


def run(args: argparse.Namespace) -> Report:
    window = WindowParams(size=args.size, slide=args.slide)
    threads = args.threads or duckdb_threads()
    parameters = {
        "events": args.events,
        "keys": args.keys,
        "days": args.days,
        "seed": args.seed,
        "window": {"size_us": window.size, "slide_us": window.slide, "slice_us": window.slice},
        "emit": "changes",
        "aggregates": ["count()", f"sum({VALUE})"],
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "duckdb_threads": threads,
    }
    report = Report("engine", parameters)
    report.extra["load_average_at_start"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    label = f"{args.events:,} events · {args.keys:,} keys · {args.days} d"

    console.print(f"[bold]engine benchmark[/]: {label}; Sliding(size, slide) count+sum, changes")
    with timed() as t_gen:
        table = generate_clickstream(args.events, args.days, args.keys, seed=args.seed)
        table = table.combine_chunks()
    console.print(f"  generated input in {t_gen.seconds:.1f}s ({table.nbytes / 2**20:,.0f} MiB)")

    # 1. correctness first: one run each, compared; the engine run also samples its state size.
    console.print("  check: lambdasource vs DuckDB …")
    engine = engine_changelog(table, window, args.batch_size, sample_state=True)
    reference = duckdb_changelog(table, window, threads)
    check = compare(engine.result, reference)
    console.print(f"  {check.describe('lambdasource', 'duckdb')}")
    output_rows = reference.num_rows
    late = engine.metrics.get("late")
    del engine.result, reference
    gc.collect()
    if not check.equal:
        report.notes.append("RESULTS DIFFER: " + check.describe("lambdasource", "duckdb"))

    # 2. timing: alternate the contenders, best of --repeat, peak RSS per phase.
    engine_times: list[float] = []
    duck_times: list[float] = []
    engine_mem: list[float] = []
    duck_mem: list[float] = []
    single_times: list[float] = []
    for i in range(args.repeat):
        with measure_phase() as mem, timed() as t:
            engine_changelog(table, window, args.batch_size)
        engine_times.append(t.seconds)
        engine_mem.append(mem.growth_mb or 0.0)
        console.print(f"  run {i + 1}: lambdasource {t.seconds:.2f}s")
        gc.collect()
        with measure_phase() as mem, timed() as t:
            duckdb_changelog(table, window, threads)
        duck_times.append(t.seconds)
        duck_mem.append(mem.growth_mb or 0.0)
        console.print(f"  run {i + 1}: duckdb       {t.seconds:.2f}s ({threads} threads)")
        gc.collect()
        if args.single_thread and threads != 1:
            with timed() as t:
                duckdb_changelog(table, window, 1)
            single_times.append(t.seconds)
            console.print(f"  run {i + 1}: duckdb       {t.seconds:.2f}s (1 thread)")
            gc.collect()
    duck_best = _best(duck_times)
    paired = sorted(e / d for e, d in zip(engine_times, duck_times, strict=True))
    report.extra["ratio_per_run"] = paired
    report.extra["ratio_per_run_median"] = paired[len(paired) // 2]
    keys_seen = int(pc.count_distinct(table.column(KEY)).as_py())
    slices_per_window = window.size // window.slice
    report.rows.append(
        _row(
            "lambdasource",
            label,
            args.events,
            _best(engine_times),
            duck_best,
            times=engine_times,
            peak_rss_growth_mb=max(engine_mem),
            state_rows=engine.peak_state_rows,
            state_bytes=engine.peak_state_bytes,
            output_rows=output_rows,
            late=late,
            equal=check.equal,
        )
    )
    report.rows.append(
        _row(
            f"duckdb ({threads} threads)",
            label,
            args.events,
            duck_best,
            duck_best,
            times=duck_times,
            peak_rss_growth_mb=max(duck_mem),
            output_rows=output_rows,
            equal=True,
        )
    )
    if single_times:
        report.rows.append(
            _row(
                "duckdb (1 thread)",
                label,
                args.events,
                _best(single_times),
                duck_best,
                times=single_times,
                output_rows=output_rows,
                equal=True,
            )
        )
    report.extra["state_bounds"] = {
        "keys": keys_seen,
        "slices_per_window": slices_per_window,
        "keys_x_slices": keys_seen * (slices_per_window + 1),
        "records_x_windows_per_record": args.events * window.windows_per_record,
        "measured_peak_state_rows": engine.peak_state_rows,
    }
    if engine.peak_state_rows is None:
        report.notes.append("pipeline.metrics() reported no window state rows (hook left open)")
    del table
    gc.collect()

    # 3. the contrast: naive one-copy-per-window on a small input, same check, same comparison.
    if not args.no_naive:
        _naive(args, window, threads, report)

    report.extra["process_peak_rss_mb"] = peak_rss_mb()
    return report


def _naive(args: argparse.Namespace, window: WindowParams, threads: int, report: Report) -> None:
    small = generate_clickstream(args.naive_events, args.naive_days, args.naive_keys, args.seed)
    small = small.combine_chunks()
    label = f"{args.naive_events:,} events · {args.naive_keys:,} keys · {args.naive_days} d"
    console.print(f"  naive contrast on a small input: {label} …")
    stats = NaiveStats()
    with measure_phase() as mem_naive, timed() as t_naive:
        naive = naive_changelog(small, window, stats)
    with measure_phase() as mem_engine, timed() as t_engine:
        engine = engine_changelog(small, window, args.batch_size).result
    with timed() as t_duck:
        duck = duckdb_changelog(small, window, threads)
    check_naive = compare(naive, duck)
    check_engine = compare(engine, duck)
    console.print(f"  {check_naive.describe('naive', 'duckdb')}")
    console.print(f"  {check_engine.describe('lambdasource', 'duckdb')}")
    for name, check in (("naive", check_naive), ("lambdasource", check_engine)):
        if not check.equal:
            report.notes.append(f"RESULTS DIFFER (small input): {check.describe(name, 'duckdb')}")
    report.rows.append(
        _row(
            "naive one-copy-per-window",
            label,
            args.naive_events,
            t_naive.seconds,
            t_duck.seconds,
            peak_rss_growth_mb=mem_naive.growth_mb,
            windows_materialised=stats.windows,
            rows_copied=stats.rows_copied,
            output_rows=naive.num_rows,
            equal=check_naive.equal,
        )
    )
    report.rows.append(
        _row(
            "lambdasource",
            label,
            args.naive_events,
            t_engine.seconds,
            t_duck.seconds,
            peak_rss_growth_mb=mem_engine.growth_mb,
            output_rows=engine.num_rows,
            equal=check_engine.equal,
        )
    )
    report.rows.append(
        _row(
            f"duckdb ({threads} threads)",
            label,
            args.naive_events,
            t_duck.seconds,
            t_duck.seconds,
            output_rows=duck.num_rows,
            equal=True,
        )
    )


COLUMNS: list[tuple[str, str]] = [
    ("contender", "implementation"),
    ("input", "input"),
    ("seconds", "time (s)"),
    ("events_per_s", "events/s"),
    ("ratio_vs_duckdb", "ratio vs DuckDB"),
    ("peak_rss_growth_mb", "peak RSS growth (MiB)"),
    ("state_rows", "state rows"),
    ("output_rows", "changelog rows"),
    ("equal", "= DuckDB"),
]


def summary(report: Report) -> str:
    lines = [markdown_table(report.rows, COLUMNS)]
    bounds = report.extra.get("state_bounds")
    if bounds:
        lines.append(
            f"\nState: {fmt(bounds['measured_peak_state_rows'])} rows at peak; bound keys × "
            f"slices = {bounds['keys_x_slices']:,}; one copy per window would hold "
            f"records × size/slide = {bounds['records_x_windows_per_record']:,}."
        )
    if "ratio_per_run" in report.extra:
        runs = ", ".join(f"{r:.2f}" for r in report.extra["ratio_per_run"])
        lines.append(
            f"Ratio ours/DuckDB: best time over best time in the table; run by run (alternating, "
            f"sorted): {runs}; median {report.extra['ratio_per_run_median']:.2f}."
        )
    if "process_peak_rss_mb" in report.extra:
        lines.append(f"Process peak RSS: {report.extra['process_peak_rss_mb']:,.0f} MiB.")
    lines.extend(f"Note: {note}" for note in report.notes)
    return "\n".join(lines)
