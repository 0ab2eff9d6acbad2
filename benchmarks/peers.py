"""Peer benchmark: the same sliding-window job on lambdasource, DuckDB, PyFlink and Bytewax.

The job: per-user ``Sliding(size, slide)`` windows (epoch-aligned, half-open ``[start, end)``),
``count`` + ``sum(amount)``, one row per (user, window) holding at least one record — Flink's
window semantics, which is lambdasource's ``emit="every"``. Input: the synthetic clickstream
(sorted by event time; amounts are multiples of 0.25, so float sums are exact in any order and
results can be compared for equality).

- **DuckDB** (the baseline, in this process, over the Arrow table): aggregate per (user, slice of
  width gcd(size, slide)), expand each slice to the windows that contain it, sum.
- **lambdasource** (in this process): ``MemorySource`` → ``key_by`` → ``Sliding`` with
  ``emit="every"`` → ``CollectSink``. The source's ``until`` is the last window end, so every
  window completes (a bounded Flink/Bytewax job flushes all windows at end of input too).
- **PyFlink** (Table API SQL ``HOP`` window, local mini-cluster, streaming mode with a
  watermark; see ``peer_jobs/flink_job.py``) and **Bytewax** (``fold_window`` +
  ``SlidingWindower``, one worker; ``peer_jobs/bytewax_job.py``), each in its own venv under
  ``~/.cache/lambdasource-peers/<peer>-venv`` (created on first use; never the project's venv:
  apache-flink pins an old pyarrow). They read a CSV written once per run (no Kafka or Parquet
  connector jars are available to Flink here) and write their results to files, which are read
  back and compared with DuckDB's, row for row, as multisets, on the windows every engine emits
  (all of them, with the ``until`` above).

Timings: each peer reports ``startup_s`` (imports; for Flink the JVM gateway and table
environment) and ``job_s`` (submission to completion, CSV parsing included) from inside its
process; the benchmark also records the whole subprocess's wall clock. Ratios are ``job_s`` over
DuckDB's time in the same run. A peer that cannot be installed or run is skipped with a note,
never a failure; a timed-out peer (``--peer-timeout``) is reported as such. Bytewax may be run
on smaller inputs instead (``--bytewax-events n``: runs on n/2 and n events): its ratios are then
against DuckDB on those same inputs, and the full-size figure is labelled *extrapolated* (a power
law fitted on the two sizes, at least linear). That fit is rough: measured here, Bytewax's time
grew faster than linearly from 100k to 200k events and slower from 200k to 1M.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lake.generator import generate_clickstream

from .common import Report, fmt, markdown_table, timed
from .engine import KEY, TIME, VALUE, Comparison, fetch_arrow, parse_duration

PEERS: tuple[str, ...] = ("flink", "bytewax")
DEFAULT_CACHE = Path("~/.cache/lambdasource-peers")
JOBS_DIR = Path(__file__).resolve().parent / "peer_jobs"
TS = pa.timestamp("us", tz="UTC")

EVERY_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.int64()),
        pa.field("window_start", TS),
        pa.field("window_end", TS),
        pa.field("clicks", pa.int64()),
        pa.field("revenue", pa.float64()),
    ]
)


@dataclass(frozen=True)
class PeerSpec:
    """How to install and run one peer in its own venv."""

    name: str
    label: str
    requirements: tuple[str, ...]
    module: str  # imported to check that the venv is usable
    script: str  # in JOBS_DIR
    needs_java: bool = False


SPECS: dict[str, PeerSpec] = {
    "flink": PeerSpec(
        "flink", "PyFlink SQL (HOP)", ("apache-flink",), "pyflink", "flink_job.py", True
    ),
    "bytewax": PeerSpec("bytewax", "Bytewax (1 worker)", ("bytewax",), "bytewax", "bytewax_job.py"),
}


# --- venvs ------------------------------------------------------------------------------------------


@dataclass
class PeerEnv:
    """A usable peer interpreter (``python``), or ``None`` with the reason in ``note``."""

    python: Path | None
    install_s: float | None = None  # None: reused an existing venv
    note: str | None = None


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _importable(python: Path, module: str) -> bool:
    try:
        probe = subprocess.run(
            [str(python), "-c", f"import {module}"], capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def ensure_env(spec: PeerSpec, cache: Path, timeout: float) -> PeerEnv:
    """The peer's venv under ``cache``: reused when its module imports, else (re)created with
    ``pip install``. Never raises for an install problem: returns a note instead."""
    if spec.needs_java and shutil.which("java") is None:
        return PeerEnv(None, note=f"{spec.name}: skipped, no `java` on PATH (Flink needs Java 11+)")
    venv = cache / f"{spec.name}-venv"
    python = venv / "bin" / "python"
    if python.exists() and _importable(python, spec.module):
        return PeerEnv(python)
    shutil.rmtree(venv, ignore_errors=True)
    with timed() as t:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "--quiet", *spec.requirements],
            ]
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=timeout)
                if done.returncode != 0:
                    return PeerEnv(
                        None,
                        note=f"{spec.name}: skipped, `{' '.join(step[-2:])}` failed "
                        f"(exit {done.returncode}): {_tail(done.stderr or done.stdout)}",
                    )
        except subprocess.TimeoutExpired:
            return PeerEnv(None, note=f"{spec.name}: skipped, install exceeded {timeout:.0f}s")
        except OSError as error:
            return PeerEnv(None, note=f"{spec.name}: skipped, cannot create its venv: {error}")
    if not _importable(python, spec.module):
        return PeerEnv(
            None, note=f"{spec.name}: skipped, `import {spec.module}` fails after install"
        )
    return PeerEnv(python, install_s=t.seconds)


# --- inputs -----------------------------------------------------------------------------------------


def write_inputs(table: pa.Table, directory: Path) -> dict[str, Path]:
    """The CSV files the peers read: Flink's has ``YYYY-MM-DD HH:MM:SS.mmm`` UTC times (its
    ``TIMESTAMP(3)``; dropping sub-millisecond digits never moves a record across a window
    boundary, as window bounds are whole seconds), Bytewax's epoch microseconds, with a header."""
    import duckdb

    paths = {"flink": directory / "events_flink.csv", "bytewax": directory / "events_bytewax.csv"}
    con = duckdb.connect()
    try:
        con.register("events", table.select([KEY, TIME, VALUE]))
        con.execute(
            f"""COPY (SELECT {KEY},
                        strftime(make_timestamp(epoch_us({TIME})), '%Y-%m-%d %H:%M:%S.%g'),
                        {VALUE} FROM events)
                TO '{paths["flink"]}' (HEADER false)"""
        )
        con.execute(
            f"""COPY (SELECT {KEY}, epoch_us({TIME}) AS event_time_us, {VALUE} FROM events)
                TO '{paths["bytewax"]}' (HEADER true)"""
        )
    finally:
        con.close()
    return paths


