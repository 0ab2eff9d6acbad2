"""Sliding and tumbling windows computed on slices: :class:`SlidingEngine`, the coordinator.

Notation (int64 µs), with the engine's names: ``S`` = ``size``, ``D`` = ``slide``,
``g = gcd(S, D)`` = ``slice_width``, ``L`` = ``lateness``, ``W`` = ``watermark``, ``E`` =
``completed_end``. Window ``e`` (a multiple of ``D``) is ``[e - S, e)``; it is complete when
``W >= e - 1``, and ``E`` is the newest completed end. A record at ``t`` touches one slice
``s = floor(t / g) * g``, which belongs to the windows ``e_in(s) = ceil((s + g) / D) * D`` …
``e_last(s) = floor((s + S) / D) * D`` and leaves them at ``e_out = e_last + D``. A key's window
value only changes at such *change points*, so completing ``(E_prev, E_new]`` evaluates windows
only there: the entering slices ``[E_prev, E_new)`` and the exiting slices
``[E_prev - S, E_new - S)`` — never one step per slide.

Dataflow, one module per stage:

- ``slices`` (:class:`~.slices.SliceStore`): per (key, slice) partials; pending slices
  (``s >= E``) in LSM-merged tables, entered slices (``s < E``) in chunks tiling the time line;
- ``scans``: segmented scans and two-stack evaluation (time cut into blocks ``[b*S, (b+1)*S)``,
  window ``e`` with ``pb = floor((e - 1) / S)`` is ``suffix(block pb-1, s >= e - S) ⊕
  prefix(block pb, s < e)``; prefixes from a segmented scan of the entering slices seeded by
  ``carried_prefix``, suffixes from :class:`~.scans.SuffixCache`);
- ``emission`` (:class:`~.emission.Emitter`): rows per emit mode, and corrections' rows;
- this module: accepting records (lateness, tags), completing windows, corrections, pruning.

Engine state, O(keys × slices): the slice store; ``current_values`` / ``carried_prefix`` (dense
per key): the window value at ``E``, and the prefix of block ``carried_block``
(``floor((E - 1) / S)``) over slices ``< E``; ``repeat_keys`` / ``repeat_ends`` (``changes``
only): ``(key, end)`` pairs where a correction left a changelog row whose value equals the
previous end's, so later corrections know a row exists there. A snapshot (``state_tables``
documents its tables) holds the slice tables (in their run order), ``current_values``,
``carried_prefix``, the repeats and the scalars; the suffix cache, pair indexes,
``carried_block`` and ``tagged_keys`` are derived and rebuilt on restore (``carried_prefix`` too,
when a producer leaves it out).

Lateness: ``a_min`` (:meth:`SlidingEngine._accepting_from`), the first window end still accepting
records (``e - 1 + L > W``), grows with the watermark. A record joins windows
``[max(e_in, a_min), e_last]`` (late when empty); when ``a_min > e_in`` its slice row keeps
``tag = a_min`` so that closed windows ``< tag`` are still evaluated without it. Slices below
``a_min - D - S`` are dropped (no window can need them).

``count_distinct`` kernels do not go through partial states (merging sets is slow and
superlinear): each has a :class:`~.distinct.PairPresence` tracker that counts (key, value) pairs
per slice, and a :class:`~.parts.PresenceSlot` placeholder (zeros) in the parts. The hooks are
few: ``add`` feeds the trackers, ``_complete`` and ``_evaluate`` (corrections) overwrite the
placeholder slots of the values they evaluate with the trackers' counts, ``_prune``, ``snapshot``,
``restore`` and ``state_rows`` include the trackers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ConfigError
from .aggregates import Kernel, Rows
from .distinct import PairPresence
from .emission import Emitter
from .engine import EMIT_MODES, AddResult, Emission, EmitMode, WindowEngine
from .parts import (
    EMPTY,
    PartialOps,
    Parts,
    PresenceSlot,
    concat_parts,
    copy_parts,
    lex_order,
    run_ends,
    run_starts,
    scatter_parts,
    slice_parts,
    take_parts,
    unique_values,
)
from .scans import SuffixCache, WindowEvaluator, segmented_scan
from .slices import I64_MIN, Chunk, PairIndex, SliceStore, SliceTable
from .state_tables import SliceRows, sliding_restore, sliding_snapshot

__all__ = ["SlidingEngine"]


class SlidingEngine(WindowEngine):
    """Keyed sliding/tumbling windows on slices (see the module docstring for the algorithm).

    Invariants between calls: every window ``e <= completed_end`` has been emitted as the mode
    requires; ``_watermark`` is the last watermark (``completed_end = floor((W + 1) / D) * D`` up
    to ``flush_all``); chunks tile ``[lo_0, completed_end)``; pending rows have
    ``s >= completed_end`` and never carry tags.
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
        self._slice_width = math.gcd(self.size, self.slide)
        self._lateness = int(allowed_lateness)
        # count_distinct: a pair-presence tracker per kernel, a placeholder slot in the parts
        self._presence: list[tuple[int, PairPresence]] = [
            (i, PairPresence(k.column, size=self.size, slide=self.slide, lateness=self._lateness))
            for i, k in enumerate(kernels)
            if k.counts_distinct and k.column is not None
        ]
        slots = {i for i, _ in self._presence}
        ops = PartialOps([PresenceSlot() if i in slots else k for i, k in enumerate(kernels)])
        self._ops = ops
        self._slices = SliceStore(ops, slide=self.slide, slice_width=self._slice_width)
        self._evaluator = WindowEvaluator(ops, self._slices, size=self.size)
        self._suffix_cache = SuffixCache(ops, self._slices, size=self.size)
        self._emitter = Emitter(ops, emit, size=self.size, slide=self.slide)
        self._watermark: int | None = None
        self._completed_end: int | None = None
        self._carried_block: int | None = None
        self._key_count = 0
        self._current_values: Parts = ops.identity(0)
        self._carried_prefix: Parts = ops.identity(0)
        self._repeat_keys = EMPTY
        self._repeat_ends = EMPTY
        self._tagged_keys = EMPTY  # keys of tagged late rows whose tag (= E + D) is a change point

    # ------------------------------------------------------------------------------- public ---

    @property
    def watermark(self) -> int | None:
        """The last watermark the engine advanced to (None before the first)."""
        return self._watermark

    def add(self, key_ids: np.ndarray, rows: Rows, watermark: int | None) -> AddResult:
        """Aggregate a batch; a ``watermark`` ahead of the engine's is applied first (advance)."""
        emitted: list[Emission] = []
        if watermark is not None and (self._watermark is None or watermark > self._watermark):
            pre = self.advance(int(watermark))
            if pre is not None:
                emitted.append(pre)
        n = len(rows)
        late = np.zeros(n, dtype=bool)
        if n == 0:
            return AddResult(late, Emission.concat(emitted))
        size, slide, width = self.size, self.slide, self._slice_width
        keys = np.asarray(key_ids, dtype=np.int64)
        s = np.asarray(rows.times, dtype=np.int64) // width * width
        a_min = self._accepting_from()
        tagged: np.ndarray | None = None
        if a_min is not None:
            late = (s + size) // slide * slide < a_min
            partly_late = (-(-(s + width) // slide) * slide < a_min) & ~late
            tagged = partly_late if partly_late.any() else None
        if late.all():
            return AddResult(late, Emission.concat(emitted))
        table = self._group(rows, keys, s, tagged, np.flatnonzero(~late) if late.any() else None)
        self._grow(int(keys.max()) + 1)
        end = self._completed_end
        accepted = ~late if late.any() else None
        for _, tracker in self._presence:  # rows s >= E: pending; s < E: staged until commit
            tracker.add(keys, s, rows.columns[tracker.column], accepted, end, a_min)
        if end is None or int(table.s.min()) >= end:
            self._slices.add_pending(table)
        else:
            forward = table.s >= end
            if forward.any():
                self._slices.add_pending(table.take(np.flatnonzero(forward)))
            correction = self._late(table.take(np.flatnonzero(~forward)))
            for _, tracker in self._presence:
                tracker.commit(end)
            if correction is not None:
                emitted.append(correction)
        return AddResult(late, Emission.concat(emitted))

    def advance(self, watermark: int) -> Emission | None:
        """Complete the windows with ``end - 1 <= watermark`` (stale watermarks are ignored)."""
        wm = int(watermark)
        if self._watermark is not None and wm <= self._watermark:
            return None
        self._watermark = wm
        new_end = (wm + 1) // self.slide * self.slide
        if self._completed_end is not None and new_end <= self._completed_end:
            self._prune()
            return None
        return self._complete(new_end)

    def flush_all(self) -> Emission | None:
        """Complete every window up to the one after the last slice's last window.

        That is the watermark +infinity for ``every`` and ``changes`` (every key's trailing
        deletion row included); in ``latest`` each key's row is a deletion at that end.
        """
        top = self._slices.max_slice()
        if top is None:
            return None
        final_end = (top + self.size) // self.slide * self.slide + self.slide
        if self._completed_end is not None and final_end <= self._completed_end:
            return None
        wm = self._watermark
        self._watermark = max(wm if wm is not None else I64_MIN, final_end - 1)
        return self._complete(final_end)

    def state_rows(self) -> int:
        """Slice rows (pending + entered), count_distinct rows, 2 dense rows per key and the
        changelog repeats: what a snapshot holds (the suffix cache is rebuilt on demand)."""
        rows = self._slices.rows()
        rows += sum(tracker.rows() for _, tracker in self._presence)
        return rows + 2 * self._key_count + len(self._repeat_keys)

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
        """Install restored tables (scalars ``_watermark``, ``_completed_end``, ``_key_count``
        already set) and rebuild what is derived: chunk bounds, the carried prefix when not
        given, tagged keys."""
        store, end = self._slices, self._completed_end
        store.chunks = [Chunk(lo, hi, SliceTable(*rows)) for lo, hi, rows in chunks]
        store.pending = [SliceTable(*rows) for rows in pending]
        self._carried_block = None if end is None else (end - 1) // self.size
        self._current_values = current
        store.reindex_chunks()
        self._suffix_cache.clear()
        self._repeat_keys, self._repeat_ends = repeats
        self._carried_prefix = self._rebuild_carried_prefix() if prefix is None else prefix
        tagged = [
            c.table.keys[c.table.tag > end]
            for c in store.chunks
            if end is not None and c.table.tag is not None
        ]
        self._tagged_keys = np.unique(np.concatenate([EMPTY, *tagged]))

    def _rebuild_carried_prefix(self) -> Parts:
        """The carried prefix from the entered slices: per key, block ``carried_block``'s slices
        below ``completed_end``."""
        prefix = self._ops.identity(self._key_count)
        end, block = self._completed_end, self._carried_block
        if end is None or block is None:
            return prefix
        t = self._slices.gather(None, block * self.size, end, with_tags=False)
        if not len(t):
            return prefix
        keys = unique_values(t.keys)
        ends = np.full(len(keys), end, dtype=np.int64)
        return scatter_parts(prefix, keys, self._evaluator.windows(t, keys, ends, prefix_only=True))

    # ------------------------------------------------------------------------------ helpers ---

    def _accepting_from(self) -> int | None:
        """``a_min``: the first window end that still accepts records (``e - 1 + L > W``)."""
        if self._watermark is None:
            return None
        return -(-(self._watermark + 2 - self._lateness) // self.slide) * self.slide

    def _grow(self, n: int) -> None:
        if n > self._key_count:
            extra = self._ops.identity(n - self._key_count)
            self._current_values = concat_parts([self._current_values, extra])
            self._carried_prefix = concat_parts([self._carried_prefix, copy_parts(extra)])
            self._key_count = n

    def _group(
        self,
        rows: Rows,
        keys: np.ndarray,
        s: np.ndarray,
        tagged: np.ndarray | None,
        accepted: np.ndarray | None,
    ) -> SliceTable:
        """Aggregate the ``accepted`` rows (None = all) per ``(key, slice, tagged)``."""
        n = len(keys)
        ka, sa = (keys, s) if accepted is None else (keys[accepted], s[accepted])
        ta = None
        if tagged is not None:
            ta = (tagged if accepted is None else tagged[accepted]).astype(np.int64)
        order = lex_order(ka, sa, self._slice_width, ta)
        ks, ss = ka[order], sa[order]
        ts = None if ta is None else ta[order]
        flags = run_starts(ks, ss) if ts is None else run_starts(ks, ss, ts)
        gid = np.cumsum(flags) - 1
        ng = int(gid[-1]) + 1
        if accepted is None:
            groups = np.empty(n, dtype=np.int64)
            groups[order] = gid
            parts = self._ops.partial(rows, groups, ng)
        else:
            groups = np.full(n, ng, dtype=np.int64)  # late rows: a dummy group, dropped
            groups[accepted[order]] = gid
            parts = slice_parts(self._ops.partial(rows, groups, ng + 1), ng)
        gk, gs = ks[flags], ss[flags]
        tag = None
        if ts is not None:
            a_min = self._accepting_from()
            assert a_min is not None
            tag = np.where(ts[flags] > 0, a_min, self._slices.first_ends(gs))
        return SliceTable(gk, gs, tag, parts)

    def _fill_distinct(self, values: Parts, counts: list[np.ndarray]) -> Parts:
        """``values`` with the count_distinct placeholder slots replaced by ``counts``."""
        out = list(values)
        for (i, _), c in zip(self._presence, counts, strict=True):
            out[i] = (c,)
        return tuple(out)

    def _evaluate(self, t: SliceTable, qk: np.ndarray, qe: np.ndarray, late: bool) -> Parts:
        """Completed windows' values for corrections, count_distinct slots included: counted by
        the trackers from their own rows, with (``late``) or without the staged late rows, to
        match ``t`` (the touched keys' rows after resp. before the late rows)."""
        values = self._evaluator.windows(t, qk, qe)
        if not self._presence:
            return values
        counts = [tracker.counts(qk, qe, staged=late) for _, tracker in self._presence]
        return self._fill_distinct(values, counts)

    # ---------------------------------------------------------------------------- completion ---

    def _complete(self, new_end: int) -> Emission | None:
        """Complete windows ``(E, new_end]``: change points only, then state for ``new_end``."""
        size, slide, width, ops = self.size, self.slide, self._slice_width, self._ops
        old_end, block = self._completed_end, self._carried_block
        entering = self._slices.take_entering(new_end)
        self._slices.seal(entering, old_end, new_end)
        exk, exs = self._slices.entered_range(
            None if old_end is None else old_end - size, new_end - size
        )
        ck = np.concatenate([entering.keys, exk, self._tagged_keys])
        tagged_at = (old_end if old_end is not None else 0) + slide
        ce = np.concatenate(
            [
                self._slices.first_ends(entering.s),
                (exs + size) // slide * slide + slide,
                np.full(len(self._tagged_keys), tagged_at),
            ]
        )
        self._tagged_keys = EMPTY
        if len(ck):
            order = lex_order(ck, ce, slide, stable=True)  # timsort: merges the sorted runs
            ck, ce = ck[order], ce[order]
            first = run_starts(ck, ce)
            if not first.all():
                ck, ce = ck[first], ce[first]
        ncp = len(ck)
        need = np.flatnonzero(ce % size != 0) if ncp else EMPTY

        # prefix scan of the entering slices, segments (key, block), seeded by the carried prefix
        eblk = entering.s // size
        pre = entering.parts
        if len(entering):
            starts = run_starts(entering.keys, eblk)
            pre = copy_parts(pre)
            if block is not None:
                st = np.flatnonzero(starts)
                st = st[eblk[st] == block]
                if len(st):
                    carried = take_parts(self._carried_prefix, entering.keys[st])
                    pre = scatter_parts(pre, st, ops.combine(carried, take_parts(pre, st)))
            pre = segmented_scan(ops, pre, np.cumsum(starts), reverse=False)

        values = ops.identity(0)
        if ncp:
            pb = (ce - 1) // size
            values = ops.identity(ncp)
            if block is not None:
                m = np.flatnonzero(pb == block)
                if len(m):
                    values = scatter_parts(values, m, take_parts(self._carried_prefix, ck[m]))
            if len(entering):
                idx = PairIndex(entering.keys, entering.s, width).right(ck, ce - width) - 1
                safe = np.maximum(idx, 0)
                m = np.flatnonzero((idx >= 0) & (entering.keys[safe] == ck) & (eblk[safe] == pb))
                values = scatter_parts(values, m, take_parts(pre, idx[m]))
            if len(need):
                q = pb[need] - 1
                for pos, found in self._suffix_cache.values(ck[need], ce[need] - size, q):
                    sel = need[pos]
                    values = scatter_parts(values, sel, ops.combine(found, take_parts(values, sel)))

        if self._presence:  # count_distinct slots: pair-presence counts at the change points
            counts = [t.advance(old_end, new_end, ck, ce) for _, t in self._presence]
            values = self._fill_distinct(values, counts)
        emission = self._emitter.forward(old_end, new_end, ck, ce, values, self._current_values)

        # state at new_end
        if ncp:
            last = np.flatnonzero(run_ends(ck))
            self._current_values = scatter_parts(
                self._current_values, ck[last], take_parts(values, last)
            )
        new_block = (new_end - 1) // size
        if new_block != block:
            self._carried_prefix = ops.identity(self._key_count)
        if len(entering):
            sel = np.flatnonzero(run_ends(entering.keys) & (eblk == new_block))
            if len(sel):
                self._carried_prefix = scatter_parts(
                    self._carried_prefix, entering.keys[sel], take_parts(pre, sel)
                )
        self._completed_end, self._carried_block = new_end, new_block
        self._prune()
        return emission

    def _prune(self) -> None:
        """Drop what no window can need: slices ``< a_min - D - S``, old suffix blocks/repeats."""
        a_min = self._accepting_from()
        end = self._completed_end
        if a_min is None or end is None:
            return
        size, slide = self.size, self.slide
        horizon = a_min - slide - size
        self._slices.prune(horizon)
        for _, tracker in self._presence:
            tracker.prune(horizon)
        self._suffix_cache.drop_below((end + slide - 1) // size - 1)  # future windows need no older
        if len(self._repeat_ends) and int(self._repeat_ends.min()) < a_min:
            keep = np.flatnonzero(self._repeat_ends >= a_min)
            self._repeat_keys, self._repeat_ends = self._repeat_keys[keep], self._repeat_ends[keep]

    # ----------------------------------------------------------------------------- lateness ---

    def _late(self, late: SliceTable) -> Emission | None:
        """Rows for entered slices (``s < E``): merge them, correct completed windows, and keep
        the current values, carried prefix and suffix cache consistent, re-evaluating from the
        touched keys' slices."""
        end = self._completed_end
        assert end is not None
        size, slide, store = self.size, self.slide, self._slices
        f = store.tags(late)
        el = (late.s + size) // slide * slide
        hit = f <= end  # rows in already completed windows
        emission: Emission | None = None
        new: SliceTable | None = None
        hk = EMPTY
        if hit.any():
            hk_rows, f_rows = late.keys[hit], f[hit]  # sorted by key
            st = np.flatnonzero(run_starts(hk_rows))
            hk, fmin = hk_rows[st], np.minimum.reduceat(f_rows, st)
            lo = int(fmin.min()) - slide - size
            old = store.gather(hk, lo, end, with_tags=True)
            mine = late.take(np.flatnonzero(np.isin(late.keys, hk)))
            both = store.concat([old, mine], with_tags=True)
            assert both.tag is not None
            new = store.normalize(both.keys, both.s, both.tag, both.parts)
            if new.tag is None:
                new = replace(new, tag=store.tags(new))
            at_end = np.unique(late.keys[hit & (el >= end)])  # keys whose window E changed
            if self.emit == "changes":
                repeats = (self._repeat_keys, self._repeat_ends)
                emission, vn, repeats = self._emitter.correct_changes(
                    old, new, hk, fmin, end, at_end, self._evaluate, repeats
                )
                self._repeat_keys, self._repeat_ends = repeats
            elif self.emit == "every":
                emission, vn = self._emitter.correct_every(
                    new, late.keys[hit], f[hit], el[hit], end, at_end, self._evaluate
                )
            else:
                vn = self._evaluate(new, at_end, np.full(len(at_end), end, dtype=np.int64), True)
            if len(at_end):
                if self.emit == "latest":
                    emission = self._emitter.latest(at_end, vn, self._current_values, end)
                self._current_values = scatter_parts(self._current_values, at_end, vn)
        future = np.flatnonzero(f > end)  # tagged rows (f = E + D): they join at window E + D
        if len(future):
            self._tagged_keys = np.concatenate([self._tagged_keys, late.keys[future]])
        store.merge_late(late, self._accepting_from())
        block = self._carried_block
        if block is not None:  # the carried prefix of keys with rows in its block
            kp = np.unique(late.keys[late.s // size == block])
            if len(kp):
                t = (
                    new
                    if new is not None and np.isin(kp, hk).all()
                    else store.gather(kp, block * size, end, with_tags=False)
                )
                ends = np.full(len(kp), end, dtype=np.int64)
                prefix = self._evaluator.windows(t, kp, ends, prefix_only=True)
                self._carried_prefix = scatter_parts(self._carried_prefix, kp, prefix)
        self._suffix_cache.update(late)
        return emission
