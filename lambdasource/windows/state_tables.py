"""Window state as Arrow tables: the checkpoint schema of every window kind.

A window operator's checkpoint state (``WindowOperator.snapshot``: ``keys``, ``engine``, the
arrival counter, the input types) is plain data whose bulk is Arrow tables; ``lambdasource
inspect --checkpoint URL --export NODE --to DIR`` writes each of them as Parquet, named by its
path (``operator.engine.slices.parquet`` …), with the key columns joined in. Times are
``timestamp[us, UTC]``; ``key_id`` (int64) is the operator's dense key id, row ``i`` of the
``keys`` table (which also has a ``key_id`` column, unless a key column has that name). The
tables hold key ids, not key values: a snapshot stays a few zero-copy views of the engine's
arrays, and the key values are one join away (the export does it).

Partial aggregates are one column per partial-state array, named ``<aggregate>.<part>``:

==================  ===================================================================
kernel              parts (numpy dtype)
==================  ===================================================================
count               ``count`` (int64)
sum, mean           ``sum`` (int64, or float64 for float input), ``nonnull`` (int64)
min, max            ``value`` (input type's numpy form; strings etc. as Arrow values),
                    ``has`` (bool)
first, last         ``time`` (int64 µs), ``seq`` (int64 arrival number), ``value``,
                    ``has`` (bool: a record), ``valid`` (bool: its value is not null)
count_distinct      sliding: ``count`` (int64; zeros in slices, the window's count in
                    ``emitted``: the values live in the ``distinct`` tables); session:
                    ``values`` (list of the distinct values)
user ``Aggregate``  ``state`` (its states; when Arrow cannot hold them they are kept beside
                    the table under ``opaque``, encoded by the checkpoint codec)
==================  ===================================================================

A sliding engine without a plain ``count()`` adds an internal one, ``_records.count``.
Values equal to the kernel's identity are stored as they are (``has``/``nonnull``/``count``
say whether a value is set).

Sliding and tumbling (``SlidingEngine.snapshot``, a tumbling window is ``slide == size``):

- ``slices``: ``key_id``, ``slice_start``, ``first_end`` (null: the slice joins every window
  that holds it; else the first window end a partly late record's rows join), partials. One row
  per (key, slice, first_end); rows with ``slice_start < completed_end`` are entered, the others
  pending. ``runs`` lists the engine's internal tables in row order (``[lo, hi, rows]`` of each
  entered chunk, ``lo`` may be -2**63; then ``[rows]`` of each pending table), so a restored
  engine merges in the same order as an uninterrupted one (float sums stay bit for bit equal).
- ``emitted``: ``key_id``, ``window_end`` (= ``completed_end``), partials: the value of each
  key's window ending at ``completed_end`` (what the next emission compares against; keys whose
  window is empty are absent).
- ``prefix``: ``key_id``, partials: per key, the running aggregate of the block
  ``floor((completed_end - 1) / size)`` over its slices before ``completed_end``. Derivable from
  ``slices``, stored because a float sum depends on the order it was added in; a producer may
  leave it out (``None``) and restore rebuilds it.
- ``repeats`` (emit ``changes``): ``key_id``, ``window_end``: changelog rows a correction wrote
  whose value equals the previous end's.
- scalars: ``watermark``, ``completed_end`` (newest completed window end), ``keys`` (length of
  the dense per-key arrays), the window (``size``, ``slide``, ``lateness`` in µs, aggregate
  names).
- ``distinct`` (by ``count_distinct`` aggregate name, see ``windows/distinct.py``): ``rows``
  (``key_id``, ``value_code``, ``slice_start``, ``first_end``: the (key, value) pairs present in
  a slice: pending slices, and with allowed lateness the entered ones corrections may need),
  ``carried`` (``key_id``, ``value_code``, ``last_end``: per pair with entered rows, the last
  window end they reach, kept while ``>= completed_end + slide``), ``values`` (``mode`` and a
  ``values`` table ``value_code``, ``value``; empty in ``direct`` mode, integers, where
  ``value = value_code - 2**31``).

Not stored, rebuilt on restore: suffix caches, pair indexes, search hints, the keys with
partly late rows still to join a window (``first_end > completed_end`` in ``slices``).

Sessions (``SessionEngine.snapshot``): ``sessions``: ``key_id``, ``start``, ``end``, ``count``,
partials; one row per held session (open, or completed and retained for allowed lateness);
scalars ``watermark``, ``gap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..errors import IncompatibleStateError
from ..timeutil import TIME_TYPE
from .aggregates import Kernel, State
from .aggregates import _UserKernel as UserKernel
from .parts import PresenceSlot

if TYPE_CHECKING:
    from .sliding import SlidingEngine

__all__ = [
    "KEY_ID",
    "Parts",
    "SliceRows",
    "dense_parts",
    "dense_table",
    "int64_column",
    "part_columns",
    "partial_arrays",
    "partial_states",
    "slice_rows",
    "slice_table",
    "time_array",
]

Parts = tuple[State, ...]
SliceRows = tuple[np.ndarray, np.ndarray, np.ndarray | None, Parts]
"""``(key ids, slice starts, first ends or None, partials)`` of one engine table."""

KEY_ID = "key_id"
_PYTHON_TYPE = b"lambdasource.python"  # field metadata: the Python container of list values
_PART_NAMES: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "sum": ("sum", "nonnull"),
    "mean": ("sum", "nonnull"),
    "min": ("value", "has"),
    "max": ("value", "has"),
    "first": ("time", "seq", "value", "has", "valid"),
    "last": ("time", "seq", "value", "has", "valid"),
    "count_distinct": ("values",),
}
_SET_ITEM_TYPES = (pa.types.is_string, pa.types.is_integer, pa.types.is_floating)


def part_names(kernel: Kernel) -> tuple[str, ...]:
    """Names of ``kernel``'s partial-state arrays (see the module docstring)."""
    if isinstance(kernel, PresenceSlot):
        return ("count",)
    count = len(kernel.identity(0))
    names = _PART_NAMES.get(kernel.name)
    if names is None or len(names) != count:
        return ("state",) if count == 1 else tuple(f"part{i}" for i in range(count))
    return names


