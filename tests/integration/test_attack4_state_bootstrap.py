"""Attack round 4 on ``bootstrap="state"`` (issue 14 §3), through the public API only.

Every attack runs the same job twice over the same input — ``bootstrap="replay"`` (the
reference the promise names) and ``bootstrap="state"`` — into DuckDB upsert stores, and compares
the stores row for row (``latest``: the values per key, since the pass may stamp a key's row with
a newer window; ``changes``/``every``: every (key, window) row). Where the input allows, both
also equal the SQL reference (:func:`lambdasource.reference.expected_windows` over the input,
``flush="all"``). Most attacks use a Parquet lake alone (a bounded job: the whole job is the
pass, then the end flush); the stream-continuation attacks use a ``LambdaSource`` on Apache
Kafka (timestamp handoff at an hour boundary, the stream holding the rest).

``bulk.CHUNK_ROWS`` is patched small in every test so the pass merges many chunks of partials
(the production value only makes that happen beyond a million rows).

Findings are strict xfails whose reason starts with ``finding N``; the others are guards.
Finding 1 (a map or a stateless operator making lake records late in a replay, which the pass
counted in full) was fixed in 0fa8dc4: its tests are guards now, and the switch to replay that
fix added is attacked here too (finding 2). ``ATTACK4_EXAMPLES=N`` widens the two hypothesis
searches (derandomized; 20 examples by default).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lake.writer import ParquetLakeWriter, partition_path
from lambdasource.reference import expected_windows, upsert_state
from lambdasource.timeutil import HOUR, MINUTE, MS, normalize_time_array
from lambdasource.windows import bulk
from tests.services.brokers import Broker, both_brokers

broker = both_brokers(default=("apache",))

TIME = "event_time"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
SCHEMA = pa.schema(
    [
        pa.field(TIME, pa.timestamp("us", tz="UTC")),
        pa.field("user_id", pa.int64()),
        pa.field("region", pa.string()),
        pa.field("name", pa.string()),
        pa.field("amount", pa.float64()),
        pa.field("flag", pa.bool_()),
    ]
)
AGGREGATES: dict[str, tuple[str, str | None]] = {
    "n": ("count", None),
    "total": ("sum", "amount"),
    "avg": ("mean", "amount"),
    "lo": ("min", "name"),
    "hi": ("max", "name"),
    "head": ("first", "name"),
    "tail": ("last", "name"),
}
EMITS = ("latest", "changes", "every")
Row = dict[str, Any]
Spec = dict[str, tuple[str, str | None]]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 97)


def kernels(spec: Spec) -> dict[str, Any]:
    made: dict[str, Callable[..., Any]] = {"count": ls.count, "sum": ls.sum, "mean": ls.mean}
    made |= {
        "min": ls.min,
        "max": ls.max,
        "first": ls.first,
        "last": ls.last,
        "count_distinct": ls.count_distinct,
    }
    return {
        name: made[function]() if column is None else made[function](column)
        for name, (function, column) in spec.items()
    }


def events(rows: int, *, seed: int, hours: int = 12, users: int = 9) -> pa.Table:
    """``rows`` events over ``hours`` hours from ``T0``, sorted by time; ``name`` is null in
    about a third of the rows (so first/last/min/max over strings meet nulls); ``amount`` holds
    whole numbers, so sums are exact in any order and ``changes`` rows do not hinge on the
    last bits (the SQL reference recomputes, the engine may subtract)."""
    rng = np.random.default_rng(seed)
    times = np.sort(T0 + rng.integers(0, hours * HOUR, rows))
    names = [None if rng.random() < 0.35 else f"n{rng.integers(0, 50):02d}" for _ in range(rows)]
    return pa.table(
        {
            TIME: pa.array(times, type=pa.int64()).cast(SCHEMA.field(TIME).type),
            "user_id": pa.array(rng.integers(0, users, rows), type=pa.int64()),
            "region": pa.array(rng.choice(["eu", "us", "ap"], rows).tolist()),
            "name": pa.array(names, type=pa.string()),
            "amount": pa.array(np.floor(rng.random(rows) * 10_000)),  # whole: exact sums
            "flag": pa.array(rng.random(rows) < 0.5),
        },
        schema=SCHEMA,
    )


def write_lake(root: Path, table: pa.Table) -> Path:
    ParquetLakeWriter(root, TIME, row_group_rows=50).write(table)
    return root


# --- one job, two bootstraps ------------------------------------------------------------------


@dataclass
class Job:
    """A job built fresh for every run (a Pipeline runs once)."""

    window: Any
    emit: str = "latest"
    keys: list[str] = field(default_factory=lambda: ["user_id"])
    spec: Spec = field(default_factory=lambda: dict(AGGREGATES))
    lateness: str = "0s"
    transform: Callable[[ls.Stream], ls.Stream] | None = None
    flush: str | None = None  # None: "watermark" for latest (all would delete every key)
    collect: bool = False  # a CollectSink, folded by key here (DuckDB refuses null keys)

    def flush_mode(self) -> str:
        if self.flush is not None:
            return self.flush
        return "watermark" if self.emit == "latest" else "all"

    def store_keys(self) -> list[str]:
        return self.keys if self.emit == "latest" else [*self.keys, "window_end"]


@dataclass
class Outcome:
    rows: dict[tuple[Any, ...], Row]
    late: int  # rows the window's late() output got
    dead: int  # dead letters
    metrics: dict[str, Any]


def build(
    job: Job,
    source: Any,
    store: Path,
    checkpoints: str | None = None,
    raw: ls.CollectSink | None = None,
) -> tuple[ls.Pipeline, ls.CollectSink, ls.CollectSink, ls.CollectSink]:
    """The job's pipeline and its late, dead-letter and (``job.collect``) output sinks;
    ``raw``: a second branch sinking the source's rows as they are."""
    p = ls.Pipeline(
        checkpoints=None if checkpoints is None else ls.Checkpoints(checkpoints, interval="1h"),
        name="attack4",
        flush=job.flush_mode(),
    )
    src = p.source(source)
    dead = ls.CollectSink()
    src.dead_letters().sink(dead, name="dead")
    if raw is not None:
        src.sink(raw, name="raw")
    stream = src if job.transform is None else job.transform(src)
    windowed = stream.key_by(*job.keys).window(
        job.window, emit=job.emit, allowed_lateness=job.lateness, name="win"
    )
    late = ls.CollectSink()
    windowed.late().sink(late, name="late")
    output = ls.CollectSink()
    sink: Any = output if job.collect else ls.DuckDBUpsert(store, table="win", key=job.store_keys())
    windowed.aggregate(**kernels(job.spec)).sink(sink, name="store")
    return p, late, dead, output


def read_rows(path: Path, job: Job) -> dict[tuple[Any, ...], Row]:
    """The store's rows by store key, times as µs; ``latest``: values only."""
    with duckdb.connect(str(path)) as con:
        tables = {name for (name,) in con.sql("SHOW TABLES").fetchall()}
        if "win" not in tables:  # nothing was ever written
            return {}
        table = con.sql("SELECT * FROM win").to_arrow_table()
    return table_rows(table, job)


def table_rows(table: pa.Table, job: Job) -> dict[tuple[Any, ...], Row]:
    columns = [*job.keys, *([] if job.emit == "latest" else ["window_start", "window_end"])]
    table = table.select([*columns, *job.spec])
    for name in ("window_start", "window_end", *job.keys):
        if name in table.column_names and pa.types.is_timestamp(table.schema.field(name).type):
            index = table.column_names.index(name)
            column = normalize_time_array(table.column(name).combine_chunks())
            table = table.set_column(index, name, column.cast(pa.int64()))
    return {tuple(row[k] for k in job.store_keys()): row for row in table.to_pylist()}


