"""Edge cases of the Parquet lake's planning (issue 12): rows filed under the wrong hour partition,
and a lake whose files do not all have the same columns.

Verdicts (before → after the fix):

- Rows misplaced in a partition that ``start``/``until`` prune by path were lost uncounted
  (a row at 01:30 in hour 00 with ``start=01:00`` never reached the output) → a pruned partition
  whose footer statistics overlap ``[start, until)`` (or that has none) is still read, unless the
  lake's commit records vouch for the layout; no row in range is lost, none is late.
- Misplaced rows inside partitions that are read: with statistics they hold the watermark back
  (never late); without statistics they reach a window after the watermark passed them → the
  window's late output, counted in ``metrics()["late"]`` (checked, it already held).
- The lake's schema was the first file's: a column missing there was dropped from every row, and
  ``backfill`` created its table without it → the schema is the union over the files read (safe
  widening; a conflict raises ``SchemaError`` naming the column and both files).

Oracles: the multiset of event ids (and per-id values) computed from the rows written.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.errors import SchemaError
from lambdasource.sinks.duckdb import DuckDBUpsert
from lambdasource.timeutil import HOUR, MINUTE
from tests.integration.ordered import SCHEMA, TIME, OrderedSink

BASE = 1_767_225_600_000_000  # 2026-01-01T00:00Z in µs


def table_of(times: list[int], first_id: int = 0) -> pa.Table:
    n = len(times)
    return pa.table(
        {
            TIME: pa.array(times, pa.int64()).cast(SCHEMA.field(TIME).type),
            "event_id": pa.array(range(first_id, first_id + n), pa.int64()),
            "user_id": pa.array([i % 7 for i in range(n)], pa.int64()),
            "amount": pa.array([float(i) for i in range(first_id, first_id + n)], pa.float64()),
        },
        schema=SCHEMA,
    )


def write_hour(root: Path, hour: int, name: str, rows: pa.Table, **kw: Any) -> Path:
    stamp = pa.scalar(BASE + hour * HOUR, pa.timestamp("us", tz="UTC")).as_py()
    path = root / f"dt={stamp:%Y-%m-%d}/hour={stamp:%H}/{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, path, row_group_size=kw.pop("row_group_size", 64), **kw)
    return path


async def run_lake(lake: ls.Source) -> OrderedSink:
    sink = OrderedSink()
    p = ls.Pipeline()
    p.source(lake).sink(sink)
    await asyncio.wait_for(p.run(), 60)
    return sink


def ids_in(table: pa.Table, start: int | None, until: int | None) -> Counter[int]:
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    keep = np.ones(len(times), dtype=bool)
    if start is not None:
        keep &= times >= start
    if until is not None:
        keep &= times < until
    return Counter(table.filter(pa.array(keep)).column("event_id").to_pylist())


# --- case 1: misplaced rows and path pruning -------------------------------------------------


async def test_row_misplaced_in_a_partition_pruned_by_start_is_read(tmp_path: Path) -> None:
    """The issue's example: hour 00 holds a row at 01:30; ``start=01:00`` prunes hour 00 by its
    path. The row is in range, so it must be emitted (and nothing may be late)."""
    hour0 = table_of([BASE + m * MINUTE for m in range(0, 60, 5)] + [BASE + 90 * MINUTE], 0)
    hour1 = table_of([BASE + HOUR + m * MINUTE for m in range(0, 60, 5)], 100)
    hour2 = table_of([BASE + 2 * HOUR + m * MINUTE for m in range(0, 60, 5)], 200)
    for h, t in enumerate([hour0, hour1, hour2]):
        write_hour(tmp_path, h, "part", t)
    everything = pa.concat_tables([hour0, hour1, hour2])
    start, until = BASE + HOUR, BASE + 2 * HOUR
    lake = ls.ParquetLake(tmp_path, TIME, start=start, until=until, batch_size=4)
    sink = await run_lake(lake)
    assert sink.ids() == ids_in(everything, start, until)
    assert 12 in sink.ids()  # the row at 01:30 filed under hour 00
    assert not sink.late()
    assert lake.metrics()["rows_outside_partition"] == 1


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 5 * 60 - 1), st.integers(0, 5)), min_size=1, max_size=60
    ),
    bounds=st.tuples(st.integers(0, 5 * 60), st.integers(1, 5 * 60)),
    stats=st.booleans(),
)
def test_misplaced_rows_are_never_lost_to_path_pruning(
    tmp_path_factory: pytest.TempPathFactory,
    data: list[tuple[int, int]],
    bounds: tuple[int, int],
    stats: bool,
) -> None:
    """Rows at any minute of hours 0–4 filed under any hour 0–5 (with or without statistics),
    any ``start < until``: the emitted ids are exactly the rows in range, none late."""
    root = tmp_path_factory.mktemp("lake")
    lo, hi = sorted(bounds)
    if lo == hi:
        hi += 1
    start, until = BASE + lo * MINUTE, BASE + hi * MINUTE
    table = table_of([BASE + minute * MINUTE for minute, _ in data])
    filed = np.array([h for _, h in data])
    for h in np.unique(filed):
        rows = table.filter(pa.array(filed == h)).sort_by(TIME)
        write_hour(root, int(h), "f", rows, row_group_size=3, write_statistics=stats)
    lake = ls.ParquetLake(root, TIME, start=start, until=until, batch_size=5)
    sink = asyncio.run(run_lake(lake))
    assert sink.ids() == ids_in(table, start, until)
    if stats:
        assert not sink.late()


async def test_a_committed_lake_is_pruned_by_path_without_footers(tmp_path: Path) -> None:
    """The ``lake`` writer files every row under its own hour, and its commit records say so:
    partitions outside ``[start, until)`` are pruned by path, their footers never read."""
    writer = ParquetLakeWriter(tmp_path, TIME)
    times = [BASE + m * 7 * MINUTE for m in range(60)]
    table = table_of(times)
    await asyncio.to_thread(writer.write, table)
    start, until = BASE + 2 * HOUR, BASE + 3 * HOUR
    lake = ls.ParquetLake(tmp_path, TIME, start=start, until=until)
    sink = await run_lake(lake)
    assert sink.ids() == ids_in(table, start, until)
    m = lake.metrics()
    assert m["files_total"] == 1 and m["files_pruned"] == 6


def windowed(lake: ls.Source) -> tuple[ls.Pipeline, ls.CollectSink, ls.CollectSink]:
    p = ls.Pipeline()
    w = p.source(lake).key_by("user_id").window(ls.Sliding(size="1h", slide="1h"), emit="every")
    out, late = ls.CollectSink(), ls.CollectSink()
    w.aggregate(n=ls.count()).sink(out)
    w.late().sink(late)
    return p, out, late


@pytest.mark.parametrize("stats", [True, False], ids=["statistics", "no-statistics"])
async def test_misplaced_rows_in_partitions_that_are_read(tmp_path: Path, stats: bool) -> None:
    """Hour 2's file also holds rows of hour 0. With statistics they hold the watermark back
    (every row counted in its window); without, the layout is trusted, so they arrive after
    their hour-0 window completed: exactly those rows are in the late output and counted."""
    misplaced = table_of([BASE + 10 * MINUTE, BASE + 50 * MINUTE], 1_000)
    tables = [
        table_of([BASE + h * HOUR + m * MINUTE for m in range(0, 60, 6)], 100 * h) for h in range(3)
    ]
    for h, t in enumerate(tables):
        rows = pa.concat_tables([t, misplaced]).sort_by(TIME) if h == 2 else t
        write_hour(tmp_path, h, "f", rows, write_statistics=stats)
    everything = pa.concat_tables([*tables, misplaced])
    p, out, late = windowed(ls.ParquetLake(tmp_path, TIME, batch_size=8))
    await asyncio.wait_for(p.run(), 60)
    late_ids = Counter(late.table().column("event_id").to_pylist()) if late.batches else Counter()
    counted = int(pc.sum(out.table().column("n")).as_py())
    assert counted + sum(late_ids.values()) == everything.num_rows
    assert p.metrics()["late"] == sum(late_ids.values())
    if stats:
        assert not late_ids
    else:
        assert late_ids == Counter(misplaced.column("event_id").to_pylist())
    # per (user, hour window) counts equal the reference over the rows that were on time
    times = pc.cast(everything.column(TIME), pa.int64()).to_numpy()
    reference = Counter(
        (int(u), int(t // HOUR * HOUR + HOUR))
        for u, t, i in zip(
            everything.column("user_id").to_numpy(),
            times,
            everything.column("event_id").to_pylist(),
            strict=True,
        )
        if i not in late_ids
    )
    got = out.table()
    ends = pc.cast(got.column("window_end"), pa.int64()).to_pylist()
    users = got.column("user_id").to_pylist()
    assert dict(zip(zip(users, ends, strict=True), got.column("n").to_pylist(), strict=True)) == (
        dict(reference)
    )


def test_planning_cost_of_verifying_pruned_partitions(tmp_path: Path) -> None:
    """Measured, reported: planning 300 one-file hours with a 1-hour range reads 299 pruned
    footers when the lake has no commit records (bounded: one footer per file, concurrent)."""
    for h in range(300):
        write_hour(tmp_path, h, "f", table_of([BASE + h * HOUR + 60_000_000], h))
    lake = ls.ParquetLake(tmp_path, TIME, start=BASE + 150 * HOUR, until=BASE + 151 * HOUR)

    async def plan() -> float:
        began = time.perf_counter()
        async with lake._storage() as storage:
            planned = await lake.plan(storage, read_footers=False)
        assert [p.label for p in planned.partitions] == ["dt=2026-01-07/hour=06"]
        return time.perf_counter() - began

    elapsed = min(asyncio.run(plan()) for _ in range(3))

    async def every_footer() -> float:
        began = time.perf_counter()
        async with lake._storage() as storage:
            await ls.ParquetLake(tmp_path, TIME).plan(storage, read_footers=True)
        return time.perf_counter() - began

    footers = min(asyncio.run(every_footer()) for _ in range(3))
    print(
        f"local 300 files: 1-hour range with verified pruning {elapsed * 1000:.1f} ms, "
        f"every footer (the schema union) {footers * 1000:.1f} ms"
    )
    assert elapsed < 5


# --- case 2: the schema is the union over the files ------------------------------------------


def three_files(root: Path) -> pa.Table:
    """Hour 0 lacks ``amount`` and has ``user_id`` as int32; hour 1 has everything; hour 2 adds
    ``note``. Returns every row with the union's columns (missing values null)."""
    t0 = table_of([BASE + m * MINUTE for m in range(0, 60, 10)], 0)
    t1 = table_of([BASE + HOUR + m * MINUTE for m in range(0, 60, 10)], 100)
    t2 = table_of([BASE + 2 * HOUR + m * MINUTE for m in range(0, 60, 10)], 200)
    t2 = t2.append_column("note", pa.array([f"n{i}" for i in range(t2.num_rows)]))
    first = t0.drop_columns(["amount"]).set_column(
        2, "user_id", t0.column("user_id").cast(pa.int32())
    )
    write_hour(root, 0, "a", first)
    write_hour(root, 1, "b", t1)
    write_hour(root, 2, "c", t2)
    t0_null = t0.set_column(3, "amount", pa.nulls(t0.num_rows, pa.float64()))
    return pa.concat_tables(
        [
            t0_null.append_column("note", pa.nulls(t0.num_rows, pa.string())),
            t1.append_column("note", pa.nulls(t1.num_rows, pa.string())),
            t2,
        ]
    )


