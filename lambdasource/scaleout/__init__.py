"""Scale-out: one job as N workers of a Kafka consumer group, one task per stream partition.

DESIGN §3 "Tasks (scale-out)". Kafka's group protocol assigns the topic's partitions to the
workers (:mod:`.membership`); a worker (:mod:`.worker`) runs one :class:`PartitionTask`
(:mod:`.task`) per partition it owns — the job's pipeline for that partition, with its own
state, sink instance and checkpoints under ``<checkpoints>/tasks/<topic>-<p>`` — and hands a
partition over through a checkpoint when the group takes it away. :mod:`.completion` tells
when a bounded job is complete (every partition's newest checkpoint is a final one);
:mod:`.local` runs N worker processes on one machine; :mod:`.jobs` does the same for job files
(``lambdasource run job.toml --workers N`` / ``--join GROUP``).

Watermarks are per task: a keyed window's records all live in one partition, so its window
completes by that partition's watermark, not by the minimum over all partitions as in one
process. Complete windows hold the same rows either way; a bounded run with
``flush="watermark"`` ends with the windows each partition's own newest time completes (more
than one process, whose final watermark is the slowest partition's), and a record is late
against its own partition's watermark.
"""

from .local import run_workers, serve
from .task import PartitionTask, TaskContext, TaskFactory, TaskObserver, task_checkpoint_url
from .worker import Worker

__all__ = [
    "PartitionTask",
    "TaskContext",
    "TaskFactory",
    "TaskObserver",
    "Worker",
    "run_workers",
    "serve",
    "task_checkpoint_url",
]
