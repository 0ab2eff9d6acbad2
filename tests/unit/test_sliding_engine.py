"""SlidingEngine against a brute-force reference that expands every record into its windows.

Run the speed check by hand: ``python tests/unit/test_sliding_engine.py [events] [keys]``.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdasource.windows import aggregates as agg
from lambdasource.windows.aggregates import Aggregate, Kernel, Rows
from lambdasource.windows.engine import Emission
from lambdasource.windows.sliding import SlidingEngine

SCHEMA = pa.schema([("v", pa.int64()), ("f", pa.float64())])
Row = tuple[Any, ...]


class Spread(Aggregate):
    """A user aggregate (max - min of non-null values) exercising the object-state path."""

    output_type = pa.int64()

    def init(self) -> Any:
        return None

    def update(self, state: Any, values: pa.Array) -> Any:
        mm = pc.min_max(values)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if lo is None:
            return state
        return self.merge(state, (lo, hi))

    def merge(self, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return a if b is None else b
        return (min(a[0], b[0]), max(a[1], b[1]))

    def result(self, state: Any) -> Any:
        return None if state is None else state[1] - state[0]


# --------------------------------------------------------------------------------- reference ---


@dataclass(frozen=True)
class Rec:
    t: int
    seq: int
    v: int | None


def _nn(recs: list[Rec]) -> list[int]:
    return [r.v for r in recs if r.v is not None]


REF_AGGS: dict[str, tuple[Callable[[], Kernel], Callable[[list[Rec]], Any]]] = {
    "count": (agg.count, len),
    "count_v": (lambda: agg.count("v"), lambda rs: len(_nn(rs))),
    "sum": (lambda: agg.sum("v"), lambda rs: sum(_nn(rs)) if _nn(rs) else None),
    "sum_f": (lambda: agg.sum("f"), lambda rs: float(sum(_nn(rs))) if _nn(rs) else None),
    "mean": (lambda: agg.mean("v"), lambda rs: sum(_nn(rs)) / len(_nn(rs)) if _nn(rs) else None),
    "min": (lambda: agg.min("v"), lambda rs: min(_nn(rs)) if _nn(rs) else None),
    "max": (lambda: agg.max("v"), lambda rs: max(_nn(rs)) if _nn(rs) else None),
    "first": (lambda: agg.first("v"), lambda rs: min(rs, key=lambda r: (r.t, r.seq)).v),
    "last": (lambda: agg.last("v"), lambda rs: max(rs, key=lambda r: (r.t, r.seq)).v),
    "count_distinct": (lambda: agg.count_distinct("v"), lambda rs: len(set(_nn(rs)))),
    "spread": (
        lambda: Spread("v").kernel(),
        lambda rs: max(_nn(rs)) - min(_nn(rs)) if _nn(rs) else None,
    ),
}


@dataclass
class Reference:
    """Windows straight from the definition: every record is stored in each window it joins."""

    size: int
    slide: int
    lateness: int
    aggs: list[str]
    mode: str
    win: dict[tuple[int, int], list[Rec]] = field(default_factory=lambda: defaultdict(list))
    keys: set[int] = field(default_factory=set)
    W: int | None = None
    E: int | None = None
    top: int | None = None  # greatest e_last of an accepted record

    def value(self, k: int, e: int) -> tuple[Any, ...] | None:
        recs = self.win.get((k, e))
        if not recs:
            return None
        return tuple(REF_AGGS[a][1](recs) for a in self.aggs)

    def row(self, k: int, e: int) -> Row:
        v = self.value(k, e)
        return (k, e - self.size, e, v is None, *(v or (None,) * len(self.aggs)))

    def add(self, keys: list[int], recs: list[Rec]) -> tuple[list[bool], list[Row]]:
        S, D, L, wm, E = self.size, self.slide, self.lateness, self.W, self.E
        late = []
        old_latest = {k: self.value(k, E) for k in set(keys)} if E is not None else {}
        touched: set[tuple[int, int]] = set()
        for k, r in zip(keys, recs, strict=True):
            ends = range((r.t // D + 1) * D, (r.t + S) // D * D + 1, D)
            ok = [e for e in ends if wm is None or wm < e - 1 + L]
            late.append(not ok)
            for e in ok:
                self.win[(k, e)].append(r)
                self.keys.add(k)
                if E is not None and e <= E:
                    touched.add((k, e))
            if ok:
                self.top = ok[-1] if self.top is None else max(self.top, ok[-1])
        rows: list[Row] = []
        if self.mode == "every":
            rows = [self.row(k, e) for k, e in sorted(touched)]
        elif self.mode == "latest" and E is not None:
            for k in sorted({k for k, e in touched if e == E}):
                if self.value(k, E) != old_latest[k]:
                    rows.append(self.row(k, E))
        return late, rows

    def advance(self, W: int) -> list[Row]:
        assert self.W is None or W > self.W
        self.W = W
        return self._complete((W + 1) // self.slide * self.slide)

    def flush_all(self) -> list[Row]:
        if self.top is None:
            return []
        return self._complete(self.top + self.slide)

    def _complete(self, E_new: int) -> list[Row]:
        E0, D = self.E, self.slide
        if E0 is not None and E_new <= E0:
            return []
        self.E = E_new
        lo = -math.inf if E0 is None else E0
        rows: list[Row] = []
        if self.mode == "every":
            for (k, e), recs in self.win.items():
                if recs and lo < e <= E_new:
                    rows.append(self.row(k, e))
        elif self.mode == "changes":
            ends = {(k, x) for (k, e) in self.win for x in (e, e + D) if lo < x <= E_new}
            for k, e in ends:
                if self.value(k, e) != self.value(k, e - D):
                    rows.append(self.row(k, e))
        else:
            for k in self.keys:
                before = None if E0 is None else self.value(k, E0)
                if self.value(k, E_new) != before:
                    rows.append(self.row(k, E_new))
        return rows

    def check_history(self, store: dict[int, dict[int, Any]]) -> None:
        """An upsert store keyed by (key, end) reconstructs every completed window's value."""
        if self.E is None:
            return
        D = self.slide
        points = {(k, x) for (k, e) in self.win for x in (e, e + D)}
        points |= {(k, e) for k, ends in store.items() for e in ends}
        for k, x in points:
            if x > self.E:
                continue
            ends = [e for e in store.get(k, {}) if e <= x]
            got = store[k][max(ends)] if ends else None
            assert got == self.value(k, x), (k, x, got, self.value(k, x))


