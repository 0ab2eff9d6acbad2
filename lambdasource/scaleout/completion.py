"""Which partitions of a bounded scaled-out job are complete, read from the checkpoint store.

A task whose run ended by itself writes its final state as a checkpoint whose manifest says
``"final": true`` (``Pipeline.write_final_checkpoint``). A partition is complete when the newest
complete checkpoint of the newest lineage at its task location is such a final one. Workers of a
bounded job end only when every partition of the topic is complete, so a partition whose worker
died is never orphaned: the survivors stay in the group until the rebalance hands it to one of
them and it completes there. (A run of the same job started again reads each partition's final
checkpoint as complete until its task has checkpointed in the new run.)
"""

from __future__ import annotations

from ..checkpoints.store import store_for
from ..s3 import S3Config
from .task import task_checkpoint_url


async def partition_complete(url: str, s3: S3Config | None = None) -> bool:
    """The newest checkpoint at the task location ``url`` is a final one."""
    store = store_for(url, s3)
    await store.open()
    try:
        inventory = await store.inventory()
        lineage = inventory.newest_lineage()
        members = inventory.members(lineage) if lineage is not None else []
        if not members:
            return False
        manifest = await store.read_manifest(members[-1])
        return bool(manifest.get("final"))
    finally:
        await store.close()


async def complete_partitions(
    checkpoints: str, topic: str, partitions: int, s3: S3Config | None = None
) -> set[int]:
    """The partitions of ``topic`` whose task location holds a final checkpoint."""
    complete = set()
    for partition in range(partitions):
        if await partition_complete(task_checkpoint_url(checkpoints, topic, partition), s3):
            complete.add(partition)
    return complete
