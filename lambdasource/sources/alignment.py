"""Watermark alignment (DESIGN §3): keep every split within ``max_drift`` of the group's minimum.

One :class:`AlignmentGroup` per alignment group. Every split (the lake reader, each Kafka
partition) reports its watermark; the *global* watermark is the minimum over active splits (not
idle, not finished, watermark known). A split whose watermark is ahead of ``global + max_drift``
must stop being read until the global catches up: Kafka partitions are paused
(``consumer.pause``), the lake's emits block, which stops its prefetch.

The bound holds per record, not per fetch: a record leaves a split only when its time is at most
:meth:`AlignmentGroup.release_bound` — ``global + max_drift + the split's out_of_orderness`` —
so a split reads one fetch and keeps back (holds) the rows beyond it; a split with no watermark
yet is bounded the same way. While a *gating* split (the lake) has not reported its first
watermark the bound is −∞: every other split holds what it fetched.

Invariants: the split holding the minimum is never held back, so the group always progresses (its
earliest held row is within the bound: its watermark is capped just below that row); there is no
rate limit — a held split resumes the moment the global catches up, so a backlog replays at full
speed (unlike an update-interval-bounded scheme).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..timeutil import Duration, format_duration, parse_duration


@dataclass(frozen=True)
class Alignment:
    """Configuration: ``ls.Alignment(max_drift="30m")``. ``build()`` makes the runtime group."""

    max_drift: Duration = "30m"

    def build(self) -> AlignmentGroup:
        return AlignmentGroup(parse_duration(self.max_drift, name="Alignment.max_drift"))


@dataclass
class _Split:
    watermark: int | None = None
    idle: bool = False
    finished: bool = False
    held_since: float | None = None
    held_total: float = 0.0
    holds: int = 0
    gate: bool = False


@dataclass
class AlignmentGroup:
    """Runtime coordinator of one alignment group (see module docstring)."""

    max_drift: int
    enforce: bool = True  # False: only track watermarks and skew (an unaligned job's metrics)
    _splits: dict[str, _Split] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    max_skew: int = 0
    output: int | None = None  # the watermark the group's owner last emitted downstream

    def __post_init__(self) -> None:
        if self.max_drift < 0:
            raise ConfigError(f"Alignment: max_drift must be >= 0, got {self.max_drift}")

    def register(self, split: str, *, gate: bool = False) -> None:
        """Add a split; a ``gate`` split holds the others until its first watermark."""
        self._splits.setdefault(split, _Split()).gate = gate

    def report(
        self, split: str, watermark: int | None, *, idle: bool = False, finished: bool = False
    ) -> None:
        """Record a split's watermark (never regresses) and activity; wakes held splits."""
        state = self._splits.setdefault(split, _Split())
        if watermark is not None and (state.watermark is None or watermark > state.watermark):
            state.watermark = watermark
        state.idle = idle
        state.finished = finished
        active = [s.watermark for s in self._splits.values() if self._active(s)]
        known = [w for w in active if w is not None]
        if len(known) > 1:
            self.max_skew = max(self.max_skew, max(known) - min(known))
        self._changed.set()
        self._changed = asyncio.Event()

    @staticmethod
    def _active(state: _Split) -> bool:
        return not state.idle and not state.finished

    @property
    def global_watermark(self) -> int | None:
        """Minimum watermark over active splits that reported one (None: none has)."""
        known = [
            s.watermark
            for s in self._splits.values()
            if self._active(s) and s.watermark is not None
        ]
        return min(known) if known else None

    @property
    def reference(self) -> int | None:
        """The global watermark, or None while a gating split has not reported one."""
        for state in self._splits.values():
            if state.gate and state.watermark is None and self._active(state):
                return None
        return self.global_watermark

    def allowed(self, split: str) -> bool:
        """Whether ``split`` may be read now (not ahead of global + max_drift)."""
        if not self.enforce:
            return True
        state = self._splits.get(split)
        if state is None or state.watermark is None or state.finished:
            return True
        for name, other in self._splits.items():
            if name != split and other.gate and other.watermark is None and self._active(other):
                return False
        top = self.global_watermark
        return top is None or state.watermark <= top + self.max_drift

    def note_output(self, watermark: int) -> None:
        """The owner emitted ``watermark`` downstream (the bound never runs ahead of it)."""
        if self.output is None or watermark > self.output:
            self.output = watermark

    def release_bound(self, out_of_orderness: int) -> float:
        """The latest event time a record may have to leave a split now (DESIGN §3):
        ``global + max_drift + out_of_orderness`` (at least ``global + 1µs``, so the minimum
        split always progresses), where ``global`` is never ahead of the watermark last emitted
        downstream — the bound holds at the next operator, not just inside the source; −∞ while
        a gating split or no split has a watermark, or none was emitted; +∞ when not
        enforcing."""
        if not self.enforce:
            return math.inf
        top = self.reference
        if top is None or self.output is None:
            return -math.inf
        return min(top, self.output) + max(self.max_drift + out_of_orderness, 1)

    def is_minimum(self, split: str) -> bool:
        """Whether ``split`` holds the global watermark back (or, as a gate, has none yet)."""
        state = self._splits.get(split)
        if state is None or not self._active(state):
            return False
        if state.watermark is None:
            return state.gate
        top = self.global_watermark
        return top is None or state.watermark <= top

    def set_held(self, split: str, held: bool) -> None:
        """Account hold time: the caller tells when it stops/starts reading ``split``."""
        state = self._splits.setdefault(split, _Split())
        now = time.monotonic()
        if held and state.held_since is None:
            state.held_since = now
            state.holds += 1
        elif not held and state.held_since is not None:
            state.held_total += now - state.held_since
            state.held_since = None

    async def wait_allowed(self, split: str) -> None:
        """Block until ``split`` may be read (accounting the hold time)."""
        if self.allowed(split):
            return
        self.set_held(split, True)
        try:
            while not self.allowed(split):
                await self._changed.wait()
        finally:
            self.set_held(split, False)

    async def wait_change(self, seconds: float) -> None:
        """Wait for the next report (or ``seconds``)."""
        try:
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        except TimeoutError:
            pass

    def metrics(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "max_drift": format_duration(self.max_drift),
            "global_watermark": self.global_watermark,
            "max_skew_us": self.max_skew,
            "splits": {
                name: {
                    "watermark": s.watermark,
                    "idle": s.idle,
                    "finished": s.finished,
                    "held": s.held_since is not None,
                    "holds": s.holds,
                    "held_s": s.held_total + (now - s.held_since if s.held_since else 0.0),
                }
                for name, s in self._splits.items()
            },
        }
