"""Bootstrap from state vs replay vs one DuckDB query (issue 14 targets).

The job: an hour-partitioned Parquet lake of ``--events`` clickstream events over ``--days`` days
(``lake.generator``, ``--users`` users) → ``key_by(user_id)`` → ``Sliding(30d, 5m)`` ``count()`` +
``sum(amount)``, ``emit="latest"`` → ``DuckDBUpsert`` keyed by user: the store a 30-day feature
job bootstraps. Four ways to the same final store, same files, same run:

- **duckdb**: one DuckDB query over the lake files computing each user's newest completed window
  (``[E − 30d, E)``, ``E`` the newest 5-minute end at the lake's end) into a DuckDB table — the
  baseline;
- **duckdb-slices**: one DuckDB query computing the window state's content — per (user,
  5-minute slice) ``count``, ``sum(amount)`` and the non-null count, ordered by both — into an
  in-memory Arrow table: the floor for any pass that builds that state (its store is checked by
  summing each user's slices of ``[E − 30d, E)``, untimed);
- **replay**: ``run(bootstrap="replay")``: every record through the window engine, every
  intermediate window upserted;
- **state**: ``run(bootstrap="state")``: the lake in one columnar pass per (key, slice), the state
  built at once, each user's newest value written once.

Each variant's store is checked equal to the query's (values per user). Reported per variant:
best seconds of ``--repeat``, the ratios to the DuckDB query and to the slices query, peak RSS
during the variant (MiB, ``VmHWM`` after resetting it), and the state (rows, bytes: the window's
for the engine variants, the slices table's for duckdb-slices).

Run: ``python -m benchmarks bootstrap [--events 10000000,50000000] [--repeat 1]``. The lakes are
generated once into ``--workdir`` (default: a temporary directory, removed after) and reused
when ``--workdir`` is given.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console

from .common import RESULTS_DIR, Report, markdown_table, measure_phase, timed

console = Console(highlight=False)

SIZE_US = 30 * 86_400_000_000
SLIDE_US = 300_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=lambda s: [int(x.replace("_", "")) for x in s.split(",") if x.strip()],
        default=[10_000_000],
        help="lake sizes, comma-separated (default 10000000; the issue's table: 10M and 50M)",
    )
    parser.add_argument("--days", type=int, default=30, help="days of event time (30)")
    parser.add_argument("--users", type=int, default=20_000, help="distinct users (20k)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per variant; best")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep/reuse the generated lakes here")


def _lake(root: Path, events: int, days: int, users: int, seed: int) -> Path:
    """An hour-partitioned lake of ``events`` events (generated once per directory)."""
    from lake.generator import iter_clickstream
    from lake.writer import ParquetLakeWriter

    path = root / f"lake-{events}-{days}d-{users}u-s{seed}"
    done = path / "_GENERATED"
    if done.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    writer = ParquetLakeWriter(path, "event_time")
    batch: list[pa.RecordBatch] = []
    rows = 0
    for part in iter_clickstream(events, days, users, seed=seed, jitter="30s"):
        batch.append(part)
        rows += part.num_rows
        if rows >= 5_000_000:
            writer.write(pa.Table.from_batches(batch))
            batch, rows = [], 0
    if batch:
        writer.write(pa.Table.from_batches(batch))
    done.write_text("ok\n")
    return path


def _duckdb_query(lake: Path, store: Path) -> int:
    """The baseline: the final store in one query; returns its newest window end (µs)."""
    import duckdb

    files = f"{lake}/**/*.parquet"
    con = duckdb.connect(str(store))
    try:
        newest = con.execute(
            f"SELECT epoch_us(max(event_time)) FROM read_parquet('{files}', "
            "hive_partitioning = false)"
        ).fetchone()
        assert newest is not None
        # the lake's end watermark is the newest hour's end - 1µs: E = that hour's end
        end = (int(newest[0]) // 3_600_000_000 + 1) * 3_600_000_000 // SLIDE_US * SLIDE_US
        con.execute(
            f"""CREATE OR REPLACE TABLE user_30d AS
            SELECT user_id, count(*) AS events, sum(amount) AS amount
            FROM read_parquet('{files}', hive_partitioning = false)
            WHERE epoch_us(event_time) >= {end - SIZE_US} AND epoch_us(event_time) < {end}
            GROUP BY user_id"""
        )
    finally:
        con.close()
    return end


def _duckdb_slices(lake: Path) -> pa.Table:
    """The floor: the state's content in one query — per (user, slice) partials, ordered."""
    import duckdb

    files = f"{lake}/**/*.parquet"
    con = duckdb.connect()
    try:
        return con.sql(
            f"""SELECT user_id, epoch_us(event_time) // {SLIDE_US} * {SLIDE_US} AS slice_start,
                count(*) AS events, sum(amount) AS amount, count(amount) AS amounts
            FROM read_parquet('{files}', hive_partitioning = false)
            GROUP BY 1, 2 ORDER BY 1, 2"""
        ).to_arrow_table()
    finally:
        con.close()


def _slices_store(slices: pa.Table, end: int, store: Path) -> None:
    """Each user's window ``[end − 30d, end)`` summed from the slices, as a ``user_30d`` store
    (the check of the slices query; not timed)."""
    import duckdb

    con = duckdb.connect(str(store))
    try:
        con.register("slices", slices)
        con.execute(
            f"""CREATE OR REPLACE TABLE user_30d AS
            SELECT user_id, sum(events) AS events, sum(amount) AS amount FROM slices
            WHERE slice_start >= {end - SIZE_US} AND slice_start < {end} GROUP BY user_id"""
        )
    finally:
        con.close()


