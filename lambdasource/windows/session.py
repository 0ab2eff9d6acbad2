"""Session windows: per-key sessions merged by gap, vectorised over batches.

Semantics (DESIGN §3, "Windows"): a record at ``t`` opens ``[t, t + gap)``; windows of one key that
overlap (half-open: ``t2 - t1 < gap`` merges, exactly ``gap`` apart does not) merge, so a session is
``[first, last + gap)``. A session with end ``e`` *completes* when the watermark ``W >= e - 1``.

Lateness (allowed lateness ``L``): completed sessions are *retained* while ``e - 1 + L > W``. A
record is late iff the session it ends up in after this ``add`` -- the connected component of its
window among the held sessions of its key and the windows of the batch's records of that key -- has
``e - 1 + L <= W``. Such a component cannot contain a held session (each has ``e - 1 + L > W``), so
it consists of batch records only; all of them are late and none is aggregated. Judging a record by
its final component makes lateness independent of the order of records *within* a batch (a
per-record engine in arrival order would reject a stale record that arrives just before the fresh
record it would have joined; this one accepts it). Records accepted into completed sessions are
corrections, emitted at once.

Emission (rows of one key in increasing window-end order within an emission):

- ``every``: a row per session when it completes; a session changed by a correction is emitted again
  at once if it is (still) complete, else when it completes again. No deletion rows.
- ``changes``: the changelog of the set of completed sessions, for a store keyed by
  ``(key, window_end)``. A correction first emits a deletion row (old start/end, results null) for
  every previously emitted session whose end moved (merged into another session, or extended),
  then the corrected session if it is complete. A session whose end did not move is re-emitted.
- ``latest``: for a store keyed by key. On ``advance``, per key with newly completed sessions, the
  newest of them. On ``add``, per key touched by accepted records, with ``before``/``after`` the
  newest complete held session of the key before/after the batch: emit ``after`` when it is newer
  than ``before`` or is ``before`` corrected; else, when ``before`` was absorbed into a session that
  is not complete yet, emit a deletion row for ``before`` (the store holds no row for the key until
  that session completes; older completed sessions are not re-emitted).

Implementation: held sessions (open and retained) live in one columnar :class:`_Table` sorted by
``(key, start)``. ``add`` pulls the sessions of the batch's keys (``searchsorted`` ranges), sorts
them together with the records' windows by ``(key, start)``, finds components with a segmented
running maximum of ends (log-step doubling), aggregates records with ``kernel.partial`` and merges
held partials with ``kernel.reduce``, then splices the result back in. ``advance`` selects newly
completed sessions with one vectorised mask and drops sessions past allowed lateness. No Python
code runs per record or per session (kernels may, see ``aggregates``).

Limits: a dropped session is forgotten, so a later record that is not late by its own window but
overlaps a dropped session opens a new session beside it (as Flink does). Merging held partials
with a batch's partial passes held states first (``a`` holds the earlier-arrived data), which is
arrival order, not time order, for a non-commutative user ``Aggregate``. Each ``add`` and each
``advance`` that drops sessions rewrites the table: O(held sessions) memory traffic per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, IncompatibleStateError
from ..timeutil import TIME_TYPE
from .aggregates import Kernel, Rows, State, take
from .arrays import ranges
from .engine import EMIT_MODES, AddResult, Emission, EmitMode, WindowEngine
from .state_tables import KEY_ID, int64_column, partial_arrays, partial_states, time_array

__all__ = ["SessionEngine", "segmented_cummax"]

_I64_MIN = int(np.iinfo(np.int64).min)
_I64_MAX = int(np.iinfo(np.int64).max)
_SNAPSHOT_VERSION = 2  # 2: the sessions as an Arrow table


def _clamp(value: int) -> np.int64:
    """An int64 threshold for comparisons (Python ints may leave the int64 range)."""
    return np.int64(min(max(value, _I64_MIN), _I64_MAX))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Concatenate, keeping the dtype of a non-empty side when the other is empty."""
    if len(a) == 0:
        return b
    if len(b) == 0:
        return a
    return np.concatenate([a, b])


