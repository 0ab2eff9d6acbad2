"""Rows a :class:`~.sliding.SlidingEngine` emits: forward emission at change points
(``latest`` / ``changes`` / ``every``) and the correction rows of late records.

Window values arrive as :data:`~.parts.Parts` at *change points* ``(key, end)`` (sorted by key,
then end): the ends where a key's window value may differ from the previous end's. The emitter
turns them into :class:`~.engine.Emission` rows by comparing with ``current`` (the dense per-key
value at the previous completed end).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .engine import Emission, EmitMode
from .parts import (
    EMPTY,
    PartialOps,
    Parts,
    concat_parts,
    lex_order,
    run_ends,
    run_starts,
    slice_parts,
    take_parts,
)
from .slices import PairIndex, SliceTable

__all__ = ["Emitter", "Evaluate"]

Evaluate = Callable[[SliceTable, np.ndarray, np.ndarray, bool], Parts]
"""``(rows, keys, ends, late) -> values``: completed windows' values from the rows of the touched
keys (``late``: after the staged late records, else before them)."""


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
    """:meth:`Emitter.same_values` on numpy results (null == null, NaN == NaN)."""
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


class Emitter:
    """Builds the emission rows of one engine (``emit`` mode, window ``size`` and ``slide``)."""

    def __init__(self, ops: PartialOps, emit: EmitMode, *, size: int, slide: int) -> None:
        self.ops, self.emit, self.size, self.slide = ops, emit, size, slide

    def rows(
        self, keys: np.ndarray, ends: np.ndarray, deleted: np.ndarray, results: list[pa.Array]
    ) -> Emission | None:
        if not len(keys):
            return None
        return Emission(
            keys, ends - self.size, ends, deleted, [_null_where(r, deleted) for r in results]
        )

    def same_values(
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

    def latest(self, keys: np.ndarray, values: Parts, current: Parts, end: int) -> Emission | None:
        """``latest``: a row at ``end`` for each of ``keys`` whose value differs from its
        ``current`` one."""
        ops = self.ops
        old = take_parts(current, keys)
        ne, res = ops.nonempty(values), ops.results(values)
        changed = np.flatnonzero(~self.same_values(ne, res, ops.nonempty(old), ops.results(old)))
        taken = pa.array(changed)
        return self.rows(
            keys[changed],
            np.full(len(changed), end, dtype=np.int64),
            ~ne[changed],
            [r.take(taken) for r in res],
        )

    def forward(
        self,
        old_end: int | None,
        new_end: int,
        ck: np.ndarray,
        ce: np.ndarray,
        values: Parts,
        current: Parts,
    ) -> Emission | None:
        """Rows of the windows ``(old_end, new_end]`` from the change points ``(ck, ce)`` and
        their ``values``; ``current`` holds each key's value at ``old_end``."""
        ops = self.ops
        ncp = len(ck)
        if self.emit == "every":
            return self._every(old_end, new_end, ck, ce, values, current)
        if not ncp:
            return None
        if self.emit == "latest":
            last = np.flatnonzero(run_ends(ck))
            return self.latest(ck[last], take_parts(values, last), current, new_end)
        # changes: compare each change point with the previous one (the first: value at old_end)
        ne = ops.nonempty(values)
        fi = np.flatnonzero(run_starts(ck))
        cv = take_parts(current, ck[fi])
        prev = np.arange(-1, ncp - 1, dtype=np.int64)
        prev[fi] = ncp + np.arange(len(fi), dtype=np.int64)
        fast = ops.results_numpy(values)
        fast_cv = ops.results_numpy(cv) if fast is not None else None
        if fast is not None and fast_cv is not None:  # compare in numpy, build Arrow for changes
            res_pn = [
                (np.concatenate([a, ca])[prev], np.concatenate([m, cm])[prev])
                for (a, m), (ca, cm) in zip(fast, fast_cv, strict=True)
            ]
            ne_p = np.concatenate([ne, ops.nonempty(cv)])[prev]
            changed = np.flatnonzero(~_same_numpy(ne, fast, ne_p, res_pn))
            return self.rows(
                ck[changed], ce[changed], ~ne[changed], ops.results(take_parts(values, changed))
            )
        res = ops.results(values)
        pidx = pa.array(prev)
        res_p = [
            pa.concat_arrays([a, b]).take(pidx) for a, b in zip(res, ops.results(cv), strict=True)
        ]
        ne_p = np.concatenate([ne, ops.nonempty(cv)])[prev]
        changed = np.flatnonzero(~self.same_values(ne, res, ne_p, res_p))
        taken = pa.array(changed)
        return self.rows(ck[changed], ce[changed], ~ne[changed], [r.take(taken) for r in res])

    def _every(
        self,
        old_end: int | None,
        new_end: int,
        ck: np.ndarray,
        ce: np.ndarray,
        values: Parts,
        current: Parts,
    ) -> Emission | None:
        """One row per non-empty window: constant runs between change points, repeated."""
        ops, slide = self.ops, self.slide
        ncp = len(ck)
        seg_k, seg_e, seg_n, seg_src = [], [], [], []
        stop = new_end + slide
        if ncp:
            same = np.zeros(ncp, dtype=bool)
            same[:-1] = ck[1:] == ck[:-1]
            nxt = np.where(same, np.append(ce[1:], 0), stop)
            ok = np.flatnonzero(ops.nonempty(values))
            seg_k.append(ck[ok])
            seg_e.append(ce[ok])
            seg_n.append((nxt[ok] - ce[ok]) // slide)
            seg_src.append(ok)
        act = EMPTY
        if old_end is not None:
            act = np.flatnonzero(ops.nonempty(current))
        if len(act):  # keys non-empty at old_end: their value holds until their first change
            assert old_end is not None
            fi = np.flatnonzero(run_starts(ck)) if ncp else EMPTY
            fk, fe = ck[fi], ce[fi]
            pos = np.searchsorted(fk, act)
            safe = np.minimum(pos, max(len(fk) - 1, 0))
            has = (pos < len(fk)) & (fk[safe] == act) if len(fk) else np.zeros(len(act), bool)
            end = np.where(has, fe[safe] if len(fk) else stop, stop)
            seg_k.append(act)
            seg_e.append(np.full(len(act), old_end + slide, dtype=np.int64))
            seg_n.append((end - old_end) // slide - 1)
            seg_src.append(ncp + np.arange(len(act), dtype=np.int64))
        if not seg_k:
            return None
        k, e, n, src = (np.concatenate(x) for x in (seg_k, seg_e, seg_n, seg_src))
        keep = np.flatnonzero(n > 0)
        if not len(keep):
            return None
        k, e, n, src = k[keep], e[keep], n[keep], src[keep]
        order = lex_order(k, e, slide)
        k, e, n, src = k[order], e[order], n[order], src[order]
        held = concat_parts([values, take_parts(current, act)]) if len(act) else values
        res = ops.results(take_parts(held, src))
        seg = np.repeat(np.arange(len(k), dtype=np.int64), n)
        offsets = np.cumsum(n) - n
        ends = np.repeat(e, n) + slide * (np.arange(len(seg), dtype=np.int64) - offsets[seg])
        taken = pa.array(seg)
        return self.rows(k[seg], ends, np.zeros(len(seg), dtype=bool), [r.take(taken) for r in res])

    # ---------------------------------------------------------------------- corrections ---

    def correct_every(
        self,
        new: SliceTable,
        k: np.ndarray,
        f: np.ndarray,
        el: np.ndarray,
        end: int,
        at_end: np.ndarray,
        evaluate: Evaluate,
    ) -> tuple[Emission | None, Parts]:
        """``every``: the updated rows of the completed windows ``[f, min(el, end)]`` the late
        rows of keys ``k`` joined, and the new values of the windows ``(at_end, end)``."""
        slide = self.slide
        n = (np.minimum(el, end) - f) // slide + 1
        grp = np.repeat(np.arange(len(k), dtype=np.int64), n)
        offsets = np.cumsum(n) - n
        qk = k[grp]
        qe = f[grp] + slide * (np.arange(len(grp), dtype=np.int64) - offsets[grp])
        order = lex_order(qk, qe, slide)
        qk, qe = qk[order], qe[order]
        first = run_starts(qk, qe)
        qk, qe = qk[first], qe[first]
        nq = len(qk)
        ends = np.full(len(at_end), end, dtype=np.int64)
        vn = evaluate(new, np.concatenate([qk, at_end]), np.concatenate([qe, ends]), True)
        rows = slice_parts(vn, nq)
        emission = self.rows(qk, qe, ~self.ops.nonempty(rows), self.ops.results(rows))
        return emission, take_parts(vn, np.arange(nq, nq + len(at_end)))

    def correct_changes(
        self,
        old: SliceTable,
        new: SliceTable,
        hk: np.ndarray,
        fmin: np.ndarray,
        end: int,
        at_end: np.ndarray,
        evaluate: Evaluate,
        repeats: tuple[np.ndarray, np.ndarray],
    ) -> tuple[Emission | None, Parts, tuple[np.ndarray, np.ndarray]]:
        """``changes``: rows so an upsert store keyed by (key, end) holds the corrected history.

        ``old``/``new``: the touched keys ``hk``'s rows before/after the late rows (tags filled),
        ``fmin`` per key the first end they join. Candidates are the ends in ``[fmin, end]`` of
        the touched keys where the old or new value may change (entries, exits) or a row with an
        unchanged value exists (``repeats``: sorted ``(keys, ends)``). With ``exists`` = a row is
        stored at ``e``, emit iff ``exists and new(e) != old(e)`` or ``not exists and
        new(e) != new(e - slide)``. Also returns the new values of ``(at_end, end)`` and the
        updated repeats.
        """
        size, slide, ops = self.size, self.slide, self.ops
        repeat_keys, repeat_ends = repeats
        fk = fmin[np.searchsorted(hk, new.keys)]
        assert new.tag is not None
        ck = np.concatenate([new.keys, new.keys])
        ce = np.concatenate([new.tag, (new.s + size) // slide * slide + slide])
        fl = np.concatenate([fk, fk])
        xm = np.flatnonzero(np.isin(repeat_keys, hk))
        if len(xm):
            xk, xe = repeat_keys[xm], repeat_ends[xm]
            ck, ce = np.concatenate([ck, xk]), np.concatenate([ce, xe])
            fl = np.concatenate([fl, fmin[np.searchsorted(hk, xk)]])
        m = np.flatnonzero((ce >= fl) & (ce <= end))
        ck, ce = ck[m], ce[m]
        order = lex_order(ck, ce, slide)
        ck, ce = ck[order], ce[order]
        first = run_starts(ck, ce)
        ck, ce = ck[first], ce[first]
        nc = len(ck)
        ends = np.full(len(at_end), end, dtype=np.int64)
        if not nc:
            return None, evaluate(new, at_end, ends, True), repeats
        qk, qe = np.concatenate([ck, ck]), np.concatenate([ce, ce - slide])
        vo = evaluate(old, qk, qe, False)
        vn = evaluate(new, np.concatenate([qk, at_end]), np.concatenate([qe, ends]), True)
        v_at_end = take_parts(vn, np.arange(2 * nc, 2 * nc + len(at_end)))
        vn = slice_parts(vn, 2 * nc)
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
            j = PairIndex(repeat_keys, repeat_ends, slide).left(ck, ce)
            safe = np.minimum(j, len(repeat_keys) - 1)
            extra = (j < len(repeat_keys)) & (repeat_keys[safe] == ck) & (repeat_ends[safe] == ce)
        exists = ~self.same_values(*o, *op) | extra
        new_flat = self.same_values(*n, *np_)
        emit = (exists & ~self.same_values(*n, *o)) | (~exists & ~new_flat)
        now_extra = (exists | emit) & new_flat  # stored rows equal to the previous end's value
        if len(xm):  # candidates' repeats are recomputed: drop the old ones
            j = PairIndex(ck, ce, slide).left(repeat_keys, repeat_ends)
            safe = np.minimum(j, nc - 1)
            keep = ~((j < nc) & (ck[safe] == repeat_keys) & (ce[safe] == repeat_ends))
            repeat_keys, repeat_ends = repeat_keys[keep], repeat_ends[keep]
        if now_extra.any():
            xk = np.concatenate([repeat_keys, ck[now_extra]])
            xe = np.concatenate([repeat_ends, ce[now_extra]])
            order = lex_order(xk, xe, slide)
            repeat_keys, repeat_ends = xk[order], xe[order]
        sel = np.flatnonzero(emit)
        taken = pa.array(sel)
        emission = self.rows(ck[sel], ce[sel], ~ne_n[sel], [r.take(taken) for r in res_n])
        return emission, v_at_end, (repeat_keys, repeat_ends)
