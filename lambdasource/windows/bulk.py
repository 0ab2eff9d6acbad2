"""Window state without replay: rows aggregated per (key, slice) in one columnar pass.

The state bootstrap (``Pipeline.run(bootstrap="state")``, :mod:`lambdasource.state_bootstrap`)
puts a sliding/tumbling window operator in *bulk* mode for the lake part of a job. The lake never
emits a watermark that makes one of its own records late (DESIGN §3), so every lake record joins
every window it belongs to, and the state a replay leaves behind is a function of the records and
the final watermark alone — not of the order or batching they came in:

1. :class:`SliceAccumulator` aggregates the rows per (key id, slice start) with the engine's
   own kernels (``Kernel.partial``, one sort per chunk of rows) and, at the end, merges the
   chunks' partials per (key, slice) (``Kernel.reduce``), sorted by (key, slice);
2. ``emit="latest"``: :func:`completed_state` builds the engine's documented state
   (:mod:`.state_tables`) as of the final watermark directly — slices entered or pending, each
   key's window value at the newest completed end, the block prefix — and the rows an upsert
   store keeps (each key's newest value);
3. ``changes``/``every``: :func:`pending_state` writes every slice as pending, and the engine
   completes every window in one advance to the final watermark (change points only), emitting
   the lake range's changelog.

A stateless step before the window can still make a record late (a map moving times back); the
window operator then leaves bulk mode at that watermark (``WindowOperator.start_bulk``).

Only the built-in partial-state kernels take part (``count_distinct`` counts by pair presence,
and a user :class:`~.aggregates.Aggregate` runs Python per group: both replay instead, see
:func:`bulk_unsupported`). Float sums may differ from a replay's in the last bits (another
addition order), as they do between two replays with different batch sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .aggregates import Kernel, Rows, State
from .aggregates import _UserKernel as UserKernel
from .aggregates import count as count_kernel
from .engine import Emission, WindowEngine
from .state_tables import KEY_ID, partial_arrays, time_array

__all__ = [
    "SliceAccumulator",
    "bulk_unsupported",
    "completed_state",
    "pending_state",
    "state_kernels",
]

RECORDS = "_records"
"""The name of the internal record count a sliding engine without a plain ``count()`` keeps
(``state_tables``: ``_records.count``)."""

_CODE_LIMIT = 1 << 62
CHUNK_ROWS = 1 << 20
"""Rows a :class:`SliceAccumulator` aggregates at once (one sort each)."""


def bulk_unsupported(engine: WindowEngine, kernels: dict[str, Kernel]) -> str | None:
    """Why a window with this engine and these aggregates cannot be built in bulk (None: it
    can), in words for a one-line message."""
    from .sliding import SlidingEngine  # the engine kinds import the state tables too

    if not isinstance(engine, SlidingEngine):
        return f"{type(engine).__name__} windows (sessions) are replayed"
    for name, kernel in kernels.items():
        if kernel.counts_distinct:
            return f"aggregate {name!r} is count_distinct, which is replayed"
        if isinstance(kernel, UserKernel):
            return f"aggregate {name!r} is a user Aggregate without a vectorised form"
    return None


def state_kernels(engine: WindowEngine) -> tuple[list[str], list[Kernel]]:
    """The names and kernels of the partial columns the engine's state tables hold: the
    aggregates, then the internal record count when the engine keeps one (its empty snapshot's
    ``slices`` table says so)."""
    names, kernels = list(engine.names), list(engine.kernels)
    columns = engine.snapshot()["slices"].column_names
    if f"{RECORDS}.count" in columns:
        names.append(RECORDS)
        kernels.append(count_kernel())
    return names, kernels


def _group(keys: np.ndarray, slices: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, run starts)``: a stable order of the rows by (key, slice) and, in that order,
    where each (key, slice) run starts."""
    low = int(slices.min())
    offset = (slices - low) // width
    span = int(offset.max()) + 1
    starts = np.empty(len(keys), dtype=bool)
    starts[:1] = True
    if (int(keys.max()) + 1) * span < _CODE_LIMIT:  # one int64 code per (key, slice)
        code = keys * span + offset
        del offset
        order = np.argsort(code, kind="stable")
        ordered = code[order]
        del code
        np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
        return order, starts
    order = np.lexsort((offset, keys))
    sorted_keys, sorted_slices = keys[order], slices[order]
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    starts[1:] |= sorted_slices[1:] != sorted_slices[:-1]
    return order, starts


