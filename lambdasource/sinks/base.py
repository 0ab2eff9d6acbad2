"""Sinks: where results leave the graph. Each sink runs in its own task behind a bounded queue.

Contract: ``open`` before the first write; ``write`` is awaited once per batch in stream order
(never concurrently); ``on_watermark`` follows the writes it covers; ``flush`` makes every write so
far durable (awaited before a checkpoint completes); ``close`` is called once, also after errors.
Blocking client calls must go through ``asyncio.to_thread``.

Two-phase sinks (e.g. transactional Kafka) also use: ``snapshot(n)`` right after the ``flush()`` at
barrier ``n`` (its return value is stored in checkpoint ``n``), ``on_checkpoint_complete(n)`` once
checkpoint ``n`` is durable (commit what its barrier pre-committed), ``on_checkpoint_failed(n)``
when ``n`` will never complete, ``restore(state)`` before ``open`` with the state of the restored
checkpoint, and ``on_end()`` after the last ``flush()`` of a run whose input ended.
"""

from __future__ import annotations

import abc
from typing import Any

import pyarrow as pa


class Sink(abc.ABC):
    name: str = "sink"

    def bind(self, schema: pa.Schema | None) -> None:
        """Called at build time with the input schema when it is known (validate it here)."""

    async def open(self) -> None:
        """Connect / create tables."""

    @abc.abstractmethod
    async def write(self, batch: pa.RecordBatch) -> None: ...

    async def on_watermark(self, watermark: int) -> None:
        """The input watermark advanced to ``watermark`` (µs)."""

    async def flush(self) -> None:
        """Make every write so far durable."""

    def idle_deadline(self) -> float | None:
        """When no message arrives before this ``loop.time()``, ``on_idle`` is called (None: never).

        Lets a sink that buffers flush on time even when its input is quiet."""
        return None

    async def on_idle(self) -> None:
        """The input stayed quiet until ``idle_deadline()`` (e.g. flush what is buffered)."""

    def metrics(self) -> dict[str, Any]:
        """Sink-specific figures (plain data) merged into ``pipeline.metrics()["sinks"][name]``."""
        return {}

    async def snapshot(self, checkpoint_id: int) -> Any:
        """What checkpoint ``checkpoint_id`` must carry for this sink (picklable), called right
        after the ``flush()`` at its barrier; None (the default): nothing."""
        return None

    def restore(self, state: Any) -> None:
        """The ``snapshot`` state held by the checkpoint the run restores (before ``open``)."""

    async def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is durable. An error here fails the run."""

    async def on_checkpoint_failed(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` was abandoned or could not be written: it never completes."""

    async def on_end(self) -> None:
        """The input ended (a bounded run): called once after the last ``flush()``."""

    async def close(self) -> None:
        """Release resources; called once, also after errors."""
