"""Exact ``count_distinct`` of sliding windows by pair presence (``windows/distinct.py``).

The engine (``count`` + ``count_distinct``) is driven next to a reference built from the definition:
every accepted record is stored in each window it joins, a window's distinct count is the size of
the set of its non-null values (floats: ``-0.0 == 0.0``, NaN equals NaN). Values are ints, strings,
floats, timestamps, booleans, uint64 extremes or dictionary-encoded strings; times are out of
order with duplicates; watermarks jump by up to 10^12; lateness corrects completed windows.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdasource.windows import aggregates as agg
from lambdasource.windows.aggregates import Rows
from lambdasource.windows.distinct import (
    PairPresence,
    _pair_order,
    _suffix_min,
    _sum_events,
)
from lambdasource.windows.sliding import SlidingEngine
from lambdasource.windows.value_codes import ValueCodes
from tests.unit.test_sliding_engine import SHAPES, check_key_order, rows_of

Row = tuple[Any, ...]
_NAN = ("nan",)

KINDS: dict[str, tuple[pa.DataType, Any]] = {
    "int": (pa.int64(), st.integers(-3, 3)),
    "str": (pa.string(), st.sampled_from(["a", "b", "", "ü", "a longer string"])),
    "float": (pa.float64(), st.sampled_from([0.0, -0.0, 1.5, math.nan, math.inf, -2.0])),
    "ts": (pa.timestamp("ms", tz="UTC"), st.integers(-2, 2)),
    "bool": (pa.bool_(), st.booleans()),
    "u64": (pa.uint64(), st.sampled_from([0, 1, 2**63, 2**64 - 1])),
    "i64": (pa.int64(), st.sampled_from([-(2**63), -(2**31) - 1, -(2**31), 0, 2**31 - 1, 2**31])),
    "dict": (pa.dictionary(pa.int32(), pa.string()), st.sampled_from(["x", "y", "z"])),
    "decimal": (pa.decimal128(6, 2), st.sampled_from([Decimal("1.50"), Decimal("2.00")])),
}


def canon(v: Any) -> Any:
    return _NAN if isinstance(v, float) and math.isnan(v) else v


def column(values: list[Any], dtype: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(dtype):
        return pa.array(values, pa.string()).dictionary_encode()
    return pa.array(values, dtype)


# --------------------------------------------------------------------------------- reference ---


@dataclass
class Reference:
    """Windows from the definition: each accepted record is stored in every window it joins."""

    size: int
    slide: int
    lateness: int
    mode: str
    win: dict[tuple[int, int], list[Any]] = field(default_factory=lambda: defaultdict(list))
    keys: set[int] = field(default_factory=set)
    W: int | None = None
    E: int | None = None
    top: int | None = None

    def value(self, k: int, e: int) -> tuple[int, int] | None:
        vals = self.win.get((k, e))
        if not vals:
            return None
        return (len(vals), len({canon(v) for v in vals if v is not None}))

    def row(self, k: int, e: int) -> Row:
        v = self.value(k, e)
        return (k, e - self.size, e, v is None, *(v or (None, None)))

    def add(self, keys: list[int], ts: list[int], vals: list[Any]) -> tuple[list[bool], list[Row]]:
        S, D, L, W, E = self.size, self.slide, self.lateness, self.W, self.E
        late, touched = [], set()
        old = {k: self.value(k, E) for k in set(keys)} if E is not None else {}
        for k, t, v in zip(keys, ts, vals, strict=True):
            ok = [
                e
                for e in range((t // D + 1) * D, (t + S) // D * D + 1, D)
                if W is None or e - 1 + L > W
            ]
            late.append(not ok)
            for e in ok:
                self.win[(k, e)].append(v)
                self.keys.add(k)
                if E is not None and e <= E:
                    touched.add((k, e))
            if ok:
                self.top = ok[-1] if self.top is None else max(self.top, ok[-1])
        rows: list[Row] = []
        if self.mode == "every":
            rows = [self.row(k, e) for k, e in sorted(touched)]
        elif self.mode == "latest" and E is not None:
            rows = [
                self.row(k, E)
                for k in sorted({k for k, e in touched if e == E})
                if self.value(k, E) != old[k]
            ]
        return late, rows

    def advance(self, W: int) -> list[Row]:
        self.W = W
        return self._complete((W + 1) // self.slide * self.slide)

    def flush_all(self) -> list[Row]:
        return [] if self.top is None else self._complete(self.top + self.slide)

    def _complete(self, E_new: int) -> list[Row]:
        E0, D = self.E, self.slide
        if E0 is not None and E_new <= E0:
            return []
        self.E = E_new
        lo = -math.inf if E0 is None else E0
        if self.mode == "every":
            return [self.row(k, e) for (k, e), v in self.win.items() if v and lo < e <= E_new]
        if self.mode == "changes":
            ends = {(k, x) for (k, e) in self.win for x in (e, e + D) if lo < x <= E_new}
            return [self.row(k, e) for k, e in ends if self.value(k, e) != self.value(k, e - D)]
        return [
            self.row(k, E_new)
            for k in self.keys
            if self.value(k, E_new) != (None if E0 is None else self.value(k, E0))
        ]

    def check_history(self, store: dict[int, dict[int, Any]]) -> None:
        """An upsert store keyed by (key, end) reconstructs every completed window's value."""
        if self.E is None:
            return
        points = {(k, x) for (k, e) in self.win for x in (e, e + self.slide)}
        points |= {(k, e) for k, ends in store.items() for e in ends}
        for k, x in points:
            if x <= self.E:
                ends = [e for e in store.get(k, {}) if e <= x]
                got = store[k][max(ends)] if ends else None
                assert got == self.value(k, x), (k, x, got, self.value(k, x))