class SliceAccumulator:
    """Partial aggregates per (key id, slice start) of every row added (none is ever late).

    Rows are kept as they come and aggregated in chunks of about ``chunk_rows`` (one sort per
    chunk, not per batch: lake batches are small); :meth:`result` merges the chunks' partials.
    Memory: one chunk of rows plus the partials, which are at most one row per (key, slice).
    """

    def __init__(
        self,
        names: list[str],
        kernels: list[Kernel],
        slice_width: int,
        chunk_rows: int | None = None,
    ) -> None:
        self.names = names
        self.kernels = kernels
        self.slice_width = slice_width
        self.chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
        self.rows = 0
        self._waiting: list[tuple[np.ndarray, Rows]] = []
        self._waiting_rows = 0
        self._runs: list[tuple[np.ndarray, np.ndarray, tuple[State, ...]]] = []

    def add(self, key_ids: np.ndarray, rows: Rows) -> None:
        """Take one batch (``rows.times`` in µs; ``rows.seq`` arrival numbers)."""
        if not len(rows):
            return
        self._waiting.append((np.asarray(key_ids, dtype=np.int64), rows))
        self._waiting_rows += len(rows)
        self.rows += len(rows)
        if self._waiting_rows >= self.chunk_rows:
            self._aggregate_waiting()

    def _aggregate_waiting(self) -> None:
        """Aggregate the rows taken since the last chunk into one run of partials."""
        waiting, self._waiting, self._waiting_rows = self._waiting, [], 0
        if not waiting:
            return
        keys = np.concatenate([batch_keys for batch_keys, _ in waiting])
        batches = [rows for _, rows in waiting]
        rows = Rows(
            {
                column: pa.concat_arrays([batch.columns[column] for batch in batches])
                for column in batches[0].columns
            },
            np.concatenate([batch.times for batch in batches]),
            np.concatenate([batch.seq for batch in batches]),
        )
        slices = rows.times // self.slice_width * self.slice_width
        order, starts = _group(keys, slices, self.slice_width)
        groups = np.empty(len(keys), dtype=np.int64)
        groups[order] = np.cumsum(starts) - 1
        runs = int(np.count_nonzero(starts))
        parts = tuple(kernel.partial(rows, groups, runs) for kernel in self.kernels)
        first = order[starts]
        self._runs.append((keys[first], slices[first], parts))

    def result(self) -> tuple[np.ndarray, np.ndarray, tuple[State, ...]]:
        """``(key ids, slice starts, partials)``: one row per (key, slice), sorted by both."""
        self._aggregate_waiting()
        runs, self._runs = self._runs, []
        if not runs:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, tuple(kernel.identity(0) for kernel in self.kernels)
        if len(runs) == 1:
            return runs[0]
        keys = np.concatenate([run[0] for run in runs])
        slices = np.concatenate([run[1] for run in runs])
        parts = tuple(
            tuple(np.concatenate(arrays) for arrays in zip(*states, strict=True))
            for states in zip(*(run[2] for run in runs), strict=True)
        )
        del runs
        order, starts = _group(keys, slices, self.slice_width)
        groups = np.empty(len(keys), dtype=np.int64)  # each row's (key, slice), in row order:
        groups[order] = np.cumsum(starts) - 1  # reduce takes rows in any order, so no copies
        merged = int(np.count_nonzero(starts))
        reduced = tuple(
            kernel.reduce(state, groups, merged)
            for kernel, state in zip(self.kernels, parts, strict=True)
        )
        first = order[starts]
        return keys[first], slices[first], reduced


