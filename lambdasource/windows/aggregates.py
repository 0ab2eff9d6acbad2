"""Aggregates: the public constructors (``ls.count()``, ``ls.sum(col)``…) and their vectorised kernels.

A **partial state** is a tuple of equal-length numpy arrays; element ``i`` is the partial aggregate
of group ``i`` (a (key, slice) pair, a session, a window). Every kernel provides

- ``partial(rows, groups, n)`` – aggregate input rows into ``n`` groups (``groups[i]`` in ``[0, n)``);
- ``identity(n)`` – ``n`` empty partials;
- ``combine(a, b)`` – element-wise merge of two partial states (``a`` holds the earlier data);
- ``reduce(state, groups, n)`` – merge the elements of one state into ``n`` groups;
- ``result(state)`` – the final values as a ``pa.Array`` (null for empty groups).

``combine`` is associative (built-ins are also commutative), so windows can be evaluated from
prefix/suffix merges of slices without ever re-reading records. Built-ins run in numpy; a
user-defined :class:`Aggregate` runs one Python call per group, never per record.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from ..errors import SchemaError

State = tuple[np.ndarray, ...]


@dataclass(frozen=True, slots=True)
class Rows:
    """The input rows of one aggregation step.

    ``columns`` holds the projected input columns; ``times`` is event time (int64 µs) and ``seq`` a
    strictly increasing arrival number, both used to break ties deterministically (first/last).
    """

    columns: dict[str, pa.Array]
    times: np.ndarray
    seq: np.ndarray

    def __len__(self) -> int:
        return len(self.times)


def take(state: State, index: np.ndarray) -> State:
    """Gather elements of a partial state."""
    return tuple(a[index] for a in state)


def concat(states: Sequence[State]) -> State:
    """Concatenate partial states of the same kernel."""
    return tuple(np.concatenate(parts) for parts in zip(*states, strict=True))


def group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    """Indices where a run of equal values starts in a sorted array (empty input → empty)."""
    if len(sorted_groups) == 0:
        return np.zeros(0, dtype=np.int64)
    flags = np.empty(len(sorted_groups), dtype=bool)
    flags[0] = True
    np.not_equal(sorted_groups[1:], sorted_groups[:-1], out=flags[1:])
    return np.flatnonzero(flags)


# --------------------------------------------------------------------------------------- values ---


@dataclass(frozen=True, slots=True)
class _Codec:
    """How an Arrow column maps to a numpy array of comparable values, and back."""

    arrow_type: pa.DataType
    kind: str  # "int", "float", "bool", "temporal", "object"

    @classmethod
    def of(cls, dtype: pa.DataType) -> _Codec:
        if pa.types.is_integer(dtype):
            return cls(dtype, "int")
        if pa.types.is_floating(dtype):
            return cls(dtype, "float")
        if pa.types.is_boolean(dtype):
            return cls(dtype, "bool")
        if pa.types.is_temporal(dtype):
            return cls(dtype, "temporal")
        return cls(dtype, "object")

    def to_numpy(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid) with nulls replaced by a neutral filler."""
        valid = (
            np.ones(len(arr), dtype=bool)
            if arr.null_count == 0
            else np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))
        )
        if self.kind == "temporal":
            width = pa.int32() if arr.type.bit_width == 32 else pa.int64()
            arr = arr.cast(width)
        if self.kind == "object":
            values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
        else:
            values = np.asarray(
                arr.fill_null(0 if self.kind != "bool" else False).to_numpy(zero_copy_only=False)
            )
        return values, valid

    def empty(self, n: int) -> np.ndarray:
        if self.kind == "object":
            return np.full(n, None, dtype=object)
        if self.kind == "float":
            return np.zeros(n, dtype=np.float64)
        if self.kind == "bool":
            return np.zeros(n, dtype=bool)
        return np.zeros(n, dtype=np.int64)

    def to_arrow(self, values: np.ndarray, valid: np.ndarray) -> pa.Array:
        mask = ~valid
        if self.kind == "object":
            out = values.copy()
            out[mask] = None
            return pa.array(out, type=self.arrow_type)
        if self.kind == "temporal":
            width = pa.int32() if self.arrow_type.bit_width == 32 else pa.int64()
            np_width = np.int32 if width == pa.int32() else np.int64
            return pa.array(values.astype(np_width), type=width, mask=mask).cast(self.arrow_type)
        return pa.array(values, mask=mask).cast(self.arrow_type)


def _column(rows: Rows, name: str) -> pa.Array:
    col = rows.columns[name]
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


# ------------------------------------------------------------------------------------- kernels ---


