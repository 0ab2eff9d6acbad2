"""Executes a built graph on asyncio.

Layout of a run: every source runs in its own task and puts messages into bounded queues; each
*segment* (a head operator plus the single-input operators chained synchronously behind it) runs
in one task reading the head's mailbox; every sink runs in its own task behind a bounded queue.
Queues exist only at these async boundaries, which is where backpressure lives: a full queue
suspends its producer. One ``asyncio.TaskGroup`` supervises all tasks; the first error cancels the
rest and is raised from ``run()`` with its cause; errors after it (other tasks, ``close()`` during
cleanup) are logged on the ``lambdasource`` logger, never raised over it; no task outlives the run.

Watermarks and barrier alignment: :mod:`.channels`; the nodes: :mod:`.nodes`.

Checkpoints (with a :class:`~lambdasource.checkpoints.coordinator.CheckpointCoordinator`): a
checkpoint is complete in memory when every sink flushed at its barrier (or ended) and every
source and operator recorded its state (or finished: its final state stands in). States are
captured synchronously at the barrier and must not change afterwards: operators that declare
``snapshot_immutable`` hand out shared never-mutated structures, everything else (user operator
snapshots, keyed state, source positions) is encoded at capture into a ``Frozen``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .channels import Edge, Inbox, Mailbox, _rows
from .checkpoints.format import Frozen, thaw
from .errors import (
    IncompatibleStateError,
    LambdaSourceError,
    close_after,
    log_suppressed,
)
from .messages import Message
from .nodes import Node, OperatorNode, Segment, SinkNode, SourceNode, sink_state_key

if TYPE_CHECKING:
    from .checkpoints.coordinator import CheckpointCoordinator

log = logging.getLogger("lambdasource")
_KEEP_SNAPSHOTS = 3  # completed checkpoints whose in-memory snapshots stay readable

__all__ = [
    "Edge",
    "Inbox",
    "Mailbox",
    "Node",
    "OperatorNode",
    "Runtime",
    "Segment",
    "SinkNode",
    "SourceNode",
]


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
        self.checkpoints_completed = 0  # monotone (the lists above keep the last 100)
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

    def capture(self, state: Any, immutable: bool, what: str) -> Any:
        """State as recorded for a checkpoint: frozen into bytes unless declared immutable
        (``what`` names its owner in the error when it is not plain data)."""
        if self.coordinator is None or immutable:
            return state
        return Frozen.of(state, what)

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

    def carry_counters(self, previous: Runtime) -> None:
        """Start this run's node counters (records, late, dead letters) where ``previous`` — an
        earlier run of the same graph, e.g. the state bootstrap's pass — left them, so metrics
        count the whole job."""
        nodes: list[SourceNode | OperatorNode | SinkNode] = [
            *previous.sources,
            *previous.operators,
            *previous.sinks,
        ]
        before = {node.name: node.counters for node in nodes}
        now: list[SourceNode | OperatorNode | SinkNode] = [
            *self.sources,
            *self.operators,
            *self.sinks,
        ]
        for node in now:
            counted = before.get(node.name)
            if counted is not None:
                for counter in fields(counted):
                    name = counter.name
                    setattr(
                        node.counters, name, getattr(node.counters, name) + getattr(counted, name)
                    )

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
        self.checkpoints_completed += 1
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
        sources = {  # the node's counters last: they count the whole job (carry_counters)
            s.name: {
                "watermark": s.out_watermark,
                "idle": s.out_idle,
                "ended": s.ended,
                **s.source.metrics(),
                "records_out": s.counters.records_out,
                "batches_out": s.counters.batches_out,
                "dead_letters": s.counters.dead_letters,
                "dropped_no_sink": dict(s.dropped_no_sink),
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
                "completed_total": self.checkpoints_completed,
                "durations_s": dict(self.checkpoint_durations),
                "pending": sorted(self._checkpoint_started),
                **(self.coordinator.metrics() if self.coordinator is not None else {}),
            },
        }
