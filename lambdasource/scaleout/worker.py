"""A worker of a scaled-out job: one process, one asyncio loop, one task per partition it owns.

:class:`Worker` joins the job's consumer group (:class:`~.membership.GroupMembership`) and follows
its assignment: on revoke (eager: every partition, before the rejoin) it stops every task with a
checkpoint, concurrently, and returns only when all have stopped; on assign it starts a
:class:`~.task.PartitionTask` per partition, which restores the partition's newest checkpoint,
whoever wrote it. No coordinator of our own: Kafka's group protocol decides who owns what, and
the checkpoint store carries the state between owners.

Ending. An unbounded job's worker runs until :meth:`Worker.request_stop` (SIGTERM / Ctrl-C in
the CLI): it stops its tasks with a checkpoint and leaves the group, so the others take its
partitions at once. In a bounded job (``stop_at="latest"``) a task ends when its partition is
complete and writes a final checkpoint; a worker never restarts a partition it completed itself,
and it ends only when *every* partition of the topic is complete (:mod:`.completion`, polled
every ``completion_poll`` s once its own are), so the partitions of a worker that died are
taken over by the ones still in the group. A worker whose assignment is empty (more workers
than partitions) waits as a standby.

A task that fails fails the worker (:class:`~lambdasource.errors.ScaleOutError` naming the task,
with the task's error as its cause) after the other tasks stopped with a checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Literal

from ..errors import ConfigError, ScaleOutError
from ..kafka_security import KafkaSecurity
from ..s3 import S3Config
from ..timeutil import Duration, parse_duration
from .completion import complete_partitions
from .membership import GroupMembership
from .task import (
    PartitionTask,
    StopOutcome,
    TaskContext,
    TaskFactory,
    TaskObserver,
    task_checkpoint_url,
)

log = logging.getLogger("lambdasource.scaleout")


def default_worker_id() -> str:
    """``host-pid``: unique among the workers of a group, readable in logs and metrics."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """One worker of the job ``build`` on ``topic`` in consumer group ``group`` (see module).

    ``checkpoints``: the job's checkpoint URL; each task checkpoints under
    ``<checkpoints>/tasks/<topic>-<p>``. ``bootstrap``: ``Pipeline.run(bootstrap=...)`` of every
    task. ``session_timeout`` / ``heartbeat_interval`` / ``rebalance_timeout``: the group's
    timing (a killed worker's partitions move after ``session_timeout``). ``stop_timeout``
    (default: a third of ``rebalance_timeout``): how long a revoked task waits for its
    checkpoint before it is cancelled. ``s3``: the checkpoint store's S3 settings (default:
    the AWS environment), for reading which partitions are complete. ``observer``: told when
    each task's pipeline starts and ends (:class:`~.task.TaskObserver`).
    """

    def __init__(
        self,
        build: TaskFactory,
        *,
        topic: str,
        bootstrap_servers: str,
        group: str,
        checkpoints: str,
        worker_id: str | None = None,
        security: KafkaSecurity | None = None,
        bootstrap: Literal["replay", "state"] = "replay",
        session_timeout: Duration = "10s",
        heartbeat_interval: Duration = "1s",
        rebalance_timeout: Duration = "60s",
        stop_timeout: Duration | None = None,
        s3: S3Config | None = None,
        completion_poll: float = 1.0,
        observer: TaskObserver | None = None,
    ) -> None:
        if not callable(build):
            raise ConfigError(
                f"Worker: build must be a callable TaskContext -> Pipeline: {build!r}"
            )
        if not isinstance(checkpoints, str) or not checkpoints:
            raise ConfigError(
                "Worker: checkpoints must be the job's checkpoint URL: state moves between "
                "workers through it"
            )
        self.build = build
        self.topic = topic
        self.group = group
        self.checkpoints = checkpoints
        self.worker_id = worker_id or default_worker_id()
        self.bootstrap = bootstrap
        rebalance_us = parse_duration(rebalance_timeout, name="rebalance_timeout")
        stop_us = (
            rebalance_us // 3
            if stop_timeout is None
            else parse_duration(stop_timeout, name="stop_timeout")
        )
        if stop_us >= rebalance_us:
            raise ConfigError(
                "Worker: stop_timeout must be shorter than rebalance_timeout (a revoke that "
                "outlasts the rebalance would let two workers run one partition)"
            )
        self.stop_timeout = stop_us / 1e6
        self.membership = GroupMembership(
            topic,
            bootstrap_servers,
            group,
            self._revoked,
            self._assigned,
            security=security,
            session_timeout=session_timeout,
            heartbeat_interval=heartbeat_interval,
            rebalance_timeout=rebalance_timeout,
            client_id=f"lambdasource-{self.worker_id}",
        )
        self.tasks: dict[int, PartitionTask] = {}
        self.finished: set[int] = set()
        """Partitions whose task this worker ran to completion (never restarted here)."""
        self.runs: list[dict[str, Any]] = []
        """Per task run that ended here: :meth:`PartitionTask.summary` (outcome, records)."""
        self._assignment: set[int] | None = None
        self._failures: list[tuple[str, BaseException]] = []
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self.started_at: float | None = None
        self.s3 = s3
        self.observer = observer
        self.completion_poll = completion_poll
        self._next_completion_check = 0.0
        self.complete = False
        """Every partition of the topic is complete (a bounded job's end; see run())."""

    # group callbacks ----------------------------------------------------------------------------

    async def _revoked(self, partitions: set[int]) -> None:
        """Stop every task (eager rebalance), each with a checkpoint, before the rejoin."""
        self._assignment = None
        await self._stop_tasks()

    async def _assigned(self, partitions: set[int]) -> None:
        """Start a task per new partition (returns at once: heartbeats resume after it)."""
        count = self.membership.partitions or 0
        for partition in sorted(partitions):
            if partition in self.finished or partition in self.tasks:
                continue
            context = TaskContext(
                topic=self.topic,
                partition=partition,
                partitions=count,
                worker_id=self.worker_id,
                checkpoint_url=task_checkpoint_url(self.checkpoints, self.topic, partition),
            )
            task = PartitionTask(
                context,
                self.build,
                bootstrap=self.bootstrap,
                stop_timeout=self.stop_timeout,
                observer=self.observer,
            )
            task.start()
            self.tasks[partition] = task
        self._assignment = set(partitions)
        self._changed.set()

    async def _stop_tasks(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks = {}
        if not tasks:
            return
        outcomes: list[StopOutcome] = await asyncio.gather(*(task.stop() for task in tasks))
        for task, outcome in zip(tasks, outcomes, strict=True):
            if outcome == "finished":
                self.finished.add(task.context.partition)
            elif outcome == "failed" and task.error is not None:
                self._failures.append((task.task_id, task.error))
            self.runs.append(task.summary())
        self._changed.set()

    # running ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """End the run: tasks stop with a checkpoint, the worker leaves the group."""
        self._stop.set()
        self._changed.set()

    def _owned_done(self) -> bool:
        """Outside a rebalance, every partition owned here (maybe none) ran to its end."""
        assignment = self._assignment
        return assignment is not None and all(p in self.finished for p in assignment)

    async def _job_complete(self) -> bool:
        """Every partition of the topic is complete (:mod:`.completion`), checked at most
        every ``completion_poll`` seconds."""
        now = time.monotonic()
        if now < self._next_completion_check:
            return False
        self._next_completion_check = now + self.completion_poll
        partitions = self.membership.partitions or 0
        done = await complete_partitions(self.checkpoints, self.topic, partitions, self.s3)
        self.complete = partitions > 0 and len(done) == partitions
        return self.complete

    def _collect(self) -> None:
        """Move tasks that ended by themselves to ``finished`` / ``_failures``."""
        for partition, task in list(self.tasks.items()):
            if task.finished:
                self.finished.add(partition)
                del self.tasks[partition]
                self.runs.append(task.summary())
                log.info("task %s: complete", task.task_id)
            elif task.error is not None:
                self._failures.append((task.task_id, task.error))
                del self.tasks[partition]
            elif task.done and task.stopped is None:  # cancelled from outside: not complete
                error = ScaleOutError(f"task {task.task_id}: its run was cancelled")
                self._failures.append((task.task_id, error))
                del self.tasks[partition]

    async def run(self) -> None:
        """Join the group and run tasks until stopped, complete (bounded) or failed."""
        self.started_at = time.monotonic()
        await self.membership.start()
        member = asyncio.create_task(self.membership.run(), name=f"group:{self.group}")
        try:
            while True:
                self._changed.clear()
                self._collect()
                if self._failures:
                    task, error = self._failures[0]
                    raise ScaleOutError(
                        f"worker {self.worker_id}: task {task} failed: {error}"
                    ) from error
                if member.done():
                    member.result()  # raises the group's error
                    raise ScaleOutError(f"worker {self.worker_id}: group membership ended")
                if self._stop.is_set():
                    break
                owned_done = self._owned_done()
                if owned_done and await self._job_complete():
                    break
                runners = [t._runner for t in self.tasks.values() if t._runner is not None]
                waiting: set[asyncio.Future[Any]] = {member, *runners}
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait(
                        {changed, *waiting},
                        timeout=self.completion_poll if owned_done else None,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    changed.cancel()
        finally:
            await self._stop_tasks()  # still a member meanwhile: nobody else owns them yet
            member.cancel()
            await asyncio.gather(member, return_exceptions=True)
            await self.membership.stop()
        log.info(
            "worker %s: done (%s)",
            self.worker_id,
            "complete" if self.complete else "stopped",
        )

    def metrics(self) -> dict[str, Any]:
        """The worker's group state and, per running task, its pipeline's metrics."""
        return {
            "worker_id": self.worker_id,
            **self.membership.metrics(),
            "uptime_s": time.monotonic() - self.started_at if self.started_at else 0.0,
            "tasks": {task.task_id: task.metrics() for task in self.tasks.values()},
            "finished": sorted(self.finished),
            "runs": list(self.runs[-100:]),
        }
