"""Executes a built graph on asyncio.

Layout of a run: every source runs in its own task and puts messages into bounded queues; each
*segment* (a head operator plus the single-input operators chained synchronously behind it) runs
in one task reading the head's mailbox; every sink runs in its own task behind a bounded queue.
Queues exist only at these async boundaries, which is where backpressure lives: a full queue
suspends its producer. One ``asyncio.TaskGroup`` supervises all tasks; the first error cancels the
rest and is raised from ``run()`` with its cause; errors after it (other tasks, ``close()`` during
cleanup) are logged on the ``lambdasource`` logger, never raised over it; no task outlives the run.

Watermarks (DESIGN §3): each node forwards the minimum of its inputs' watermarks, never
regressing; inputs that are idle or ended do not hold it back; when every input is idle the node is
idle and forwards the maximum. Barriers are aligned: a multi-input node (always a segment head,
reading a :class:`Mailbox` with one bounded lane per input) stops reading the inputs that
delivered barrier n until every input has (or ended), then snapshots and forwards it. Aligning
therefore buffers at most ``queue_size`` messages per input: a paused input's producer waits on
its full lane (backpressure), never an unbounded list.

Checkpoints (with a :class:`~lambdasource.checkpoints.coordinator.CheckpointCoordinator`): a
checkpoint is complete in memory when every sink flushed at its barrier (or ended) and every
source and operator recorded its state (or finished: its final state stands in). States are
captured synchronously at the barrier and must not change afterwards: operators that declare
``snapshot_immutable`` hand out shared never-mutated structures, everything else (user operator
snapshots, keyed state, source positions) is pickled at capture into a ``Frozen``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from .checkpoints.format import Frozen, thaw
from .errors import (
    IncompatibleStateError,
    LambdaSourceError,
    OperatorError,
    SchemaError,
    SinkError,
    SourceError,
    close_after,
    log_suppressed,
)
from .messages import Barrier, End, Message, Watermark
from .operator import Context, Operator
from .sinks.base import Sink
from .sources.base import Source
from .timeutil import TIME_TYPE, normalize_time_array

if TYPE_CHECKING:
    from .checkpoints.coordinator import CheckpointCoordinator

log = logging.getLogger("lambdasource")
_KEEP_SNAPSHOTS = 3  # completed checkpoints whose in-memory snapshots stay readable

DEAD_LETTER_FIELDS = [pa.field("_error", pa.string()), pa.field("_position", pa.string())]


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


class Node:
    """Common output side of operator and source nodes: ports, watermark forwarding, counters."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.runtime = runtime
        self.outputs: dict[str, list[Edge]] = {"main": [], "late": [], "dead_letters": []}
        self.out_watermark: int | None = None
        self.out_idle = False
        self.counters = Counters()
        self.pending: list[tuple[Inbox, tuple[int, Message]]] = []
        self.dropped_no_sink: dict[str, int] = {}
        """Rows sent to a side output that has no sink (dropped), per output, over the run."""

    def port(self, name: str) -> list[Edge]:
        return self.outputs.setdefault(name, [])

    def send(self, port: str, msg: Message) -> None:
        """Deliver to every edge of ``port``: direct edges now, queued ones after the step."""
        for edge in self.outputs.get(port, ()):
            if edge.queue is None:
                edge.target.receive(msg, edge.index)
            else:
                self.pending.append((edge.queue, (edge.index, msg)))

    def broadcast(self, msg: Message) -> None:
        for port in self.outputs:
            self.send(port, msg)

    def emit_data(self, data: pa.RecordBatch | pa.Table, port: str) -> None:
        for batch in as_batches(data):
            rows = batch.num_rows
            if port == "main":
                self.counters.records_out += rows
                self.counters.batches_out += 1
            elif port == "late":
                self.counters.late += rows
            elif port == "dead_letters":
                self.counters.dead_letters += rows
            if rows and port != "main" and not self.outputs.get(port):
                self._drop_no_sink(port, rows)
            if rows or port == "main":
                self.send(port, batch)

    def _drop_no_sink(self, port: str, rows: int) -> None:
        """Count rows sent to a side output nobody sinks; warn at the first such batch (the
        run's total per output is logged when the run ends: :meth:`Runtime.report_dropped`)."""
        first = port not in self.dropped_no_sink
        self.dropped_no_sink[port] = self.dropped_no_sink.get(port, 0) + rows
        if first:
            log.warning(
                "%s: %d record(s) sent to the %r output, which has no sink: dropped, counted in "
                "metrics as dropped_no_sink (the run's total is logged when it ends)",
                self.name,
                rows,
                port,
            )

    def emit_watermark(self, watermark: int, idle: bool = False) -> None:
        if self.out_watermark is not None and watermark <= self.out_watermark:
            if idle != self.out_idle:
                self.out_idle = idle
                self.broadcast(Watermark(self.out_watermark, idle))
            return
        self.out_watermark = watermark
        self.out_idle = idle
        self.broadcast(Watermark(watermark, idle))

    def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        n = batch.num_rows
        errors = pa.array([reason] * n, pa.string())
        positions = pa.array([position] * n, pa.string())
        out = pa.RecordBatch.from_arrays(
            [*batch.columns, errors, positions],
            schema=pa.schema([*batch.schema, *DEAD_LETTER_FIELDS]),
        )
        self.emit_data(out, "dead_letters")

    async def flush_pending(self) -> None:
        pending, self.pending = self.pending, []
        for queue, item in pending:
            await queue.put(item)