def part_columns(names: Sequence[str], kernels: Sequence[Kernel]) -> list[str]:
    """Column names of the partials of ``kernels`` called ``names``."""
    return [
        f"{name}.{part}"
        for name, kernel in zip(names, kernels, strict=True)
        for part in part_names(kernel)
    ]


def time_array(values: np.ndarray) -> pa.Array:
    """int64 µs → ``timestamp[us, UTC]`` (zero-copy: ``values`` must never be mutated)."""
    return pa.array(np.asarray(values, dtype=np.int64)).view(TIME_TYPE)


def int64_column(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An int64 or timestamp column without nulls as int64 numpy (zero-copy for one chunk)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_timestamp(column.type):
        column = column.view(pa.int64())
    if not pa.types.is_int64(column.type):
        column = column.cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


def _to_arrow(values: np.ndarray) -> tuple[pa.Array | None, dict[bytes, bytes] | None]:
    """A partial-state array as Arrow (numbers zero-copy), or None when Arrow cannot hold it.
    Object arrays are marked, so they come back as object arrays of the same Python values."""
    if values.dtype != object:
        return pa.array(values), None
    items = values.tolist()
    if items and all(isinstance(item, frozenset) for item in items):  # count_distinct sets
        try:
            lists = pa.array([sorted(item) for item in items])
        except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None, None
        item_type = lists.type.value_type
        if pa.types.is_null(item_type) or any(check(item_type) for check in _SET_ITEM_TYPES):
            return lists, {_PYTHON_TYPE: b"frozenset"}
        return None, None
    try:
        return pa.array(items), {_PYTHON_TYPE: b"object"}
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None, None


def _from_arrow(column: pa.Array | pa.ChunkedArray, field: pa.Field) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    python = (field.metadata or {}).get(_PYTHON_TYPE)
    if python == b"frozenset":
        out = np.empty(len(column), dtype=object)
        out[:] = [frozenset(item) for item in column.to_pylist()]
        return out
    values = column.to_numpy(zero_copy_only=False)
    if python != b"object" or values.dtype == object:
        return values
    if column.null_count:  # numbers or booleans with nulls: scalars, Python's None kept
        out = np.empty(len(column), dtype=object)
        out[:] = column.to_pylist()
        return out
    return values.astype(object)


def partial_arrays(
    names: Sequence[str], kernels: Sequence[Kernel], parts: Parts
) -> tuple[list[pa.Field], list[pa.Array], dict[str, np.ndarray]]:
    """(fields, Arrow arrays, opaque arrays by column name) of ``parts``; numeric arrays are
    shared, not copied (callers pass arrays that are never mutated)."""
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    opaque: dict[str, np.ndarray] = {}
    user = [isinstance(kernel, UserKernel) for kernel in kernels for _ in part_names(kernel)]
    columns = part_columns(names, kernels)
    for column, values, opaque_only in zip(columns, _flat(parts), user, strict=True):
        array, metadata = (None, None) if opaque_only else _to_arrow(values)
        if array is None:
            opaque[column] = values
            continue
        fields.append(pa.field(column, array.type, metadata=metadata))
        arrays.append(array)
    return fields, arrays, opaque


def _flat(parts: Parts) -> list[np.ndarray]:
    return [array for state in parts for array in state]


def partial_states(
    table: pa.Table,
    names: Sequence[str],
    kernels: Sequence[Kernel],
    opaque: dict[str, np.ndarray],
    start: int = 0,
    stop: int | None = None,
) -> Parts:
    """The partials of rows ``start:stop`` of ``table`` (columns from :func:`partial_arrays`)."""
    stop = table.num_rows if stop is None else stop
    if stop <= start:
        return tuple(kernel.identity(0) for kernel in kernels)
    rows = table.slice(start, stop - start)
    out = []
    for name, kernel in zip(names, kernels, strict=True):
        state = []
        for part in part_names(kernel):
            column = f"{name}.{part}"
            if column in opaque:
                state.append(opaque[column][start:stop])
            elif column in table.column_names:
                state.append(_from_arrow(rows.column(column), table.schema.field(column)))
            else:
                raise IncompatibleStateError(
                    f"window state has no column {column!r}; it has {table.column_names}"
                )
        out.append(tuple(state))
    return tuple(out)


def slice_table(
    names: Sequence[str], kernels: Sequence[Kernel], runs: Sequence[SliceRows]
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """The ``slices`` table (see the module docstring) of the engine tables ``runs``, one record
    batch each (empty ones left out), and the opaque partials concatenated in row order."""
    tables: list[pa.Table] = []
    opaque_runs: list[dict[str, np.ndarray]] = []
    for keys, starts, first_ends, parts in runs:
        if not len(keys):
            continue
        fields, arrays, opaque = partial_arrays(names, kernels, parts)
        ends = pa.nulls(len(keys), TIME_TYPE) if first_ends is None else time_array(first_ends)
        batch = pa.RecordBatch.from_arrays(
            [pa.array(keys), time_array(starts), ends, *arrays],
            schema=pa.schema(
                [
                    pa.field(KEY_ID, pa.int64()),
                    pa.field("slice_start", TIME_TYPE),
                    pa.field("first_end", TIME_TYPE),
                    *fields,
                ]
            ),
        )
        tables.append(pa.Table.from_batches([batch]))
        opaque_runs.append(opaque)
    if not tables:
        empty = partial_arrays(names, kernels, tuple(k.identity(0) for k in kernels))
        schema = pa.schema(
            [
                pa.field(KEY_ID, pa.int64()),
                pa.field("slice_start", TIME_TYPE),
                pa.field("first_end", TIME_TYPE),
                *empty[0],
            ]
        )
        return schema.empty_table(), empty[2]
    table = tables[0] if len(tables) == 1 else _concat(tables)
    opaque_all = {
        column: np.concatenate([o[column] for o in opaque_runs]) for column in opaque_runs[0]
    }
    return table, opaque_all


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Tables of equal columns as one (types unified when partials were typed differently,
    e.g. a min over strings whose first table held only nulls)."""
    if all(t.schema == tables[0].schema for t in tables):
        return pa.concat_tables(tables)
    return pa.concat_tables(tables, promote_options="permissive")


def slice_rows(
    table: pa.Table,
    names: Sequence[str],
    kernels: Sequence[Kernel],
    opaque: dict[str, np.ndarray],
    start: int,
    stop: int,
) -> SliceRows:
    """Rows ``start:stop`` of a ``slices`` table as engine arrays (``first_end`` None when no
    row of the range has one)."""
    rows = table.slice(start, stop - start)
    keys = int64_column(rows.column(KEY_ID))
    starts = int64_column(rows.column("slice_start"))
    ends_column = rows.column("first_end")
    first_ends = None
    if ends_column.null_count < len(ends_column):
        if ends_column.null_count:
            raise IncompatibleStateError(
                "window state: a run of the slices table mixes rows with and without first_end"
            )
        first_ends = int64_column(ends_column)
    return keys, starts, first_ends, partial_states(table, names, kernels, opaque, start, stop)


def dense_table(
    names: Sequence[str],
    kernels: Sequence[Kernel],
    key_ids: np.ndarray,
    parts: Parts,
    extra: dict[str, pa.Array] | None = None,
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """A per-key table: ``key_id``, the ``extra`` columns, the partials (arrays taken, so later
    mutation of the engine's dense arrays does not reach it)."""
    fields, arrays, opaque = partial_arrays(names, kernels, parts)
    columns = {KEY_ID: pa.array(key_ids, type=pa.int64()), **(extra or {})}
    schema = pa.schema([*(pa.field(n, a.type) for n, a in columns.items()), *fields])
    return pa.Table.from_arrays([*columns.values(), *arrays], schema=schema), opaque


def dense_parts(
    table: pa.Table,
    names: Sequence[str],
    kernels: Sequence[Kernel],
    opaque: dict[str, np.ndarray],
    identity: Parts,
) -> Parts:
    """``identity`` (dense per key, owned: written in place) with the table's rows scattered
    in at their ``key_id``."""
    if not table.num_rows:
        return identity
    keys = int64_column(table.column(KEY_ID))
    if int(keys.max()) >= len(identity[0][0]):
        raise IncompatibleStateError(
            f"window state: key id {int(keys.max())} beyond the {len(identity[0][0])} keys held"
        )
    values = partial_states(table, names, kernels, opaque)
    out = []
    for dense_state, state in zip(identity, values, strict=True):
        arrays = []
        for dense, value in zip(dense_state, state, strict=True):
            if dense.dtype != value.dtype:
                dense = dense.astype(np.result_type(dense.dtype, value.dtype))
            dense[keys] = value
            arrays.append(dense)
        out.append(tuple(arrays))
    return tuple(out)


# ------------------------------------------------------------------------------ sliding ---

SLIDING_VERSION = 4
"""Version of the sliding state layout (3: the engine's internal objects, before tables)."""


def _older(kind: str, state: Any, version: int) -> IncompatibleStateError:
    found = state.get("version") if isinstance(state, dict) else None
    if isinstance(state, dict) and found is not None and found != version:
        return IncompatibleStateError(
            f"{kind} window state has layout version {found}, this lambdasource reads {version}: "
            "the checkpoint was written by another release; start fresh (restore=None, or "
            "--restore none) or resume with the release that wrote it"
        )
    return IncompatibleStateError(f"{kind} window state expected, got something else")


def sliding_snapshot(engine: SlidingEngine) -> dict[str, Any]:
    """The state of ``engine`` as tables (module docstring). Slice tables are shared (never
    mutated); the dense per-key arrays are gathered into new arrays."""
    names, kernels = _sliding_names(engine), engine._ops.kernels
    chunks, pending = engine._slices.chunks, engine._slices.pending
    runs: list[SliceRows] = [
        *((c.table.keys, c.table.s, c.table.tag, c.table.parts) for c in chunks),
        *((t.keys, t.s, t.tag, t.parts) for t in pending),
    ]
    slices, slices_opaque = slice_table(names, kernels, runs)
    end = engine._completed_end
    current = np.flatnonzero(engine._ops.nonempty(engine._current_values))
    emitted, emitted_opaque = dense_table(
        names,
        kernels,
        current,
        tuple(tuple(a[current] for a in state) for state in engine._current_values),
        {"window_end": time_array(np.full(len(current), end if end is not None else 0))},
    )
    carried = np.flatnonzero(engine._ops.nonempty(engine._carried_prefix))
    prefix, prefix_opaque = dense_table(
        names,
        kernels,
        carried,
        tuple(tuple(a[carried] for a in state) for state in engine._carried_prefix),
    )
    repeats = pa.table(
        {
            KEY_ID: pa.array(engine._repeat_keys, type=pa.int64()),
            "window_end": time_array(engine._repeat_ends),
        }
    )
    return {
        "version": SLIDING_VERSION,
        "kind": "sliding",
        "window": {
            "size": engine.size,
            "slide": engine.slide,
            "lateness": engine._lateness,
            "aggregates": list(engine.names),
        },
        "watermark": engine._watermark,
        "completed_end": end,
        "keys": engine._key_count,
        "runs": {
            "chunks": [[c.lo, c.hi, len(c.table)] for c in chunks],
            "pending": [len(t) for t in pending],
        },
        "slices": slices,
        "emitted": emitted,
        "prefix": prefix,
        "repeats": repeats,
        "opaque": {"slices": slices_opaque, "emitted": emitted_opaque, "prefix": prefix_opaque},
        "distinct": {engine.names[i]: tracker.snapshot() for i, tracker in engine._presence},
    }


def _sliding_names(engine: SlidingEngine) -> list[str]:
    """Names of the engine's kernels, its internal record count (if any) last."""
    extra = len(engine._ops.kernels) - len(engine.names)
    return [*engine.names, *(["_records"] if extra else [])]


def sliding_restore(engine: SlidingEngine, state: Any) -> None:
    """Give ``engine`` the state of a :func:`sliding_snapshot` of a compatible engine."""
    if not isinstance(state, dict) or state.get("version") != SLIDING_VERSION:
        raise _older("sliding", state, SLIDING_VERSION)
    window = state["window"]
    have = {
        "size": engine.size,
        "slide": engine.slide,
        "lateness": engine._lateness,
        "aggregates": list(engine.names),
    }
    if window != have:
        raise IncompatibleStateError(f"SlidingEngine: snapshot has {window}, engine has {have}")
    names, kernels = _sliding_names(engine), engine._ops.kernels
    opaque = state.get("opaque") or {}
    slices = state["slices"]
    offset = 0
    chunks: list[tuple[int, int, SliceRows]] = []
    for lo, hi, rows in state["runs"]["chunks"]:
        run = slice_rows(slices, names, kernels, opaque.get("slices", {}), offset, offset + rows)
        chunks.append((int(lo), int(hi), run))
        offset += rows
    pending: list[SliceRows] = []
    for rows in state["runs"]["pending"]:
        pending.append(
            slice_rows(slices, names, kernels, opaque.get("slices", {}), offset, offset + rows)
        )
        offset += rows
    if offset != slices.num_rows:
        raise IncompatibleStateError(
            f"SlidingEngine: runs cover {offset} rows, the slices table has {slices.num_rows}"
        )
    engine._watermark, engine._completed_end = state["watermark"], state["completed_end"]
    engine._key_count = int(state["keys"])
    ops = engine._ops
    current = dense_parts(
        state["emitted"], names, kernels, opaque.get("emitted", {}), ops.identity(engine._key_count)
    )
    prefix = None
    if state.get("prefix") is not None:
        prefix = dense_parts(
            state["prefix"],
            names,
            kernels,
            opaque.get("prefix", {}),
            ops.identity(engine._key_count),
        )
    repeats = state["repeats"]
    engine._restored(
        chunks,
        pending,
        current,
        prefix,
        (int64_column(repeats.column(KEY_ID)), int64_column(repeats.column("window_end"))),
    )
    distinct = state["distinct"]
    wanted = [engine.names[i] for i, _ in engine._presence]
    if sorted(distinct) != sorted(wanted):
        raise IncompatibleStateError(
            f"SlidingEngine: snapshot's count_distinct aggregates {sorted(distinct)} differ from "
            f"the engine's {sorted(wanted)}"
        )
    for i, tracker in engine._presence:
        tracker.restore(distinct[engine.names[i]])
