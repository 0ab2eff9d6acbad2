"""Job files as scaled-out jobs: ``lambdasource run job.toml --workers N`` / ``--join GROUP``.

``--workers N`` runs N worker processes on this machine (each ``run job.toml --join GROUP``);
``--join GROUP`` runs one worker here in consumer group GROUP, so the same job file started with
the same ``--join GROUP`` on several machines is one job. Both need ``[stream]`` (the group is a
consumer group of its topic) and ``[checkpoints]`` (state moves between workers through it):
each partition's task checkpoints under ``<[checkpoints] url>/tasks/<topic>-<p>``.

The group's name. ``--join`` names it; ``--workers`` without ``--join`` uses
:func:`default_group`: ``lambdasource-<topic>-<hash of the checkpoint URL>``, so running the
same job file again joins the same group and resumes from the same checkpoints, and two jobs
with different checkpoint URLs never share a group. It is printed when the workers start; other
machines join with ``--join <that name>``.

A task's pipeline is the job file's pipeline for one partition (:class:`JobTasks`): the job is
built as for a single process, checkpointing to the task's location, then its source is
replaced by ``source.for_partition(p, N, key)`` — the stream reads partition ``p`` only and the
lake keeps the rows of ``p`` (archiver lakes by the partition in the file path, other lakes by
Kafka's partitioner over ``key``). ``key`` is the window's key (a raw-row job: the sink's key);
``--key-serializer`` says how the producer serialised it (``string``, ``bytes``, ``int32``,
``int64``, ``json``; default ``string``; a key of several columns needs ``json``). A stream
record whose key belongs to another partition (the topic is not keyed by the window's key) is
an error naming topic, partition and offset.

``--metrics-port PORT`` serves each running task's ``metrics()`` (labels ``worker``, ``task``)
on the worker's Prometheus endpoint; with ``--workers N`` worker ``i`` serves on ``PORT + i``.

Refused before anything runs (:class:`~lambdasource.errors.ConfigError`): no ``[stream]``, no
``[checkpoints]``, and a single-writer store (DuckDB) with more than one worker or with
``--join`` (other machines may join).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import logging
import socket
import sys
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..pipeline import Pipeline
from .local import run_commands, serve
from .task import PartitionTask, TaskContext
from .worker import Worker, default_worker_id

log = logging.getLogger("lambdasource.scaleout")

KEY_SERIALIZERS = ("string", "bytes", "int32", "int64", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The scale-out options of ``lambdasource run``."""
    group = parser.add_argument_group("scale-out (one consumer group, one task per partition)")
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes on this machine (default group: see --join)",
    )
    group.add_argument(
        "--join",
        metavar="GROUP",
        help="run as a worker of consumer group GROUP (the same on every machine); with "
        "--workers, the group of the N local workers (default: lambdasource-<topic>-<hash of "
        "the checkpoint URL>)",
    )
    group.add_argument(
        "--key-serializer",
        default="string",
        choices=KEY_SERIALIZERS,
        help="how the producer serialised the window's key (for the lake's partition split)",
    )
    group.add_argument("--session-timeout", default="10s", help="group session timeout (10s)")
    group.add_argument("--worker-id", help=argparse.SUPPRESS)


def scaled(args: argparse.Namespace) -> bool:
    """The run is a scaled-out one (``--workers`` or ``--join`` given)."""
    return args.workers is not None or args.join is not None


def default_group(spec: Any) -> str:
    """``lambdasource-<topic>-<10 hex of sha256(checkpoint URL)>`` (see the module docstring)."""
    stream = spec.stream or {}
    url = str((spec.checkpoints or {}).get("url", ""))
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return f"lambdasource-{stream.get('topic', 'job')}-{digest}"


def _window_key(spec: Any) -> list[str]:
    if spec.window is not None:
        return list(spec.window.key)
    key = spec.sink.get("key")
    return [key] if isinstance(key, str) else list(key or [])


def check_job(spec: Any, workers: int | None) -> None:
    """ConfigError before anything runs when the job cannot run as ``workers`` workers
    (None: an unknown number, ``--join``): see the module docstring."""
    from ..job import build_job
    from ..sinks.base import require_multi_writer

    if spec.stream is None:
        raise ConfigError(
            f"{spec.origin}: --workers/--join need a [stream] section: workers split the "
            "job by the topic's partitions (a lake-only job runs in one process)"
        )
    if spec.stream.get("kind") == "kinesis":
        raise ConfigError(
            f"{spec.origin}: --workers/--join scale out over a Kafka consumer group; a Kinesis "
            "job runs in one process (shards as scale-out tasks are not built yet)"
        )
    if spec.checkpoints is None:
        raise ConfigError(
            f"{spec.origin}: --workers/--join need a [checkpoints] section (url = ...): a "
            "partition's state moves between workers through its checkpoints (use a location "
            "every worker reaches, e.g. s3://… when they run on several machines)"
        )
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    built = build_job(spec)  # every key, the schema checks
    if workers == 1:
        return
    try:
        require_multi_writer([built.sink], workers)
    except ConfigError as refused:
        raise ConfigError(
            f"{spec.origin}: [sink] url = {spec.sink.get('url')!r}: {refused}"
        ) from None


