"""SessionEngine against a brute-force reference written from the definition.

The reference (:class:`Reference`) keeps every session as a Python list of its records and merges
one record at a time; it judges lateness by the session a record ends up in after the batch, and
derives the emitted rows of each mode from the set of completed sessions before and after each
call. Independently of both, :func:`offline_sessions` sessionises all accepted records at once, and
replaying the engine's rows into upsert stores must reproduce it after ``flush_all``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lambdasource.errors import ConfigError, IncompatibleStateError
from lambdasource.windows import aggregates as agg
from lambdasource.windows.aggregates import Aggregate, Kernel, Rows
from lambdasource.windows.engine import Emission, EmitMode
from lambdasource.windows.session import SessionEngine, segmented_cummax

SCHEMA = pa.schema([("v", pa.int64()), ("s", pa.string())])
MODES: tuple[EmitMode, ...] = ("every", "changes", "latest")

Row = tuple[int, int, int, bool, tuple[Any, ...]]  # key, start, end, deleted, aggregates


def make_kernels() -> list[Kernel]:
    kernels = [
        agg.count(),
        agg.count("v"),
        agg.sum("v"),
        agg.min("v"),
        agg.max("v"),
        agg.mean("v"),
        agg.first("v"),
        agg.last("v"),
        agg.count_distinct("v"),
        agg.min("s"),
        agg.max("s"),
        agg.first("s"),
        agg.last("s"),
        agg.count_distinct("s"),
    ]
    for k in kernels:
        k.bind(SCHEMA, "test")
    return kernels


@dataclass(frozen=True)
class Rec:
    key: int
    t: int
    seq: int
    v: int | None
    s: str | None


def aggregates_of(recs: list[Rec]) -> tuple[Any, ...]:
    """The expected values of ``make_kernels()`` over ``recs``, computed naively."""
    vs = [r.v for r in recs if r.v is not None]
    ss = [r.s for r in recs if r.s is not None]
    by_time = sorted(recs, key=lambda r: (r.t, r.seq))
    return (
        len(recs),
        len(vs),
        sum(vs) if vs else None,
        min(vs) if vs else None,
        max(vs) if vs else None,
        sum(vs) / len(vs) if vs else None,
        by_time[0].v,
        by_time[-1].v,
        len(set(vs)),
        min(ss) if ss else None,
        max(ss) if ss else None,
        by_time[0].s,
        by_time[-1].s,
        len(set(ss)),
    )


NULLS: tuple[Any, ...] = (None,) * len(make_kernels())


# ------------------------------------------------------------------------------ reference ---


@dataclass
class RSession:
    start: int
    end: int
    recs: list[Rec]
    olds: list[RSession] = field(default_factory=list)  # held sessions merged in (this add)
    new: list[int] = field(default_factory=list)  # batch positions merged in (this add)

    def row(self, key: int) -> Row:
        return (key, self.start, self.end, False, aggregates_of(self.recs))


class Reference:
    """Per-record simulation of the session semantics, straight from the definition."""

    def __init__(self, emit: EmitMode, lateness: int, gap: int) -> None:
        self.emit, self.lateness, self.gap = emit, lateness, gap
        self.sessions: dict[int, list[RSession]] = {}
        self.wm: int | None = None
        # sessions dropped after allowed lateness; a later record overlapping one opens a new
        # session beside it (as in Flink), so the offline sessionisation no longer applies
        self.dropped: dict[int, list[tuple[int, int]]] = {}
        self.reopened = False

    def complete(self, end: int) -> bool:
        return self.wm is not None and end - 1 <= self.wm

    def held(self) -> int:
        return sum(len(v) for v in self.sessions.values())

    def add(self, recs: list[Rec]) -> tuple[list[bool], list[Row]]:
        late = [False] * len(recs)
        rows: list[Row] = []
        for key in sorted({r.key for r in recs}):
            old = self.sessions.get(key, [])
            nodes = [RSession(s.start, s.end, list(s.recs), [s], []) for s in old]
            for i, r in enumerate(recs):
                if r.key != key:
                    continue
                node = RSession(r.t, r.t + self.gap, [r], [], [i])
                merged = True
                while merged:  # merge with everything the (growing) window overlaps
                    merged = False
                    for other in nodes:
                        if other.start < node.end and node.start < other.end:
                            nodes.remove(other)
                            node = RSession(
                                min(node.start, other.start),
                                max(node.end, other.end),
                                other.recs + node.recs,
                                other.olds + node.olds,
                                other.new + node.new,
                            )
                            merged = True
                            break
                nodes.append(node)
            result: list[RSession] = []
            for nd in nodes:
                if self.wm is not None and nd.end - 1 + self.lateness <= self.wm:
                    assert not nd.olds, "a retained session can never be late"
                    for i in nd.new:
                        late[i] = True
                else:
                    result.append(nd)
            result.sort(key=lambda s: s.start)
            if any(len(s.olds) >= 2 for s in result if s.new):
                event("bridge: a batch merged several held sessions")
            self.reopened |= any(
                s.new and a < s.end and s.start < b
                for s in result
                for a, b in self.dropped.get(key, [])
            )
            rows.extend(self._corrections(key, old, result))
            self.sessions[key] = [RSession(s.start, s.end, s.recs) for s in result]
            if not self.sessions[key]:
                del self.sessions[key]
        return late, rows

    def _corrections(self, key: int, old: list[RSession], new: list[RSession]) -> list[Row]:
        changed = [s for s in new if s.new]
        if not changed:
            return []
        if self.emit == "every":
            return [s.row(key) for s in changed if self.complete(s.end)]
        if self.emit == "changes":
            out = [
                (key, o.start, o.end, True, NULLS)
                for s in changed
                for o in s.olds
                if self.complete(o.end) and o.end != s.end
            ]
            out += [s.row(key) for s in changed if self.complete(s.end)]
            return sorted(out, key=lambda r: (r[2], not r[3]))
        before = max((o for o in old if self.complete(o.end)), key=lambda s: s.end, default=None)
        after = max((s for s in new if self.complete(s.end)), key=lambda s: s.end, default=None)
        if after is not None and (
            before is None or after.end > before.end or (after.end == before.end and after.new)
        ):
            return [after.row(key)]
        if before is not None and (after is None or after.end < before.end):
            return [(key, before.start, before.end, True, NULLS)]
        return []

    def advance(self, wm: int) -> list[Row]:
        if self.wm is not None and wm <= self.wm:
            return []
        prev, self.wm = self.wm, wm
        rows: list[Row] = []
        for key in sorted(self.sessions):
            sessions = self.sessions[key]
            newly = [s for s in sessions if s.end - 1 <= wm and (prev is None or s.end - 1 > prev)]
            if self.emit == "latest":
                newly = newly[-1:]
            rows.extend(s.row(key) for s in newly)
            kept = [s for s in sessions if s.end - 1 + self.lateness > wm]
            self.dropped.setdefault(key, []).extend(
                (s.start, s.end) for s in sessions if s.end - 1 + self.lateness <= wm
            )
            if kept:
                self.sessions[key] = kept
            else:
                del self.sessions[key]
        return rows

    def flush_all(self) -> list[Row]:
        rows: list[Row] = []
        for key in sorted(self.sessions):
            newly = [s for s in self.sessions[key] if self.wm is None or s.end - 1 > self.wm]
            if self.emit == "latest":
                newly = newly[-1:]
            rows.extend(s.row(key) for s in newly)
        self.sessions = {}
        self.wm = 2**63 - 1
        return rows


def offline_sessions(recs: list[Rec], gap: int) -> dict[tuple[int, int], Row]:
    """All sessions of ``recs`` at once: {(key, end): row}."""
    groups: list[list[Rec]] = []
    for r in sorted(recs, key=lambda r: (r.key, r.t)):
        if groups and groups[-1][-1].key == r.key and r.t - groups[-1][-1].t < gap:
            groups[-1].append(r)
        else:
            groups.append([r])
    return {
        (g[0].key, g[-1].t + gap): (g[0].key, g[0].t, g[-1].t + gap, False, aggregates_of(g))
        for g in groups
    }


# ---------------------------------------------------------------------------------- driver ---


def to_rows(emission: Emission | None) -> list[Row]:
    if emission is None:
        return []
    values = [r.to_pylist() for r in emission.results]
    return [
        (
            int(emission.key_ids[i]),
            int(emission.starts[i]),
            int(emission.ends[i]),
            bool(emission.deleted[i]),
            tuple(col[i] for col in values),
        )
        for i in range(len(emission))
    ]


def make_rows(recs: list[Rec]) -> tuple[np.ndarray, Rows]:
    keys = np.array([r.key for r in recs], dtype=np.int64)
    rows = Rows(
        {
            "v": pa.array([r.v for r in recs], type=pa.int64()),
            "s": pa.array([r.s for r in recs], type=pa.string()),
        },
        np.array([r.t for r in recs], dtype=np.int64),
        np.array([r.seq for r in recs], dtype=np.int64),
    )
    return keys, rows


Op = tuple[str, Any]


@dataclass
class Scenario:
    """``ops``: ("add", [(key, t, v, s)]) or ("advance", step). With ``relative`` the times of a
    batch are offsets from the current watermark (``base`` before the first), which keeps records
    near the watermark: late ones, corrections and bridges of completed sessions."""

    emit: EmitMode
    gap: int
    lateness: int
    base: int
    relative: bool
    ops: list[Op]
    snapshot_at: int

    def steps(self) -> list[tuple[str, list[Rec], int | None]]:
        """The absolute calls: ("add", records, watermark) / ("advance", [], new watermark)."""
        out: list[tuple[str, list[Rec], int | None]] = []
        wm: int | None = None
        seq = 0
        for kind, arg in self.ops:
            if kind == "add":
                origin = (self.base if wm is None else wm) if self.relative else 0
                recs = [Rec(k, origin + t, seq + i, v, s) for i, (k, t, v, s) in enumerate(arg)]
                seq += len(recs)
                out.append(("add", recs, wm))
            else:
                wm = self.base if wm is None else wm + arg
                out.append(("advance", [], wm))
        return out


def check_sorted(rows: list[Row]) -> None:
    """Rows of one key appear in increasing window-end order."""
    last: dict[int, int] = {}
    for key, _, end, _, _ in rows:
        assert end > last.get(key, -(2**63)), rows
        last[key] = end


def run(sc: Scenario) -> None:
    """Drive engine and reference through ``sc``; compare every call, then check the stores."""
    engine = SessionEngine(make_kernels(), sc.emit, sc.lateness, gap=sc.gap)
    ref = Reference(sc.emit, sc.lateness, sc.gap)
    accepted: list[Rec] = []
    emitted: list[Row] = []
    snapshot: Any = None
    after_snapshot: list[list[Row]] = []
    steps = sc.steps()
    for index, (kind, recs, wm) in enumerate(steps):
        if index == sc.snapshot_at:
            snapshot = engine.snapshot()
        if kind == "add":
            keys, rows = make_rows(recs)
            result = engine.add(keys, rows, wm)
            late, expected = ref.add(recs)
            assert result.late.dtype == bool
            assert result.late.tolist() == late
            got = to_rows(result.emission)
            accepted.extend(r for r, is_late in zip(recs, late, strict=True) if not is_late)
            if any(late):
                event("late records")
            if any(row[3] for row in got):
                event("deletion rows")
            elif got:
                event("corrections or sessions complete on arrival")
        else:
            assert wm is not None
            got = to_rows(engine.advance(wm))
            expected = ref.advance(wm)
        assert got == expected, (index, kind)
        check_sorted(got)
        assert engine.state_rows() == ref.held()
        emitted.extend(got)
        if snapshot is not None:
            after_snapshot.append(got)
    got = to_rows(engine.flush_all())
    assert got == ref.flush_all()
    check_sorted(got)
    emitted.extend(got)
    assert engine.state_rows() == 0
    if not ref.reopened:
        check_stores(sc.emit, emitted, offline_sessions(accepted, sc.gap) if accepted else {})
    elif sc.emit == "changes":  # still a partition of the accepted records
        store: dict[tuple[int, int], Row] = {}
        for row in emitted:
            if row[3]:
                del store[(row[0], row[2])]
            else:
                store[(row[0], row[2])] = row
        assert sum(row[4][0] for row in store.values()) == len(accepted)
    if snapshot is not None:
        # a fresh engine restored from the mid-run snapshot repeats the rest of the run
        other = SessionEngine(make_kernels(), sc.emit, sc.lateness, gap=sc.gap)
        other.restore(snapshot)
        replayed = []
        for kind, recs, wm in steps[sc.snapshot_at :]:
            if kind == "add":
                replayed.append(to_rows(other.add(*make_rows(recs), wm).emission))
            else:
                assert wm is not None
                replayed.append(to_rows(other.advance(wm)))
        assert replayed == after_snapshot


def check_stores(emit: EmitMode, rows: list[Row], sessions: dict[tuple[int, int], Row]) -> None:
    """Replaying the output into the store of its mode yields the offline sessions."""
    if emit == "every":
        last: dict[tuple[int, int], Row] = {}
        for row in rows:
            assert not row[3]
            last[(row[0], row[2])] = row
        for k, session in sessions.items():
            assert last[k] == session
    elif emit == "changes":
        store: dict[tuple[int, int], Row] = {}
        for row in rows:
            if row[3]:
                assert (row[0], row[2]) in store, "deletion of a row never emitted"
                del store[(row[0], row[2])]
            else:
                store[(row[0], row[2])] = row
        assert store == sessions
    else:
        newest: dict[int, Row] = {}
        for session in sessions.values():
            if session[0] not in newest or session[2] > newest[session[0]][2]:
                newest[session[0]] = session
        plain: dict[int, Row] = {}
        versioned: dict[int, Row] = {}  # a row never overwrites a newer version (window end)
        for row in rows:
            if row[3]:
                plain.pop(row[0], None)
                if row[0] in versioned and versioned[row[0]][2] <= row[2]:
                    del versioned[row[0]]
            else:
                plain[row[0]] = row
                if row[0] not in versioned or versioned[row[0]][2] <= row[2]:
                    versioned[row[0]] = row
        assert plain == newest
        assert versioned == newest


@st.composite
def scenarios(draw: st.DrawFn, emit: EmitMode) -> Scenario:
    gap = draw(st.sampled_from([1, 2, 3, 7, 15]))
    lateness = draw(st.sampled_from([0, 1, 4, 10, 40]))
    nkeys = draw(st.sampled_from([1, 2, 5]))
    span = draw(st.sampled_from([8, 30, 100]))
    relative = draw(st.booleans())
    record = st.tuples(
        st.integers(0, nkeys - 1),
        st.integers(-span, span // 2) if relative else st.integers(-span, span),
        st.none() | st.integers(-3, 3),
        st.none() | st.sampled_from(["a", "b", "cc", "d"]),
    )
    op = st.one_of(
        st.tuples(st.just("add"), st.lists(record, max_size=10)),
        st.tuples(st.just("advance"), st.integers(1, max(1, span // 3))),
    )
    ops = draw(st.lists(op, max_size=25))
    base = draw(st.integers(-span - gap, span))
    snapshot_at = draw(st.integers(0, len(ops)))
    return Scenario(emit, gap, lateness, base, relative, ops, snapshot_at)


PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios("every"))
def test_every_matches_reference(sc: Scenario) -> None:
    run(sc)


@PROPERTY
@given(scenarios("changes"))
def test_changes_matches_reference(sc: Scenario) -> None:
    run(sc)


@PROPERTY
@given(scenarios("latest"))
def test_latest_matches_reference(sc: Scenario) -> None:
    run(sc)


# ------------------------------------------------------------------------------- examples ---


def new_engine(emit: EmitMode, lateness: int = 0, gap: int = 10) -> SessionEngine:
    return SessionEngine(make_kernels(), emit, lateness, gap=gap)


_SEQ = iter(range(10**9))


def batch(*items: tuple[int, int]) -> tuple[np.ndarray, Rows]:
    """(key, t) pairs with v = t, s = None."""
    return make_rows([Rec(k, t, next(_SEQ), t, None) for k, t in items])


def spans(emission: Emission | None) -> list[tuple[int, int, int, bool]]:
    return [(k, s, e, d) for k, s, e, d, _ in to_rows(emission)]


def counts(emission: Emission | None) -> list[Any]:
    return [r[4][0] for r in to_rows(emission)]


@pytest.mark.parametrize("emit", MODES)
def test_exactly_gap_apart_does_not_merge(emit: EmitMode) -> None:
    engine = new_engine(emit)
    engine.add(*batch((0, 0), (0, 10), (1, 0), (1, 9)), None)
    assert engine.state_rows() == 3
    out = engine.flush_all()
    if emit == "latest":
        assert spans(out) == [(0, 10, 20, False), (1, 0, 19, False)]
    else:
        assert spans(out) == [(0, 0, 10, False), (0, 10, 20, False), (1, 0, 19, False)]


@pytest.mark.parametrize("emit", MODES)
def test_completion_at_end_minus_one(emit: EmitMode) -> None:
    engine = new_engine(emit)
    engine.add(*batch((0, -5)), None)  # session [-5, 5)
    assert engine.advance(3) is None
    assert spans(engine.advance(4)) == [(0, -5, 5, False)]
    assert engine.state_rows() == 0  # L = 0: dropped once complete


def test_bridging_record_merges_open_sessions() -> None:
    engine = new_engine("every")
    engine.add(*batch((0, 0), (0, 30)), None)
    assert engine.state_rows() == 2
    engine.add(*batch((0, 15)), None)  # [15, 25) overlaps neither: three sessions
    assert engine.state_rows() == 3
    engine.add(*batch((0, 8), (0, 22)), None)  # bridges everything
    assert engine.state_rows() == 1
    out = engine.advance(100)
    assert spans(out) == [(0, 0, 40, False)]
    assert counts(out) == [5]


def test_bridging_a_completed_and_an_open_session() -> None:
    # C = [0, 10) completes at W = 9; O = [15, 25) is open; a record at 7 bridges them.
    outs: dict[str, list[tuple[int, int, int, bool]]] = {}
    for emit in MODES:
        engine = new_engine(emit, lateness=20)
        engine.add(*batch((0, 0), (0, 15)), None)
        assert spans(engine.advance(9)) == [(0, 0, 10, False)]
        result = engine.add(*batch((0, 7)), 9)
        assert not result.late.any()
        outs[emit] = spans(result.emission)
        assert spans(engine.advance(24)) == [(0, 0, 25, False)]
    assert outs == {
        "every": [],  # re-emitted when the merged session completes
        "changes": [(0, 0, 10, True)],  # [0, 10) no longer exists
        "latest": [(0, 0, 10, True)],  # the key's newest completed session was absorbed
    }


def test_correction_modes() -> None:
    # two completed sessions [0, 10) and [12, 22); a record at 8 merges them into [0, 22)
    results = {}
    for emit in MODES:
        engine = new_engine(emit, lateness=100)
        engine.add(*batch((0, 0), (0, 12)), None)
        engine.advance(50)
        result = engine.add(*batch((0, 8)), 50)
        results[emit] = spans(result.emission)
        assert counts(result.emission)[-1] == 3
    assert results == {
        "every": [(0, 0, 22, False)],
        "changes": [(0, 0, 10, True), (0, 0, 22, False)],
        "latest": [(0, 0, 22, False)],
    }


def test_lateness_is_judged_by_the_final_session() -> None:
    engine = new_engine("every", lateness=0)
    engine.add(*batch((0, 0)), None)
    engine.advance(100)
    # 85 alone would be late ([85, 95)), but 93 in the same batch makes [85, 103): accepted;
    # 50 alone is late; 60 is within a late component with 55.
    result = engine.add(*batch((0, 85), (1, 50), (0, 93), (1, 55), (1, 60)), 100)
    assert result.late.tolist() == [False, True, False, True, True]
    assert result.emission is None
    assert spans(engine.advance(102)) == [(0, 85, 103, False)]


def test_empty_batch_and_no_watermark() -> None:
    engine = new_engine("changes")
    keys, rows = make_rows([])
    result = engine.add(keys, rows, None)
    assert result.late.shape == (0,)
    assert result.emission is None
    assert engine.flush_all() is None


def test_add_with_newer_watermark_advances_first() -> None:
    engine = new_engine("every")
    engine.add(*batch((0, 0)), None)
    result = engine.add(*batch((0, 1)), 50)  # W = 50 completes [0, 10); 1 is late
    assert result.late.tolist() == [True]
    assert spans(result.emission) == [(0, 0, 10, False)]
    assert engine.watermark == 50


def test_stale_and_repeated_watermarks_are_ignored() -> None:
    engine = new_engine("every")
    engine.add(*batch((0, 0)), None)
    assert engine.advance(5) is None
    assert engine.advance(5) is None
    assert engine.advance(2) is None
    assert engine.watermark == 5


def test_snapshot_is_immutable() -> None:
    engine = new_engine("every", lateness=10)
    engine.add(*batch((0, 0), (1, 3)), None)
    snap = engine.snapshot()
    engine.add(*batch((0, 5), (2, 1)), None)
    engine.advance(12)
    other = new_engine("every", lateness=10)
    other.restore(snap)
    assert other.state_rows() == 2
    assert spans(other.flush_all()) == [(0, 0, 10, False), (1, 3, 13, False)]
    with pytest.raises(ValueError, match="read-only"):
        snap["sessions"].column("end").chunk(0).to_numpy()[0] = 1


def test_restore_rejects_foreign_state() -> None:
    engine = new_engine("every", gap=10)
    with pytest.raises(IncompatibleStateError):
        engine.restore({"something": 1})
    with pytest.raises(IncompatibleStateError, match="gap=5"):
        engine.restore(new_engine("every", gap=5).snapshot())


def test_config_errors() -> None:
    with pytest.raises(ConfigError):
        SessionEngine(make_kernels(), "every", 0, gap=0)
    with pytest.raises(ConfigError):
        SessionEngine(make_kernels(), "every", -1, gap=5)
    with pytest.raises(ConfigError):
        SessionEngine(make_kernels(), "sometimes", 0, gap=5)  # type: ignore[arg-type]


def test_user_defined_aggregate_merges_held_state() -> None:
    class Total(Aggregate):
        output_type = pa.int64()

        def init(self) -> int:
            return 0

        def update(self, state: int, values: pa.Array) -> int:
            return state + (pc.sum(values).as_py() or 0)

        def merge(self, a: int, b: int) -> int:
            return a + b

        def result(self, state: int) -> int:
            return state

    engine = SessionEngine([Total("v").kernel()], "every", 0, gap=10)
    engine.add(*batch((0, 1), (0, 25)), None)
    engine.add(*batch((0, 12), (0, 3), (0, 16)), None)  # bridges [1, 11) and [25, 35)
    out = engine.flush_all()
    assert to_rows(out) == [(0, 1, 35, False, (57,))]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-50, 50)), max_size=60))
def test_segmented_cummax(items: list[tuple[int, int]]) -> None:
    items.sort(key=lambda x: x[0])
    segs = np.array([s for s, _ in items], dtype=np.int64)
    vals = np.array([v for _, v in items], dtype=np.int64)
    expected = []
    for i, (s, v) in enumerate(items):
        prev = [w for (t, w) in items[:i] if t == s]
        expected.append(max([v, *prev]))
    assert segmented_cummax(vals, segs).tolist() == expected


def test_many_keys_in_order_scale() -> None:
    """200k records over 20k keys in 40 batches: fast, and equal to an offline sessionisation."""
    rng = np.random.default_rng(7)
    n, nkeys, gap = 200_000, 20_000, 50
    keys = rng.integers(0, nkeys, n).astype(np.int64)
    times = np.sort(rng.integers(0, 100_000, n)).astype(np.int64)
    times += rng.integers(-20, 20, n)  # a little disorder
    engine = SessionEngine([agg.count()], "every", 30, gap=gap)
    out: list[Emission] = []
    started = time.perf_counter()
    for lo in range(0, n, 5_000):
        sl = slice(lo, lo + 5_000)
        wm = int(times[:lo].max()) - 40 if lo else None
        if wm is not None:
            em = engine.advance(wm)
            if em is not None:
                out.append(em)
        rows = Rows({}, times[sl], np.arange(lo, lo + 5_000, dtype=np.int64))
        result = engine.add(keys[sl], rows, wm)
        assert not result.late.any()
        if result.emission is not None:
            out.append(result.emission)
        assert engine.state_rows() <= nkeys * 2
    final = engine.flush_all()
    if final is not None:
        out.append(final)
    elapsed = time.perf_counter() - started
    em = Emission.concat(out)
    assert em is not None
    # offline: sort by (key, t), split where the gap to the previous record of the key >= gap
    order = np.lexsort((times, keys))
    k, t = keys[order], times[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (k[1:] != k[:-1]) | (t[1:] - t[:-1] >= gap)
    sessions = int(new.sum())
    assert len(em) == sessions  # no corrections here: every session emitted once
    assert int(np.asarray(em.results[0]).sum()) == n
    assert elapsed < 20, elapsed
