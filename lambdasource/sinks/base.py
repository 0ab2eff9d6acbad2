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

Several writers (a job run as N workers, one task per stream partition, DESIGN §3 "Tasks"): each
task gets its own sink from :meth:`Sink.for_task` before anything runs, so instances share no
buffers, connections or producers. ``single_writer = True`` marks a store that only one process
may write (DuckDB's file lock); :func:`require_multi_writer` refuses such a sink before a
multi-worker run starts, with a :class:`~lambdasource.errors.ConfigError` saying what to do.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from ..errors import ConfigError


class Sink(abc.ABC):
    name: str = "sink"
    # Only one process may write the store (True: DuckDB's file lock, an in-memory collector).
    single_writer: bool = False
    # The task this instance writes for (``for_task``); None: the whole job in one process.
    task_id: str | None = None

    def for_task(self, task_id: str) -> Sink:
        """A new, unopened sink configured like this one, for the task ``task_id`` (e.g.
        ``"topic-3"``: stable across restarts and rebalances, unique within the job).

        Called before the sink is opened; the copy shares configuration but no runtime state.
        The default is a shallow copy with ``task_id`` set; sinks holding mutable runtime state
        (buffers, clients) or a per-task identity (Kafka's transactional id) override
        :meth:`_fresh_for_task` to reset or derive it."""
        clone = copy.copy(self)
        clone.task_id = task_id
        clone._fresh_for_task(task_id)
        return clone

    def _fresh_for_task(self, task_id: str) -> None:
        """Give a ``for_task`` copy its own runtime state (called on the copy)."""

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


def multi_writer_advice(sink: Sink) -> str:
    """What to do instead of running a single-writer ``sink`` in several workers."""
    kind = type(sink).__name__
    return (
        f"sink={sink.name} ({kind}) takes writes from only one process, so it cannot be the "
        "store of a job run as several workers: write to a store that takes concurrent "
        "writers (PostgreSQL: PostgresUpsert, Iceberg: IcebergUpsert, Kafka: KafkaUpsert, or "
        "ParquetSink for appends), or "
        "run the job as one worker (--workers 1) — a DuckDB file can then be filled from "
        "one of those stores afterwards"
    )


def require_multi_writer(sinks: Iterable[Sink], workers: int | None) -> None:
    """Raise a ConfigError before a run of ``workers`` processes (None: an unknown number,
    joining a group from several machines) when any sink is single-writer; 1 is always fine."""
    if workers == 1:
        return
    refused = [sink for sink in sinks if sink.single_writer]
    if refused:
        how_many = f"{workers} workers" if workers is not None else "workers joining a group"
        raise ConfigError(
            f"the job runs as {how_many}, but "
            + "; ".join(multi_writer_advice(sink) for sink in refused)
        )
