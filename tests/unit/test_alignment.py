"""AlignmentGroup and PartitionSplit rules, exactly (no broker needed)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdasource.errors import ConfigError
from lambdasource.sources.alignment import Alignment, AlignmentGroup
from lambdasource.sources.kafka.split import PartitionSplit


def test_global_is_min_over_active_splits_and_holds_only_the_leaders() -> None:
    g = Alignment(max_drift=100).build()
    for name in ("a", "b", "c"):
        g.register(name)
    g.report("a", 1_000)
    g.report("b", 1_050)
    g.report("c", 1_120)
    assert g.global_watermark == 1_000
    assert g.allowed("a") and g.allowed("b") and not g.allowed("c")
    g.report("a", 900)  # regressions are ignored
    assert g.global_watermark == 1_000
    g.report("a", 1_000, idle=True)  # idle splits do not hold the others back
    assert g.global_watermark == 1_050 and g.allowed("c")
    g.report("b", 1_050, finished=True)
    assert g.global_watermark == 1_120
    assert g.max_skew == 120


def test_unknown_watermarks_and_the_gate() -> None:
    g = AlignmentGroup(10)
    g.register("lake", gate=True)
    g.register("p0")
    assert g.allowed("p0")  # no watermark yet: never held
    g.report("p0", 5_000)
    assert not g.allowed("p0")  # the lake has not reported: it may be far behind
    assert g.allowed("lake")
    g.report("lake", 4_995)
    assert g.allowed("p0")
    g.report("lake", 4_995, finished=True)
    assert g.allowed("p0")


async def test_wait_allowed_resumes_when_the_global_catches_up_and_counts_hold_time() -> None:
    g = AlignmentGroup(10)
    g.report("slow", 0)
    g.report("fast", 100)
    waiter = asyncio.create_task(g.wait_allowed("fast"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    g.report("slow", 50)
    await asyncio.sleep(0)
    assert not waiter.done()
    g.report("slow", 95)
    await asyncio.wait_for(waiter, 1)
    m = g.metrics()["splits"]["fast"]
    assert m["holds"] == 1 and m["held_s"] >= 0.04 and not m["held"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 10_000), st.booleans()), max_size=60))
def test_the_minimum_split_is_never_held(reports: list[tuple[int, int, bool]]) -> None:
    """Progress guarantee: whatever the reports, some active split with the global watermark
    may be read, and every allowed split is within global + max_drift."""
    g = AlignmentGroup(500)
    for split, mark, idle in reports:
        g.report(f"s{split}", mark, idle=idle)
        top = g.global_watermark
        if top is None:
            continue
        states = g.metrics()["splits"]
        active = [n for n, s in states.items() if not s["idle"] and not s["finished"]]
        assert any(g.allowed(n) and states[n]["watermark"] == top for n in active)
        for n in active:
            assert g.allowed(n) == (states[n]["watermark"] <= top + 500)


def test_negative_drift_is_rejected() -> None:
    with pytest.raises(ConfigError):
        AlignmentGroup(-1)


def is_idle(s: PartitionSplit) -> bool:
    return s.idle


def test_split_idleness_needs_caught_up_and_quiet_and_never_while_paused() -> None:
    s = PartitionSplit("t", 0, out_of_orderness=10, idle_timeout=1.0)
    s.position, s.highwater = 5, 10
    s.last_activity = 0.0
    assert not s.update_idle(100.0) and not s.idle  # behind: never idle
    s.position = 10
    s.responded(1, 0.5)  # a fetch response confirms the highwater
    assert not s.update_idle(0.5) and not s.idle  # caught up but not quiet long enough
    assert s.update_idle(1.5) and is_idle(s)
    s.set_paused(True, 2.0)
    assert not is_idle(s)
    s.update_idle(100.0)
    assert not is_idle(s)  # paused by alignment: never idle
    s.set_paused(False, 100.0)
    s.responded(2, 100.2)
    s.update_idle(100.5)
    assert not is_idle(s)  # the quiet timer restarted at resume
    s.responded(3, 101.4)
    s.update_idle(101.5)
    assert is_idle(s)


def test_split_without_fetch_responses_is_not_idle() -> None:
    """Broker unreachable: no fetch response confirms "caught up", so the split is not idle
    (after an outage a partition answering first must not carry the watermark past it); and
    the outage does not count as quiet: idleness needs ``idle_timeout`` of answered quiet."""
    s = PartitionSplit("t", 0, out_of_orderness=10, idle_timeout=1.0, confirm_window=2.0)
    s.position, s.highwater = 10, 10
    s.last_activity = 0.0
    assert not s.update_idle(5.0)  # never confirmed
    s.responded(7, 5.0)  # the first answer starts the quiet time: nothing was observed before
    assert not s.update_idle(5.5) and not is_idle(s)
    s.responded(8, 6.0)
    assert s.update_idle(6.0) and is_idle(s)
    s.responded(8, 7.0)  # the same stamp again: no new response
    assert s.update_idle(8.1) and not is_idle(s)  # confirmation older than 2 s
    s.responded(9, 18.0)  # the broker answers again after a 12 s outage
    assert not s.update_idle(18.1) and not is_idle(s)  # records may be on their way
    s.responded(10, 19.0)
    assert s.update_idle(19.0) and is_idle(s)


def test_split_watermark_floor_and_no_regression() -> None:
    s = PartitionSplit("t", 0, out_of_orderness=10, idle_timeout=1.0, floor=99)
    assert s.watermark == 99
    s.saw(50, 0.0)
    assert s.watermark == 99
    s.saw(200, 0.0)
    assert s.watermark == 190
    s.saw(150, 0.0)
    assert s.watermark == 190
