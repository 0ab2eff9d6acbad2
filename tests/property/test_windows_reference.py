"""Property tests: the window operator against the DuckDB reference (``lambdasource.reference``).

Hypothesis generates small scenarios — out-of-order times with duplicates, late records, empty
batches, one or many keys (int, string, two-column, null), batch sizes from 1, out_of_orderness
None/0/positive, ``until`` or not, allowed lateness 0 or positive, every time type — and runs them
through ``ls.MemorySource → key_by → window → aggregate`` for every window kind × emission mode.
A tagging operator after the window records the watermark step each output row arrived in (rows
of an advance arrive before that watermark is forwarded), so outputs are compared step by step:

* ``allowed_lateness == 0``: the rows themselves (multisets; per key in window-end order);
* ``allowed_lateness > 0`` (corrections): the contents of the upsert store the rows build —
  keyed by (key, window_end) for ``every``/``changes``, by key for ``latest``;
* the late side output equals the reference's late records, in arrival order;
* ``flush="all"`` against the reference's flush-all view.

The default run keeps examples modest (well under two minutes); ``-m slow`` runs many more.
The first tests pin the reference itself on hand-computed examples.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lambdasource.reference import (
    WindowReference,
    expected_windows,
    late_records,
    session_windows,
    sliding_changelog,
    times_us,
    watermark_steps,
)

FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=1000)

KINDS = ("tumbling", "sliding_divides", "sliding_uneven", "session")
MODES = ("every", "changes", "latest")

# ----------------------------------------------------------------------------- scenarios ---

# time representations: (arrow type, µs per tick); times are generated in ticks
TIME_TYPES: list[tuple[pa.DataType, int]] = [
    (pa.timestamp("us"), 1),
    (pa.timestamp("us", tz="UTC"), 1),
    (pa.timestamp("ns", tz="Europe/Paris"), 1),
    (pa.timestamp("ms"), 1_000),
    (pa.int64(), 1_000),  # epoch milliseconds
    (pa.timestamp("s", tz="UTC"), 1_000_000),
    (pa.timestamp("us", tz="UTC"), 60_000_000),  # minutes: windows like Sliding("1h", "10m")
]

AGGREGATES: dict[str, tuple[str, str | None]] = {
    "n": ("count", None),
    "total": ("sum", "x"),
    "avg": ("mean", "x"),
    "lo": ("min", "x"),
    "hi": ("max", "x"),
    "f": ("first", "y"),
    "l": ("last", "y"),
    "d": ("count_distinct", "z"),
    "ny": ("count", "y"),
    "zmax": ("max", "z"),
    "ysum": ("sum", "y"),
}


def kernel(function: str, column: str | None) -> Any:
    if function == "count":
        return ls.count(column) if column else ls.count()
    assert column is not None
    return {
        "sum": ls.sum,
        "mean": ls.mean,
        "min": ls.min,
        "max": ls.max,
        "first": ls.first,
        "last": ls.last,
        "count_distinct": ls.count_distinct,
    }[function](column)


@dataclass
class Scenario:
    """Everything one run depends on (its repr is what hypothesis prints when minimising)."""

    kind: str
    window: Any
    keys: list[str]
    rows: list[tuple[Any, ...]]  # (k…, t_ticks, x, y, z)
    time_type: pa.DataType
    tick: int
    batching: int | list[int] | None  # batch_size, or cut points of explicit batches
    out_of_orderness: Any
    until: Any
    allowed_lateness: Any
    aggregates: dict[str, tuple[str, str | None]]
    emit: str = "every"
    flush_all: bool = False
    data: Any = field(default=None, repr=False)

    def table(self) -> pa.Table:
        cols: dict[str, Any] = {}
        for i, k in enumerate(self.keys):
            values = [r[i] for r in self.rows]
            cols[k] = pa.array(values, pa.string() if k == "ks" else pa.int64())
        nk = len(self.keys)
        ticks = [r[nk] for r in self.rows]
        if pa.types.is_int64(self.time_type):
            ts = pa.array([t * self.tick // 1000 for t in ticks], pa.int64())
        else:
            unit_us = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}[self.time_type.unit]
            scale = 1_000 if self.time_type.unit == "ns" else 1
            ts = pa.array([t * self.tick // unit_us * scale for t in ticks], pa.int64()).cast(
                self.time_type
            )
        cols["ts"] = ts
        cols["x"] = pa.array([r[nk + 1] for r in self.rows], pa.float64())
        cols["y"] = pa.array([r[nk + 2] for r in self.rows], pa.int64())
        cols["z"] = pa.array([r[nk + 3] for r in self.rows], pa.string())
        return pa.table(cols)

    def source_data(self) -> tuple[Any, int | None]:
        """(data, batch_size) for ``ls.MemorySource`` and the reference."""
        table = self.table()
        if isinstance(self.batching, list):  # explicit batches, possibly empty ones
            cuts = [0, *sorted(min(c, table.num_rows) for c in self.batching), table.num_rows]
            batches = [
                pa.RecordBatch.from_pylist(table.slice(a, b - a).to_pylist(), schema=table.schema)
                for a, b in itertools.pairwise(cuts)
            ]
            return batches, None
        return table, self.batching

    def reference(self) -> WindowReference:
        data, batch_size = self.source_data()
        return WindowReference(
            data,
            time_column="ts",
            keys=self.keys,
            window=self.window,
            aggregates=self.aggregates,
            allowed_lateness=self.allowed_lateness,
            batch_size=batch_size,
            out_of_orderness=self.out_of_orderness,
            until=self.until,
        )


def as_duration(ticks: int, tick: int, style: int) -> Any:
    """The same duration as int µs, a timedelta or a string."""
    us = ticks * tick
    if style == 0:
        return us
    if style == 1:
        return timedelta(microseconds=us)
    if tick == 60_000_000:
        return f"{ticks}m"
    if tick == 1_000_000:
        return f"{ticks}s"
    if tick == 1_000:
        return f"{ticks}ms"
    return us


@st.composite
def scenarios(
    draw: st.DrawFn, kind: str, emit: str, lateness: bool | None = None, max_rows: int = 30
) -> Scenario:
    time_type, tick = draw(st.sampled_from(TIME_TYPES))
    style = draw(st.integers(0, 2))
    window: ls.Sliding | ls.Session
    if kind == "tumbling":
        size = draw(st.integers(1, 12))
        window = ls.Tumbling(as_duration(size, tick, style))
    elif kind == "sliding_divides":
        slide = draw(st.integers(1, 6))
        size = slide * draw(st.integers(2, 4))
        window = ls.Sliding(as_duration(size, tick, style), as_duration(slide, tick, style))
    elif kind == "sliding_uneven":
        slide = draw(st.integers(2, 7))
        size = draw(st.integers(slide + 1, 3 * slide).filter(lambda s: s % slide != 0))
        window = ls.Sliding(as_duration(size, tick, style), as_duration(slide, tick, style))
    else:
        gap = draw(st.integers(1, 10))
        window = ls.Session(as_duration(gap, tick, style))
    key_kind = draw(st.sampled_from(["one", "int", "many", "str", "two"]))
    keys = {"one": ["k"], "int": ["k"], "many": ["k"], "str": ["ks"], "two": ["k", "ks"]}[key_kind]
    key_values: st.SearchStrategy[tuple[Any, ...]]
    if key_kind == "one":
        key_values = st.tuples(st.just(7))
    elif key_kind == "int":
        key_values = st.tuples(st.one_of(st.integers(-2, 3), st.none()))
    elif key_kind == "many":
        extremes = st.sampled_from([-(2**63), 2**63 - 1, -(2**40), 2**40, 10**15])
        key_values = st.tuples(st.one_of(st.integers(0, 40), extremes))
    elif key_kind == "str":
        key_values = st.tuples(st.sampled_from(["a", "b", "é", "", None]))
    else:
        key_values = st.tuples(st.integers(0, 2), st.sampled_from(["a", "b"]))
    n = draw(st.integers(0, max_rows))
    mode = draw(st.integers(0, 2))
    if mode == 0:  # times anywhere in a span: many late records
        span = draw(st.integers(1, 60))
        times = draw(st.lists(st.integers(-5, span), min_size=n, max_size=n))
    elif mode == 1:  # a handful of distinct times: duplicates, records right at the watermark
        times = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    else:  # times drifting up with jitter: many watermark steps, a few late records
        steps = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        jitter = draw(st.integers(0, 8))
        backs = draw(st.lists(st.integers(-jitter, 0), min_size=n, max_size=n))
        times = [sum(steps[: i + 1]) + backs[i] for i in range(n)]
    if draw(st.booleans()):  # realistic epoch times (2023-11-14), far from zero
        origin = 1_700_000_000_000_000 // tick
        times = [t + origin for t in times]
    row = st.tuples(
        key_values,
        st.integers(-3, 9).map(float),
        st.one_of(st.none(), st.integers(-4, 4)),
        st.one_of(st.none(), st.sampled_from(["p", "q", "r", "s"])),
    )
    rows = [
        (*r[0], t, *r[1:])
        for r, t in zip(draw(st.lists(row, min_size=n, max_size=n)), times, strict=True)
    ]
    batching: int | list[int] | None
    choice = draw(st.integers(0, 3))
    if choice == 0:
        batching = draw(st.integers(1, max(1, len(rows))))
    elif choice == 3:
        batching = draw(st.integers(1, 3))
    elif choice == 1:
        batching = draw(st.lists(st.integers(0, len(rows)), max_size=6))
    else:
        batching = None
    ooo_choice = draw(st.sampled_from(["none", "zero", "positive", "positive"]))
    ooo = {
        "none": None,
        "zero": as_duration(0, tick, style) if style != 2 else 0,
        "positive": as_duration(draw(st.integers(1, 8)), tick, style),
    }[ooo_choice]
    until = None
    if draw(st.booleans()):
        top = max(times, default=0)
        until_ticks = top + draw(st.integers(-4, 15))
        until_us = until_ticks * tick + draw(st.sampled_from([0, 0, 1]))
        until = (
            datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=until_us)
            if draw(st.booleans())
            else until_us
        )
    if lateness is None:
        lateness = draw(st.booleans())
    allowed = (
        as_duration(draw(st.one_of(st.integers(1, 3), st.integers(1, 15))), tick, style)
        if lateness
        else 0
    )
    names = draw(st.lists(st.sampled_from(sorted(AGGREGATES)), min_size=1, max_size=5, unique=True))
    return Scenario(
        kind=kind,
        window=window,
        keys=keys,
        rows=rows,
        time_type=time_type,
        tick=tick,
        batching=batching,
        out_of_orderness=ooo,
        until=until,
        allowed_lateness=allowed,
        aggregates={n: AGGREGATES[n] for n in names},
        emit=emit,
    )


# ---------------------------------------------------------------------------- the engine ---


class StepTagger(ls.Operator):
    """Passes everything through, remembering the watermark step each batch arrived in."""

    def __init__(self) -> None:
        super().__init__()
        self.tagged: list[tuple[int, pa.RecordBatch]] = []
        self.watermarks: list[int] = []

    def on_batch(self, batch: pa.RecordBatch, ctx: Any) -> None:
        self.tagged.append((len(self.watermarks), batch))
        ctx.emit(batch)

    def on_watermark(self, watermark: int, ctx: Any) -> None:
        self.watermarks.append(watermark)
        ctx.emit_watermark(watermark)


@dataclass
class EngineRun:
    rows: list[tuple[int, tuple[Any, ...]]]  # (step, normalised row)
    emissions: list[list[tuple[Any, ...]]]  # the rows of each output batch
    late: list[tuple[Any, ...]]
    watermarks: list[int]
    columns: list[str]
    schema: pa.Schema | None  # of the first output batch
    late_counted: int  # pipeline.metrics()["late"]


def run_engine(sc: Scenario, *, flush_all: bool = False) -> EngineRun:
    data, batch_size = sc.source_data()
    p = ls.Pipeline()
    src = p.source(
        ls.MemorySource(
            data,
            time_column="ts",
            batch_size=batch_size,
            out_of_orderness=sc.out_of_orderness,
            until=sc.until,
        )
    )
    w = src.key_by(*sc.keys).window(sc.window, allowed_lateness=sc.allowed_lateness, emit=sc.emit)
    out = w.aggregate(**{n: kernel(*spec) for n, spec in sc.aggregates.items()})
    tagger = StepTagger()
    sink = ls.CollectSink()
    out.process(tagger).sink(sink)
    late = ls.CollectSink()
    w.late().sink(late)
    p.run_sync(flush="all" if flush_all else None)
    columns = output_columns(sc)
    rows: list[tuple[int, tuple[Any, ...]]] = []
    emissions = []
    for step, batch in tagger.tagged:
        emission = normalise(pa.Table.from_batches([batch]), columns)
        emissions.append(emission)
        rows.extend((step, r) for r in emission)
    assert sum(b.num_rows for _, b in tagger.tagged) == len(sink)
    schema = tagger.tagged[0][1].schema if tagger.tagged else None
    return EngineRun(
        rows,
        emissions,
        normalise_late(late.table(), sc),
        tagger.watermarks,
        columns,
        schema,
        p.metrics()["late"],
    )


def output_columns(sc: Scenario) -> list[str]:
    cols = [*sc.keys, "window_start", "window_end", *sc.aggregates]
    if sc.emit != "every":
        cols.append("_deleted")
    return cols


def _micros(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return value


def normalise(table: pa.Table, columns: list[str]) -> list[tuple[Any, ...]]:
    """Rows as tuples of plain values (times as µs), in the given column order."""
    assert set(columns) <= set(table.column_names), (columns, table.column_names)
    for c in ("window_start", "window_end"):
        assert table.schema.field(c).type == pa.timestamp("us", tz="UTC")
    data = table.select(columns).to_pylist()
    return [tuple(_micros(r[c]) for c in columns) for r in data]


def normalise_late(table: pa.Table, sc: Scenario) -> list[tuple[Any, ...]]:
    columns = [*sc.keys, "ts", "x", "y", "z"]
    if table.num_rows == 0:
        return []
    out = []
    for r in table.select(columns).to_pylist():
        t = r["ts"]
        out.append(tuple(_micros(t) if c == "ts" else r[c] for c in columns))
    return out


def reference_late(ref: WindowReference, sc: Scenario) -> list[tuple[Any, ...]]:
    late = ref.late()
    if late.num_rows == 0:
        return []
    us = times_us(late.column("ts")).tolist()
    rows = late.select([*sc.keys, "x", "y", "z"]).to_pylist()
    return [
        (*[r[k] for k in sc.keys], t, r["x"], r["y"], r["z"]) for r, t in zip(rows, us, strict=True)
    ]


# ------------------------------------------------------------------------- comparisons ---


def ref_rows(table: pa.Table, columns: list[str]) -> list[tuple[Any, ...]]:
    return normalise(table, columns) if table.num_rows else []


def key_of(row: tuple[Any, ...], nk: int) -> tuple[Any, ...]:
    return row[:nk]


def check_key_order(emissions: list[list[tuple[Any, ...]]], nk: int, strict: bool) -> None:
    """Within one output batch, the rows of a key come in increasing window-end order."""
    for emission in emissions:
        last: dict[tuple[Any, ...], int] = {}
        for row in emission:
            k = key_of(row, nk)
            end = row[nk + 1]
            if end is None:
                continue
            if k in last:
                prev = last[k]
                assert end > prev or (not strict and end >= prev), (
                    f"key {k}: window_end {end} after {prev} in {emission}"
                )
            last[k] = end


def upsert_by_window(rows: list[tuple[Any, ...]], nk: int, *, remove: bool) -> dict[Any, Any]:
    """Store keyed by (key, window_end); deletion rows remove the entry when ``remove``."""
    store: dict[Any, Any] = {}
    for row in rows:
        k = (key_of(row, nk), row[nk + 1])
        if remove and row[-1] is True:
            store.pop(k, None)
        else:
            store[k] = row
    return store


def upsert_by_key(rows: list[tuple[Any, ...]], nk: int) -> dict[Any, Any]:
    """Store keyed by key; deletion rows remove the key."""
    store: dict[Any, Any] = {}
    for row in rows:
        k = key_of(row, nk)
        if row[-1] is True:
            store.pop(k, None)
        else:
            store[k] = row
    return store


def values_only(store: dict[Any, Any], nk: int) -> dict[Any, Any]:
    """A store keyed by key without the window bounds of its rows."""
    return {k: row[:nk] + row[nk + 2 :] for k, row in store.items()}


def history(store: dict[Any, Any], nk: int) -> dict[Any, list[tuple[Any, ...]]]:
    """Canonical per-key history of a (key, window_end) changelog store: entries in end order,
    deletion rows as "empty", entries equal to their predecessor dropped (initially empty)."""
    per_key: dict[Any, list[tuple[Any, ...]]] = {}
    for (k, end), row in sorted(store.items(), key=lambda kv: (repr(kv[0][0]), kv[0][1])):
        value = None if row[-1] else row[nk + 2 : -1]
        entries = per_key.setdefault(k, [])
        previous = entries[-1][1] if entries else None
        if value != previous:
            entries.append((end, value))
    return {k: v for k, v in per_key.items() if v}


def steps_view(run: EngineRun, step: int) -> list[tuple[Any, ...]]:
    return [r for s, r in run.rows if s <= step]


def compare(sc: Scenario, *, flush_all: bool = False) -> None:
    ref = sc.reference()
    run = run_engine(sc, flush_all=flush_all)
    nk = len(sc.keys)
    cols = run.columns
    lateness = ref.allowed_lateness > 0
    session = sc.kind == "session"
    n = len(ref.steps)

    # the watermarks the window forwarded are the source's steps
    assert run.watermarks == [s.watermark for s in ref.steps]
    # the late side output
    assert run.late == reference_late(ref, sc)
    assert run.late_counted == len(run.late)
    # after the last watermark only a flush or corrections (allowed lateness) may emit
    if not flush_all and not lateness:
        assert all(s < n for s, _ in run.rows), "rows after the last watermark"
    check_key_order(run.emissions, nk, strict=not session)
    if run.schema is not None:  # output types: keys as given, aggregates as the reference says
        want_schema = ref.every().schema
        for name in [*sc.keys, *sc.aggregates]:
            assert run.schema.field(name).type == want_schema.field(name).type, name

    # views: right after each watermark step j (rows tagged <= j), then the end of the run
    def by_view(table: pa.Table) -> dict[int, list[tuple[Any, ...]]]:
        steps_col = table.column("_step").to_pylist()
        rows = ref_rows(table.drop_columns(["_step"]), cols)
        out: dict[int, list[tuple[Any, ...]]] = {j: [] for j in range(n + 1)}
        for j, r in zip(steps_col, rows, strict=True):
            out[j].append(r)
        return out

    def where(j: int) -> str:
        return f"after step {j} ({ref.steps[j]})" if j < n else "at the end"

    engine_views = {j: [r for s, r in run.rows if s <= j] for j in range(n + 1)}

    if sc.emit == "every":
        expected = by_view(ref.every_by_step(flush_all=flush_all))
        sessions = by_view(ref.sessions_by_step()) if session and lateness else {}
        for j, got in engine_views.items():
            if not lateness:
                assert Counter(got) == Counter(expected[j]), where(j)
            elif not session:
                assert upsert_by_window(got, nk, remove=False) == upsert_by_window(
                    expected[j], nk, remove=False
                ), where(j)
            else:
                check_session_every_store(got, expected[j], sessions[j], nk, where(j))
    elif sc.emit == "changes":
        expected = by_view(ref.changes_by_step(flush_all=flush_all))
        for j, got in engine_views.items():
            if not lateness:
                assert Counter(got) == Counter(expected[j]), where(j)
            elif not session:
                assert history(upsert_by_window(got, nk, remove=False), nk) == history(
                    upsert_by_window(expected[j], nk, remove=False), nk
                ), where(j)
            else:
                assert upsert_by_window(got, nk, remove=True) == upsert_by_window(
                    expected[j], nk, remove=True
                ), where(j)
    else:
        expected_all = ref.latest(flush_all=flush_all)
        exp_steps = expected_all.column("_step").to_pylist()
        exp_rows = ref_rows(expected_all.drop_columns(["_step"]), cols)
        tagged = list(zip(exp_steps, exp_rows, strict=True))
        if not lateness:
            assert Counter(run.rows) == Counter(tagged)
        else:
            for j in range(n + 1):
                rows_j = [r for s, r in run.rows if s <= j]
                store = upsert_by_key(rows_j, nk)
                want = upsert_by_key([r for s, r in tagged if s <= j], nk)
                if not session:
                    # a row is emitted only when a key's value changes, so the bounds a store
                    # holds are those of the row that last changed it; corrections between steps
                    # make those differ from the reference's: compare the values only
                    assert values_only(store, nk) == values_only(want, nk), (
                        f"latest store {where(j)}"
                    )
                else:
                    check_session_latest_store(store, want, rows_j, nk, j)


def check_session_every_store(
    got: list[tuple[Any, ...]],
    expected: list[tuple[Any, ...]],
    sessions: list[tuple[Any, ...]],
    nk: int,
    where: str,
) -> None:
    """Sessions in ``every`` mode with corrections: every completed session's latest row is
    right; any other row is a stale version of a session that grew since (``every`` has no
    retractions): its interval lies inside one of the key's current sessions."""
    latest: dict[Any, tuple[Any, ...]] = {}
    for row in got:
        latest[(key_of(row, nk), row[nk], row[nk + 1])] = row
    want = {(key_of(r, nk), r[nk], r[nk + 1]): r for r in expected}
    for k, row in want.items():
        assert latest.get(k) == row, f"{where}: session {k}"
    for k in latest.keys() - want.keys():
        key, start, end = k
        assert any(
            key_of(r, nk) == key and r[nk] <= start and end <= r[nk + 1] for r in sessions
        ), f"{where}: row for session {k} that is no (part of a) session"


