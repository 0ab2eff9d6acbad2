"""Node names keep checkpointed state where it belongs when the graph is edited.

State is stored under each stateful node's name. Stateless steps (filter, map, union) are not in
checkpoints, so inserting one in front of a window keeps the window's state; colliding generated
names of stateful nodes must be pinned with ``name=`` when checkpointing; an incompatible
checkpoint names the operator lacking state, the names the checkpoint holds, and ``name=``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lambdasource.checkpoints import Checkpoints
from lambdasource.errors import IncompatibleStateError

from .test_checkpoints_restore import (
    Crash,
    CrashingSource,
    make_data,
    rows_of,
    store_of,
)

DATA = make_data(seed=41, rows=400)
BATCH = 20  # 20 batches


def job(
    url: Path | None,
    *,
    edited: bool = False,
    window_name: str | None = None,
    checkpoint_at: tuple[int, ...] = (),
    crash_at: int | None = None,
) -> tuple[ls.Pipeline, ls.CollectSink]:
    """source → [filter → map, when ``edited``] → key_by → window → sink."""
    p = ls.Pipeline(checkpoints=None if url is None else Checkpoints(str(url), interval="1h"))
    source = CrashingSource(
        DATA,
        batch_size=BATCH,
        out_of_orderness="3m",
        checkpoint_at=checkpoint_at,
        crash_at=crash_at,
    )
    source.pipeline = p
    stream = p.source(source)
    if edited:  # stateless steps that change nothing in the data
        stream = stream.filter(pc.field("k") >= 0).map(lambda b: b, schema=DATA.schema)
    sink = ls.CollectSink()
    (
        stream.key_by("k")
        .window(ls.Sliding("30m", "10m"), emit="changes", name=window_name)
        .aggregate(n=ls.count(), total=ls.sum("x"))
        .sink(sink)
    )
    return p, sink


async def test_inserting_stateless_steps_before_a_window_keeps_its_state(tmp_path: Path) -> None:
    base, base_sink = job(None)
    await base.run()
    want = store_of(rows_of(base_sink.table()), "changes")

    first, first_sink = job(tmp_path, checkpoint_at=(6, 11), crash_at=14)
    with pytest.raises(ls.SourceError) as failed:
        await first.run(restore=None)
    assert isinstance(failed.value.__cause__, Crash)

    edited, edited_sink = job(tmp_path, edited=True)
    await edited.run()
    assert edited.metrics()["checkpoints"]["restored_from"] == 2
    assert edited.metrics()["sources"]["memory"]["records_out"] == DATA.num_rows - 11 * BATCH
    got = store_of(rows_of(first_sink.table()) + rows_of(edited_sink.table()), "changes")
    assert got == want


async def test_stateless_nodes_are_left_out_of_checkpoints(tmp_path: Path) -> None:
    p, _ = job(tmp_path, edited=True, checkpoint_at=(3,))
    await p.run(restore=None)
    (cid,) = p.metrics()["checkpoints"]["completed"]
    assert set(p.snapshots[cid]) == {"memory", "window"}


def two_windows(url: Path | None, names: tuple[str | None, str | None]) -> ls.Pipeline:
    p = ls.Pipeline(checkpoints=None if url is None else Checkpoints(str(url), interval="1h"))
    s = p.source(ls.MemorySource(DATA, "ts", batch_size=50)).key_by("k")
    s.window(ls.Tumbling("10m"), name=names[0]).aggregate(n=ls.count()).sink(ls.CollectSink())
    s.window(ls.Tumbling("1h"), name=names[1]).aggregate(n=ls.count()).sink(ls.CollectSink())
    return p


async def test_colliding_generated_names_of_stateful_nodes_need_name_with_checkpoints(
    tmp_path: Path,
) -> None:
    with pytest.raises(ls.ConfigError, match=r"named 'window'.*name=.*\.window\(\.\.\., name="):
        await two_windows(tmp_path, (None, None)).run()
    # naming one is enough: the other is then the only node named "window"
    p = two_windows(tmp_path, ("per_10m", None))
    await p.run()
    assert set(p.metrics()["operators"]) == {"per_10m", "window"}
    p = two_windows(tmp_path / "b", ("per_10m", "per_hour"))
    await p.run()
    assert set(p.metrics()["operators"]) == {"per_10m", "per_hour"}
    # without checkpoints, counters are fine (nothing is restored by name)
    p = two_windows(None, (None, None))
    await p.run()
    assert set(p.metrics()["operators"]) == {"window", "window#2"}


async def test_an_explicit_name_is_unique() -> None:
    with pytest.raises(ls.ConfigError, match="name='w' is used twice"):
        two_windows(None, ("w", "w"))


async def test_a_generated_name_may_not_shadow_an_explicit_one_with_checkpoints(
    tmp_path: Path,
) -> None:
    with pytest.raises(ls.ConfigError, match="like an explicitly named node"):
        await two_windows(tmp_path, (None, "window")).run()


async def test_incompatible_state_error_names_the_operator_the_held_names_and_name(
    tmp_path: Path,
) -> None:
    first, _ = job(tmp_path, window_name="user_30m", checkpoint_at=(4,))
    await first.run(restore=None)
    renamed, _ = job(tmp_path, window_name="clicks_30m")
    with pytest.raises(IncompatibleStateError) as info:
        await renamed.run()
    message = str(info.value)
    assert "operator=clicks_30m" in message and "has no state in the checkpoint" in message
    assert "user_30m (WindowOperator(" in message  # what the checkpoint holds
    assert "pass name='user_30m'" in message  # same configuration: the hint names it
    # pinning the name restores the state
    pinned, _ = job(tmp_path, window_name="user_30m")
    await pinned.run()
    assert pinned.metrics()["checkpoints"]["restored_from"] == 1


def test_process_names_follow_the_operator_class() -> None:
    class Counter(ls.Operator):
        pass

    p = ls.Pipeline()
    table = pa.table({"ts": pa.array([1, 2], pa.int64()), "x": [1, 2]})
    s = p.source(ls.MemorySource(table, "ts"))
    sink = s.process(Counter()).filter(pc.field("x") > 0).sink(ls.CollectSink())
    p.run_sync()
    assert len(sink) == 2
    assert set(p.metrics()["operators"]) == {"Counter", "filter"}
