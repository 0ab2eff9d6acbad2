"""Checkpoint state without pickle: every state tree round-trips exactly, reading a checkpoint
never runs code (pickle checkpoints are refused, forged trees are errors), and state that is not
plain data fails the checkpoint naming its owner."""

from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lambdasource.checkpoints.format import MAGIC, Frozen, decode, encode
from lambdasource.checkpoints.store import DATA, MANIFEST
from lambdasource.errors import CheckpointError
from tests.unit.test_checkpoints_restore import CrashingSource

# --- round trips ----------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
hashables = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4)),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=4,
)
numeric_dtypes = st.sampled_from(
    ["<i8", "<i4", "|u1", "<u8", "<f8", "<f4", "|b1", "<M8[us]", "<m8[ns]", "<c16"]
)


@st.composite
def ndarrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(numeric_dtypes))
    shape = draw(st.sampled_from([(0,), (1,), (5,), (2, 3), ()]))
    raw = draw(
        st.binary(
            min_size=dtype.itemsize * math.prod(shape), max_size=dtype.itemsize * math.prod(shape)
        )
    )
    array = np.frombuffer(raw, dtype=np.uint8).view(dtype).reshape(shape).copy()
    if draw(st.booleans()) and array.ndim == 2:
        return array[:, ::2]  # not contiguous
    return array


object_arrays = st.lists(
    st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3)),
    max_size=6,
).map(
    lambda items: (
        np.array([*items, frozenset({1})], dtype=object)[:-1]
        if items
        else np.empty(0, dtype=object)
    )
)


@st.composite
def arrow_tables(draw: st.DrawFn) -> pa.Table:
    rows = draw(st.integers(0, 5))
    ints = draw(
        st.lists(
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=rows, max_size=rows
        )
    )
    text = draw(st.lists(st.one_of(st.none(), st.text(max_size=3)), min_size=rows, max_size=rows))
    return pa.table({"k": pa.array(ints, pa.int64()), "s": pa.array(text, pa.string())})


leaves = st.one_of(scalars, ndarrays(), object_arrays, arrow_tables())
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.dictionaries(hashables, inner, max_size=3),
        st.sets(hashables, max_size=3),
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Exact equality: types included, NaN equal to NaN, arrays by dtype, shape and bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype == object:
            return all(
                same(x, y) for x, y in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True)
            )
        return bool(np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())
    if isinstance(a, pa.Table):
        return bool(a.equals(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(trees)
def test_every_state_tree_round_trips_exactly(tree: Any) -> None:
    back = decode(bytearray(encode(tree).join()), where="test")
    assert same(tree, back), (tree, back)
    assert same(tree, Frozen.of(tree).thaw())


def test_arrow_objects_numpy_scalars_and_records_round_trip() -> None:
    batch = pa.record_batch({"t": pa.array([1, None], pa.timestamp("us", "UTC"))})
    state = {
        "batch": batch,
        "array": pa.array([1.5, None]),
        "chunked": pa.chunked_array([[1], [2, 3]]),
        "schema": batch.schema,
        "dtype": pa.decimal128(10, 2),
        "scalars": (np.int32(-3), np.float64("nan"), np.datetime64(5, "us"), np.bool_(True)),
        "timer": ls.operator.Timer(5, "event", ("user", 1)),
        "mixed": np.array([1, 1.5, "x", None], dtype=object),
    }
    back = decode(bytearray(encode(state).join()), where="test")
    assert back["batch"].equals(batch) and back["array"].equals(state["array"])
    assert back["chunked"].equals(state["chunked"]) and back["schema"].equals(batch.schema)
    assert back["dtype"] == pa.decimal128(10, 2)
    assert [type(v) for v in back["scalars"]] == [type(v) for v in state["scalars"]]
    assert back["scalars"][0] == -3 and math.isnan(back["scalars"][1])
    assert back["timer"] == state["timer"] and back["timer"].key == ("user", 1)
    # one column per type would turn 1 into 1.0: values of several types keep their own
    assert [type(v) for v in back["mixed"]] == [int, float, str, type(None)]


# --- reading never runs code ----------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: the proof that a pickle was read."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def pickle_state(marker: Path) -> bytearray:
    """A state.bin of format version 1 (pickle) whose pickle runs code when read."""
    stream = pickle.dumps({"nodes": _Payload(marker)}, protocol=5)
    return bytearray(struct.pack("<8sIIQ", MAGIC, 1, 0, len(stream)) + stream)


def test_a_pickle_checkpoint_is_refused_without_being_read(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pickle.loads(pickle_state(marker)[24:])  # the payload works: reading it creates the marker
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"pickle format .* does not read") as refused:
        decode(pickle_state(marker), where="chk-7")
    assert "restore=None" in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"$": "record", "type": "os.system", "v": {}}, "unknown state record type 'os.system'"),
        ({"$": "custom", "type": "subprocess.run", "v": []}, "unknown state type"),
        ({"$": "ndarray", "dtype": "|O", "shape": [1], "buf": 0}, "is not plain data"),
        ({"$": "ndarray", "dtype": "<i8", "shape": [9], "buf": 0}, "has 8 bytes"),
        ({"$": "batch", "buf": 0}, "Arrow IPC buffer is invalid"),
        ({"$": "bytes", "buf": 3}, "names buffer 3"),
        ({"$": "eval", "v": "__import__('os')"}, "unknown node kind 'eval'"),
        ({"$": "map", "v": [1]}, "cannot be decoded"),
    ],
)
def test_forged_state_trees_are_errors(tree: dict[str, Any], message: str) -> None:
    body = json.dumps(tree).encode()
    header = struct.pack("<8sIIQ", MAGIC, 2, 1, len(body)) + struct.pack("<Q", 8)
    data = header + body
    data += b"\0" * ((-len(data)) % 64) + b"\1" * 8
    with pytest.raises(CheckpointError, match=message):
        decode(bytearray(data), where="chk-1")


