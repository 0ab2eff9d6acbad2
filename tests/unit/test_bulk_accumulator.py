"""The state bootstrap's :class:`SliceAccumulator` equals a plain group-by over all its rows.

Oracle: every row added, grouped in Python per (key id, slice start) — count, non-null count,
sums, mean, min, max, first/last by (time, arrival) — against the accumulator's
``result()`` (its kernels' ``result`` per (key, slice), and the (key, slice) list itself: unique,
sorted). Inputs: dense keys (the ordered merge's per-key arrays) and keys over 2 and 3 radix
digits (the sorting merge), times in time order (the lake's: chunks share boundary slices,
which the ordered merge combines), reversed (runs out of order: the sorting merge) or
shuffled, duplicate times, null values, empty batches, every chunk size from one row to all.
Values are multiples of 0.25, so float sums are exact in any addition order.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lambdasource.windows import bulk
from lambdasource.windows.aggregates import Kernel, Rows
from lambdasource.windows.bulk import SliceAccumulator

WIDTH = 10_000_000  # slice width, µs
SCHEMA = pa.schema([("x", pa.int64()), ("y", pa.float64()), ("s", pa.string())])

Row = tuple[int, int, int | None, float | None, str | None]  # key, time, x, y, s


def _kernels() -> dict[str, Kernel]:
    kernels = {
        "n": ls.count(),
        "nx": ls.count("x"),
        "sx": ls.sum("x"),
        "sy": ls.sum("y"),
        "my": ls.mean("y"),
        "lo": ls.min("x"),
        "hi": ls.max("y"),
        "hs": ls.max("s"),
        "f": ls.first("x"),
        "la": ls.last("s"),
    }
    for name, kernel in kernels.items():
        kernel.bind(SCHEMA, name)
    return kernels


def _oracle(rows: list[Row]) -> dict[tuple[int, int], dict[str, Any]]:
    """Per (key, slice start): each aggregate's value, from the rows in arrival order."""
    groups: dict[tuple[int, int], list[tuple[int, int, Row]]] = {}
    for seq, row in enumerate(rows):
        groups.setdefault((row[0], row[1] // WIDTH * WIDTH), []).append((row[1], seq, row))
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for pair, members in groups.items():
        xs = [r[2] for _, _, r in members if r[2] is not None]
        ys = [r[3] for _, _, r in members if r[3] is not None]
        ss = [r[4] for _, _, r in members if r[4] is not None]
        by_time = sorted(members, key=lambda m: (m[0], m[1]))
        out[pair] = {
            "n": len(members),
            "nx": len(xs),
            "sx": sum(xs) if xs else None,
            "sy": sum(ys) if ys else None,
            "my": sum(ys) / len(ys) if ys else None,
            "lo": min(xs) if xs else None,
            "hi": max(ys) if ys else None,
            "hs": max(ss) if ss else None,
            "f": by_time[0][2][2],
            "la": by_time[-1][2][4],
        }
    return out


def _accumulate(rows: list[Row], batch_sizes: list[int], chunk_rows: int) -> dict[str, Any]:
    """The accumulator's result over ``rows`` added in batches of ``batch_sizes`` (the rest
    in one last batch; a chunk is the batches since the last until ``chunk_rows`` rows), as
    ``{"pairs": [(key, slice)…], name: [values…]}``."""
    kernels = _kernels()
    accumulator = SliceAccumulator(list(kernels), list(kernels.values()), WIDTH, chunk_rows)
    start = 0
    for size in [*batch_sizes, len(rows)]:
        batch = rows[start : start + size]
        accumulator.add(
            np.array([r[0] for r in batch], dtype=np.int64),
            Rows(
                {
                    "x": pa.array([r[2] for r in batch], pa.int64()),
                    "y": pa.array([r[3] for r in batch], pa.float64()),
                    "s": pa.array([r[4] for r in batch], pa.string()),
                },
                np.array([r[1] for r in batch], dtype=np.int64),
                np.arange(start, start + len(batch), dtype=np.int64),
            ),
        )
        start += len(batch)
    assert accumulator.rows == len(rows)
    keys, slices, parts = accumulator.result()
    result: dict[str, Any] = {"pairs": list(zip(keys.tolist(), slices.tolist(), strict=True))}
    for (name, kernel), state in zip(kernels.items(), parts, strict=True):
        result[name] = kernel.result(state).to_pylist()
    return result


def _check(rows: list[Row], batch_sizes: list[int], chunk_rows: int) -> None:
    got = _accumulate(rows, batch_sizes, chunk_rows)
    expected = _oracle(rows)
    assert got["pairs"] == sorted(expected)  # unique and sorted by (key, slice)
    for name in _kernels():
        assert got[name] == [expected[pair][name] for pair in got["pairs"]], name


KEY_SCALES = (1, 40_000, 1 << 31)  # key ids of 1, 2 and 3 radix digits; dense, then sparse


@st.composite
def inputs(draw: st.DrawFn) -> tuple[list[Row], list[int], int]:
    scale = draw(st.sampled_from(KEY_SCALES))
    row = st.tuples(
        st.integers(0, 4).map(lambda key: key * scale),
        st.integers(0, 11).map(lambda step: 1_000_000_000 + step * WIDTH // 3),
        st.none() | st.integers(-50, 50),
        st.none() | st.integers(-40, 40).map(lambda v: v * 0.25),
        st.none() | st.sampled_from(["a", "b", "cc", ""]),
    )
    rows = draw(st.lists(row, max_size=60))
    order = draw(st.sampled_from(["time", "reversed", "drawn"]))
    if order == "time":  # the lake's order: chunks follow one another, sharing boundary slices
        rows.sort(key=lambda r: r[1])
    elif order == "reversed":  # runs out of time order
        rows.sort(key=lambda r: -r[1])
    batch_sizes = draw(st.lists(st.integers(0, 6), max_size=20))
    chunk_rows = draw(st.integers(1, 6) | st.integers(1, max(1, len(rows) + 1)))
    return rows, batch_sizes, chunk_rows


@settings(max_examples=300, deadline=None, derandomize=True)
@given(inputs())
def test_result_equals_a_group_by_over_all_rows(case: tuple[list[Row], list[int], int]) -> None:
    _check(*case)


def _timed_rows(times: list[int], key: int = 7) -> list[Row]:
    return [(key, t, i, i * 0.25, f"v{i}") for i, t in enumerate(times)]


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 4])
def test_chunks_sharing_a_boundary_slice_merge_it(chunk_rows: int) -> None:
    """Time-ordered rows whose chunks cut a slice in two (or more): the ordered merge combines
    each shared pair into the row written before."""
    times = [0, WIDTH // 2, WIDTH, WIDTH + 1, WIDTH + 2, 2 * WIDTH, 3 * WIDTH - 1]
    rows = _timed_rows(times) + _timed_rows(times, key=3) + _timed_rows(times, key=0)
    rows.sort(key=lambda r: r[1])
    _check(rows, [1] * len(rows), chunk_rows)


@pytest.mark.parametrize("chunk_rows", [1, 2, 3])
def test_runs_out_of_time_order_are_ordered_by_slice(chunk_rows: int) -> None:
    """A later chunk holding earlier slices of a key than an earlier chunk (a lake whose
    partitions come out of order): the ordered merge's check sends them to the sorting one."""
    times = [5 * WIDTH, 6 * WIDTH, 0, WIDTH, 5 * WIDTH + 1, 2 * WIDTH]
    rows = _timed_rows(times, key=0) + _timed_rows(times[::-1], key=1)
    _check(rows, [1] * len(rows), chunk_rows)


def test_rows_out_of_time_order_within_a_chunk() -> None:
    times = [3 * WIDTH, 0, 2 * WIDTH, 0, 3 * WIDTH + 5, WIDTH]
    _check(_timed_rows(times) + _timed_rows(times, key=2), [2, 0, 5], 100)


def test_no_rows_and_empty_batches() -> None:
    _check([], [0, 0], 1)
    got = _accumulate([], [], 10)
    assert got["pairs"] == [] and all(got[name] == [] for name in _kernels())


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(-(1 << 62), 1 << 62) | st.integers(-3, 70_000), max_size=80),
    st.booleans(),
)
def test_stable_order_is_numpys_stable_argsort(values: list[int], refine: bool) -> None:
    """The radix order equals ``np.argsort(kind="stable")``, also refining a prior order."""
    array = np.array(values, dtype=np.int64)
    prior = np.array(random.Random(len(values)).sample(range(len(values)), len(values)))
    if refine and len(values):
        expected = prior[np.argsort(array[prior], kind="stable")]
        assert bulk._stable_order(array, prior.astype(np.int64)).tolist() == expected.tolist()
    else:
        assert bulk._stable_order(array).tolist() == np.argsort(array, kind="stable").tolist()