# ------------------------------------------------------------------------------- scenarios ---


def rows_of(em: Emission | None) -> list[Row]:
    if em is None:
        return []
    results = [r.to_pylist() for r in em.results]
    out = []
    for i in range(len(em)):
        out.append(
            (
                int(em.key_ids[i]),
                int(em.starts[i]),
                int(em.ends[i]),
                bool(em.deleted[i]),
                *(r[i] for r in results),
            )
        )
    return out


def check_key_order(rows: list[Row]) -> None:
    """Rows of one key come in increasing window-end order."""
    last: dict[int, int] = {}
    for r in rows:
        assert r[2] > last.get(r[0], -(10**30)), rows
        last[r[0]] = r[2]


def make_rows(recs: list[Rec]) -> Rows:
    vs = [r.v for r in recs]
    return Rows(
        {
            "v": pa.array(vs, type=pa.int64()),
            "f": pa.array([None if v is None else float(v) for v in vs], type=pa.float64()),
        },
        np.array([r.t for r in recs], dtype=np.int64),
        np.array([r.seq for r in recs], dtype=np.int64),
    )


def make_engine(size: int, slide: int, lateness: int, aggs: list[str], mode: Any) -> SlidingEngine:
    kernels = [REF_AGGS[a][0]() for a in aggs]
    for k in kernels:
        k.bind(SCHEMA, "test")
    return SlidingEngine(kernels, mode, lateness, size=size, slide=slide)


Op = tuple[str, Any]