def by_id(table: pa.Table) -> dict[int, tuple[Any, ...]]:
    cols = [c for c in table.column_names if c != "event_id"]
    return {row["event_id"]: tuple(row[c] for c in sorted(cols)) for row in table.to_pylist()}


async def test_schema_is_the_union_over_files(tmp_path: Path) -> None:
    expected = three_files(tmp_path)
    sink = await run_lake(ls.ParquetLake(tmp_path, TIME, batch_size=4))
    got = sink.table()
    assert set(got.column_names) == {TIME, "event_id", "user_id", "amount", "note"}
    assert got.schema.field("user_id").type == pa.int64()  # int32 widened
    assert by_id(got) == by_id(expected.select(got.column_names))


async def test_backfill_creates_its_table_with_every_column(tmp_path: Path) -> None:
    expected = three_files(tmp_path / "lake")
    db = tmp_path / "out.duckdb"
    summary = await ls.backfill(
        ls.ParquetLake(tmp_path / "lake", TIME),
        DuckDBUpsert(db, "events", key="event_id"),
    )
    assert summary.rows_written == expected.num_rows
    con = duckdb.connect(str(db))
    names = [r[0] for r in con.sql("DESCRIBE events").fetchall()]
    assert {"amount", "note", "user_id"} <= set(names)
    got = con.sql(f"SELECT {', '.join(expected.column_names)} FROM events").to_arrow_table()
    con.close()
    assert by_id(got) == by_id(expected)


