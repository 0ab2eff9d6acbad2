"""The window operator wired through the pipeline, on small hand-computed examples.

The exhaustive comparison against the DuckDB reference lives in tests/property; these pin the
wiring: output schema and order, key types, deletion rows, the late side output, flush modes.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

import lambdasource as ls

S = 1_000_000  # µs per second


def table(rows: list[tuple[int, Any, int]]) -> pa.Table:
    """Rows of (seconds, key, x)."""
    ts, k, x = zip(*rows, strict=True)
    return pa.table(
        {"ts": pa.array([t * 1000 for t in ts], pa.int64()), "k": list(k), "x": list(x)}
    )


def run(
    rows: list[tuple[int, Any, int]],
    window: ls.Sliding | ls.Session,
    emit: str,
    *,
    flush: str = "watermark",
    **source: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], ls.Pipeline]:
    p = ls.Pipeline(flush=flush)
    w = p.source(ls.MemorySource(table(rows), "ts", **source)).key_by("k").window(window, emit=emit)
    late = w.late().sink(ls.CollectSink())
    out = w.aggregate(n=ls.count(), total=ls.sum("x")).sink(ls.CollectSink())
    p.run_sync()

    def simple(t: pa.Table) -> list[dict[str, Any]]:
        result = []
        for row in t.to_pylist():
            for c in ("ts", "window_start", "window_end"):
                if c in row:
                    row[c] = int(row[c].timestamp()) if row[c] is not None else None
            result.append(row)
        return result

    return simple(out.table()), simple(late.table()), p


def test_tumbling_every_with_string_keys_and_schema() -> None:
    rows, late, p = run(
        [(1, "a", 1), (5, "a", 2), (12, "a", 3), (3, "b", 4)], ls.Tumbling("10s"), "every"
    )
    assert sorted(rows, key=lambda r: r["k"]) == [
        {"k": "a", "window_start": 0, "window_end": 10, "n": 2, "total": 3},
        {"k": "b", "window_start": 0, "window_end": 10, "n": 1, "total": 4},
    ]  # [10, 20) is not complete at the final watermark 12s
    assert late == []
    assert p.metrics()["operators"]["window"]["records_in"] == 4


def test_sliding_changes_emits_deletion_when_the_window_empties() -> None:
    rows, _, _ = run([(1, "a", 1), (12, "a", 5)], ls.Sliding("20s", "10s"), "changes", until=40 * S)
    assert rows == [
        {"k": "a", "window_start": -10, "window_end": 10, "n": 1, "total": 1, "_deleted": False},
        {"k": "a", "window_start": 0, "window_end": 20, "n": 2, "total": 6, "_deleted": False},
        {"k": "a", "window_start": 10, "window_end": 30, "n": 1, "total": 5, "_deleted": False},
        {
            "k": "a",
            "window_start": 20,
            "window_end": 40,
            "n": None,
            "total": None,
            "_deleted": True,
        },
    ]


def test_latest_holds_only_the_newest_window_per_step() -> None:
    rows, _, _ = run(
        [(1, "a", 1), (12, "a", 5)],
        ls.Sliding("20s", "10s"),
        "latest",
        batch_size=1,
        out_of_orderness="0s",
        until=40 * S,
    )
    # watermark 1s: nothing complete; 12s: newest complete end 10s; end (40s-1µs): end 40s, empty
    assert rows == [
        {"k": "a", "window_start": -10, "window_end": 10, "n": 1, "total": 1, "_deleted": False},
        {
            "k": "a",
            "window_start": 20,
            "window_end": 40,
            "n": None,
            "total": None,
            "_deleted": True,
        },
    ]


def test_late_records_go_to_the_late_output_with_input_columns() -> None:
    rows, late, p = run(
        [(15, "a", 1), (3, "a", 2), (18, "a", 3)],
        ls.Tumbling("10s"),
        "every",
        batch_size=1,
        out_of_orderness="0s",
        until=20 * S,
    )
    assert late == [{"ts": 3, "k": "a", "x": 2}]
    assert rows == [{"k": "a", "window_start": 10, "window_end": 20, "n": 2, "total": 4}]
    assert p.metrics()["late"] == 1


def test_flush_all_completes_open_windows_at_the_end() -> None:
    rows, _, _ = run([(1, "a", 1), (12, "a", 3)], ls.Tumbling("10s"), "every", flush="all")
    assert rows == [
        {"k": "a", "window_start": 0, "window_end": 10, "n": 1, "total": 1},
        {"k": "a", "window_start": 10, "window_end": 20, "n": 1, "total": 3},
    ]


def test_session_windows_merge_by_gap() -> None:
    rows, _, _ = run([(1, 7, 1), (4, 7, 2), (20, 7, 3)], ls.Session("5s"), "every", until=60 * S)
    assert rows == [
        {"k": 7, "window_start": 1, "window_end": 9, "n": 2, "total": 3},
        {"k": 7, "window_start": 20, "window_end": 25, "n": 1, "total": 3},
    ]


def test_window_after_union_waits_for_both_inputs() -> None:
    p = ls.Pipeline()
    a = p.source(
        ls.MemorySource(
            table([(1, "a", 1), (30, "a", 1)]), "ts", batch_size=1, out_of_orderness="0s"
        )
    )
    b = p.source(ls.MemorySource(table([(2, "a", 10)]), "ts"))
    out = a.union(b).key_by("k").window(ls.Tumbling("10s")).aggregate(total=ls.sum("x"))
    sink = out.sink(ls.CollectSink())
    p.run_sync()
    assert sink.table().column("total").to_pylist() == [11]  # b's record is never late
