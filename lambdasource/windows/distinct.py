"""Exact ``count_distinct`` of sliding windows by *pair presence*: :class:`PairPresence`.

Notation as in ``sliding.py`` (int64 µs): size ``S`` (``_size``), slide ``D`` (``_slide``),
slices of width ``g`` (``_slice_width``); window ``e`` is ``[e - S, e)``; a slice ``s`` is in the
windows ``e_in(s) … e_last(s)``, both non-decreasing in ``s``. A *pair* is a (key id, value) with
a non-null value, coded as one int64 ``pc = key << 32 | value code`` (``value_codes.py``; so pairs
sort by key first). A pair is present in window ``e`` iff one of its slices lies in
``[e - S, e)``, i.e. ``e ∈ [e_in(s), e_last(s)]``; the distinct count of
``(key, e)`` is the number of the key's pairs present at ``e``.

**No sets, no scans.** Sorted by ``s``, a pair's coverage intervals have non-decreasing starts and
ends, so their union is found by comparing neighbours: slice ``i`` starts a new presence interval
iff ``e_in(s_i) > e_last(s_{i-1}) + D``. Each interval gives the key ``+1`` at its start and ``-1``
one slide after its end; a count is then a sorted cumulative sum of these events (searchsorted on
``(key, e)``). Rows a partly late record created join windows only from ``f > e_in(s)``; with ends
still non-decreasing in ``s``, the union of ``[f_i, e_last(s_i)]`` equals the union of
``[min_{j >= i} f_j, e_last(s_i)]`` (a segmented suffix minimum), monotone again.

**Forward** (:meth:`PairPresence.advance`, windows ``(E0, E_new]``): every entered row (``s < E0``)
covers, restricted to ends ``> E0``, the prefix ``(E0, e_last(s)]`` (a partly late row starts at
``E0 + D`` at the latest), so per pair one number summarises the past: ``b`` = greatest ``e_last``
of its entered rows. The carried state holds ``b`` for exactly the pairs with ``b >= E + D``; the
count of ``(key, e)``, ``e > E0``, is (carried pairs of the key) + (events of the entering slices
and of the carried pairs ending, up to ``e``). Work per advance: sorting the entering rows, plus
vectorised passes over the carried pairs (no Python per pair, slice or window).

**Corrections** (records ``s < E`` within allowed lateness, only when ``allowed_lateness > 0``):
:meth:`PairPresence.counts` recomputes queried completed windows from the stored ``(pc, s, f)``
rows of the queried keys (brute force from the definition, by the same event rule), before or
after the late rows *staged* by :meth:`PairPresence.add`; :meth:`PairPresence.commit` then stores
them and raises the carried ``b`` of their pairs.

Memory is O(distinct (key, value, slice) triples held) + O(carried pairs): value codes of values no
longer held are reclaimed by a monotone renumbering (:meth:`PairPresence.prune`), which keeps every
sorted array sorted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import IncompatibleStateError, StateError
from .arrays import ranges as _ranges
from .parts import run_ends as _run_ends
from .parts import run_starts as _run_starts
from .value_codes import CODE_BITS, CODE_MASK, ValueCodes

__all__ = ["PairPresence"]

_EMPTY = np.zeros(0, dtype=np.int64)
_NONE = -(1 << 62)
"""``b`` of "no interval": below every window end, and ``_NONE + D`` does not overflow."""
_LIMIT = 1 << 62
_MAX_KEY = (1 << 31) - 2  # (key + 1) << 32 must fit in int64
_TABLE_ROWS = 1 << 17  # stored tables smaller than this are merged with their neighbour
_COMPACT_SLACK = 4096


# ---------------------------------------------------------------------------- array helpers ---


def _pair_order(pcs: np.ndarray, s: np.ndarray, g: int) -> np.ndarray:
    """Permutation sorting rows by ``(pc, s)`` (one int64 argsort when the codes fit)."""
    if len(pcs) < 2:
        return np.arange(len(pcs), dtype=np.int64)
    k, c = pcs >> CODE_BITS, pcs & CODE_MASK
    kmin, cmin, smin = int(k.min()), int(c.min()), int(s.min())
    cspan = int(c.max()) - cmin + 1
    sspan = (int(s.max()) - smin) // g + 1
    if (int(k.max()) - kmin + 1) * cspan * sspan < _LIMIT:
        return np.argsort(((k - kmin) * cspan + (c - cmin)) * sspan + (s - smin) // g)
    return np.lexsort((s, pcs))


def _suffix_min(x: np.ndarray, pcs: np.ndarray, D: int) -> np.ndarray:
    """``min(x[j] for j >= i in the run of equal pc)`` per row (``x`` multiples of ``D``).

    Segmented by offsetting each run above the runs before it, then one reversed
    ``minimum.accumulate``: a later run never undercuts an earlier one.
    """
    xmin = int(x.min())
    y = (x - xmin) // D
    seg = np.cumsum(_run_starts(pcs)) - 1
    big = int(y.max()) + 1
    values: np.ndarray | None = None
    if big * (int(seg[-1]) + 1) >= _LIMIT:
        values, y = np.unique(x, return_inverse=True)
        y = y.reshape(-1).astype(np.int64)
        big = len(values)
    z = y + seg * big
    m = np.minimum.accumulate(z[::-1])[::-1] - seg * big
    return values[m] if values is not None else m * D + xmin


def _sum_events(
    ek: np.ndarray, ee: np.ndarray, ed: np.ndarray, qk: np.ndarray, qe: np.ndarray, D: int
) -> np.ndarray:
    """Per query ``i``: the sum of ``ed`` over the events with ``ek == qk[i]`` and ``ee <= qe[i]``.

    Times are multiples of ``D``; events are sorted by ``(key, time)`` once, queries answered by two
    binary searches into their cumulative sum.
    """
    out = np.zeros(len(qk), dtype=np.int64)
    if not len(ek) or not len(qk):
        return out
    tmin = min(int(ee.min()), int(qe.min()))
    tspan = (max(int(ee.max()), int(qe.max())) - tmin) // D + 1
    kspan = max(int(ek.max()), int(qk.max())) + 1
    if kspan * tspan < _LIMIT:
        et, qt = (ee - tmin) // D, (qe - tmin) // D
    else:  # huge time ranges: ranks of the times instead
        u = np.unique(np.concatenate([ee, qe]))
        et, qt, tspan = np.searchsorted(u, ee), np.searchsorted(u, qe), len(u)
    code = ek * tspan + et
    order = np.argsort(code)
    code = code[order]
    cs = np.zeros(len(code) + 1, dtype=np.int64)
    np.cumsum(ed[order], out=cs[1:])
    hi = np.searchsorted(code, qk * tspan + qt, "right")
    lo = np.searchsorted(code, qk * tspan, "left")
    return cs[hi] - cs[lo]


def _times(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64)).view(pa.timestamp("us", "UTC"))


def _ints(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An int64/timestamp column without nulls as int64 numpy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_timestamp(column.type):
        column = column.view(pa.int64())
    return np.asarray(column.to_numpy(), dtype=np.int64)


# ------------------------------------------------------------------------------------ rows ---


@dataclass(frozen=True, slots=True, eq=False)
class _Rows:
    """(pair, slice) rows sorted by ``(pc, s)`` and unique; never mutated once built.

    ``f`` is the first window end each row joins (``None``: ``e_in(s)`` for every row);
    ``smin``/``smax`` bound ``s`` (meaningless when empty).
    """

    pc: np.ndarray
    s: np.ndarray
    f: np.ndarray | None
    smin: int
    smax: int

    @staticmethod
    def of(pcs: np.ndarray, s: np.ndarray, f: np.ndarray | None) -> _Rows:
        if not len(s):
            return _Rows(_EMPTY, _EMPTY, None, 0, -1)
        return _Rows(pcs, s, f, int(s.min()), int(s.max()))

    def __len__(self) -> int:
        return len(self.pc)

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows.of(self.pc[idx], self.s[idx], None if self.f is None else self.f[idx])


_NO_ROWS = _Rows.of(_EMPTY, _EMPTY, None)


# ---------------------------------------------------------------------------------- tracker ---


class PairPresence:
    """Exact ``count_distinct(column)`` of one :class:`~.sliding.SlidingEngine`.

    The engine drives it in stream order: :meth:`add` for every batch of accepted records (rows
    with ``s >= E`` become *pending*; rows with ``s < E`` are *staged*), :meth:`counts` while it
    corrects completed windows, :meth:`commit` after that, :meth:`advance` when it completes
    windows, :meth:`prune` when its horizon moves.

    Invariants between engine calls (``E`` = the engine's newest completed end):

    - ``_pending``: rows with ``s >= E`` (a few sorted tables, merged like a binary counter);
    - ``_store`` (only with allowed lateness > 0: with none, a record with ``s < E`` joins windows
      ``>= E + D`` only, so no completed window is ever recounted): every entered row (``s < E``)
      with ``s >=`` the prune horizon, ``f`` = first window end it joins;
    - ``_carried_pairs`` / ``_carried_ends``: the pairs with an entered row whose
      ``e_last >= E + D``, sorted by ``pc``, and per pair ``b`` = the greatest ``e_last`` of its
      entered rows;
    - ``_staged`` is empty (it only lives from :meth:`add` to :meth:`commit`).
    """

    def __init__(self, column: str, *, size: int, slide: int, lateness: int) -> None:
        self.column = column
        self._size, self._slide = int(size), int(slide)
        self._slice_width = math.gcd(self._size, self._slide)
        self._keep_entered = lateness > 0
        self._values = ValueCodes()
        self._pending: list[_Rows] = []
        self._store: list[_Rows] = []
        self._staged: list[_Rows] = []
        self._carried_pairs = _EMPTY
        self._carried_ends = _EMPTY

    # --------------------------------------------------------------------------- geometry ---

    def _e_in(self, s: np.ndarray) -> np.ndarray:
        return -(-(s + self._slice_width) // self._slide) * self._slide

    def _e_last(self, s: np.ndarray) -> np.ndarray:
        return (s + self._size) // self._slide * self._slide

    # ----------------------------------------------------------------------------- driving ---

    def add(
        self,
        keys: np.ndarray,
        s: np.ndarray,
        values: pa.Array | pa.ChunkedArray,
        accepted: np.ndarray | None,
        E: int | None,
        a_min: int | None,
    ) -> None:
        """Record the pairs of a batch: ``keys``/``s`` (slice starts) per row, ``accepted`` (None =
        all) the rows that are not late; ``a_min`` = first window end still accepting records.

        Rows with ``s >= E`` become pending; the others are staged with ``f = max(e_in, a_min)``
        until :meth:`commit`.
        """
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        ok = accepted
        if values.null_count:
            valid = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            ok = valid if ok is None else ok & valid
        if ok is not None:
            sel = np.flatnonzero(ok)
            keys, s, values = keys[sel], s[sel], values.take(pa.array(sel))
        if not len(keys):
            return
        if int(keys.max()) > _MAX_KEY:
            raise StateError(f"count_distinct: key id {int(keys.max())} exceeds {_MAX_KEY}")
        codes = self._values.encode(values)
        if codes is None:  # an integer beyond 32 bits or another type: leave direct mode
            self._compact()
            codes = self._values.encode(values)
            assert codes is not None
        pcs = (keys.astype(np.int64) << CODE_BITS) | codes
        s = s.astype(np.int64)
        fwd = None if E is None else s >= E
        if fwd is None or fwd.all():
            self._pending_add(self._normalize(pcs, s, None))
            return
        if fwd.any():
            m = np.flatnonzero(fwd)
            self._pending_add(self._normalize(pcs[m], s[m], None))
        assert a_min is not None
        m = np.flatnonzero(~fwd)
        f = np.maximum(self._e_in(s[m]), a_min)
        self._staged.append(self._normalize(pcs[m], s[m], f))

    def commit(self, E: int) -> None:
        """Merge the staged rows (``s < E``): store them, raise their pairs' carried ``b``."""
        if not self._staged:
            return
        t = self._merge(self._staged)
        self._staged = []
        if self._keep_entered:
            self._store_add(t)
        last = np.flatnonzero(_run_ends(t.pc))  # a pair's greatest s has its greatest e_last
        c = self._e_last(t.s[last])
        m = np.flatnonzero(c >= E + self._slide)
        self._raise_carried(t.pc[last[m]], c[m])

    def advance(self, E0: int | None, E_new: int, ck: np.ndarray, ce: np.ndarray) -> np.ndarray:
        """Enter the slices ``[E0, E_new)``; return the counts of the windows ``(ck, ce)``.

        ``ck``/``ce`` are the engine's change points (every end in ``(E0, E_new]`` where a count
        can change is one of them, for its key); afterwards the carried state is the one at
        ``E_new``.
        """
        D = self._slide
        ent = self._take_entering(E_new)
        if self._keep_entered and len(ent):
            self._store_add(ent)
        spc, sb = self._carried_pairs, self._carried_ends
        base = np.searchsorted(spc, (ck + 1) << CODE_BITS) - np.searchsorted(spc, ck << CODE_BITS)
        ending = np.flatnonzero(sb < E_new + D)  # carried pairs ending by E_new unless extended
        ek, ee, ed = [_EMPTY], [_EMPTY], [_EMPTY]
        jf, jf_b = _EMPTY, _EMPTY  # carried pairs extended: their index and new b
        drop = [_EMPTY]
        new_pc, new_b = _EMPTY, _EMPTY
        if len(ent):
            pcs, s = ent.pc, ent.s
            first = np.flatnonzero(_run_starts(pcs))
            last = np.flatnonzero(_run_ends(pcs))
            carried = np.full(len(first), _NONE, dtype=np.int64)
            found = _EMPTY
            if len(spc):
                j = np.searchsorted(spc, pcs[first])
                js = np.minimum(j, len(spc) - 1)
                found = np.flatnonzero((j < len(spc)) & (spc[js] == pcs[first]))
                jf = j[found]
                carried[found] = sb[jf]
            end = self._e_last(s)
            k, e, d = self._events(pcs, self._e_in(s), end, carried)
            m = np.flatnonzero(e <= E_new)
            ek.append(k[m])
            ee.append(e[m])
            ed.append(d[m])
            b = end[last]  # per entering pair (first/last rows align pair by pair)
            fresh = np.ones(len(last), dtype=bool)
            fresh[found] = False
            jf_b = b[found]
            drop.append(jf[jf_b < E_new + D])
            stay = np.flatnonzero(fresh & (b >= E_new + D))
            new_pc, new_b = pcs[last[stay]], b[stay]
        if len(jf):
            ending = np.setdiff1d(ending, jf, assume_unique=True)
        drop.append(ending)
        ended = ending[sb[ending] + D <= E_new]  # (b == E_new: present at E_new, gone after)
        ek.append(spc[ended] >> CODE_BITS)
        ee.append(sb[ended] + D)
        ed.append(np.full(len(ended), -1, dtype=np.int64))
        if len(jf):  # new arrays: snapshots may share the old ones
            sb = sb.copy()
            sb[jf] = jf_b
        gone = np.concatenate(drop)
        if len(gone):
            spc, sb = np.delete(spc, gone), np.delete(sb, gone)
        if len(new_pc):
            pos = np.searchsorted(spc, new_pc)
            spc, sb = np.insert(spc, pos, new_pc), np.insert(sb, pos, new_b)
        self._carried_pairs, self._carried_ends = spc, sb
        events = (np.concatenate(ek), np.concatenate(ee), np.concatenate(ed))
        return base + _sum_events(*events, ck, ce, D)

    def counts(self, qk: np.ndarray, qe: np.ndarray, *, staged: bool) -> np.ndarray:
        """Counts of completed windows ``(qk, qe)`` (``qe <= E``) from the stored rows of the
        queried keys, including the staged late rows iff ``staged`` (brute force)."""
        assert self._keep_entered, "corrections need allowed lateness > 0"
        if not len(qk):
            return np.zeros(0, dtype=np.int64)
        keys_u = np.unique(qk)
        lo, hi = int(qe.min()) - self._size, int(qe.max())
        parts: list[_Rows] = []
        for t in [*self._store, *(self._staged if staged else ())]:
            if not len(t) or t.smax < lo or t.smin >= hi:
                continue
            idx = _ranges(
                np.searchsorted(t.pc, keys_u << CODE_BITS),
                np.searchsorted(t.pc, (keys_u + 1) << CODE_BITS),
            )
            if len(idx):
                ss = t.s[idx]
                idx = idx[(ss >= lo) & (ss < hi)]
            if len(idx):
                parts.append(t.take(idx))
        if not parts:
            return np.zeros(len(qk), dtype=np.int64)
        rows = self._merge(parts)
        start = self._e_in(rows.s) if rows.f is None else _suffix_min(rows.f, rows.pc, self._slide)
        events = self._events(rows.pc, start, self._e_last(rows.s), None)
        return _sum_events(*events, qk, qe, self._slide)

    def prune(self, horizon: int) -> None:
        """Drop stored rows with ``s < horizon`` (no correction can need them); reclaim the codes
        of values no longer held when they outnumber the rows held."""
        if self._store and min(t.smin for t in self._store) < horizon:
            kept = []
            for t in self._store:
                if t.smax < horizon:
                    continue
                kept.append(t if t.smin >= horizon else t.take(np.flatnonzero(t.s >= horizon)))
            self._store = kept
        if len(self._values) > 2 * self.rows() + _COMPACT_SLACK:
            self._compact()

    # ----------------------------------------------------------------------------- state ---

    def rows(self) -> int:
        """Rows held: pending, stored and staged (pair, slice) rows and carried pairs."""
        tables = [*self._pending, *self._store, *self._staged]
        return sum(len(t) for t in tables) + len(self._carried_pairs)

    def snapshot(self) -> dict[str, Any]:
        """The state as tables (``state_tables`` documents them): ``rows`` (``key_id``,
        ``value_code``, ``slice_start``, ``first_end``; the pending tables, then the stored
        ones, of the lengths ``runs`` lists), ``carried`` (``key_id``, ``value_code``,
        ``last_end``: per pair the greatest window end of its entered rows), ``values`` (code →
        value). Rows are gathered into new arrays: nothing in it changes later."""
        tables = [*self._pending, *self._store]
        pcs = np.concatenate([_EMPTY, *(t.pc for t in tables)])
        starts = np.concatenate([_EMPTY, *(t.s for t in tables)])
        first = [
            pa.nulls(len(t), pa.timestamp("us", "UTC")) if t.f is None else _times(t.f)
            for t in tables
        ]
        rows = pa.table(
            {
                "key_id": pa.array(pcs >> CODE_BITS),
                "value_code": pa.array(pcs & CODE_MASK),
                "slice_start": _times(starts),
                "first_end": pa.concat_arrays(first) if first else _times(_EMPTY),
            }
        )
        carried = pa.table(
            {
                "key_id": pa.array(self._carried_pairs >> CODE_BITS),
                "value_code": pa.array(self._carried_pairs & CODE_MASK),
                "last_end": _times(self._carried_ends),
            }
        )
        return {
            "column": self.column,
            "runs": {
                "pending": [len(t) for t in self._pending],
                "store": [len(t) for t in self._store],
            },
            "rows": rows,
            "carried": carried,
            "values": self._values.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with one returned by :meth:`snapshot`."""
        self._values = ValueCodes()
        self._values.restore(state["values"])
        rows = state["rows"]
        pcs = (_ints(rows.column("key_id")) << CODE_BITS) | _ints(rows.column("value_code"))
        starts = _ints(rows.column("slice_start"))
        first = rows.column("first_end")
        offset = 0
        tables: list[list[_Rows]] = []
        for lengths in (state["runs"]["pending"], state["runs"]["store"]):
            tables.append([])
            for n in lengths:
                f = None
                part = first.slice(offset, n)
                if n and part.null_count < n:
                    f = _ints(part)
                tables[-1].append(
                    _Rows.of(pcs[offset : offset + n], starts[offset : offset + n], f)
                )
                offset += n
        if offset != rows.num_rows:
            raise IncompatibleStateError(
                f"count_distinct({self.column}): runs cover {offset} rows, the table has "
                f"{rows.num_rows}"
            )
        self._pending, self._store = tables
        self._staged = []
        carried = state["carried"]
        self._carried_pairs = (_ints(carried.column("key_id")) << CODE_BITS) | _ints(
            carried.column("value_code")
        )
        self._carried_ends = _ints(carried.column("last_end"))

    # ---------------------------------------------------------------------------- helpers ---

    def _events(
        self, pcs: np.ndarray, start: np.ndarray, end: np.ndarray, carried: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(key, end, ±1)`` presence events of rows sorted by ``(pc, s)`` whose ``start`` and
        ``end`` are non-decreasing within a pair.

        ``carried`` (per pair, aligned with its first row; None = none): the end ``b`` of a presence
        interval before the rows (``_NONE``: none), already counted by the caller. A row starts a
        new interval iff ``start > previous end + D``: ``+1`` at its start and ``-1`` one slide
        after the previous end (if any); every pair's last interval gives ``-1`` after its end.
        """
        D = self._slide
        first = np.flatnonzero(_run_starts(pcs))
        prev = np.empty_like(end)
        prev[1:] = end[:-1]
        prev[first] = _NONE if carried is None else carried
        new = start > prev + D
        close = new & (prev != _NONE)
        last = np.flatnonzero(_run_ends(pcs))
        keys = pcs >> CODE_BITS
        return (
            np.concatenate([keys[new], keys[close], keys[last]]),
            np.concatenate([start[new], prev[close] + D, end[last] + D]),
            np.concatenate(
                [
                    np.ones(int(new.sum()), dtype=np.int64),
                    np.full(int(close.sum()) + len(last), -1, dtype=np.int64),
                ]
            ),
        )

    def _raise_carried(self, pcs: np.ndarray, b: np.ndarray) -> None:
        """``b = max(b, new)`` for the pairs ``pcs`` (sorted unique), inserting new pairs."""
        if not len(pcs):
            return
        spc, sb = self._carried_pairs, self._carried_ends
        j = np.searchsorted(spc, pcs)
        found = np.zeros(len(pcs), dtype=bool)
        inside = j < len(spc)
        found[inside] = spc[j[inside]] == pcs[inside]
        sb = sb.copy()
        sb[j[found]] = np.maximum(sb[j[found]], b[found])
        new = np.flatnonzero(~found)
        self._carried_pairs, self._carried_ends = (
            np.insert(spc, j[new], pcs[new]),
            np.insert(sb, j[new], b[new]),
        )

    def _normalize(self, pcs: np.ndarray, s: np.ndarray, f: np.ndarray | None) -> _Rows:
        """Sort rows by ``(pc, s)`` and merge duplicates (their least ``f``)."""
        order = _pair_order(pcs, s, self._slice_width)
        pcs, s = pcs[order], s[order]
        f = None if f is None else f[order]
        flags = np.ones(len(pcs), dtype=bool)
        if len(pcs) > 1:
            flags[1:] = (pcs[1:] != pcs[:-1]) | (s[1:] != s[:-1])
        if not flags.all():
            starts = np.flatnonzero(flags)
            if f is not None:
                f = np.minimum.reduceat(f, starts)
            pcs, s = pcs[starts], s[starts]
        if f is not None and bool((f == self._e_in(s)).all()):
            f = None
        return _Rows.of(pcs, s, f)

    def _merge(self, tables: list[_Rows]) -> _Rows:
        tables = [t for t in tables if len(t)]
        if not tables:
            return _NO_ROWS
        if len(tables) == 1:
            return tables[0]
        with_f = any(t.f is not None for t in tables)
        return self._normalize(
            np.concatenate([t.pc for t in tables]),
            np.concatenate([t.s for t in tables]),
            np.concatenate([self._f(t) for t in tables]) if with_f else None,
        )

    def _f(self, t: _Rows) -> np.ndarray:
        return self._e_in(t.s) if t.f is None else t.f

    def _pending_add(self, t: _Rows) -> None:
        """Append; merge like a binary counter so merges cost O(n log n) in total."""
        p = self._pending
        p.append(t)
        while len(p) >= 2 and len(p[-2]) <= len(p[-1]):
            b, a = p.pop(), p.pop()
            p.append(self._merge([a, b]))

    def _store_add(self, t: _Rows) -> None:
        """Append to the stored rows; small neighbouring tables are merged (bounded size)."""
        st = self._store
        st.append(t)
        while (
            len(st) >= 2 and len(st[-2]) <= len(st[-1]) and len(st[-2]) + len(st[-1]) <= _TABLE_ROWS
        ):
            b, a = st.pop(), st.pop()
            st.append(self._merge([a, b]))

    def _take_entering(self, E_new: int) -> _Rows:
        """Remove and return the pending rows with ``s < E_new``, sorted and merged."""
        out: list[_Rows] = []
        keep: list[_Rows] = []
        for t in self._pending:
            if not len(t) or t.smin >= E_new:
                keep.append(t)
            elif t.smax < E_new:
                out.append(t)
            else:
                m = t.s < E_new
                out.append(t.take(np.flatnonzero(m)))
                keep.append(t.take(np.flatnonzero(~m)))
        self._pending = keep
        return self._merge(out)

    def _compact(self) -> None:
        """Renumber the value codes still held to ``0 … n-1`` (monotone: sorted arrays stay
        sorted) and forget the others."""
        tables = [*self._pending, *self._store, *self._staged]
        live = np.unique(
            np.concatenate([self._carried_pairs & CODE_MASK, *(t.pc & CODE_MASK for t in tables)])
        )

        def recode(pcs: np.ndarray) -> np.ndarray:
            return ((pcs >> CODE_BITS) << CODE_BITS) | np.searchsorted(live, pcs & CODE_MASK)

        def rebuild(t: _Rows) -> _Rows:
            return _Rows(recode(t.pc), t.s, t.f, t.smin, t.smax) if len(t) else t

        self._pending = [rebuild(t) for t in self._pending]
        self._store = [rebuild(t) for t in self._store]
        self._staged = [rebuild(t) for t in self._staged]
        self._carried_pairs = recode(self._carried_pairs)
        self._values.compact(live)
