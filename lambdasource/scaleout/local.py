"""N workers on this machine: one process each (all cores), signals forwarded, one exit code.

Workers are separate processes because a worker is one asyncio loop on one core (the engine is
CPU-bound Python + Arrow). :func:`supervise` runs the processes of a job: SIGINT / SIGTERM to
the supervisor is forwarded to every worker (each stops its tasks with a checkpoint and leaves
the group); when a worker exits with an error the others are sent SIGTERM, and the exit code is
that first failure's. The CLI (``lambdasource run job.toml --workers N``) runs N copies of the
same job with ``--join GROUP``; :func:`run_workers` (Python) runs N spawned processes calling
:func:`serve` with the same, picklable, task factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Protocol

from ..errors import ConfigError, ScaleOutError
from ..sinks.base import require_multi_writer
from .task import TaskContext, TaskFactory, sink_specs
from .worker import Worker

log = logging.getLogger("lambdasource.scaleout")

FORWARDED = (signal.SIGINT, signal.SIGTERM)


class _Process(Protocol):
    """What :func:`supervise` needs of a worker process (``Popen`` or ``multiprocessing``)."""

    def poll_code(self) -> int | None: ...

    def send(self, signum: int) -> None: ...

    def kill(self) -> None: ...

    def join(self, timeout: float) -> None: ...


class _Popen:
    def __init__(self, command: Sequence[str]) -> None:
        self.process = subprocess.Popen(list(command))

    def poll_code(self) -> int | None:
        return self.process.poll()

    def send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)


class _Spawned:
    def __init__(self, process: Any) -> None:
        self.process = process

    def poll_code(self) -> int | None:
        code = self.process.exitcode
        return None if code is None else (128 - code if code < 0 else int(code))

    def send(self, signum: int) -> None:
        if self.process.pid is not None and self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def kill(self) -> None:
        self.process.kill()

    def join(self, timeout: float) -> None:
        self.process.join(timeout)


def supervise(processes: Sequence[_Process], *, grace: float = 60.0) -> int:
    """Wait for every worker; forward SIGINT/SIGTERM; on the first failure stop the others.

    Returns 0 when all exited 0, else the first non-zero exit code seen (a worker ended by a
    signal ``s`` counts as ``128 + s``). Workers still running ``grace`` seconds after they were
    asked to stop are killed."""
    first_failure: int | None = None
    asked_at: float | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal asked_at
        asked_at = asked_at or time.monotonic()
        for process in processes:
            process.send(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        running = list(processes)
        while running:
            for process in list(running):
                code = process.poll_code()
                if code is None:
                    continue
                running.remove(process)
                if code != 0 and first_failure is None:
                    first_failure = code
                    log.error("a worker exited with %d: stopping the others", code)
                    asked_at = asked_at or time.monotonic()
                    for other in running:
                        other.send(signal.SIGTERM)
            if asked_at is not None and time.monotonic() - asked_at > grace:
                for process in running:
                    process.kill()
            time.sleep(0.05)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return first_failure or 0


def run_commands(commands: Sequence[Sequence[str]], *, grace: float = 60.0) -> int:
    """Run one worker process per command under :func:`supervise`; its exit code."""
    return supervise([_Popen(command) for command in commands], grace=grace)


async def serve(worker: Worker) -> None:
    """Run ``worker`` on this loop; SIGINT / SIGTERM stop it cleanly (checkpoint, leave)."""
    loop = asyncio.get_running_loop()
    installed = []
    for signum in FORWARDED:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, worker.request_stop)
            installed.append(signum)
    try:
        await worker.run()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _spawned_main(build: TaskFactory, options: dict[str, Any], worker_id: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(Worker(build, worker_id=worker_id, **options)))


def _refuse_single_writers(build: TaskFactory, topic: str, checkpoints: str, workers: int) -> None:
    """ConfigError before any process starts when the job writes to a single-writer store
    (DuckDB): its pipeline for one partition is built (not run) to see its sinks."""
    probe = build(TaskContext(topic, 0, workers, "probe", f"{checkpoints}/probe"))
    require_multi_writer([spec.sink for spec in sink_specs(probe)], workers)


def run_workers(
    build: TaskFactory,
    *,
    topic: str,
    bootstrap_servers: str,
    group: str,
    checkpoints: str,
    workers: int = 1,
    worker_id: str | None = None,
    **options: Any,
) -> None:
    """Run the job ``build`` as ``workers`` workers of consumer group ``group`` on this machine.

    ``build(TaskContext) -> Pipeline`` makes the job's pipeline for one partition (see
    :class:`~lambdasource.scaleout.task.TaskContext`); with ``workers > 1`` it runs in spawned
    processes, so it must be picklable (a module-level function or class instance). Other
    machines join the same job by running the same call (any ``workers``) with the same
    ``group`` and ``checkpoints``. ``options``: :class:`~lambdasource.scaleout.worker.Worker`'s
    (``security``, ``bootstrap``, ``session_timeout``, ``heartbeat_interval``,
    ``rebalance_timeout``, ``stop_timeout``). Returns when every worker ended (a bounded job is
    complete, or SIGINT/SIGTERM); raises :class:`~lambdasource.errors.ScaleOutError` when a
    worker failed.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"run_workers: workers must be an integer >= 1, got {workers!r}")
    settings = dict(
        topic=topic,
        bootstrap_servers=bootstrap_servers,
        group=group,
        checkpoints=checkpoints,
        **options,
    )
    Worker(build, **settings)  # configuration errors before anything runs
    if workers == 1:
        asyncio.run(serve(Worker(build, worker_id=worker_id, **settings)))
        return
    _refuse_single_writers(build, topic, checkpoints, workers)
    context = multiprocessing.get_context("spawn")
    base = worker_id or "worker"
    processes = []
    for index in range(workers):
        process = context.Process(
            target=_spawned_main,
            args=(build, settings, f"{base}-{index}"),
            name=f"lambdasource-worker-{index}",
        )
        process.start()
        processes.append(_Spawned(process))
    code = supervise(processes)
    if code != 0:
        raise ScaleOutError(
            f"run_workers: a worker of group {group} exited with {code} (its log says why)"
        )
