"""Aggregate kernels over sorted slice rows: segmented scans, two-stack window evaluation and the
cache of block suffixes (any associative ``combine``, no retraction: float sums never drift).

Time is cut into blocks ``[b * size, (b + 1) * size)``; window ``e`` with
``pb = floor((e - 1) / size)`` is
``suffix(block pb - 1, s >= e - size) ⊕ prefix(block pb, s < e)``.
:class:`WindowEvaluator` computes both parts from given rows; :class:`SuffixCache` keeps the
suffixes of the entered blocks future windows still need (a block is complete when first needed).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .parts import (
    EMPTY,
    PartialOps,
    Parts,
    copy_parts,
    lex_order,
    run_starts,
    scatter_parts,
    take_parts,
    unique_values,
)
from .slices import PairIndex, SliceStore, SliceTable

__all__ = ["SuffixCache", "WindowEvaluator", "segmented_scan"]


def _segmented_cumsum(
    a: np.ndarray, starts: np.ndarray, seg: np.ndarray, reverse: bool
) -> np.ndarray:
    """Exact segmented (reverse) cumulative sum of an integer array (wrap-around cancels)."""
    cs = np.cumsum(a)
    if reverse:
        ends = np.append(starts[1:], len(a)) - 1
        return cs[ends][seg] - cs + a
    return cs - (cs[starts] - a[starts])[seg]


def _doubling_rounds(seg: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(src, active)`` pairs of the log-step rounds of a segmented scan (see
    :func:`segmented_scan`)."""
    rounds = []
    active = np.flatnonzero(seg[1:] == seg[:-1]) + 1
    step = 1
    while len(active):
        rounds.append((active - step, active))
        step *= 2
        active = active[active >= step]
        active = active[seg[active - step] == seg[active]]
    return rounds


def segmented_scan(ops: PartialOps, vals: Parts, seg: np.ndarray, *, reverse: bool) -> Parts:
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
    for i, state in enumerate(vals):
        if not additive[i]:
            continue
        arrays = []
        for a in state:
            if a.dtype.kind in "iu":
                if cum is None:
                    flags = run_starts(seg)
                    cum = (np.flatnonzero(flags), np.cumsum(flags) - 1)
                arrays.append(_segmented_cumsum(a, cum[0], cum[1], reverse))
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
        earlier, later = take_parts(sub, src), take_parts(sub, act)
        merged_states = tuple(
            k.combine(x, y) for k, x, y in zip(kernels, earlier, later, strict=True)
        )
        sub = scatter_parts(sub, src if reverse else act, merged_states)
    for i, state in zip(slow, sub, strict=True):
        out[i] = state
    return tuple(out)


