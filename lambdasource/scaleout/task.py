"""One task of a scaled-out job: the job's pipeline for stream partition ``p`` of ``N``.

A task owns everything that belongs to its partition (DESIGN §3 "Tasks"): the partition's stream
records, the lake records of the partition, the window and keyed state they build, alignment
over its own splits, its own sink instance and its own checkpoints under
``<job checkpoint URL>/tasks/<topic>-<p>/``. The pipeline is made by the job's factory,
``build(TaskContext) -> Pipeline``, which must restrict the sources to the partition and
checkpoint to :attr:`TaskContext.checkpoint_url` (checked here before the task runs).

Start restores the newest checkpoint of that location, as a single-process run resumes
(``Pipeline.run(restore="latest")``; nothing is deleted) — unless that is a final checkpoint:
then the newest one before it (:func:`~.completion.resume_point`: state after the final flush
would make later records of its windows late). :meth:`PartitionTask.stop` hands the
partition over: it triggers a checkpoint (``Pipeline.trigger_checkpoint``), waits until the
checkpoint store has it (the coordinator's ``last_id`` reaches its id), then cancels the run.
Whatever the run wrote after that barrier is written again by the next owner from the same
input: upsert stores keep the newest version (DESIGN §3 "Upserts"), so the store stays exact.
A task that cannot checkpoint now (still building, restoring, or in a state-bootstrap pass,
which takes no periodic checkpoints) is cancelled: the next owner starts from the previous
checkpoint and redoes that work. A checkpoint not written within ``stop_timeout`` seconds is
given up the same way, so a stop always ends well inside the group's rebalance timeout.

A run that ends by itself (a bounded job's partition is complete) writes its final state as one
more checkpoint (``Pipeline.write_final_checkpoint``): it marks the partition complete
(:mod:`.completion`); a later owner (its worker left before the others finished, or the job runs
again) resumes from the checkpoint before it and replays the tail, so records that arrived after
the end still count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..errors import ConfigError, LambdaSourceError
from ..pipeline import Pipeline

log = logging.getLogger("lambdasource.scaleout")

StopOutcome = Literal["checkpointed", "cancelled", "finished", "failed"]
"""How :meth:`PartitionTask.stop` ended the task: after a checkpoint written for the stop, by
cancelling it (no checkpoint possible or in time), or it had already finished / failed."""


def task_id(topic: str, partition: int) -> str:
    """The task's stable name: ``"<topic>-<partition>"`` (as Kafka names a topic partition)."""
    return f"{topic}-{partition}"


def task_checkpoint_url(checkpoint_url: str, topic: str, partition: int) -> str:
    """Where the task of ``partition`` keeps its checkpoints: ``<url>/tasks/<topic>-<p>``."""
    return f"{checkpoint_url.rstrip('/')}/tasks/{task_id(topic, partition)}"


@dataclass(frozen=True)
class TaskContext:
    """What a task factory gets: build the job's pipeline for ``partition`` of ``partitions``
    (the topic's partition count), checkpointing to ``checkpoint_url``."""

    topic: str
    partition: int
    partitions: int
    worker_id: str
    checkpoint_url: str

    @property
    def task_id(self) -> str:
        """``"<topic>-<partition>"``: stable across restarts and rebalances (``Sink.for_task``)."""
        return task_id(self.topic, self.partition)


TaskFactory = Callable[[TaskContext], Pipeline]
"""``build(context) -> Pipeline``: the job's pipeline restricted to ``context.partition``."""


class TaskObserver(Protocol):
    """Told when a task's pipeline starts running and when that run ends (on the worker's
    loop), e.g. to serve its metrics (``--metrics-port``)."""

    def started(self, task: PartitionTask) -> None: ...

    def ended(self, task: PartitionTask) -> None: ...


def sink_specs(pipeline: Pipeline) -> list[Any]:
    """The pipeline's sink nodes as built (before it runs)."""
    return [spec for spec in pipeline._specs if spec.kind == "sink"]


def give_sinks_to_task(pipeline: Pipeline, task: str) -> None:
    """Replace every sink of a built, unrun ``pipeline`` by its ``sink.for_task(task)`` copy
    (sinks without ``for_task`` stay as they are): task instances share no buffers, clients or
    transactional ids."""
    for spec in sink_specs(pipeline):
        for_task = getattr(spec.sink, "for_task", None)
        if for_task is not None:
            spec.sink = for_task(task)