async def run_once(
    job: Job,
    make_source: Callable[[], Any],
    store: Path,
    mode: str,
    *,
    checkpoints: str | None = None,
    restore: Any = "latest",
) -> Outcome:
    p, late, dead, output = build(job, make_source(), store, checkpoints)
    await asyncio.wait_for(p.run(bootstrap=mode, restore=restore), 90)  # type: ignore[arg-type]
    if job.collect:
        changelog = output.table()
        if job.emit != "every" and changelog.num_rows:
            changelog = upsert_state(changelog, job.store_keys())
        rows = table_rows(changelog, job) if changelog.num_rows else {}
    else:
        rows = read_rows(store, job)
    return Outcome(rows, len(late), len(dead), p.metrics())


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def diff(
    got: dict[tuple[Any, ...], Row], want: dict[tuple[Any, ...], Row], limit: int = 6
) -> list[str]:
    out = [f"missing {k}: want {want[k]}" for k in sorted(want.keys() - got.keys(), key=repr)]
    out += [f"extra {k}: {got[k]}" for k in sorted(got.keys() - want.keys(), key=repr)]
    for k in sorted(got.keys() & want.keys(), key=repr):
        if not all(same(got[k][c], want[k][c]) for c in want[k]):
            out.append(f"{k}: got {got[k]}, want {want[k]}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def reference(job: Job, table: pa.Table, until: int | None = None) -> dict[tuple[Any, ...], Row]:
    """The SQL reference's store: every record of ``table`` once, no watermark before the end
    (``until - 1µs``, default: the end of the newest record's hour partition, where a lake's
    run ends; ``flush="watermark"``), or everything flushed."""
    if until is None and table.num_rows:
        newest = int(pc.max(pc.cast(table.column(TIME), pa.int64())).as_py())
        until = newest // HOUR * HOUR + HOUR
    expected = expected_windows(
        table,
        time_column=TIME,
        keys=job.keys,
        window=job.window,
        aggregates=job.spec,
        emit=job.emit,  # type: ignore[arg-type]
        allowed_lateness=job.lateness,
        until=until,
        flush_all=job.flush_mode() == "all",
    )
    if job.emit != "every":
        expected = upsert_state(expected, job.store_keys())
    return table_rows(expected, job)


async def replay_vs_state(
    job: Job, make_source: Callable[[], Any], root: Path, label: str
) -> tuple[Outcome, Outcome]:
    """Run both bootstraps; assert the state one really built from state and both stores
    are equal; return both outcomes."""
    replay = await run_once(job, make_source, root / f"{label}-replay.duckdb", "replay")
    state = await run_once(job, make_source, root / f"{label}-state.duckdb", "state")
    report = state.metrics["bootstrap"]
    assert report["mode"] == "state", report
    differences = diff(state.rows, replay.rows)
    assert not differences, (
        f"{label}: state store ({len(state.rows)} rows) differs from replay's "
        f"({len(replay.rows)} rows); bootstrap {report}; state sinks "
        f"{state.metrics.get('sinks')}:\n" + "\n".join(differences)
    )
    assert (state.late, state.dead) == (replay.late, replay.dead), (label, state, replay)
    return replay, state


def lake_source(path: Path, **kw: Any) -> Callable[[], ls.ParquetLake]:
    kw.setdefault("batch_size", 40)
    return lambda: ls.ParquetLake(str(path), TIME, schema=SCHEMA, **kw)


# --- guards: lakes and windows --------------------------------------------------------------


WINDOW_CASES = {
    "sliding-50m-20m": ls.Sliding("50m", "20m"),
    "tumbling-7m": ls.Tumbling("7m"),
    "tumbling-90m": ls.Tumbling("90m"),
    "sliding-3h-1m": ls.Sliding("3h", "1m"),
}


@pytest.mark.parametrize("emit", EMITS)
@pytest.mark.parametrize("window", list(WINDOW_CASES))
async def test_windows_and_emits_equal_replay_and_reference(
    tmp_path: Path, window: str, emit: str
) -> None:
    """Windows not aligned to the hour, tiny slides; strings with nulls in first/last/min/max."""
    table = events(700, seed=3)
    lake = write_lake(tmp_path / "lake", table)
    job = Job(WINDOW_CASES[window], emit=emit)
    replay, _ = await replay_vs_state(job, lake_source(lake), tmp_path, "w")
    assert not diff(replay.rows, reference(job, table))


async def test_allowed_lateness(tmp_path: Path) -> None:
    table = events(500, seed=4)
    lake = write_lake(tmp_path / "lake", table)
    for emit in EMITS:
        job = Job(ls.Sliding("40m", "10m"), emit=emit, lateness="25m")
        replay, _ = await replay_vs_state(job, lake_source(lake), tmp_path, emit)
        assert not diff(replay.rows, reference(job, table)), emit


async def test_rows_in_the_wrong_hour_partition(tmp_path: Path) -> None:
    """Files placed by hand: hour 5's directory holds rows of hours 2, 5 and 9 (earlier and
    later than its hour); the lake holds its watermark back, nothing is late in either mode."""
    table = events(600, seed=5)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    hours = (times - T0) // HOUR
    root = tmp_path / "lake"
    misplaced = np.isin(hours, [2, 9]) & (np.arange(len(times)) % 3 == 0)
    for hour in np.unique(hours):
        target = hour if hour != 5 else 5
        rows = table.filter(pa.array((hours == hour) & ~misplaced))
        if hour == 5:
            rows = pa.concat_tables([rows, table.filter(pa.array(misplaced))])
        directory = root / partition_path(int(T0 + target * HOUR), "hour")
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, directory / "part-0.parquet", row_group_size=37)
    job = Job(ls.Sliding("2h", "30m"), emit="changes")
    replay, _ = await replay_vs_state(job, lake_source(root), tmp_path, "misplaced")
    assert replay.late == 0
    assert not diff(replay.rows, reference(job, table))


async def test_lake_without_event_time_partitioning(tmp_path: Path) -> None:
    """``event_time_partitioned=False`` with an out_of_orderness: the lake's watermark follows
    the rows it read; unsorted rows inside the files."""
    table = events(600, seed=6)
    shuffled = table.take(pa.array(np.random.default_rng(1).permutation(table.num_rows)))
    root = tmp_path / "lake"
    root.mkdir()
    pq.write_table(shuffled.slice(0, 300), root / "a.parquet", row_group_size=41)
    pq.write_table(shuffled.slice(300), root / "b.parquet", row_group_size=41)
    job = Job(ls.Tumbling("1h"), emit="every")
    make = lake_source(root, event_time_partitioned=False, out_of_orderness="5m")
    try:
        replay, _ = await replay_vs_state(job, make, tmp_path, "flat")
    except ls.ConfigError as error:  # an unpartitioned layout may be refused: fine, both ways
        pytest.skip(f"layout refused: {error}")
    assert not diff(replay.rows, reference(job, table))