def check_session_latest_store(
    got: dict[Any, Any], want: dict[Any, Any], rows: list[tuple[Any, ...]], nk: int, j: int
) -> None:
    """Sessions in ``latest`` mode with corrections, after step ``j``: a stored row is the key's
    newest completed session; a key may lack a row only while its newest completed session is
    older than a session the engine already showed (``rows``: all rows so far) — a shown
    session was absorbed into one that is not complete yet, and the engine does not regress
    to older sessions (documented in ``lambdasource/windows/session.py``)."""
    shown_end: dict[Any, int] = {}
    for row in rows:
        if not row[-1]:
            k = key_of(row, nk)
            shown_end[k] = max(shown_end.get(k, row[nk + 1]), row[nk + 1])
    for k, row in got.items():
        assert want.get(k) == row, f"latest store after step {j}: key {k}"
    for k, row in want.items():
        if k not in got:
            assert row[nk + 1] < shown_end.get(k, -math.inf), (
                f"latest store after step {j}: key {k} missing (want {row})"
            )


# ------------------------------------------------------------------- reference, pinned ---

US = pa.timestamp("us")


def small(ks: list[Any], ts: list[int], xs: list[float]) -> pa.Table:
    return pa.table({"k": ks, "ts": pa.array(ts, US), "x": pa.array(xs, pa.float64())})