# --- through a pipeline ---------------------------------------------------------------------------


class _Count(ls.Operator):
    """Counts rows; its snapshot holds whatever ``extra`` is."""

    def __init__(self, extra: Any = None) -> None:
        super().__init__()
        self.rows = 0
        self.extra = extra

    def on_batch(self, batch: pa.RecordBatch, ctx: Any) -> None:
        self.rows += batch.num_rows
        ctx.emit(batch)

    def snapshot(self) -> Any:
        return {"rows": self.rows, "extra": self.extra}

    def restore(self, state: Any) -> None:
        self.rows = state["rows"]


def _pipeline(url: str, extra: Any = None) -> ls.Pipeline:
    """A pipeline through ``_Count`` whose source triggers one checkpoint before batch 5."""
    times = pa.array(np.arange(2_000, dtype=np.int64) * 1_000_000, pa.timestamp("us", "UTC"))
    table = pa.table({"ts": times, "k": pa.array(np.arange(2_000) % 7)})
    p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="1h"))
    source = CrashingSource(table, checkpoint_at=(5,), batch_size=100)
    source.pipeline = p
    p.source(source).filter(pc.field("k") >= 0).process(_Count(extra), name="count").sink(
        ls.CollectSink()
    )
    return p


def test_a_pipeline_refuses_an_old_pickle_checkpoint_and_names_the_way_out(tmp_path: Path) -> None:
    url = (tmp_path / "ckpt").as_uri()
    first = _pipeline(url)
    first.run_sync(restore=None)
    assert first.metrics()["checkpoints"]["count"] == 1
    (chk,) = [path.parent for path in (tmp_path / "ckpt").rglob(MANIFEST)]
    manifest = json.loads((chk / MANIFEST).read_text())
    manifest["version"] = 1  # as lambdasource wrote it before 2026-12
    (chk / MANIFEST).write_text(json.dumps(manifest))
    marker = tmp_path / "ran"
    (chk / DATA).write_bytes(pickle_state(marker))
    with pytest.raises(CheckpointError, match="pickle format") as refused:
        _pipeline(url).run_sync()
    assert "restore=None" in str(refused.value) and not marker.exists()
    _pipeline(url).run_sync(restore=None)  # the way out works; the old checkpoint stays
    assert (chk / DATA).read_bytes() == bytes(pickle_state(marker))


def test_state_that_is_not_plain_data_fails_naming_the_operator(tmp_path: Path) -> None:
    p = _pipeline((tmp_path / "ckpt").as_uri(), extra=lambda: None)
    with pytest.raises(
        ls.LambdaSourceError,
        match=r"operator=count snapshot\(\)\['extra'\] holds a builtins.function",
    ):
        p.run_sync(restore=None)


# --- inspect --------------------------------------------------------------------------------------


def test_inspect_lists_nodes_with_sizes_and_exports_window_state_for_duckdb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import duckdb

    from lambdasource import cli

    times = pa.array(np.arange(3_000, dtype=np.int64) * 60_000_000, pa.timestamp("us", "UTC"))
    table = pa.table({"ts": times, "k": pa.array(np.arange(3_000) % 11), "x": np.ones(3_000)})
    url = (tmp_path / "ckpt").as_uri()
    p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="1h"))
    source = CrashingSource(table, checkpoint_at=(20,), batch_size=100, out_of_orderness="1m")
    source.pipeline = p
    (
        p.source(source)
        .key_by("k")
        .window(ls.Sliding(size="2h", slide="10m"), emit="latest")
        .aggregate(n=ls.count(), total=ls.sum("x"))
        .sink(ls.CollectSink(), name="store")
    )
    p.run_sync(restore=None)
    assert cli.main(["inspect", "--checkpoint", url]) == 0
    listing = capsys.readouterr().out
    assert "checkpoint 1 of pipeline" in listing and "format version 2" in listing
    sizes = dict(
        (line.split()[0], line.split()[1]) for line in listing.splitlines()[1:3]
    )  # the two largest nodes: the window and the source
    assert set(sizes) == {"window", "memory"}, listing
    out = tmp_path / "export"
    assert cli.main(["inspect", "--checkpoint", url, "--export", "window", "--to", str(out)]) == 0
    files = sorted(out.glob("*.parquet"))
    assert files, capsys.readouterr().out
    rows = {f.name: duckdb.sql(f"SELECT count(*) FROM '{f}'").fetchall()[0][0] for f in files}
    # every key seen before the checkpoint has (key, slice) rows in the exported state
    assert max(rows.values()) > 0, rows
    assert cli.main(["inspect", "--checkpoint", url, "--export", "nope", "--to", str(out)]) != 0
    assert "no such node" in capsys.readouterr().err
