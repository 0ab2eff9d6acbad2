"""Sliding and tumbling windows computed on slices: :class:`SlidingEngine`.

Notation (int64 µs): ``S`` size, ``D`` slide, ``g = gcd(S, D)`` the slice width. Window ``e`` (a
multiple of ``D``) is ``[e - S, e)``; it is complete when the watermark ``W >= e - 1``, and ``E``
is the newest completed end. A record at ``t`` touches one slice ``s = floor(t / g) * g``, which
belongs to the windows ``e_in(s) = ceil((s + g) / D) * D`` … ``e_last(s) = floor((s + S) / D) * D``
and leaves them at ``e_out = e_last + D``. A key's window value only changes at such *change
points*, so completing ``(E_prev, E_new]`` evaluates windows only there: the entering slices
``[E_prev, E_new)`` and the exiting slices ``[E_prev - S, E_new - S)`` — never one step per slide.

Evaluation ("two stacks", any associative ``combine``, no retraction so float sums never drift):
time is cut into blocks ``[b*S, (b+1)*S)``; window ``e`` with ``pb = floor((e - 1) / S)`` is
``suffix(block pb-1, s >= e - S) ⊕ prefix(block pb, s < e)``. Prefixes come from a segmented scan
of the entering slices seeded by a per-key carried prefix; suffixes from one segmented reverse
scan per block, done when the block is first needed (it is complete then) and cached.

State, O(keys × slices) (every table is sorted by ``(key, s[, tag])``, unique, never mutated):

- ``_pending``: slices not yet entered (``s >= E``), a few LSM-merged tables;
- ``_chunks``: entered slices (``s < E``), one table per advance; their ``[lo, hi)`` ranges tile
  the entered time line, so every accepted late record has exactly one chunk to merge into;
- ``_suf``: suffix values of the cached blocks (those future windows still need);
- ``_cur`` / ``_cp`` (dense per key): the window value at ``E``, and the prefix of block ``_cb``
  (``floor((E - 1) / S)``) over slices ``< E``;
- ``_hints`` (a cache, never snapshotted): per cached suffix table and key, the last lookup's
  answer, a lower bound for the next one (time only moves on), so most lookups walk a row or two
  instead of a binary search over the block; a hint is checked before it is used;
- ``_extra`` (``changes`` only): ``(key, end)`` pairs where a correction left a changelog row whose
  value equals the previous end's value, so later corrections know a row exists there.

A snapshot (``state_tables`` documents its tables) holds the slice tables (in their run order),
``_cur``, ``_cp``, ``_extra`` and the scalars; ``_suf``, ``_hints``, pair indexes, ``_cb`` and the
tagged keys ``_tk`` are derived and rebuilt on restore (``_cp`` too, when a producer leaves it out).

Lateness: ``a_min``, the first window end still accepting records (``e - 1 + L > W``), grows with
the watermark. A record joins windows ``[max(e_in, a_min), e_last]`` (late when empty); when
``a_min > e_in`` its slice row keeps ``tag = a_min`` so that closed windows ``< tag`` are still
evaluated without it. Slices below ``a_min - D - S`` are dropped (no window can need them).

``count_distinct`` kernels do not go through partial states (merging sets is slow and
superlinear): each has a :class:`~.distinct.PairPresence` tracker that counts (key, value) pairs
per slice, and a :class:`~.distinct.PresenceSlot` placeholder (zeros) in the parts. The hooks are
few: ``add`` feeds the trackers, ``_complete`` and ``_evaluate`` (corrections) overwrite the
placeholder slots of the values they evaluate with the trackers' counts, ``_prune``, ``snapshot``,
``restore`` and ``state_rows`` include the trackers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from . import aggregates as agg
from .aggregates import Kernel, Rows, State
from .arrays import ranges as _ranges
from .distinct import PairPresence, PresenceSlot
from .engine import EMIT_MODES, AddResult, Emission, EmitMode, WindowEngine
from .state_tables import SliceRows, sliding_restore, sliding_snapshot

__all__ = ["SlidingEngine"]

Parts = tuple[State, ...]
"""Partial states of every kernel of an engine (plus, last, an internal record count: see _Ops)."""

_I64_MIN = int(np.iinfo(np.int64).min)
_CODE_LIMIT = 1 << 62
_CHUNK_ROWS = 1 << 17  # entered tables smaller than this are merged with their neighbour
_EMPTY = np.zeros(0, dtype=np.int64)
_WALK_STEPS = 4  # rows a hinted search walks forward before it falls back to binary search


# ---------------------------------------------------------------------------- array helpers ---


def _ptake(p: Parts, idx: np.ndarray) -> Parts:
    return tuple(tuple(a[idx] for a in st) for st in p)


def _pslice(p: Parts, n: int) -> Parts:
    return tuple(tuple(a[:n] for a in st) for st in p)


def _pcopy(p: Parts) -> Parts:
    return tuple(tuple(a.copy() for a in st) for st in p)


def _pcat(ps: list[Parts]) -> Parts:
    """Concatenate (skipping empty parts, whose dtype may predate the data's)."""
    full = [p for p in ps if len(p[-1][0])]
    if not full:
        return ps[0]
    if len(full) == 1:
        return full[0]
    return tuple(
        tuple(np.concatenate(arrays) for arrays in zip(*states, strict=True))
        for states in zip(*full, strict=True)
    )


def _pscatter(dst: Parts, idx: np.ndarray, src: Parts) -> Parts:
    """``dst[idx] = src`` in place (dst must be owned), promoting dtypes when needed."""
    out = []
    for dst_st, src_st in zip(dst, src, strict=True):
        arrays = []
        for d, s in zip(dst_st, src_st, strict=True):
            if d.dtype != s.dtype:
                common = np.result_type(d.dtype, s.dtype)
                if common != d.dtype:
                    d = d.astype(common)
            d[idx] = s
            arrays.append(d)
        out.append(tuple(arrays))
    return tuple(out)


def _run_starts(*cols: np.ndarray) -> np.ndarray:
    """Flags marking where a run of equal tuples starts in sorted columns."""
    n = len(cols[0])
    flags = np.ones(n, dtype=bool)
    if n > 1:
        differ = cols[0][1:] != cols[0][:-1]
        for c in cols[1:]:
            differ |= c[1:] != c[:-1]
        flags[1:] = differ
    return flags


def _run_ends(col: np.ndarray) -> np.ndarray:
    """Flags marking the last element of each run of equal values."""
    flags = np.ones(len(col), dtype=bool)
    if len(col) > 1:
        flags[:-1] = col[1:] != col[:-1]
    return flags


def _lex_order(
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
        return _EMPTY
    bmin = int(b.min())
    span = (int(b.max()) - bmin) // step + 1
    cmin = cspan = 0
    if c is not None:
        cmin = int(c.min())
        cspan = (int(c.max()) - cmin) // cstep + 1
    ncodes = (int(a.max()) + 1) * span * max(cspan, 1)
    if int(a.min()) >= 0 and ncodes < _CODE_LIMIT:
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


def _unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` without the sort when all values are equal (the common case here)."""
    if len(a) and int(a.min()) == int(a.max()):
        return a[:1].copy()
    return np.unique(a)


class _PairIndex:
    """Lexicographic search for ``(key, s)`` pairs in rows sorted by ``(key, s)``.

    ``s`` and query values are multiples of ``step``. Rows are mapped to int64 codes preserving the
    order: ``key * width + offset`` when that fits, else dense ranks of ``s``.
    """

    __slots__ = ("_base", "_codes", "_kcap", "_step", "_uniq", "_width", "keys", "s")

    def __init__(self, keys: np.ndarray, s: np.ndarray, step: int) -> None:
        self.keys, self.s, self._step = keys, s, step
        self._uniq: np.ndarray | None = None
        self._base = 0
        if len(keys) == 0:
            self._kcap, self._width, self._codes = 0, 1, _EMPTY
            return
        self._kcap = int(keys[-1]) + 1
        self._base = int(s.min())
        span = (int(s.max()) - self._base) // step + 1
        if self._kcap * (span + 2) + span + 2 < _CODE_LIMIT:
            self._width = span + 2
            self._codes = keys * self._width + ((s - self._base) // step + 1)
        else:
            self._uniq = np.unique(s)
            self._width = len(self._uniq) + 1
            self._codes = keys * self._width + np.searchsorted(self._uniq, s)

    def __len__(self) -> int:
        return len(self.keys)

    def _query(self, qk: np.ndarray, qs: np.ndarray, right: bool) -> np.ndarray:
        qk = np.minimum(qk, self._kcap)
        if self._uniq is None:
            off = np.clip((qs - self._base) // self._step + 1, 0, self._width - 1)
            return np.searchsorted(
                self._codes, qk * self._width + off, "right" if right else "left"
            )
        rank = np.searchsorted(self._uniq, qs, "right" if right else "left")
        return np.searchsorted(self._codes, qk * self._width + rank, "left")

    def left(self, qk: np.ndarray, qs: np.ndarray) -> np.ndarray:
        """Number of rows ``< (qk, qs)``: the first row ``>= (qk, qs)``."""
        return self._query(qk, qs, False)

    def left_from(self, qk: np.ndarray, qs: np.ndarray, guess: np.ndarray) -> np.ndarray:
        """:meth:`left`, walking a few rows forward from ``guess`` (any int64 per query; a guess
        that is negative, beyond the answer or too far below it falls back to binary search)."""
        if self._uniq is not None:
            return self._query(qk, qs, False)
        codes, n = self._codes, len(self._codes)
        off = np.clip((qs - self._base) // self._step + 1, 0, self._width - 1)
        target = np.minimum(qk, self._kcap) * self._width + off
        pos = np.clip(guess, 0, n)
        bad = guess < 0
        chk = np.flatnonzero(~bad & (pos > 0))
        bad[chk] = codes[pos[chk] - 1] >= target[chk]  # a row before the guess is >= target
        todo = np.flatnonzero(~bad)
        for _ in range(_WALK_STEPS):
            p = pos[todo]
            todo = todo[(p < n) & (codes[np.minimum(p, n - 1)] < target[todo])]
            if not len(todo):
                break
            pos[todo] += 1
        rest = np.flatnonzero(bad)
        if len(todo):
            rest = np.concatenate([rest, todo])
        if len(rest):
            pos[rest] = np.searchsorted(codes, target[rest], "left")
        return pos

    def right(self, qk: np.ndarray, qs: np.ndarray) -> np.ndarray:
        """Number of rows ``<= (qk, qs)``."""
        return self._query(qk, qs, True)


@dataclass(frozen=True, slots=True, eq=False)
class _Table:
    """Slice rows: sorted by ``(keys, s, tag)`` and unique; never mutated once built.

    ``tag`` is the first window end a row may join (``None``: ``e_in(s)`` for every row).
    """

    keys: np.ndarray
    s: np.ndarray
    tag: np.ndarray | None
    parts: Parts

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx: np.ndarray) -> _Table:
        return _Table(
            self.keys[idx],
            self.s[idx],
            None if self.tag is None else self.tag[idx],
            _ptake(self.parts, idx),
        )


@dataclass(frozen=True, slots=True, eq=False)
class _Chunk:
    """Entered slice rows with ``lo <= s < hi``; chunk ranges tile the entered time line."""

    lo: int
    hi: int
    table: _Table


class _Ops:
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

    def reduce(self, p: Parts, groups: np.ndarray, n: int) -> Parts:
        return tuple(k.reduce(x, groups, n) for k, x in zip(self.kernels, p, strict=True))

    def partial(self, rows: Rows, groups: np.ndarray, n: int) -> Parts:
        return tuple(k.partial(rows, groups, n) for k in self.kernels)

    def results(self, p: Parts) -> list[pa.Array]:
        return [k.result(x) for k, x in zip(self.kernels[: self.user], p, strict=False)]

    def results_numpy(self, p: Parts) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """:meth:`results` as ``(values, valid)`` numpy pairs, or None if a kernel has none."""
        out = []
        for k, x in zip(self.kernels[: self.user], p, strict=False):
            r = k.result_numpy(x)
            if r is None:
                return None
            out.append(r)
        return out

    def nonempty(self, p: Parts) -> np.ndarray:
        return p[self.counter][0] > 0


def _seg_cumsum(a: np.ndarray, starts: np.ndarray, seg: np.ndarray, reverse: bool) -> np.ndarray:
    """Exact segmented (reverse) cumulative sum of an integer array (wrap-around cancels)."""
    cs = np.cumsum(a)
    if reverse:
        ends = np.append(starts[1:], len(a)) - 1
        return cs[ends][seg] - cs + a
    return cs - (cs[starts] - a[starts])[seg]


def _doubling_rounds(seg: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(src, active)`` pairs of the log-step rounds of a segmented scan (see :func:`_seg_scan`)."""
    rounds = []
    active = np.flatnonzero(seg[1:] == seg[:-1]) + 1
    step = 1
    while len(active):
        rounds.append((active - step, active))
        step *= 2
        active = active[active >= step]
        active = active[seg[active - step] == seg[active]]
    return rounds


def _seg_scan(ops: _Ops, vals: Parts, seg: np.ndarray, *, reverse: bool) -> Parts:
    """Inclusive segmented scan (``reverse``: suffix scan) of owned ``vals`` (may be mutated).

    ``seg`` is non-decreasing. Integer arrays of additive kernels use an exact segmented cumsum;
    the others log-step doubling: after the round with step ``2^r`` element ``i`` holds the
    combine of ``(i - 2^(r+1), i]`` within its segment; only pairs still inside one segment are
    touched, so the work shrinks with the segments' lengths. Float arrays of additive kernels run
    the same rounds with plain ``+`` (so results equal the generic path bit for bit).
    """
    if len(seg) < 2:
        return vals
    additive = [k.additive for k in ops.kernels]
    out = list(vals)
    cum: tuple[np.ndarray, np.ndarray] | None = None
    rounds: list[tuple[np.ndarray, np.ndarray]] | None = None
    for i, st in enumerate(vals):
        if not additive[i]:
            continue
        arrays = []
        for a in st:
            if a.dtype.kind in "iu":
                if cum is None:
                    flags = _run_starts(seg)
                    cum = (np.flatnonzero(flags), np.cumsum(flags) - 1)
                arrays.append(_seg_cumsum(a, cum[0], cum[1], reverse))
            else:
                if rounds is None:
                    rounds = _doubling_rounds(seg)
                for src, act in rounds:
                    merged = a[src] + a[act]
                    a[src if reverse else act] = merged
                arrays.append(a)
        out[i] = tuple(arrays)
    slow = [i for i, f in enumerate(additive) if not f]
    if not slow:
        return tuple(out)
    if rounds is None:
        rounds = _doubling_rounds(seg)
    kernels = [ops.kernels[i] for i in slow]
    sub: Parts = tuple(vals[i] for i in slow)
    for src, act in rounds:
        earlier, later = _ptake(sub, src), _ptake(sub, act)
        merged = tuple(k.combine(x, y) for k, x, y in zip(kernels, earlier, later, strict=True))
        sub = _pscatter(sub, src if reverse else act, merged)
    for i, st in zip(slow, sub, strict=True):
        out[i] = st
    return tuple(out)


def _null_where(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    if not mask.any():
        return arr
    return pc.if_else(pa.array(mask), pa.scalar(None, type=arr.type), arr)


def _same_numpy(
    ne_a: np.ndarray,
    res_a: list[tuple[np.ndarray, np.ndarray]],
    ne_b: np.ndarray,
    res_b: list[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """``SlidingEngine._same_values`` on numpy results (null == null, NaN == NaN)."""
    ok = ne_a & ne_b
    for (va, ma), (vb, mb) in zip(res_a, res_b, strict=True):
        eq = va == vb
        if va.dtype.kind == "f":
            eq |= np.isnan(va) & np.isnan(vb)
        ok &= np.where(ma & mb, eq, ~ma & ~mb)
    return ok | (~ne_a & ~ne_b)


def _same(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Null-aware element equality (null == null, NaN == NaN)."""
    va = np.asarray(a.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    vb = np.asarray(b.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    try:
        eq = pc.equal(a, b)
        if pa.types.is_floating(a.type):
            eq = pc.or_kleene(eq, pc.and_kleene(pc.is_nan(a), pc.is_nan(b)))
        eqn = np.asarray(eq.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        eqn = np.array([x == y for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True)], bool)
    return np.where(va & vb, eqn, ~va & ~vb)


# ------------------------------------------------------------------------------------ engine ---


class SlidingEngine(WindowEngine):
    """Keyed sliding/tumbling windows on slices (see the module docstring for the algorithm).

    Invariants between calls: every window ``e <= E`` has been emitted as the mode requires;
    ``_wm`` is the last watermark (``E = floor((_wm + 1) / D) * D`` up to ``flush_all``); chunks
    tile ``[lo_0, E)``; pending rows have ``s >= E`` and never carry tags.
    """

    def __init__(
        self,
        kernels: list[Kernel],
        emit: EmitMode,
        allowed_lateness: int,
        *,
        size: int,
        slide: int,
        names: Sequence[str] | None = None,
    ) -> None:
        if size <= 0 or slide <= 0 or slide > size:
            raise ConfigError(
                f"SlidingEngine: need 0 < slide <= size, got size={size} slide={slide}"
            )
        if allowed_lateness < 0:
            raise ConfigError(
                f"SlidingEngine: allowed_lateness must be >= 0, got {allowed_lateness}"
            )
        if emit not in EMIT_MODES:
            raise ConfigError(f"SlidingEngine: emit must be one of {EMIT_MODES}, got {emit!r}")
        super().__init__(kernels, emit, allowed_lateness, names)
        self.size, self.slide = int(size), int(slide)
        self._S, self._D = self.size, self.slide
        self._g = math.gcd(self._S, self._D)
        self._L = int(allowed_lateness)
        # count_distinct: a pair-presence tracker per kernel, a placeholder slot in the parts
        self._presence: list[tuple[int, PairPresence]] = [
            (i, PairPresence(k.column, size=self._S, slide=self._D, lateness=self._L))
            for i, k in enumerate(kernels)
            if k.counts_distinct and k.column is not None
        ]
        slots = {i for i, _ in self._presence}
        self._ops = _Ops([PresenceSlot() if i in slots else k for i, k in enumerate(kernels)])
        self._wm: int | None = None
        self._E: int | None = None
        self._cb: int | None = None
        self._nkeys = 0
        self._cur: Parts = self._ops.identity(0)
        self._cp: Parts = self._ops.identity(0)
        self._pending: list[_Table] = []
        self._chunks: list[_Chunk] = []
        self._los = _EMPTY
        self._his = _EMPTY
        self._suf: list[tuple[_Table, _PairIndex, np.ndarray]] = []  # (values, index, blocks)
        self._suf_blocks = _EMPTY
        self._suf_owner = _EMPTY
        self._hints: dict[int, np.ndarray] = {}  # id(suffix table) -> per-key search hints
        self._xk = _EMPTY
        self._xe = _EMPTY
        self._tk = _EMPTY  # keys of tagged late rows whose tag (= E + D) is a future change point

    # ------------------------------------------------------------------------------- public ---

    @property
    def watermark(self) -> int | None:
        """The last watermark the engine advanced to (None before the first)."""
        return self._wm

    def add(self, key_ids: np.ndarray, rows: Rows, watermark: int | None) -> AddResult:
        """Aggregate a batch; a ``watermark`` ahead of the engine's is applied first (advance)."""
        emitted: list[Emission] = []
        if watermark is not None and (self._wm is None or watermark > self._wm):
            pre = self.advance(int(watermark))
            if pre is not None:
                emitted.append(pre)
        n = len(rows)
        late = np.zeros(n, dtype=bool)
        if n == 0:
            return AddResult(late, Emission.concat(emitted))
        S, D, g = self._S, self._D, self._g
        keys = np.asarray(key_ids, dtype=np.int64)
        s = np.asarray(rows.times, dtype=np.int64) // g * g
        a_min = self._a_min()
        tagged: np.ndarray | None = None
        if a_min is not None:
            late = (s + S) // D * D < a_min
            tg = (-(-(s + g) // D) * D < a_min) & ~late
            tagged = tg if tg.any() else None
        if late.all():
            return AddResult(late, Emission.concat(emitted))
        table = self._group(rows, keys, s, tagged, np.flatnonzero(~late) if late.any() else None)
        self._grow(int(keys.max()) + 1)
        E = self._E
        accepted = ~late if late.any() else None
        for _, tracker in self._presence:  # rows s >= E: pending; s < E: staged until commit
            tracker.add(keys, s, rows.columns[tracker.column], accepted, E, a_min)
        if E is None or int(table.s.min()) >= E:
            self._pending_add(table)
        else:
            fwd = table.s >= E
            if fwd.any():
                self._pending_add(table.take(np.flatnonzero(fwd)))
            correction = self._late(table.take(np.flatnonzero(~fwd)))
            for _, tracker in self._presence:
                tracker.commit(E)
            if correction is not None:
                emitted.append(correction)
        return AddResult(late, Emission.concat(emitted))

    def advance(self, watermark: int) -> Emission | None:
        """Complete the windows with ``end - 1 <= watermark`` (stale watermarks are ignored)."""
        wm = int(watermark)
        if self._wm is not None and wm <= self._wm:
            return None
        self._wm = wm
        E_new = (wm + 1) // self._D * self._D
        if self._E is not None and E_new <= self._E:
            self._prune()
            return None
        return self._complete(E_new)

    def flush_all(self) -> Emission | None:
        """Complete every window up to the one after the last slice's last window.

        That is the watermark +infinity for ``every`` and ``changes`` (every key's trailing
        deletion row included); in ``latest`` each key's row is a deletion at that end.
        """
        tops = [int(t.s.max()) for t in self._pending if len(t)]
        tops += [int(c.table.s.max()) for c in self._chunks if len(c.table)]
        if not tops:
            return None
        E_t = (max(tops) + self._S) // self._D * self._D + self._D
        if self._E is not None and E_t <= self._E:
            return None
        self._wm = max(self._wm if self._wm is not None else _I64_MIN, E_t - 1)
        return self._complete(E_t)

    def state_rows(self) -> int:
        """Slice rows (pending + entered), count_distinct rows, 2 dense rows per key and the
        changelog repeats: what a snapshot holds (the suffix cache is rebuilt on demand)."""
        rows = sum(len(t) for t in self._pending) + sum(len(c.table) for c in self._chunks)
        rows += sum(tracker.rows() for _, tracker in self._presence)
        return rows + 2 * self._nkeys + len(self._xk)

    def snapshot(self) -> Any:
        """The state as tables (schema: ``state_tables``); slice tables shared, dense arrays
        taken, so nothing in it changes when the engine goes on."""
        return sliding_snapshot(self)

    def restore(self, state: Any) -> None:
        """Replace the state with one returned by :meth:`snapshot` of a compatible engine; the
        suffix cache and search hints start empty (rebuilt on demand)."""
        sliding_restore(self, state)

    def _restored(
        self,
        chunks: list[tuple[int, int, SliceRows]],
        pending: list[SliceRows],
        current: Parts,
        prefix: Parts | None,
        repeats: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Install restored tables (scalars ``_wm``, ``_E``, ``_nkeys`` already set) and rebuild
        what is derived: chunk bounds, the carried prefix when not given, tagged keys."""
        self._chunks = [_Chunk(lo, hi, _Table(*rows)) for lo, hi, rows in chunks]
        self._pending = [_Table(*rows) for rows in pending]
        self._cb = None if self._E is None else (self._E - 1) // self._S
        self._cur = current
        self._reindex_chunks()
        self._suf, self._hints = [], {}
        self._reindex_suffix()
        self._xk, self._xe = repeats
        self._cp = self._carried_prefix() if prefix is None else prefix
        E = self._E
        tagged = [
            c.table.keys[c.table.tag > E]
            for c in self._chunks
            if E is not None and c.table.tag is not None
        ]
        self._tk = np.unique(np.concatenate([_EMPTY, *tagged]))

    def _carried_prefix(self) -> Parts:
        """``_cp`` from the entered slices: per key, block ``_cb``'s slices below ``E``."""
        cp = self._ops.identity(self._nkeys)
        if self._E is None or self._cb is None:
            return cp
        t = self._gather(None, self._cb * self._S, self._E, with_tags=False)
        if not len(t):
            return cp
        keys = _unique(t.keys)
        ends = np.full(len(keys), self._E, dtype=np.int64)
        return _pscatter(cp, keys, self._windows(t, keys, ends, prefix_only=True))

    # ------------------------------------------------------------------------------ helpers ---

    def _a_min(self) -> int | None:
        """First window end that still accepts records (``e - 1 + L > W``)."""
        if self._wm is None:
            return None
        return -(-(self._wm + 2 - self._L) // self._D) * self._D

    def _e_in(self, s: np.ndarray) -> np.ndarray:
        return -(-(s + self._g) // self._D) * self._D

    def _tags(self, t: _Table) -> np.ndarray:
        return t.tag if t.tag is not None else self._e_in(t.s)

    def _grow(self, n: int) -> None:
        if n > self._nkeys:
            extra = self._ops.identity(n - self._nkeys)
            self._cur = _pcat([self._cur, extra])
            self._cp = _pcat([self._cp, _pcopy(extra)])
            self._nkeys = n

    def _normalize(
        self, keys: np.ndarray, s: np.ndarray, tag: np.ndarray | None, parts: Parts
    ) -> _Table:
        """Sort rows by ``(key, s, tag)`` and merge duplicates (earlier rows first)."""
        order = _lex_order(keys, s, self._g, tag, self._D, stable=True)
        keys, s = keys[order], s[order]
        tag = None if tag is None else tag[order]
        parts = _ptake(parts, order)
        flags = _run_starts(keys, s) if tag is None else _run_starts(keys, s, tag)
        if not flags.all():
            gid = np.cumsum(flags) - 1
            parts = self._ops.reduce(parts, gid, int(gid[-1]) + 1)
            keys, s = keys[flags], s[flags]
            tag = None if tag is None else tag[flags]
        if tag is not None and bool((tag == self._e_in(s)).all()):
            tag = None
        return _Table(keys, s, tag, parts)

    def _concat(self, tables: list[_Table], with_tags: bool) -> _Table:
        """Rows of several tables, unsorted (tags filled when ``with_tags``)."""
        tables = [t for t in tables if len(t)] or tables[:1]
        if len(tables) == 1 and (not with_tags or tables[0].tag is not None):
            return tables[0]
        return _Table(
            np.concatenate([t.keys for t in tables]),
            np.concatenate([t.s for t in tables]),
            np.concatenate([self._tags(t) for t in tables]) if with_tags else None,
            _pcat([t.parts for t in tables]),
        )

    def _group(
        self,
        rows: Rows,
        keys: np.ndarray,
        s: np.ndarray,
        tagged: np.ndarray | None,
        acc: np.ndarray | None,
    ) -> _Table:
        """Aggregate the accepted rows (``acc``; None = all) per ``(key, slice, tagged)``."""
        n = len(keys)
        ka, sa = (keys, s) if acc is None else (keys[acc], s[acc])
        ta = None if tagged is None else (tagged if acc is None else tagged[acc]).astype(np.int64)
        order = _lex_order(ka, sa, self._g, ta)
        ks, ss = ka[order], sa[order]
        ts = None if ta is None else ta[order]
        flags = _run_starts(ks, ss) if ts is None else _run_starts(ks, ss, ts)
        gid = np.cumsum(flags) - 1
        ng = int(gid[-1]) + 1
        if acc is None:
            groups = np.empty(n, dtype=np.int64)
            groups[order] = gid
            parts = self._ops.partial(rows, groups, ng)
        else:
            groups = np.full(n, ng, dtype=np.int64)  # late rows: a dummy group, dropped
            groups[acc[order]] = gid
            parts = _pslice(self._ops.partial(rows, groups, ng + 1), ng)
        gk, gs = ks[flags], ss[flags]
        tag = None
        if ts is not None:
            a_min = self._a_min()
            assert a_min is not None
            tag = np.where(ts[flags] > 0, a_min, self._e_in(gs))
        return _Table(gk, gs, tag, parts)

    # --------------------------------------------------------------------- pending / sealed ---

    def _pending_add(self, t: _Table) -> None:
        """Append; merge like a binary counter so merges cost O(n log n) in total."""
        self._pending.append(t)
        p = self._pending
        while len(p) >= 2 and len(p[-2]) <= len(p[-1]):
            b, a = p.pop(), p.pop()
            both = self._concat([a, b], with_tags=False)
            p.append(self._normalize(both.keys, both.s, None, both.parts))

    def _take_entering(self, E_new: int) -> _Table:
        """Remove and return the pending rows with ``s < E_new``, sorted and merged."""
        out: list[_Table] = []
        keep: list[_Table] = []
        for t in self._pending:
            m = t.s < E_new
            if m.all():
                out.append(t)
            elif not m.any():
                keep.append(t)
            else:
                out.append(t.take(np.flatnonzero(m)))
                keep.append(t.take(np.flatnonzero(~m)))
        self._pending = keep
        if not out:
            return _Table(_EMPTY, _EMPTY, None, self._ops.identity(0))
        if len(out) == 1:
            return out[0]
        both = self._concat(out, with_tags=False)
        return self._normalize(both.keys, both.s, None, both.parts)

    def _reindex_chunks(self) -> None:
        self._los = np.array([c.lo for c in self._chunks], dtype=np.int64)
        self._his = np.array([c.hi for c in self._chunks], dtype=np.int64)

    def _seal(self, ent: _Table, E0: int | None, E_new: int) -> None:
        """Append the entering rows as the chunk ``[E0, E_new)`` (small chunks get merged)."""
        chunks = self._chunks
        if not len(ent) and chunks:
            chunks[-1] = replace(chunks[-1], hi=E_new)
        else:
            chunks.append(_Chunk(E0 if E0 is not None else _I64_MIN, E_new, ent))
            while (
                len(chunks) >= 2
                and len(chunks[-2].table) <= len(chunks[-1].table)
                and len(chunks[-2].table) + len(chunks[-1].table) <= _CHUNK_ROWS
            ):
                b, a = chunks.pop(), chunks.pop()
                both = self._concat([a.table, b.table], with_tags=a.table.tag is not None)
                table = self._normalize(both.keys, both.s, both.tag, both.parts)
                chunks.append(_Chunk(a.lo, b.hi, table))
        self._reindex_chunks()

    def _overlapping(self, lo: int | None, hi: int) -> range:
        i0 = 0 if lo is None else int(np.searchsorted(self._his, lo, "right"))
        i1 = int(np.searchsorted(self._los, hi, "left"))
        return range(i0, max(i0, i1))

    def _sealed_range(self, lo: int | None, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, s)`` of entered rows with ``lo <= s < hi`` (possibly repeated with tags)."""
        ks: list[np.ndarray] = []
        ss: list[np.ndarray] = []
        for i in self._overlapping(lo, hi):
            c = self._chunks[i]
            t = c.table
            if (lo is None or c.lo >= lo) and c.hi <= hi:
                ks.append(t.keys)
                ss.append(t.s)
            else:
                m = t.s < hi if lo is None else (t.s >= lo) & (t.s < hi)
                ks.append(t.keys[m])
                ss.append(t.s[m])
        if not ks:
            return _EMPTY, _EMPTY
        return np.concatenate(ks), np.concatenate(ss)

    def _gather(self, keys_u: np.ndarray | None, lo: int, hi: int, *, with_tags: bool) -> _Table:
        """Entered rows of ``keys_u`` (sorted unique; None = all) with ``lo <= s < hi``.

        Sorted and unique by ``(key, s, tag)`` with tags filled (``with_tags``), else merged per
        ``(key, s)`` without tags.
        """
        pieces: list[_Table] = []
        for i in self._overlapping(lo, hi):
            chunk = self._chunks[i]
            t = chunk.table
            if keys_u is None and chunk.lo >= lo and chunk.hi <= hi:
                if len(t):  # the whole chunk, shared (tables are never mutated)
                    pieces.append(t)
                continue
            if keys_u is not None:
                idx = _ranges(
                    np.searchsorted(t.keys, keys_u, "left"),
                    np.searchsorted(t.keys, keys_u, "right"),
                )
                if not len(idx):
                    continue
                ss = t.s[idx]
                idx = idx[(ss >= lo) & (ss < hi)]
            else:
                idx = np.flatnonzero((t.s >= lo) & (t.s < hi))
            if len(idx):
                pieces.append(t.take(idx))
        if not pieces:
            return _Table(_EMPTY, _EMPTY, _EMPTY if with_tags else None, self._ops.identity(0))
        if len(pieces) == 1 and (with_tags or pieces[0].tag is None):
            t = pieces[0]
            return t if not with_tags or t.tag is not None else replace(t, tag=self._tags(t))
        both = self._concat(pieces, with_tags=True)
        tag = both.tag if with_tags else None
        out = self._normalize(both.keys, both.s, tag, both.parts)
        if with_tags and out.tag is None:
            out = replace(out, tag=self._tags(out))
        return out

    def _merge_sealed(self, b: _Table) -> None:
        """Merge late rows (``s < E``) into the chunks whose ranges hold them."""
        a_min = self._a_min()
        ci = np.searchsorted(self._los, b.s, "right") - 1
        for c in np.unique(ci).tolist():
            chunk = self._chunks[c]
            part = b.take(np.flatnonzero(ci == c))
            with_tags = chunk.table.tag is not None or part.tag is not None
            both = self._concat([chunk.table, part], with_tags=with_tags)
            tag = both.tag
            if tag is not None and a_min is not None:  # tags no evaluated window can see
                tag = np.where(tag <= a_min - self._D, self._e_in(both.s), tag)
            table = self._normalize(both.keys, both.s, tag, both.parts)
            self._chunks[c] = replace(chunk, table=table)

    # ----------------------------------------------------------------------------- suffixes ---

    def _suffix_rows(self, keys_u: np.ndarray | None, blocks: np.ndarray) -> _Table:
        """Suffix values per ``(key, s)`` within each of ``blocks`` (sorted unique)."""
        S = self._S
        t = self._gather(keys_u, int(blocks[0]) * S, (int(blocks[-1]) + 1) * S, with_tags=False)
        if len(t) and len(blocks) > 1:
            t = t.take(np.flatnonzero(np.isin(t.s // S, blocks)))
        if len(t) < 2:
            return t
        seg = np.cumsum(_run_starts(t.keys, t.s // S))
        return replace(t, parts=_seg_scan(self._ops, _pcopy(t.parts), seg, reverse=True))

    def _ensure_suffix(self, needed: np.ndarray) -> None:
        """Cache the suffixes of the ``needed`` blocks (sorted; older cached blocks are dropped)."""
        self._drop_suffix_below(int(needed[0]))
        missing = np.setdiff1d(needed, self._suf_blocks)
        if len(missing):
            table = self._suffix_rows(None, missing)
            self._suf.append((table, _PairIndex(table.keys, table.s, self._g), missing))
            self._reindex_suffix()

    def _reindex_suffix(self) -> None:
        """``_suf_blocks`` (sorted) and ``_suf_owner``: which table holds each cached block."""
        blocks = [b for _, _, b in self._suf]
        owner = [np.full(len(x), i, dtype=np.int64) for i, x in enumerate(blocks)]
        allb = np.concatenate([_EMPTY, *blocks])
        order = np.argsort(allb, kind="stable")
        self._suf_blocks = allb[order]
        self._suf_owner = np.concatenate([_EMPTY, *owner])[order]
        live = {id(t) for t, _, _ in self._suf}
        self._hints = {i: h for i, h in self._hints.items() if i in live}

    def _drop_suffix_below(self, qmin: int) -> None:
        if not len(self._suf_blocks) or int(self._suf_blocks[0]) >= qmin:
            return
        kept = []
        for t, index, blocks in self._suf:
            if int(blocks[-1]) < qmin:
                continue
            if int(blocks[0]) < qmin:
                blocks = blocks[blocks >= qmin]
                t = t.take(np.flatnonzero(t.s >= qmin * self._S))
                index = _PairIndex(t.keys, t.s, self._g)
            kept.append((t, index, blocks))
        self._suf = kept
        self._reindex_suffix()

    def _suffix_values(
        self, qk: np.ndarray, qs: np.ndarray, q: np.ndarray
    ) -> list[tuple[np.ndarray, Parts]]:
        """:meth:`_suffix_lookup` after caching the blocks ``q`` (touches only ``_suf*``)."""
        self._ensure_suffix(_unique(q))
        return self._suffix_lookup(qk, qs, q)

    def _suffix_lookup(
        self, qk: np.ndarray, qs: np.ndarray, q: np.ndarray
    ) -> list[tuple[np.ndarray, Parts]]:
        """Suffix of (cached) block ``q`` from slice ``qs`` on for key ``qk``, where non-empty:
        per cached table, (positions of the queries found, their values)."""
        found: list[tuple[np.ndarray, Parts]] = []
        owner = self._suf_owner[np.searchsorted(self._suf_blocks, q)]
        single = len(owner) and int(owner.min()) == int(owner.max())
        for i in [int(owner[0])] if single else np.unique(owner).tolist():
            t, index, _ = self._suf[i]
            if not len(t):
                continue
            sel = np.arange(len(owner)) if single else np.flatnonzero(owner == i)
            sk, ss, sq = (qk, qs, q) if single else (qk[sel], qs[sel], q[sel])
            hint = self._hints.get(id(t))
            if hint is None:  # per key: its last answer (a lower bound for the next), -1: none
                hint = np.full(int(t.keys[-1]) + 1, -1, dtype=np.int64)
                self._hints[id(t)] = hint
            j = index.left_from(sk, ss, hint[np.minimum(sk, len(hint) - 1)])
            hint[np.minimum(sk, len(hint) - 1)] = j
            safe = np.minimum(j, len(t) - 1)
            ok = np.flatnonzero((j < len(t)) & (t.keys[safe] == sk) & (t.s[safe] // self._S == sq))
            found.append((sel[ok], _ptake(t.parts, j[ok])))
        return found

    def _update_suffix(self, b: _Table) -> None:
        """Recompute the cached suffixes of the keys late rows ``b`` touched."""
        if not len(self._suf_blocks):
            return
        S = self._S
        bq = b.s // S
        hit = np.isin(bq, self._suf_blocks)
        if not hit.any():
            return
        owner = self._suf_owner[np.searchsorted(self._suf_blocks, bq[hit])]
        for i in np.unique(owner).tolist():
            keys_u = np.unique(b.keys[hit][owner == i])
            blocks = np.unique(bq[hit][owner == i])
            new = self._suffix_rows(keys_u, blocks)
            old, _, cached = self._suf[i]
            drop = np.isin(old.keys, keys_u) & np.isin(old.s // S, blocks)
            both = self._concat([old.take(np.flatnonzero(~drop)), new], with_tags=False)
            t = both.take(_lex_order(both.keys, both.s, self._g))
            self._suf[i] = (t, _PairIndex(t.keys, t.s, self._g), cached)
        self._reindex_suffix()

    # ---------------------------------------------------------------------------- evaluation ---

    def _fill_distinct(self, v: Parts, counts: list[np.ndarray]) -> Parts:
        """``v`` with the count_distinct placeholder slots replaced by ``counts`` (in order)."""
        out = list(v)
        for (i, _), c in zip(self._presence, counts, strict=True):
            out[i] = (c,)
        return tuple(out)

    def _evaluate(self, t: _Table, qk: np.ndarray, qe: np.ndarray, *, late: bool) -> Parts:
        """:meth:`_windows` of completed windows for corrections, count_distinct slots included:
        counted by the trackers from their own rows, with (``late``) or without the staged late
        rows, to match ``t`` (the touched keys' rows after resp. before the late rows)."""
        v = self._windows(t, qk, qe)
        if not self._presence:
            return v
        return self._fill_distinct(v, [tr.counts(qk, qe, staged=late) for _, tr in self._presence])

    def _windows(
        self, t: _Table, qk: np.ndarray, qe: np.ndarray, *, prefix_only: bool = False
    ) -> Parts:
        """Values of the windows ``(qk, qe)`` from ``t``: rows sorted by ``(key, s, tag)``, all
        the slices these windows need; a row joins the windows ``e >= tag`` (None: all).

        Queries are grouped by the tags they see (usually one group), then evaluated with two
        stacks (:meth:`_two_stack`). ``prefix_only``: only the slices of block ``pb(e)`` below
        ``e``, whatever their tags.
        """
        nq = len(qk)
        if not len(t) or not nq:
            return self._ops.identity(nq)
        tag = t.tag
        lo = int(qe.min())
        hiding = _EMPTY  # rows with a real tag (> e_in) that some queries must not see
        if tag is not None and not prefix_only:
            hiding = np.flatnonzero((tag > lo) & (tag > self._e_in(t.s)))
        if not len(hiding):
            return self._two_stack(t, qk, qe, prefix_only)
        assert tag is not None
        above = np.unique(tag[hiding])
        out = self._ops.identity(nq)
        gid = np.searchsorted(above, qe, "right")  # queries see the tags <= above[gid - 1]
        for i in np.unique(gid).tolist():
            sel = np.flatnonzero(gid == i)
            visible = np.ones(len(t), dtype=bool)
            visible[hiding] = tag[hiding] <= (int(above[i - 1]) if i else lo)
            rows = t.take(np.flatnonzero(visible))
            out = _pscatter(out, sel, self._two_stack(rows, qk[sel], qe[sel], prefix_only))
        return out

    def _two_stack(self, t: _Table, qk: np.ndarray, qe: np.ndarray, prefix_only: bool) -> Parts:
        """``suffix(block pb - 1, s >= e - S) ⊕ prefix(block pb, s < e)`` per query, by segmented
        scans over ``(key, block)`` of ``t`` (rows of one ``(key, s)`` merged first); each scan
        only covers the blocks some query takes that part from."""
        S, g, ops = self._S, self._g, self._ops
        keys, s, parts = t.keys, t.s, t.parts
        out = ops.identity(len(qk))
        if not len(keys):
            return out
        flags = _run_starts(keys, s)
        if not flags.all():
            gid = np.cumsum(flags) - 1
            parts = ops.reduce(parts, gid, int(gid[-1]) + 1)
            keys, s = keys[flags], s[flags]
        blk = s // S
        pb = (qe - 1) // S
        need = _EMPTY if prefix_only else np.flatnonzero(qe % S != 0)
        for suffix, sel, qs, qb in (
            (False, np.arange(len(qk)), qe - g, pb),
            (True, need, qe[need] - S, pb[need] - 1),
        ):
            if not len(sel):
                continue
            rows = np.flatnonzero(np.isin(blk, np.unique(qb)))
            if not len(rows):
                continue
            rk, rs, rb = keys[rows], s[rows], blk[rows]
            seg = np.cumsum(_run_starts(rk, rb))
            vals = _seg_scan(ops, _pcopy(_ptake(parts, rows)), seg, reverse=suffix)
            index = _PairIndex(rk, rs, g)
            if suffix:  # first row >= (k, e - S)
                j = index.left(qk[sel], qs)
                safe = np.minimum(j, len(rows) - 1)
                found = j < len(rows)
            else:  # last row <= (k, e - g)
                j = index.right(qk[sel], qs) - 1
                safe = np.maximum(j, 0)
                found = j >= 0
            ok = np.flatnonzero(found & (rk[safe] == qk[sel]) & (rb[safe] == qb))
            hit, values = sel[ok], _ptake(vals, j[ok])
            if suffix:
                values = ops.combine(values, _ptake(out, hit))
            out = _pscatter(out, hit, values)
        return out

    def _complete(self, E_new: int) -> Emission | None:
        """Complete windows ``(E, E_new]``: change points only, then state for ``E_new``."""
        S, D, g, ops = self._S, self._D, self._g, self._ops
        E0, cb = self._E, self._cb
        ent = self._take_entering(E_new)
        self._seal(ent, E0, E_new)
        exk, exs = self._sealed_range(None if E0 is None else E0 - S, E_new - S)
        ck = np.concatenate([ent.keys, exk, self._tk])
        tagged_at = (E0 if E0 is not None else 0) + D
        ce = np.concatenate(
            [self._e_in(ent.s), (exs + S) // D * D + D, np.full(len(self._tk), tagged_at)]
        )
        self._tk = _EMPTY
        if len(ck):
            order = _lex_order(ck, ce, D, stable=True)  # timsort: merges the sorted runs
            ck, ce = ck[order], ce[order]
            first = _run_starts(ck, ce)
            if not first.all():
                ck, ce = ck[first], ce[first]
        ncp = len(ck)
        need = np.flatnonzero(ce % S != 0) if ncp else _EMPTY

        # prefix scan of the entering slices, segments (key, block), seeded by the carried prefix
        eblk = ent.s // S
        pre = ent.parts
        if len(ent):
            starts = _run_starts(ent.keys, eblk)
            pre = _pcopy(pre)
            if cb is not None:
                st = np.flatnonzero(starts)
                st = st[eblk[st] == cb]
                if len(st):
                    seeded = ops.combine(_ptake(self._cp, ent.keys[st]), _ptake(pre, st))
                    pre = _pscatter(pre, st, seeded)
            pre = _seg_scan(ops, pre, np.cumsum(starts), reverse=False)

        v = ops.identity(0)
        if ncp:
            pb = (ce - 1) // S
            v = ops.identity(ncp)
            if cb is not None:
                m = np.flatnonzero(pb == cb)
                if len(m):
                    v = _pscatter(v, m, _ptake(self._cp, ck[m]))
            if len(ent):
                idx = _PairIndex(ent.keys, ent.s, g).right(ck, ce - g) - 1
                safe = np.maximum(idx, 0)
                m = np.flatnonzero((idx >= 0) & (ent.keys[safe] == ck) & (eblk[safe] == pb))
                v = _pscatter(v, m, _ptake(pre, idx[m]))
            if len(need):
                q = pb[need] - 1
                for pos, values in self._suffix_values(ck[need], ce[need] - S, q):
                    sel = need[pos]
                    v = _pscatter(v, sel, ops.combine(values, _ptake(v, sel)))

        if self._presence:  # count_distinct slots: pair-presence counts at the change points
            v = self._fill_distinct(v, [t.advance(E0, E_new, ck, ce) for _, t in self._presence])
        emission = self._emit_forward(E0, E_new, ck, ce, v)

        # state at E_new
        if ncp:
            last = np.flatnonzero(_run_ends(ck))
            self._cur = _pscatter(self._cur, ck[last], _ptake(v, last))
        cb_new = (E_new - 1) // S
        if cb_new != cb:
            self._cp = ops.identity(self._nkeys)
        if len(ent):
            sel = np.flatnonzero(_run_ends(ent.keys) & (eblk == cb_new))
            if len(sel):
                self._cp = _pscatter(self._cp, ent.keys[sel], _ptake(pre, sel))
        self._E, self._cb = E_new, cb_new
        self._prune()
        return emission

    def _prune(self) -> None:
        """Drop what no window can need: slices ``< a_min - D - S``, old suffix blocks/extras."""
        a_min = self._a_min()
        if a_min is None or self._E is None:
            return
        S, D = self._S, self._D
        horizon = a_min - D - S
        chunks = self._chunks
        first = int(np.searchsorted(self._his, horizon, "right"))
        if first:
            del chunks[:first]
        for i, c in enumerate(chunks):
            if c.lo >= horizon:
                break
            if len(c.table) and int(c.table.s.min()) < horizon:
                chunks[i] = replace(c, table=c.table.take(np.flatnonzero(c.table.s >= horizon)))
        self._reindex_chunks()
        for _, tracker in self._presence:
            tracker.prune(horizon)
        self._drop_suffix_below((self._E + D - 1) // S - 1)  # future windows need no older
        if len(self._xe) and int(self._xe.min()) < a_min:
            keep = np.flatnonzero(self._xe >= a_min)
            self._xk, self._xe = self._xk[keep], self._xe[keep]

    # ------------------------------------------------------------------------------ emission ---

    def _rows(
        self, keys: np.ndarray, ends: np.ndarray, deleted: np.ndarray, results: list[pa.Array]
    ) -> Emission | None:
        if not len(keys):
            return None
        return Emission(
            keys, ends - self._S, ends, deleted, [_null_where(r, deleted) for r in results]
        )

    def _same_values(
        self, ne_a: np.ndarray, res_a: list[pa.Array], ne_b: np.ndarray, res_b: list[pa.Array]
    ) -> np.ndarray:
        """Window values equal: both empty, or both non-empty with equal results."""
        eq = ne_a == ne_b
        both = np.flatnonzero(ne_a & ne_b)
        if len(both):
            idx = pa.array(both)
            ok = np.ones(len(both), dtype=bool)
            for ra, rb in zip(res_a, res_b, strict=True):
                ok &= _same(ra.take(idx), rb.take(idx))
            eq[both] = ok
        return eq

    def _emit_forward(
        self, E0: int | None, E_new: int, ck: np.ndarray, ce: np.ndarray, v: Parts
    ) -> Emission | None:
        ops = self._ops
        ncp = len(ck)
        if self.emit == "every":
            return self._emit_every(E0, E_new, ck, ce, v)
        if not ncp:
            return None
        if self.emit == "latest":
            last = np.flatnonzero(_run_ends(ck))
            kl, vl = ck[last], _ptake(v, last)
            cv = _ptake(self._cur, kl)
            ne, cne = ops.nonempty(vl), ops.nonempty(cv)
            res = ops.results(vl)
            changed = np.flatnonzero(~self._same_values(ne, res, cne, ops.results(cv)))
            tk = pa.array(changed)
            return self._rows(
                kl[changed],
                np.full(len(changed), E_new, dtype=np.int64),
                ~ne[changed],
                [r.take(tk) for r in res],
            )
        # changes: compare each change point with the previous one (the first: value at E0)
        ne = ops.nonempty(v)
        fi = np.flatnonzero(_run_starts(ck))
        cv = _ptake(self._cur, ck[fi])
        prev = np.arange(-1, ncp - 1, dtype=np.int64)
        prev[fi] = ncp + np.arange(len(fi), dtype=np.int64)
        fast = ops.results_numpy(v)
        fast_cv = ops.results_numpy(cv) if fast is not None else None
        if fast is not None and fast_cv is not None:  # compare in numpy, build Arrow for changes
            res_pn = [
                (np.concatenate([a, ca])[prev], np.concatenate([m, cm])[prev])
                for (a, m), (ca, cm) in zip(fast, fast_cv, strict=True)
            ]
            ne_p = np.concatenate([ne, ops.nonempty(cv)])[prev]
            changed = np.flatnonzero(~_same_numpy(ne, fast, ne_p, res_pn))
            return self._rows(
                ck[changed], ce[changed], ~ne[changed], ops.results(_ptake(v, changed))
            )
        res = ops.results(v)
        pidx = pa.array(prev)
        res_p = [
            pa.concat_arrays([a, b]).take(pidx) for a, b in zip(res, ops.results(cv), strict=True)
        ]
        ne_p = np.concatenate([ne, ops.nonempty(cv)])[prev]
        changed = np.flatnonzero(~self._same_values(ne, res, ne_p, res_p))
        tk = pa.array(changed)
        return self._rows(ck[changed], ce[changed], ~ne[changed], [r.take(tk) for r in res])

    def _emit_every(
        self, E0: int | None, E_new: int, ck: np.ndarray, ce: np.ndarray, v: Parts
    ) -> Emission | None:
        """One row per non-empty window: constant runs between change points, repeated."""
        ops, D = self._ops, self._D
        ncp = len(ck)
        seg_k, seg_e, seg_n, seg_src = [], [], [], []
        stop = E_new + D
        if ncp:
            same = np.zeros(ncp, dtype=bool)
            same[:-1] = ck[1:] == ck[:-1]
            nxt = np.where(same, np.append(ce[1:], 0), stop)
            ok = np.flatnonzero(ops.nonempty(v))
            seg_k.append(ck[ok])
            seg_e.append(ce[ok])
            seg_n.append((nxt[ok] - ce[ok]) // D)
            seg_src.append(ok)
        act = _EMPTY
        if E0 is not None:
            act = np.flatnonzero(ops.nonempty(self._cur))
        if len(act):  # keys non-empty at E0: their value holds until their first change point
            fi = np.flatnonzero(_run_starts(ck)) if ncp else _EMPTY
            fk, fe = ck[fi], ce[fi]
            pos = np.searchsorted(fk, act)
            safe = np.minimum(pos, max(len(fk) - 1, 0))
            has = (pos < len(fk)) & (fk[safe] == act) if len(fk) else np.zeros(len(act), bool)
            end = np.where(has, fe[safe] if len(fk) else stop, stop)
            assert E0 is not None
            seg_k.append(act)
            seg_e.append(np.full(len(act), E0 + D, dtype=np.int64))
            seg_n.append((end - E0) // D - 1)
            seg_src.append(ncp + np.arange(len(act), dtype=np.int64))
        if not seg_k:
            return None
        k, e, n, src = (np.concatenate(x) for x in (seg_k, seg_e, seg_n, seg_src))
        keep = np.flatnonzero(n > 0)
        if not len(keep):
            return None
        k, e, n, src = k[keep], e[keep], n[keep], src[keep]
        order = _lex_order(k, e, D)
        k, e, n, src = k[order], e[order], n[order], src[order]
        values = _ptake(_pcat([v, _ptake(self._cur, act)]) if len(act) else v, src)
        res = ops.results(values)
        seg = np.repeat(np.arange(len(k), dtype=np.int64), n)
        offsets = np.cumsum(n) - n
        ends = np.repeat(e, n) + D * (np.arange(len(seg), dtype=np.int64) - offsets[seg])
        tk = pa.array(seg)
        return self._rows(k[seg], ends, np.zeros(len(seg), dtype=bool), [r.take(tk) for r in res])

    # ----------------------------------------------------------------------------- lateness ---

    def _late(self, b: _Table) -> Emission | None:
        """Rows for entered slices (``s < E``): merge them, correct completed windows, and keep
        ``_cur``, ``_cp``, ``_suf`` consistent, re-evaluating from the touched keys' slices."""
        E = self._E
        assert E is not None
        S, D, ops = self._S, self._D, self._ops
        f = self._tags(b)
        el = (b.s + S) // D * D
        hit = f <= E  # rows in already completed windows
        emission: Emission | None = None
        new: _Table | None = None
        hk = _EMPTY
        if hit.any():
            hk_rows, f_rows = b.keys[hit], f[hit]  # sorted by key
            st = np.flatnonzero(_run_starts(hk_rows))
            hk, fmin = hk_rows[st], np.minimum.reduceat(f_rows, st)
            lo = int(fmin.min()) - D - S
            old = self._gather(hk, lo, E, with_tags=True)
            mine = b.take(np.flatnonzero(np.isin(b.keys, hk)))
            both = self._concat([old, mine], with_tags=True)
            assert both.tag is not None
            new = self._normalize(both.keys, both.s, both.tag, both.parts)
            if new.tag is None:
                new = replace(new, tag=self._tags(new))
            at_e = np.unique(b.keys[hit & (el >= E)])  # keys whose window E changed
            if self.emit == "changes":
                emission, vn = self._correct_changes(old, new, hk, fmin, E, at_e)
            elif self.emit == "every":
                emission, vn = self._correct_every(new, b.keys[hit], f[hit], el[hit], E, at_e)
            else:
                vn = self._evaluate(new, at_e, np.full(len(at_e), E, dtype=np.int64), late=True)
            if len(at_e):
                if self.emit == "latest":
                    cv = _ptake(self._cur, at_e)
                    ne, res = ops.nonempty(vn), ops.results(vn)
                    changed = np.flatnonzero(
                        ~self._same_values(ne, res, ops.nonempty(cv), ops.results(cv))
                    )
                    tk = pa.array(changed)
                    emission = self._rows(
                        at_e[changed],
                        np.full(len(changed), E, dtype=np.int64),
                        ~ne[changed],
                        [r.take(tk) for r in res],
                    )
                self._cur = _pscatter(self._cur, at_e, vn)
        future = np.flatnonzero(f > E)  # tagged rows (f = E + D): they join at window E + D
        if len(future):
            self._tk = np.concatenate([self._tk, b.keys[future]])
        self._merge_sealed(b)
        if self._cb is not None:  # the carried prefix of keys with rows in its block
            cb = self._cb
            kp = np.unique(b.keys[b.s // S == cb])
            if len(kp):
                t = (
                    new
                    if new is not None and np.isin(kp, hk).all()
                    else self._gather(kp, cb * S, E, with_tags=False)
                )
                ends = np.full(len(kp), E, dtype=np.int64)
                self._cp = _pscatter(self._cp, kp, self._windows(t, kp, ends, prefix_only=True))
        self._update_suffix(b)
        return emission

    def _correct_every(
        self, new: _Table, k: np.ndarray, f: np.ndarray, el: np.ndarray, E: int, at_e: np.ndarray
    ) -> tuple[Emission | None, Parts]:
        """``every``: the updated rows of the completed windows the late rows joined (and the
        new values of the windows ``(at_e, E)``)."""
        D = self._D
        n = (np.minimum(el, E) - f) // D + 1
        grp = np.repeat(np.arange(len(k), dtype=np.int64), n)
        offsets = np.cumsum(n) - n
        qk = k[grp]
        qe = f[grp] + D * (np.arange(len(grp), dtype=np.int64) - offsets[grp])
        order = _lex_order(qk, qe, D)
        qk, qe = qk[order], qe[order]
        first = _run_starts(qk, qe)
        qk, qe = qk[first], qe[first]
        nq = len(qk)
        ends = np.full(len(at_e), E, dtype=np.int64)
        vn = self._evaluate(new, np.concatenate([qk, at_e]), np.concatenate([qe, ends]), late=True)
        rows = _pslice(vn, nq)
        emission = self._rows(qk, qe, ~self._ops.nonempty(rows), self._ops.results(rows))
        return emission, _ptake(vn, np.arange(nq, nq + len(at_e)))

    def _correct_changes(
        self,
        old: _Table,
        new: _Table,
        hk: np.ndarray,
        fmin: np.ndarray,
        E: int,
        at_e: np.ndarray,
    ) -> tuple[Emission | None, Parts]:
        """``changes``: rows so an upsert store keyed by (key, end) holds the corrected history.

        Candidates are the ends in ``[min f, E]`` of the touched keys where the old or new value
        may change (entries, exits) or a row with an unchanged value exists (``_extra``). With
        ``exists`` = a row is stored at ``e``, emit iff ``exists and new(e) != old(e)`` or
        ``not exists and new(e) != new(e - D)``. Also returns the new values of ``(at_e, E)``.
        """
        S, D, ops = self._S, self._D, self._ops
        fk = fmin[np.searchsorted(hk, new.keys)]
        assert new.tag is not None
        ck = np.concatenate([new.keys, new.keys])
        ce = np.concatenate([new.tag, (new.s + S) // D * D + D])
        fl = np.concatenate([fk, fk])
        xm = np.flatnonzero(np.isin(self._xk, hk))
        if len(xm):
            xk, xe = self._xk[xm], self._xe[xm]
            ck, ce = np.concatenate([ck, xk]), np.concatenate([ce, xe])
            fl = np.concatenate([fl, fmin[np.searchsorted(hk, xk)]])
        m = np.flatnonzero((ce >= fl) & (ce <= E))
        ck, ce = ck[m], ce[m]
        order = _lex_order(ck, ce, D)
        ck, ce = ck[order], ce[order]
        first = _run_starts(ck, ce)
        ck, ce = ck[first], ce[first]
        nc = len(ck)
        ends = np.full(len(at_e), E, dtype=np.int64)
        if not nc:
            return None, self._evaluate(new, at_e, ends, late=True)
        qk, qe = np.concatenate([ck, ck]), np.concatenate([ce, ce - D])
        vo = self._evaluate(old, qk, qe, late=False)
        vn = self._evaluate(new, np.concatenate([qk, at_e]), np.concatenate([qe, ends]), late=True)
        v_at_e = _ptake(vn, np.arange(2 * nc, 2 * nc + len(at_e)))
        vn = _pslice(vn, 2 * nc)
        ne_o, ne_n = ops.nonempty(vo), ops.nonempty(vn)
        res_o, res_n = ops.results(vo), ops.results(vn)
        o, op = (
            (ne_o[:nc], [r.slice(0, nc) for r in res_o]),
            (ne_o[nc:], [r.slice(nc) for r in res_o]),
        )
        n, np_ = (
            (ne_n[:nc], [r.slice(0, nc) for r in res_n]),
            (ne_n[nc:], [r.slice(nc) for r in res_n]),
        )
        extra = np.zeros(nc, dtype=bool)
        if len(xm):
            j = _PairIndex(self._xk, self._xe, D).left(ck, ce)
            safe = np.minimum(j, len(self._xk) - 1)
            extra = (j < len(self._xk)) & (self._xk[safe] == ck) & (self._xe[safe] == ce)
        exists = ~self._same_values(*o, *op) | extra
        new_flat = self._same_values(*n, *np_)
        emit = (exists & ~self._same_values(*n, *o)) | (~exists & ~new_flat)
        now_extra = (exists | emit) & new_flat  # stored rows equal to the previous end's value
        if len(xm):  # candidates' extras are recomputed: drop the old ones
            j = _PairIndex(ck, ce, D).left(self._xk, self._xe)
            safe = np.minimum(j, nc - 1)
            keep = ~((j < nc) & (ck[safe] == self._xk) & (ce[safe] == self._xe))
            self._xk, self._xe = self._xk[keep], self._xe[keep]
        if now_extra.any():
            xk = np.concatenate([self._xk, ck[now_extra]])
            xe = np.concatenate([self._xe, ce[now_extra]])
            order = _lex_order(xk, xe, D)
            self._xk, self._xe = xk[order], xe[order]
        sel = np.flatnonzero(emit)
        tk = pa.array(sel)
        return self._rows(ck[sel], ce[sel], ~ne_n[sel], [r.take(tk) for r in res_n]), v_at_e