def plain(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(_micros(v) for v in r.values()) for r in table.to_pylist()]


def test_reference_tumbling_every_changes_latest_by_hand() -> None:
    t = small(["a"] * 4, [1, 5, 12, 25], [1, 2, 3, 4])
    aggs = {"n": ("count", None), "s": ("sum", "x"), "f": ("first", "x")}
    kw: dict[str, Any] = dict(time_column="ts", keys="k", window=ls.Tumbling(10), aggregates=aggs)
    assert plain(expected_windows(t, emit="every", **kw)) == [
        ("a", 0, 10, 2, 3.0, 1.0),
        ("a", 10, 20, 1, 3.0, 3.0),
    ]  # [20, 30) is not complete at the final watermark 25
    assert plain(expected_windows(t, emit="changes", flush_all=True, **kw)) == [
        ("a", 0, 10, 2, 3.0, 1.0, False),
        ("a", 10, 20, 1, 3.0, 3.0, False),
        ("a", 20, 30, 1, 4.0, 4.0, False),
        ("a", 30, 40, None, None, None, True),
    ]
    assert plain(expected_windows(t, emit="latest", **kw)) == [("a", 10, 20, 1, 3.0, 3.0, False, 0)]


def test_reference_changes_suppresses_equal_values_and_deletes() -> None:
    # Sliding(20, 10): 1 is in ends 10, 20; 12 in ends 20, 30; until 40 completes end 40 (empty)
    t = small(["a", "a"], [1, 12], [1, 5])
    kw: dict[str, Any] = dict(time_column="ts", keys="k", window=ls.Sliding(20, 10), until=40)
    rows = expected_windows(t, aggregates={"n": ("count", None)}, emit="changes", **kw)
    assert plain(rows) == [
        ("a", -10, 10, 1, False),
        ("a", 0, 20, 2, False),
        ("a", 10, 30, 1, False),
        ("a", 20, 40, None, True),
    ]
    # max(x) is 1, 5, 5: the window ending 30 repeats the value of the one ending 20
    rows = expected_windows(t, aggregates={"m": ("max", "x")}, emit="changes", **kw)
    assert plain(rows) == [
        ("a", -10, 10, 1.0, False),
        ("a", 0, 20, 5.0, False),
        ("a", 20, 40, None, True),
    ]


