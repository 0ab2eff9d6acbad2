"""IcebergLake on real pyiceberg SqlCatalogs (file and moto-S3 warehouses).

Reference: pyiceberg's own ``scan().to_arrow()`` of the same table, compared as multisets of the
unique ``event_id``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.transforms import DayTransform, HourTransform

import lambdasource as ls
from lake.generator import generate_clickstream
from lambdasource.errors import LakeReadError
from lambdasource.sources.lake.commits import CommitRecord
from lambdasource.sources.lake.iceberg import IcebergLake
from lambdasource.timeutil import DAY, HOUR
from tests.services.iceberg import commit_position_deletes, load

from .test_parquet_lake import (
    T0,
    Recorder,
    check_partition_order,
    check_watermarks,
    hours_of,
    run,
)

pytestmark = pytest.mark.iceberg

HOURS: Any = HourTransform()


def make_table(
    props: dict[str, str],
    table: pa.Table,
    *,
    transform: Any = HOURS,
    chunks: int = 2,
    name: str = "db.clicks",
    properties: list[dict[str, str]] | None = None,
) -> Any:
    catalog = load(props)
    catalog.create_namespace_if_not_exists("db")
    ice = catalog.create_table(
        name, schema=table.schema, properties={"write.parquet.row-group-limit": "100"}
    )
    if transform is not None:  # hours(ts)/days(ts) on the time column (field id 1)
        with ice.update_spec() as update:
            update.add_field("event_time", transform, "ts_part")
    n = table.num_rows
    for i in range(chunks):
        piece = table.slice(i * n // chunks, (i + 1) * n // chunks - i * n // chunks)
        extra = properties[i] if properties else {}
        ice.append(piece.sort_by("event_time"), snapshot_properties=extra)
    return ice


def ids(t: pa.Table) -> Counter[int]:
    return Counter(t.column("event_id").to_pylist())


@pytest.mark.parametrize("warehouse", ["file", pytest.param("s3", marks=pytest.mark.s3)])
async def test_hour_partitioned_table_in_order_with_partition_watermarks(
    warehouse: str, request: pytest.FixtureRequest
) -> None:
    props = request.getfixturevalue(
        "iceberg_catalog_props" if warehouse == "file" else "iceberg_s3_catalog_props"
    )
    table = generate_clickstream(5000, 1, 100, seed=3)
    ice = make_table(props, table)
    lake = IcebergLake("db.clicks", catalog=props, time_column="event_time")
    rec = await run(lake)
    assert rec.ids() == ids(ice.scan().to_arrow()) == ids(table)
    check_watermarks(rec)
    check_partition_order(rec)
    wms = set(rec.watermarks())
    for h in hours_of(table):
        assert h + HOUR - 1 in wms
    assert len(wms) > len(hours_of(table))  # sorted files: finer watermarks from row groups
    m = lake.metrics()
    assert m["rows_emitted"] == table.num_rows
    assert m["partitions_total"] == len(hours_of(table))


async def test_through_a_pipeline_with_start_until_and_projection(
    iceberg_catalog_props: dict[str, str],
) -> None:
    table = generate_clickstream(4000, 1, 100, seed=4)
    ice = make_table(iceberg_catalog_props, table)
    start, until = T0 + 6 * HOUR + 123, T0 + 14 * HOUR
    lake = IcebergLake(
        "db.clicks",
        catalog=iceberg_catalog_props,
        time_column="event_time",
        start=start,
        until=until,
        columns=["event_id"],
        filter=pc.field("kind") == "click",
    )
    sink = ls.CollectSink()
    p = ls.Pipeline()
    p.source(lake).sink(sink)
    await p.run()
    ref = ice.scan().to_arrow()
    t = pc.cast(ref["event_time"], pa.int64())
    ref = ref.filter(
        pc.and_(
            pc.and_(pc.greater_equal(t, start), pc.less(t, until)),
            pc.equal(ref["kind"], "click"),
        )
    )
    got = sink.table()
    assert ids(got) == ids(ref) and ref.num_rows > 0
    assert set(got.schema.names) == {"event_time", "event_id"}
    assert sink.watermarks[-1] == until - 1


async def test_day_partitioned_and_unpartitioned_tables(
    iceberg_catalog_props: dict[str, str],
) -> None:
    table = generate_clickstream(3000, 3, 100, seed=5)
    make_table(iceberg_catalog_props, table, transform=DayTransform(), name="db.daily")
    rec = await run(IcebergLake("db.daily", iceberg_catalog_props, "event_time"))
    assert rec.ids() == ids(table)
    check_watermarks(rec)
    check_partition_order(rec, DAY)
    assert T0 + DAY - 1 in rec.watermarks()
    # unpartitioned: files ordered by lower bound, watermark from the next file's lower bound
    make_table(iceberg_catalog_props, table, transform=None, chunks=4, name="db.flat")
    rec = await run(IcebergLake("db.flat", iceberg_catalog_props, "event_time"))
    assert rec.ids() == ids(table)
    check_watermarks(rec)
    assert len(rec.watermarks()) >= 3


async def test_snapshot_properties_high_water_mark_and_offsets(
    iceberg_catalog_props: dict[str, str],
) -> None:
    table = generate_clickstream(2000, 1, 50, seed=6)
    c1 = CommitRecord(sequence=1, offsets={0: 7, 1: 3}, topic="clicks")
    c2 = CommitRecord(sequence=2, offsets={0: 11}, topic="clicks", high_watermark=T0 + 5 * HOUR)
    ice = make_table(
        iceberg_catalog_props,
        table,
        properties=[c1.snapshot_properties(), c2.snapshot_properties()],
    )
    lake = IcebergLake("db.clicks", iceberg_catalog_props, "event_time")
    assert await lake.high_water_mark() == T0 + 5 * HOUR
    rec_off = await lake.recorded_offsets()
    assert rec_off is not None
    assert rec_off.offsets == {0: 11, 1: 3} and rec_off.sequence == 2 and rec_off.topic == "clicks"
    # time-travel to the first snapshot: only its rows; no recorded hwm → max upper bound + 1µs
    first = ice.snapshots()[0].snapshot_id
    old = IcebergLake("db.clicks", iceberg_catalog_props, "event_time", snapshot_id=first)
    rec = await run(old)
    assert rec.ids() == ids(ice.scan(snapshot_id=first).to_arrow())
    assert sum(rec.ids().values()) == 1000
    top = max(pc.cast(table.slice(0, 1000)["event_time"], pa.int64()).to_pylist())
    assert await old.high_water_mark() == top + 1


async def test_snapshot_restore_mid_run(iceberg_catalog_props: dict[str, str]) -> None:
    table = generate_clickstream(3000, 1, 50, seed=8)
    make_table(iceberg_catalog_props, table)
    full = await run(IcebergLake("db.clicks", iceberg_catalog_props, "event_time", batch_size=37))
    cut = len(full.batches()) // 2
    lake = IcebergLake("db.clicks", iceberg_catalog_props, "event_time", batch_size=37)
    lake.restore(full.snapshots[cut])
    rest = await run(lake)
    before = Counter(pa.Table.from_batches(full.batches()[:cut]).column("event_id").to_pylist())
    assert before + rest.ids() == ids(table)


async def test_delete_files_are_refused_clearly(iceberg_catalog_props: dict[str, str]) -> None:
    """A merge-on-read table (a committed positional-delete file) is refused with an error naming
    the table and the data file, never read with the deleted rows resurrected."""
    from pathlib import Path
    from urllib.parse import urlparse

    table = generate_clickstream(2000, 1, 20, seed=9)
    ice = make_table(iceberg_catalog_props, table, chunks=1)
    lake = IcebergLake("db.clicks", iceberg_catalog_props, "event_time")
    assert (await run(lake)).ids() == ids(table)  # before the delete the table reads fine
    targets = sorted((t.file for t in ice.scan().plan_files()), key=lambda f: f.file_path)
    target = targets[len(targets) // 2]  # a data file in the middle of the time range
    doomed = pq.read_table(urlparse(target.file_path).path).column("event_id")[3].as_py()
    commit_position_deletes(ice, target, [3])
    ice = load(iceberg_catalog_props).load_table("db.clicks")
    planned = {t.file.file_path: t.delete_files for t in ice.scan().plan_files()}
    assert len(planned[target.file_path]) == 1  # a real delete file, attached to the target only
    assert sum(len(d) for d in planned.values()) == 1
    assert ids(ice.scan().to_arrow()) == ids(table) - Counter([doomed])  # pyiceberg applies it
    name = Path(urlparse(target.file_path).path).name
    with pytest.raises(LakeReadError, match=r"table=db\.clicks has delete files") as raised:
        await run(IcebergLake("db.clicks", iceberg_catalog_props, "event_time"))
    assert name in str(raised.value)


async def test_copy_on_write_delete_is_read_like_pyiceberg(
    iceberg_catalog_props: dict[str, str],
) -> None:
    """pyiceberg's own ``delete`` rewrites data files (copy-on-write): no delete files, and the
    rewritten table reads exactly like pyiceberg's scan."""
    from pyiceberg.expressions import EqualTo

    table = generate_clickstream(500, 1, 20, seed=9)
    ice = make_table(iceberg_catalog_props, table, chunks=1)
    assert ids(table)[3] == 1
    ice.delete(EqualTo("event_id", 3))  # type: ignore[call-arg,arg-type]
    assert not any(t.delete_files for t in ice.scan().plan_files())
    rec = await run(IcebergLake("db.clicks", iceberg_catalog_props, "event_time"))
    assert rec.ids() == ids(ice.scan().to_arrow()) == ids(table) - Counter([3])


async def test_corrupt_data_file_quarantined(iceberg_catalog_props: dict[str, str]) -> None:
    from pathlib import Path
    from urllib.parse import urlparse

    table = generate_clickstream(2000, 1, 50, seed=10)
    ice = make_table(iceberg_catalog_props, table, chunks=1)
    victim = next(iter(ice.scan().plan_files())).file.file_path
    _overwrite(Path(urlparse(victim).path), b"garbage")
    with pytest.raises(LakeReadError, match=Path(urlparse(victim).path).name):
        await run(IcebergLake("db.clicks", iceberg_catalog_props, "event_time"))
    lake = IcebergLake("db.clicks", iceberg_catalog_props, "event_time", on_corrupt="quarantine")
    rec: Recorder = await run(lake)
    assert len(lake.metrics()["quarantined_files"]) == 1
    assert 0 < sum(rec.ids().values()) < table.num_rows
    check_watermarks(rec)


def _overwrite(path: Any, content: bytes) -> None:
    path.write_bytes(content)
