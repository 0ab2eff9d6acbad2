"""KeyIndex: ids are dense, stable and in order of first appearance, for every kind of key."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdasource.keys import KeyIndex

ints = st.lists(st.integers(-(2**62), 2**62) | st.sampled_from([0, 1, 2]), max_size=30)
nullable_ints = st.lists(st.none() | st.integers(-3, 3), max_size=30)
strings = st.lists(st.none() | st.sampled_from(["", "a", "b", "é", "long" * 10]), max_size=30)


def check(batches: list[dict[str, pa.Array]], columns: tuple[str, ...]) -> None:
    index = KeyIndex(columns)
    reference: dict[Any, int] = {}
    for data in batches:
        ids = index.ids(pa.record_batch(data))
        values = [data[c].to_pylist() for c in columns]
        for key, got in zip(zip(*values, strict=True), ids.tolist(), strict=True):
            assert reference.setdefault(key, len(reference)) == got
    assert len(index) == len(reference)
    if reference:
        table = index.key_table()
        assert [tuple(row[c] for c in columns) for row in table.to_pylist()] == list(reference)


@settings(max_examples=60, deadline=None)
@given(st.lists(ints, max_size=6))
def test_int_keys(batches: list[list[int]]) -> None:
    check([{"k": pa.array(b, pa.int64())} for b in batches], ("k",))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(-50, 50), max_size=40), max_size=8),
    st.lists(st.integers(-(2**40), 2**40), max_size=3),
)
def test_compact_int_keys_use_a_dense_table_then_fall_back(
    batches: list[list[int]], spread: list[int]
) -> None:
    """Small ranges go through the dense lookup table; far-apart values switch it off."""
    data = [*batches, spread, *batches]
    check([{"k": pa.array(b, pa.int64())} for b in data], ("k",))


@settings(max_examples=60, deadline=None)
@given(st.lists(nullable_ints, max_size=6))
def test_int_keys_with_nulls_move_to_the_general_index(batches: list[list[int | None]]) -> None:
    check([{"k": pa.array(b, pa.int64())} for b in batches], ("k",))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(strings, nullable_ints).map(lambda t: (t[0], t[1][: len(t[0])])), max_size=6)
)
def test_multi_column_keys(batches: list[tuple[list[str | None], list[int | None]]]) -> None:
    data = []
    for s, i in batches:
        n = min(len(s), len(i))
        data.append({"s": pa.array(s[:n], pa.string()), "i": pa.array(i[:n], pa.int64())})
    check(data, ("s", "i"))