def test_reference_lateness_per_window() -> None:
    # batch_size 1, out_of_orderness 0: 12 sets W=12; 5 then belongs to [0, 10) only, which
    # accepts while W < 9 + L
    t = small(["a"] * 4, [12, 5, 15, 19], [1, 2, 3, 4])
    kw: dict[str, Any] = dict(
        time_column="ts", keys="k", window=ls.Tumbling(10), batch_size=1, out_of_orderness=0
    )
    assert [
        s.watermark
        for s in watermark_steps(
            t, **{k: kw[k] for k in ("time_column", "batch_size", "out_of_orderness")}
        )
    ] == [12, 15, 19]
    for lateness, late in ((0, [5]), (3, [5]), (4, [])):
        got = late_records(t, allowed_lateness=lateness, **kw).column("ts").cast(pa.int64())
        assert got.to_pylist() == late
    # Sliding(10, 4): 5 is in the windows ending 8 and 12; with W=8 only the one ending 12
    t = small(["a", "a"], [9, 5], [1, 2])
    ref = WindowReference(
        t,
        time_column="ts",
        keys="k",
        window=ls.Sliding(10, 4),
        aggregates={"n": ("count", None)},
        batch_size=1,
        out_of_orderness=1,
    )
    assert plain(ref.every(flush_all=True)) == [("a", 2, 12, 2), ("a", 6, 16, 1)]
    assert ref.late().num_rows == 0