class Kernel(abc.ABC):
    """A vectorised aggregate (see the module docstring for the contract)."""

    name: ClassVar[str] = "aggregate"
    additive: ClassVar[bool] = False
    """True when ``combine`` adds every state array element-wise (lets scans use cumsum)."""
    counts_distinct: ClassVar[bool] = False
    """True for ``count_distinct``: sliding engines count it by (key, value) pair presence
    (``windows/distinct.py``) instead of merging its partial states."""

    def __init__(self, column: str | None = None) -> None:
        self.column = column

    @property
    def input_columns(self) -> tuple[str, ...]:
        return () if self.column is None else (self.column,)

    def bind(self, schema: pa.Schema | None, where: str) -> None:
        """Check the input column against ``schema`` (``None`` = not known until run time)."""
        if self.column is None or schema is None:
            return
        if self.column not in schema.names:
            raise SchemaError(
                f"{where}: {self.name}({self.column!r}) names an unknown column; "
                f"the stream has {schema.names}"
            )
        self._bind_type(schema.field(self.column).type, where)

    def _bind_type(self, dtype: pa.DataType, where: str) -> None:
        """Validate/record the input type (default: any type)."""

    @property
    @abc.abstractmethod
    def output_type(self) -> pa.DataType: ...

    @abc.abstractmethod
    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> State: ...

    @abc.abstractmethod
    def identity(self, n: int) -> State: ...

    @abc.abstractmethod
    def combine(self, a: State, b: State) -> State: ...

    @abc.abstractmethod
    def reduce(self, state: State, groups: np.ndarray, n: int) -> State: ...

    @abc.abstractmethod
    def result(self, state: State) -> pa.Array: ...

    def result_numpy(self, state: State) -> tuple[np.ndarray, np.ndarray] | None:
        """``(values, valid)`` equal element-wise to :meth:`result` (same type, nulls where not
        ``valid``), for fast comparisons; None when the kernel has no such numpy form."""
        return None

    def __repr__(self) -> str:
        return f"{self.name}({self.column!r})" if self.column else f"{self.name}()"


def _bincount(groups: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(groups, weights=weights, minlength=n)


class _Count(Kernel):
    name = "count"
    additive = True

    @property
    def output_type(self) -> pa.DataType:
        return pa.int64()

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> State:
        if self.column is None:
            return (_bincount(groups, n).astype(np.int64, copy=False),)
        arr = _column(rows, self.column)
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))
        return (_bincount(groups[valid], n).astype(np.int64),)

    def identity(self, n: int) -> State:
        return (np.zeros(n, dtype=np.int64),)

    def combine(self, a: State, b: State) -> State:
        return (a[0] + b[0],)

    def reduce(self, state: State, groups: np.ndarray, n: int) -> State:
        out = np.zeros(n, dtype=np.int64)
        np.add.at(out, groups, state[0])
        return (out,)

    def result(self, state: State) -> pa.Array:
        return pa.array(state[0], type=pa.int64())

    def result_numpy(self, state: State) -> tuple[np.ndarray, np.ndarray] | None:
        return (
            (state[0], np.ones(len(state[0]), dtype=bool)) if state[0].dtype == np.int64 else None
        )


class _Sum(Kernel):
    """Sum of non-null values; null when a group has none. Integers sum exactly in int64."""

    name = "sum"
    additive = True
    _float = False

    def _bind_type(self, dtype: pa.DataType, where: str) -> None:
        if pa.types.is_integer(dtype) or pa.types.is_boolean(dtype):
            self._float = False
        elif pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
            self._float = True
        else:
            raise SchemaError(
                f"{where}: {self.name}({self.column!r}) needs a numeric column, got {dtype}"
            )

    @property
    def output_type(self) -> pa.DataType:
        return pa.float64() if self._float else pa.int64()

    def _values(self, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        assert self.column is not None
        arr = _column(rows, self.column)
        if pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
            self._float = True
            arr = arr.cast(pa.float64())
        else:
            arr = arr.cast(pa.int64())
        valid = (
            np.ones(len(arr), dtype=bool)
            if arr.null_count == 0
            else np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))
        )
        return np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False)), valid

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> State:
        values, valid = self._values(rows)
        counted = groups if bool(valid.all()) else groups[valid]
        nn = _bincount(counted, n).astype(np.int64, copy=False)
        if values.dtype.kind == "f":
            return (_bincount(groups, n, values), nn)
        total = np.zeros(n, dtype=np.int64)
        np.add.at(total, groups, values)
        return (total, nn)

    def identity(self, n: int) -> State:
        return (np.zeros(n, dtype=np.float64 if self._float else np.int64), np.zeros(n, np.int64))

    def combine(self, a: State, b: State) -> State:
        return (a[0] + b[0], a[1] + b[1])

    def reduce(self, state: State, groups: np.ndarray, n: int) -> State:
        total = np.zeros(n, dtype=state[0].dtype)
        nn = np.zeros(n, dtype=np.int64)
        np.add.at(total, groups, state[0])
        np.add.at(nn, groups, state[1])
        return (total, nn)

    def result(self, state: State) -> pa.Array:
        return pa.array(state[0], type=self.output_type, mask=state[1] == 0)

    def result_numpy(self, state: State) -> tuple[np.ndarray, np.ndarray] | None:
        expected = np.float64 if self.output_type == pa.float64() else np.int64
        return (state[0], state[1] != 0) if state[0].dtype == expected else None


