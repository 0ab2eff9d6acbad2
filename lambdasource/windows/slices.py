"""The slice store of a :class:`~.sliding.SlidingEngine`: per (key, slice) partials, sorted.

Rows live in immutable :class:`SliceTable`\\ s sorted by ``(key, slice start, first end)``:

- *pending* slices (``s >= completed_end``): a few tables merged like a binary counter (an LSM:
  O(n log n) merge work in total), taken out in order when windows complete;
- *entered* slices (``s < completed_end``): :class:`Chunk`\\ s, one per completion (small
  neighbours merged), whose ``[lo, hi)`` ranges tile the entered time line, so a late record has
  exactly one chunk to merge into; pruned below the horizon no window can need.

:class:`PairIndex` answers lexicographic ``(key, s)`` searches over such sorted rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .arrays import ranges
from .parts import (
    CODE_LIMIT,
    EMPTY,
    PartialOps,
    Parts,
    concat_parts,
    lex_order,
    run_starts,
    take_parts,
)

__all__ = ["Chunk", "PairIndex", "SliceStore", "SliceTable"]

I64_MIN = int(np.iinfo(np.int64).min)
CHUNK_ROWS = 1 << 17  # entered tables smaller than this are merged with their neighbour
WALK_STEPS = 4  # rows a hinted search walks forward before it falls back to binary search


class PairIndex:
    """Lexicographic search for ``(key, s)`` pairs in rows sorted by ``(key, s)``.

    ``s`` and query values are multiples of ``step``. Rows are mapped to int64 codes preserving the
    order: ``key * width + offset`` when that fits, else dense ranks of ``s``.
    """

    __slots__ = ("_base", "_codes", "_key_cap", "_ranks", "_step", "_width", "keys", "s")

    def __init__(self, keys: np.ndarray, s: np.ndarray, step: int) -> None:
        self.keys, self.s, self._step = keys, s, step
        self._ranks: np.ndarray | None = None  # the distinct s, when offsets do not fit
        self._base = 0
        if len(keys) == 0:
            self._key_cap, self._width, self._codes = 0, 1, EMPTY
            return
        self._key_cap = int(keys[-1]) + 1
        self._base = int(s.min())
        span = (int(s.max()) - self._base) // step + 1
        if self._key_cap * (span + 2) + span + 2 < CODE_LIMIT:
            self._width = span + 2
            self._codes = keys * self._width + ((s - self._base) // step + 1)
        else:
            self._ranks = np.unique(s)
            self._width = len(self._ranks) + 1
            self._codes = keys * self._width + np.searchsorted(self._ranks, s)

    def __len__(self) -> int:
        return len(self.keys)

    def _query(self, qk: np.ndarray, qs: np.ndarray, right: bool) -> np.ndarray:
        qk = np.minimum(qk, self._key_cap)
        if self._ranks is None:
            off = np.clip((qs - self._base) // self._step + 1, 0, self._width - 1)
            return np.searchsorted(
                self._codes, qk * self._width + off, "right" if right else "left"
            )
        rank = np.searchsorted(self._ranks, qs, "right" if right else "left")
        return np.searchsorted(self._codes, qk * self._width + rank, "left")

    def left(self, qk: np.ndarray, qs: np.ndarray) -> np.ndarray:
        """Number of rows ``< (qk, qs)``: the first row ``>= (qk, qs)``."""
        return self._query(qk, qs, False)

    def left_from(self, qk: np.ndarray, qs: np.ndarray, guess: np.ndarray) -> np.ndarray:
        """:meth:`left`, walking a few rows forward from ``guess`` (any int64 per query; a guess
        that is negative, beyond the answer or too far below it falls back to binary search)."""
        if self._ranks is not None:
            return self._query(qk, qs, False)
        codes, n = self._codes, len(self._codes)
        off = np.clip((qs - self._base) // self._step + 1, 0, self._width - 1)
        target = np.minimum(qk, self._key_cap) * self._width + off
        pos = np.clip(guess, 0, n)
        bad = guess < 0
        chk = np.flatnonzero(~bad & (pos > 0))
        bad[chk] = codes[pos[chk] - 1] >= target[chk]  # a row before the guess is >= target
        todo = np.flatnonzero(~bad)
        for _ in range(WALK_STEPS):
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
class SliceTable:
    """Slice rows: sorted by ``(keys, s, tag)`` and unique; never mutated once built.

    ``tag`` is the first window end a row may join (``None``: ``e_in(s)`` for every row).
    """

    keys: np.ndarray
    s: np.ndarray
    tag: np.ndarray | None
    parts: Parts

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx: np.ndarray) -> SliceTable:
        return SliceTable(
            self.keys[idx],
            self.s[idx],
            None if self.tag is None else self.tag[idx],
            take_parts(self.parts, idx),
        )


@dataclass(frozen=True, slots=True, eq=False)
class Chunk:
    """Entered slice rows with ``lo <= s < hi``; chunk ranges tile the entered time line."""

    lo: int
    hi: int
    table: SliceTable


class SliceStore:
    """Pending and entered slice tables of one engine (see the module docstring).

    Invariants: pending rows have ``s >= completed_end`` and no tags; ``chunk_los`` /
    ``chunk_his`` are the chunks' bounds, in order, tiling ``[chunks[0].lo, completed_end)``.
    """

    def __init__(self, ops: PartialOps, *, slide: int, slice_width: int) -> None:
        self.ops = ops
        self.slide, self.slice_width = slide, slice_width
        self.pending: list[SliceTable] = []
        self.chunks: list[Chunk] = []
        self.chunk_los = EMPTY
        self.chunk_his = EMPTY

    def first_ends(self, s: np.ndarray) -> np.ndarray:
        """``e_in(s)``: the first window end holding slice ``s``."""
        return -(-(s + self.slice_width) // self.slide) * self.slide

    def tags(self, t: SliceTable) -> np.ndarray:
        """Each row's first window end (its tag, else ``e_in(s)``)."""
        return t.tag if t.tag is not None else self.first_ends(t.s)

    def empty(self, with_tags: bool = False) -> SliceTable:
        return SliceTable(EMPTY, EMPTY, EMPTY if with_tags else None, self.ops.identity(0))

    def rows(self) -> int:
        return sum(len(t) for t in self.pending) + sum(len(c.table) for c in self.chunks)

    def max_slice(self) -> int | None:
        """The greatest slice start held (pending or entered), None when empty."""
        tops = [int(t.s.max()) for t in self.pending if len(t)]
        tops += [int(c.table.s.max()) for c in self.chunks if len(c.table)]
        return max(tops) if tops else None

    # ------------------------------------------------------------------------- tables ---

    def normalize(
        self, keys: np.ndarray, s: np.ndarray, tag: np.ndarray | None, parts: Parts
    ) -> SliceTable:
        """Sort rows by ``(key, s, tag)`` and merge duplicates (earlier rows first)."""
        order = lex_order(keys, s, self.slice_width, tag, self.slide, stable=True)
        keys, s = keys[order], s[order]
        tag = None if tag is None else tag[order]
        parts = take_parts(parts, order)
        flags = run_starts(keys, s) if tag is None else run_starts(keys, s, tag)
        if not flags.all():
            gid = np.cumsum(flags) - 1
            parts = self.ops.reduce(parts, gid, int(gid[-1]) + 1)
            keys, s = keys[flags], s[flags]
            tag = None if tag is None else tag[flags]
        if tag is not None and bool((tag == self.first_ends(s)).all()):
            tag = None
        return SliceTable(keys, s, tag, parts)

    def concat(self, tables: list[SliceTable], with_tags: bool) -> SliceTable:
        """Rows of several tables, unsorted (tags filled when ``with_tags``)."""
        tables = [t for t in tables if len(t)] or tables[:1]
        if len(tables) == 1 and (not with_tags or tables[0].tag is not None):
            return tables[0]
        return SliceTable(
            np.concatenate([t.keys for t in tables]),
            np.concatenate([t.s for t in tables]),
            np.concatenate([self.tags(t) for t in tables]) if with_tags else None,
            concat_parts([t.parts for t in tables]),
        )

    def merged(self, tables: list[SliceTable], with_tags: bool) -> SliceTable:
        """:meth:`concat` then :meth:`normalize` (tags kept iff ``with_tags``)."""
        both = self.concat(tables, with_tags=with_tags)
        return self.normalize(both.keys, both.s, both.tag if with_tags else None, both.parts)

    # ------------------------------------------------------------------------ pending ---

    def add_pending(self, t: SliceTable) -> None:
        """Append; merge like a binary counter so merges cost O(n log n) in total."""
        self.pending.append(t)
        p = self.pending
        while len(p) >= 2 and len(p[-2]) <= len(p[-1]):
            b, a = p.pop(), p.pop()
            p.append(self.merged([a, b], with_tags=False))

    def take_entering(self, end: int) -> SliceTable:
        """Remove and return the pending rows with ``s < end``, sorted and merged."""
        out: list[SliceTable] = []
        keep: list[SliceTable] = []
        for t in self.pending:
            m = t.s < end
            if m.all():
                out.append(t)
            elif not m.any():
                keep.append(t)
            else:
                out.append(t.take(np.flatnonzero(m)))
                keep.append(t.take(np.flatnonzero(~m)))
        self.pending = keep
        if not out:
            return self.empty()
        if len(out) == 1:
            return out[0]
        return self.merged(out, with_tags=False)

    # ------------------------------------------------------------------------ entered ---

    def reindex_chunks(self) -> None:
        self.chunk_los = np.array([c.lo for c in self.chunks], dtype=np.int64)
        self.chunk_his = np.array([c.hi for c in self.chunks], dtype=np.int64)

    def seal(self, entering: SliceTable, old_end: int | None, new_end: int) -> None:
        """Append the entering rows as the chunk ``[old_end, new_end)`` (small chunks merged)."""
        chunks = self.chunks
        if not len(entering) and chunks:
            chunks[-1] = replace(chunks[-1], hi=new_end)
        else:
            chunks.append(Chunk(old_end if old_end is not None else I64_MIN, new_end, entering))
            while (
                len(chunks) >= 2
                and len(chunks[-2].table) <= len(chunks[-1].table)
                and len(chunks[-2].table) + len(chunks[-1].table) <= CHUNK_ROWS
            ):
                b, a = chunks.pop(), chunks.pop()
                both = self.concat([a.table, b.table], with_tags=a.table.tag is not None)
                table = self.normalize(both.keys, both.s, both.tag, both.parts)
                chunks.append(Chunk(a.lo, b.hi, table))
        self.reindex_chunks()

    def _overlapping(self, lo: int | None, hi: int) -> range:
        first = 0 if lo is None else int(np.searchsorted(self.chunk_his, lo, "right"))
        stop = int(np.searchsorted(self.chunk_los, hi, "left"))
        return range(first, max(first, stop))

    def entered_range(self, lo: int | None, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, s)`` of entered rows with ``lo <= s < hi`` (possibly repeated with tags)."""
        ks: list[np.ndarray] = []
        ss: list[np.ndarray] = []
        for i in self._overlapping(lo, hi):
            c = self.chunks[i]
            t = c.table
            if (lo is None or c.lo >= lo) and c.hi <= hi:
                ks.append(t.keys)
                ss.append(t.s)
            else:
                m = t.s < hi if lo is None else (t.s >= lo) & (t.s < hi)
                ks.append(t.keys[m])
                ss.append(t.s[m])
        if not ks:
            return EMPTY, EMPTY
        return np.concatenate(ks), np.concatenate(ss)

    def gather(self, keys_u: np.ndarray | None, lo: int, hi: int, *, with_tags: bool) -> SliceTable:
        """Entered rows of ``keys_u`` (sorted unique; None = all) with ``lo <= s < hi``.

        Sorted and unique by ``(key, s, tag)`` with tags filled (``with_tags``), else merged per
        ``(key, s)`` without tags.
        """
        pieces: list[SliceTable] = []
        for i in self._overlapping(lo, hi):
            chunk = self.chunks[i]
            t = chunk.table
            if keys_u is None and chunk.lo >= lo and chunk.hi <= hi:
                if len(t):  # the whole chunk, shared (tables are never mutated)
                    pieces.append(t)
                continue
            if keys_u is not None:
                idx = ranges(
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
            return self.empty(with_tags)
        if len(pieces) == 1 and (with_tags or pieces[0].tag is None):
            t = pieces[0]
            return t if not with_tags or t.tag is not None else replace(t, tag=self.tags(t))
        out = self.merged(pieces, with_tags=with_tags)
        if with_tags and out.tag is None:
            out = replace(out, tag=self.tags(out))
        return out

    def merge_late(self, late: SliceTable, accepting_from: int | None) -> None:
        """Merge late rows (``s < completed_end``) into the chunks whose ranges hold them; tags
        below ``accepting_from - slide`` (no evaluated window can see them) are dropped."""
        chunk_of = np.searchsorted(self.chunk_los, late.s, "right") - 1
        for c in np.unique(chunk_of).tolist():
            chunk = self.chunks[c]
            part = late.take(np.flatnonzero(chunk_of == c))
            with_tags = chunk.table.tag is not None or part.tag is not None
            both = self.concat([chunk.table, part], with_tags=with_tags)
            tag = both.tag
            if tag is not None and accepting_from is not None:
                tag = np.where(tag <= accepting_from - self.slide, self.first_ends(both.s), tag)
            table = self.normalize(both.keys, both.s, tag, both.parts)
            self.chunks[c] = replace(chunk, table=table)

    def prune(self, horizon: int) -> None:
        """Drop entered slices ``< horizon``."""
        chunks = self.chunks
        first = int(np.searchsorted(self.chunk_his, horizon, "right"))
        if first:
            del chunks[:first]
        for i, c in enumerate(chunks):
            if c.lo >= horizon:
                break
            if len(c.table) and int(c.table.s.min()) < horizon:
                chunks[i] = replace(c, table=c.table.take(np.flatnonzero(c.table.s >= horizon)))
        self.reindex_chunks()