def segmented_cummax(values: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Inclusive running maximum of ``values`` that restarts wherever ``segments`` changes.

    ``segments`` must have equal values contiguous (e.g. sorted). Hillis–Steele scan by log-step
    doubling: ``O(n log m)`` for a longest segment of ``m`` elements, no Python loop per element.
    """
    out = np.array(values, copy=True)
    n = len(out)
    step = 1
    while step < n:
        same = segments[step:] == segments[:-step]
        if not same.any():  # segments are contiguous: no longer distance can share one either
            break
        shifted = np.where(same, out[:-step], out[step:])  # a copy: reads the previous round
        np.maximum(out[step:], shifted, out=out[step:])
        step <<= 1
    return out


def _run_lasts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the last element of every run of equal values in ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.append(np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]), len(sorted_keys) - 1)


def _cat_state(a: State, b: State) -> State:
    return tuple(_cat(x, y) for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, slots=True)
class _Table:
    """Columnar sessions. Invariants when held by the engine: sorted by ``(key, start)``; the
    sessions of one key are pairwise disjoint (``end <= next start``); ``start < end``;
    ``count >= 1``; ``states[k]`` is kernel ``k``'s partial state of each session's records.
    Arrays are read-only and never mutated (snapshots share them)."""

    key: np.ndarray
    start: np.ndarray
    end: np.ndarray
    count: np.ndarray
    states: tuple[State, ...]

    def __post_init__(self) -> None:
        for array in (self.key, self.start, self.end, self.count):
            _frozen(array)
        for state in self.states:
            for array in state:
                _frozen(array)

    def __len__(self) -> int:
        return len(self.key)

    @staticmethod
    def empty(kernels: list[Kernel]) -> _Table:
        z = np.zeros(0, dtype=np.int64)
        return _Table(z, z.copy(), z.copy(), z.copy(), tuple(k.identity(0) for k in kernels))

    def take(self, index: np.ndarray) -> _Table:
        return _Table(
            self.key[index],
            self.start[index],
            self.end[index],
            self.count[index],
            tuple(take(s, index) for s in self.states),
        )

    def scatter(
        self, src: np.ndarray, dst: np.ndarray, other: _Table, other_dst: np.ndarray
    ) -> _Table:
        """A table of ``len(src) + len(other)`` rows: ``self[src]`` at rows ``dst`` and
        ``other`` at rows ``other_dst`` (together a permutation of the new rows)."""
        total = len(src) + len(other)

        def put(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            if len(b) == 0 or len(a) == 0:
                dtype = a.dtype if len(b) == 0 else b.dtype
            else:
                dtype = np.result_type(a.dtype, b.dtype)
            out = np.empty(total, dtype=dtype)
            out[dst] = a[src]
            out[other_dst] = b
            return out

        return _Table(
            put(self.key, other.key),
            put(self.start, other.start),
            put(self.end, other.end),
            put(self.count, other.count),
            tuple(
                tuple(put(a, b) for a, b in zip(sa, sb, strict=True))
                for sa, sb in zip(self.states, other.states, strict=True)
            ),
        )

    def cat(self, other: _Table) -> _Table:
        if len(self) == 0:
            return other
        if len(other) == 0:
            return self
        return _Table(
            np.concatenate([self.key, other.key]),
            np.concatenate([self.start, other.start]),
            np.concatenate([self.end, other.end]),
            np.concatenate([self.count, other.count]),
            tuple(_cat_state(a, b) for a, b in zip(self.states, other.states, strict=True)),
        )


class SessionEngine(WindowEngine):
    """Keyed session windows (see the module docstring for the exact semantics).

    Invariants between calls:

    - ``_table`` holds exactly the open sessions (``end - 1 > W``) and the retained completed ones
      (``end - 1 <= W < end - 1 + L``), sorted by ``(key, start)``; state is O(held sessions).
    - Every held session with ``end - 1 <= W`` has been emitted in its current form (``every`` /
      ``changes``), so ``advance`` emits exactly the sessions with ``W_prev < end - 1 <= W``.
    - ``_watermark`` is the last advanced watermark (None before the first; int64 max after
      ``flush_all``).
    """

    def __init__(
        self,
        kernels: list[Kernel],
        emit: EmitMode,
        allowed_lateness: int,
        *,
        gap: int,
        names: Sequence[str] | None = None,
    ) -> None:
        if gap <= 0:
            raise ConfigError(f"SessionEngine: gap must be positive, got {gap}")
        if allowed_lateness < 0:
            raise ConfigError(
                f"SessionEngine: allowed_lateness must be >= 0, got {allowed_lateness}"
            )
        if emit not in EMIT_MODES:
            raise ConfigError(f"SessionEngine: emit must be one of {EMIT_MODES}, got {emit!r}")
        super().__init__(kernels, emit, allowed_lateness, names)
        self.gap = int(gap)
        self._table = _Table.empty(kernels)
        self._watermark: int | None = None

    # ------------------------------------------------------------------------------- public ---

    @property
    def watermark(self) -> int | None:
        """The last watermark the engine advanced to (None before the first)."""
        return self._watermark

    def add(self, key_ids: np.ndarray, rows: Rows, watermark: int | None) -> AddResult:
        """Merge a batch into the sessions of its keys; report late rows and emit corrections.

        A ``watermark`` ahead of the engine's is applied first (as ``advance``), so the engine
        never judges lateness against a stale watermark.
        """
        parts: list[Emission | None] = []
        if watermark is not None and (self._watermark is None or watermark > self._watermark):
            parts.append(self.advance(watermark))
        n = len(rows)
        if n == 0:
            return AddResult(np.zeros(0, dtype=bool), Emission.concat(_present(parts)))
        keys = np.asarray(key_ids, dtype=np.int64)
        times = np.asarray(rows.times, dtype=np.int64)
        late, emission = self._merge(keys, times, rows)
        parts.append(emission)
        return AddResult(late, Emission.concat(_present(parts)))

    def advance(self, watermark: int) -> Emission | None:
        """Emit sessions with ``W_prev < end - 1 <= watermark``; drop those past lateness."""
        previous = self._watermark
        if previous is not None and watermark <= previous:
            return None
        table = self._table
        self._watermark = watermark
        if len(table) == 0:
            return None
        done = table.end <= _clamp(watermark + 1)
        if previous is not None:
            done &= table.end > _clamp(previous + 1)
        emission = self._completed(table, np.flatnonzero(done))
        keep = table.end > _clamp(watermark + 1 - self.allowed_lateness)
        if not keep.all():
            self._table = table.take(np.flatnonzero(keep))
        return emission

    def flush_all(self) -> Emission | None:
        """Complete every open session, then drop all state (as if the watermark were +inf)."""
        table = self._table
        previous = self._watermark
        if previous is None:
            index = np.arange(len(table), dtype=np.int64)
        else:
            index = np.flatnonzero(table.end > _clamp(previous + 1))
        emission = self._completed(table, index)
        self._table = _Table.empty(self.kernels)
        self._watermark = _I64_MAX
        return emission

    def state_rows(self) -> int:
        """Number of held sessions (open + retained), one partial row each."""
        return len(self._table)

    def snapshot(self) -> Any:
        """The state as a ``sessions`` table (``key_id``, ``start``, ``end``, ``count``,
        partials: ``state_tables``); shares the read-only arrays of the held sessions."""
        table = self._table
        fields, arrays, opaque = partial_arrays(self.names, self.kernels, table.states)
        sessions = pa.Table.from_arrays(
            [
                pa.array(table.key),
                time_array(table.start),
                time_array(table.end),
                pa.array(table.count),
                *arrays,
            ],
            schema=pa.schema(
                [
                    pa.field(KEY_ID, pa.int64()),
                    pa.field("start", TIME_TYPE),
                    pa.field("end", TIME_TYPE),
                    pa.field("count", pa.int64()),
                    *fields,
                ]
            ),
        )
        return {
            "version": _SNAPSHOT_VERSION,
            "kind": "session",
            "gap": self.gap,
            "aggregates": list(self.names),
            "watermark": self._watermark,
            "sessions": sessions,
            "opaque": opaque,
        }

    def restore(self, state: Any) -> None:
        """Replace the state with one returned by :meth:`snapshot` of a compatible engine."""
        if (
            not isinstance(state, dict)
            or state.get("kind") != "session"
            or state.get("version") != _SNAPSHOT_VERSION
            or not isinstance(state.get("sessions"), pa.Table)
        ):
            found = state.get("version") if isinstance(state, dict) else None
            raise IncompatibleStateError(
                "SessionEngine: snapshot is not a session-engine state"
                + (
                    f" of layout version {_SNAPSHOT_VERSION} (it has {found}: written by another "
                    "release; start fresh with restore=None or resume with that release)"
                    if found is not None
                    else ""
                )
            )
        if state["gap"] != self.gap or state["aggregates"] != list(self.names):
            raise IncompatibleStateError(
                f"SessionEngine: snapshot has gap={state['gap']} "
                f"aggregates={state['aggregates']}, engine has gap={self.gap} "
                f"aggregates={self.names}"
            )
        sessions = state["sessions"]
        self._watermark = state["watermark"]
        self._table = _Table(
            int64_column(sessions.column(KEY_ID)),
            int64_column(sessions.column("start")),
            int64_column(sessions.column("end")),
            int64_column(sessions.column("count")),
            partial_states(sessions, self.names, self.kernels, state.get("opaque") or {}),
        )

    # ------------------------------------------------------------------------------ merging ---

    def _merge(
        self, keys: np.ndarray, times: np.ndarray, rows: Rows
    ) -> tuple[np.ndarray, Emission | None]:
        table = self._table
        wm = self._watermark
        n = len(keys)

        # 1. the held sessions of the batch's keys (contiguous ranges: the table is key-sorted)
        batch_keys = np.unique(keys)
        lo = np.searchsorted(table.key, batch_keys, side="left")
        hi = np.searchsorted(table.key, batch_keys, side="right")
        held_index = ranges(lo, hi)
        held = table.take(held_index)
        nh = len(held)

        # 2. components of held sessions + record windows, per key
        ikey = _cat(held.key, keys)
        istart = _cat(held.start, times)
        iend = _cat(held.end, times + self.gap)
        order = np.lexsort((istart, ikey))
        skey, sstart, send = ikey[order], istart[order], iend[order]
        reach = segmented_cummax(send, skey)
        m = len(order)
        head = np.empty(m, dtype=bool)
        head[0] = True
        np.logical_or(skey[1:] != skey[:-1], sstart[1:] >= reach[:-1], out=head[1:])
        heads = np.flatnonzero(head)
        tails = np.append(heads[1:], m) - 1
        comp_of = np.empty(m, dtype=np.int64)
        comp_of[order] = np.cumsum(head) - 1
        c_key, c_start, c_end = skey[heads], sstart[heads], reach[tails]
        c_held = np.add.reduceat((order < nh).astype(np.int64), heads)
        c_recs = (tails - heads + 1) - c_held
        h_comp, r_comp = comp_of[:nh], comp_of[nh:]

        # 3. lateness: a component of records only that ends at or before W + 1 - L
        if wm is None:
            c_late = np.zeros(len(heads), dtype=bool)
        else:
            c_late = (c_held == 0) & (c_end <= _clamp(wm + 1 - self.allowed_lateness))
        late = c_late[r_comp]
        c_valid = ~c_late
        c_changed = c_valid & (c_recs > 0)
        if not c_changed.any():
            return late, None
        slot = np.cumsum(c_valid) - 1  # component -> row of the new key table
        local = np.cumsum(c_changed) - 1  # changed component -> row of `changed`
        changed_comps = np.flatnonzero(c_changed)
        n_ch = len(changed_comps)

        # 4. aggregate the changed components: record partials + held partials, held first
        ok = np.flatnonzero(~late)
        if len(ok) == n:
            sub = rows
        else:
            taken = pa.array(ok, type=pa.int64())
            sub = Rows(
                {c: a.take(taken) for c, a in rows.columns.items()},
                np.asarray(rows.times)[ok],
                np.asarray(rows.seq)[ok],
            )
        rec_groups = local[r_comp[ok]]
        held_in = np.flatnonzero(c_changed[h_comp])
        held_groups = local[h_comp[held_in]]
        counts = np.bincount(rec_groups, minlength=n_ch).astype(np.int64)
        np.add.at(counts, held_groups, held.count[held_in])
        states: list[State] = []
        for k, kernel in enumerate(self.kernels):
            part = kernel.partial(sub, rec_groups, n_ch)
            if len(held_in):
                both = _cat_state(take(held.states[k], held_in), part)
                groups = np.concatenate([held_groups, np.arange(n_ch, dtype=np.int64)])
                part = kernel.reduce(both, groups, n_ch)
            states.append(part)
        changed = _Table(
            c_key[changed_comps],
            c_start[changed_comps],
            c_end[changed_comps],
            counts,
            tuple(states),
        )

        # 5. the new sessions of the batch's keys, in (key, start) order
        kept = np.flatnonzero(~c_changed[h_comp])  # held sessions no record touched
        n_kept = len(kept)
        slot_changed = slot[changed_comps]
        perm = np.empty(n_kept + n_ch, dtype=np.int64)
        perm[slot[h_comp[kept]]] = np.arange(n_kept, dtype=np.int64)
        perm[slot_changed] = n_kept + np.arange(n_ch, dtype=np.int64)
        fresh = held.take(kept).cat(changed).take(perm)

        # 6. splice: replace the batch keys' ranges of the table with `fresh`
        self._table = self._splice(table, held_index, lo, hi, batch_keys, fresh)

        # 7. corrections and sessions complete on arrival
        if wm is None:
            return late, None
        complete = _clamp(wm + 1)
        emit_slots = slot_changed[changed.end <= complete]
        if self.emit == "every":
            return late, self._rows(fresh, emit_slots, None)
        if self.emit == "changes":
            moved = held_in[
                (held.end[held_in] <= complete) & (held.end[held_in] != c_end[h_comp[held_in]])
            ]
            return late, self._rows(fresh, emit_slots, held.take(moved))
        return late, self._latest_on_add(held, fresh, slot_changed, batch_keys, complete)

    @staticmethod
    def _splice(
        table: _Table,
        held_index: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        batch_keys: np.ndarray,
        fresh: _Table,
    ) -> _Table:
        """``table`` with rows ``held_index`` (the full ranges ``lo:hi`` of ``batch_keys``)
        replaced by ``fresh`` (sessions of those keys, sorted), keeping ``(key, start)`` order."""
        size, nh, nf = len(table), len(held_index), len(fresh)
        if nh == size:
            return fresh
        removed_before = np.cumsum(hi - lo) - (hi - lo)
        which = np.searchsorted(batch_keys, fresh.key)
        dest = lo[which] - removed_before[which] + np.arange(nf, dtype=np.int64)
        total = size - nh + nf
        kept_dest = np.ones(total, dtype=bool)
        kept_dest[dest] = False
        keep = np.ones(size, dtype=bool)
        keep[held_index] = False
        return table.scatter(np.flatnonzero(keep), np.flatnonzero(kept_dest), fresh, dest)

    # ----------------------------------------------------------------------------- emission ---

    def _completed(self, table: _Table, index: np.ndarray) -> Emission | None:
        """Rows for sessions ``index`` of ``table`` that just completed (sorted by key, start)."""
        if len(index) == 0:
            return None
        if self.emit == "latest":
            index = index[_run_lasts(table.key[index])]
        return self._rows(table, index, None)

    def _latest_on_add(
        self,
        held: _Table,
        fresh: _Table,
        slot_changed: np.ndarray,
        batch_keys: np.ndarray,
        complete: np.int64,
    ) -> Emission | None:
        """``latest`` rows for the keys of a batch: compare each key's newest complete session
        before (``held``) and after (``fresh``) the merge (see the module docstring)."""
        nk = len(batch_keys)

        def newest(t: _Table) -> np.ndarray:
            done = np.flatnonzero(t.end <= complete)
            out = np.full(nk, -1, dtype=np.int64)
            lasts = done[_run_lasts(t.key[done])]
            out[np.searchsorted(batch_keys, t.key[lasts])] = lasts
            return out

        before, after = newest(held), newest(fresh)
        touched = np.zeros(nk, dtype=bool)
        touched[np.searchsorted(batch_keys, fresh.key[slot_changed])] = True
        is_changed = np.zeros(len(fresh), dtype=bool)
        is_changed[slot_changed] = True
        has_b, has_a = before >= 0, after >= 0
        b_end = np.full(nk, _I64_MIN, dtype=np.int64)
        b_end[has_b] = held.end[before[has_b]]
        a_end = np.full(nk, _I64_MIN, dtype=np.int64)
        a_end[has_a] = fresh.end[after[has_a]]
        a_changed = np.zeros(nk, dtype=bool)
        a_changed[has_a] = is_changed[after[has_a]]
        row = touched & has_a & (~has_b | (a_end > b_end) | ((a_end == b_end) & a_changed))
        gone = touched & ~row & has_b & (~has_a | (a_end < b_end))
        return self._rows(fresh, after[row], held.take(before[gone]))

    def _rows(self, table: _Table, index: np.ndarray, deletions: _Table | None) -> Emission | None:
        """Session rows ``table[index]`` plus deletion rows for the sessions in ``deletions``
        (results null), sorted by ``(key, end)`` with deletions first on a tie."""
        nd = 0 if deletions is None else len(deletions)
        nr = len(index)
        if nr + nd == 0:
            return None
        key = table.key[index]
        start = table.start[index]
        end = table.end[index]
        if deletions is not None and nd:
            key = np.concatenate([key, deletions.key])
            start = np.concatenate([start, deletions.start])
            end = np.concatenate([end, deletions.end])
        deleted = np.zeros(nr + nd, dtype=bool)
        deleted[nr:] = True
        order = np.lexsort((~deleted, end, key))
        results: list[pa.Array] = []
        for k, kernel in enumerate(self.kernels):
            if nr:
                values = kernel.result(take(table.states[k], index))
                if nd:
                    values = pa.concat_arrays([values, pa.nulls(nd, type=values.type)])
            else:
                values = pa.nulls(nd, type=kernel.output_type)
            results.append(values.take(pa.array(order, type=pa.int64())))
        return Emission(key[order], start[order], end[order], deleted[order], results)


def _present(parts: list[Emission | None]) -> list[Emission]:
    return [p for p in parts if p is not None]
