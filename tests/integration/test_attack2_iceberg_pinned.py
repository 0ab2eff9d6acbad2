"""Attack (round 2): an Iceberg lake job pinned to a snapshot; while it is down the table gets an
append, an ``overwrite`` (copy-on-write rewrite of every row, the "compaction" pyiceberg can do)
or the pinned snapshot is expired (with its now-unreferenced data files deleted, as a real
expiry with orphan cleanup does); then the job restores from its checkpoint.

Oracle: per (user, hour) counts of the rows of the pinned state, computed with pyarrow from the
input (see test_attack2_checkpoint_graph). The restore must continue exactly on the pinned
state, or — only when the pinned snapshot is gone — fail with ``LakeStateError`` naming it;
never read the new state, lose or repeat rows.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import IcebergLakeWriter
from tests.integration.test_attack2_checkpoint_graph import (
    SCHEMA,
    TIME,
    Sink,
    _slow,
    check,
    events,
    run_until_checkpoints,
)
from tests.services.iceberg import load

pytestmark = pytest.mark.iceberg
IDENT = "db.clicks"


def build(props: dict[str, str], root: Path, sink: Sink) -> ls.Pipeline:
    url = (root / "ckpt").as_uri()
    p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="100ms", keep=100), flush="all")
    (
        p.source(ls.IcebergLake(IDENT, props, TIME, schema=SCHEMA, batch_size=30))
        .map(_slow)
        .key_by("user_id")
        .window(ls.Tumbling("1h"))
        .aggregate(n=ls.count())
        .sink(sink)
    )
    return p


@pytest.mark.parametrize("change", ["append", "overwrite", "expire"])
async def test_restore_after_the_table_changed_under_the_job(
    tmp_path: Path, iceberg_catalog_props: dict[str, str], change: str
) -> None:
    table = events(3000, 8)
    half = table.num_rows // 2
    writer = IcebergLakeWriter(IDENT, iceberg_catalog_props, TIME, row_group_rows=50)
    writer.write(table.slice(0, half))
    writer.write(table.slice(half))
    first = Sink()
    await run_until_checkpoints(build(iceberg_catalog_props, tmp_path, first), first)
    ice = load(iceberg_catalog_props).load_table(IDENT)
    pinned = ice.current_snapshot().snapshot_id
    more = events(500, 9)
    more = more.set_column(
        1, "event_id", pc.add(more.column("event_id"), pa.scalar(10**6, pa.int64()))
    )
    if change == "append":
        writer.write(more)
    elif change == "overwrite":
        ice.overwrite(ice.scan().to_arrow().sort_by(TIME))
    else:
        before = {f.file.file_path for f in ice.scan().plan_files()}
        ice.overwrite(ice.scan().to_arrow().sort_by(TIME))
        ice = load(iceberg_catalog_props).load_table(IDENT)
        ice.maintenance.expire_snapshots().by_ids(
            [
                s.snapshot_id
                for s in ice.snapshots()
                if s.snapshot_id != ice.current_snapshot().snapshot_id
            ]
        ).commit()
        for path in before:  # orphan cleanup of the expired snapshots' data files
            os.remove(path.removeprefix("file://"))
    assert load(iceberg_catalog_props).load_table(IDENT).current_snapshot().snapshot_id != pinned
    second = Sink()
    if change == "expire":  # the pinned snapshot is gone: a clear refusal naming it
        with pytest.raises(ls.LakeStateError, match="pinned snapshot_id"):
            await asyncio.wait_for(build(iceberg_catalog_props, tmp_path, second).run(), 120)
        return
    await asyncio.wait_for(build(iceberg_catalog_props, tmp_path, second).run(), 120)
    check(table, first, second)
