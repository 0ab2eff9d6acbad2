"""One Kafka partition as a split: its read position, end, watermark generator and idleness.

Watermark (bounded out-of-orderness): ``max(event time seen) − out_of_orderness``, capped below
the earliest *held* row (rows alignment keeps back, see below) so a held row is never late, raised
to ``floor`` when one is set (the lambda source's ``cutoff − 1µs``: the stream emits nothing
before the cutoff), ``None`` before the first record. It never regresses.

Held rows (alignment, DESIGN §3): rows of a fetched batch whose time is beyond the alignment
bound stay in the split (with their offsets) until the bound covers them; a split holding rows
is paused, so at most one fetch per partition is held. They belong to the split's checkpoint.

Idleness (DESIGN §3): a split is idle only when it is caught up — its position is at or beyond the
highwater of its last fetch, *and* a fetch response confirmed that highwater within
``confirm_window`` seconds — *and* no record arrived for ``idle_timeout`` of observed time. A
paused split (held by alignment or finished) is never idle: pausing resets the quiet timer. A
split whose fetches get no answers (broker unreachable) is not known to be caught up, so it is
not idle: otherwise, after an outage, a partition answering first could carry the watermark past
another's older records. Nor does the outage count as quiet: the quiet timer starts again with
the first answer after a lapse (else, the moment the broker is back, a partition whose records
are still on their way would be idle at once, and the others' new records would make them late).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass
class PartitionSplit:
    """Mutable state of one partition; owned by the reader task (no concurrent mutation)."""

    topic: str
    partition: int
    out_of_orderness: int
    idle_timeout: float  # seconds
    floor: int | None = None
    start: int | None = None  # first offset read
    position: int | None = None  # next offset to emit
    highwater: int | None = None  # from the last fetch response
    stop_offset: int | None = None  # bounded: stop before this offset
    max_seen: int | None = None  # µs
    paused: bool = False
    idle: bool = False
    finished: bool = False
    records: int = 0
    dead_letters: int = 0
    dropped: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    confirmed_at: float | None = None  # monotonic time of the last fetch response
    confirm_window: float = 2.0  # seconds a fetch response vouches for "caught up"
    held: pa.RecordBatch | None = None  # rows kept back by alignment (already transformed)
    held_offsets: np.ndarray | None = None  # their Kafka offsets, row for row
    held_times: np.ndarray | None = None  # their µs, ascending (held rows are sorted by time)
    _poll_stamp: int | None = None
    _emitted_watermark: int | None = None

    @property
    def key(self) -> str:
        return f"partition={self.partition}"

    @property
    def watermark(self) -> int | None:
        """The split's current watermark (never regresses)."""
        value = None if self.max_seen is None else self.max_seen - self.out_of_orderness
        if value is not None and self.held_min is not None:
            value = min(value, self.held_min - 1)
        if self.floor is not None:
            value = self.floor if value is None else max(value, self.floor)
        if value is not None and self._emitted_watermark is not None:
            value = max(value, self._emitted_watermark)
        self._emitted_watermark = value
        return value

    @property
    def caught_up(self) -> bool:
        return (
            self.position is not None
            and self.highwater is not None
            and self.position >= self.highwater
        )

    @property
    def lag(self) -> int | None:
        if self.position is None or self.highwater is None:
            return None
        return max(0, self.highwater - self.position)

    @property
    def first_unemitted(self) -> int | None:
        """The offset a restart (or a consumer-group commit) must name: the first held row's,
        else the next offset to read."""
        if self.held_offsets is not None and len(self.held_offsets):
            return int(self.held_offsets.min())
        return self.position

    def hold(self, batch: pa.RecordBatch, offsets: np.ndarray, times: np.ndarray) -> None:
        """Keep ``batch`` back (``times``: its µs, row for row). Held rows are kept sorted by
        time, so a release is a prefix."""
        if not batch.num_rows:
            return
        if self.held is not None and self.held_offsets is not None and self.held_times is not None:
            batch = pa.concat_batches([self.held, batch])
            offsets = np.concatenate([self.held_offsets, offsets])
            times = np.concatenate([self.held_times, times])
        order = np.argsort(times, kind="stable")
        self.held = batch.take(pa.array(order))
        self.held_offsets, self.held_times = offsets[order], times[order]

    @property
    def held_min(self) -> int | None:
        """µs of the earliest held row (None: nothing held)."""
        return None if self.held_times is None else int(self.held_times[0])

    def due(self, bound: float) -> int:
        """How many held rows (a prefix) have time <= ``bound``. The caller emits them
        (:meth:`taken`), then calls :meth:`released`: the watermark, capped by the held rows,
        must not rise before they are out."""
        if self.held_times is None:
            return 0
        return int(np.searchsorted(self.held_times, bound, side="right"))

    def taken(self, count: int) -> tuple[pa.RecordBatch, np.ndarray]:
        """The first ``count`` held rows and their offsets."""
        assert self.held is not None and self.held_offsets is not None
        return self.held.slice(0, count), self.held_offsets[:count]

    def released(self, count: int) -> None:
        """Forget the first ``count`` held rows (they were emitted)."""
        assert self.held is not None and self.held_offsets is not None
        assert self.held_times is not None
        if count < self.held.num_rows:
            self.held = self.held.slice(count)
            self.held_offsets = self.held_offsets[count:]
            self.held_times = self.held_times[count:]
        else:
            self.held = self.held_offsets = self.held_times = None

    def saw(self, max_time: int | None, now: float) -> None:
        """Records arrived (``max_time``: their max event time, None if all null)."""
        if max_time is not None and (self.max_seen is None or max_time > self.max_seen):
            self.max_seen = max_time
        self.idle = False
        self.last_activity = now

    def responded(self, poll_stamp: int | None, now: float) -> None:
        """Record the consumer's last-poll stamp for this partition (it changes on each fetch
        response, with or without records)."""
        if poll_stamp is not None and poll_stamp != self._poll_stamp:
            self._poll_stamp = poll_stamp
            if not self.confirmed_recently(now):
                # quiet counts only while observed: a partition unanswered for a while (an
                # outage, a slow first fetch) may have had records written meanwhile, so its
                # quiet time starts again with the first answer
                self.last_activity = max(self.last_activity, now)
            self.confirmed_at = now

    def confirmed_recently(self, now: float) -> bool:
        """A fetch response answered within ``confirm_window``."""
        return self.confirmed_at is not None and now - self.confirmed_at <= self.confirm_window

    def update_idle(self, now: float) -> bool:
        """Re-evaluate idleness; returns whether it changed."""
        idle = (
            not self.paused
            and not self.finished
            and self.caught_up
            and self.confirmed_recently(now)
            and now - self.last_activity >= self.idle_timeout
        )
        changed = idle != self.idle
        self.idle = idle
        return changed

    def set_paused(self, paused: bool, now: float) -> None:
        self.paused = paused
        self.idle = False if paused else self.idle
        self.last_activity = now

    def metrics(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "position": self.position,
            "highwater": self.highwater,
            "lag": self.lag,
            "watermark": self.watermark,
            "max_event_time": self.max_seen,
            "idle": self.idle,
            "paused": self.paused,
            "finished": self.finished,
            "records": self.records,
            "dead_letters": self.dead_letters,
            "dropped_before_cutoff": self.dropped,
            "held_rows": 0 if self.held is None else self.held.num_rows,
        }


def held_times(batch: pa.RecordBatch, time_column: str) -> np.ndarray:
    """µs of ``batch``'s (non-null) time column as int64."""
    column = batch.column(time_column).cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


def combined_watermark(splits: Iterable[PartitionSplit]) -> tuple[int | None, bool]:
    """A stream's watermark over its splits (DESIGN §3), and whether it is idle: the minimum over
    the live splits that are not idle (None while one of them has none yet); when every live
    split is idle, their maximum, marked idle."""
    live = [s for s in splits if not s.finished]
    active = [s for s in live if not s.idle]
    if active:
        marks = [s.watermark for s in active]
        if any(m is None for m in marks):
            return None, False
        return min(m for m in marks if m is not None), False
    known = [m for s in live if (m := s.watermark) is not None]
    return (max(known) if known else None), bool(live)