def _take(parts: tuple[State, ...], rows: np.ndarray) -> tuple[State, ...]:
    return tuple(tuple(array[rows] for array in values) for values in parts)


def _reduce_by_key(
    kernels: list[Kernel], keys: np.ndarray, parts: tuple[State, ...], mask: np.ndarray
) -> tuple[np.ndarray, tuple[State, ...]]:
    """Per key (``keys`` sorted), the partials of the rows in ``mask`` merged in row order (the
    other rows go to a last, dropped group: the partials are not copied)."""
    rows = np.flatnonzero(mask)
    selected = keys[rows]
    if not len(rows):
        return selected, tuple(kernel.identity(0) for kernel in kernels)
    starts = np.empty(len(rows), dtype=bool)
    starts[0] = True
    np.not_equal(selected[1:], selected[:-1], out=starts[1:])
    count = int(np.count_nonzero(starts))
    groups = np.full(len(keys), count, dtype=np.int64)
    groups[rows] = np.cumsum(starts) - 1
    merged = tuple(
        tuple(array[:count] for array in kernel.reduce(values, groups, count + 1))
        for kernel, values in zip(kernels, parts, strict=True)
    )
    return selected[starts], merged


def _record_counter(names: list[str], kernels: list[Kernel]) -> int:
    """Index of the kernel whose ``count`` part counts records (a window is empty at 0)."""
    if names[-1] == RECORDS:
        return len(kernels) - 1
    return next(i for i, k in enumerate(kernels) if k.name == "count" and k.column is None)


