"""``inspect --export`` shows count_distinct values, not value codes, in every code mode.

The oracle: per (key, slice) the exported ``value`` column of ``engine.distinct.d.rows`` equals
the set of the input's non-null values, for integers kept as their own codes (``direct`` mode,
no dictionary), integers beyond 32 bits (``int`` mode, a sorted dictionary) and strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from lambdasource.checkpoints.inspect import export_node
from lambdasource.windows.aggregates import Rows
from lambdasource.windows.sliding import SlidingEngine

SIZE, SLIDE = 40, 10

VALUES: dict[str, pa.Array] = {
    "direct": pa.array([5, -7, 5, None, 2**31 - 1, -(2**31), 0, 9], pa.int64()),
    "int": pa.array([5, -7, 5, None, 2**40, -(2**35), 0, 9], pa.int64()),
    "string": pa.array(["a", "b", "a", None, "zz", "", "c", "b"]),
}


def _engine_state(values: pa.Array) -> tuple[dict[str, Any], list[tuple[int, int, Any]]]:
    kernels = [ls.count(), ls.count_distinct("z")]
    for kernel in kernels:
        kernel.bind(pa.schema([("z", values.type)]), "test")
    engine = SlidingEngine(kernels, "changes", 15, size=SIZE, slide=SLIDE, names=["n", "d"])
    keys = np.array([0, 1, 0, 1, 2, 0, 1, 2], dtype=np.int64)
    times = np.array([3, 4, 11, 12, 25, 31, 33, 47], dtype=np.int64)
    rows = Rows({"z": values}, times, np.arange(len(times), dtype=np.int64))
    engine.add(keys, rows, None)
    engine.advance(20)  # slices < 20 entered, the others pending: both tables hold rows
    expected = [
        (int(k), int(t) // SLIDE * SLIDE, v)
        for k, t, v in zip(keys, times, values.to_pylist(), strict=True)
        if v is not None
    ]
    return engine.snapshot(), expected


@pytest.mark.parametrize("kind", list(VALUES))
def test_distinct_rows_export_their_values(tmp_path: Path, kind: str) -> None:
    snapshot, expected = _engine_state(VALUES[kind])
    mode = snapshot["distinct"]["d"]["values"]["mode"]
    assert mode == {"direct": "direct", "int": "int", "string": "object"}[kind]
    keys = pa.table({"k": [f"user{i}" for i in range(3)], "key_id": pa.array(range(3))})
    payload = {"nodes": {"window": {"operator": {"keys": keys, "engine": snapshot}}}}
    files = {f.name: f for f in export_node(payload, "window", tmp_path)}
    table = pq.read_table(files["operator.engine.distinct.d.rows.parquet"])
    got = sorted(
        zip(
            table.column("key_id").to_pylist(),
            table.column("slice_start").cast(pa.int64()).to_pylist(),
            table.column("value").to_pylist(),
            strict=True,
        ),
        key=repr,
    )
    assert got == sorted(set(expected), key=repr)
    assert table.column("k").to_pylist() == [f"user{k}" for k in table.column("key_id").to_pylist()]