# ------------------------------------------------------------------------------------ driver ---


Op = tuple[str, Any]


def make_engine(size: int, slide: int, lateness: int, mode: Any) -> SlidingEngine:
    return SlidingEngine(
        [agg.count(), agg.count_distinct("v")], mode, lateness, size=size, slide=slide
    )


def make_rows(ts: list[int], vals: list[Any], dtype: pa.DataType, seq: int) -> Rows:
    return Rows(
        {"v": column(vals, dtype)},
        np.array(ts, dtype=np.int64),
        np.arange(seq, seq + len(ts), dtype=np.int64),
    )


def replay(engine: SlidingEngine, ops: list[Op], dtype: pa.DataType) -> list[list[Row]]:
    out = []
    wm = engine.watermark
    for kind, arg in ops:
        if kind == "add":
            keys, ts, vals = arg
            res = engine.add(np.array(keys, dtype=np.int64), make_rows(ts, vals, dtype, 0), wm)
            out.append(rows_of(res.emission))
        elif kind == "advance":
            wm = arg
            out.append(rows_of(engine.advance(arg)))
        else:
            out.append(rows_of(engine.flush_all()))
    return out


def run(sc: dict[str, Any], ops: list[Op] | None = None) -> SlidingEngine:
    """Drive engine and reference side by side, comparing each call's output."""
    size, slide, lateness, mode = sc["size"], sc["slide"], sc["lateness"], sc["mode"]
    dtype = KINDS[sc["kind"]][0]
    engine = make_engine(size, slide, lateness, mode)
    ref = Reference(size, slide, lateness, mode)
    store: dict[int, dict[int, Any]] = defaultdict(dict)
    seq = 0
    for kind, arg in sc["ops"] if ops is None else ops:
        if kind == "add":
            keys, ts, vals = arg
            res = engine.add(np.array(keys, np.int64), make_rows(ts, vals, dtype, seq), ref.W)
            seq += len(ts)
            late, want = ref.add(keys, ts, vals)
            assert res.late.tolist() == late
            got = rows_of(res.emission)
            if mode != "changes":
                assert Counter(got) == Counter(want), (sorted(got), sorted(want))
        elif kind == "advance":
            got, want = rows_of(engine.advance(arg)), ref.advance(arg)
            assert Counter(got) == Counter(want), (arg, sorted(got), sorted(want))
        else:
            got, want = rows_of(engine.flush_all()), ref.flush_all()
            assert Counter(got) == Counter(want), (sorted(got), sorted(want))
        check_key_order(got)
        for r in got:
            store[r[0]][r[2]] = None if r[3] else tuple(r[4:])
        if mode == "changes":
            ref.check_history(store)
    return engine


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    size, slide = draw(st.sampled_from(SHAPES))
    kind = draw(st.sampled_from(sorted(KINDS)))
    values = st.one_of(st.none(), KINDS[kind][1])
    nkeys = draw(st.sampled_from([1, 2, 5]))
    center = draw(st.integers(-60, 20))
    wm: int | None = None
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 16))):
        if draw(st.sampled_from(["add", "add", "advance"])) == "add":
            n = draw(st.integers(0, 12))
            keys = draw(st.lists(st.integers(0, nkeys - 1), min_size=n, max_size=n))
            ts = draw(st.lists(st.integers(center - 30, center + 30), min_size=n, max_size=n))
            if n and draw(st.booleans()):  # duplicates: the same record twice
                keys, ts = keys + keys[:1], ts + ts[:1]
            vals = draw(st.lists(values, min_size=len(ts), max_size=len(ts)))
            ops.append(("add", (keys, ts, vals)))
        else:
            jump = draw(
                st.sampled_from([1, 1, 2, 3, 5, slide, size, 2 * size + 1, 37, 10**7, 10**12])
            )
            wm = (center - 20 if wm is None else wm) + jump
            center = wm + draw(st.integers(-5, 25))
            ops.append(("advance", wm))
    if draw(st.booleans()):
        ops.append(("flush", None))
    return {
        "size": size,
        "slide": slide,
        "lateness": draw(st.sampled_from([0, 0, 1, 3, 8, 25])),
        "mode": draw(st.sampled_from(["every", "changes", "latest"])),
        "kind": kind,
        "ops": ops,
    }


SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenarios())
def test_matches_definition(sc: dict[str, Any]) -> None:
    run(sc)


@settings(SETTINGS, max_examples=250)
@given(scenarios())
def test_snapshot_restore_replays_identically(sc: dict[str, Any]) -> None:
    ops, dtype = sc["ops"], KINDS[sc["kind"]][0]
    cut = len(ops) // 2
    engine = run(sc, ops[:cut])
    state, rows_before = engine.snapshot(), engine.state_rows()
    first = replay(engine, ops[cut:], dtype)  # must not disturb the snapshot
    fresh = make_engine(sc["size"], sc["slide"], sc["lateness"], sc["mode"])
    fresh.restore(state)
    assert fresh.state_rows() == rows_before
    assert replay(fresh, ops[cut:], dtype) == first


# ----------------------------------------------------------------------------- examples ---


def test_example_sliding_changes() -> None:
    # size 10, slide 5: {a} at t=1 and {a, b} at t=7 for key 0; b null at t=8 counts no value
    sc = {"size": 10, "slide": 5, "lateness": 0, "mode": "changes", "kind": "str"}
    ops: list[Op] = [
        ("add", ([0, 0, 0, 0], [1, 7, 7, 8], ["a", "a", "b", None])),
        ("advance", 10**6),
    ]
    engine = make_engine(10, 5, 0, "changes")
    out = replay(engine, ops, pa.string())
    assert out[1] == [
        (0, -5, 5, False, 1, 1),
        (0, 0, 10, False, 4, 2),
        (0, 5, 15, False, 3, 2),
        (0, 10, 20, True, None, None),
    ]
    run({**sc, "ops": ops})