def completed_state(
    engine: WindowEngine,
    names: list[str],
    kernels: list[Kernel],
    slices: tuple[np.ndarray, np.ndarray, tuple[State, ...]],
    key_count: int,
    watermark: int,
) -> tuple[dict[str, Any], Emission | None]:
    """``emit="latest"``: the engine's state as of ``watermark`` built directly, and the
    emission a replay leaves in an upsert store keyed by key — each key's window ending at the
    newest completed end ``E``, when it holds records (keys whose window became empty were
    deleted: no row).

    The state is what :meth:`SlidingEngine.advance` would leave: the slices below ``E`` entered
    as one chunk, the others pending, those no window can need any more dropped; ``emitted`` the
    window values at ``E``; ``prefix`` per key the merge of block ``floor((E - 1) / size)``'s
    slices below ``E``.
    """
    state: dict[str, Any] = dict(engine.snapshot())
    size, slide = int(state["window"]["size"]), int(state["window"]["slide"])
    lateness = int(state["window"]["lateness"])
    keys, starts, parts = slices
    end = (watermark + 1) // slide * slide
    accepting_from = -(-(watermark + 2 - lateness) // slide) * slide
    keep = starts >= accepting_from - slide - size
    if not keep.all():
        rows = np.flatnonzero(keep)
        keys, starts = keys[rows], starts[rows]
        parts = _take(parts, rows)
    entered = starts < end
    window_keys, window = _reduce_by_key(kernels, keys, parts, entered & (starts >= end - size))
    counter = _record_counter(names, kernels)
    filled = np.flatnonzero(window[counter][0] > 0)
    window_keys = window_keys[filled]
    window = _take(window, filled)
    block = (end - 1) // size * size
    prefix_keys, prefix = _reduce_by_key(kernels, keys, parts, entered & (starts >= block))

    def table(rows: np.ndarray | None) -> pa.Table:
        """The ``slices`` rows ``rows`` (None: all of them, shared, not copied)."""
        if rows is None:
            fields, arrays, opaque = partial_arrays(names, kernels, parts)
            return _slices_table(keys, starts, fields, arrays, opaque, state)
        fields, arrays, opaque = partial_arrays(names, kernels, _take(parts, rows))
        return _slices_table(keys[rows], starts[rows], fields, arrays, opaque, state)

    entered_count = int(np.count_nonzero(entered))
    if entered_count in (0, len(keys)):  # one run: the arrays as they are
        slices_table = table(None)
    else:
        slices_table = pa.concat_tables(
            [table(np.flatnonzero(entered)), table(np.flatnonzero(~entered))],
            promote_options="permissive",  # e.g. a first() over strings, nulls in one part
        )
    emitted = _dense(names, kernels, window_keys, window, {"window_end": end}, state["emitted"])
    state.update(
        watermark=watermark,
        completed_end=end,
        keys=key_count,
        runs={
            # one chunk even when empty: the chunks tile the entered time line, so a late
            # record always has one to merge into
            "chunks": [[-(1 << 63), end, entered_count]],
            "pending": [len(keys) - entered_count] if entered_count < len(keys) else [],
        },
        slices=slices_table,
        emitted=emitted,
        prefix=_dense(names, kernels, prefix_keys, prefix, None, state["prefix"]),
    )
    if not len(window_keys):
        return state, None
    user = len(engine.names)
    emission = Emission(
        window_keys,
        np.full(len(window_keys), end - size, dtype=np.int64),
        np.full(len(window_keys), end, dtype=np.int64),
        np.zeros(len(window_keys), dtype=bool),
        [
            kernel.result(values)
            for kernel, values in zip(kernels[:user], window[:user], strict=True)
        ],
    )
    return state, emission


def _slices_table(
    keys: np.ndarray,
    starts: np.ndarray,
    fields: list[pa.Field],
    arrays: list[pa.Array],
    opaque: dict[str, np.ndarray],
    template: dict[str, Any],
) -> pa.Table:
    """A ``slices`` table (no ``first_end``: nothing is partly late) like ``template``'s."""
    if opaque:
        raise ValueError(f"bulk window state: partials {sorted(opaque)} are not Arrow values")
    schema = template["slices"].schema
    return pa.Table.from_arrays(
        [
            pa.array(keys, type=pa.int64()),
            time_array(starts),
            pa.nulls(len(keys), schema.field("first_end").type),
            *arrays,
        ],
        schema=pa.schema(
            [schema.field(KEY_ID), schema.field("slice_start"), schema.field("first_end"), *fields]
        ),
    )


def _dense(
    names: list[str],
    kernels: list[Kernel],
    keys: np.ndarray,
    parts: tuple[State, ...],
    times: dict[str, int] | None,
    template: pa.Table | None,
) -> pa.Table:
    """A per-key table (``emitted``, ``prefix``): ``key_id``, the ``times`` columns, partials."""
    fields, arrays, opaque = partial_arrays(names, kernels, parts)
    if opaque:
        raise ValueError(f"bulk window state: partials {sorted(opaque)} are not Arrow values")
    columns: list[pa.Array] = [pa.array(keys, type=pa.int64())]
    heads = [pa.field(KEY_ID, pa.int64())]
    for column, value in (times or {}).items():
        columns.append(time_array(np.full(len(keys), value, dtype=np.int64)))
        heads.append(template.schema.field(column) if template is not None else column)
    return pa.Table.from_arrays(columns + arrays, schema=pa.schema([*heads, *fields]))


def pending_state(
    engine: WindowEngine,
    names: list[str],
    kernels: list[Kernel],
    slices: tuple[np.ndarray, np.ndarray, tuple[State, ...]],
    key_count: int,
) -> dict[str, Any]:
    """The engine's state (``state_tables`` layout) holding ``slices`` — unique, sorted by
    (key, slice) — as one pending table: no watermark yet, no window completed."""
    state: dict[str, Any] = dict(engine.snapshot())
    keys, starts, parts = slices
    fields, arrays, opaque = partial_arrays(names, kernels, parts)
    table = _slices_table(keys, starts, fields, arrays, opaque, state)
    state.update(
        watermark=None,
        completed_end=None,
        keys=key_count,
        runs={"chunks": [], "pending": [len(keys)] if len(keys) else []},
        slices=table,
    )
    return state