def run(
    size: int, slide: int, lateness: int, aggs: list[str], mode: Any, ops: list[Op]
) -> tuple[SlidingEngine, list[list[Row]]]:
    """Drive engine and reference side by side, comparing each call's output."""
    engine = make_engine(size, slide, lateness, aggs, mode)
    ref = Reference(size, slide, lateness, aggs, mode)
    store: dict[int, dict[int, Any]] = defaultdict(dict)
    outputs: list[list[Row]] = []
    corrected = False
    for kind, arg in ops:
        if kind == "add":
            keys, recs = arg
            result = engine.add(np.array(keys, dtype=np.int64), make_rows(recs), ref.W)
            late, want = ref.add(keys, recs)
            assert result.late.tolist() == late
            got = rows_of(result.emission)
            if mode == "changes":
                corrected |= bool(got)
                assert all(ref.E is not None and r[2] <= ref.E for r in got)
            else:
                assert Counter(got) == Counter(want), (kind, sorted(got), sorted(want))
        elif kind == "advance":
            got = rows_of(engine.advance(arg))
            want = ref.advance(arg)
            assert Counter(got) == Counter(want), (kind, arg, sorted(got), sorted(want))
        else:
            got = rows_of(engine.flush_all())
            want = ref.flush_all()
            assert Counter(got) == Counter(want), (kind, sorted(got), sorted(want))
        check_key_order(got)
        outputs.append(got)
        for r in got:
            store[r[0]][r[2]] = None if r[3] else tuple(r[4:])
        if mode == "changes":
            ref.check_history(store)
    return engine, outputs


SHAPES = [(10, 10), (10, 5), (10, 4), (6, 4), (12, 3), (5, 1), (4, 4), (9, 6), (1, 1), (30, 5)]


@st.composite
def scenarios(draw: st.DrawFn, aggs_pool: tuple[str, ...] = tuple(REF_AGGS)) -> dict[str, Any]:
    size, slide = draw(st.sampled_from(SHAPES))
    lateness = draw(st.sampled_from([0, 0, 1, 3, 8, 25]))
    mode = draw(st.sampled_from(["every", "changes", "latest"]))
    aggs = draw(st.lists(st.sampled_from(aggs_pool), min_size=1, max_size=3, unique=True))
    nkeys = draw(st.sampled_from([1, 2, 5]))
    center = draw(st.integers(-60, 20))
    wm: int | None = None
    seq = 0
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["add", "add", "advance"]))
        if kind == "add":
            n = draw(st.integers(0, 10))
            keys = draw(st.lists(st.integers(0, nkeys - 1), min_size=n, max_size=n))
            ts = draw(st.lists(st.integers(center - 30, center + 30), min_size=n, max_size=n))
            vs = draw(st.lists(st.one_of(st.none(), st.integers(-4, 4)), min_size=n, max_size=n))
            recs = [Rec(t, seq + i, v) for i, (t, v) in enumerate(zip(ts, vs, strict=True))]
            seq += n
            ops.append(("add", (keys, recs)))
        else:
            jump = draw(st.sampled_from([1, 1, 2, 3, 5, slide, size, 2 * size + 1, 37, 10**7]))
            wm = (center - 20 if wm is None else wm) + jump
            center = wm + draw(st.integers(-5, 25))
            ops.append(("advance", wm))
    if draw(st.booleans()):
        ops.append(("flush", None))
    return {
        "size": size,
        "slide": slide,
        "lateness": lateness,
        "aggs": aggs,
        "mode": mode,
        "ops": ops,
    }


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenarios())
def test_matches_reference(sc: dict[str, Any]) -> None:
    run(sc["size"], sc["slide"], sc["lateness"], sc["aggs"], sc["mode"], sc["ops"])


@SETTINGS
@given(scenarios(("count", "sum", "sum_f", "min", "last")))
def test_snapshot_restore_replays_identically(sc: dict[str, Any]) -> None:
    ops = sc["ops"]
    cut = len(ops) // 2
    args = (sc["size"], sc["slide"], sc["lateness"], sc["aggs"], sc["mode"])
    engine, _ = run(*args, ops[:cut])
    state = engine.snapshot()
    rows_before = engine.state_rows()

    def replay(e: SlidingEngine) -> list[list[Row]]:
        out = []
        wm = e.watermark
        for kind, arg in ops[cut:]:
            if kind == "add":
                keys, recs = arg
                out.append(rows_of(e.add(np.array(keys), make_rows(recs), wm).emission))
            elif kind == "advance":
                wm = arg
                out.append(rows_of(e.advance(arg)))
            else:
                out.append(rows_of(e.flush_all()))
        return out

    first = replay(engine)
    fresh = make_engine(*args)
    fresh.restore(state)
    assert fresh.state_rows() == rows_before
    assert replay(fresh) == first


