"""The channels between the nodes of a running graph: bounded mailboxes, edges, counters and
the watermark gate.

Watermarks (DESIGN §3): each node forwards the minimum of its inputs' watermarks, never
regressing; inputs that are idle or ended do not hold it back; when every input is idle the node is
idle and forwards the maximum. Barriers are aligned: a multi-input node (always a segment head,
reading a :class:`Mailbox` with one bounded lane per input) stops reading the inputs that
delivered barrier n until every input has (or ended), then snapshots and forwards it. Aligning
therefore buffers at most ``queue_size`` messages per input: a paused input's producer waits on
its full lane (backpressure), never an unbounded list.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from .messages import Message


def _rows(msg: Message) -> int:
    return msg.num_rows if isinstance(msg, pa.RecordBatch) else 0


def as_batches(data: pa.RecordBatch | pa.Table) -> list[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        return [b for b in data.combine_chunks().to_batches() if b.num_rows]
    return [data]


class Inbox(Protocol):
    """What a producer sees of an async boundary: ``put`` waits while the boundary is full."""

    async def put(self, item: tuple[int, Message]) -> None: ...


class Mailbox:
    """The bounded inbox of a segment head: one lane per input, read by one consumer task.

    Invariants: a lane holds at most ``capacity`` messages, so :meth:`put` on a full lane waits
    (backpressure reaches the producer); :meth:`get` returns the oldest message (arrival order
    across lanes) of the lanes that are not paused, so with no lane paused the mailbox is one
    FIFO queue; a paused lane keeps its messages in order and is read again after
    :meth:`resume_all`. Barrier alignment pauses the inputs that delivered the barrier, so the
    memory an alignment takes is bounded by ``capacity`` messages per input.
    """

    def __init__(self, lanes: int, capacity: int) -> None:
        if lanes < 1 or capacity < 1:
            raise ValueError(f"Mailbox needs lanes >= 1 and capacity >= 1, got {lanes}, {capacity}")
        self.capacity = capacity
        self._lanes: list[collections.deque[tuple[int, Message]]] = [
            collections.deque() for _ in range(lanes)
        ]
        self._paused = [False] * lanes
        self._seq = 0  # arrival counter: the FIFO order across lanes
        self._readable = asyncio.Event()
        self._space = [asyncio.Event() for _ in range(lanes)]

    async def put(self, item: tuple[int, Message]) -> None:
        """Append ``item`` = (input index, message) to its lane; waits while the lane is full."""
        lane, msg = item
        queue = self._lanes[lane]
        while len(queue) >= self.capacity:
            space = self._space[lane]
            space.clear()
            await space.wait()
        queue.append((self._seq, msg))
        self._seq += 1
        self._readable.set()

    def get_nowait(self) -> tuple[int, Message] | None:
        """The oldest message of an unpaused lane as (input index, message), or None."""
        best, best_seq = -1, 0
        for lane, queue in enumerate(self._lanes):
            if queue and not self._paused[lane] and (best < 0 or queue[0][0] < best_seq):
                best, best_seq = lane, queue[0][0]
        if best < 0:
            return None
        _, msg = self._lanes[best].popleft()
        self._space[best].set()
        return best, msg

    async def get(self) -> tuple[int, Message]:
        """Wait for the oldest message of an unpaused lane (cancellation-safe: nothing is lost)."""
        while (item := self.get_nowait()) is None:
            self._readable.clear()
            await self._readable.wait()
        return item

    def pause(self, lane: int) -> None:
        """Stop reading ``lane`` (its producer waits once the lane is full)."""
        self._paused[lane] = True

    def resume_all(self) -> None:
        self._paused = [False] * len(self._lanes)
        self._readable.set()

    def messages(self) -> list[Message]:
        """Every queued message (for metrics)."""
        return [msg for queue in self._lanes for _, msg in queue]


@dataclass(slots=True)
class Edge:
    """A connection to input ``index`` of ``target``; ``queue`` is set on async boundaries."""

    target: Any
    index: int
    queue: Inbox | None = None


@dataclass(slots=True)
class Counters:
    records_in: int = 0
    records_out: int = 0
    batches_out: int = 0
    late: int = 0
    dead_letters: int = 0


class _Gate:
    """Per-input watermark, idleness, end and barrier state of a node with ``n`` inputs."""

    def __init__(self, n: int) -> None:
        self.watermarks: list[int | None] = [None] * n
        self.idle = [False] * n
        self.ended = [False] * n
        self.combined: int | None = None
        self.all_idle = False
        self.barrier: int | None = None
        self.barrier_seen = [False] * n
        self.paused = False
        """Inputs that delivered the barrier are paused at the mailbox until it is released."""

    def recompute(self) -> tuple[bool, bool]:
        """Update ``combined``/``all_idle``; return (watermark advanced, idleness changed).

        An ended input is excluded from the minimum (it can send nothing more); once every input
        ended, the watermark advances to the largest final watermark (the bounded run's end time).
        """
        live = [i for i in range(len(self.ended)) if not self.ended[i]]
        active = [i for i in live if not self.idle[i]]
        candidate: int | None
        if active:
            values = [self.watermarks[i] for i in active]
            candidate = (
                None if any(v is None for v in values) else min(v for v in values if v is not None)
            )
            all_idle = False
        elif live:  # every live input idle: forward the maximum of them
            known = [w for i in live if (w := self.watermarks[i]) is not None]
            candidate = max(known) if known else None
            all_idle = True
        else:  # every input ended: the run's end time is the furthest any input promised
            known = [w for w in self.watermarks if w is not None]
            candidate, all_idle = (max(known) if known else None), False
        advanced = candidate is not None and (self.combined is None or candidate > self.combined)
        if advanced:
            self.combined = candidate
        changed = all_idle != self.all_idle
        self.all_idle = all_idle
        return advanced, changed
