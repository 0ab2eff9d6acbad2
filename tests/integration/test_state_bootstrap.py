"""``bootstrap="state"`` equals a replay against real components (issue 14 §4).

Data set (one per broker, Apache Kafka in the default run, Tansu in -m slow): a day of
clickstream on a 2-partition topic, each partition ordered by event hour, with malformed messages
mixed in; the first 14 hours (and their bad messages) are archived by ``lake.archiver`` — an
hour-partitioned Parquet lake with commits recording the offsets and the archived dead letters —
then the rest is produced: it is only on the stream. Both handoffs are exact on it: ``offsets``
(lake + the stream from the recorded offsets) and ``timestamp`` (the lake below its high-water
mark, an hour boundary; the stream from there).

The job: lambda source → filter (drops ``add_to_cart``) → map (adds ``cents``) →
``key_by(user_id)`` → three windows (``Sliding(50m, 20m)`` and ``Tumbling(45m)`` with 30 minutes
of allowed lateness, neither aligned to the handoff hour, and ``Sliding(24h, 2h)``, whose newest window per user holds lake
records, so ``latest`` stores see the lake part too) with every built-in partial aggregate → one
DuckDB upsert store each, keyed as a user would (``latest``: by user; ``changes``/``every``: by
(user, window_end)); the source's dead letters → a collecting sink. ``changes``/``every`` run
with ``flush="all"``: the store holds every window with data, so the oracle sees every record;
``latest`` with ``flush="watermark"`` (a flush would empty every window, leaving an empty store):
each user's newest window complete at the last event.

Oracles: the store after ``bootstrap="state"`` equals the store after a replay and the SQL
reference (:func:`lambdasource.reference.expected_windows` over the good input events, filtered
and mapped by pyarrow here), row for row (``latest``: the values per user — the pass stamps a
user's row with the newest completed window, a replay with the step at which its value last
changed); each bad message reaches the dead-letter sink exactly once, in both modes.
``bulk.CHUNK_ROWS`` is patched small so the pass merges many chunks of partials.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from lambdasource import state_bootstrap
from lambdasource.checkpoints import Checkpoints
from lambdasource.reference import expected_windows, upsert_state
from lambdasource.sinks.duckdb import DuckDBUpsert
from lambdasource.sinks.kafka import KafkaUpsert
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.sources.lambda_source import LambdaSource
from lambdasource.timeutil import normalize_time_array, to_micros
from lambdasource.windows import bulk
from lambdasource.windows.aggregates import Kernel
from tests.faults import jobs
from tests.services.brokers import Broker, broker_params, session_broker

SCHEMA = jobs.SCHEMA
MAPPED = SCHEMA.append(pa.field("cents", pa.int64()))
TIME = "event_time"
KEY = "user_id"
EVENTS = 3000
HOUR_US = 3_600_000_000
LAKE_HOURS = 14
BAD_EVERY = 97  # a malformed message after every 97 good ones of a partition
BAD = [b"{not json", orjson.dumps({"event_id": -1, "user_id": 3})]  # the second: no event time
WINDOWS: dict[str, ls.Sliding] = {
    "sliding": ls.Sliding("50m", "20m"),
    "tumbling": ls.Tumbling("45m"),
    # a day: a user's newest window holds lake records too, so even ``latest`` stores see them
    "day": ls.Sliding("24h", "2h"),
}
LATENESS = {"sliding": "0s", "tumbling": "30m", "day": "0s"}
"""Allowed lateness per window: the pass keeps the slices a late record could still join."""
AGGREGATES: dict[str, tuple[str, str | None]] = {
    "n": ("count", None),
    "cents": ("sum", "cents"),
    "mean": ("mean", "amount"),
    "lo": ("min", "amount"),
    "hi": ("max", "event_id"),
    "first": ("first", "kind"),
    "last": ("last", "event_id"),
}
HANDOFFS = ("offsets", "timestamp")
EMITS = ("latest", "changes", "every")
DEFAULT_GRID = [("offsets", "latest"), ("timestamp", "changes"), ("offsets", "every")]
SLOW_GRID = [(h, e) for h in HANDOFFS for e in EMITS if (h, e) not in DEFAULT_GRID]


KERNELS: dict[str, Callable[..., Kernel]] = {
    "count": ls.count,
    "sum": ls.sum,
    "mean": ls.mean,
    "min": ls.min,
    "max": ls.max,
    "first": ls.first,
    "last": ls.last,
    "count_distinct": ls.count_distinct,
}


def kernels(aggregates: dict[str, tuple[str, str | None]] = AGGREGATES) -> dict[str, Kernel]:
    """Engine kernels for the reference's ``{name: (function, column)}`` aggregates."""
    return {
        name: KERNELS[function]() if column is None else KERNELS[function](column)
        for name, (function, column) in aggregates.items()
    }


