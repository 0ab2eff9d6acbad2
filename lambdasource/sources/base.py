"""Sources: where batches, watermarks and dead letters enter the graph.

A source's ``run(out)`` coroutine emits through :class:`SourceOutput`; the runtime owns the rest:
it normalises the time column to ``timestamp[us, UTC]``, routes rows with a null event time to the
dead letters, injects checkpoint barriers between emissions, and sends ``End`` when ``run``
returns (bounded sources return; unbounded ones run until cancelled).
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

import pyarrow as pa


class SourceOutput(Protocol):
    """How a source emits. Every call may wait (backpressure); none may be called concurrently."""

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        """Emit records; ``position`` (e.g. ``"file=… row_group=3"``) is used for dead letters."""

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        """Promise no more records with event time ``<= time`` (ignored unless it advances)."""

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        """Records that cannot enter the stream (malformed, unparseable time)."""

    async def barrier_point(self) -> None:
        """A safe point between emissions (``snapshot()`` describes exactly what was emitted):
        inject a requested checkpoint barrier now. Every ``emit``/``emit_watermark`` is such a
        point already; a source that may wait long without emitting calls this periodically."""


class Source(abc.ABC):
    """Base class of sources. ``time_column`` names the event-time column of emitted batches."""

    name: str = "source"
    time_column: str
    bounded: bool = True

    @property
    def schema(self) -> pa.Schema | None:
        """The schema of emitted batches if known before running (lets the graph check columns)."""
        return None

    @abc.abstractmethod
    async def run(self, out: SourceOutput) -> None:
        """Emit everything; return at the end of a bounded source."""

    def metrics(self) -> dict[str, Any]:
        """Source-specific figures (plain data) merged into ``pipeline.metrics()["sources"][name]``."""
        return {}

    def snapshot(self) -> Any:
        """The position to resume from, taken at a barrier between emissions: it must cover
        exactly the records emitted so far. Plain data (see :mod:`lambdasource.checkpoints.codec`);
        it is encoded at once (no need to copy)."""
        return None

    def restore(self, state: Any) -> None:
        """Resume from a position returned by ``snapshot`` (called before ``run``)."""

    async def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` (which holds this source's position as of its barrier)
        is durably written. Optional, for observability (e.g. commit Kafka offsets); errors are
        logged, never fatal; must not block."""