def _job(lake: Path, store: Path, mode: str) -> dict[str, Any]:
    import lambdasource as ls

    pipeline = ls.Pipeline()
    (
        pipeline.source(ls.ParquetLake(str(lake), "event_time"))
        .key_by("user_id")
        .window(ls.Sliding("30d", "5m"), emit="latest")
        .aggregate(events=ls.count(), amount=ls.sum("amount"))
        .sink(ls.DuckDBUpsert(str(store), table="user_30d", key=["user_id"]))
    )
    pipeline.run_sync(bootstrap=mode)  # type: ignore[arg-type]
    return pipeline.metrics()


def _store(path: Path) -> pa.Table:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.sql(
            "SELECT user_id, events, amount FROM user_30d ORDER BY user_id"
        ).to_arrow_table()
    finally:
        con.close()


def _equal(a: pa.Table, b: pa.Table) -> bool:
    if a.num_rows != b.num_rows or a.column("user_id") != b.column("user_id"):
        return False
    if a.column("events").cast(pa.int64()) != b.column("events").cast(pa.int64()):
        return False
    x = a.column("amount").to_numpy()
    y = b.column("amount").to_numpy()
    return bool(abs(x - y).max() <= 1e-9 * max(1.0, abs(y).max())) if len(x) else True


def run(args: argparse.Namespace) -> Report:
    parameters = {
        "events": args.events,
        "days": args.days,
        "users": args.users,
        "repeat": args.repeat,
        "seed": args.seed,
        "window": "Sliding(30d, 5m) count + sum(amount), emit=latest, DuckDBUpsert",
    }
    report = Report("bootstrap", parameters)
    scratch = Path(tempfile.mkdtemp(prefix="ls-bench-bootstrap-"))
    root = args.workdir or scratch
    root.mkdir(parents=True, exist_ok=True)
    try:
        for events in args.events:
            console.print(f"lake of {events:,} events …")
            lake = _lake(root, events, args.days, args.users, args.seed)
            rows: dict[str, dict[str, Any]] = {}
            reference: pa.Table | None = None
            end = 0
            for variant in ("duckdb", "duckdb-slices", "replay", "state"):
                best: float | None = None
                peak: float | None = None
                metrics: dict[str, Any] = {}
                slices: pa.Table | None = None
                for attempt in range(args.repeat):
                    store = scratch / f"{variant}-{events}-{attempt}.duckdb"
                    store.unlink(missing_ok=True)
                    slices = None  # the last attempt's table is not in this one's peak
                    gc.collect()
                    with measure_phase() as memory, timed() as timer:
                        if variant == "duckdb":
                            end = _duckdb_query(lake, store)
                        elif variant == "duckdb-slices":
                            slices = _duckdb_slices(lake)
                        else:
                            metrics = _job(lake, store, variant)
                    best = timer.seconds if best is None else min(best, timer.seconds)
                    peak = memory.peak_mb if peak is None else max(peak, memory.peak_mb or 0)
                window = (metrics.get("operators") or {}).get("window", {})
                state = (window.get("state_rows"), window.get("state_bytes"))
                if slices is not None:
                    _slices_store(slices, end, store)
                    state = (slices.num_rows, slices.nbytes)
                    slices = None
                result = _store(store)
                if variant == "duckdb":
                    reference = result
                assert reference is not None
                rows[variant] = {
                    "events": events,
                    "variant": variant,
                    "seconds": best,
                    "peak_rss_mib": peak,
                    "state_rows": state[0],
                    "state_bytes": state[1],
                    "keys": result.num_rows,
                    "equal_to_query": _equal(result, reference),
                }
                console.print(
                    f"  {variant}: {best:.2f}s, peak RSS {peak or 0:,.0f} MiB, "
                    f"{result.num_rows:,} keys, equal: {rows[variant]['equal_to_query']}"
                )
            base, floor = rows["duckdb"]["seconds"], rows["duckdb-slices"]["seconds"]
            for row in rows.values():
                row["ratio_vs_duckdb"] = row["seconds"] / base if base else None
                row["ratio_vs_slices"] = row["seconds"] / floor if floor else None
            rows["state"]["replay_over_state"] = (
                rows["replay"]["seconds"] / rows["state"]["seconds"]
            )
            report.rows.extend(rows.values())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.notes.append(
        "ratio_vs_duckdb = variant seconds ÷ the DuckDB query's (same lake files, same run); "
        "issue 14 target for state: <= 2 at 10M and 50M events"
    )
    report.notes.append(
        "ratio_vs_slices = variant seconds ÷ the DuckDB slices query's: the state's content "
        "(per (user, 5-minute slice) partials, ordered) computed by DuckDB — the floor for a "
        "pass that builds that state"
    )
    return report


def summary(report: Report) -> str:
    columns = [
        ("events", "events"),
        ("variant", "variant"),
        ("seconds", "best s"),
        ("ratio_vs_duckdb", "× DuckDB query"),
        ("ratio_vs_slices", "× DuckDB slices"),
        ("replay_over_state", "replay ÷ state"),
        ("peak_rss_mib", "peak RSS MiB"),
        ("state_rows", "state rows"),
        ("state_bytes", "state bytes"),
        ("equal_to_query", "same store"),
    ]
    return markdown_table(report.rows, columns) + "\n\n" + "\n".join(report.notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bootstrap", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    report = run(args)
    path = report.save(args.out)
    console.print(summary(report))
    console.print(f"saved {path}")
    return 0 if all(r["equal_to_query"] for r in report.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