def test_reference_sessions_merge_purge_and_late() -> None:
    aggs = {"n": ("count", None), "s": ("sum", "x")}
    t = small(["a"] * 5, [0, 5, 20, 29, 40], [1, 2, 3, 4, 5])
    ref = WindowReference(t, time_column="ts", keys="k", window=ls.Session(10), aggregates=aggs)
    assert plain(ref.every()) == [("a", 0, 15, 2, 3.0), ("a", 20, 39, 2, 7.0)]
    assert plain(ref.latest(flush_all=True)) == [
        ("a", 20, 39, 2, 7.0, False, 0),
        ("a", 40, 50, 1, 5.0, False, 1),
    ]
    # [0, 10) completes and is purged at W=10; 5 then merges with [10, 20) only
    t = small(["a"] * 3, [0, 10, 5], [1, 2, 3])
    kw: dict[str, Any] = dict(
        time_column="ts",
        keys="k",
        window=ls.Session(10),
        aggregates=aggs,
        batch_size=1,
        out_of_orderness=0,
    )
    ref = WindowReference(t, **kw)
    assert plain(ref.every(flush_all=True)) == [("a", 0, 10, 1, 1.0), ("a", 5, 20, 2, 5.0)]
    # 15 arrives at W=30: its own window [15, 25) is late unless L >= 7
    t = small(["a"] * 3, [0, 30, 15], [1, 2, 3])
    assert WindowReference(t, **kw).late().column("ts").cast(pa.int64()).to_pylist() == [15]
    ref = WindowReference(t, allowed_lateness=7, **kw)
    assert ref.late().num_rows == 0
    assert plain(ref.every(flush_all=True)) == [
        ("a", 0, 10, 1, 1.0),
        ("a", 15, 25, 1, 3.0),
        ("a", 30, 40, 1, 2.0),
    ]


