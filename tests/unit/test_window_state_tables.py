"""Window checkpoint state is the documented tables, and they hold exactly the input's aggregates.

The oracle: a windowed pipeline checkpoints after some batches; ``lambdasource inspect
--checkpoint URL --export window --to DIR`` writes the window's state as Parquet; DuckDB over the
input rows the window had received by then (every record) must give the same per (key, slice)
partials as the exported ``slices`` table, the same per-key window values as ``emitted``, and the
same (key, slice, value) rows and carried pairs as the count_distinct tables. The input is in
time order with distinct timestamps (no late records, no ties), amounts are multiples of 0.25
(float sums exact in any order).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lambdasource import cli
from lambdasource.checkpoints.format import decode, encode, thaw
from lambdasource.checkpoints.inspect import read_checkpoint
from lambdasource.errors import IncompatibleStateError
from lambdasource.timeutil import parse_duration
from lambdasource.windows.aggregates import Rows
from lambdasource.windows.operator import WindowOperator
from lambdasource.windows.sliding import SlidingEngine
from tests.unit.test_checkpoints_restore import CrashingSource, _Ctx, make_data

TS = pa.timestamp("us", tz="UTC")
MINUTE = 60_000_000
BATCH = 100
WINDOWS: dict[str, tuple[Callable[[], Any], int, int]] = {  # name: (spec, size, slide)
    "sliding": (lambda: ls.Sliding("2h", "10m"), 120 * MINUTE, 10 * MINUTE),
    "sliding_uneven": (lambda: ls.Sliding("25m", "10m"), 25 * MINUTE, 10 * MINUTE),
    "tumbling": (lambda: ls.Tumbling("30m"), 30 * MINUTE, 30 * MINUTE),
}
PARTIALS = {
    "n.count",
    "total.sum",
    "total.nonnull",
    "avg.sum",
    "avg.nonnull",
    "lo.value",
    "lo.has",
    "hi.value",
    "hi.has",
    "f.time",
    "f.seq",
    "f.value",
    "f.has",
    "f.valid",
    "d.count",
}


def make_input(rows: int = 3_000, seed: int = 3, disorder: int = 0) -> pa.Table:
    """Distinct timestamps over 2 days, in order up to ``disorder`` µs."""
    rng = np.random.default_rng(seed)
    micros = np.sort(rng.choice(np.arange(48 * 60 * 60) * 1_000_000, rows, replace=False))
    micros = micros[np.argsort(micros + rng.integers(0, disorder + 1, rows), kind="stable")]
    start = 1_700_000_000_000_000 // MINUTE * MINUTE
    return pa.table(
        {
            "ts": pa.array(micros + start, pa.int64()).cast(TS),
            "k": pa.array([f"user{v}" for v in rng.integers(0, 9, rows)]),
            "x": pa.array(rng.integers(-40, 40, rows) * 0.25, pa.float64()),
            "y": pa.array(rng.integers(0, 1000, rows), pa.int64()),
            "z": pa.array([f"v{v}" for v in rng.integers(0, 6, rows)]),
        }
    )


def checkpointed_state(
    tmp_path: Path, spec: Any, lateness: str, at_batch: int, seed: int = 3, disorder: int = 0
) -> tuple[pa.Table, dict[str, Any], dict[str, pa.Table]]:
    """(input the window had received, with ``arrival_wm``: the window's input watermark when
    its batch arrived; the engine's decoded state; the exported tables by name)."""
    data = make_input(seed=seed, disorder=disorder)
    url = (tmp_path / "ckpt").as_uri()
    p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="1h"))
    source = CrashingSource(
        data, checkpoint_at=(at_batch,), batch_size=BATCH, out_of_orderness="1m"
    )
    source.pipeline = p
    (
        p.source(source)
        .key_by("k")
        .window(spec, emit="changes", allowed_lateness=lateness)
        .aggregate(
            n=ls.count(),
            total=ls.sum("x"),
            avg=ls.mean("x"),
            lo=ls.min("x"),
            hi=ls.max("x"),
            f=ls.first("y"),
            d=ls.count_distinct("z"),
        )
        .sink(ls.CollectSink(), name="store")
    )
    p.run_sync(restore=None)
    assert p.metrics()["checkpoints"]["count"] == 1
    out = tmp_path / "export"
    assert cli.main(["inspect", "--checkpoint", url, "--export", "window", "--to", str(out)]) == 0
    tables = {
        f.name.removeprefix("operator.").removesuffix(".parquet"): pq.read_table(f)
        for f in out.glob("*.parquet")
    }
    _, _, payload = asyncio.run(read_checkpoint(url, state=True))
    assert payload is not None
    engine = thaw(payload["nodes"]["window"])["operator"]["engine"]
    seen = data.slice(0, at_batch * BATCH)
    times = seen.column("ts").cast(pa.int64()).to_numpy()
    tops = np.maximum.accumulate(times)[BATCH - 1 :: BATCH] - MINUTE  # after each batch
    arrival = np.repeat(np.concatenate([[-(2**62)], tops[:-1]]), BATCH)[: len(times)]
    return seen.append_column("arrival_wm", pa.array(arrival)), engine, tables