# ------------------------------------------------------------------------------- examples ---


def test_tumbling_changes_example() -> None:
    keys = [0, 0, 1, 0]
    recs = [Rec(1, 0, 5), Rec(3, 1, 7), Rec(12, 2, 1), Rec(25, 3, 2)]
    ops: list[Op] = [("add", (keys, recs)), ("advance", 9), ("advance", 19), ("advance", 40)]
    _, out = run(10, 10, 0, ["count", "sum"], "changes", ops)
    assert out[1] == [(0, 0, 10, False, 2, 12)]
    assert sorted(out[2]) == [(0, 10, 20, True, None, None), (1, 10, 20, False, 1, 1)]
    assert sorted(out[3]) == [
        (0, 20, 30, False, 1, 2),
        (0, 30, 40, True, None, None),
        (1, 20, 30, True, None, None),
    ]


def test_sliding_gcd_slices_and_huge_jump() -> None:
    # size 10, slide 4: slices of 2; one record joins windows 4, 8 (t=3) then leaves at 16
    ops: list[Op] = [("add", ([0], [Rec(3, 0, 1)])), ("advance", 10**12)]
    _, out = run(10, 4, 0, ["count"], "changes", ops)
    assert out[1] == [(0, -6, 4, False, 1), (0, 6, 16, True, None)]
    _, out = run(10, 4, 0, ["count"], "every", ops)
    assert sorted(out[1]) == [(0, -6, 4, False, 1), (0, -2, 8, False, 1), (0, 2, 12, False, 1)]


def test_partially_late_record_leaves_closed_windows_alone() -> None:
    # size 10 slide 2, lateness 0: after W=9 a record at t=5 is late for windows <= 10 only
    ops: list[Op] = [
        ("add", ([0], [Rec(1, 0, 1)])),
        ("advance", 9),
        ("add", ([0], [Rec(5, 1, 2)])),
        ("advance", 30),
    ]
    _, out = run(10, 2, 0, ["sum"], "changes", ops)
    assert out[1] == [(0, -8, 2, False, 1)]
    assert out[3] == [(0, 2, 12, False, 2), (0, 6, 16, True, None)]