def test_reference_time_types_agree() -> None:
    base = [3_000, 1_000, 7_000]  # µs, whole milliseconds
    aggs = {"n": ("count", None)}
    results = []
    for ts in (
        pa.array(base, pa.timestamp("us")),
        pa.array([v * 1000 for v in base], pa.timestamp("ns", tz="Asia/Tokyo")),
        pa.array([v // 1000 for v in base], pa.timestamp("ms", tz="UTC")),
        pa.array([v // 1000 for v in base], pa.int64()),
    ):
        t = pa.table({"k": [1, 1, 2], "ts": ts})
        results.append(
            plain(
                expected_windows(
                    t,
                    time_column="ts",
                    keys="k",
                    window=ls.Tumbling(2000),
                    aggregates=aggs,
                    emit="every",
                )
            )
        )
    assert all(r == results[0] for r in results)
    assert results[0] == [(1, 0, 2000, 1), (1, 2000, 4000, 1)]


@st.composite
def fast_path_inputs(draw: st.DrawFn) -> tuple[pa.Table, Any, Any]:
    slide = draw(st.integers(1, 6))
    size = draw(st.integers(slide, 4 * slide))
    n = draw(st.integers(0, 40))
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", None]),
                st.integers(-20, 60),
                st.one_of(st.none(), st.integers(-3, 5)),
            ),
            min_size=n,
            max_size=n,
        )
    )
    table = pa.table(
        {
            "k": pa.array([r[0] for r in rows], pa.string()),
            "ts": pa.array([r[1] for r in rows], US),
            "x": pa.array([r[2] for r in rows], pa.float64()),
            "i": pa.array([r[2] for r in rows], pa.int64()),
        }
    )
    until = draw(st.one_of(st.none(), st.integers(-10, 80)))
    return table, ls.Sliding(size, slide), until


@FAST
@given(fast_path_inputs(), st.booleans())
def test_sliding_fast_path_matches_the_general_reference(
    inputs: tuple[pa.Table, Any, Any], flush_all: bool
) -> None:
    table, window, until = inputs
    if table.num_rows == 0 and until is None and not flush_all:
        return
    aggs = {
        "n": ("count", None),
        "s": ("sum", "x"),
        "m": ("mean", "x"),
        "c": ("count", "x"),
        "si": ("sum", "i"),
    }
    kw: dict[str, Any] = dict(time_column="ts", keys="k", window=window, until=until)
    for chosen in (aggs, {"s": aggs["s"]}, {"m": aggs["m"], "si": aggs["si"]}):
        fast = sliding_changelog(table, aggregates=chosen, flush_all=flush_all, **kw)
        general = expected_windows(
            table, aggregates=chosen, emit="changes", flush_all=flush_all, **kw
        )
        assert Counter(plain(fast)) == Counter(plain(general))


@FAST
@given(fast_path_inputs(), st.integers(1, 12), st.booleans())
def test_session_islands_match_the_general_reference(
    inputs: tuple[pa.Table, Any, Any], gap: int, flush_all: bool
) -> None:
    table, _, until = inputs
    table = table.append_column(
        "z",
        pa.array(
            [None if v is None else str(v % 3) for v in table.column("i").to_pylist()], pa.string()
        ),
    )
    aggs = {
        "n": ("count", None),
        "s": ("sum", "x"),
        "m": ("mean", "i"),
        "lo": ("min", "z"),
        "hi": ("max", "x"),
        "f": ("first", "x"),
        "l": ("last", "z"),
        "d": ("count_distinct", "z"),
    }
    kw: dict[str, Any] = dict(
        time_column="ts", keys="k", window=ls.Session(gap), aggregates=aggs, until=until
    )
    islands = session_windows(table, flush_all=flush_all, **kw)
    general = expected_windows(table, emit="every", flush_all=flush_all, **kw)
    assert islands.schema == general.schema
    assert Counter(plain(islands)) == Counter(plain(general))


# -------------------------------------------------------------------- engine properties ---


@pytest.mark.timeout(600)  # shrinking a failure takes a while
@pytest.mark.parametrize("emit", MODES)
@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_engine_matches_reference(kind: str, emit: str, data: st.DataObject) -> None:
    compare(data.draw(scenarios(kind, emit)))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("emit", MODES)
@pytest.mark.parametrize("kind", KINDS)
@settings(FAST, max_examples=25)
@given(data=st.data())
def test_engine_flush_all_matches_reference(kind: str, emit: str, data: st.DataObject) -> None:
    compare(data.draw(scenarios(kind, emit)), flush_all=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("emit", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_engine_matches_reference_many(kind: str, emit: str) -> None:

    @SLOW
    @given(data=st.data(), flush_all=st.booleans(), max_rows=st.sampled_from([30, 30, 120]))
    def many(data: st.DataObject, flush_all: bool, max_rows: int) -> None:
        compare(data.draw(scenarios(kind, emit, max_rows=max_rows)), flush_all=flush_all)

    many()