class WindowEvaluator:
    """Window values from given slice rows, by two stacks (module docstring)."""

    def __init__(self, ops: PartialOps, store: SliceStore, *, size: int) -> None:
        self.ops, self.store, self.size = ops, store, size

    def windows(
        self, t: SliceTable, qk: np.ndarray, qe: np.ndarray, *, prefix_only: bool = False
    ) -> Parts:
        """Values of the windows ``(qk, qe)`` from ``t``: rows sorted by ``(key, s, tag)``, all
        the slices these windows need; a row joins the windows ``e >= tag`` (None: all).

        Queries are grouped by the tags they see (usually one group), then evaluated with two
        stacks (:meth:`two_stack`). ``prefix_only``: only the slices of block ``pb(e)`` below
        ``e``, whatever their tags.
        """
        nq = len(qk)
        if not len(t) or not nq:
            return self.ops.identity(nq)
        tag = t.tag
        lo = int(qe.min())
        hiding = EMPTY  # rows with a real tag (> e_in) that some queries must not see
        if tag is not None and not prefix_only:
            hiding = np.flatnonzero((tag > lo) & (tag > self.store.first_ends(t.s)))
        if not len(hiding):
            return self.two_stack(t, qk, qe, prefix_only)
        assert tag is not None
        above = np.unique(tag[hiding])
        out = self.ops.identity(nq)
        gid = np.searchsorted(above, qe, "right")  # queries see the tags <= above[gid - 1]
        for i in np.unique(gid).tolist():
            sel = np.flatnonzero(gid == i)
            visible = np.ones(len(t), dtype=bool)
            visible[hiding] = tag[hiding] <= (int(above[i - 1]) if i else lo)
            rows = t.take(np.flatnonzero(visible))
            out = scatter_parts(out, sel, self.two_stack(rows, qk[sel], qe[sel], prefix_only))
        return out

    def two_stack(self, t: SliceTable, qk: np.ndarray, qe: np.ndarray, prefix_only: bool) -> Parts:
        """``suffix(block pb - 1, s >= e - size) ⊕ prefix(block pb, s < e)`` per query, by
        segmented scans over ``(key, block)`` of ``t`` (rows of one ``(key, s)`` merged first);
        each scan only covers the blocks some query takes that part from."""
        size, width, ops = self.size, self.store.slice_width, self.ops
        keys, s, parts = t.keys, t.s, t.parts
        out = ops.identity(len(qk))
        if not len(keys):
            return out
        flags = run_starts(keys, s)
        if not flags.all():
            gid = np.cumsum(flags) - 1
            parts = ops.reduce(parts, gid, int(gid[-1]) + 1)
            keys, s = keys[flags], s[flags]
        blk = s // size
        pb = (qe - 1) // size
        need = EMPTY if prefix_only else np.flatnonzero(qe % size != 0)
        for suffix, sel, qs, qb in (
            (False, np.arange(len(qk)), qe - width, pb),
            (True, need, qe[need] - size, pb[need] - 1),
        ):
            if not len(sel):
                continue
            rows = np.flatnonzero(np.isin(blk, np.unique(qb)))
            if not len(rows):
                continue
            rk, rs, rb = keys[rows], s[rows], blk[rows]
            seg = np.cumsum(run_starts(rk, rb))
            vals = segmented_scan(ops, copy_parts(take_parts(parts, rows)), seg, reverse=suffix)
            index = PairIndex(rk, rs, width)
            if suffix:  # first row >= (k, e - size)
                j = index.left(qk[sel], qs)
                safe = np.minimum(j, len(rows) - 1)
                found = j < len(rows)
            else:  # last row <= (k, e - width)
                j = index.right(qk[sel], qs) - 1
                safe = np.maximum(j, 0)
                found = j >= 0
            ok = np.flatnonzero(found & (rk[safe] == qk[sel]) & (rb[safe] == qb))
            hit, values = sel[ok], take_parts(vals, j[ok])
            if suffix:
                values = ops.combine(values, take_parts(out, hit))
            out = scatter_parts(out, hit, values)
        return out