def read_flink_output(directory: Path) -> pa.Table:
    """Flink's CSV part files (``user_id,"start","end",clicks,revenue``; naive UTC times)."""
    files = sorted(p for p in directory.rglob("part-*") if p.is_file())
    if not files:
        return EVERY_SCHEMA.empty_table()
    return _read_csv(
        [str(p) for p in files],
        header=False,
        columns={
            KEY: "BIGINT",
            "window_start": "TIMESTAMP",
            "window_end": "TIMESTAMP",
            "clicks": "BIGINT",
            "revenue": "DOUBLE",
        },
        start="epoch_us(window_start)",
        end="epoch_us(window_end)",
    )


def read_bytewax_output(path: Path) -> pa.Table:
    """Bytewax job's CSV (``user_id,window_start_us,window_end_us,clicks,revenue``, header)."""
    return _read_csv(
        [str(path)],
        header=True,
        columns={
            KEY: "BIGINT",
            "window_start_us": "BIGINT",
            "window_end_us": "BIGINT",
            "clicks": "BIGINT",
            "revenue": "DOUBLE",
        },
        start="window_start_us",
        end="window_end_us",
    )


def _read_csv(
    files: list[str], *, header: bool, columns: dict[str, str], start: str, end: str
) -> pa.Table:
    import duckdb

    file_list = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    column_types = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
    con = duckdb.connect()
    try:
        out = fetch_arrow(
            con.sql(
                f"""SELECT {KEY}, {start} AS s, {end} AS e, clicks, revenue
                    FROM read_csv({file_list}, header = {str(header).lower()},
                                  columns = {column_types}, delim = ',', quote = '"')
                    ORDER BY {KEY}, e"""
            )
        )
    finally:
        con.close()
    return _every_table(out)


