"""The operator API: subclass :class:`Operator` to process batches, watermarks and timers.

Lifecycle (StreamOperator model): ``open(ctx)`` once, then ``on_batch`` / ``on_watermark`` /
``on_timer`` in stream order, ``on_end(ctx)`` when every input ended, ``close(ctx)`` last.
``snapshot()`` returns state at a checkpoint barrier; it must be plain data — None, bool, int,
float, str, bytes, lists, tuples, dicts, sets, numpy arrays of numbers, Arrow tables/arrays —
as checkpoints hold no pickle (:mod:`lambdasource.checkpoints.codec`; anything else fails the
checkpoint naming the operator and the value). ``ctx.state`` values follow the same rule.
``restore(state)`` is called before ``open`` on recovery, with the operator's own snapshot, and
``ctx.state``/timers are restored with it. Everything runs on the event loop thread and must not
block; operators are chained synchronously, so they never see two messages at once.

Event-time timers fire when the operator's input watermark reaches their time (before
``on_watermark`` is called); processing-time timers fire when the wall clock does. On keyed streams
timers and ``ctx.state`` are scoped by key.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .checkpoints.codec import state_type
from .errors import StateError
from .keys import KeyIndex

TimeDomain = Literal["event", "processing"]


@state_type("timer")
@dataclass(frozen=True, slots=True, order=True)
class Timer:
    """A timer: fires at ``time`` (µs, UTC) in ``domain`` for ``key`` (``None`` on unkeyed streams)."""

    time: int
    domain: TimeDomain = field(compare=False)
    key: Hashable = field(default=None, compare=False)


class TimerService:
    """Event- and processing-time timers of one operator; one timer per (domain, time, key)."""

    def __init__(self) -> None:
        self._heaps: dict[TimeDomain, list[tuple[int, int, Timer]]] = {
            "event": [],
            "processing": [],
        }
        self._live: set[tuple[TimeDomain, int, Hashable]] = set()
        self._counter = 0

    def register(self, domain: TimeDomain, at: int, key: Hashable = None) -> None:
        ident = (domain, int(at), key)
        if ident in self._live:
            return
        self._live.add(ident)
        self._counter += 1
        heapq.heappush(self._heaps[domain], (int(at), self._counter, Timer(int(at), domain, key)))

    def delete(self, domain: TimeDomain, at: int, key: Hashable = None) -> None:
        self._live.discard((domain, int(at), key))

    def pop_due(self, domain: TimeDomain, now: int) -> Iterator[Timer]:
        """Remove and yield timers with ``time <= now`` in time order (registration order on ties)."""
        heap = self._heaps[domain]
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            ident = (domain, timer.time, timer.key)
            if ident in self._live:
                self._live.discard(ident)
                yield timer

    def next_time(self, domain: TimeDomain) -> int | None:
        heap = self._heaps[domain]
        while heap and (domain, heap[0][2].time, heap[0][2].key) not in self._live:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._live)

    def snapshot(self) -> list[tuple[str, int, Hashable]]:
        return sorted(self._live, key=lambda t: (t[0], t[1], repr(t[2])))

    def restore(self, state: list[tuple[TimeDomain, int, Hashable]]) -> None:
        self.__init__()  # type: ignore[misc]
        for domain, at, key in state:
            self.register(domain, at, key)


class Context:
    """What an operator sees of the runtime: output, watermark, timers, keyed state, dead letters."""

    def __init__(self, node: Any, key_columns: tuple[str, ...]) -> None:
        self._node = node
        self.key_columns = key_columns
        self.timers = TimerService()
        self.state: dict[Hashable, Any] = {}
        """Keyed state: any Python value per key (key = scalar, or tuple for several key columns)."""
        self.current_key: Hashable = None
        """The key of the timer being fired (in ``on_timer``)."""

    @property
    def name(self) -> str:
        """The operator's name in the graph (used in metrics and error messages)."""
        return str(self._node.name)

    @property
    def watermark(self) -> int | None:
        """The operator's current input watermark (µs), None before the first."""
        return self._node.input_watermark

    def emit(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Send a batch (or table) to the main output."""
        self._node.emit_data(batch, "main")

    def emit_watermark(self, watermark: int) -> None:
        """Forward a watermark on every output; ignored unless it advances the output watermark."""
        self._node.emit_watermark(watermark)

    def side_output(self, name: str, batch: pa.RecordBatch | pa.Table) -> None:
        """Send a batch to the named side output (``"late"``, ``"dead_letters"``)."""
        self._node.emit_data(batch, name)

    def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None = None) -> None:
        """Send failed records, with the reason and where they came from, to the dead letters."""
        self._node.dead_letter(batch, reason, position)

    @staticmethod
    def processing_time() -> int:
        """Wall-clock time now, µs since the epoch."""
        return time.time_ns() // 1000

    # keyed streams ------------------------------------------------------------------------------

    def _require_keys(self, what: str) -> None:
        if not self.key_columns:
            raise StateError(
                f"operator={self.name}: {what} needs a keyed stream; call .key_by(...) first"
            )

    def keys(self, batch: pa.RecordBatch) -> list[Hashable]:
        """The key of every row (a scalar, or a tuple for several key columns)."""
        self._require_keys("keys()")
        cols = [batch.column(c).to_pylist() for c in self.key_columns]
        return list(cols[0]) if len(cols) == 1 else list(zip(*cols, strict=True))

    def split_by_key(self, batch: pa.RecordBatch) -> Iterator[tuple[Hashable, pa.RecordBatch]]:
        """The batch's rows grouped by key (arrival order kept within a key)."""
        self._require_keys("split_by_key()")
        index = KeyIndex(self.key_columns)
        ids = index.ids(batch)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
        starts = np.concatenate([[0], bounds]) if len(ids) else np.zeros(0, np.int64)
        ends = np.append(bounds, len(ids))
        table = index.key_table()
        rows = batch.take(pa.array(order))
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            row = table.slice(int(sorted_ids[start]), 1).to_pylist()[0]
            key = tuple(row[c] for c in self.key_columns)
            yield (key[0] if len(key) == 1 else key), rows.slice(start, end - start)

    def register_event_timer(self, at: int, key: Hashable = None) -> None:
        """Call ``on_timer`` when the watermark reaches ``at`` (per key on keyed streams)."""
        self._check_timer_key(key)
        self.timers.register("event", at, key)

    def register_processing_timer(self, at: int, key: Hashable = None) -> None:
        """Call ``on_timer`` when the wall clock reaches ``at`` (µs)."""
        self._check_timer_key(key)
        self.timers.register("processing", at, key)
        self._node.wake()

    def delete_timer(self, domain: TimeDomain, at: int, key: Hashable = None) -> None:
        self.timers.delete(domain, at, key)

    def _check_timer_key(self, key: Hashable) -> None:
        if key is not None:
            self._require_keys("a keyed timer")


class Operator:
    """Base class of custom operators (``stream.process(op)``); subclasses call ``super().__init__()``.

    Override any of the hooks; the defaults pass batches and watermarks through unchanged.
    ``output_schema`` may be set to declare the schema of emitted batches (checked at build time
    by downstream operators; ``None`` = same as the input).
    """

    output_schema: pa.Schema | None = None
    stateful: bool = True
    """False only for operators that keep nothing between batches (no snapshot, no keyed state,
    no timers), like the built-in filter, map and union: they are left out of checkpoints, so
    adding or removing one never makes a checkpoint incompatible. Barriers still align at them."""
    snapshot_immutable: bool = False
    """True when ``snapshot()`` returns structures that are never mutated afterwards (built-in
    window operators): the runtime then records them as they are. Otherwise the snapshot is
    encoded at the barrier, so later changes to the operator cannot leak into the checkpoint."""

    def __init__(self) -> None:
        self.name: str | None = None

    def open(self, ctx: Context) -> None:
        """Called once before the first message."""

    def on_batch(self, batch: pa.RecordBatch, ctx: Context) -> None:
        ctx.emit(batch)

    def on_watermark(self, watermark: int, ctx: Context) -> None:
        ctx.emit_watermark(watermark)

    def on_timer(self, timer: Timer, ctx: Context) -> None:
        """A registered timer fired (``ctx.current_key`` is its key)."""

    def on_end(self, ctx: Context) -> None:
        """Every input ended; emit any final output here."""

    def close(self, ctx: Context) -> None:
        """Called once at the end of the run (also after errors)."""

    def snapshot(self) -> Any:
        """Immutable state for a checkpoint (default: nothing)."""
        return None

    def restore(self, state: Any) -> None:
        """Restore state returned by ``snapshot`` (called before ``open`` on recovery)."""

    def describe(self) -> str:
        """What must not change between a checkpoint and the graph restoring it (the state's
        shape): the class by default; operators with configuration that shapes state add it."""
        return type(self).__qualname__

    def state_size(self) -> tuple[int, int]:
        """(rows, bytes) of buffered state, for metrics."""
        return (0, 0)
