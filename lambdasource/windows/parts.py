"""Partial states of a sliding engine's kernels, and sorted-run helpers (numpy, no Python loops).

A value of the engine is :data:`Parts`: one partial state per kernel (each a tuple of equal-length
arrays), row ``i`` of every array belonging to the same (key, slice) or window. :class:`PartialOps`
applies all kernels at once and guarantees a record count (to tell empty windows).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import aggregates as agg
from .aggregates import Kernel, Rows, State

__all__ = [
    "CODE_LIMIT",
    "EMPTY",
    "PartialOps",
    "Parts",
    "PresenceSlot",
    "concat_parts",
    "copy_parts",
    "lex_order",
    "run_ends",
    "run_starts",
    "scatter_parts",
    "slice_parts",
    "take_parts",
    "unique_values",
]

Parts = tuple[State, ...]
"""Partial states of every kernel of an engine (plus, last, an internal record count: see
:class:`PartialOps`)."""

CODE_LIMIT = 1 << 62
"""Order-preserving int64 codes stay below this (so ``code + small`` never overflows)."""
EMPTY = np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------------------- partials ---


def take_parts(parts: Parts, idx: np.ndarray) -> Parts:
    return tuple(tuple(a[idx] for a in state) for state in parts)


def slice_parts(parts: Parts, n: int) -> Parts:
    return tuple(tuple(a[:n] for a in state) for state in parts)


def copy_parts(parts: Parts) -> Parts:
    return tuple(tuple(a.copy() for a in state) for state in parts)


def concat_parts(many: list[Parts]) -> Parts:
    """Concatenate (skipping empty parts, whose dtype may predate the data's)."""
    full = [p for p in many if len(p[-1][0])]
    if not full:
        return many[0]
    if len(full) == 1:
        return full[0]
    return tuple(
        tuple(np.concatenate(arrays) for arrays in zip(*states, strict=True))
        for states in zip(*full, strict=True)
    )


def scatter_parts(dst: Parts, idx: np.ndarray, src: Parts) -> Parts:
    """``dst[idx] = src`` in place (dst must be owned), promoting dtypes when needed."""
    out = []
    for dst_state, src_state in zip(dst, src, strict=True):
        arrays = []
        for d, s in zip(dst_state, src_state, strict=True):
            if d.dtype != s.dtype:
                common = np.result_type(d.dtype, s.dtype)
                if common != d.dtype:
                    d = d.astype(common)
            d[idx] = s
            arrays.append(d)
        out.append(tuple(arrays))
    return tuple(out)


class PartialOps:
    """The kernels of an engine applied to all parts, plus a record count telling empty windows:
    a plain ``count()`` among the kernels serves as that count, else an internal one is appended
    (last). Either way ``parts[self.counter]`` is the record count."""

    def __init__(self, kernels: list[Kernel]) -> None:
        self.user = len(kernels)
        counter = next(
            (i for i, k in enumerate(kernels) if type(k) is agg._Count and k.column is None), None
        )
        self.kernels = list(kernels) if counter is not None else [*kernels, agg.count()]
        self.counter = counter if counter is not None else len(kernels)

    def identity(self, n: int) -> Parts:
        return tuple(k.identity(n) for k in self.kernels)

    def combine(self, a: Parts, b: Parts) -> Parts:
        return tuple(k.combine(x, y) for k, x, y in zip(self.kernels, a, b, strict=True))

    def reduce(self, parts: Parts, groups: np.ndarray, n: int) -> Parts:
        return tuple(k.reduce(x, groups, n) for k, x in zip(self.kernels, parts, strict=True))

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> Parts:
        return tuple(k.partial(rows, groups, n) for k in self.kernels)

    def results(self, parts: Parts) -> list[pa.Array]:
        return [k.result(x) for k, x in zip(self.kernels[: self.user], parts, strict=False)]

    def results_numpy(self, parts: Parts) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """:meth:`results` as ``(values, valid)`` numpy pairs, or None if a kernel has none."""
        out = []
        for k, x in zip(self.kernels[: self.user], parts, strict=False):
            r = k.result_numpy(x)
            if r is None:
                return None
            out.append(r)
        return out

    def nonempty(self, parts: Parts) -> np.ndarray:
        return parts[self.counter][0] > 0


class PresenceSlot(Kernel):
    """Stands in for a ``count_distinct`` kernel inside a sliding engine's partial states.

    Its partials are int64 zeros (scans treat it as a cheap additive kernel, no sets); the engine
    overwrites this slot of every window value it evaluates with the counts of its
    :class:`~.distinct.PairPresence` tracker, so the placeholder's own values are never emitted.
    """

    name = "count_distinct"
    additive = True

    @property
    def output_type(self) -> pa.DataType:
        return pa.int64()

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> State:
        return (np.zeros(n, dtype=np.int64),)

    def identity(self, n: int) -> State:
        return (np.zeros(n, dtype=np.int64),)

    def combine(self, a: State, b: State) -> State:
        return (a[0] + b[0],)

    def reduce(self, state: State, groups: np.ndarray, n: int) -> State:
        return (np.zeros(n, dtype=np.int64),)

    def result(self, state: State) -> pa.Array:
        return pa.array(state[0], type=pa.int64())


# ------------------------------------------------------------------------------ sorted runs ---


def run_starts(*cols: np.ndarray) -> np.ndarray:
    """Flags marking where a run of equal tuples starts in sorted columns."""
    n = len(cols[0])
    flags = np.ones(n, dtype=bool)
    if n > 1 and len(cols) == 1:
        np.not_equal(cols[0][1:], cols[0][:-1], out=flags[1:])
    elif n > 1:
        differ = cols[0][1:] != cols[0][:-1]
        for c in cols[1:]:
            differ |= c[1:] != c[:-1]
        flags[1:] = differ
    return flags


def run_ends(col: np.ndarray) -> np.ndarray:
    """Flags marking the last element of each run of equal values."""
    flags = np.ones(len(col), dtype=bool)
    if len(col) > 1:
        np.not_equal(col[1:], col[:-1], out=flags[:-1])
    return flags


def lex_order(
    a: np.ndarray,
    b: np.ndarray,
    step: int,
    c: np.ndarray | None = None,
    cstep: int = 1,
    *,
    stable: bool = False,
) -> np.ndarray:
    """Permutation sorting rows by ``(a, b[, c])``; ``a >= 0``, ``b`` (``c``) multiples of
    ``step`` (``cstep``). ``stable`` keeps equal rows in input order (needed where they merge)."""
    if len(a) == 0:
        return EMPTY
    bmin = int(b.min())
    span = (int(b.max()) - bmin) // step + 1
    cmin = cspan = 0
    if c is not None:
        cmin = int(c.min())
        cspan = (int(c.max()) - cmin) // cstep + 1
    ncodes = (int(a.max()) + 1) * span * max(cspan, 1)
    if int(a.min()) >= 0 and ncodes < CODE_LIMIT:
        code = a * span + (b - bmin) // step
        if c is not None:
            code = code * cspan + (c - cmin) // cstep
        shift = len(a).bit_length()
        if ncodes < 1 << (63 - shift):  # pack (code, position): a plain sort is stable and fast
            code <<= shift
            code |= np.arange(len(a), dtype=np.int64)
            code.sort()
            code &= (1 << shift) - 1
            return code
        return np.argsort(code, kind="stable" if stable else None)
    return np.lexsort((b, a) if c is None else (c, b, a))


def unique_values(a: np.ndarray) -> np.ndarray:
    """``np.unique`` without the sort when all values are equal (the common case here)."""
    if len(a) and int(a.min()) == int(a.max()):
        return a[:1].copy()
    return np.unique(a)