class _Mean(_Sum):
    name = "mean"

    @property
    def output_type(self) -> pa.DataType:
        return pa.float64()

    def result(self, state: State) -> pa.Array:
        nn = state[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = state[0].astype(np.float64) / np.maximum(nn, 1)
        return pa.array(values, type=pa.float64(), mask=nn == 0)

    def result_numpy(self, state: State) -> tuple[np.ndarray, np.ndarray] | None:
        nn = state[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = state[0].astype(np.float64) / np.maximum(nn, 1)
        return values, nn != 0


class _Extreme(Kernel):
    """min/max of non-null values: state (value, has)."""

    _codec: _Codec | None = None
    _pick_first: ClassVar[bool]  # True: min

    def _bind_type(self, dtype: pa.DataType, where: str) -> None:
        if pa.types.is_nested(dtype):
            raise SchemaError(
                f"{where}: {self.name}({self.column!r}) needs an orderable column, got {dtype}"
            )
        self._codec = _Codec.of(dtype)

    def _codec_for(self, arr: pa.Array) -> _Codec:
        if self._codec is None or self._codec.arrow_type != arr.type:
            self._codec = _Codec.of(arr.type)
        return self._codec

    @property
    def output_type(self) -> pa.DataType:
        return self._codec.arrow_type if self._codec else pa.null()

    def _better(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Where ``a`` should win over ``b``."""
        return a <= b if self._pick_first else a >= b

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> State:
        assert self.column is not None
        arr = _column(rows, self.column)
        codec = self._codec_for(arr)
        values, valid = codec.to_numpy(arr)
        return self.reduce((values[valid], np.ones(int(valid.sum()), bool)), groups[valid], n)

    def identity(self, n: int) -> State:
        codec = self._codec or _Codec(pa.null(), "object")
        return (codec.empty(n), np.zeros(n, dtype=bool))

    def combine(self, a: State, b: State) -> State:
        av, ah = a
        bv, bh = b
        if av.dtype == object:
            take_a = ah & ~bh
            both = np.flatnonzero(ah & bh)
            if len(both):
                take_a[both] = self._better(av[both], bv[both])
        else:
            take_a = ah & (~bh | self._better(av, bv))
        return (np.where(take_a, av, bv), ah | bh)

    def reduce(self, state: State, groups: np.ndarray, n: int) -> State:
        values, has = state
        out_v = _empty_like(values, n)
        out_h = np.zeros(n, dtype=bool)
        sel = np.flatnonzero(has)
        if len(sel) == 0:
            return (out_v, out_h)
        g = groups[sel]
        v = values[sel]
        if v.dtype == object:  # Python ordering (strings, decimals…); lexsort needs numbers
            order = np.asarray(sorted(range(len(v)), key=lambda i: (g[i], v[i])), dtype=np.int64)
        else:
            order = np.lexsort((v, g))
        starts = group_starts(g[order])
        pick = starts if self._pick_first else np.append(starts[1:], len(order)) - 1
        chosen = order[pick]
        out_v[g[chosen]] = v[chosen]
        out_h[g[chosen]] = True
        return (out_v, out_h)

    def result(self, state: State) -> pa.Array:
        assert self._codec is not None
        return self._codec.to_arrow(state[0], state[1])


class _Min(_Extreme):
    name = "min"
    _pick_first = True


class _Max(_Extreme):
    name = "max"
    _pick_first = False


class _Positional(Kernel):
    """first/last by event time (ties: arrival order). State (time, seq, value, has)."""

    _codec: _Codec | None = None
    _first: ClassVar[bool]

    def _bind_type(self, dtype: pa.DataType, where: str) -> None:
        self._codec = _Codec.of(dtype)

    @property
    def output_type(self) -> pa.DataType:
        return self._codec.arrow_type if self._codec else pa.null()

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> State:
        assert self.column is not None
        arr = _column(rows, self.column)
        if self._codec is None or self._codec.arrow_type != arr.type:
            self._codec = _Codec.of(arr.type)
        values, valid = self._codec.to_numpy(arr)
        # nulls count as values here (first row's value, even if null), as SQL arg_min does not:
        # we follow "first/last record by time" and keep validity in a separate flag
        state = (rows.times, rows.seq, values, np.ones(len(values), dtype=bool), valid)
        return self.reduce(state, groups, n)

    def identity(self, n: int) -> State:
        codec = self._codec or _Codec(pa.null(), "object")
        return (
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            codec.empty(n),
            np.zeros(n, bool),
            np.zeros(n, bool),
        )

    def _a_wins(self, a: State, b: State) -> np.ndarray:
        at, aseq, _, ah, _ = a
        bt, bseq, _, bh, _ = b
        if self._first:
            earlier = (at < bt) | ((at == bt) & (aseq < bseq))
        else:
            earlier = (at > bt) | ((at == bt) & (aseq > bseq))
        return ah & (~bh | earlier)

    def combine(self, a: State, b: State) -> State:
        wins = self._a_wins(a, b)
        at, aseq, av, ah, aok = a
        bt, bseq, bv, bh, bok = b
        return (
            np.where(wins, at, bt),
            np.where(wins, aseq, bseq),
            np.where(wins, av, bv),
            ah | bh,
            np.where(wins, aok, bok),
        )

    def reduce(self, state: State, groups: np.ndarray, n: int) -> State:
        times, seq, values, has, _ = state
        out = (
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            _empty_like(values, n),
            np.zeros(n, bool),
            np.zeros(n, bool),
        )
        sel = np.flatnonzero(has)
        if len(sel) == 0:
            return out
        g = groups[sel]
        order = np.lexsort((seq[sel], times[sel], g))
        starts = group_starts(g[order])
        pick = starts if self._first else np.append(starts[1:], len(order)) - 1
        chosen = sel[order[pick]]
        targets = groups[chosen]
        for dst, src in zip(out, state, strict=True):
            dst[targets] = src[chosen]
        return out

    def result(self, state: State) -> pa.Array:
        assert self._codec is not None
        return self._codec.to_arrow(state[2], state[3] & state[4])


def _empty_like(values: np.ndarray, n: int) -> np.ndarray:
    return np.full(n, None, dtype=object) if values.dtype == object else np.zeros(n, values.dtype)


class _First(_Positional):
    name = "first"
    _first = True


class _Last(_Positional):
    name = "last"
    _first = False


class _CountDistinct(Kernel):
    """Exact count of distinct non-null values. State: an object array of frozensets."""

    name = "count_distinct"
    counts_distinct = True

    @property
    def output_type(self) -> pa.DataType:
        return pa.int64()

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> State:
        assert self.column is not None
        arr = _column(rows, self.column)
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))
        values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)[valid]
        g = groups[valid]
        sets: list[set[Any]] = [set() for _ in range(n)]
        for gi, v in zip(g.tolist(), values.tolist(), strict=True):
            sets[gi].add(v)
        out = np.empty(n, dtype=object)
        out[:] = [frozenset(s) for s in sets]
        return (out,)

    def identity(self, n: int) -> State:
        out = np.empty(n, dtype=object)
        out[:] = [frozenset()] * n
        return (out,)

    def combine(self, a: State, b: State) -> State:
        out = np.empty(len(a[0]), dtype=object)
        out[:] = [x | y for x, y in zip(a[0], b[0], strict=True)]
        return (out,)

    def reduce(self, state: State, groups: np.ndarray, n: int) -> State:
        sets: list[frozenset[Any]] = [frozenset()] * n
        for gi, s in zip(groups.tolist(), state[0], strict=True):
            sets[gi] = sets[gi] | s
        out = np.empty(n, dtype=object)
        out[:] = sets
        return (out,)

    def result(self, state: State) -> pa.Array:
        return pa.array([len(s) for s in state[0]], type=pa.int64())


# ----------------------------------------------------------------------------- user-defined ---


class Aggregate(abc.ABC):
    """Base class for user-defined aggregates, called once per group with a batch of values.

    Subclasses set ``output_type`` (a ``pa.DataType``) and implement:

    - ``init()`` → a fresh state (any Python value; treat states as immutable);
    - ``update(state, values: pa.Array)`` → new state after seeing a batch of a group's values
      (the values of ``column``, or the group's event times when ``column`` is None);
    - ``merge(a, b)`` → state of the union (``a`` holds earlier data); must be associative;
    - ``result(state)`` → the output value (a Python scalar or ``None``).

    The engine never needs a ``retract``: sliding windows are evaluated by merging slice partials
    (prefix/suffix), so any associative ``merge`` suffices. Example::

        class Spread(ls.Aggregate):
            output_type = pa.float64()
            def init(self): return (math.inf, -math.inf)
            def update(self, s, values):
                mm = pc.min_max(values)
                return (min(s[0], mm["min"].as_py()), max(s[1], mm["max"].as_py()))
            def merge(self, a, b): return (min(a[0], b[0]), max(a[1], b[1]))
            def result(self, s): return None if s[0] == math.inf else s[1] - s[0]
    """

    output_type: pa.DataType = pa.null()

    def __init__(self, column: str | None = None) -> None:
        self.column = column

    @abc.abstractmethod
    def init(self) -> Any: ...

    @abc.abstractmethod
    def update(self, state: Any, values: pa.Array) -> Any: ...

    @abc.abstractmethod
    def merge(self, a: Any, b: Any) -> Any: ...

    @abc.abstractmethod
    def result(self, state: Any) -> Any: ...

    def kernel(self) -> Kernel:
        return _UserKernel(self)


class _UserKernel(Kernel):
    """Adapts an :class:`Aggregate` to the kernel contract (object arrays of states)."""

    def __init__(self, agg: Aggregate) -> None:
        super().__init__(agg.column)
        self.agg = agg
        self.name = type(agg).__name__  # type: ignore[misc]

    @property
    def output_type(self) -> pa.DataType:
        return self.agg.output_type

    def _objects(self, items: Sequence[Any]) -> np.ndarray:
        out = np.empty(len(items), dtype=object)
        out[:] = list(items)
        return out

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> State:
        values = (
            _column(rows, self.column)
            if self.column is not None
            else pa.array(rows.times, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        )
        order = np.argsort(groups, kind="stable")
        gs = groups[order]
        starts = group_starts(gs)
        ends = np.append(starts[1:], len(gs))
        states = [self.agg.init() for _ in range(n)]
        taken = values.take(pa.array(order))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            gi = int(gs[s])
            states[gi] = self.agg.update(states[gi], taken.slice(s, e - s))
        return (self._objects(states),)

    def identity(self, n: int) -> State:
        return (self._objects([self.agg.init() for _ in range(n)]),)

    def combine(self, a: State, b: State) -> State:
        return (self._objects([self.agg.merge(x, y) for x, y in zip(a[0], b[0], strict=True)]),)

    def reduce(self, state: State, groups: np.ndarray, n: int) -> State:
        out = [self.agg.init() for _ in range(n)]
        for gi, s in zip(groups.tolist(), state[0], strict=True):
            out[gi] = self.agg.merge(out[gi], s)
        return (self._objects(out),)

    def result(self, state: State) -> pa.Array:
        return pa.array([self.agg.result(s) for s in state[0]], type=self.agg.output_type)


# ------------------------------------------------------------------------ public constructors ---


def count(column: str | None = None) -> Kernel:
    """Number of records (``column`` given: of non-null values of that column)."""
    return _Count(column)


def sum(column: str) -> Kernel:
    """Sum of non-null values; null for a window with none. Integers sum exactly (int64)."""
    return _Sum(column)


def mean(column: str) -> Kernel:
    """Arithmetic mean of non-null values (float64)."""
    return _Mean(column)


def min(column: str) -> Kernel:
    """Smallest non-null value."""
    return _Min(column)


def max(column: str) -> Kernel:
    """Largest non-null value."""
    return _Max(column)


def first(column: str) -> Kernel:
    """Value of the record with the earliest event time (ties: the one that arrived first)."""
    return _First(column)


def last(column: str) -> Kernel:
    """Value of the record with the latest event time (ties: the one that arrived last)."""
    return _Last(column)


def count_distinct(column: str) -> Kernel:
    """Exact number of distinct non-null values."""
    return _CountDistinct(column)


def as_kernel(value: Kernel | Aggregate, where: str) -> Kernel:
    """Accept a built-in kernel or a user :class:`Aggregate` instance."""
    if isinstance(value, Kernel):
        return value
    if isinstance(value, Aggregate):
        return value.kernel()
    raise SchemaError(
        f"{where}: expected an aggregate like ls.count() or an ls.Aggregate, got {value!r}"
    )