def _every_table(raw: pa.Table) -> pa.Table:
    """(key, start µs, end µs, clicks, revenue) columns → :data:`EVERY_SCHEMA`."""
    return pa.table(
        [
            raw.column(0).cast(pa.int64()),
            raw.column(1).cast(pa.int64()).cast(TS),
            raw.column(2).cast(pa.int64()).cast(TS),
            raw.column(3).cast(pa.int64()),
            raw.column(4).cast(pa.float64()),
        ],
        schema=EVERY_SCHEMA,
    )


# --- in-process contenders --------------------------------------------------------------------------

DUCKDB_EVERY = """
WITH slices AS (
    SELECT {key} AS k, (epoch_us({time}) // {g}) * {g} AS a, count(*) AS c, sum({value}) AS s
    FROM events
    GROUP BY ALL
),
ends AS (
    SELECT k, unnest(range(((a + {g} + {d} - 1) // {d}) * {d}, a + {size} + 1, {d})) AS e, c, s
    FROM slices
)
SELECT k, e - {size} AS s, e, sum(c)::BIGINT AS clicks, sum(s) AS revenue
FROM ends
GROUP BY ALL
"""


def duckdb_every(table: pa.Table, size: int, slide: int) -> pa.Table:
    """Every (user, window) with at least one record: slice aggregates expanded to the windows
    that contain each slice (``size/slide`` rows per slice, never per record)."""
    import duckdb

    g = math.gcd(size, slide)
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        con.register("events", table)
        sql = DUCKDB_EVERY.format(key=KEY, time=TIME, value=VALUE, g=g, d=slide, size=size)
        result = fetch_arrow(con.sql(sql))
    finally:
        con.close()
    return _every_table(result)


def last_window_end(table: pa.Table, slide: int, size: int) -> int:
    """End (µs) of the last window that holds a record: every engine's windows end at or before."""
    max_time = int(pc.max(table.column(TIME)).cast(pa.int64()).as_py())
    return (max_time // slide) * slide + size


def engine_every(table: pa.Table, size: int, slide: int, batch_size: int) -> pa.Table:
    """The job through lambdasource's public API; the source's ``until`` completes every window."""
    import lambdasource as ls

    until = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        microseconds=last_window_end(table, slide, size)
    )
    pipeline = ls.Pipeline()
    sink = ls.CollectSink()
    (
        pipeline.source(
            ls.MemorySource(
                table, time_column=TIME, batch_size=batch_size, out_of_orderness="0s", until=until
            )
        )
        .key_by(KEY)
        .window(ls.Sliding(size, slide), emit="every")
        .aggregate(clicks=ls.count(), revenue=ls.sum(VALUE))
        .sink(sink)
    )
    pipeline.run_sync()
    return sink.table().select(EVERY_SCHEMA.names).cast(EVERY_SCHEMA)


# --- comparison -------------------------------------------------------------------------------------