class OperatorNode(Node):
    """Runs one :class:`Operator`: input gate, timers, error translation."""

    def __init__(
        self, name: str, op: Operator, n_inputs: int, key_columns: tuple[str, ...], runtime: Runtime
    ) -> None:
        super().__init__(name, runtime)
        self.op = op
        self.gate = _Gate(n_inputs)
        self.ctx = Context(self, key_columns)
        self.segment: Segment | None = None
        self.finished = False

    @property
    def input_watermark(self) -> int | None:
        return self.gate.combined

    def wake(self) -> None:
        """A processing-time timer was registered; the segment loop re-reads deadlines each step."""

    def send(self, port: str, msg: Message) -> None:
        # chained (direct) successors share this node's segment, so queued items go to its list
        assert self.segment is not None
        for edge in self.outputs.get(port, ()):
            if edge.queue is None:
                edge.target.receive(msg, edge.index)
            else:
                self.segment.pending.append((edge.queue, (edge.index, msg)))

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except LambdaSourceError:
            raise
        except Exception as exc:
            raise OperatorError(f"operator={self.name} failed in {what}: {exc!r}") from exc

    def receive(self, msg: Message, index: int) -> None:
        gate = self.gate
        # aligning: an input past the barrier is paused at the mailbox, so nothing of it arrives
        assert gate.barrier is None or not gate.barrier_seen[index] or isinstance(msg, End), (
            f"operator={self.name}: input {index} delivered a message past barrier {gate.barrier}"
        )
        if isinstance(msg, pa.RecordBatch):
            self.counters.records_in += msg.num_rows
            if gate.idle[index]:
                gate.idle[index] = False
                self._on_progress()
            self._call("on_batch", self.op.on_batch, msg, self.ctx)
        elif isinstance(msg, Watermark):
            previous = gate.watermarks[index]
            if previous is None or msg.time > previous:
                gate.watermarks[index] = msg.time
            gate.idle[index] = msg.idle
            self._on_progress()
        elif isinstance(msg, Barrier):
            self._on_barrier(msg, index)
        elif isinstance(msg, End):
            gate.ended[index] = True
            if gate.barrier is not None:
                self._maybe_release_barrier()
            self._on_progress()
            if all(gate.ended):
                self._call("on_end", self.op.on_end, self.ctx)
                self.finished = True
                if self.op.stateful:
                    self.runtime.record_final(self.name, self.capture_state())
                self.broadcast(End())

    def _on_progress(self) -> None:
        advanced, idle_changed = self.gate.recompute()
        if advanced:
            watermark = self.gate.combined
            assert watermark is not None
            for timer in list(self.ctx.timers.pop_due("event", watermark)):
                self.ctx.current_key = timer.key
                self._call("on_timer", self.op.on_timer, timer, self.ctx)
            self.ctx.current_key = None
            self._call("on_watermark", self.op.on_watermark, watermark, self.ctx)
        if idle_changed and self.out_watermark is not None:
            self.out_idle = self.gate.all_idle
            self.broadcast(Watermark(self.out_watermark, self.gate.all_idle))

    def fire_processing_timers(self, now: int) -> None:
        for timer in list(self.ctx.timers.pop_due("processing", now)):
            self.ctx.current_key = timer.key
            self._call("on_timer", self.op.on_timer, timer, self.ctx)
        self.ctx.current_key = None

    def capture_state(self) -> dict[str, Any]:
        """The operator's state now: its snapshot, keyed state and timers (immutable)."""
        runtime = self.runtime
        keyed = dict(self.ctx.state)
        return {
            "operator": runtime.capture(
                self._call("snapshot", self.op.snapshot), self.op.snapshot_immutable
            ),
            "keyed_state": runtime.capture(keyed, not keyed),
            "timers": self.ctx.timers.snapshot(),
            "watermarks": (self.gate.combined, self.out_watermark),
        }

    def restore_state(self, state: Any) -> None:
        """Restore what :meth:`capture_state` returned (before ``open``)."""
        try:
            self.op.restore(thaw(state["operator"]))
            self.ctx.state = dict(thaw(state["keyed_state"]))
            self.ctx.timers.restore(state["timers"])
            # watermarks continue from the checkpoint: never re-forward older ones downstream
            self.gate.combined, self.out_watermark = state.get("watermarks", (None, None))
        except Exception as exc:
            raise IncompatibleStateError(
                f"operator={self.name}: cannot restore its checkpointed state: {exc}"
            ) from exc

    def _on_barrier(self, barrier: Barrier, index: int) -> None:
        gate = self.gate
        if gate.barrier is None:
            gate.barrier = barrier.checkpoint_id
            gate.barrier_seen = [False] * len(gate.ended)
        gate.barrier_seen[index] = True
        if not self._maybe_release_barrier():
            # stop reading this input until the others caught up (bounded: its lane fills)
            segment = self.segment
            assert segment is not None and segment.head is self, "multi-input nodes head segments"
            segment.mailbox.pause(index)
            gate.paused = True

    def _maybe_release_barrier(self) -> bool:
        """Snapshot and forward the barrier once every input delivered it or ended; True when
        no barrier is pending any more."""
        gate = self.gate
        if gate.barrier is None:
            return True
        if not all(
            seen or ended for seen, ended in zip(gate.barrier_seen, gate.ended, strict=True)
        ):
            return False
        checkpoint_id = gate.barrier
        if self.op.stateful:
            self.runtime.record_snapshot(checkpoint_id, self.name, self.capture_state())
        gate.barrier = None
        if gate.paused:
            assert self.segment is not None
            self.segment.mailbox.resume_all()
            gate.paused = False
        self.broadcast(Barrier(checkpoint_id))
        return True