KEY_CASES: dict[str, tuple[list[str], Callable[[pa.Table], pa.Table]]] = {
    "null-int-keys": (
        ["user_id"],
        lambda t: t.set_column(
            1,
            "user_id",
            pa.array(
                [None if i % 5 == 0 else v for i, v in enumerate(t.column(1).to_pylist())],
                pa.int64(),
            ),
        ),
    ),
    "huge-int-keys": (
        ["user_id"],
        lambda t: t.set_column(
            1,
            "user_id",
            pa.array(
                [
                    [2**63 - 1, -(2**63), 0, 2**62 + 7][v % 4] if v is not None else None
                    for v in t.column(1).to_pylist()
                ],
                pa.int64(),
            ),
        ),
    ),
    "string-bool-keys": (["region", "flag"], lambda t: t),
    "string-keys-with-nulls": (["name"], lambda t: t),
    "timestamp-key": (
        ["hour"],
        lambda t: t.append_column(
            "hour",
            pc.floor_temporal(t.column(TIME), unit="hour"),
        ),
    ),
}


@pytest.mark.parametrize("case", list(KEY_CASES))
async def test_key_kinds(tmp_path: Path, case: str) -> None:
    keys, change = KEY_CASES[case]
    table = change(events(500, seed=7))
    root = tmp_path / "lake"
    write_lake(root, table)
    spec = {k: v for k, v in AGGREGATES.items() if v[1] not in keys}
    job = Job(ls.Sliding("1h", "15m"), emit="changes", keys=keys, spec=spec, collect=True)
    schema = table.schema

    def make() -> ls.ParquetLake:
        return ls.ParquetLake(str(root), TIME, schema=schema, batch_size=40)

    replay, _ = await replay_vs_state(job, make, tmp_path, case)
    assert not diff(replay.rows, reference(job, table))


async def test_one_row_lake(tmp_path: Path) -> None:
    table = events(1, seed=8)
    lake = write_lake(tmp_path / "lake", table)
    for emit in EMITS:
        job = Job(ls.Sliding("1h", "20m"), emit=emit)
        replay, _ = await replay_vs_state(job, lake_source(lake), tmp_path, emit)
        assert not diff(replay.rows, reference(job, table)), emit
        assert emit == "latest" or replay.rows, emit  # latest: the window emptied, deleted


async def test_empty_lake(tmp_path: Path) -> None:
    """A lake directory with no files; a lake whose files hold no rows."""
    empty = tmp_path / "empty"
    empty.mkdir()
    job = Job(ls.Sliding("1h", "20m"), emit="changes")
    outcomes = []
    for label, root in (("nofiles", empty), ("norows", tmp_path / "norows")):
        if label == "norows":
            directory = root / partition_path(T0, "hour")
            directory.mkdir(parents=True)
            pq.write_table(SCHEMA.empty_table(), directory / "part-0.parquet")
        results: list[Any] = []
        for mode in ("replay", "state"):
            try:
                results.append(
                    await run_once(job, lake_source(root), tmp_path / f"{label}-{mode}.db", mode)
                )
            except Exception as error:  # both modes must fail the same way
                results.append(type(error))
        outcomes.append(results)
        print(f"EMPTY {label}: {results}")
        if isinstance(results[0], Outcome):
            assert isinstance(results[1], Outcome), (label, results[1])
            assert results[0].rows == results[1].rows == {}
        else:
            assert results[0] == results[1], (label, results)


async def test_start_until_bounds_mid_hour(tmp_path: Path) -> None:
    table = events(800, seed=9)
    lake = write_lake(tmp_path / "lake", table)
    start, until = T0 + 2 * HOUR + 17 * MINUTE, T0 + 8 * HOUR + 41 * MINUTE
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    bounded = table.filter(pa.array((times >= start) & (times < until)))
    for emit in EMITS:
        job = Job(ls.Sliding("1h", "25m"), emit=emit)
        make = lake_source(lake, start=start, until=until)
        replay, _ = await replay_vs_state(job, make, tmp_path, emit)
        assert not diff(replay.rows, reference(job, bounded, until=until)), emit


async def test_all_rows_after_until(tmp_path: Path) -> None:
    table = events(200, seed=10)
    lake = write_lake(tmp_path / "lake", table)
    job = Job(ls.Tumbling("1h"), emit="changes")
    replay, state = await replay_vs_state(job, lake_source(lake, until=T0 - HOUR), tmp_path, "u")
    assert replay.rows == state.rows == {}


async def test_null_event_times_are_dead_letters(tmp_path: Path) -> None:
    """Rows with a null event time in a lake file: dead letters, once each, in both modes."""
    table = events(300, seed=11)
    times = table.column(TIME).to_pylist()
    nulled = [None if i % 13 == 0 else t for i, t in enumerate(times)]
    broken = table.set_column(0, TIME, pa.array(nulled, SCHEMA.field(TIME).type))
    root = tmp_path / "lake"
    directory = root / partition_path(T0, "hour")
    directory.mkdir(parents=True)
    pq.write_table(broken.slice(0, 150), directory / "part-0.parquet", row_group_size=30)
    later = root / partition_path(T0 + 6 * HOUR, "hour")
    later.mkdir(parents=True)
    pq.write_table(broken.slice(150), later / "part-0.parquet", row_group_size=30)
    job = Job(ls.Sliding("1h", "30m"), emit="changes")
    replay, state = await replay_vs_state(job, lake_source(root), tmp_path, "nullt")
    assert replay.dead == state.dead == sum(t is None for t in nulled)
    good = broken.filter(pc.is_valid(broken.column(TIME)))
    assert not diff(replay.rows, reference(job, good))


