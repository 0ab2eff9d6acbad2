"""Bootstrap from state equals replay (issue 14 §4), at the window operator.

One window operator replays a lake record by record — batches, and after each the watermark the
lake reader would emit (never one that makes a later lake record late) — then takes a stream
part; another takes the same lake in bulk mode (``start_bulk``: per (key, slice) partials, the
state built at the end, every window completed at once), then the same stream part. The upsert
stores both outputs build must be equal for every window shape × emit mode × built-in aggregate ×
allowed lateness, with out-of-order, late (in the stream part), duplicate and empty inputs, and
with the bulk pass merging many chunks (``CHUNK_ROWS`` patched small). A store keyed by
(key, window_end) sees every record of every window, so one lost or doubled record shows.

``latest`` stores are compared on their values: the bulk pass stamps every key's row with the
newest completed window, where a replay stamps the watermark step at which the value last
changed (which depends on how the watermark advanced); the values are the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lambdasource.windows import bulk
from lambdasource.windows.aggregates import Kernel
from lambdasource.windows.operator import WindowOperator

SECOND = 1_000_000
SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("k", pa.string()),
        pa.field("x", pa.int64()),
        pa.field("y", pa.float64()),
    ]
)
AGGREGATES: dict[str, Any] = {
    "n": lambda: ls.count(),
    "nx": lambda: ls.count("x"),
    "sx": lambda: ls.sum("x"),
    "sy": lambda: ls.sum("y"),
    "my": lambda: ls.mean("y"),
    "lo": lambda: ls.min("x"),
    "hi": lambda: ls.max("y"),
    "f": lambda: ls.first("x"),
    "la": lambda: ls.last("k"),
}


class _Runtime:
    flush = "watermark"


class _Node:
    runtime = _Runtime()


class Harness:
    """Drives one operator as the runtime would: ``watermark`` is the input watermark."""

    def __init__(self, op: WindowOperator) -> None:
        self.op = op
        self.watermark: int | None = None
        self.out: list[pa.RecordBatch] = []
        self.late: list[pa.RecordBatch] = []
        self.handoff = 0  # batches in ``out`` when the stream part began
        self._node = _Node()

    def emit(self, batch: pa.RecordBatch) -> None:
        self.out.append(batch)

    def emit_watermark(self, watermark: int) -> None:
        pass

    def side_output(self, name: str, batch: pa.RecordBatch) -> None:
        assert name == "late"
        self.late.append(batch)

    def batch(self, rows: pa.Table) -> None:
        for batch in rows.to_batches():
            self.op.on_batch(batch, self)  # type: ignore[arg-type]

    def advance(self, watermark: int) -> None:
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
            self.op.on_watermark(watermark, self)  # type: ignore[arg-type]

    def end(self) -> None:
        self.op.on_end(self)  # type: ignore[arg-type]


def operator(window: ls.Sliding, emit: str, lateness: int, names: list[str]) -> WindowOperator:
    kernels: dict[str, Kernel] = {name: AGGREGATES[name]() for name in names}
    for name, kernel in kernels.items():
        kernel.bind(SCHEMA, name)
    return WindowOperator(
        window,
        kernels,
        emit=emit,  # type: ignore[arg-type]
        allowed_lateness=lateness,
        keys=("k",),
        time_column="ts",
        flush=None,
        schema=None,
    )


def rows_table(rows: list[tuple[int, int, int | None, float | None]]) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array([t for t, _, _, _ in rows], pa.int64()).cast(SCHEMA.field("ts").type),
            "k": pa.array([f"k{k}" for _, k, _, _ in rows]),
            "x": pa.array([x for _, _, x, _ in rows], pa.int64()),
            "y": pa.array([y for _, _, _, y in rows], pa.float64()),
        },
        schema=SCHEMA,
    )


def store(out: list[pa.RecordBatch], emit: str) -> dict[Any, Any]:
    """What an upsert store holds: by key (``latest``, values only) or by (key, window_end)."""
    held: dict[Any, Any] = {}
    for batch in out:
        for row in batch.to_pylist():
            if emit == "latest":
                key: Any = row["k"]
                value = {c: v for c, v in row.items() if c not in ("window_start", "window_end")}
            else:
                key, value = (row["k"], row["window_end"]), row
            if row.get("_deleted"):
                held.pop(key, None)
            else:
                held[key] = value
    return held


events = st.tuples(
    st.integers(0, 179),  # seconds
    st.integers(0, 3),  # key
    st.one_of(st.none(), st.integers(-5, 5)),
    st.one_of(st.none(), st.integers(-8, 8).map(lambda v: v * 0.25)),  # exact in binary
)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    shape=st.sampled_from([(60, 20), (60, 60), (50, 20), (30, 7), (90, 45)]),
    emit=st.sampled_from(["latest", "changes", "every"]),
    lateness=st.sampled_from([0, 10, 45]),
    names=st.lists(st.sampled_from(sorted(AGGREGATES)), min_size=1, max_size=4, unique=True),
    lake=st.lists(events, max_size=60),
    stream=st.lists(events, max_size=40),
    lake_batch=st.integers(1, 25),
    stream_batch=st.integers(1, 15),
    chunk=st.sampled_from([1, 3, 1 << 20]),
    ooo=st.integers(0, 40),
    cutoff_s=st.integers(90, 200),
    lake_ooo=st.one_of(st.none(), st.integers(0, 60)),
)
def test_bulk_then_stream_equals_replay_then_stream(
    monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, int],
    emit: str,
    lateness: int,
    names: list[str],
    lake: list[tuple[int, int, int | None, float | None]],
    stream: list[tuple[int, int, int | None, float | None]],
    lake_batch: int,
    stream_batch: int,
    chunk: int,
    ooo: int,
    cutoff_s: int,
    lake_ooo: int | None,
) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", chunk)
    size, slide = shape
    window = ls.Sliding(f"{size}s", f"{slide}s")
    cutoff = cutoff_s * SECOND  # the lake holds times < cutoff; its last watermark is cutoff - 1
    lake_rows = [(t * cutoff // 180, k, x, y) for t, k, x, y in lake]
    stream_rows = [(cutoff + t * SECOND, k, x, y) for t, k, x, y in stream]
    # the stream part arrives out of order, by up to ooo seconds before its newest record
    for i in range(1, len(stream_rows)):
        t, k, x, y = stream_rows[i]
        stream_rows[i] = (max(cutoff, t - (i * 7 % (ooo + 1)) * SECOND), k, x, y)

    def drive(harness: Harness, bulk_lake: bool) -> None:
        if bulk_lake:
            harness.op.start_bulk()
        rest = np.array([t for t, _, _, _ in lake_rows] + [cutoff], dtype=np.int64)
        newest = None
        for start in range(0, len(lake_rows), lake_batch):
            part = lake_rows[start : start + lake_batch]
            harness.batch(rows_table(part))
            newest = max([t for t, _, _, _ in part] + ([] if newest is None else [newest]))
            if lake_ooo is None:  # the lake reader's rule: never past a record still to come
                harness.advance(int(rest[min(start + lake_batch, len(lake_rows)) :].min()) - 1)
            else:  # what a map moving times back amounts to: lake records may be late
                harness.advance(newest - lake_ooo * SECOND)
        harness.advance(cutoff - 1)
        if bulk_lake:
            harness.end()
        harness.handoff = len(harness.out)
        newest = max(cutoff - 1, newest or 0)
        for start in range(0, len(stream_rows), stream_batch):
            part = stream_rows[start : start + stream_batch]
            harness.batch(rows_table(part))
            newest = max([newest, *(t for t, _, _, _ in part)])
            harness.advance(newest - ooo * SECOND)
        for step in range(0, size + 2 * slide, slide):  # every window, one slide at a time
            harness.advance(newest + step * SECOND)

    replay = Harness(operator(window, emit, lateness * SECOND, names))
    drive(replay, bulk_lake=False)
    state = Harness(operator(window, emit, lateness * SECOND, names))
    drive(state, bulk_lake=True)

    # the lake part: what the store holds (latest) or the changelog itself, row for row
    assert store(state.out, emit) == store(replay.out, emit)
    if emit != "latest":
        lake_parts = [_table(h.out[: h.handoff]) for h in (state, replay)]
        if lake_parts[0].num_rows or lake_parts[1].num_rows:
            order = [("k", "ascending"), ("window_end", "ascending")]
            assert lake_parts[0].sort_by(order).equals(lake_parts[1].sort_by(order))
    else:
        assert store(state.out[: state.handoff], emit) == store(replay.out[: replay.handoff], emit)
    # the stream part, from equal states: the same rows in the same order, the same late rows
    assert _table(state.out[state.handoff :]).equals(_table(replay.out[replay.handoff :]))
    assert _table(state.late).equals(_table(replay.late))


def _table(batches: list[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches(batches) if batches else pa.table({})