class SuffixCache:
    """Suffix values of cached entered blocks, per ``(key, s)``: row ``(k, s)`` of block ``b``
    holds the combine of key ``k``'s slices ``s' >= s`` in ``b``.

    ``tables`` holds ``(values, index, blocks)`` triples; ``blocks`` (sorted) and ``owner`` say
    which table holds each cached block. ``hints`` (per table id and key: the last lookup's
    answer, a lower bound for the next one, as time only moves on) make most lookups walk a row
    or two instead of a binary search; a hint is checked before it is used.
    """

    def __init__(self, ops: PartialOps, store: SliceStore, *, size: int) -> None:
        self.ops, self.store, self.size = ops, store, size
        self.tables: list[tuple[SliceTable, PairIndex, np.ndarray]] = []
        self.blocks = EMPTY
        self.owner = EMPTY
        self.hints: dict[int, np.ndarray] = {}

    def clear(self) -> None:
        self.tables, self.hints = [], {}
        self._reindex()

    def _suffix_rows(self, keys_u: np.ndarray | None, blocks: np.ndarray) -> SliceTable:
        """Suffix values per ``(key, s)`` within each of ``blocks`` (sorted unique)."""
        size = self.size
        lo, hi = int(blocks[0]) * size, (int(blocks[-1]) + 1) * size
        t = self.store.gather(keys_u, lo, hi, with_tags=False)
        if len(t) and len(blocks) > 1:
            t = t.take(np.flatnonzero(np.isin(t.s // size, blocks)))
        if len(t) < 2:
            return t
        seg = np.cumsum(run_starts(t.keys, t.s // size))
        return replace(t, parts=segmented_scan(self.ops, copy_parts(t.parts), seg, reverse=True))

    def _ensure(self, needed: np.ndarray) -> None:
        """Cache the suffixes of the ``needed`` blocks (sorted; older cached blocks are dropped)."""
        self.drop_below(int(needed[0]))
        missing = np.setdiff1d(needed, self.blocks)
        if len(missing):
            table = self._suffix_rows(None, missing)
            index = PairIndex(table.keys, table.s, self.store.slice_width)
            self.tables.append((table, index, missing))
            self._reindex()

    def _reindex(self) -> None:
        """``blocks`` (sorted) and ``owner``: which table holds each cached block."""
        blocks = [b for _, _, b in self.tables]
        owner = [np.full(len(x), i, dtype=np.int64) for i, x in enumerate(blocks)]
        all_blocks = np.concatenate([EMPTY, *blocks])
        order = np.argsort(all_blocks, kind="stable")
        self.blocks = all_blocks[order]
        self.owner = np.concatenate([EMPTY, *owner])[order]
        live = {id(t) for t, _, _ in self.tables}
        self.hints = {i: h for i, h in self.hints.items() if i in live}

    def drop_below(self, first_block: int) -> None:
        """Forget the cached blocks ``< first_block``."""
        if not len(self.blocks) or int(self.blocks[0]) >= first_block:
            return
        kept = []
        for t, index, blocks in self.tables:
            if int(blocks[-1]) < first_block:
                continue
            if int(blocks[0]) < first_block:
                blocks = blocks[blocks >= first_block]
                t = t.take(np.flatnonzero(t.s >= first_block * self.size))
                index = PairIndex(t.keys, t.s, self.store.slice_width)
            kept.append((t, index, blocks))
        self.tables = kept
        self._reindex()

    def values(
        self, qk: np.ndarray, qs: np.ndarray, q: np.ndarray
    ) -> list[tuple[np.ndarray, Parts]]:
        """:meth:`lookup` after caching the blocks ``q``."""
        self._ensure(unique_values(q))
        return self.lookup(qk, qs, q)

    def lookup(
        self, qk: np.ndarray, qs: np.ndarray, q: np.ndarray
    ) -> list[tuple[np.ndarray, Parts]]:
        """Suffix of (cached) block ``q`` from slice ``qs`` on for key ``qk``, where non-empty:
        per cached table, (positions of the queries found, their values)."""
        found: list[tuple[np.ndarray, Parts]] = []
        owner = self.owner[np.searchsorted(self.blocks, q)]
        single = len(owner) and int(owner.min()) == int(owner.max())
        for i in [int(owner[0])] if single else np.unique(owner).tolist():
            t, index, _ = self.tables[i]
            if not len(t):
                continue
            sel = np.arange(len(owner)) if single else np.flatnonzero(owner == i)
            sk, ss, sq = (qk, qs, q) if single else (qk[sel], qs[sel], q[sel])
            hint = self.hints.get(id(t))
            if hint is None:  # per key: its last answer (a lower bound for the next), -1: none
                hint = np.full(int(t.keys[-1]) + 1, -1, dtype=np.int64)
                self.hints[id(t)] = hint
            j = index.left_from(sk, ss, hint[np.minimum(sk, len(hint) - 1)])
            hint[np.minimum(sk, len(hint) - 1)] = j
            safe = np.minimum(j, len(t) - 1)
            ok = np.flatnonzero(
                (j < len(t)) & (t.keys[safe] == sk) & (t.s[safe] // self.size == sq)
            )
            found.append((sel[ok], take_parts(t.parts, j[ok])))
        return found

    def update(self, late: SliceTable) -> None:
        """Recompute the cached suffixes of the keys the (merged) late rows touched."""
        if not len(self.blocks):
            return
        size, width = self.size, self.store.slice_width
        late_blocks = late.s // size
        hit = np.isin(late_blocks, self.blocks)
        if not hit.any():
            return
        owner = self.owner[np.searchsorted(self.blocks, late_blocks[hit])]
        for i in np.unique(owner).tolist():
            keys_u = np.unique(late.keys[hit][owner == i])
            blocks = np.unique(late_blocks[hit][owner == i])
            new = self._suffix_rows(keys_u, blocks)
            old, _, cached = self.tables[i]
            drop = np.isin(old.keys, keys_u) & np.isin(old.s // size, blocks)
            both = self.store.concat([old.take(np.flatnonzero(~drop)), new], with_tags=False)
            t = both.take(lex_order(both.keys, both.s, width))
            self.tables[i] = (t, PairIndex(t.keys, t.s, width), cached)
        self._reindex()