async def test_schema_conflict_names_the_column_and_both_files(tmp_path: Path) -> None:
    t0 = table_of([BASE + m * MINUTE for m in range(0, 60, 10)], 0)
    t1 = table_of([BASE + HOUR + m * MINUTE for m in range(0, 60, 10)], 100)
    t1 = t1.set_column(3, "amount", pa.array([f"x{i}" for i in range(t1.num_rows)]))
    write_hour(tmp_path, 0, "a", t0)
    write_hour(tmp_path, 1, "b", t1)
    with pytest.raises(SchemaError) as info:
        await run_lake(ls.ParquetLake(tmp_path, TIME))
    text = str(info.value)
    assert "'amount'" in text and "hour=00/a.parquet" in text and "hour=01/b.parquet" in text


async def test_declared_schema_still_rules(tmp_path: Path) -> None:
    expected = three_files(tmp_path)
    declared = pa.schema([f for f in SCHEMA])  # no "note": dropped, as declared
    sink = await run_lake(ls.ParquetLake(tmp_path, TIME, schema=declared))
    got = sink.table()
    assert got.schema.names == declared.names
    assert by_id(got) == by_id(expected.select(declared.names))


@pytest.mark.slow  # 11 s of planning over S3
@pytest.mark.s3
def test_planning_cost_over_s3(tmp_path: Path, s3: Any) -> None:
    """Measured, reported: 300 one-file hours on (moto) S3 — listing alone, every footer (what
    the schema union waits for before the first row), and a 1-hour range whose 299 pruned
    partitions are verified by their footers (16 concurrent ranged GETs)."""
    client = s3.client()
    bucket = s3.new_bucket()
    paths = [
        write_hour(tmp_path, h, "f", table_of([BASE + h * HOUR + 60_000_000], h))
        for h in range(300)
    ]

    def put(path: Path) -> None:
        key = "lake/" + path.relative_to(tmp_path).as_posix()
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, paths))
    url = f"s3://{bucket}/lake"

    async def plan(lake: ls.ParquetLake, footers: bool) -> float:
        began = time.perf_counter()
        async with lake._storage() as storage:
            await lake.plan(storage, read_footers=footers)
        return time.perf_counter() - began

    def best(lake: ls.ParquetLake, footers: bool) -> float:
        return min(asyncio.run(plan(lake, footers)) for _ in range(2))

    listing = best(ls.ParquetLake(url, TIME, s3=s3.config()), False)
    every = best(ls.ParquetLake(url, TIME, s3=s3.config()), True)
    ranged = ls.ParquetLake(
        url, TIME, s3=s3.config(), start=BASE + 150 * HOUR, until=BASE + 151 * HOUR
    )
    verified = best(ranged, False)
    trusted = best(
        ls.ParquetLake(
            url,
            TIME,
            s3=s3.config(),
            start=BASE + 150 * HOUR,
            until=BASE + 151 * HOUR,
            path_pruning="trust",
        ),
        False,
    )
    print(
        f"S3 300 files: listing {listing * 1000:.0f} ms, every footer {every * 1000:.0f} ms, "
        f"1-hour range verified {verified * 1000:.0f} ms, trusted {trusted * 1000:.0f} ms"
    )
    assert every < 30 and verified < 30


