"""Sinks: where results leave the graph. Each sink runs in its own task behind a bounded queue.

Contract: ``open`` before the first write; ``write`` is awaited once per batch in stream order
(never concurrently); ``on_watermark`` follows the writes it covers; ``flush`` makes every write so
far durable (awaited before a checkpoint completes); ``close`` is called once, also after errors.
Blocking client calls must go through ``asyncio.to_thread``.
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

    async def close(self) -> None:
        """Release resources; called once, also after errors."""