@dataclass(slots=True)
class Segment:
    """A head node and the nodes chained behind it; driven by one task reading ``mailbox``."""

    head: OperatorNode
    mailbox: Mailbox
    nodes: list[OperatorNode] = field(default_factory=list)
    pending: list[tuple[Inbox, tuple[int, Message]]] = field(default_factory=list)

    def next_deadline(self) -> int | None:
        times = [t for n in self.nodes if (t := n.ctx.timers.next_time("processing")) is not None]
        return min(times) if times else None

    async def run(self) -> None:
        """Open every node, process the mailbox until the head finished, close every opened node.

        Closing runs after errors and cancellation too; the error that ended the run stays the
        one raised (a failing ``close`` is then logged), see :func:`close_all`.
        """
        opened: list[OperatorNode] = []
        try:
            for node in self.nodes:
                node._call("open", node.op.open, node.ctx)
                opened.append(node)
            await self._loop()
        except BaseException as error:
            close_all(opened, self.head.runtime.reason(error))
            raise
        close_all(opened, None)

    async def _loop(self) -> None:
        while not self.head.finished:
            deadline = self.next_deadline()
            if deadline is None:
                index, msg = await self.mailbox.get()
            else:
                delay = max(0.0, (deadline - Context.processing_time()) / 1e6)
                try:
                    async with asyncio.timeout(delay):
                        index, msg = await self.mailbox.get()
                except TimeoutError:
                    now = Context.processing_time()
                    for node in self.nodes:
                        node.fire_processing_timers(now)
                    await self._flush()
                    continue
            self.head.receive(msg, index)
            await self._flush()

    async def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for queue, item in pending:
            await queue.put(item)