def compare_every(left: pa.Table, right: pa.Table, last_end: int | None = None) -> Comparison:
    """Multiset equality (DuckDB ``EXCEPT ALL``) of two results, restricted to windows ending at
    or before ``last_end`` (µs) when given: the windows every engine emits."""
    import duckdb

    a, b = left.select(EVERY_SCHEMA.names), right.select(EVERY_SCHEMA.names)
    if last_end is not None:
        bound = pa.scalar(last_end, pa.int64()).cast(TS)
        a = a.filter(pc.less_equal(a.column("window_end"), bound))
        b = b.filter(pc.less_equal(b.column("window_end"), bound))
    con = duckdb.connect()
    try:
        con.register("a", a)
        con.register("b", b)
        diff = "SELECT * FROM {0} EXCEPT ALL SELECT * FROM {1}"
        count = "SELECT count(*) FROM ({0})"
        n_a = int(con.execute(count.format(diff.format("a", "b"))).fetchall()[0][0])
        n_b = int(con.execute(count.format(diff.format("b", "a"))).fetchall()[0][0])
        sample: list[dict[str, Any]] = []
        if n_a or n_b:
            sample = fetch_arrow(
                con.sql(
                    f"""(SELECT 'left' AS side, * FROM ({diff.format("a", "b")}))
                        UNION ALL (SELECT 'right' AS side, * FROM ({diff.format("b", "a")}))
                        ORDER BY {KEY}, window_end, side LIMIT 20"""
                )
            ).to_pylist()
    finally:
        con.close()
    equal = n_a == 0 and n_b == 0 and a.num_rows == b.num_rows
    return Comparison(equal, a.num_rows, b.num_rows, n_a, n_b, sample)


# --- running a peer ---------------------------------------------------------------------------------


@dataclass
class PeerRun:
    """One peer job: in-process timings it reported, wall clock of the subprocess, its result."""

    wall_s: float
    startup_s: float | None = None
    job_s: float | None = None
    result: pa.Table | None = None
    late: int | None = None
    note: str | None = None


def run_peer(
    spec: PeerSpec,
    python: Path,
    input_csv: Path,
    workdir: Path,
    args: argparse.Namespace,
    extra: list[str] | None = None,
) -> PeerRun:
    """Run ``spec``'s job script with the peer's interpreter; never raises for a peer failure."""
    output = workdir / f"{spec.name}-out" if spec.name == "flink" else workdir / "bytewax-out.csv"
    if output.is_dir():
        shutil.rmtree(output)
    output.unlink(missing_ok=True)
    command = [
        str(python),
        str(JOBS_DIR / spec.script),
        "--input",
        str(input_csv),
        "--output",
        str(output),
        "--size-us",
        str(int(args.size)),
        "--slide-us",
        str(int(args.slide)),
        *(extra or []),
    ]
    with timed() as t:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=args.peer_timeout
            )
        except subprocess.TimeoutExpired:
            done = None
    if done is None:
        return PeerRun(
            t.seconds, note=f"{spec.name}: timed out after {args.peer_timeout:.0f}s (no result)"
        )
    if done.returncode != 0:
        return PeerRun(
            t.seconds,
            note=f"{spec.name}: job failed (exit {done.returncode}): "
            f"{_tail(done.stderr or done.stdout)}",
        )
    try:
        stats = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return PeerRun(t.seconds, note=f"{spec.name}: no timing line in its output")
    result = read_flink_output(output) if spec.name == "flink" else read_bytewax_output(output)
    return PeerRun(
        t.seconds,
        startup_s=float(stats["startup_s"]),
        job_s=float(stats["job_s"]),
        result=result,
        late=stats.get("late"),
    )


# --- the benchmark ----------------------------------------------------------------------------------


