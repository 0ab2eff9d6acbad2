"""Window state without replay: rows aggregated per (key, slice) in one columnar pass.

The state bootstrap (``Pipeline.run(bootstrap="state")``, :mod:`lambdasource.state_bootstrap`)
puts a sliding/tumbling window operator in *bulk* mode for the lake part of a job. The lake never
emits a watermark that makes one of its own records late (DESIGN §3), so every lake record joins
every window it belongs to, and the state a replay leaves behind is a function of the records and
the final watermark alone — not of the order or batching they came in:

1. :class:`SliceAccumulator` aggregates the rows per (key id, slice start) with the engine's
   own kernels (``Kernel.partial``, one radix ordering per chunk of rows) and, at the end,
   merges the chunks' partials per (key, slice) (``Kernel.combine``/``reduce``), sorted by
   (key, slice);
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

import ctypes
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

_DIGIT_BITS = 16
_DENSE_SLACK = 1 << 16
"""Per-key arrays of the run merge may exceed the rows merged by this many entries."""
CHUNK_ROWS = 1 << 20
"""Rows a :class:`SliceAccumulator` aggregates at once (one ordering each)."""


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


def _stable_order(values: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """The rows ordered by ``values`` (integers), ties kept in ``order`` (None: row order): a least-significant-digit radix sort, one stable 16-bit pass (numpy's radix
    sort) per digit that ``values.max()`` needs — O(rows) per pass, not O(rows log rows)."""
    if not len(values):
        return np.zeros(0, dtype=np.int64) if order is None else order
    low = int(values.min())
    if low < 0:  # key ids and slice offsets never are; kept total for any integers
        values = values - low
    top = int(values.max())
    shift = 0
    while True:
        ordered = values if order is None else values[order]
        digit = (ordered >> shift if shift else ordered).astype(np.uint16)
        del ordered
        step = np.argsort(digit, kind="stable")
        del digit
        order = step if order is None else order[step]
        shift += _DIGIT_BITS
        if top >> shift == 0:
            return order


def _key_slice_order(keys: np.ndarray, slices: np.ndarray, width: int) -> np.ndarray:
    """An order of the rows by (key, slice), ties in row order.

    When the slices already ascend in row order (a lake read in event-time order) one stable
    pass by key is enough; otherwise a stable pass by slice comes first."""
    if len(slices) > 1 and bool((slices[1:] < slices[:-1]).any()):
        return _stable_order(keys, _stable_order((slices - int(slices.min())) // width))
    return _stable_order(keys)


def _run_starts(keys: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """Where a run of equal (key, slice) starts in rows sorted by both."""
    starts = np.empty(len(keys), dtype=bool)
    starts[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=starts[1:])
    starts[1:] |= slices[1:] != slices[:-1]
    return starts


class SliceAccumulator:
    """Partial aggregates per (key id, slice start) of every row added (none is ever late).

    Rows are kept as they come and aggregated in chunks of about ``chunk_rows`` (one ordering
    per chunk, not per batch: lake batches are small) into *runs* of partials sorted by (key,
    slice); :meth:`result` merges the runs. A lake read in event-time order gives runs whose
    slice ranges follow one another per key (at most a boundary slice shared): each run is
    then written straight into the result, a shared pair combined into the row before
    (:func:`_scatter_runs`); otherwise (runs out of order, sparse key ids) the runs are
    concatenated, ordered by radix passes and the pairs several runs hold reduced. Which path
    is checked on the runs, never assumed: the result does not depend on the arrival order.
    Memory: one chunk of rows plus the runs (at most one row per (key, slice) each); the
    ordered merge adds one result column at a time, the other path one copy of the runs.
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
        del waiting
        rows = Rows(
            {
                column: pa.concat_arrays([batch.columns[column] for batch in batches])
                for column in batches[0].columns
            },
            np.concatenate([batch.times for batch in batches]),
            np.concatenate([batch.seq for batch in batches]),
        )
        del batches
        slices = rows.times // self.slice_width
        slices *= self.slice_width
        order = _key_slice_order(keys, slices, self.slice_width)
        sorted_keys, sorted_slices = keys[order], slices[order]
        del keys, slices
        starts = _run_starts(sorted_keys, sorted_slices)
        groups = np.empty(len(order), dtype=np.int64)  # each row's (key, slice), in row order
        rank = np.cumsum(starts)
        rank -= 1
        groups[order] = rank
        del order, rank
        count = int(np.count_nonzero(starts))
        parts = tuple(kernel.partial(rows, groups, count) for kernel in self.kernels)
        self._runs.append((sorted_keys[starts], sorted_slices[starts], parts))

    def result(self) -> tuple[np.ndarray, np.ndarray, tuple[State, ...]]:
        """``(key ids, slice starts, partials)``: one row per (key, slice), sorted by both."""
        self._aggregate_waiting()
        runs, self._runs = self._runs, []
        if not runs:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, tuple(kernel.identity(0) for kernel in self.kernels)
        if len(runs) == 1:
            return runs[0]
        pa.default_memory_pool().release_unused()  # the pass's buffers, for the merge
        _release_freed_memory()
        totals = _ordered_runs(runs)
        if totals is not None:
            return _scatter_runs(self.kernels, runs, totals)
        keys, slices, columns = _concatenate(runs)
        offsets = slices - int(slices.min())
        offsets //= self.slice_width
        order = _stable_order(keys, _stable_order(offsets))
        del offsets
        sorted_keys = keys[order]
        del keys
        sorted_slices = slices[order]
        del slices
        starts = _run_starts(sorted_keys, sorted_slices)
        merged = _merge_sorted(self.kernels, columns, order, starts)
        return sorted_keys[starts], sorted_slices[starts], merged