async def test_filter_that_drops_everything(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake", events(300, seed=12))
    for emit in EMITS:
        job = Job(
            ls.Sliding("1h", "30m"),
            emit=emit,
            transform=lambda s: s.filter(pc.field("amount") < -1.0),
        )
        replay, state = await replay_vs_state(job, lake_source(lake), tmp_path, emit)
        assert replay.rows == state.rows == {}


async def test_map_that_changes_the_schema(tmp_path: Path) -> None:
    """A map that drops ``name``, adds a column and renames the key."""
    table = events(500, seed=13)
    lake = write_lake(tmp_path / "lake", table)
    out_schema = pa.schema(
        [
            pa.field(TIME, SCHEMA.field(TIME).type),
            pa.field("uid", pa.string()),
            pa.field("amount", pa.float64()),
            pa.field("label", pa.string()),
        ]
    )

    def reshape(batch: pa.RecordBatch) -> pa.RecordBatch:
        label = pc.if_else(
            batch.column("flag"), batch.column("region"), pa.scalar(None, pa.string())
        )
        return pa.RecordBatch.from_arrays(
            [
                batch.column(TIME),
                pc.cast(batch.column("user_id"), pa.string()),
                batch.column("amount"),
                label,
            ],
            schema=out_schema,
        )

    spec: Spec = {"n": ("count", None), "t": ("sum", "amount"), "f": ("first", "label")}
    spec |= {"l": ("last", "label"), "lo": ("min", "label"), "hi": ("max", "amount")}
    for emit in EMITS:
        job = Job(
            ls.Tumbling("25m"),
            emit=emit,
            keys=["uid"],
            spec=spec,
            transform=lambda s: s.map(reshape, schema=out_schema),
        )
        replay, _ = await replay_vs_state(job, lake_source(lake), tmp_path, emit)
        mapped = pa.Table.from_batches([reshape(b) for b in table.to_batches()])
        assert not diff(replay.rows, reference(job, mapped)), emit


# --- finding 1 (fixed in 0fa8dc4): records a replay finds late ------------------------------------


async def test_map_that_moves_event_times_back(tmp_path: Path) -> None:
    """A map that moves each record's time 3 hours back (say, a time-zone correction): in a
    replay, a record whose new time is below the watermark its lake partition already passed
    is late (the window's ``late()`` output gets it, no window counts it); the pass counts
    every record."""
    table = events(600, seed=14)
    lake = write_lake(tmp_path / "lake", table)

    def shift(batch: pa.RecordBatch) -> pa.RecordBatch:
        moved = pc.cast(pc.subtract(pc.cast(batch.column(TIME), pa.int64()), 3 * HOUR), pa.int64())
        return batch.set_column(0, TIME, moved.cast(SCHEMA.field(TIME).type))

    job = Job(ls.Sliding("1h", "20m"), emit="changes", transform=lambda s: s.map(shift))
    replay = await run_once(job, lake_source(lake), tmp_path / "replay.db", "replay")
    state = await run_once(job, lake_source(lake), tmp_path / "state.db", "state")
    assert replay.late > 0  # the premise: the replay drops late records
    assert state.metrics["bootstrap"]["mode"] == "state"
    differences = diff(state.rows, replay.rows)
    assert (state.late, not differences) == (replay.late, True), (
        f"replay: {replay.late} late; state: {state.late} late; store:\n" + "\n".join(differences)
    )


# --- metrics, reruns, checkpoints ----------------------------------------------------------------


async def test_metrics_after_the_run_count_the_lake(tmp_path: Path) -> None:
    table = events(400, seed=15)
    lake = write_lake(tmp_path / "lake", table)
    job = Job(ls.Sliding("1h", "20m"), emit="changes")
    replay, state = await replay_vs_state(job, lake_source(lake), tmp_path, "m")
    report = state.metrics["bootstrap"]
    assert report["windows"]["win"]["rows"] == table.num_rows, report
    assert report["reason"] is None and report["seconds"] is not None
    for section in ("sources",):
        want = {name: s.get("rows") for name, s in replay.metrics[section].items()}
        got = {name: s.get("rows") for name, s in state.metrics[section].items()}
        assert got == want, (section, got, want)
    assert state.metrics["late"] == replay.metrics["late"] == 0


async def test_running_the_same_pipeline_twice(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake", events(100, seed=16))
    job = Job(ls.Tumbling("1h"), emit="changes")
    p, *_ = build(job, lake_source(lake)(), tmp_path / "s.db")
    await p.run(bootstrap="state")
    with pytest.raises(ls.ConfigError):
        await p.run(bootstrap="state")
    with pytest.raises(ls.ConfigError):
        await p.run(bootstrap="replay")


async def test_blocked_graphs_replay_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """count_distinct, sessions, a memory source: replay, reason in the metrics and a warning,
    and the store equals the replay's."""
    table = events(300, seed=17)
    lake = write_lake(tmp_path / "lake", table)
    cases: list[tuple[str, Job, Callable[[], Any]]] = [
        (
            "count_distinct",
            Job(ls.Tumbling("1h"), emit="changes", spec={"d": ("count_distinct", "name")}),
            lake_source(lake),
        ),
        ("session", Job(ls.Session("10m"), emit="changes"), lake_source(lake)),
        (
            "memory source",
            Job(ls.Tumbling("1h"), emit="changes"),
            lambda: ls.MemorySource(table, time_column=TIME),
        ),
    ]
    for label, job, make in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            state = await run_once(job, make, tmp_path / f"{label}-s.db", "state")
        replay = await run_once(job, make, tmp_path / f"{label}-r.db", "replay")
        report = state.metrics["bootstrap"]
        assert report["mode"] == "replay" and report["reason"], (label, report)
        assert any("bootstrap='state' is not possible" in r.message for r in caplog.records)
        assert not diff(state.rows, replay.rows), label


async def test_checkpointed_rerun_restore_none_and_an_older_lineage(tmp_path: Path) -> None:
    """Checkpoints on a lake job: the pass writes checkpoint 1; a rerun resumes from it (no
    second pass, same store); ``restore=None`` over the same URL (an older lineage there)
    bootstraps again, into a fresh store, with the same result."""
    table = events(500, seed=18)
    lake = write_lake(tmp_path / "lake", table)
    url = (tmp_path / "ckpt").as_uri()
    job = Job(ls.Sliding("1h", "20m"), emit="changes")
    want = reference(job, table)
    first = await run_once(job, lake_source(lake), tmp_path / "a.db", "state", checkpoints=url)
    assert first.metrics["bootstrap"]["checkpoint_id"] == 1, first.metrics["bootstrap"]
    assert not diff(first.rows, want)
    again = await run_once(job, lake_source(lake), tmp_path / "b.db", "state", checkpoints=url)
    report = again.metrics["bootstrap"]
    assert report["reason"] and report["reason"].startswith("resumed from checkpoint"), report
    fresh = await run_once(
        job, lake_source(lake), tmp_path / "c.db", "state", checkpoints=url, restore=None
    )
    report = fresh.metrics["bootstrap"]
    assert report["mode"] == "state" and report["checkpoint_id"] is not None, report
    assert not diff(fresh.rows, want)


async def test_older_lineage_of_another_graph(tmp_path: Path) -> None:
    """The URL holds checkpoints of a different graph: ``restore="latest"`` refuses it with
    IncompatibleStateError in both modes; ``restore=None`` bootstraps from state."""
    table = events(300, seed=19)
    lake = write_lake(tmp_path / "lake", table)
    url = (tmp_path / "ckpt").as_uri()
    other = Job(ls.Tumbling("1h"), emit="every", spec={"n": ("count", None)})
    await run_once(other, lake_source(lake), tmp_path / "o.db", "state", checkpoints=url)
    job = Job(ls.Sliding("1h", "20m"), emit="changes")
    for mode in ("state", "replay"):
        with pytest.raises(ls.IncompatibleStateError):
            await run_once(job, lake_source(lake), tmp_path / f"x-{mode}.db", mode, checkpoints=url)
    fresh = await run_once(
        job, lake_source(lake), tmp_path / "f.db", "state", checkpoints=url, restore=None
    )
    assert fresh.metrics["bootstrap"]["mode"] == "state"
    assert not diff(fresh.rows, reference(job, table))


async def test_cancel_in_the_pass_then_rerun(tmp_path: Path) -> None:
    """A map sleeping per batch; the run is cancelled inside the pass (before the first
    checkpoint), then rerun with the same checkpoint URL and store: the store is exact."""
    table = events(600, seed=20)
    lake = write_lake(tmp_path / "lake", table)
    url = (tmp_path / "ckpt").as_uri()
    store = tmp_path / "s.db"

    def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(0.01)
        return batch

    job = Job(ls.Sliding("1h", "20m"), emit="changes", transform=lambda s: s.map(slow))
    p, *_ = build(job, lake_source(lake)(), store, url)
    task = asyncio.create_task(p.run(bootstrap="state"))
    for _ in range(500):
        await asyncio.sleep(0.01)
        if p.metrics().get("status") == "running":
            break
    await asyncio.sleep(0.1)
    assert not task.done(), "the run finished before the cancel"
    report = p.metrics()["bootstrap"]
    assert report["mode"] == "state" and report["seconds"] is None, report  # inside the pass
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rerun = await run_once(job, lake_source(lake), store, "state", checkpoints=url)
    assert rerun.metrics["bootstrap"]["mode"] == "state", rerun.metrics["bootstrap"]
    assert not diff(rerun.rows, reference(job, table))


# --- lambda source: the stream continues --------------------------------------------------------


def to_json(table: pa.Table) -> list[bytes]:
    rows = table.to_pylist()
    for row in rows:
        row[TIME] = int(row[TIME].timestamp() * 1000) if row[TIME] is not None else None
    return [orjson.dumps(row) for row in rows]


def timestamp_lambda(
    broker: Broker, root: Path, topic: str, cutoff: int, max_batch_records: int
) -> Callable[[], ls.LambdaSource]:
    """A factory of lambda sources: the lake under ``root / "lake"``, ``topic``'s one
    partition, timestamp handoff at ``cutoff``."""

    def make() -> ls.LambdaSource:
        return ls.LambdaSource(
            ls.ParquetLake(str(root / "lake"), TIME, schema=SCHEMA, batch_size=40),
            ls.KafkaStream(
                topic,
                broker.bootstrap,
                time_column=TIME,
                schema=SCHEMA,
                stop_at="latest",
                max_batch_records=max_batch_records,
            ),
            cutoff=cutoff,
            out_of_orderness="1m",
            idle_timeout="300ms",
        )

    return make


async def lambda_setup(
    broker: Broker, root: Path, table: pa.Table, lake_hours: int
) -> tuple[Callable[[], ls.LambdaSource], int]:
    """Lake: the events before ``T0 + lake_hours``; topic: the rest (one partition), record
    timestamps the events' times; timestamp handoff at the cutoff."""
    cutoff = T0 + lake_hours * HOUR
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    write_lake(root / "lake", table.filter(pa.array(times < cutoff)))
    rest = table.filter(pa.array(times >= cutoff))
    topic = await asyncio.to_thread(broker.new_topic, 1, "attack4")
    stamps = (pc.cast(rest.column(TIME), pa.int64()).to_numpy() // MS).tolist()
    await broker.aproduce(topic, to_json(rest), partition=0, timestamps_ms=stamps)

    return timestamp_lambda(broker, root, topic, cutoff, 50), cutoff


async def test_stream_continues_after_the_pass(broker: Broker, tmp_path: Path) -> None:
    """Lambda source, each emit mode: strings that are all null in the lake and set on the
    stream (the pass's partial columns then have no string values), a window straddling the
    cutoff; replay and state equal, and equal the reference."""
    table = events(900, seed=21, hours=10)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    lake_part = times < T0 + 6 * HOUR
    names = [
        None if in_lake else v
        for in_lake, v in zip(lake_part, table.column("name").to_pylist(), strict=True)
    ]
    table = table.set_column(3, "name", pa.array(names, pa.string()))
    make, _ = await lambda_setup(broker, tmp_path, table, 6)
    for emit in EMITS:
        job = Job(ls.Sliding("50m", "20m"), emit=emit)
        replay, state = await replay_vs_state(job, make, tmp_path, f"lambda-{emit}")
        if emit != "latest":  # latest ends at the stream's watermark: replay is the oracle
            assert not diff(replay.rows, reference(job, table)), emit
        assert state.metrics["bootstrap"]["windows"]["win"]["rows"] == int(lake_part.sum())


async def test_overlapping_lake_mid_hour_cutoff_new_keys_bad_messages(
    broker: Broker, tmp_path: Path
) -> None:
    """The lake holds 7 hours, the stream everything from hour 4 on (3 hours of overlap) plus
    users only it knows and malformed messages; the cutoff is mid-hour (5h17m); a window with
    allowed lateness. Each record counts once (lake below the cutoff, stream from it), every bad
    message is dead-lettered once, in both modes."""
    table = events(1200, seed=22, hours=10)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    users = table.column("user_id").to_numpy().copy()
    users[(times >= T0 + 6 * HOUR) & (np.arange(len(times)) % 4 == 0)] += 100  # stream-only
    table = table.set_column(1, "user_id", pa.array(users))
    cutoff = T0 + 5 * HOUR + 17 * MINUTE
    write_lake(tmp_path / "lake", table.filter(pa.array(times < T0 + 7 * HOUR)))
    streamed = table.filter(pa.array(times >= T0 + 4 * HOUR))
    values, stamps = (
        to_json(streamed),
        (pc.cast(streamed.column(TIME), pa.int64()).to_numpy() // MS).tolist(),
    )
    mixed_values: list[bytes] = []
    mixed_stamps: list[int] = []
    bad = 0
    for index, (value, stamp) in enumerate(zip(values, stamps, strict=True)):
        mixed_values.append(value)
        mixed_stamps.append(stamp)
        if index % 50 == 7:
            mixed_values.append(b"{broken" if index % 100 == 7 else b'{"user_id": 1}')
            mixed_stamps.append(stamp)
            # the stream is read from record timestamp cutoff - out_of_orderness on
            bad += stamp * MS >= cutoff - MINUTE
    topic = await asyncio.to_thread(broker.new_topic, 1, "attack4")
    await broker.aproduce(topic, mixed_values, partition=0, timestamps_ms=mixed_stamps)

    make = timestamp_lambda(broker, tmp_path, topic, cutoff, 50)

    for emit in ("latest", "changes"):
        job = Job(ls.Tumbling("7m"), emit=emit, lateness="5m")
        replay, state = await replay_vs_state(job, make, tmp_path, f"overlap-{emit}")
        assert replay.dead == state.dead == bad, (replay.dead, state.dead, bad)
        if emit != "latest":  # latest ends at the stream's watermark: replay is the oracle
            assert not diff(replay.rows, reference(job, table)), emit
        lake_rows = int(np.count_nonzero(times < cutoff))
        assert state.metrics["bootstrap"]["windows"]["win"]["rows"] == lake_rows


class WatermarkAhead(ls.Operator):
    """A stateless operator (``stateful = False``: nothing kept between batches) that passes
    batches through and forwards each watermark an hour ahead (a user's "the feed is never more
    than an hour late" shortcut, as a replay sees it)."""

    stateful = False

    def on_watermark(self, watermark: int, ctx: ls.Context) -> None:
        ctx.emit_watermark(watermark + HOUR)


async def test_stateless_operator_moving_the_watermark_ahead(tmp_path: Path) -> None:
    table = events(600, seed=23)
    lake = write_lake(tmp_path / "lake", table)
    job = Job(ls.Tumbling("20m"), emit="changes", transform=lambda s: s.process(WatermarkAhead()))
    replay = await run_once(job, lake_source(lake), tmp_path / "replay.db", "replay")
    state = await run_once(job, lake_source(lake), tmp_path / "state.db", "state")
    assert replay.late > 0  # the premise
    assert state.metrics["bootstrap"]["mode"] == "state"
    differences = diff(state.rows, replay.rows)
    assert (state.late, not differences) == (replay.late, True), (
        f"replay: {replay.late} late; state: {state.late} late; store:\n" + "\n".join(differences)
    )


def shift_some(
    users: set[int], hours: tuple[int, int], back: int
) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    """A map moving the records of ``users`` whose time lies in ``hours`` (from ``T0``)
    ``back`` µs earlier: mid-pass, a few records arrive late for the watermark in force."""

    def shift(batch: pa.RecordBatch) -> pa.RecordBatch:
        micros = pc.cast(batch.column(TIME), pa.int64())
        chosen = pc.and_(
            pc.is_in(batch.column("user_id"), pa.array(sorted(users), pa.int64())),
            pc.and_(
                pc.greater_equal(micros, T0 + hours[0] * HOUR),
                pc.less(micros, T0 + hours[1] * HOUR),
            ),
        )
        moved = pc.if_else(chosen, pc.subtract(micros, back), micros)
        return batch.set_column(0, TIME, moved.cast(SCHEMA.field(TIME).type))

    return shift


SWITCH_CASES = {
    "sliding-changes": (ls.Sliding("1h", "20m"), "changes", "0s"),
    "sliding-latest": (ls.Sliding("1h", "20m"), "latest", "0s"),
    "sliding-every-lateness": (ls.Sliding("1h", "20m"), "every", "30m"),
    "tumbling-latest-lateness": (ls.Tumbling("45m"), "latest", "40m"),
    "tumbling-changes": (ls.Tumbling("45m"), "changes", "0s"),
}


@pytest.mark.parametrize("case", list(SWITCH_CASES))
async def test_pass_switching_to_replay_mid_lake(tmp_path: Path, case: str) -> None:
    """Two users' records of hours 6-7 moved 100 minutes back: the pass aggregates in bulk up
    to the first of them, then replays the rest (0fa8dc4). Store, late rows and the late
    side output's count equal the replay's; the bootstrap report says where it switched."""
    window, emit, lateness = SWITCH_CASES[case]
    table = events(900, seed=24)
    lake = write_lake(tmp_path / "lake", table)
    shift = shift_some({2, 5}, (6, 8), 100 * MINUTE)
    job = Job(window, emit=emit, lateness=lateness, transform=lambda s: s.map(shift))
    replay, state = await replay_vs_state(job, lake_source(lake), tmp_path, case)
    assert replay.late > 0 or lateness != "0s"  # the premise (no lateness: some are late)
    report = state.metrics["bootstrap"]["windows"]["win"]
    assert report.get("replayed_from") is not None, report
    assert 0 < report["rows"] < table.num_rows, report


# --- property: random small lakes, windows and emits ---------------------------------------------


EXAMPLES = int(os.environ.get("ATTACK4_EXAMPLES", "20"))  # more for a longer search
BASES = {"2026": T0, "1965": -(5 * 365 * 24 * HOUR), "2200": T0 + 174 * 365 * 24 * HOUR}


@st.composite
def lake_cases(draw: st.DrawFn) -> tuple[pa.Table, Job]:
    base = BASES[draw(st.sampled_from(sorted(BASES)))]
    rows = draw(st.integers(1, 60))
    span_hours = draw(st.integers(1, 30))
    times = sorted(
        draw(st.lists(st.integers(0, span_hours * HOUR - 1), min_size=rows, max_size=rows))
    )
    users = draw(st.lists(st.integers(0, 4), min_size=rows, max_size=rows))
    names = draw(
        st.lists(
            st.one_of(st.none(), st.sampled_from(["a", "b", "zz", ""])),
            min_size=rows,
            max_size=rows,
        )
    )
    amounts = draw(st.lists(st.integers(-1000, 1000), min_size=rows, max_size=rows))
    table = pa.table(
        {
            TIME: pa.array([base + t for t in times], pa.int64()).cast(SCHEMA.field(TIME).type),
            "user_id": pa.array(users, pa.int64()),
            "region": pa.array(["eu"] * rows),
            "name": pa.array(names, pa.string()),
            "amount": pa.array([float(a) for a in amounts]),
            "flag": pa.array([a % 2 == 0 for a in amounts]),
        },
        schema=SCHEMA,
    )
    slide_minutes = draw(st.sampled_from([1, 5, 7, 20, 45, 60, 90]))
    window: Any
    if draw(st.booleans()):
        window = ls.Tumbling(f"{slide_minutes}m")
    else:
        window = ls.Sliding(f"{slide_minutes * draw(st.integers(2, 6))}m", f"{slide_minutes}m")
    emit = draw(st.sampled_from(EMITS))
    lateness = f"{draw(st.sampled_from([0, 3, 30]))}m"
    return table, Job(window, emit=emit, lateness=lateness)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=lake_cases())
def test_property_random_lakes_equal_replay_and_reference(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[pa.Table, Job]
) -> None:
    """Random small lakes (1965, 2026 and 2200 times; 1–60 rows over 1–30 hours), tumbling or
    sliding windows of odd sizes, any emit and lateness: the state store equals the replay
    store and the SQL reference."""
    table, job = case
    root = tmp_path_factory.mktemp("prop")
    lake = write_lake(root / "lake", table)
    replay, _ = asyncio.run(replay_vs_state(job, lake_source(lake), root, "p"))
    assert not diff(replay.rows, reference(job, table))


# --- the CLI and job files --------------------------------------------------------------------------


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lambdasource", *args], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.parametrize("emit", ["latest", pytest.param("changes", marks=pytest.mark.slow)])
async def test_cli_and_job_file_state_equal_replay(tmp_path: Path, emit: str) -> None:
    """``lambdasource bootstrap`` in both ``--bootstrap-mode`` s, and the job file it prints
    run by ``lambdasource run``: every store equals the reference (``--where`` applied)."""
    table = events(500, seed=30)
    lake = write_lake(tmp_path / "lake", table)
    flags = ["--lake", str(lake), "--time-column", TIME, "--key", "user_id"]
    flags += ["--size", "50m", "--slide", "20m", "--emit", emit, "--table", "win", "--quiet"]
    for name, (function, column) in AGGREGATES.items():
        flags += ["--agg", f"{name}={function}({column or ''})"]
    flags += ["--where", "amount > 2000"]
    job = Job(ls.Sliding("50m", "20m"), emit=emit, flush="watermark")
    kept = table.filter(pc.greater(table.column("amount"), 2000.0))
    want = reference(job, kept, until=lake_end(table))
    stores = {}
    for mode in ("state", "replay"):
        store = tmp_path / f"{mode}.db"
        said = cli("bootstrap", *flags, "--into", f"duckdb:///{store}", "--bootstrap-mode", mode)
        assert ("bootstrap from state" in said) == (mode == "state"), said
        stores[mode] = read_rows(store, job)
    store = tmp_path / "job.db"
    text = cli("bootstrap", *flags, "--into", f"duckdb:///{store}", "--print-job")
    assert 'bootstrap = "state"' in text, text
    (tmp_path / "job.toml").write_text(text)
    said = cli("run", str(tmp_path / "job.toml"))
    assert "bootstrap from state" in said, said
    stores["job file"] = read_rows(store, job)
    for label, rows in stores.items():
        assert not diff(rows, want), label


def lake_end(table: pa.Table) -> int:
    """The end of the newest record's hour partition (a Parquet lake's end watermark + 1µs)."""
    newest = int(pc.max(pc.cast(table.column(TIME), pa.int64())).as_py())
    return newest // HOUR * HOUR + HOUR


# --- Iceberg ---------------------------------------------------------------------------------------


@pytest.mark.iceberg
async def test_iceberg_lake_in_several_commits(tmp_path: Path) -> None:
    """An IcebergLake written in three commits (the later ones adding rows to earlier hours):
    every emit mode, state equals replay and the reference."""
    from lake.writer import IcebergLakeWriter
    from tests.services.iceberg import file_catalog_props

    table = events(900, seed=31)
    props = file_catalog_props(tmp_path / "iceberg")
    writer = IcebergLakeWriter("db.attack4", props, TIME, row_group_rows=64)
    order = np.random.default_rng(2).permutation(table.num_rows)
    for part in np.array_split(order, 3):
        writer.write(table.take(pa.array(np.sort(part))))

    def make() -> ls.IcebergLake:
        return ls.IcebergLake("db.attack4", catalog=props, time_column=TIME, batch_size=40)

    for emit in EMITS:
        job = Job(ls.Sliding("40m", "10m"), emit=emit, lateness="5m")
        replay, _ = await replay_vs_state(job, make, tmp_path, f"iceberg-{emit}")
        assert not diff(replay.rows, reference(job, table)), emit


# --- failing user functions, a raw branch, a blocked sink --------------------------------------------


async def test_failing_map_rows_are_dead_letters_once_and_a_raw_branch_sees_every_row(
    tmp_path: Path,
) -> None:
    """A map that raises on some rows (dead-lettered by bisection, once each in both modes);
    a second branch sinks the source's rows raw into a CollectSink (the pass feeds it every lake
    row once). Store equals the reference over the rows the map accepts."""
    table = events(600, seed=32)
    lake = write_lake(tmp_path / "lake", table)
    poisoned = pc.equal(pc.bit_wise_and(pc.cast(table.column("amount"), pa.int64()), 63), 5)

    def picky(batch: pa.RecordBatch) -> pa.RecordBatch:
        bad = pc.equal(pc.bit_wise_and(pc.cast(batch.column("amount"), pa.int64()), 63), 5)
        if pc.any(bad).as_py():
            raise ValueError("poisoned amount")
        return batch

    raw_rows: dict[str, int] = {}
    outcomes = {}
    for mode in ("replay", "state"):
        map_dead = ls.CollectSink()

        def mapped(stream: ls.Stream, map_dead: ls.CollectSink = map_dead) -> ls.Stream:
            out = stream.map(picky)
            out.dead_letters().sink(map_dead, name="map-dead")
            return out

        job = Job(ls.Sliding("30m", "10m"), emit="changes", transform=mapped)
        raw = ls.CollectSink()
        p, late, dead, _ = build(job, lake_source(lake)(), tmp_path / f"{mode}.db", raw=raw)
        await asyncio.wait_for(p.run(bootstrap=mode), 90)
        assert p.metrics()["bootstrap"]["mode"] == mode
        assert len(dead) == 0
        outcomes[mode] = (read_rows(tmp_path / f"{mode}.db", job), len(map_dead), len(late))
        raw_rows[mode] = len(raw)
    assert raw_rows == {"replay": table.num_rows, "state": table.num_rows}
    assert outcomes["state"][1:] == outcomes["replay"][1:] == (int(pc.sum(poisoned).as_py()), 0)
    assert not diff(outcomes["state"][0], outcomes["replay"][0])
    job = Job(ls.Sliding("30m", "10m"), emit="changes")
    assert not diff(outcomes["replay"][0], reference(job, table.filter(pc.invert(poisoned))))


async def test_disordered_stream_within_lateness_after_the_pass(
    broker: Broker, tmp_path: Path
) -> None:
    """The stream part arrives out of order (each record up to 4 minutes behind the newest,
    within out_of_orderness 1m + allowed_lateness 5m: never dropped, but often late for the
    watermark, so windows completed from the pass's state are reopened): ``every`` and
    ``latest`` stores equal replay's and (``every``) the reference."""
    table = events(1500, seed=33, hours=8)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    cutoff = T0 + 5 * HOUR
    write_lake(tmp_path / "lake", table.filter(pa.array(times < cutoff)))
    rest = table.filter(pa.array(times >= cutoff))
    jitter = np.random.default_rng(4).integers(0, 4 * MINUTE, rest.num_rows)
    rest = rest.take(
        pa.array(
            np.argsort(pc.cast(rest.column(TIME), pa.int64()).to_numpy() + jitter, kind="stable")
        )
    )
    rest_times = pc.cast(rest.column(TIME), pa.int64()).to_numpy()
    assert np.any(np.diff(rest_times) < -MINUTE)  # the premise: really out of order
    topic = await asyncio.to_thread(broker.new_topic, 1, "attack4")
    stamps = (np.maximum.accumulate(rest_times) // MS).tolist()
    await broker.aproduce(topic, to_json(rest), partition=0, timestamps_ms=stamps)

    make = timestamp_lambda(broker, tmp_path, topic, cutoff, 30)

    for emit in ("every", "latest"):
        job = Job(ls.Sliding("30m", "10m"), emit=emit, lateness="5m")
        replay, state = await replay_vs_state(job, make, tmp_path, f"disorder-{emit}")
        assert replay.late == state.late == 0
        if emit == "every":
            assert not diff(replay.rows, reference(job, table))


@st.composite
def shifted_cases(draw: st.DrawFn) -> tuple[pa.Table, Job, list[int]]:
    """A random lake (``lake_cases``) and per row a time shift (mostly 0; some rows moved
    back up to 3 hours or ahead up to 1 hour by the job's map)."""
    table, job = draw(lake_cases())
    shifts = draw(
        st.lists(
            st.one_of(
                st.just(0),
                st.integers(-3 * HOUR, HOUR).map(lambda micros: micros // MINUTE * MINUTE),
            ),
            min_size=table.num_rows,
            max_size=table.num_rows,
        )
    )
    return table, job, shifts


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=shifted_cases())
def test_property_maps_moving_times_equal_replay(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[pa.Table, Job, list[int]]
) -> None:
    """A map moves some rows' times (a ``shift`` column the lake carries): wherever a record
    turns late for the watermark in force, the pass must give what the replay gives — store,
    late rows, dead letters."""
    table, job, shifts = case
    with_shift = table.append_column("shift", pa.array(shifts, pa.int64()))
    root = tmp_path_factory.mktemp("shifted")
    lake = write_lake(root / "lake", with_shift)
    schema = with_shift.schema

    def move(batch: pa.RecordBatch) -> pa.RecordBatch:
        micros = pc.add(pc.cast(batch.column(TIME), pa.int64()), batch.column("shift"))
        return batch.set_column(0, TIME, micros.cast(SCHEMA.field(TIME).type))

    job.transform = lambda s: s.map(move)

    def make() -> ls.ParquetLake:
        return ls.ParquetLake(str(lake), TIME, schema=schema, batch_size=7)

    asyncio.run(replay_vs_state(job, make, root, "p"))


@pytest.mark.parametrize("emit", ["latest", "changes", "every"])
async def test_switch_with_every_lake_record_at_one_instant(tmp_path: Path, emit: str) -> None:
    """Finding 2 (fixed: ``completed_state`` always writes the chunk tiling the entered time
    line, even empty; ``latest`` crashed in ``merge_late`` with an IndexError). Hypothesis's
    minimal case: 20 records at one instant (on a slide boundary), the last
    moved a minute back by the map; ``Sliding(2m, 1m)``. After 7 rows the lake's watermark is
    that instant − 1µs, the moved record is partly late: the pass switches to replay with a
    state holding no slice below the completed end."""
    instant = T0 + 5 * HOUR
    rows = 20
    table = pa.table(
        {
            TIME: pa.array([instant] * rows, pa.int64()).cast(SCHEMA.field(TIME).type),
            "user_id": pa.array([0] * rows, pa.int64()),
            "region": pa.array(["eu"] * rows),
            "name": pa.array([None] * rows, pa.string()),
            "amount": pa.array([1.0] * rows),
            "flag": pa.array([True] * rows),
            "shift": pa.array([0] * (rows - 1) + [-MINUTE], pa.int64()),
        }
    )
    lake = write_lake(tmp_path / "lake", table)

    def move(batch: pa.RecordBatch) -> pa.RecordBatch:
        micros = pc.add(pc.cast(batch.column(TIME), pa.int64()), batch.column("shift"))
        return batch.set_column(0, TIME, micros.cast(SCHEMA.field(TIME).type))

    job = Job(ls.Sliding("2m", "1m"), emit=emit, transform=lambda s: s.map(move))

    def make() -> ls.ParquetLake:
        return ls.ParquetLake(str(lake), TIME, schema=table.schema, batch_size=7)

    await replay_vs_state(job, make, tmp_path, emit)


# --- offsets handoff with a partition behind in event time ----------------------------------------

BAD_MESSAGES = [b"{not json", b'{"user_id": 3}', b"\xff\xfe"]  # unparseable, no event time, binary


async def test_offsets_handoff_with_a_partition_behind_in_event_time(
    broker: Broker, tmp_path: Path
) -> None:
    """Two partitions archived unevenly in event time: partition 0 up to hour 16, partition 1
    only up to hour 8 (then both go on, on the stream). ``handoff="offsets"``: the stream part
    of partition 1 starts 8 hours before the lake's high-water mark. A replay's watermark is the
    minimum over the lake and the live partitions, so partition 1's records are on time; every
    record counts once, in both modes. Malformed messages on both sides of the archive: each
    is dead-lettered once (the archived ones by the lake, the others by the stream)."""
    from tests.faults import jobs

    table = jobs.clickstream(3000, seed=40, users=20).sort_by(TIME)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    day = int(times.min()) // HOUR * HOUR
    parts = jobs.split_partitions(table, 2, 41)
    archived_until = {0: day + 16 * HOUR, 1: day + 8 * HOUR}
    topic = await asyncio.to_thread(broker.new_topic, 2, "attack4-behind")
    later = {}
    for partition, rows in enumerate(parts):
        micros = pc.cast(rows.column(TIME), pa.int64()).to_numpy()
        split = int(np.searchsorted(micros, archived_until[partition]))
        first, later[partition] = rows.slice(0, split), rows.slice(split)
        stamps = jobs.arrival_ms(first)
        await broker.aproduce(
            topic,
            [*jobs.to_json(first), *BAD_MESSAGES],
            partition=partition,
            timestamps_ms=[*stamps, *[stamps[-1]] * len(BAD_MESSAGES)],
        )
    lake = str(tmp_path / "lake")
    summary = await jobs.archive(broker.bootstrap, topic, lake, commit_rows=300)
    assert summary.dead_letters == 2 * len(BAD_MESSAGES), summary  # archived dead letters
    for partition, rows in later.items():
        stamps = jobs.arrival_ms(rows)
        await broker.aproduce(
            topic,
            [*BAD_MESSAGES[:1], *jobs.to_json(rows), *BAD_MESSAGES[1:]],
            partition=partition,
            timestamps_ms=[stamps[0], *stamps, *[stamps[-1]] * (len(BAD_MESSAGES) - 1)],
        )

    def make() -> ls.LambdaSource:
        return ls.LambdaSource(
            ls.ParquetLake(lake, TIME, schema=jobs.SCHEMA, batch_size=50),
            ls.KafkaStream(
                topic,
                broker.bootstrap,
                time_column=TIME,
                schema=jobs.SCHEMA,
                stop_at="latest",
                max_batch_records=50,
            ),
            handoff="offsets",
            out_of_orderness="5m",
            idle_timeout="2s",
        )

    spec: Spec = {"n": ("count", None), "total": ("sum", "amount"), "top": ("max", "event_id")}
    job = Job(ls.Tumbling("30m"), emit="changes", spec=spec)
    replay, state = await replay_vs_state(job, make, tmp_path, "behind")
    assert replay.late == state.late == 0
    # archived dead letters come from the lake (in the pass), the later ones from the stream
    assert replay.dead == state.dead == 4 * len(BAD_MESSAGES), (replay.dead, state.dead)
    assert not diff(replay.rows, reference(job, table))


@pytest.mark.parametrize("emit", ["latest", "changes"])
async def test_stream_phase_rerun_from_the_pass_checkpoint(
    broker: Broker, tmp_path: Path, emit: str
) -> None:
    """With Checkpoints: a full state run (the pass writes checkpoint 1), then a second run
    with ``restore=1`` into the same store: the stream phase runs again from the pass's state
    as decoded from disk (string partials all null in the lake: the columns' types come from
    nothing). The store stays equal to a replay's."""
    table = events(900, seed=42, hours=10)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    in_lake = times < T0 + 6 * HOUR
    given = table.column("name").to_pylist()
    names = [None if lake else v for lake, v in zip(in_lake, given, strict=True)]
    table = table.set_column(3, "name", pa.array(names, pa.string()))
    make, _ = await lambda_setup(broker, tmp_path, table, 6)
    job = Job(ls.Sliding("50m", "20m"), emit=emit)
    replay = await run_once(job, make, tmp_path / "replay.db", "replay")
    url = (tmp_path / "ckpt").as_uri()
    store = tmp_path / "state.db"
    first = await run_once(job, make, store, "state", checkpoints=url)
    assert first.metrics["bootstrap"]["checkpoint_id"] == 1, first.metrics["bootstrap"]
    assert not diff(first.rows, replay.rows)
    again = await run_once(job, make, store, "state", checkpoints=url, restore=1)
    assert again.metrics["checkpoints"]["restored_from"] == 1, again.metrics["checkpoints"]
    read = again.metrics["sources"]["lambda"]["rows"]
    assert read["stream"] == int(np.count_nonzero(~in_lake)), read  # the stream part, again
    assert not diff(again.rows, replay.rows)


async def test_window_of_a_window_and_two_lakes_replay_with_the_reason(tmp_path: Path) -> None:
    """Hourly counts re-windowed into 3-hour maxima, and the union of two lakes: both replay
    with the reason in the metrics, and their stores equal the replay's."""
    table = events(600, seed=43)
    lake = write_lake(tmp_path / "lake", table)
    other = write_lake(tmp_path / "other", events(300, seed=44))

    def nested(p: ls.Pipeline, store: Path) -> None:
        hourly = (
            p.source(lake_source(lake)())
            .key_by("user_id")
            .window(ls.Tumbling("1h"), emit="every", name="hourly")
            .aggregate(n=ls.count())
        )
        hourly.key_by("user_id").window(ls.Tumbling("3h"), emit="every", name="peak").aggregate(
            top=ls.max("n")
        ).sink(ls.DuckDBUpsert(store, table="win", key=["user_id", "window_end"]))

    def two_lakes(p: ls.Pipeline, store: Path) -> None:
        first = p.source(lake_source(lake)(), name="first")
        second = p.source(lake_source(other)(), name="second")
        first.union(second).key_by("user_id").window(ls.Tumbling("1h"), emit="every").aggregate(
            n=ls.count()
        ).sink(ls.DuckDBUpsert(store, table="win", key=["user_id", "window_end"]))

    for label, graph, needle in (
        ("nested", nested, "is fed by window"),
        ("two lakes", two_lakes, "2 sources"),
    ):
        stores = {}
        for mode in ("replay", "state"):
            p = ls.Pipeline(name="attack4", flush="all")
            store = tmp_path / f"{label}-{mode}.db"
            graph(p, store)
            await asyncio.wait_for(p.run(bootstrap=mode), 90)
            report = p.metrics()["bootstrap"]
            assert report["mode"] == "replay", (label, report)
            assert mode == "replay" or needle in report["reason"], (label, report)
            with duckdb.connect(str(store)) as con:
                stores[mode] = sorted(con.sql("SELECT * FROM win").fetchall())
        assert stores["state"] == stores["replay"] and stores["replay"], label