def test_late_correction_recounts_completed_windows() -> None:
    # lateness 20: after W=14 a record at t=3 still joins windows 5 and 10 (and 15 is pending)
    ops: list[Op] = [
        ("add", ([0, 0], [1, 6], [1, 2])),
        ("advance", 14),
        ("add", ([0, 0], [3, 4], [3, 1])),
        ("advance", 40),
    ]
    for mode in ("every", "changes", "latest"):
        run({"size": 10, "slide": 5, "lateness": 20, "mode": mode, "kind": "int", "ops": ops})


def test_value_kinds_can_change_between_batches() -> None:
    engine = make_engine(10, 10, 0, "every")
    t = np.array([1, 2], dtype=np.int64)
    for arr in (pa.array([1, 2]), pa.array([1.0, 2.5]), pa.array(["1", "x"]), pa.array([2, 3])):
        engine.add(np.zeros(2, np.int64), Rows({"v": arr}, t, np.arange(2)), None)
    out = rows_of(engine.advance(100))
    assert out == [(0, 0, 10, False, 8, 6)]  # 1 == 1.0 (as Python sets), "1" != 1


def test_routes_around_the_set_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sliding engine never merges Python sets: the set kernel's methods are not called."""

    def boom(*args: Any) -> Any:
        raise AssertionError("set-based count_distinct used by the sliding engine")

    for name in ("partial", "combine", "reduce", "result"):
        monkeypatch.setattr(agg._CountDistinct, name, boom)
    sc = {"size": 30, "slide": 5, "lateness": 8, "mode": "changes", "kind": "int"}
    ops: list[Op] = [
        ("add", ([0, 1, 0], [1, 12, 22], [1, 2, None])),
        ("advance", 20),
        ("add", ([0, 1], [15, 3], [3, 2])),
        ("flush", None),
    ]
    run({**sc, "ops": ops})


def test_matches_set_kernel_on_larger_runs() -> None:
    """Against the set-based kernel (routed through the ordinary path) on many blocks, keys and
    corrections; the distinct column must be identical row by row."""

    class SetDistinct(agg._CountDistinct):
        counts_distinct = False

    rng = np.random.default_rng(5)
    for size, slide, lateness, mode in [
        (60, 4, 13, "changes"),
        (48, 18, 30, "every"),
        (20, 20, 7, "latest"),
    ]:
        kernels = [agg.count_distinct("v"), SetDistinct("v"), agg.count_distinct("s")]
        engine = SlidingEngine(kernels, mode, lateness, size=size, slide=slide)
        wm, seq = -200, 0
        outputs = []
        for i in range(60):
            n = int(rng.integers(0, 150))
            ts = wm + rng.integers(-40, 60, n)
            raw = rng.integers(-3, 30, n)
            vals = pa.array([None if x < 0 else int(x) for x in raw], pa.int64())
            strs = pa.array([None if x < 0 else f"s{x % 7}" for x in raw], pa.string())
            keys = rng.integers(0, 4 + i, n)
            rows = Rows({"v": vals, "s": strs}, ts, np.arange(seq, seq + n))
            seq += n
            outputs.append(engine.add(keys, rows, wm).emission)
            wm += int(rng.choice([1, 3, 7, 20, slide, 5000 if i % 17 == 16 else 2]))
            outputs.append(engine.advance(wm))
        outputs.append(engine.flush_all())
        total = 0
        for em in outputs:
            if em is not None and len(em):
                assert em.results[0].equals(em.results[1])
                total += len(em)
        assert total > 500