Run = tuple[np.ndarray, np.ndarray, tuple[State, ...]]


def _key_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, first rows, row counts)`` of the key groups of a run (sorted by key)."""
    starts = np.empty(len(keys), dtype=bool)
    starts[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=starts[1:])
    first = np.flatnonzero(starts)
    counts = np.diff(first, append=len(keys))
    return keys[first], first, counts


def _ordered_runs(runs: list[Run]) -> np.ndarray | None:
    """Per key id, the rows the merged result holds — when every key's slices follow one
    another from run to run (a run's first slice of a key at or after the key's last slice
    in the runs before: equal is one pair two runs share) and the key ids are dense enough
    for per-key arrays (at most rows + ``_DENSE_SLACK``); None otherwise (the merge sorts)."""
    rows = sum(len(run[0]) for run in runs)
    key_count = 1 + max(int(run[0][-1]) for run in runs if len(run[0])) if rows else 0
    if (
        key_count > rows + _DENSE_SLACK
        or min((int(run[0][0]) for run in runs if len(run[0])), default=0) < 0
    ):
        return None
    totals = np.zeros(key_count, dtype=np.int64)
    last = np.full(key_count, np.iinfo(np.int64).min, dtype=np.int64)
    for keys, slices, _ in runs:
        present, first, counts = _key_groups(keys)
        first_slices, before = slices[first], last[present]
        if bool((first_slices < before).any()):
            return None
        totals[present] += counts - (first_slices == before)
        last[present] = slices[first + counts - 1]
    return totals


def _scatter_runs(kernels: list[Kernel], runs: list[Run], totals: np.ndarray) -> Run:
    """The merge of runs that :func:`_ordered_runs` found in order (``totals``: rows per key):
    each run's rows written straight to their place in the result — the key's offset plus
    the rows the key had before — and a pair a run shares with the runs before combined into
    the row already written (``Kernel.combine``, the earlier data first). One column at a time
    over all runs, the runs' copy of it freed (and returned to the OS) once written: the merge
    holds the runs plus one result column, not the runs plus the result. ``runs`` is
    emptied."""
    count = len(totals)
    offsets = np.cumsum(totals) - totals  # each key's first row in the result
    written = np.zeros(count, dtype=np.int64)
    last = np.full(count, np.iinfo(np.int64).min, dtype=np.int64)
    targets: list[np.ndarray] = []  # per run: each fresh row's place in the result
    fresh: list[np.ndarray | None] = []  # per run: its rows not shared (None: all)
    joined: list[tuple[np.ndarray, np.ndarray]] = []  # per run: shared rows, their places
    slice_columns: list[np.ndarray | None] = []
    part_columns: list[list[list[np.ndarray | None]]] = []  # per run, per kernel, per array
    runs.reverse()
    while runs:
        run_keys, pair_slices, parts = runs.pop()
        present, first, counts = _key_groups(run_keys)
        shared = pair_slices[first] == last[present]  # its first pair continues a written one
        # row i of key group j goes to offsets[k] + written[k] + (i - first[j]) - shared[j]
        target = np.repeat(offsets[present] + written[present] - first - shared, counts)
        target += np.arange(len(run_keys), dtype=np.int64)
        written[present] += counts - shared
        last[present] = pair_slices[first + counts - 1]
        shared_rows = first[shared]
        joined.append((shared_rows, target[shared_rows]))
        if len(shared_rows):
            keep = np.ones(len(run_keys), dtype=bool)
            keep[shared_rows] = False
            fresh.append(np.flatnonzero(keep))
            target = target[keep]
        else:
            fresh.append(None)
        targets.append(target)
        slice_columns.append(pair_slices)
        part_columns.append([list(state) for state in parts])
        del run_keys, pair_slices, parts, target
    size = int(totals.sum())

    def scatter(column: np.ndarray, run: int, values: np.ndarray) -> None:
        rows = fresh[run]
        column[targets[run]] = values if rows is None else values[rows]

    slices = np.empty(size, dtype=np.int64)
    for run, run_slices in enumerate(slice_columns):
        assert run_slices is not None
        scatter(slices, run, run_slices)
        slice_columns[run] = None
    _release_freed_memory()
    merged: list[State] = []
    for index, kernel in enumerate(kernels):
        state = tuple(
            np.empty(size, dtype=np.result_type(*(run[index][i] for run in part_columns)))
            for i in range(len(part_columns[0][index]))
        )
        for run, run_parts in enumerate(part_columns):
            values = run_parts[index]
            for column, run_column in zip(state, values, strict=True):
                assert run_column is not None
                scatter(column, run, run_column)
            shared_rows, places = joined[run]
            if len(shared_rows):
                earlier = tuple(column[places] for column in state)
                later = tuple(
                    run_column[shared_rows] for run_column in values if run_column is not None
                )
                for column, value in zip(state, kernel.combine(earlier, later), strict=True):
                    column[places] = value
            values[:] = [None] * len(values)
        merged.append(state)
        _release_freed_memory()
    keys = np.repeat(np.arange(count, dtype=np.int64), totals)
    return keys, slices, tuple(merged)


def _release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``; elsewhere nothing):
    the runs are many heap blocks freed one by one, which glibc would otherwise keep."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def _concatenate(
    runs: list[Run],
) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray | None]]]:
    """The runs' keys, slices and partial columns (per kernel, per state array) concatenated
    in run order; ``runs`` is emptied as it is copied, so each run is freed once copied."""
    total = sum(len(run[0]) for run in runs)
    keys = np.empty(total, dtype=np.int64)
    slices = np.empty(total, dtype=np.int64)
    columns: list[list[np.ndarray | None]] = [
        [
            np.empty(total, dtype=np.result_type(*(run[2][k][i] for run in runs)))
            for i in range(len(state))
        ]
        for k, state in enumerate(runs[0][2])
    ]
    offset = 0
    runs.reverse()
    while runs:
        run_keys, run_slices, parts = runs.pop()
        stop = offset + len(run_keys)
        keys[offset:stop] = run_keys
        slices[offset:stop] = run_slices
        for kernel_columns, state in zip(columns, parts, strict=True):
            for column, values in zip(kernel_columns, state, strict=True):
                assert column is not None
                column[offset:stop] = values
        offset = stop
        del run_keys, run_slices, parts
    return keys, slices, columns


def _merge_sorted(
    kernels: list[Kernel],
    columns: list[list[np.ndarray | None]],
    order: np.ndarray,
    starts: np.ndarray,
) -> tuple[State, ...]:
    """The partials ``columns`` taken in ``order`` (sorted by (key, slice)), one per (key,
    slice) run ``starts`` marks: each run's first partial, with the runs of more than one
    (pairs several chunks share) reduced by their kernel. Frees each column once taken."""
    heads = order[starts]
    group = np.cumsum(starts)  # per sorted position, from 1
    group -= 1
    shared = np.zeros(len(heads), dtype=bool)  # groups of more than one partial
    shared[group[~starts]] = True
    targets = np.flatnonzero(shared)
    if len(targets):
        in_shared = shared[group]
        member_rows = order[in_shared]
        member_groups = np.cumsum(shared)[group[in_shared]] - 1
        del in_shared
    del group, shared
    merged: list[State] = []
    for kernel, kernel_columns in zip(kernels, columns, strict=True):
        state: list[np.ndarray] = []
        members: list[np.ndarray] = []
        for index, column in enumerate(kernel_columns):
            assert column is not None
            state.append(column[heads])
            if len(targets):
                members.append(column[member_rows])
            kernel_columns[index] = None  # freed once taken
            del column
        if len(targets):
            reduced = kernel.reduce(tuple(members), member_groups, len(targets))
            for values, shared_values in zip(state, reduced, strict=True):
                values[targets] = shared_values
        merged.append(tuple(state))
    return tuple(merged)


def _take(parts: tuple[State, ...], rows: np.ndarray) -> tuple[State, ...]:
    return tuple(tuple(array[rows] for array in values) for values in parts)


def _reduce_by_key(
    kernels: list[Kernel],
    keys: np.ndarray,
    parts: tuple[State, ...],
    mask: np.ndarray,
    groups: np.ndarray,
) -> tuple[np.ndarray, tuple[State, ...]]:
    """Per key (``keys`` sorted) with rows in ``mask``, the partials of those rows merged (the
    other rows go to a last, dropped group: the partials are not copied). ``groups``: an int64
    scratch array of one element per row, overwritten (reused between calls: a fresh array
    costs its page faults)."""
    key_starts = np.empty(len(keys), dtype=bool)
    key_starts[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=key_starts[1:])
    np.cumsum(key_starts, out=groups)  # each row's key rank, from 1
    distinct = int(groups[-1]) if len(groups) else 0
    groups -= 1
    groups[~mask] = distinct
    present = np.zeros(distinct + 1, dtype=bool)
    present[groups] = True
    chosen = np.flatnonzero(present[:distinct])
    merged = tuple(
        tuple(array[chosen] for array in kernel.reduce(values, groups, distinct + 1))
        for kernel, values in zip(kernels, parts, strict=True)
    )
    return keys[key_starts][chosen], merged


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
    groups = np.empty(len(keys), dtype=np.int64)
    window_keys, window = _reduce_by_key(
        kernels, keys, parts, entered & (starts >= end - size), groups
    )
    counter = _record_counter(names, kernels)
    filled = np.flatnonzero(window[counter][0] > 0)
    window_keys = window_keys[filled]
    window = _take(window, filled)
    block = (end - 1) // size * size
    prefix_keys, prefix = _reduce_by_key(kernels, keys, parts, entered & (starts >= block), groups)
    del groups

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