def check_task_pipeline(pipeline: Pipeline, context: TaskContext) -> None:
    """ConfigError unless ``pipeline`` checkpoints to the task's own location."""
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(
            f"task {context.task_id}: the factory must return an ls.Pipeline, got {pipeline!r}"
        )
    url = pipeline.checkpoints.url if pipeline.checkpoints is not None else None
    if url is None or url.rstrip("/") != context.checkpoint_url.rstrip("/"):
        raise ConfigError(
            f"task {context.task_id}: the pipeline must checkpoint to the task's location "
            f"(Pipeline(checkpoints=ls.Checkpoints(context.checkpoint_url, ...))), so the "
            f"partition's state moves with it to the next owner; it checkpoints to {url!r}, "
            f"expected {context.checkpoint_url!r}"
        )


class PartitionTask:
    """The pipeline of one partition, run on the worker's event loop (see module docstring).

    ``start()`` returns at once (the factory runs in a thread, then the pipeline on the loop);
    ``stop()`` hands the partition over; ``done`` / ``error`` tell how a run that ended by
    itself (a bounded job) ended.
    """

    def __init__(
        self,
        context: TaskContext,
        build: TaskFactory,
        *,
        bootstrap: Literal["replay", "state"] = "replay",
        stop_timeout: float = 30.0,
        poll_interval: float = 0.02,
        observer: TaskObserver | None = None,
    ) -> None:
        self.context = context
        self._observer = observer
        self._build = build
        self._bootstrap = bootstrap
        self.stop_timeout = stop_timeout
        self._poll_interval = poll_interval
        self.pipeline: Pipeline | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._finalizing = False  # the run ended by itself; its final checkpoint is being written
        self.started_at: float | None = None
        self.stopped: StopOutcome | None = None
        self.stop_seconds: float | None = None
        self.stop_checkpoint: int | None = None
        """The checkpoint :meth:`stop` took (the next owner restores it), if it did."""
        self.final_checkpoint: int | None = None
        """The checkpoint of the final state after the run ended by itself (a bounded job)."""

    @property
    def task_id(self) -> str:
        return self.context.task_id

    def start(self) -> None:
        """Build the pipeline (in a thread) and run it, restoring the task's newest checkpoint."""
        if self._runner is not None:
            raise ConfigError(f"task {self.task_id}: already started")
        self.started_at = time.monotonic()
        self._runner = asyncio.create_task(self._run(), name=f"task:{self.task_id}")

    async def _run(self) -> None:
        pipeline = await asyncio.to_thread(self._build, self.context)
        check_task_pipeline(pipeline, self.context)
        give_sinks_to_task(pipeline, self.task_id)
        self.pipeline = pipeline
        log.info("task %s: starting (worker %s)", self.task_id, self.context.worker_id)
        if self._observer is not None:
            self._observer.started(self)
        from .completion import resume_point  # completion imports this module

        try:
            checkpoints = pipeline.checkpoints
            assert checkpoints is not None  # check_task_pipeline
            restore = await resume_point(checkpoints.url, checkpoints.s3)
            if restore != "latest":
                log.info(
                    "task %s: the newest checkpoint is final: restoring %s before it (new "
                    "records after the end would be late against the final flush)",
                    self.task_id,
                    "nothing" if restore is None else f"checkpoint {restore}",
                )
            await pipeline.run(restore=restore, bootstrap=self._bootstrap)
            self._finalizing = True
            self.final_checkpoint = await pipeline.write_final_checkpoint()
        finally:
            if self._observer is not None:
                self._observer.ended(self)

    @property
    def done(self) -> bool:
        """The run ended (finished, failed or stopped)."""
        return self._runner is not None and self._runner.done()

    @property
    def finished(self) -> bool:
        """The run ended by itself without error (a bounded job's partition is complete)."""
        return (
            self.done
            and not self._stopping
            and self._runner is not None
            and not self._runner.cancelled()
            and self._runner.exception() is None
        )

    @property
    def error(self) -> BaseException | None:
        """The error the run ended with (None while running, when finished or stopped)."""
        if not self.done or self._stopping or self._runner is None or self._runner.cancelled():
            return None
        return self._runner.exception()

    async def wait(self) -> None:
        """Until the run ends (raises its error)."""
        assert self._runner is not None
        await self._runner

    def _checkpoint_figures(self) -> dict[str, Any]:
        assert self.pipeline is not None
        figures: dict[str, Any] = self.pipeline.metrics().get("checkpoints") or {}
        return figures

    async def stop(self) -> StopOutcome:
        """Take a checkpoint, then end the run (see the module docstring); idempotent."""
        if self.stopped is not None:
            return self.stopped
        runner = self._runner
        if runner is None:
            self.stopped = "cancelled"
            return self.stopped
        began = time.monotonic()
        if runner.done():
            self.stopped = "failed" if not runner.cancelled() and runner.exception() else "finished"
            return self.stopped
        self._stopping = True
        outcome: StopOutcome = "cancelled"
        checkpoint_id = self._trigger()
        if checkpoint_id is not None:
            before = self._checkpoint_figures().get("failed") or 0
            deadline = began + self.stop_timeout
            while not runner.done() and time.monotonic() < deadline:
                figures = self._checkpoint_figures()
                written = figures.get("last_id") or 0
                if written >= checkpoint_id:
                    outcome = "checkpointed"
                    self.stop_checkpoint = written
                    break
                if (figures.get("failed") or 0) > before:
                    log.warning("task %s: the stop checkpoint failed", self.task_id)
                    break
                await asyncio.wait({runner}, timeout=self._poll_interval)
            else:
                if not runner.done():
                    log.warning(
                        "task %s: checkpoint %d not written within %.0f s; stopping without it "
                        "(the next owner resumes from the previous checkpoint)",
                        self.task_id,
                        checkpoint_id,
                        self.stop_timeout,
                    )
        if self._finalizing and not runner.done():
            # the run ended by itself meanwhile: let it write its final checkpoint (a cancel
            # could land after the write but before it is counted, hiding the newest state)
            remaining = max(0.0, began + self.stop_timeout - time.monotonic())
            await asyncio.wait({runner}, timeout=remaining)
        if runner.done() and not runner.cancelled() and runner.exception() is None:
            outcome = "finished"  # complete: its final checkpoint is the newest
        elif runner.done() and outcome == "cancelled":
            outcome = "failed" if not runner.cancelled() and runner.exception() else "finished"
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, LambdaSourceError, Exception):
            await runner
        self.stopped = outcome
        self.stop_seconds = time.monotonic() - began
        log.info("task %s: stopped (%s) in %.2f s", self.task_id, outcome, self.stop_seconds)
        return outcome

    def _trigger(self) -> int | None:
        """A checkpoint for the stop, or None when the run cannot take one now."""
        pipeline = self.pipeline
        if pipeline is None:
            return None  # still building: nothing ran
        if self._checkpoint_figures().get("url") is None:
            return None  # no coordinator yet (restoring) or a state-bootstrap pass
        try:
            return pipeline.trigger_checkpoint()
        except ConfigError:
            return None  # not running (restoring, or ending)

    def summary(self) -> dict[str, Any]:
        """How this run of the task went (for the worker's ``runs``): outcome, records its
        sources read in this run (a restore starts at 0), the checkpoint it restored, the ones
        it took to stop / at its end, and the newest it wrote (what the next owner restores)."""
        metrics = self.pipeline.metrics() if self.pipeline is not None else {}
        sources = metrics.get("sources") or {}
        return {
            "task": self.task_id,
            "worker_id": self.context.worker_id,
            "outcome": self.stopped or ("finished" if self.finished else "failed"),
            "records": sum(int(s.get("records_out") or 0) for s in sources.values()),
            "restored_from": (metrics.get("checkpoints") or {}).get("restored_from"),
            "stop_checkpoint": self.stop_checkpoint,
            "final_checkpoint": self.final_checkpoint,
            "last_checkpoint": (metrics.get("checkpoints") or {}).get("last_id"),
            "stop_seconds": self.stop_seconds,
            "ended_at": time.time(),
        }

    def metrics(self) -> dict[str, Any]:
        """The pipeline's metrics plus the task's partition and state."""
        state = "building"
        if self.stopped is not None:
            state = f"stopped ({self.stopped})"
        elif self.finished:
            state = "finished"
        elif self.error is not None:
            state = "failed"
        elif self.pipeline is not None:
            state = "running"
        metrics: dict[str, Any] = self.pipeline.metrics() if self.pipeline is not None else {}
        return {
            "task": self.task_id,
            "partition": self.context.partition,
            "state": state,
            "uptime_s": time.monotonic() - self.started_at if self.started_at else 0.0,
            **metrics,
        }
