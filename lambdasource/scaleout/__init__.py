"""Scale-out: one job as N workers of a Kafka consumer group, one task per stream partition.

DESIGN §3 "Tasks (scale-out)". Kafka's group protocol assigns the topic's partitions to the
workers (:mod:`.membership`); a worker (:mod:`.worker`) runs one :class:`PartitionTask`
(:mod:`.task`) per partition it owns — the job's pipeline for that partition, with its own
state, sink instance and checkpoints under ``<checkpoints>/tasks/<topic>-<p>`` — and hands a
partition over through a checkpoint when the group takes it away. :mod:`.local` runs N worker
processes on one machine; :mod:`.jobs` does the same for job files (``lambdasource run job.toml
--workers N`` / ``--join GROUP``).
"""

from .local import run_workers, serve
from .task import PartitionTask, TaskContext, TaskFactory, task_checkpoint_url
from .worker import Worker

__all__ = [
    "PartitionTask",
    "TaskContext",
    "TaskFactory",
    "Worker",
    "run_workers",
    "serve",
    "task_checkpoint_url",
]