@dataclasses.dataclass(frozen=True)
class JobTasks:
    """The task factory of a job file: its pipeline for one partition (module docstring)."""

    spec: Any  # a JobSpec
    key_serializer: str = "string"

    def __call__(self, context: TaskContext) -> Pipeline:
        from ..job import build_job

        spec = self.spec
        task_spec = dataclasses.replace(
            spec, checkpoints={**spec.checkpoints, "url": context.checkpoint_url}
        )
        built = build_job(task_spec)
        restrict_source(built.pipeline, context, _window_key(spec), self.key_serializer)
        return built.pipeline

    @property
    def bootstrap(self) -> Literal["replay", "state"]:
        """``[window] bootstrap`` as the job file's single-process run reads it."""
        window = self.spec.validate().window
        return "replay" if window is None else window.bootstrap


def restrict_source(
    pipeline: Pipeline, context: TaskContext, key: list[str], serializer: str
) -> None:
    """Replace the built, unrun ``pipeline``'s source by its partition's:
    ``source.for_partition(partition, partitions, key, partitioner)``."""
    from ..partitioning import KeyPartitioner

    specs = [spec for spec in pipeline._specs if spec.kind == "source"]
    for spec in specs:
        source = spec.source
        for_partition = getattr(source, "for_partition", None)
        if for_partition is None:
            raise ConfigError(
                f"source={spec.name} ({type(source).__name__}) cannot be split by partition "
                "(no for_partition): a job file scales out with a [lake] + [stream] job"
            )
        partitioner = KeyPartitioner(key, context.partitions, serializer=serializer)
        spec.source = for_partition(context.partition, context.partitions, key, partitioner)


def _worker_command(args: argparse.Namespace, group: str, index: int) -> list[str]:
    command = [sys.executable, "-m", "lambdasource", "run", str(args.job), "--join", group]
    command += ["--worker-id", f"{socket.gethostname()}-{index}", "--quiet"]
    command += ["--key-serializer", args.key_serializer]
    command += ["--session-timeout", args.session_timeout]
    port = getattr(args, "metrics_port", None)
    if port is not None:  # one endpoint per worker process: PORT, PORT+1, … (0: free ports)
        command += ["--metrics-port", str(port + index if port else 0)]
        command += ["--metrics-host", getattr(args, "metrics_host", "127.0.0.1")]
    return command


class _ServedTasks:
    """Serves each running task's metrics on the worker's endpoint, labelled worker and task."""

    def __init__(self, endpoint: Any, worker_id: str) -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id

    def started(self, task: PartitionTask) -> None:
        if task.pipeline is not None:
            labels = {"worker": self.worker_id, "task": task.task_id}
            self.endpoint.register(task.pipeline, labels)

    def ended(self, task: PartitionTask) -> None:
        if task.pipeline is not None:
            self.endpoint.unregister(task.pipeline)


def run(spec: Any, args: argparse.Namespace) -> int:
    """``lambdasource run JOB --workers N`` / ``--join GROUP``; the exit code."""
    workers = args.workers
    group = args.join or default_group(spec)
    check_job(spec, workers if args.join is None else None)
    if args.check:
        print(f"{args.job}: ok (as {workers or 1} worker(s) of group {group})")
        return 0
    if workers is not None and workers > 1:
        print(f"{args.job}: {workers} workers in consumer group {group}", file=sys.stderr)
        return run_commands([_worker_command(args, group, i) for i in range(workers)])
    return run_worker(spec, args, group)


def run_worker(spec: Any, args: argparse.Namespace, group: str) -> int:
    """One worker in this process until complete or stopped (SIGINT/SIGTERM: exit 130)."""
    from ..jobfile.build import build_security
    from ..metrics_endpoint import endpoint_from_args, serving

    stream = spec.stream
    tasks = JobTasks(spec, args.key_serializer)
    worker_id = args.worker_id or default_worker_id()
    endpoint = endpoint_from_args(args)
    worker = Worker(
        tasks,
        topic=stream["topic"],
        bootstrap_servers=stream["bootstrap_servers"],
        group=group,
        checkpoints=str(spec.checkpoints["url"]),
        worker_id=worker_id,
        security=build_security(stream.get("security"), Path(spec.base)),
        bootstrap=tasks.bootstrap,
        session_timeout=args.session_timeout,
        observer=None if endpoint is None else _ServedTasks(endpoint, worker_id),
    )
    if not args.quiet:
        print(f"{args.job}: worker {worker.worker_id} joins group {group}", file=sys.stderr)

    async def main() -> None:
        running = asyncio.create_task(serve(worker))
        while not running.done():
            await asyncio.wait({running}, timeout=5.0)
            if not args.quiet and not running.done():
                print(progress_line(worker.metrics()), file=sys.stderr)
        await running

    with serving(endpoint, lambda line: print(line, file=sys.stderr)):
        asyncio.run(main())
    complete = worker.complete
    if not args.quiet:
        print(
            f"worker {worker.worker_id}: {'complete' if complete else 'stopped'}; partitions "
            f"completed here {sorted(worker.finished)}, {len(worker.runs)} task runs",
            file=sys.stderr,
        )
    return 0 if complete else 130


def progress_line(metrics: dict[str, Any]) -> str:
    """One line: the worker's tasks, each with records read and watermark state."""
    tasks = metrics.get("tasks") or {}
    parts = []
    for name, task in sorted(tasks.items()):
        sources = task.get("sources") or {}
        records = sum(int(s.get("records_out") or 0) for s in sources.values())
        parts.append(f"{name}: {task.get('state')} {records:,} records")
    owned = ", ".join(parts) or "no partitions (standby)"
    return f"worker {metrics.get('worker_id')} [{metrics.get('group')}]: {owned}"