# --- the data set -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """``good``: every well-formed event (the oracle's input); ``bad``: (partition, offset) of
    every malformed message; ``lake_good``: the good events in the lake (those before
    ``cutoff``, an hour boundary); ``high_watermark``: the lake's newest commit's (records
    before it are the timestamp handoff's lake part, the rest comes from the stream)."""

    broker: Broker
    topic: str
    lake: str
    good: pa.Table
    bad: Counter[tuple[int, int]]
    cutoff: int
    lake_good: int
    high_watermark: int

    def lake_cutoff(self, handoff: str) -> int:
        """The time before which the lake part's records lie, per handoff."""
        return self.cutoff if handoff == "offsets" else self.high_watermark


async def produce_with_bad(
    broker: Broker, topic: str, partition: int, rows: pa.Table, skip: int
) -> list[tuple[int, int]]:
    """Produce ``rows`` to ``partition`` (record timestamp: running max event time) with a bad
    message after every ``BAD_EVERY`` good ones (counting from ``skip``); the bad positions."""
    values, stamps = jobs.to_json(rows), jobs.arrival_ms(rows)
    mixed: list[bytes] = []
    mixed_stamps: list[int | None] = []
    bad_flags: list[bool] = []
    for index, (value, stamp) in enumerate(zip(values, stamps, strict=True)):
        mixed.append(value)
        mixed_stamps.append(stamp)
        bad_flags.append(False)
        if (skip + index) % BAD_EVERY == BAD_EVERY - 1:
            mixed.append(BAD[(skip + index) // BAD_EVERY % len(BAD)])
            mixed_stamps.append(stamp)
            bad_flags.append(True)
    placed = await broker.aproduce(topic, mixed, partition=partition, timestamps_ms=mixed_stamps)
    return [position for position, bad in zip(placed, bad_flags, strict=True) if bad]


async def make_dataset(broker: Broker, root: Path) -> Dataset:
    table = jobs.clickstream(EVENTS, seed=14, users=30)
    micros = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    cutoff = int(micros.min()) // HOUR_US * HOUR_US + LAKE_HOURS * HOUR_US
    parts = [jobs.hour_ordered(part) for part in jobs.split_partitions(table, 2, 14)]
    splits = []
    for part in parts:
        times = pc.cast(part.column(TIME), pa.int64()).to_numpy()
        split = int(np.count_nonzero(times < cutoff))
        assert np.all(times[:split] < cutoff) and np.all(times[split:] >= cutoff)
        splits.append(split)
    topic = await asyncio.to_thread(broker.new_topic, 2, "bootstrap")
    bad: Counter[tuple[int, int]] = Counter()
    for p, part in enumerate(parts):
        bad.update(await produce_with_bad(broker, topic, p, part.slice(0, splits[p]), 0))
    lake = str(root / "lake")
    summary = await jobs.archive(broker.bootstrap, topic, lake, commit_rows=400)
    assert summary.commits > 1 and summary.dead_letters == sum(bad.values()) > 0, summary
    for p, part in enumerate(parts):
        bad.update(await produce_with_bad(broker, topic, p, part.slice(splits[p]), splits[p]))
    commits = sorted((root / "lake" / "_lambdasource" / "commits").glob("*.json"))
    high_watermark = int(json.loads(commits[-1].read_bytes())["high_watermark_us"])
    assert high_watermark <= cutoff
    good = pa.concat_tables(parts)
    return Dataset(broker, topic, lake, good, bad, cutoff, sum(splits), high_watermark)


@pytest.fixture(scope="module", params=broker_params(default=("apache",)))
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    broker = session_broker(request)
    return asyncio.run(make_dataset(broker, tmp_path_factory.mktemp(f"state-{broker.name}")))


# --- the job --------------------------------------------------------------------------------------


def add_cents(batch: pa.RecordBatch) -> pa.RecordBatch:
    cents = pc.cast(pc.round(pc.multiply(batch.column("amount"), 100.0)), pa.int64())
    return pa.RecordBatch.from_arrays([*batch.columns, cents], schema=MAPPED)


def transformed(events: pa.Table) -> pa.Table:
    """What the job's filter and map leave of ``events`` (computed here, independently)."""
    kept = events.filter(pc.not_equal(events.column("kind"), "add_to_cart"))
    cents = np.round(kept.column("amount").to_numpy() * 100.0).astype(np.int64)
    return kept.append_column("cents", pa.array(cents))


def store_keys(emit: str) -> list[str]:
    return [KEY] if emit == "latest" else [KEY, "window_end"]


@dataclass
class Job:
    pipeline: ls.Pipeline
    stores: dict[str, Path]  # window name → DuckDB file
    dead: ls.CollectSink


def build(
    ds: Dataset,
    handoff: str,
    emit: str,
    root: Path,
    *,
    checkpoints: str | None = None,
    stop_at: str | None = "latest",
    slow_stream_s: float = 0.0,
    stream_batch: int = 100,
) -> Job:
    """The job (module docstring), its stores under ``root``. ``slow_stream_s``: the map sleeps
    that long per stream batch (to cancel a run inside its stream phase)."""
    stream = KafkaStream(
        ds.topic,
        ds.broker.bootstrap,
        time_column=TIME,
        schema=SCHEMA,
        stop_at=stop_at,
        max_batch_records=stream_batch,
    )
    source = LambdaSource(
        ParquetLake(ds.lake, TIME, schema=SCHEMA, batch_size=128),
        stream,
        handoff=handoff,
        out_of_orderness="10m",
        idle_timeout="300ms",
    )
    p = ls.Pipeline(
        checkpoints=None
        if checkpoints is None
        else Checkpoints(checkpoints, interval="100ms", keep=100),
        name="state-bootstrap",
        flush="watermark" if emit == "latest" else "all",
    )
    src = p.source(source)
    dead = ls.CollectSink()
    src.dead_letters().sink(dead, name="dead")

    def mapped(batch: pa.RecordBatch) -> pa.RecordBatch:
        if slow_stream_s and batch.num_rows:
            newest = pc.max(pc.cast(batch.column(TIME), pa.int64())).as_py()
            if newest >= ds.cutoff:
                time.sleep(slow_stream_s)
        return add_cents(batch)

    keyed = src.filter(pc.field("kind") != "add_to_cart").map(mapped, schema=MAPPED).key_by(KEY)
    stores = {}
    for name, window in WINDOWS.items():
        stores[name] = root / f"{name}.duckdb"
        windowed = keyed.window(window, emit=emit, name=name, allowed_lateness=LATENESS[name])
        windowed.aggregate(**kernels()).sink(
            DuckDBUpsert(stores[name], table=name, key=store_keys(emit), flush_interval="100ms"),
            name=f"{name}-store",
        )
    return Job(p, stores, dead)


async def run_job(job: Job, bootstrap: Literal["replay", "state"]) -> float:
    """Run ``job`` to its end (90 s at most); the wall-clock seconds."""
    started = time.perf_counter()
    await asyncio.wait_for(job.pipeline.run(bootstrap=bootstrap), 90)
    return time.perf_counter() - started


# --- reading and comparing stores -----------------------------------------------------------------


Row = dict[str, Any]


def read_store(path: Path, table: str) -> pa.Table:
    # not read_only: a cancelled run may leave its connection open in this process, and DuckDB
    # refuses a second connection with another configuration
    with duckdb.connect(str(path)) as con:
        return con.sql(f"SELECT * FROM {table}").to_arrow_table()


def keyed_rows(table: pa.Table, emit: str) -> dict[tuple[Any, ...], Row]:
    """Store rows by store key; times as µs; ``latest``: values only (see module docstring)."""
    out: dict[tuple[Any, ...], Row] = {}
    columns = [KEY, *([] if emit == "latest" else ["window_start", "window_end"]), *AGGREGATES]
    table = table.select(columns)
    for name in ("window_start", "window_end"):
        if name in table.column_names:
            index = table.column_names.index(name)
            column = normalize_time_array(table.column(name).combine_chunks())
            table = table.set_column(index, name, column.cast(pa.int64()))
    for row in table.to_pylist():
        out[tuple(row[k] for k in store_keys(emit))] = row
    return out


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def diff_rows(
    got: dict[tuple[Any, ...], Row], expected: dict[tuple[Any, ...], Row], limit: int = 6
) -> list[str]:
    """Differences, naming the keys (empty: equal; floats within 1e-9 relative)."""
    out = [f"missing {k}: expected {expected[k]}" for k in sorted(expected.keys() - got.keys())]
    out += [f"unexpected {k}: {got[k]}" for k in sorted(got.keys() - expected.keys())]
    for k in sorted(got.keys() & expected.keys()):
        a, b = got[k], expected[k]
        if not all(same_value(a[c], b[c]) for c in b):
            out.append(f"{k}: got {a}, expected {b}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def reference_rows(ds: Dataset, window: str, emit: str) -> dict[tuple[Any, ...], Row]:
    """The store the SQL reference gives: every good event once; the windows with data
    (``changes``/``every``, flushed) or those complete at the newest event (``latest``)."""
    expected = expected_windows(
        transformed(ds.good),
        time_column=TIME,
        keys=KEY,
        window=WINDOWS[window],
        allowed_lateness=LATENESS[window],
        aggregates=AGGREGATES,
        emit=emit,  # type: ignore[arg-type]
        flush_all=emit != "latest",
    )
    if emit != "every":
        expected = upsert_state(expected, store_keys(emit))
    return keyed_rows(expected, emit)


def dead_positions(sink: ls.CollectSink) -> Counter[tuple[int, int]]:
    if not sink.batches:
        return Counter()
    out: Counter[tuple[int, int]] = Counter()
    for text in sink.table().column("_position").to_pylist():
        fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
        out[(int(fields["partition"]), int(fields["offset"]))] += 1
    return out


def check_job(job: Job, ds: Dataset, emit: str, label: str) -> dict[str, dict[Any, Row]]:
    """Every store equals the reference, every bad message was dead-lettered once, none late."""
    stores = {}
    for window, path in job.stores.items():
        got = keyed_rows(read_store(path, window), emit)
        expected = reference_rows(ds, window, emit)
        assert len(expected) >= 10, f"{window}: the reference store is (nearly) empty"
        diffs = diff_rows(got, expected)
        assert not diffs, f"{label} {window}: store differs from the reference:\n" + "\n".join(
            diffs
        )
        stores[window] = got
    dead = dead_positions(job.dead)
    assert dead == ds.bad, (
        f"{label}: dead letters twice {sorted(+(dead - ds.bad))[:5]}, "
        f"missing {sorted(+(ds.bad - dead))[:5]}"
    )
    metrics = job.pipeline.metrics()
    assert metrics["late"] == 0, f"{label}: {metrics['late']} late records"
    return stores


# --- replay vs state, per handoff × emit -------------------------------------------------------------


async def replay_and_state(
    ds: Dataset, handoff: str, emit: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 300)  # the pass merges many chunks of partials
    label = f"handoff={handoff} emit={emit}"
    replay = build(ds, handoff, emit, root / "replay")
    replay_s = await run_job(replay, "replay")
    assert replay.pipeline.metrics()["bootstrap"]["mode"] == "replay"
    replayed = check_job(replay, ds, emit, f"{label} replay")

    state = build(ds, handoff, emit, root / "state")
    state_s = await run_job(state, "state")
    report = state.pipeline.metrics()["bootstrap"]
    assert report["mode"] == "state" and report["reason"] is None, report
    assert report["checkpoint_id"] is None  # no checkpoint store: kept in memory
    lake_rows = expected_lake_rows(ds, handoff)
    for window in WINDOWS:
        # the pass aggregated exactly the lake's records that pass the filter
        assert report["windows"][window]["rows"] == lake_rows, (window, report)
        assert report["windows"][window]["slices"] > 0
    built = check_job(state, ds, emit, f"{label} state")
    for window in WINDOWS:
        assert not diff_rows(built[window], replayed[window]), window
    print(
        f"FIGURES {label}: "
        + json.dumps(
            {
                "replay_run_s": round(replay_s, 3),
                "state_run_s": round(state_s, 3),
                "pass_s": round(report["seconds"], 3),
                "lake_rows": lake_rows,
            }
        )
    )


def lake_part(ds: Dataset, handoff: str) -> pa.Table:
    """The lake part's events after the filter and map (offsets: the archived prefix of every
    partition; timestamp: the events before the lake's high-water mark)."""
    times = pc.cast(ds.good.column(TIME), pa.int64()).to_numpy()
    assert np.count_nonzero(times < ds.cutoff) == ds.lake_good
    return transformed(ds.good.filter(pa.array(times < ds.lake_cutoff(handoff))))


def expected_lake_rows(ds: Dataset, handoff: str) -> int:
    return lake_part(ds, handoff).num_rows


@pytest.mark.parametrize(
    ("handoff", "emit"), DEFAULT_GRID, ids=[f"{h}-{e}" for h, e in DEFAULT_GRID]
)
async def test_state_bootstrap_equals_replay(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handoff: str, emit: str
) -> None:
    await replay_and_state(dataset, handoff, emit, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize(("handoff", "emit"), SLOW_GRID, ids=[f"{h}-{e}" for h, e in SLOW_GRID])
async def test_state_bootstrap_equals_replay_grid(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handoff: str, emit: str
) -> None:
    await replay_and_state(dataset, handoff, emit, tmp_path, monkeypatch)


# --- the first checkpoint, a cancel in the stream phase, a restart ------------------------------


async def test_pass_writes_the_first_checkpoint(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``Checkpoints``: the pass writes checkpoint 1 (``metrics()["bootstrap"]
    ["checkpoint_id"]``); ``lambdasource inspect --checkpoint … --checkpoint-id 1`` shows it and
    exports each window's slices, which hold exactly the filtered lake records per (user, slice)
    — every slice a window after the cutoff needs, none the pass could drop; the store is exact."""
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 300)
    url = (tmp_path / "ckpt").as_uri()
    job = build(dataset, "timestamp", "every", tmp_path, checkpoints=url)
    await run_job(job, "state")
    report = job.pipeline.metrics()["bootstrap"]
    assert report["mode"] == "state" and report["checkpoint_id"] == 1, report
    check_job(job, dataset, "every", "with checkpoints")

    shown = cli("inspect", "--checkpoint", url, "--checkpoint-id", "1")
    assert "checkpoint 1 of pipeline 'state-bootstrap'" in shown, shown
    assert all(window in shown for window in WINDOWS), shown
    for window in WINDOWS:
        out = tmp_path / f"export-{window}"
        cli(
            "inspect",
            "--checkpoint",
            url,
            "--checkpoint-id",
            "1",
            "--export",
            window,
            "--to",
            str(out),
        )
        slices = pq.read_table(out / "operator.engine.slices.parquet")
        held = {
            (user, to_micros(start)): count
            for user, start, count in zip(
                slices.column(KEY).to_pylist(),
                slices.column("slice_start").to_pylist(),
                slices.column("n.count").to_pylist(),
                strict=True,
            )
        }
        expected = lake_slice_counts(dataset, "timestamp", WINDOWS[window])
        assert held.items() <= expected.items(), (window, sorted(held.items() - expected.items()))
        since = dataset.lake_cutoff("timestamp") - WINDOWS[window].size
        needed = {k for k in expected if k[1] >= since}
        assert needed <= held.keys(), (window, sorted(needed - held.keys())[:5])


async def test_restart_after_a_cancel_in_the_stream_phase_resumes_exactly(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unbounded run (``stop_at=None``) cancelled early in its stream phase, restarted with
    ``bootstrap="state"``: it resumes from the newest checkpoint (the reason names it), runs no
    second pass, reads no lake record again, and the store is exact. (Failed before 476a378:
    the restart re-read the whole lake and doubled lake records in windows still open.)"""
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 300)
    url = (tmp_path / "ckpt").as_uri()
    first = build(
        dataset,
        "offsets",
        "changes",
        tmp_path,
        checkpoints=url,
        stop_at=None,
        slow_stream_s=0.05,
        stream_batch=10,
    )
    task = asyncio.create_task(first.pipeline.run(bootstrap="state"))
    try:
        for _ in range(3000):  # until two periodic checkpoints of the stream phase completed
            await asyncio.sleep(0.01)
            assert not task.done(), "the unbounded run ended"
            if (first.pipeline.metrics().get("checkpoints", {}).get("last_id") or 0) >= 3:
                break
        report = first.pipeline.metrics()["bootstrap"]
        assert report["mode"] == "state" and report["checkpoint_id"] == 1, report
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    second = build(dataset, "offsets", "changes", tmp_path, checkpoints=url)
    await run_job(second, "state")
    metrics = second.pipeline.metrics()
    report, restored = metrics["bootstrap"], metrics["checkpoints"]["restored_from"]
    assert restored is not None and restored >= 2, restored  # a stream-phase checkpoint
    assert report["reason"] == f"resumed from checkpoint {restored}", report
    assert report["seconds"] is None and not report["windows"], report  # no second pass
    diffs = {
        window: diff_rows(
            keyed_rows(read_store(path, window), "changes"),
            reference_rows(dataset, window, "changes"),
        )
        for window, path in second.stores.items()
    }
    lake_again = metrics["sources"]["lambda"]["rows"]["lake"]
    assert lake_again == 0 and metrics["late"] == 0 and not any(diffs.values()), (
        f"restart from checkpoint {restored}: read {lake_again} lake rows again, "
        f"{metrics['late']} late; store differences: {diffs}"
    )


def lake_slice_counts(ds: Dataset, handoff: str, window: ls.Sliding) -> dict[tuple[int, int], int]:
    """The lake part's records per (user, slice start), slices ``gcd(size, slide)`` wide."""
    lake = lake_part(ds, handoff)
    width = math.gcd(window.size, window.slide)
    starts = pc.cast(lake.column(TIME), pa.int64()).to_numpy() // width * width
    return dict(Counter(zip(lake.column(KEY).to_pylist(), starts.tolist(), strict=True)))


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lambdasource", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# --- graphs the pass cannot take: a replay, with the reason ------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("count_distinct", "aggregate 'ids' is count_distinct, which is replayed"),
        ("session", "SessionEngine windows (sessions) are replayed"),
    ],
)
async def test_declined_windows_replay_with_the_reason(
    dataset: Dataset, tmp_path: Path, kind: str, reason: str
) -> None:
    """A count_distinct aggregate or a session window: ``bootstrap="state"`` replays, says why
    in ``metrics()["bootstrap"]``, and the store equals the SQL reference."""
    window: Any = ls.Session("20m") if kind == "session" else WINDOWS["sliding"]
    aggregates: dict[str, tuple[str, str | None]] = {"n": ("count", None), "s": ("sum", "cents")}
    if kind == "count_distinct":
        aggregates["ids"] = ("count_distinct", "event_id")
    stream = KafkaStream(
        dataset.topic, dataset.broker.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"
    )
    source = LambdaSource(
        ParquetLake(dataset.lake, TIME, schema=SCHEMA, batch_size=128),
        stream,
        handoff="offsets",
        out_of_orderness="10m",
        idle_timeout="300ms",
    )
    p = ls.Pipeline(flush="all")
    path = tmp_path / "store.duckdb"
    (
        p.source(source)
        .filter(pc.field("kind") != "add_to_cart")
        .map(add_cents, schema=MAPPED)
        .key_by(KEY)
        .window(window, emit="every")
        .aggregate(**kernels(aggregates))
        .sink(DuckDBUpsert(path, table="store", key=[KEY, "window_end"], flush_interval="100ms"))
    )
    await asyncio.wait_for(p.run(bootstrap="state"), 90)
    report = p.metrics()["bootstrap"]
    assert report["mode"] == "replay" and report["requested"] == "state", report
    assert report["reason"] == f"window 'window': {reason}", report
    assert report["seconds"] is None and report["checkpoint_id"] is None, report
    expected = expected_windows(
        transformed(dataset.good),
        time_column=TIME,
        keys=KEY,
        window=window,
        aggregates=aggregates,
        emit="every",
        flush_all=True,
    )
    columns = [KEY, "window_start", "window_end", *aggregates]
    got = {
        (r[KEY], r["window_end"]): r for r in read_store(path, "store").select(columns).to_pylist()
    }
    want = {(r[KEY], r["window_end"]): r for r in expected.select(columns).to_pylist()}
    assert got.keys() == want.keys() and got == want, diff_rows(got, want)


class Spread(ls.Aggregate):
    """A user aggregate (max − min of a column): no vectorised form, so it replays."""

    output_type = pa.float64()

    def init(self) -> tuple[float, float]:
        return (math.inf, -math.inf)

    def update(self, state: tuple[float, float], values: pa.Array) -> tuple[float, float]:
        low_high = pc.min_max(values)
        return (min(state[0], low_high["min"].as_py()), max(state[1], low_high["max"].as_py()))

    def merge(self, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        return (min(a[0], b[0]), max(a[1], b[1]))

    def result(self, state: tuple[float, float]) -> float | None:
        return None if state[0] == math.inf else state[1] - state[0]


class PassThrough(ls.Operator):
    """A ``process()`` operator (it could keep state: the pass cannot build it)."""


def declined_graph(ds: Dataset, case: str) -> tuple[ls.Pipeline, ls.CollectSink]:
    """A lake-only job (cheap: no broker) shaped as ``case``."""
    p = ls.Pipeline(flush="all")
    src = p.source(ParquetLake(ds.lake, TIME, schema=SCHEMA, batch_size=256), name="lake")
    if case == "two-sources":
        other = p.source(ParquetLake(ds.lake, TIME, schema=SCHEMA, batch_size=256), name="again")
        src = src.union(other)
    if case == "process":
        src = src.process(PassThrough(), name="passthrough")
    aggregate: Any = Spread("amount") if case == "user-aggregate" else ls.sum("amount")
    sink = ls.CollectSink()
    src.key_by(KEY).window(WINDOWS["tumbling"], emit="every").aggregate(
        n=ls.count(), a=aggregate
    ).sink(sink)
    return p, sink


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (
            "user-aggregate",
            "window 'window': aggregate 'a' is a user Aggregate without a vectorised form",
        ),
        (
            "process",
            "operator 'passthrough' (PassThrough) keeps state, which only a replay can build",
        ),
        ("two-sources", "the graph has 2 sources; the pass reads one lake"),
    ],
)
async def test_declined_graphs_replay_with_the_reason(
    dataset: Dataset, case: str, reason: str
) -> None:
    """A user Aggregate, a ``process()`` operator, two sources: ``bootstrap="state"`` replays
    with the reason, and outputs exactly what ``bootstrap="replay"`` does."""
    outputs = []
    for bootstrap in ("state", "replay"):
        p, sink = declined_graph(dataset, case)
        await asyncio.wait_for(p.run(bootstrap=bootstrap), 60)
        report = p.metrics()["bootstrap"]
        assert report["mode"] == "replay" and report["seconds"] is None, report
        if bootstrap == "state":
            assert report["reason"] is not None and report["reason"].startswith(reason), report
        outputs.append(sink.table().sort_by([(KEY, "ascending"), ("window_end", "ascending")]))
    assert outputs[0].num_rows > 0 and outputs[0].equals(outputs[1])


def test_exactly_once_kafka_sink_declines(dataset: Dataset) -> None:
    """A sink that commits with checkpoints (exactly_once Kafka) cannot take the pass's writes."""
    p = ls.Pipeline()
    (
        p.source(ParquetLake(dataset.lake, TIME, schema=SCHEMA))
        .key_by(KEY)
        .window(WINDOWS["tumbling"], emit="changes")
        .aggregate(n=ls.count())
        .sink(
            KafkaUpsert(
                "out", key=[KEY], bootstrap_servers=dataset.broker.bootstrap, exactly_once=True
            ),
            name="kafka",
        )
    )
    reason = state_bootstrap.blocker(p._build("watermark"))
    assert reason == (
        "sink 'kafka' commits its writes with checkpoints (exactly_once); the pass writes "
        "outside one"
    )


# --- alignment's bound in the pass ----------------------------------------------------------------


async def test_pass_keeps_alignment_bound_at_the_window_input(dataset: Dataset) -> None:
    """DESIGN §3: no record leaves the lambda source more than max_drift + out_of_orderness
    ahead of the watermark — in the state bootstrap's pass too, where the lake is read alone
    (its batches must still be cut to that span, each followed by its watermark). Measured by a
    LeadMeter right after the source, over the pass and the stream phase."""
    drift, lateness = 5 * 60 * 10**6, 60 * 10**6
    source = LambdaSource(
        ParquetLake(dataset.lake, TIME, schema=SCHEMA),  # default (large) batches
        KafkaStream(
            dataset.topic,
            dataset.broker.bootstrap,
            time_column=TIME,
            schema=SCHEMA,
            stop_at="latest",
        ),
        handoff="offsets",
        out_of_orderness="1m",
        idle_timeout="300ms",
        alignment=ls.Alignment(max_drift="5m"),
    )
    meter = ls.LeadMeter(TIME, bound_us=drift + lateness)
    pipeline = ls.Pipeline(name="lead-in-pass")
    (
        pipeline.source(source)
        .process(meter, name="lead")
        .key_by(KEY)
        .window(ls.Sliding("2h", "10m"), emit="latest")
        .aggregate(clicks=ls.count())
        .sink(ls.CollectSink(), name="out")
    )
    await asyncio.wait_for(pipeline.run(bootstrap="state"), 90)
    assert pipeline.metrics()["bootstrap"]["mode"] == "state"
    assert meter.batches > LAKE_HOURS
    assert meter.max_lead_us is not None and meter.max_lead_us <= drift + lateness, (
        f"lead {meter.max_lead_us / 6e7:.1f} min > bound {(drift + lateness) / 6e7:.1f} min "
        f"({meter.batches_beyond} batch(es) beyond)"
    )
