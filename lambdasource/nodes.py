"""The nodes of a running graph: sources, operator segments and sinks (see :mod:`.runtime`).

Every source runs in its own task and puts messages into bounded queues; each *segment* (a head
operator plus the single-input operators chained synchronously behind it) runs in one task reading
the head's mailbox; every sink runs in its own task behind a bounded queue. States are captured
synchronously at a barrier and must not change afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .channels import Counters, Edge, Inbox, Mailbox, _Gate, as_batches
from .checkpoints.format import thaw
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
    from .runtime import Runtime

log = logging.getLogger("lambdasource")

DEAD_LETTER_FIELDS = [pa.field("_error", pa.string()), pa.field("_position", pa.string())]


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
                self._call("snapshot", self.op.snapshot),
                self.op.snapshot_immutable,
                f"operator={self.name} snapshot()",
            ),
            "keyed_state": runtime.capture(keyed, not keyed, f"operator={self.name} keyed state"),
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
        return self.runtime.capture(position, position is None, f"source={self.name} snapshot()")

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
        return (
            None
            if state is None
            else self.runtime.capture(state, False, f"sink={self.name} snapshot()")
        )

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