def _peer_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peers {unknown}; choose from {list(PEERS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=1_000_000, help="events (default 1M)")
    parser.add_argument("--keys", type=int, default=10_000, help="distinct users (default 10k)")
    parser.add_argument("--days", type=int, default=7, help="days of event time (default 7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=parse_duration, default="1d", help="window size (1d)")
    parser.add_argument("--slide", type=parse_duration, default="1h", help="window slide (1h)")
    parser.add_argument("--batch-size", type=int, default=100_000, help="our source batch rows")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs of DuckDB and ours; best is reported"
    )
    parser.add_argument(
        "--peers",
        type=_peer_list,
        default=list(PEERS),
        help="comma-separated peers to run (default flink,bytewax; '' for none)",
    )
    parser.add_argument(
        "--peer-timeout", type=float, default=900.0, help="seconds per peer job (default 900)"
    )
    parser.add_argument(
        "--install-timeout", type=float, default=900.0, help="seconds per peer venv install"
    )
    parser.add_argument(
        "--bytewax-events",
        type=int,
        default=0,
        help="run Bytewax on n/2 and n events instead of the full input (its per-record Python is "
        "~180x slower than DuckDB here; 1M events take ~3 min): each timed against DuckDB on the "
        "same input, the full-size time EXTRAPOLATED and labelled so (default 0 = full input)",
    )
    parser.add_argument(
        "--bytewax-batch-size", type=int, default=10_000, help="Bytewax CSVSource lines per batch"
    )
    parser.add_argument("--flink-parallelism", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--flink-mode", choices=["streaming", "batch"], default="streaming")
    parser.add_argument(
        "--flink-checkpoint-interval",
        default="5 s",
        help="streaming mode: its file sink commits on checkpoints (default '5 s'; 1 s made the "
        "1M-event job slower here, checkpointing the window state more often)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("LAMBDASOURCE_PEERS_CACHE", str(DEFAULT_CACHE))),
        help=f"where the peers' venvs live (default {DEFAULT_CACHE}; env LAMBDASOURCE_PEERS_CACHE)",
    )


def _row(
    contender: str,
    label: str,
    events: int,
    seconds: float | None,
    base: float | None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "contender": contender,
        "input": label,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds else None,
        "ratio_vs_duckdb": seconds / base if seconds is not None and base else None,
        **extra,
    }


def run(args: argparse.Namespace) -> Report:
    size, slide = int(args.size), int(args.slide)
    if slide > size or size % slide:
        raise SystemExit(f"peers: size must be a multiple of slide (got {size} µs, {slide} µs)")
    cache = Path(args.cache_dir).expanduser()
    parameters = {
        "events": args.events,
        "keys": args.keys,
        "days": args.days,
        "seed": args.seed,
        "window": {"size_us": size, "slide_us": slide},
        "emit": "every",
        "aggregates": ["count()", f"sum({VALUE})"],
        "repeat": args.repeat,
        "peers": args.peers,
        "peer_timeout_s": args.peer_timeout,
        "bytewax_events": args.bytewax_events,
        "flink_parallelism": args.flink_parallelism,
        "flink_mode": args.flink_mode,
        "flink_checkpoint_interval": args.flink_checkpoint_interval,
        "bytewax_batch_size": args.bytewax_batch_size,
        "cache_dir": str(cache),
    }
    report = Report("peers", parameters)
    label = f"{args.events:,} events · {args.keys:,} keys · {args.days} d"
    print(f"peers benchmark: {label}; Sliding(size, slide) count+sum per user, every")
    table = generate_clickstream(args.events, args.days, args.keys, seed=args.seed)
    table = table.select([KEY, TIME, VALUE]).combine_chunks()
    last_end = last_window_end(table, slide, size)

    # Baseline and our engine, in process: results checked on the first run; best of --repeat
    # (alternating) is reported.
    duck_times: list[float] = []
    ours_times: list[float] = []
    for i in range(max(1, args.repeat)):
        gc.collect()
        with timed() as t_duck:
            reference = duckdb_every(table, size, slide)
        duck_times.append(t_duck.seconds)
        gc.collect()
        with timed() as t_ours:
            ours = engine_every(table, size, slide, args.batch_size)
        ours_times.append(t_ours.seconds)
        if i == 0:
            check = compare_every(ours, reference, last_end)
            print(f"  {check.describe('lambdasource', 'duckdb')}")
        del ours
        print(f"  run {i + 1}: duckdb {t_duck.seconds:.2f}s, lambdasource {t_ours.seconds:.2f}s")
    base = min(duck_times)
    report.rows.append(
        _row(
            "duckdb",
            label,
            args.events,
            base,
            base,
            times=duck_times,
            output_rows=reference.num_rows,
            equal=True,
        )
    )
    report.rows.append(
        _row(
            "lambdasource (every)",
            label,
            args.events,
            min(ours_times),
            base,
            times=ours_times,
            output_rows=reference.num_rows if check.equal else check.rows_left,
            equal=check.equal,
        )
    )
    if not check.equal:
        report.notes.append("RESULTS DIFFER: " + check.describe("lambdasource", "duckdb"))

    with tempfile.TemporaryDirectory(prefix="lambdasource-peers-") as tmp:
        workdir = Path(tmp)
        inputs = write_inputs(table, workdir)
        # DuckDB over the CSV the peers read: shows what parsing text costs (information only).
        with timed() as t_csv:
            duckdb_every(_duckdb_csv(inputs["bytewax"]), size, slide)
        report.rows.append(
            _row("duckdb (incl. reading the CSV)", label, args.events, t_csv.seconds, base)
        )
        for name in args.peers:
            _one_peer(SPECS[name], args, workdir, inputs, table, reference, base, label, report)
    report.extra["comparison_window_end_max"] = str(
        pa.scalar(last_end, pa.int64()).cast(TS).as_py()
    )
    return report


def _duckdb_csv(path: Path) -> pa.Table:
    """The Bytewax CSV read back by DuckDB (timed with the query, as the peers parse it too)."""
    import duckdb

    con = duckdb.connect()
    try:
        raw = fetch_arrow(con.sql(f"SELECT * FROM read_csv('{path}', header = true)"))
    finally:
        con.close()
    return pa.table(
        {
            KEY: raw.column(KEY),
            TIME: raw.column("event_time_us").cast(pa.int64()).cast(TS),
            VALUE: raw.column(VALUE),
        }
    )


def _one_peer(
    spec: PeerSpec,
    args: argparse.Namespace,
    workdir: Path,
    inputs: dict[str, Path],
    table: pa.Table,
    reference: pa.Table,
    base: float,
    label: str,
    report: Report,
) -> None:
    """Install (or reuse) the peer's venv, time its fixed cost on one event, then run it on the
    full input — or, for Bytewax with ``--bytewax-events``, on two smaller inputs (n/2 and n),
    each against DuckDB on that same input, plus a labelled extrapolation to the full size."""
    print(f"  {spec.name}: preparing its venv under {args.cache_dir} …")
    env = ensure_env(spec, Path(args.cache_dir).expanduser(), args.install_timeout)
    if env.python is None:
        report.notes.append(env.note or f"{spec.name}: skipped")
        report.rows.append(_row(spec.label, label, args.events, None, base, skipped=True))
        print(f"  {env.note}")
        return
    if env.install_s is not None:
        report.notes.append(f"{spec.name}: venv created in {env.install_s:.0f}s (not timed)")
    extra: list[str] = []
    if spec.name == "flink":
        extra = [
            *("--parallelism", str(args.flink_parallelism), "--mode", args.flink_mode),
            *("--checkpoint-interval", args.flink_checkpoint_interval),
        ]
    if spec.name == "bytewax":
        extra = ["--batch-size", str(args.bytewax_batch_size)]
    # The same job on one event: the peer's fixed cost per job (for Flink: planning, deploying
    # tasks on the mini-cluster, the final checkpoint), to read the job time against.
    tiny_dir = workdir / f"{spec.name}-tiny"
    tiny_dir.mkdir(exist_ok=True)
    tiny_csv = write_inputs(table.slice(0, 1), tiny_dir)[spec.name]
    tiny = run_peer(spec, env.python, tiny_csv, tiny_dir, args, extra)

    subsample = spec.name == "bytewax" and 0 < (args.bytewax_events or 0) < args.events
    if not subsample:
        _measure_peer(
            spec,
            env.python,
            inputs[spec.name],
            table,
            reference,
            base,
            label,
            args,
            extra,
            tiny,
            workdir,
            report,
        )
        return
    measured: list[tuple[int, float]] = []
    for events in (args.bytewax_events // 2, args.bytewax_events):
        small = generate_clickstream(events, args.days, args.keys, seed=args.seed)
        small = small.select([KEY, TIME, VALUE]).combine_chunks()
        small_dir = workdir / f"{spec.name}-{events}"
        small_dir.mkdir(exist_ok=True)
        small_csv = write_inputs(small, small_dir)[spec.name]
        small_ref, small_s = _duckdb_best(small, args)
        small_label = f"{events:,} events · {args.keys:,} keys · {args.days} d"
        report.rows.append(_row("duckdb", small_label, events, small_s, small_s, equal=True))
        job_s = _measure_peer(
            spec,
            env.python,
            small_csv,
            small,
            small_ref,
            small_s,
            small_label,
            args,
            extra,
            tiny,
            small_dir,
            report,
        )
        if job_s is None:
            return
        measured.append((events, job_s))
    (n1, t1), (n2, t2) = measured
    projected, exponent = extrapolate((n1, t1), (n2, t2), args.events)
    report.rows.append(
        _row(
            f"{spec.label}: EXTRAPOLATED, not measured (t ∝ n^{exponent:.2f} fitted on "
            f"{n1:,} and {n2:,} events, at least linear)",
            label,
            args.events,
            projected,
            base,
            extrapolated=True,
            exponent=exponent,
        )
    )
    report.notes.append(
        f"{spec.name}: run on {n1:,} and {n2:,} events (--bytewax-events), each compared with and "
        f"timed against DuckDB on the same input; the {args.events:,}-event figure is "
        f"EXTRAPOLATED from them (time ∝ events^{exponent:.2f}), not measured"
    )


def extrapolate(
    first: tuple[int, float], second: tuple[int, float], events: int
) -> tuple[float, float]:
    """(time at ``events``, exponent k) from two measured (events, seconds) points, assuming
    time ∝ events^k with k fitted on the points but at least 1: a fixed cost makes small runs
    look sublinear, and extrapolating below linear would flatter the peer."""
    (n1, t1), (n2, t2) = first, second
    exponent = 1.0
    if n1 != n2 and t1 > 0 and t2 > 0:
        exponent = max(1.0, math.log(t2 / t1) / math.log(n2 / n1))
    return t2 * (events / n2) ** exponent, exponent


def _measure_peer(
    spec: PeerSpec,
    python: Path,
    input_csv: Path,
    table: pa.Table,
    reference: pa.Table,
    base: float,
    label: str,
    args: argparse.Namespace,
    extra: list[str],
    tiny: PeerRun,
    workdir: Path,
    report: Report,
) -> float | None:
    """One timed peer run on ``input_csv``, compared with ``reference``; appends its row."""
    events = table.num_rows
    print(f"  {spec.name}: running the job on {events:,} events (timeout {args.peer_timeout:.0f}s)")
    peer = run_peer(spec, python, input_csv, workdir, args, extra)
    if peer.result is None:
        report.notes.append(peer.note or f"{spec.name}: no result")
        report.rows.append(
            _row(spec.label, label, events, None, base, wall_s=peer.wall_s, timed_out=True)
        )
        print(f"  {peer.note}")
        return None
    size, slide = int(args.size), int(args.slide)
    check = compare_every(peer.result, reference, last_window_end(table, slide, size))
    print(
        f"  {spec.name}: job {peer.job_s:.2f}s, startup {peer.startup_s:.2f}s, "
        f"wall {peer.wall_s:.2f}s; {check.describe(spec.name, 'duckdb')}"
    )
    if not check.equal:
        report.notes.append(f"RESULTS DIFFER: {check.describe(spec.name, 'duckdb')}")
    marginal = None
    if peer.job_s is not None and tiny.job_s is not None:
        marginal = max(0.0, peer.job_s - tiny.job_s)
    report.rows.append(
        _row(
            spec.label,
            label,
            events,
            peer.job_s,
            base,
            startup_s=peer.startup_s,
            one_event_job_s=tiny.job_s,
            marginal_s=marginal,
            marginal_ratio_vs_duckdb=marginal / base if marginal is not None and base else None,
            wall_s=peer.wall_s,
            wall_ratio_vs_duckdb=peer.wall_s / base if base else None,
            output_rows=peer.result.num_rows,
            late=peer.late,
            equal=check.equal,
        )
    )
    return peer.job_s


def _duckdb_best(table: pa.Table, args: argparse.Namespace) -> tuple[pa.Table, float]:
    """DuckDB's result on ``table`` and its best time over ``--repeat`` runs."""
    times: list[float] = []
    result = EVERY_SCHEMA.empty_table()
    for _ in range(max(1, args.repeat)):
        with timed() as t:
            result = duckdb_every(table, int(args.size), int(args.slide))
        times.append(t.seconds)
    return result, min(times)


COLUMNS: list[tuple[str, str]] = [
    ("contender", "implementation"),
    ("input", "input"),
    ("seconds", "job time (s)"),
    ("ratio_vs_duckdb", "ratio vs DuckDB"),
    ("startup_s", "startup (s)"),
    ("one_event_job_s", "same job, 1 event (s)"),
    ("marginal_s", "job − 1-event job (s)"),
    ("marginal_ratio_vs_duckdb", "its ratio"),
    ("wall_s", "process wall (s)"),
    ("wall_ratio_vs_duckdb", "wall ratio"),
    ("output_rows", "window rows"),
    ("equal", "= DuckDB"),
]


SEMANTICS: tuple[str, ...] = (
    "All engines: one row per (user, window) holding at least one record (Flink's window output "
    "= lambdasource emit='every'), epoch-aligned [start, end) windows, all windows flushed at "
    "the end of the bounded input.",
    "lambdasource: MemorySource(until=last window end) so every window completes (a bounded run "
    "otherwise stops at the max event time and does not flush windows that end after it).",
    "PyFlink: Table API SQL HOP window TVF, streaming mode, watermark event_time - 1 s (input "
    "sorted, so nothing is late), end of input = MAX watermark; TIMESTAMP(3) keeps milliseconds, "
    "which never moves a record across a window bound; local mini-cluster, pure SQL (no Python "
    "UDF: the job runs in the JVM); output via the filesystem CSV sink, committed by the final "
    "checkpoint (--flink-checkpoint-interval).",
    "Bytewax: fold_window + SlidingWindower(align_to=epoch) + EventClock with frozen system time "
    "(watermark = max event time seen, per key; no wall-clock advance) and no system-time "
    "wake-ups (to_system_utc=None: historical close times would all be due at once), so a key's "
    "windows close on its next item or at EOF; one worker via run_main; per-record Python (CSV "
    "parse, key, fold).",
)


def summary(report: Report) -> str:
    lines = [markdown_table(report.rows, COLUMNS)]
    lines.append(
        "\nJob time excludes venv creation; for a peer it is measured inside its process from "
        "job submission to completion (CSV parsing included, interpreter/JVM start excluded: see "
        "startup). 'Same job, 1 event' is the peer's fixed cost per job (Flink: mini-cluster "
        "start, planning, task deployment, the sink's final checkpoint); 'job − 1-event job' is "
        "the marginal time the events cost. Process wall includes interpreter/JVM start and "
        "writing results. Ratios are against DuckDB on the same input in the same run (DuckDB "
        "and lambdasource read the Arrow table in memory)."
    )
    if "comparison_window_end_max" in report.extra:
        lines.append(
            f"Compared: every (user, window) with a record, windows ending up to "
            f"{fmt(report.extra['comparison_window_end_max'])} (all of them)."
        )
    lines.extend(f"Semantics: {line}" for line in SEMANTICS)
    lines.extend(f"Note: {note}" for note in report.notes)
    return "\n".join(lines)