def rows(con: duckdb.DuckDBPyConnection, query: str) -> set[tuple[Any, ...]]:
    return {
        tuple(tuple(v) if isinstance(v, list) else v for v in row)
        for row in con.execute(query).fetchall()
    }


@pytest.mark.parametrize("lateness", ["0s", "20m"])
@pytest.mark.parametrize("window", list(WINDOWS))
def test_exported_state_is_the_documented_tables_and_equals_sql(
    tmp_path: Path, window: str, lateness: str
) -> None:
    check_sliding_state(tmp_path, window, lateness, at_batch=17, seed=3, disorder=0)


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(
    window=st.sampled_from(list(WINDOWS)),
    lateness=st.sampled_from(["0s", "10m"]),
    at_batch=st.integers(4, 29),
    seed=st.integers(0, 1_000),
    disorder=st.sampled_from([30 * MINUTE, 90 * MINUTE]),
)
def test_state_of_out_of_order_input_equals_sql(
    tmp_path_factory: pytest.TempPathFactory, **kw: Any
) -> None:
    """With late records (dropped) and partly late ones (``first_end``, corrections)."""
    check_sliding_state(tmp_path_factory.mktemp("state"), note=event, **kw)


def check_sliding_state(
    tmp_path: Path,
    window: str,
    lateness: str,
    at_batch: int,
    seed: int,
    disorder: int,
    note: Callable[[str], None] = lambda _: None,
) -> None:
    _, size, slide = WINDOWS[window]
    seen, engine, tables = checkpointed_state(
        tmp_path, WINDOWS[window][0](), lateness, at_batch, seed, disorder
    )
    g = math.gcd(size, slide)
    lateness_us = parse_duration(lateness)
    # a record is late (not aggregated) when the last window of its slice no longer accepts
    times = seen.column("ts").cast(pa.int64()).to_numpy()
    a_min = -(-(seen.column("arrival_wm").to_numpy() + 2 - lateness_us) // slide) * slide
    accepted = (times // g * g + size) // slide * slide >= a_min
    seen = seen.filter(pa.array(accepted))
    note(f"late records: {not accepted.all()}")
    watermark, end = engine["watermark"], engine["completed_end"]
    assert end is not None and end == (watermark + 1) // slide * slide
    a_min = -(-(watermark + 2 - lateness_us) // slide) * slide
    horizon = a_min - slide - size  # slices below it are dropped: no window needs them

    slices = tables["engine.slices"]
    assert {"key_id", "slice_start", "first_end", "k"} | PARTIALS == set(slices.column_names)
    assert slices.schema.field("slice_start").type == TS
    partly_late = slices.column("first_end").null_count < slices.num_rows
    note(f"rows with first_end: {partly_late}")
    assert disorder or not partly_late
    emitted = tables["engine.emitted"]
    assert {"key_id", "window_end", "k"} | PARTIALS == set(emitted.column_names)
    assert {"key_id", "k"} | PARTIALS == set(tables["engine.prefix"].column_names)
    assert {"key_id", "window_end", "k"} == set(tables["engine.repeats"].column_names)
    keys = tables["keys"]
    assert set(keys.column_names) == {"k", "key_id"}
    assert keys.column("key_id").to_pylist() == list(range(keys.num_rows))

    con = duckdb.connect()
    con.register("seen", seen)
    con.register("slices", slices)
    con.register("emitted", emitted)
    con.execute(
        f"CREATE VIEW inp AS SELECT *, epoch_us(ts) AS t, epoch_us(ts) // {g} * {g} AS s, "
        "row_number() OVER (ORDER BY ts) AS seq FROM seen"
    )
    # every (key, slice) still held: the partials equal the SQL aggregates of its records
    got = rows(  # rows of one slice differ in first_end (partly late records): merged
        con,
        'SELECT k, epoch_us(slice_start), sum("n.count"), sum("total.sum"), '
        'sum("total.nonnull"), sum("avg.sum"), min("lo.value"), max("hi.value"), '
        'bool_and("lo.has"), arg_min("f.value", "f.time"), min("f.time"), sum("d.count") '
        "FROM slices GROUP BY ALL",
    )
    want = rows(
        con,
        "SELECT k, s, count(*), sum(x), count(x), sum(x), min(x), max(x), true, arg_min(y, t), "
        f"min(t), 0 FROM inp WHERE s >= {horizon} GROUP BY k, s",
    )
    assert got == want
    # the value of each key's window ending at the completed end, count_distinct included
    got = rows(
        con,
        'SELECT k, epoch_us(window_end), "n.count", "total.sum", "lo.value", "hi.value", '
        '"f.value", "d.count" FROM emitted',
    )
    want = rows(
        con,
        f"SELECT k, {end}, count(*), sum(x), min(x), max(x), arg_min(y, t), count(DISTINCT z) "
        f"FROM inp WHERE t >= {end - size} AND t < {end} GROUP BY k",
    )
    assert got == want
    # count_distinct: (key, slice, value) rows held, and per pair the last end it reaches
    distinct_rows = tables["engine.distinct.d.rows"]
    assert {"key_id", "value_code", "slice_start", "first_end", "k", "value"} == set(
        distinct_rows.column_names
    )
    con.register("distinct_rows", distinct_rows)
    bound = end if lateness_us == 0 else horizon  # entered rows are kept only for corrections
    assert rows(con, "SELECT k, epoch_us(slice_start), value FROM distinct_rows") == rows(
        con, f"SELECT DISTINCT k, s, z FROM inp WHERE s >= {bound}"
    )
    con.register("carried", tables["engine.distinct.d.carried"])
    assert rows(con, "SELECT k, value, epoch_us(last_end) FROM carried") == rows(
        con,
        f"SELECT k, z, max((s + {size}) // {slide} * {slide}) AS b FROM inp WHERE s < {end} "
        f"GROUP BY k, z HAVING b >= {end + slide}",
    )


# ------------------------------------------------------------------------ restore paths ---


def _engine() -> SlidingEngine:
    kernels = [ls.count(), ls.sum("x"), ls.min("x")]
    for kernel in kernels:  # as the window operator does (from the input schema)
        kernel.bind(pa.schema([("x", pa.float64())]), "test")
    return SlidingEngine(
        kernels,
        "changes",
        5,
        size=40,
        slide=10,
        names=["n", "total", "lo"],
    )


def _batches(seed: int, exact: bool = True) -> list[tuple[np.ndarray, Rows, int]]:
    """Batches of 30 steps; amounts multiples of 0.25 (``exact``), else any floats."""
    rng = np.random.default_rng(seed)
    out = []
    seq = 0
    for step in range(30):
        n = int(rng.integers(1, 20))
        times = rng.integers(step * 10 - 8, step * 10 + 10, n).clip(0)
        rows = Rows(
            {"x": pa.array(rng.integers(-8, 8, n) * 0.25 if exact else rng.normal(0, 1e3, n))},
            times.astype(np.int64),
            np.arange(seq, seq + n, dtype=np.int64),
        )
        seq += n
        out.append((rng.integers(0, 5, n).astype(np.int64), rows, step * 10 - 3))
    return out


def _replay(
    engine: SlidingEngine, batches: list[tuple[np.ndarray, Rows, int]], *, flush: bool = True
) -> list[Any]:
    out: list[Any] = []
    for keys, rows, watermark in batches:
        result = engine.add(keys, rows, watermark)
        out.append((result.late.tolist(), _rows(result.emission)))
        out.append(_rows(engine.advance(watermark + 1)))
    if flush:
        out.append(_rows(engine.flush_all()))
    return out


def _rows(emission: Any) -> list[tuple[Any, ...]]:
    if emission is None:
        return []
    results = [r.to_pylist() for r in emission.results]
    return [
        (int(k), int(e), bool(d), *(r[i] for r in results))
        for i, (k, e, d) in enumerate(
            zip(emission.key_ids, emission.ends, emission.deleted, strict=True)
        )
    ]


@pytest.mark.parametrize("seed", range(6))
def test_restore_rebuilds_the_carried_prefix_when_a_producer_leaves_it_out(seed: int) -> None:
    """A state without ``prefix`` (as a bootstrap may write it) resumes like the full one."""
    batches = _batches(seed)
    engine = _engine()
    _replay(engine, batches[:12], flush=False)
    state = engine.snapshot()
    assert state["prefix"].num_rows > 0
    full, derived = _engine(), _engine()
    full.restore(state)
    derived.restore({**state, "prefix": None})
    assert (
        _replay(derived, batches[12:])
        == _replay(full, batches[12:])
        == _replay(engine, batches[12:])
    )


@pytest.mark.parametrize("cut", [13, 17])  # the completed end 3 slices into a size block
@pytest.mark.parametrize("seed", range(4))
def test_float_sums_resume_bit_for_bit(seed: int, cut: int) -> None:
    """Arbitrary floats: a restored engine sums in the uninterrupted one's order (the stored
    prefix and the runs of the slices table), so every emitted value is the same double. (A
    prefix rebuilt from the slices differs in the last bits for about half of these seeds.)"""
    batches = _batches(seed, exact=False)
    engine = _engine()
    _replay(engine, batches[:cut], flush=False)
    fresh = _engine()
    fresh.restore(engine.snapshot())
    assert _replay(fresh, batches[cut:]) == _replay(engine, batches[cut:])


def test_a_state_of_another_layout_is_refused_saying_what_to_do() -> None:
    engine = _engine()
    state = engine.snapshot()
    with pytest.raises(IncompatibleStateError, match=r"version 3.*restore=None"):
        _engine().restore({**state, "version": 3})
    with pytest.raises(IncompatibleStateError, match="aggregates"):
        SlidingEngine([ls.count()], "changes", 5, size=40, slide=10, names=["m"]).restore(state)


@pytest.mark.parametrize("lateness", ["0s", "20m"])
def test_exported_sessions_equal_sql(tmp_path: Path, lateness: str) -> None:
    """Every held session (open, or completed within allowed lateness) with its partials."""
    gap = 7 * MINUTE
    seen, engine, tables = checkpointed_state(tmp_path, ls.Session("7m"), lateness, 17)
    lateness_us = 0 if lateness == "0s" else 20 * MINUTE
    sessions = tables["engine.sessions"]
    assert {"key_id", "start", "end", "count", "k"} | PARTIALS - {"d.count"} | {"d.values"} == set(
        sessions.column_names
    )
    con = duckdb.connect()
    con.register("seen", seen)
    con.register("sessions", sessions)
    got = rows(
        con,
        'SELECT k, epoch_us(start), epoch_us("end"), count, "n.count", "total.sum", '
        '"lo.value", "f.value", list_sort("d.values") FROM sessions',
    )
    want = rows(
        con,
        f"""
        WITH records AS (SELECT k, epoch_us(ts) AS t, x, y, z FROM seen),
        opened AS (
            SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY k ORDER BY t) < {gap}
                      THEN 0 ELSE 1 END AS opens FROM records),
        numbered AS (
            SELECT *, sum(opens) OVER (PARTITION BY k ORDER BY t) AS session FROM opened)
        SELECT k, min(t), max(t) + {gap} AS e, count(*), count(*), sum(x), min(x),
               arg_min(y, t), list_sort(list(DISTINCT z))
        FROM numbered GROUP BY k, session
        HAVING e - 1 + {lateness_us} > {engine["watermark"]}
        """,
    )
    assert got == want and got


class Spread(ls.Aggregate):
    """A user aggregate whose states (tuples) Arrow does not hold as they are."""

    output_type = pa.float64()

    def init(self) -> tuple[float, float]:
        return (math.inf, -math.inf)

    def update(self, state: tuple[float, float], values: pa.Array) -> tuple[float, float]:
        present = [v for v in values.to_pylist() if v is not None]
        return (min([state[0], *present]), max([state[1], *present])) if present else state

    def merge(self, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        return (min(a[0], b[0]), max(a[1], b[1]))

    def result(self, state: tuple[float, float]) -> float | None:
        return None if state[0] == math.inf else state[1] - state[0]


@pytest.mark.parametrize("spec", [ls.Sliding("30m", "10m"), ls.Session("7m")], ids=str)
def test_user_states_and_strings_resume_through_the_codec(spec: Any) -> None:
    """User aggregate states go beside the table (``opaque``), string minima and lasts and
    session value sets into it; a restore from the decoded checkpoint continues exactly."""

    def operator() -> WindowOperator:
        return WindowOperator(
            spec,
            {
                "sp": Spread("x").kernel(),
                "lo": ls.min("z"),
                "l": ls.last("z"),
                "d": ls.count_distinct("z"),
            },
            emit="changes",
            allowed_lateness=0,
            keys=("k",),
            time_column="ts",
            flush=None,
            schema=None,
        )

    def feed(op: WindowOperator, batches: list[pa.RecordBatch], ctx: _Ctx) -> pa.Table:
        for batch in batches:
            op.on_batch(batch, ctx)  # type: ignore[arg-type]
            top = int(batch.column("ts").cast(pa.int64()).to_numpy().max()) - 3 * MINUTE
            if ctx.watermark is None or top > ctx.watermark:
                ctx.watermark = top
                op.on_watermark(top, ctx)  # type: ignore[arg-type]
        return pa.Table.from_batches(ctx.out)

    batches = make_data(seed=5, rows=400).to_batches(max_chunksize=40)
    first, ctx = operator(), _Ctx()
    feed(first, batches[:5], ctx)
    state = first.snapshot()
    engine = state["engine"]
    table = engine["slices"] if "slices" in engine else engine["sessions"]
    assert table.schema.field("lo.value").type == pa.string()
    assert "sp.state" in str(engine["opaque"]) and "sp.state" not in table.column_names
    decoded = thaw(decode(bytearray(encode({"window": state}).join()), where="test")["window"])
    resumed = operator()
    resumed.restore(decoded)
    ctx_a, ctx_b = _Ctx(), _Ctx()
    ctx_a.watermark = ctx_b.watermark = ctx.watermark
    want = feed(first, batches[5:], ctx_a)
    assert want.num_rows > 0
    assert feed(resumed, batches[5:], ctx_b).equals(want)