def test_state_is_bounded_by_keys_times_slices() -> None:
    day, minute = 86_400_000_000, 60_000_000
    engine = make_engine(30 * day, 5 * minute, 0, ["count", "sum"], "changes")
    rng = np.random.default_rng(1)
    seq = 0
    for i in range(200):
        n = 500
        t = np.full(n, i * 1000, dtype=np.int64)  # all in one slice of 5 minutes
        rows = Rows(
            {"v": pa.array(rng.integers(0, 9, n)), "f": pa.array(np.ones(n))},
            t,
            np.arange(seq, seq + n),
        )
        seq += n
        engine.add(np.zeros(n, dtype=np.int64), rows, engine.watermark)
        if i % 10 == 9:
            engine.advance(i * 1000)
    assert engine.state_rows() <= 4
    # many keys, many slices: rows are at most keys x live slices (+ 2 dense rows per key)
    keys = rng.integers(0, 50, 100_000)
    t = 10 * day + rng.integers(0, 2 * day, 100_000)
    rows = Rows({"v": pa.array(keys), "f": pa.array(np.ones(100_000))}, t, np.arange(100_000))
    engine.add(keys, rows, engine.watermark)
    slices = len(np.unique(t // (5 * minute)))
    assert engine.state_rows() <= 50 * slices + 2 * 50 + 4
    engine.advance(11 * day)
    assert engine.state_rows() <= 2 * (50 * slices + 2 * 50 + 4)


@pytest.mark.parametrize("mode", ["every", "changes", "latest"])
@pytest.mark.parametrize(("size", "slide", "lateness"), [(60, 4, 0), (60, 4, 13), (48, 18, 30)])
def test_larger_random_runs(mode: str, size: int, slide: int, lateness: int) -> None:
    """Longer segments and many blocks: out-of-order batches, every aggregate, big jumps."""
    rng = np.random.default_rng(size * 1000 + slide * 10 + lateness)
    aggs = ["count", "sum", "sum_f", "mean", "min", "max", "first", "last", "count_distinct"]
    ops: list[Op] = []
    wm, seq = -200, 0
    for i in range(40):
        n = int(rng.integers(0, 80))
        ts = wm + rng.integers(-40, 60, n)
        vs = [None if x < 0 else int(x) for x in rng.integers(-2, 9, n)]
        keys = [int(k) for k in rng.integers(0, 4 + i, n)]  # new keys keep appearing
        recs = [Rec(int(t), seq + j, v) for j, (t, v) in enumerate(zip(ts, vs, strict=True))]
        ops.append(("add", (keys, recs)))
        seq += n
        wm += int(rng.choice([1, 3, 7, 20, slide, 5000 if i % 13 == 12 else 2]))
        ops.append(("advance", wm))
    ops.append(("flush", None))
    run(size, slide, lateness, aggs[:5], mode, ops)
    run(size, slide, lateness, aggs[5:], mode, ops)


def test_add_applies_a_newer_watermark_first() -> None:
    recs = [Rec(1, 0, 1), Rec(12, 1, 2)]
    a = make_engine(10, 5, 0, ["count"], "changes")
    a.add(np.array([0]), make_rows(recs[:1]), None)
    got = rows_of(a.add(np.array([0]), make_rows(recs[1:]), 9).emission)
    b = make_engine(10, 5, 0, ["count"], "changes")
    b.add(np.array([0]), make_rows(recs[:1]), None)
    want = rows_of(b.advance(9)) + rows_of(b.add(np.array([0]), make_rows(recs[1:]), 9).emission)
    assert got == want == [(0, -5, 5, False, 1)]
    assert a.watermark == 9


def test_rejects_bad_config() -> None:
    from lambdasource.errors import ConfigError

    with pytest.raises(ConfigError):
        SlidingEngine([agg.count()], "every", 0, size=5, slide=10)
    with pytest.raises(ConfigError):
        SlidingEngine([agg.count()], "nope", 0, size=5, slide=5)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ speed check ---


def bench(
    events: int = 2_000_000,
    nkeys: int = 20_000,
    mode: str = "changes",
    lateness_min: int = 0,
    aggs: str = "count,sum",
    jitter_min: int = 1,
    batch: int = 100_000,
) -> None:
    """Events/s for Sliding(30d, 5m) over 90 days, a watermark (max - 1 minute) after each batch.

    Times are sorted plus ±``jitter_min`` of noise, so some records arrive behind the watermark.
    """
    day, minute = 86_400_000_000, 60_000_000
    rng = np.random.default_rng(7)
    t = np.sort(rng.integers(0, 90 * day, events))
    t += rng.integers(-jitter_min * minute, jitter_min * minute + 1, events)
    keys = rng.zipf(1.3, events) % nkeys
    vals = rng.integers(0, 100, events)
    kernels = [REF_AGGS[a][0]() for a in aggs.split(",")]
    for k in kernels:
        k.bind(SCHEMA, "bench")
    emit: Any = mode
    engine = SlidingEngine(kernels, emit, lateness_min * minute, size=30 * day, slide=5 * minute)
    out = late = 0
    wm: int | None = None
    start = time.perf_counter()
    for i in range(0, events, batch):
        sl = slice(i, i + batch)
        v = pa.array(vals[sl])
        rows = Rows(
            {"v": v, "f": v.cast(pa.float64())}, t[sl], np.arange(i, min(i + batch, events))
        )
        res = engine.add(keys[sl], rows, wm)
        late += int(res.late.sum())
        out += len(res.emission) if res.emission is not None else 0
        wm = max(wm or 0, int(t[sl].max()) - minute)
        em = engine.advance(wm)
        out += len(em) if em is not None else 0
    em = engine.flush_all()
    out += len(em) if em is not None else 0
    elapsed = time.perf_counter() - start
    print(
        f"{events:,} events, {nkeys:,} keys, {mode}, L={lateness_min}m, {aggs}: "
        f"{elapsed:.2f} s, {events / elapsed:,.0f} events/s, {out:,} rows, {late:,} late, "
        f"state_rows={engine.state_rows():,}"
    )


if __name__ == "__main__":
    bench(*(int(a) if a.isdigit() else a for a in sys.argv[1:]))  # type: ignore[arg-type]