def close_all(nodes: list[OperatorNode], error: BaseException | None) -> None:
    """Call ``close`` on every node, even when one fails.

    With ``error`` (the run already failed or was cancelled) every close failure is logged, not
    raised over it. Without, the first close failure is raised once all nodes were closed and
    the others are logged.
    """
    first = error
    for node in nodes:
        try:
            node._call("close", node.op.close, node.ctx)
        except Exception as exc:
            if first is None:
                first = exc
            else:
                log_suppressed(exc, first, during="closing")
    if error is None and first is not None:
        raise first


class SourceNode(Node):
    """Runs a :class:`Source`; normalises event time and routes null times to dead letters."""

    def __init__(self, name: str, source: Source, runtime: Runtime) -> None:
        super().__init__(name, runtime)
        self.source = source
        self.ended = False

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        await self._barrier_if_requested()
        column = self.source.time_column
        if column not in batch.schema.names:
            raise SchemaError(
                f"source={self.name}: batch at {position or '?'} has no time column {column!r}"
            )
        times = batch.column(column)
        if times.type != TIME_TYPE:
            normalized = normalize_time_array(times)
            batch = batch.set_column(
                batch.schema.get_field_index(column), pa.field(column, TIME_TYPE), normalized
            )
            times = normalized
        if times.null_count:
            null = np.asarray(times.is_null().to_numpy(zero_copy_only=False))
            Node.dead_letter(
                self, batch.filter(pa.array(null)), f"null event time in {column!r}", position
            )
            batch = batch.filter(pa.array(~null))
        self.emit_data(batch, "main")
        await self.flush_pending()

    async def emit_watermark(self, time: int, idle: bool = False) -> None:  # type: ignore[override]
        await self._barrier_if_requested()
        Node.emit_watermark(self, time, idle)
        await self.flush_pending()

    async def dead_letter(  # type: ignore[override]
        self, batch: pa.RecordBatch, reason: str, position: str | None
    ) -> None:
        Node.dead_letter(self, batch, reason, position)
        await self.flush_pending()

    async def barrier_point(self) -> None:
        """A safe point between emissions: inject a requested barrier now (see SourceOutput)."""
        await self._barrier_if_requested()

    def _capture(self) -> Any:
        try:
            position = self.source.snapshot()
        except Exception as exc:
            raise SourceError(f"source={self.name}: snapshot() failed: {exc!r}") from exc
        return self.runtime.capture(position, position is None)

    async def _barrier_if_requested(self) -> None:
        checkpoint_id = self.runtime.barrier_for(self)
        if checkpoint_id is not None:
            self.runtime.record_snapshot(checkpoint_id, self.name, self._capture())
            self.broadcast(Barrier(checkpoint_id))
            await self.flush_pending()

    async def run(self) -> None:
        try:
            await self.source.run(self)
        except (LambdaSourceError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise SourceError(f"source={self.name} failed: {exc!r}") from exc
        await self._barrier_if_requested()
        self.runtime.record_final(self.name, self._capture())
        self.ended = True
        self.broadcast(End())
        await self.flush_pending()


class SinkNode:
    """Runs a :class:`Sink` behind a bounded mailbox."""

    def __init__(
        self, name: str, sink: Sink, mailbox: asyncio.Queue[tuple[int, Message]], runtime: Runtime
    ) -> None:
        self.name = name
        self.sink = sink
        self.mailbox = mailbox
        self.runtime = runtime
        self.counters = Counters()
        self.watermark: int | None = None
        self.opened = False

    async def _do(self, what: str, coro: Any) -> None:
        try:
            await coro
        except (LambdaSourceError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise SinkError(f"sink={self.name} failed in {what}: {exc!r}") from exc

    async def open(self) -> None:
        await self._do("open", self.sink.open())
        self.opened = True

    async def run(self) -> None:
        """Open the sink (unless :meth:`Runtime.run` did), apply messages until ``End``, close
        it (also after errors: a failing ``close`` then is logged, the first error stays the one
        raised)."""
        if not self.opened:
            await self.open()
        try:
            await self._loop()
        except BaseException as error:
            closing = self._do("close", self.sink.close())
            await close_after(f"closing sink={self.name}", closing, self.runtime.reason(error))
            raise
        await self._do("close", self.sink.close())

    async def _loop(self) -> None:
        while True:
            msg = await self._next()
            if msg is None:  # quiet input and the sink asked to be woken: time-based flush
                await self._do("on_idle", self.sink.on_idle())
                continue
            if isinstance(msg, pa.RecordBatch):
                self.counters.records_in += msg.num_rows
                await self._do("write", self.sink.write(msg))
            elif isinstance(msg, Watermark):
                if self.watermark is None or msg.time > self.watermark:
                    self.watermark = msg.time
                    await self._do("on_watermark", self.sink.on_watermark(msg.time))
            elif isinstance(msg, Barrier):
                await self._do("flush", self.sink.flush())
                state = await self._snapshot(msg.checkpoint_id)
                self.runtime.sink_barrier(msg.checkpoint_id, self.name, state)
            elif isinstance(msg, End):
                await self._do("flush", self.sink.flush())
                await self._do("on_end", self.sink.on_end())
                self.runtime.sink_ended(self.name)
                return

    async def _snapshot(self, checkpoint_id: int) -> Any:
        try:
            state = await self.sink.snapshot(checkpoint_id)
        except (LambdaSourceError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise SinkError(f"sink={self.name} failed in snapshot: {exc!r}") from exc
        return None if state is None else self.runtime.capture(state, False)

    async def _next(self) -> Message | None:
        """The next message, or None when the sink's ``idle_deadline()`` passes first."""
        deadline = self.sink.idle_deadline()
        if deadline is None or not self.mailbox.empty():
            return (await self.mailbox.get())[1]
        try:
            async with asyncio.timeout_at(deadline):
                return (await self.mailbox.get())[1]
        except TimeoutError:
            return None


def sink_state_key(sink: str) -> str:
    """Where a checkpoint keeps a sink's snapshot (apart from source/operator names)."""
    return f"sink={sink}"


def _flatten(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_flatten(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


class Runtime:
    """One run of a pipeline: nodes, tasks, checkpoint bookkeeping and metrics."""

    def __init__(self, flush: str, coordinator: CheckpointCoordinator | None = None) -> None:
        self.flush = flush
        self.coordinator = coordinator
        self.sources: list[SourceNode] = []
        self.operators: list[OperatorNode] = []
        self.segments: list[Segment] = []
        self.sinks: list[SinkNode] = []
        self.queues: dict[str, Mailbox | asyncio.Queue[tuple[int, Message]]] = {}
        self.status = "created"
        self.started: float | None = None
        self.finished: float | None = None
        self._barrier_requests: dict[int, set[str]] = {}
        self._next_checkpoint = 1
        self.snapshots: dict[int, dict[str, Any]] = {}
        self._sinks_done: dict[int, set[str]] = {}
        self._sink_states: dict[int, dict[str, Any]] = {}  # checkpoint → sink → its snapshot
        self.completed_checkpoints: list[int] = []
        self._checkpoint_started: dict[int, float] = {}  # pending: requested, not complete
        self.checkpoint_durations: dict[int, float] = {}
        self.final_states: dict[str, Any] = {}
        self._sinks_ended: set[str] = set()
        self.done = False
        """Every sink has finished (the coordinator then drains its writes and returns)."""
        self.error: BaseException | None = None
        """The first error of the run (the one ``run()`` raises)."""

    def reason(self, error: BaseException) -> BaseException:
        """Why a task is ending with ``error``: the run's first error when ``error`` is the
        cancellation that error caused (for messages of errors logged during cleanup)."""
        if isinstance(error, asyncio.CancelledError) and self.error is not None:
            return self.error
        return error

    # checkpoints ----------------------------------------------------------------------------------

    def capture(self, state: Any, immutable: bool) -> Any:
        """State as recorded for a checkpoint: frozen into bytes unless declared immutable."""
        if self.coordinator is None or immutable:
            return state
        return Frozen.of(state)

    @property
    def stateful_operators(self) -> list[OperatorNode]:
        """Operators whose state checkpoints hold (stateless ones are left out)."""
        return [node for node in self.operators if node.op.stateful]

    def first_checkpoint_id(self, checkpoint_id: int) -> None:
        """Number this run's checkpoints from ``checkpoint_id`` on (before the run starts)."""
        self._next_checkpoint = checkpoint_id

    def restore(self, checkpoint_id: int, states: dict[str, Any]) -> None:
        """Restore every source and stateful operator (before the run starts)."""
        for source in self.sources:
            try:
                source.source.restore(thaw(states[source.name]))
            except LambdaSourceError:
                raise
            except Exception as exc:
                raise IncompatibleStateError(
                    f"source={source.name}: cannot restore position from checkpoint "
                    f"{checkpoint_id}: {exc!r}"
                ) from exc
        for node in self.stateful_operators:
            node.restore_state(states[node.name])
        for sink in self.sinks:
            if sink_state_key(sink.name) in states:
                sink.sink.restore(thaw(states[sink_state_key(sink.name)]))
        self._next_checkpoint = max(self._next_checkpoint, checkpoint_id + 1)

    def has_live_sources(self) -> bool:
        return any(not s.ended for s in self.sources)

    def pending_checkpoints(self) -> dict[int, float]:
        """Checkpoints requested and not yet complete → their trigger time (perf_counter)."""
        return dict(self._checkpoint_started)

    def abandon_checkpoint(self, checkpoint_id: int) -> None:
        """Give up on a pending checkpoint (barriers still flow; its states are dropped)."""
        self._checkpoint_started.pop(checkpoint_id, None)
        self.snapshots.pop(checkpoint_id, None)
        self._sinks_done.pop(checkpoint_id, None)
        self._sink_states.pop(checkpoint_id, None)

    def request_checkpoint(self) -> int:
        checkpoint_id = self._next_checkpoint
        self._next_checkpoint += 1
        self._barrier_requests[checkpoint_id] = {s.name for s in self.sources if not s.ended}
        self._checkpoint_started[checkpoint_id] = time.perf_counter()
        self._maybe_complete(checkpoint_id)  # completes at once when every node has finished
        return checkpoint_id

    def barrier_for(self, source: SourceNode) -> int | None:
        for checkpoint_id, waiting in sorted(self._barrier_requests.items()):
            if source.name in waiting:
                waiting.discard(source.name)
                if not waiting:
                    del self._barrier_requests[checkpoint_id]
                return checkpoint_id
        return None

    def record_snapshot(self, checkpoint_id: int, name: str, state: Any) -> None:
        if checkpoint_id not in self._checkpoint_started:
            return  # abandoned
        self.snapshots.setdefault(checkpoint_id, {})[name] = state
        self._maybe_complete(checkpoint_id)

    def record_final(self, name: str, state: Any) -> None:
        """A node finished: its final state stands in for it in later checkpoints."""
        self.final_states[name] = state
        for checkpoint_id in list(self._checkpoint_started):
            self._maybe_complete(checkpoint_id)

    def sink_barrier(self, checkpoint_id: int, sink: str, state: Any = None) -> None:
        """``sink`` flushed at barrier ``checkpoint_id``; ``state`` (its snapshot, when not
        None) goes into the checkpoint under :func:`sink_state_key`."""
        if checkpoint_id not in self._checkpoint_started:
            return
        if state is not None:
            self._sink_states.setdefault(checkpoint_id, {})[sink] = state
        self._sinks_done.setdefault(checkpoint_id, set()).add(sink)
        self._maybe_complete(checkpoint_id)

    def sink_ended(self, sink: str) -> None:
        self._sinks_ended.add(sink)
        for checkpoint_id in list(self._checkpoint_started):
            self._maybe_complete(checkpoint_id)
        if len(self._sinks_ended) == len(self.sinks):
            self.done = True
            if self.coordinator is not None:
                self.coordinator.wake()

    def _maybe_complete(self, checkpoint_id: int) -> None:
        """Complete ``checkpoint_id`` once every sink acknowledged it (or ended) and every
        source/operator has a state for it (its snapshot, else its final state)."""
        started = self._checkpoint_started.get(checkpoint_id)
        if started is None:
            return
        acked = self._sinks_done.get(checkpoint_id, set())
        if any(s.name not in acked and s.name not in self._sinks_ended for s in self.sinks):
            return
        recorded = self.snapshots.get(checkpoint_id, {})
        states: dict[str, Any] = {}
        for node in [*self.sources, *self.stateful_operators]:
            if node.name in recorded:
                states[node.name] = recorded[node.name]
            elif node.name in self.final_states:
                states[node.name] = self.final_states[node.name]
            else:
                return
        for sink, state in self._sink_states.pop(checkpoint_id, {}).items():
            states[sink_state_key(sink)] = state
        del self._checkpoint_started[checkpoint_id]
        self._sinks_done.pop(checkpoint_id, None)
        self.snapshots[checkpoint_id] = states
        self.completed_checkpoints.append(checkpoint_id)
        self.checkpoint_durations[checkpoint_id] = time.perf_counter() - started
        for old in self.completed_checkpoints[:-_KEEP_SNAPSHOTS]:
            self.snapshots.pop(old, None)
        if len(self.completed_checkpoints) > 100:
            for old in self.completed_checkpoints[:-100]:
                self.checkpoint_durations.pop(old, None)
            del self.completed_checkpoints[:-100]
        if self.coordinator is not None:
            self.coordinator.completed(checkpoint_id, states, started)

    # running ------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.status = "running"
        self.started = time.perf_counter()
        first_error: list[BaseException] = []

        async def supervised(coro: Any) -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                if not first_error:
                    first_error.append(exc)
                    self.error = exc
                raise

        try:
            await self._open_sinks()
        except BaseException as exc:
            self.status = "failed"
            self.error = exc
            self.finished = time.perf_counter()
            raise
        try:
            async with asyncio.TaskGroup() as tg:
                for sink in self.sinks:
                    tg.create_task(supervised(sink.run()), name=f"sink:{sink.name}")
                for segment in self.segments:
                    tg.create_task(supervised(segment.run()), name=f"segment:{segment.head.name}")
                for source in self.sources:
                    tg.create_task(supervised(source.run()), name=f"source:{source.name}")
                if self.coordinator is not None:
                    tg.create_task(supervised(self.coordinator.run()), name="checkpoints")
        except BaseExceptionGroup as group:
            self.status = "failed"
            errors = _flatten(group)
            error = first_error[0] if first_error else errors[0]
            for other in errors:
                if other is not error:
                    log_suppressed(other, error, during="in another task")
            raise error from error.__cause__
        except asyncio.CancelledError:
            self.status = "cancelled"
            raise
        finally:
            self.finished = time.perf_counter()
            self.report_dropped()
        self.status = "finished"

    async def _open_sinks(self) -> None:
        """Open every sink before any source reads: a store that cannot be used fails the run
        before a record is read (the sinks already opened are closed again)."""
        results = await asyncio.gather(
            *(sink.open() for sink in self.sinks), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        for sink in self.sinks:
            if sink.opened:
                await close_after(f"closing sink={sink.name}", sink.sink.close(), errors[0])
        for other in errors[1:]:
            log_suppressed(other, errors[0], during="opening another sink")
        raise errors[0]

    def report_dropped(self) -> None:
        """Log, per node and side output without a sink, how many rows the run dropped there
        (the log record carries ``node``, ``port`` and ``dropped_no_sink`` as attributes)."""
        for node in [*self.sources, *self.operators]:
            for port, rows in node.dropped_no_sink.items():
                log.warning(
                    "%s: %d record(s) in all were sent to the %r output, which has no sink, and "
                    "dropped in this run",
                    node.name,
                    rows,
                    port,
                    extra={"node": node.name, "port": port, "dropped_no_sink": rows},
                )

    # metrics ------------------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        sources = {
            s.name: {
                "watermark": s.out_watermark,
                "idle": s.out_idle,
                "ended": s.ended,
                "records_out": s.counters.records_out,
                "batches_out": s.counters.batches_out,
                "dead_letters": s.counters.dead_letters,
                "dropped_no_sink": dict(s.dropped_no_sink),
                **s.source.metrics(),
            }
            for s in self.sources
        }
        live = [s.out_watermark for s in self.sources if not s.ended and not s.out_idle]
        known = [w for w in live if w is not None]
        every = [s.out_watermark for s in self.sources if s.out_watermark is not None]
        global_wm = (
            (min(known) if known and len(known) == len(live) else None)
            if live
            else (max(every) if every else None)
        )
        operators: dict[str, Any] = {}
        state_rows = state_bytes = 0
        for node in self.operators:
            rows, nbytes = node.op.state_size()
            state_rows += rows
            state_bytes += nbytes
            operators[node.name] = {
                "records_in": node.counters.records_in,
                "records_out": node.counters.records_out,
                "late": node.counters.late,
                "dead_letters": node.counters.dead_letters,
                "dropped_no_sink": dict(node.dropped_no_sink),
                "watermark": node.gate.combined,
                "idle": node.gate.all_idle,
                "timers": len(node.ctx.timers),
                "state_rows": rows,
                "state_bytes": nbytes,
            }
        queue_messages = queue_rows = queue_bytes = 0
        for queue in self.queues.values():
            if isinstance(queue, Mailbox):
                queued = queue.messages()
            else:
                queued = [msg for _, msg in list(queue._queue)]  # type: ignore[attr-defined]
            for msg in queued:
                queue_messages += 1
                queue_rows += _rows(msg)
                if isinstance(msg, pa.RecordBatch):
                    queue_bytes += msg.nbytes
        elapsed = ((self.finished or time.perf_counter()) - self.started) if self.started else 0.0
        return {
            "status": self.status,
            "elapsed_s": elapsed,
            "global_watermark": global_wm,
            "skew": (max(every) - min(every)) if len(every) > 1 else 0,
            "sources": sources,
            "operators": operators,
            "sinks": {
                s.name: {
                    "records_in": s.counters.records_in,
                    "watermark": s.watermark,
                    **s.sink.metrics(),
                }
                for s in self.sinks
            },
            "late": sum(n.counters.late for n in self.operators),
            "dead_letters": sum(n.counters.dead_letters for n in [*self.sources, *self.operators]),
            "dropped_no_sink": sum(
                sum(n.dropped_no_sink.values()) for n in [*self.sources, *self.operators]
            ),
            "buffered": {
                "queue_messages": queue_messages,
                "queue_rows": queue_rows,
                "queue_bytes": queue_bytes,
                "state_rows": state_rows,
                "state_bytes": state_bytes,
            },
            "checkpoints": {
                "completed": list(self.completed_checkpoints),
                "durations_s": dict(self.checkpoint_durations),
                "pending": sorted(self._checkpoint_started),
                **(self.coordinator.metrics() if self.coordinator is not None else {}),
            },
        }
