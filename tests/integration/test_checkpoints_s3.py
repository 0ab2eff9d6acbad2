"""Checkpoints on S3 (moto): the store's protocol, and a crashed pipeline resumed from S3."""

from __future__ import annotations

from typing import Any

import pytest

from lambdasource.checkpoints import S3Store
from lambdasource.checkpoints.format import FORMAT_VERSION, decode, encode
from lambdasource.checkpoints.store import DATA, MANIFEST
from lambdasource.errors import CheckpointError
from tests.unit.test_checkpoints_restore import (
    crash_and_resume,
    make_data,
    reference_store,
    store_of,
    uninterrupted,
)

pytestmark = pytest.mark.s3


def manifest() -> dict[str, Any]:
    return {"format": "lambdasource-checkpoint", "version": FORMAT_VERSION, "graph": {}}


async def test_s3_store_protocol(s3: Any) -> None:
    bucket = s3.new_bucket()
    store = S3Store(f"s3://{bucket}/jobs/one", s3.config())
    await store.open()
    try:
        assert await store.complete_ids() == []
        await store.write(1, encode({"x": list(range(10))}), manifest())
        await store.put_data(2, encode({"x": 2}))  # crashed before its manifest
        assert await store.complete_ids() == [1]
        m = await store.read_manifest(1)
        assert decode(await store.read_data(1, m), where="t") == {"x": list(range(10))}
        # corrupt the object behind the store's back
        client = s3.client()
        client.put_object(Bucket=bucket, Key=f"jobs/one/chk-000000000001/{DATA}", Body=b"bad")
        with pytest.raises(CheckpointError, match="manifest says"):
            await store.read_data(1, m)
        for i in (3, 4, 5):
            await store.write(i, encode({"i": i}), manifest())
        assert await store.prune(keep=2) == [1, 2, 3]
        assert await store.complete_ids() == [4, 5]
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
        assert keys == sorted(
            f"jobs/one/chk-00000000000{i}/{name}" for i in (4, 5) for name in (DATA, MANIFEST)
        )
        assert await store.clear() == [4, 5]
    finally:
        await store.close()


async def test_s3_store_errors_name_the_object(s3: Any) -> None:
    store = S3Store("s3://no-such-bucket-xyz/p", s3.config())
    try:
        with pytest.raises(CheckpointError, match="s3://no-such-bucket-xyz/p/"):
            await store.write(1, encode({}), manifest())
    finally:
        await store.close()


@pytest.mark.parametrize(("window", "emit"), [("sliding", "changes"), ("session", "latest")])
async def test_pipeline_resumes_from_s3(s3: Any, window: str, emit: str) -> None:
    bucket = s3.new_bucket()
    data = make_data(seed=21, rows=800)
    kw: dict[str, Any] = dict(window=window, emit=emit, batch_size=30)
    want = store_of(await uninterrupted(data, **kw), emit)
    assert want == reference_store(data, **kw)
    url = f"s3://{bucket}/ckpt"
    run1, run2, p2 = await crash_and_resume(
        data,
        url,
        checkpoint_at=(4, 12),
        crash_at=20,
        s3_config=s3.config(),
        **kw,
    )
    assert p2.metrics()["checkpoints"]["restored_from"] == 2
    assert store_of(run1 + run2, emit) == want
