"""Checkpoint stores and format: atomic writes, verification, pruning, URL parsing, config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import lambdasource as ls
from lambdasource.checkpoints import Checkpoints, LocalStore, S3Store
from lambdasource.checkpoints.coordinator import (
    CheckpointCoordinator,
    check_compatible,
    fingerprint,
)
from lambdasource.checkpoints.format import FORMAT_VERSION, Encoded, Frozen, decode, encode
from lambdasource.checkpoints.store import DATA, MANIFEST, store_for
from lambdasource.errors import CheckpointError, ConfigError, IncompatibleStateError

GRAPH = {"src": "source MemorySource", "window": "WindowOperator(...) keys=['k']"}


def sample_state() -> dict[str, Any]:
    return {
        "ints": np.arange(1000, dtype=np.int64),
        "floats": np.linspace(0, 1, 77),
        "bools": np.array([True, False, True]),
        "objects": np.array(["a", None, "c"], dtype=object),
        "table": pa.table({"k": pa.array([1, 2, 3]), "s": pa.array(["x", "y", None])}),
        "nested": ({"a": (1, 2)}, [frozenset({1, 2})], None),
        "frozen": Frozen.of({"offsets": {0: 12, 1: 40}}),
        "empty": np.zeros(0, dtype=np.int64),
    }


def test_format_round_trips_numpy_arrow_and_python() -> None:
    state = sample_state()
    encoded = encode(state)
    raw = bytearray(encoded.join())
    assert len(raw) == encoded.size
    back = decode(raw, where="test")
    np.testing.assert_array_equal(back["ints"], state["ints"])
    np.testing.assert_array_equal(back["floats"], state["floats"])
    assert back["objects"].tolist() == ["a", None, "c"]
    assert back["table"].equals(state["table"])
    assert back["nested"] == state["nested"]
    assert back["frozen"].thaw() == {"offsets": {0: 12, 1: 40}}
    # arrays come back writable (engines may update restored dense arrays) and aligned
    assert back["ints"].flags.writeable
    assert back["ints"].ctypes.data % 8 == 0


def test_format_rejects_garbage_and_other_versions() -> None:
    with pytest.raises(CheckpointError, match="truncated"):
        decode(bytearray(b"xx"), where="chk-1")
    with pytest.raises(CheckpointError, match="bad magic"):
        decode(bytearray(b"x" * 64), where="chk-1")
    raw = bytearray(encode({"a": 1}).join())
    raw[8] = 99  # format version field
    with pytest.raises(CheckpointError, match="version 99"):
        decode(raw, where="chk-1")
    with pytest.raises(CheckpointError, match="which a checkpoint cannot store"):
        encode({"fn": lambda: 1})


def manifest() -> dict[str, Any]:
    return {"format": "lambdasource-checkpoint", "version": FORMAT_VERSION, "graph": GRAPH}


async def test_local_store_write_list_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "ckpt")
    assert await store.complete_ids() == []
    encoded = encode(sample_state())
    await store.write(7, encoded, manifest())
    assert await store.complete_ids() == [7]
    assert sorted(os.listdir(tmp_path / "ckpt" / "chk-000000000007")) == [MANIFEST, DATA]
    m = await store.read_manifest(7)
    assert m["data"] == {"name": DATA, "bytes": encoded.size, "sha256": encoded.sha256}
    raw = await store.read_data(7, m)
    assert decode(raw, where="t")["nested"] == sample_state()["nested"]


class CrashBeforeManifest(LocalStore):
    async def put_manifest(self, checkpoint_id: int, manifest: bytes) -> None:
        raise OSError("power cut")


async def test_crash_after_data_before_manifest_leaves_nothing_restorable(
    tmp_path: Path,
) -> None:
    crashing = CrashBeforeManifest(tmp_path)
    with pytest.raises(OSError, match="power cut"):
        await crashing.write(1, encode({"x": 1}), manifest())
    store = LocalStore(tmp_path)
    assert (tmp_path / "chk-000000000001" / DATA).exists()
    assert await store.complete_ids() == []
    coordinator = CheckpointCoordinator(Checkpoints(str(tmp_path)), GRAPH, "p")
    assert await coordinator.prepare("latest") is None
    # a later complete checkpoint is found; the incomplete one is pruned with older ones
    await store.write(2, encode({"x": 2}), manifest())
    await store.write(3, encode({"x": 3}), manifest())
    assert await store.prune(keep=1) == [1, 2]
    assert await store.complete_ids() == [3]


async def test_temp_files_are_never_listed_and_partial_writes_are_invisible(
    tmp_path: Path,
) -> None:
    (tmp_path / "chk-000000000004").mkdir()
    (tmp_path / "chk-000000000004" / f".{MANIFEST}.tmp").write_text("{")
    (tmp_path / "not-a-checkpoint").mkdir()
    store = LocalStore(tmp_path)
    assert await store.complete_ids() == []
    assert 4 in await store.list_dirs()


async def test_corrupt_or_truncated_data_is_detected(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.write(1, encode(sample_state()), manifest())
    m = await store.read_manifest(1)
    path = tmp_path / "chk-000000000001" / DATA
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        await store.read_data(1, m)
    path.write_bytes(bytes(raw[:-10]))
    with pytest.raises(CheckpointError, match="bytes, manifest says"):
        await store.read_data(1, m)
    path.unlink()
    with pytest.raises(CheckpointError, match="data missing"):
        await store.read_data(1, m)
    (tmp_path / "chk-000000000001" / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        await store.read_manifest(1)


async def test_prune_keeps_the_newest_and_clear_removes_all(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(1, 6):
        await store.write(i, encode({"i": i}), manifest())
    assert await store.prune(keep=2) == [1, 2, 3]
    assert await store.complete_ids() == [4, 5]
    assert await store.prune(keep=2) == []
    assert await store.clear() == [4, 5]
    assert await store.list_dirs() == {}


async def test_coordinator_rejects_other_formats_and_graphs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.write(1, encode({"checkpoint_id": 1, "nodes": {}}), manifest())
    other = dict(GRAPH, window="WindowOperator(Session('5m')) keys=['k']")
    coordinator = CheckpointCoordinator(Checkpoints(str(tmp_path)), other, "p")
    with pytest.raises(IncompatibleStateError, match="operator=window changed"):
        await coordinator.prepare("latest")
    await store.write(2, encode({"checkpoint_id": 2, "nodes": {}}), dict(manifest(), version=9))
    coordinator = CheckpointCoordinator(Checkpoints(str(tmp_path)), GRAPH, "p")
    with pytest.raises(CheckpointError, match="version 9"):
        await coordinator.prepare(2)
    found = await coordinator.prepare("latest")  # 2 is unreadable: falls back to 1
    assert found == (1, {})
    assert coordinator.skipped_corrupt == [2]
    with pytest.raises(CheckpointError, match="not found"):
        await coordinator.prepare(5)


def test_check_compatible_names_missing_and_extra_nodes() -> None:
    check_compatible(GRAPH, dict(GRAPH), "x")
    with pytest.raises(IncompatibleStateError, match=r"operator=new .*no state in the checkpoint"):
        check_compatible({**GRAPH, "new": "Filter"}, GRAPH, "x")
    with pytest.raises(IncompatibleStateError, match=r"operator=window .*not in the graph"):
        check_compatible({"src": GRAPH["src"]}, GRAPH, "x")
    assert fingerprint(GRAPH) == fingerprint(dict(reversed(GRAPH.items())))


def test_store_for_urls(tmp_path: Path) -> None:
    assert isinstance(store_for(str(tmp_path)), LocalStore)
    local = store_for(f"file://{tmp_path}/x")
    assert isinstance(local, LocalStore) and local.path == tmp_path / "x"
    s3 = store_for("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    with pytest.raises(ConfigError, match="unsupported URL scheme 'gs'"):
        store_for("gs://bucket/x")
    with pytest.raises(ConfigError, match="host"):
        store_for("file://server/share")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": ""}, "url"),
        ({"interval": "0s"}, "interval"),
        ({"interval": "soon"}, "interval"),
        ({"keep": 0}, "keep"),
        ({"tolerable_failures": -1}, "tolerable_failures"),
        ({"s3": {"endpoint_url": "x"}}, "S3Config"),
    ],
)
def test_checkpoints_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Checkpoints(**{"url": "/tmp/x", **kwargs})


def test_pipeline_rejects_a_non_checkpoints_value() -> None:
    with pytest.raises(ConfigError, match=r"expected ls\.Checkpoints"):
        ls.Pipeline(checkpoints="/tmp/x")  # type: ignore[arg-type]


async def test_run_rejects_bad_restore_values(tmp_path: Path) -> None:
    p = ls.Pipeline(checkpoints=Checkpoints(str(tmp_path)))
    p.source(ls.MemorySource(pa.table({"ts": pa.array([1], pa.int64())}), "ts")).sink(
        ls.CollectSink()
    )
    with pytest.raises(ConfigError, match="restore"):
        await p.run(restore="newest")  # type: ignore[arg-type]


class FailingStore(LocalStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.attempts = 0

    async def put_data(self, checkpoint_id: int, data: Encoded) -> None:
        self.attempts += 1
        raise OSError(f"disk full (attempt {self.attempts})")


def _slow_table(n: int = 400) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array(np.arange(n, dtype=np.int64) * 1_000_000).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "k": pa.array(np.arange(n) % 3),
        }
    )


class Slow(ls.MemorySource):
    async def run(self, out: Any) -> None:
        import asyncio

        class Out:
            async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
                await asyncio.sleep(0.002)
                await out.emit(batch, position)

            async def emit_watermark(self, time: int, idle: bool = False) -> None:
                await out.emit_watermark(time, idle)

            async def dead_letter(
                self, batch: pa.RecordBatch, reason: str, position: str | None
            ) -> None:
                await out.dead_letter(batch, reason, position)

            async def barrier_point(self) -> None:
                await out.barrier_point()

        await super().run(Out())


async def test_failed_writes_are_counted_then_fail_the_run(tmp_path: Path) -> None:
    store = FailingStore(tmp_path)
    p = ls.Pipeline(
        checkpoints=Checkpoints(str(tmp_path), interval="5ms", tolerable_failures=2, store=store)
    )
    p.source(Slow(_slow_table(), "ts", batch_size=1)).key_by("k").window(
        ls.Tumbling("10s")
    ).aggregate(n=ls.count()).sink(ls.CollectSink())
    with pytest.raises(CheckpointError, match="disk full"):
        await p.run(restore=None)
    metrics = p.metrics()["checkpoints"]
    assert metrics["failed"] == 3 and metrics["count"] == 0
    assert p.metrics()["status"] == "failed"


class Hooked(Slow):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completed: list[int] = []

    async def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        self.completed.append(checkpoint_id)


async def test_periodic_checkpoints_metrics_hook_and_prune(tmp_path: Path) -> None:
    source = Hooked(_slow_table(), "ts", batch_size=1)
    p = ls.Pipeline(checkpoints=Checkpoints(f"file://{tmp_path}", interval="10ms", keep=2))
    p.source(source).key_by("k").window(ls.Tumbling("10s")).aggregate(n=ls.count()).sink(
        ls.CollectSink()
    )
    await p.run()
    m = p.metrics()["checkpoints"]
    assert m["count"] >= 3 and m["failed"] == 0
    assert source.completed == list(range(1, m["count"] + 1))
    assert m["last_id"] == m["count"] and m["restored_from"] is None
    assert 0 < m["mean_duration_s"] <= m["max_duration_s"]
    assert m["size_bytes"] > 0
    ids = await LocalStore(tmp_path).complete_ids()
    assert ids == [m["count"] - 1, m["count"]]
    raw = json.loads((tmp_path / f"chk-{ids[-1]:012d}" / MANIFEST).read_text())
    assert raw["graph"] == {
        "memory": "source Hooked",
        "window": "WindowOperator(Tumbling('10s'), emit=every, allowed_lateness=0, "
        "time_column=ts, aggregates=[n=count()]) keys=['k']",
    }
    assert raw["lineage"] == 0  # the first run on an empty URL needs no lineage marker
    # a second run resumes from the newest and continues the ids
    source2 = Hooked(_slow_table(), "ts", batch_size=1)
    p2 = ls.Pipeline(checkpoints=Checkpoints(f"file://{tmp_path}", interval="10ms", keep=2))
    p2.source(source2).key_by("k").window(ls.Tumbling("10s")).aggregate(n=ls.count()).sink(
        ls.CollectSink()
    )
    await p2.run()
    assert p2.metrics()["checkpoints"]["restored_from"] == ids[-1]
    assert all(c > ids[-1] for c in source2.completed)