def test_value_codes_are_reclaimed() -> None:
    """Fresh values every batch (ids): the value dictionary stays O(rows held), counts exact."""
    ops: list[Op] = []
    for i in range(200):
        ts = [i * 10 + 3 + j % 9 for j in range(60)]
        ids = [f"id{x}" for x in range(i * 60, (i + 1) * 60)]
        ops.append(("add", ([j % 3 for j in range(60)], ts, ids)))
        ops.append(("advance", i * 10 + 9))
    sc = {"size": 20, "slide": 10, "lateness": 5, "mode": "changes", "kind": "str", "ops": ops}
    tracker = run(sc)._presence[0][1]
    assert len(tracker._values) <= 2 * tracker.rows() + 4096 + 60 < 12_000


# --------------------------------------------------------------------------------- helpers ---


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 9)), max_size=40),
    st.sampled_from([1, 10**17]),
)
def test_pair_order_and_suffix_min(rows: list[tuple[int, int, int]], scale: int) -> None:
    pcs = np.array([(k << 32) | c for k, c, _ in rows], dtype=np.int64)
    s = np.array([x * scale for _, _, x in rows], dtype=np.int64)
    order = _pair_order(pcs, s, 1)  # huge scale: codes overflow, lexsort
    assert [(int(a), int(b)) for a, b in zip(pcs[order], s[order], strict=True)] == sorted(
        zip(pcs.tolist(), s.tolist(), strict=True)
    )
    if rows:
        pcs, s = pcs[order], s[order]
        x = (s // scale * 7 % 11) * 5 * scale  # huge scale: ranks instead of offsets
        got = _suffix_min(x, pcs, 5).tolist()
        want = [min(x[j] for j in range(i, len(x)) if pcs[j] == pcs[i]) for i in range(len(x))]
        assert got == want


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(-5, 5), st.sampled_from([1, -1])), max_size=30
    ),
    st.lists(st.tuples(st.integers(0, 4), st.integers(-6, 6)), max_size=10),
    st.sampled_from([1, 10**17]),
)
def test_sum_events(
    events: list[tuple[int, int, int]], queries: list[tuple[int, int]], scale: int
) -> None:
    D = 1  # huge scale: times overflow the (key, time) codes, ranks are used
    ek = np.array([k for k, _, _ in events], dtype=np.int64)
    ee = np.array([e for _, e, _ in events], dtype=np.int64)
    ed = np.array([d for _, _, d in events], dtype=np.int64)
    ee = ee * scale
    qk = np.array([k for k, _ in queries], dtype=np.int64)
    qe = np.array([e * scale for _, e in queries], dtype=np.int64)
    got = _sum_events(ek, ee, ed, qk, qe, D).tolist()
    want = [
        sum(d for k, e, d in zip(ek, ee, ed, strict=True) if k == a and e <= b)
        for a, b in zip(qk, qe, strict=True)
    ]
    assert got == want


def test_value_codes() -> None:
    codes = ValueCodes()
    a = codes.encode(pa.array([0.0, -0.0, math.nan, float("nan"), 1.0]))
    assert a[0] == a[1] and a[2] == a[3] and len(set(a.tolist())) == 3
    ints = ValueCodes()
    b = ints.encode(pa.array([2**64 - 1, 0, 2**64 - 1], pa.uint64()))
    assert b[0] == b[2] != b[1]
    nested = ValueCodes()
    c = nested.encode(pa.array([[1, 2], [1, 2], [3]]))
    assert c[0] == c[1] != c[2]
    strings = ValueCodes()
    d = strings.encode(pa.array(["x", "y", "x"]).dictionary_encode())
    e = strings.encode(pa.array(["y", "z"]))
    assert d[0] == d[2] and e[0] == d[1] and len(strings) == 3
    strings.compact(np.array([1, 2]))  # forget "x"
    assert strings.encode(pa.array(["y", "z", "x"])).tolist() == [0, 1, 2]


def test_tracker_counts_need_lateness() -> None:
    tracker = PairPresence("v", size=10, slide=5, lateness=0)
    with pytest.raises(AssertionError):
        tracker.counts(np.array([0]), np.array([5]), staged=False)
