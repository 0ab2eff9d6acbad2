"""Which partitions of a bounded scaled-out job are complete, read from the checkpoint store.

A task whose run ended by itself writes its final state as a checkpoint whose manifest says
``"final": true`` (``Pipeline.write_final_checkpoint``). A partition is complete when the newest
complete checkpoint of the newest lineage at its task location is such a final one. Workers of a
bounded job end only when every partition of the topic is complete, so a partition whose worker
died is never orphaned: the survivors stay in the group until the rebalance hands it to one of
them and it completes there. (A run of the same job started again reads each partition's final
checkpoint as complete until its task has started in the new run: the restore below branches a
new lineage, which holds no final checkpoint yet.)

Resuming a completed partition (:func:`resume_point`). A final checkpoint holds the state
*after* the end-of-input flush: the windows fired and the watermark at the end. Records that
arrive later (a bounded job run again after new stream data, or a live producer while a bounded
job's partition moves to another worker) would be late against it and dropped, where a
single-process re-run (which resumes from its last periodic checkpoint) counts them. So a task
never restores a final checkpoint: it restores the newest non-final one before it and replays
the tail from there (upsert stores make the rewrite idempotent), then the new records.
"""

from __future__ import annotations

from typing import Literal

from ..checkpoints.lineage import Inventory
from ..checkpoints.store import CheckpointStore, store_for
from ..s3 import S3Config
from .task import task_checkpoint_url


async def partition_complete(url: str, s3: S3Config | None = None) -> bool:
    """The newest checkpoint at the task location ``url`` is a final one."""
    store = store_for(url, s3)
    await store.open()
    try:
        _, members = await _newest_lineage(store)
        return bool(members) and bool((await store.read_manifest(members[-1])).get("final"))
    finally:
        await store.close()


async def _newest_lineage(store: CheckpointStore) -> tuple[Inventory, list[int]]:
    """The store's inventory and the checkpoint ids of its newest lineage (oldest first)."""
    inventory = await store.inventory()
    lineage = inventory.newest_lineage()
    return inventory, inventory.members(lineage) if lineage is not None else []


async def complete_partitions(
    checkpoints: str, topic: str, partitions: int, s3: S3Config | None = None
) -> set[int]:
    """The partitions of ``topic`` whose task location holds a final checkpoint."""
    complete = set()
    for partition in range(partitions):
        if await partition_complete(task_checkpoint_url(checkpoints, topic, partition), s3):
            complete.add(partition)
    return complete


async def resume_point(url: str, s3: S3Config | None = None) -> Literal["latest"] | int | None:
    """What the task at ``url`` restores (``Pipeline.run(restore=...)``): ``"latest"`` unless
    the newest checkpoint of the newest lineage is a final one; then the newest non-final
    checkpoint before it (in that lineage, else the checkpoint the lineage branched from), or
    None (start over: no state from before the final flush is left)."""
    store = store_for(url, s3)
    await store.open()
    try:
        inventory, members = await _newest_lineage(store)
        lineage = inventory.newest_lineage()
        if not members or not (await store.read_manifest(members[-1])).get("final"):
            return "latest"
        for checkpoint_id in reversed(members[:-1]):
            if not (await store.read_manifest(checkpoint_id)).get("final"):
                return checkpoint_id
        assert lineage is not None
        parent = (await store.read_marker(lineage)).get("parent")
        if (
            isinstance(parent, int)
            and parent in inventory.complete
            and not (await store.read_manifest(parent)).get("final")
        ):
            return parent
        return None
    finally:
        await store.close()