async def test_restore_with_partitions_read_for_misplaced_rows(tmp_path: Path) -> None:
    """Positions stay exact when partitions outside ``[start, until)`` are read for their
    misplaced rows: a run cancelled after checkpoints, restored, delivers with what the first
    run delivered before the restored checkpoint every row in range once."""
    tables = []
    for h in range(8):
        rows = table_of([BASE + h * HOUR + m * MINUTE for m in range(60)], 100 * h)
        if h in (0, 7):  # misplaced into hours 0 and 7: rows of hours 3 and 4
            extra = table_of(
                [BASE + 3 * HOUR + h * MINUTE, BASE + 4 * HOUR + h * MINUTE], 5_000 + h * 10
            )
            rows = pa.concat_tables([rows, extra])
        write_hour(tmp_path / "lake", h, "f", rows.sort_by(TIME), row_group_size=8)
        tables.append(rows)
    everything = pa.concat_tables(tables)
    start, until = BASE + 2 * HOUR, BASE + 6 * HOUR
    expected = ids_in(everything, start, until)
    url = (tmp_path / "ckpt").as_uri()

    class Logged(ls.CollectSink):
        def __init__(self) -> None:
            super().__init__()
            self.log: list[tuple[str, Any]] = []

        async def write(self, batch: pa.RecordBatch) -> None:
            await super().write(batch)
            self.log.append(("batch", batch))

        async def flush(self) -> None:
            self.log.append(("flush", None))

    def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(0.02)
        return batch

    def make(sink: Logged) -> ls.Pipeline:
        lake = ls.ParquetLake(tmp_path / "lake", TIME, start=start, until=until, batch_size=1)
        p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="30ms", keep=100))
        p.source(lake).map(slow).sink(sink)
        return p

    first = Logged()
    task = asyncio.create_task(make(first).run())
    try:
        for _ in range(500):
            await asyncio.sleep(0.02)
            if task.done() or sum(1 for k, _ in first.log if k == "flush") >= 2:
                break
        assert not task.done(), "the first run ended before it could be cancelled"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    second = Logged()
    await asyncio.wait_for(make(second).run(), 60)
    after = Counter(second.table().column("event_id").to_pylist())
    prefixes: list[Counter[int]] = [Counter()]
    seen: Counter[int] = Counter()
    for kind, payload in first.log:
        if kind == "flush":
            prefixes.append(Counter(seen))
        else:
            seen.update(payload.column("event_id").to_pylist())
    assert any(prefix + after == expected for prefix in prefixes[1:]), (
        f"restored run delivered {sum(after.values())}, expected {sum(expected.values())}"
    )
