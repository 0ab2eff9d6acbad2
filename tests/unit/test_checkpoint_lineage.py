"""Lineages: starting fresh never deletes a job's recovery point; pruning stays in its lineage.

``run(restore=None)`` starts a new lineage beside the earlier checkpoints; ``restore="latest"``
resumes the newest lineage; restoring an older checkpoint by id branches a new lineage from it;
``keep`` prunes only the lineage being written; ``Checkpoints.clear()`` is the one way to delete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import lambdasource as ls
from lambdasource.checkpoints import Checkpoints, LocalStore
from lambdasource.checkpoints.lineage import MARKER
from lambdasource.checkpoints.store import MANIFEST

from .test_checkpoints_restore import Crash, build, make_data, rows_of, store_of, uninterrupted

DATA = make_data(seed=31, rows=300)
KW: dict[str, Any] = dict(window="sliding", emit="changes", batch_size=20)  # 15 batches


async def run(
    url: Path,
    *,
    restore: Any = "latest",
    checkpoint_at: tuple[int, ...] = (),
    crash_at: int | None = None,
    keep: int = 3,
) -> tuple[ls.Pipeline, list[dict[str, Any]]]:
    """One run of the test job; returns the pipeline and the rows it emitted."""
    p, _, sink = build(
        DATA,
        checkpoints=Checkpoints(str(url), interval="1h", keep=keep),
        checkpoint_at=checkpoint_at,
        crash_at=crash_at,
        **KW,
    )
    if crash_at is None:
        await p.run(restore=restore)
    else:
        with pytest.raises(ls.SourceError) as failed:
            await p.run(restore=restore)
        assert isinstance(failed.value.__cause__, Crash)
    return p, rows_of(sink.table())


def ckpt(p: ls.Pipeline) -> dict[str, Any]:
    return dict(p.metrics()["checkpoints"])


async def test_fresh_start_keeps_earlier_checkpoints_and_latest_resumes_the_new_lineage(
    tmp_path: Path,
) -> None:
    want = store_of(await uninterrupted(DATA, **KW), "changes")
    first, _ = await run(tmp_path, restore=None, checkpoint_at=(3, 6), crash_at=9)
    assert ckpt(first)["lineage"] == 0
    assert await LocalStore(tmp_path).complete_ids() == [1, 2]

    # a fresh start (say, a typo'd restore setting): the job's recovery point survives
    fresh, fresh_rows = await run(tmp_path, restore=None, checkpoint_at=(5,), crash_at=8)
    assert ckpt(fresh)["restored_from"] is None
    assert ckpt(fresh)["lineage"] == 3  # a new lineage, numbered after everything present
    assert await LocalStore(tmp_path).complete_ids() == [1, 2, 3]
    marker = json.loads((tmp_path / "chk-000000000003" / MARKER).read_text())
    assert marker["lineage"] == 3 and marker["parent"] is None
    manifest = json.loads((tmp_path / "chk-000000000003" / MANIFEST).read_text())
    assert manifest["lineage"] == 3

    # "latest" resumes the newest lineage (3), not the older, higher-progress checkpoint 2
    resumed, resumed_rows = await run(tmp_path)
    assert ckpt(resumed)["restored_from"] == 3
    assert store_of(fresh_rows + resumed_rows, "changes") == want
    # and the old lineage can still be restored by id
    again, _ = await run(tmp_path, restore=2)
    assert ckpt(again)["restored_from"] == 2


async def test_pruning_only_touches_the_lineage_being_written(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await run(tmp_path, restore=None, checkpoint_at=(2, 4, 6), keep=2)  # ids 1, 2, 3
    assert await store.complete_ids() == [2, 3]

    fresh, _ = await run(tmp_path, restore=None, checkpoint_at=(2, 4, 6), keep=2)  # 4, 5, 6
    assert ckpt(fresh)["lineage"] == 4
    assert await store.complete_ids() == [2, 3, 5, 6]
    assert (await store.list_dirs())[4] == {MARKER}  # pruned state, the marker stays

    resumed, _ = await run(tmp_path, keep=2)
    assert ckpt(resumed)["restored_from"] == 6

    # restoring an older checkpoint branches: the new lineage prunes only its own checkpoints
    branch, _ = await run(tmp_path, restore=2, checkpoint_at=(8, 10, 12), keep=2)  # 7, 8, 9
    assert ckpt(branch)["restored_from"] == 2 and ckpt(branch)["lineage"] == 7
    assert await store.complete_ids() == [2, 3, 5, 6, 8, 9]
    marker = json.loads((tmp_path / "chk-000000000007" / MARKER).read_text())
    assert marker["parent"] == 2

    latest, _ = await run(tmp_path, keep=2)
    assert ckpt(latest)["restored_from"] == 9 and ckpt(latest)["lineage"] == 7

    assert await Checkpoints(str(tmp_path)).clear() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert await store.list_dirs() == {}


async def test_restoring_the_newest_checkpoint_by_id_continues_its_lineage(
    tmp_path: Path,
) -> None:
    await run(tmp_path, restore=None, checkpoint_at=(2, 4), crash_at=6)  # ids 1, 2
    again, _ = await run(tmp_path, restore=2, checkpoint_at=(8,))  # id 3, same lineage
    assert ckpt(again)["restored_from"] == 2 and ckpt(again)["lineage"] == 0
    assert MARKER not in (await LocalStore(tmp_path).list_dirs())[3]


async def test_a_branch_without_checkpoints_resumes_from_its_start(tmp_path: Path) -> None:
    await run(tmp_path, restore=None, checkpoint_at=(2, 4, 6), crash_at=8)  # ids 1, 2, 3
    branch, _ = await run(tmp_path, restore=1, crash_at=9)  # no checkpoint of its own
    assert ckpt(branch)["restored_from"] == 1 and ckpt(branch)["lineage"] == 4
    latest, _ = await run(tmp_path)
    assert ckpt(latest)["restored_from"] == 1  # the branch's start, not checkpoint 3


async def test_a_fresh_lineage_without_checkpoints_starts_fresh_again(tmp_path: Path) -> None:
    await run(tmp_path, restore=None, checkpoint_at=(2, 4), crash_at=6)  # ids 1, 2
    await run(tmp_path, restore=None, crash_at=5)  # fresh, crashed before its first checkpoint
    latest, _ = await run(tmp_path, crash_at=5)
    assert ckpt(latest)["restored_from"] is None  # not the older lineage's checkpoint 2
    assert ckpt(latest)["lineage"] == 3
    again, _ = await run(tmp_path, restore=None, crash_at=5)
    assert ckpt(again)["lineage"] == 3  # an empty fresh lineage is reused, not piled up
    assert sorted(await LocalStore(tmp_path).list_dirs()) == [1, 2, 3]


async def test_restore_of_a_missing_id_lists_checkpoints_by_lineage(tmp_path: Path) -> None:
    await run(tmp_path, restore=None, checkpoint_at=(2,), crash_at=4)  # id 1
    await run(tmp_path, restore=None, checkpoint_at=(2,), crash_at=4)  # lineage 2: id 2
    with pytest.raises(ls.CheckpointError, match=r"not found .*lineage: 0: \[1\]; 2: \[2\]"):
        await run(tmp_path, restore=7)
