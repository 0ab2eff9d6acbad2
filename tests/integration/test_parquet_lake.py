"""ParquetLake against real files (local, file://, moto S3): exactly-once, order, watermarks, bad input.

The reference is the same files read with ``pyarrow.dataset`` (or the generator's table), compared
as multisets of the unique ``event_id``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lake.generator import DEFAULT_START, generate_clickstream
from lambdasource.errors import LakeReadError, SchemaError
from lambdasource.sources.lake.commits import CommitRecord
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.timeutil import DAY, HOUR, normalize_time_array, to_micros

T0 = to_micros(DEFAULT_START)


# --- helpers (also used by test_iceberg_lake) -------------------------------------------------


@dataclass
class Recorder:
    """A SourceOutput that records everything, plus the source's position before each emit."""

    source: Any = None
    events: list[tuple[str, Any]] = field(default_factory=list)
    snapshots: list[Any] = field(default_factory=list)

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        if self.source is not None:
            self.snapshots.append(self.source.snapshot())
        self.events.append(("batch", batch))

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        self.events.append(("wm", time))

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        self.events.append(("dead", (batch, reason, position)))

    async def barrier_point(self) -> None:
        return None

    def batches(self) -> list[pa.RecordBatch]:
        return [p for k, p in self.events if k == "batch"]

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches())

    def watermarks(self) -> list[int]:
        return [p for k, p in self.events if k == "wm"]

    def ids(self) -> Counter[int]:
        return Counter(self.table().column("event_id").to_pylist()) if self.batches() else Counter()


def micros(col: pa.ChunkedArray | pa.Array) -> list[int]:
    return [int(v) for v in pc.cast(col, pa.int64()).to_pylist() if v is not None]


def check_watermarks(rec: Recorder, time_column: str = "event_time") -> None:
    """Monotone watermarks; every record emitted after watermark W has time > W."""
    last: int | None = None
    for kind, payload in rec.events:
        if kind == "wm":
            assert last is None or payload > last, f"watermark regressed {payload} <= {last}"
            last = payload
        elif kind == "batch" and last is not None and payload.num_rows:
            low = min(micros(payload.column(time_column)))
            assert low > last, f"record at {low} emitted after watermark {last}"


def check_partition_order(rec: Recorder, width: int = HOUR) -> None:
    """Batches come in non-decreasing partition order (rows lie inside their partitions)."""
    prev = None
    for batch in rec.batches():
        if not batch.num_rows:
            continue
        hours = {t - t % width for t in micros(batch.column("event_time"))}
        assert len(hours) == 1, "a batch spans two partitions"
        (hour,) = hours
        assert prev is None or hour >= prev
        prev = hour


def hours_of(table: pa.Table) -> list[int]:
    return sorted({t - t % HOUR for t in micros(table.column("event_time"))})


def write_hive(
    root: Path,
    table: pa.Table,
    *,
    files: int = 1,
    row_group_size: int = 200,
    sort: bool = True,
    layout: str = "dt_hour",
    drop_hours: tuple[int, ...] = (),
    write_options: dict[str, Any] | None = None,
) -> list[str]:
    """Write ``table`` as hour partitions; returns the relative paths written."""
    written: list[str] = []
    width = DAY if layout == "daily" else HOUR
    arr = pc.cast(normalize_time_array(table.column("event_time")), pa.int64()).to_numpy()
    buckets = pa.array(arr - arr % width)
    for index, bucket in enumerate(sorted(set(buckets.to_pylist()))):
        if index in drop_hours:
            continue
        part = table.filter(pc.equal(buckets, pa.scalar(bucket, pa.int64())))
        if sort:
            part = part.sort_by("event_time")
        moment = DEFAULT_START + timedelta(microseconds=bucket - T0)
        directory = {
            "dt_hour": f"dt={moment:%Y-%m-%d}/hour={moment:%H}",
            "ymdh": f"year={moment:%Y}/month={moment:%m}/day={moment:%d}/hour={moment:%H}",
            "iso_hour": f"hour={moment:%Y-%m-%dT%H}",
            "daily": f"dt={moment:%Y-%m-%d}",
        }[layout]
        (root / directory).mkdir(parents=True, exist_ok=True)
        n = part.num_rows
        for f in range(files):
            if sort:  # contiguous, non-overlapping time ranges
                piece = part.slice(f * n // files, (f + 1) * n // files - f * n // files)
            else:  # interleaved: overlapping files
                idx = pa.array(range(f, n, files), pa.int64())
                piece = part.take(idx)
            rel = f"{directory}/part-{f:03d}.parquet"
            pq.write_table(
                piece, root / rel, row_group_size=row_group_size, **(write_options or {})
            )
            written.append(rel)
    return written


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def reference_ids(root: Path) -> Counter[int]:
    dataset = ds.dataset(str(root), format="parquet", partitioning=None)
    return Counter(dataset.to_table(columns=["event_id"]).column("event_id").to_pylist())


def data(events: int = 6000, days: int = 1, seed: int = 7, jitter: Any = None) -> pa.Table:
    return generate_clickstream(events, days, 200, seed=seed, jitter=jitter)


async def run(lake: Any) -> Recorder:
    rec = Recorder(source=lake)
    await lake.run(rec)
    return rec


def upload(s3: Any, root: Path, bucket: str, prefix: str) -> None:
    client = s3.client()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            key = f"{prefix}/{full.relative_to(root).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=full.read_bytes())


# --- core: exactly once, order, watermarks ----------------------------------------------------


@pytest.mark.parametrize("where", ["local", "file", pytest.param("s3", marks=pytest.mark.s3)])
async def test_every_row_once_in_order_with_partition_watermarks(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    table = data()
    root = tmp_path / "lake"
    write_hive(root, table, row_group_size=100)
    (root / "_SUCCESS").write_text("")
    (root / "dt=2026-01-01" / ".hidden.parquet").write_text("x")
    (root / "dt=2026-01-01" / "hour=00" / ".part-000.parquet.crc").write_text("x")
    s3cfg = None
    if where == "local":
        path: str = str(root)
    elif where == "file":
        path = root.as_uri()
    else:
        s3 = request.getfixturevalue("s3")
        bucket = s3.new_bucket()
        upload(s3, root, bucket, "clicks")
        path, s3cfg = f"s3://{bucket}/clicks", s3.config()
    lake = ParquetLake(path, "event_time", s3=s3cfg, prefetch=3)
    rec = await run(lake)
    assert rec.ids() == reference_ids(root) == Counter(table.column("event_id").to_pylist())
    check_watermarks(rec)
    check_partition_order(rec)
    wms = set(rec.watermarks())
    hours = hours_of(table)
    for h in hours:  # at least one watermark per partition boundary, exactly h + 1h − 1µs
        assert h + HOUR - 1 in wms
    assert len(wms) > len(hours), "sorted files must give finer watermarks between row groups"
    inside = [w for w in wms if (w + 1) % HOUR]
    assert inside
    m = lake.metrics()
    assert {s["file"] for s in m["skipped_files"]} == {
        "_SUCCESS",
        "dt=2026-01-01/.hidden.parquet",
        "dt=2026-01-01/hour=00/.part-000.parquet.crc",
    }
    assert m["rows_emitted"] == table.num_rows
    assert m["partitions_done"] == len(hours) == m["partitions_total"]
    assert rec.watermarks()[-1] == hours[-1] + HOUR - 1


async def test_finer_watermarks_follow_row_group_minima(tmp_path: Path) -> None:
    table = data(3000)
    write_hive(tmp_path, table, row_group_size=50)
    rec = await run(ParquetLake(tmp_path, "event_time"))
    wms = set(rec.watermarks())
    checked = 0
    # One sorted file per partition: after row group i, exactly (min of row group i+1) − 1µs.
    for path in parquet_files(tmp_path):
        md = pq.read_metadata(path)
        mins = [md.row_group(i).column(0).statistics.min_raw for i in range(md.num_row_groups)]
        for nxt in mins[1:]:
            assert nxt - 1 in wms
            checked += 1
    assert checked > 20


async def test_unsorted_files_and_overlapping_files_never_make_records_late(
    tmp_path: Path,
) -> None:
    table = data(4000, jitter="20m")
    write_hive(tmp_path, table, files=3, sort=False, row_group_size=40)
    rec = await run(ParquetLake(tmp_path, "event_time"))
    assert rec.ids() == Counter(table.column("event_id").to_pylist())
    check_watermarks(rec)
    for h in hours_of(table):
        assert h + HOUR - 1 in set(rec.watermarks())


async def test_through_a_pipeline(tmp_path: Path) -> None:
    table = data(3000)
    write_hive(tmp_path, table)
    sink = ls.CollectSink()
    p = ls.Pipeline()
    p.source(ParquetLake(tmp_path, "event_time", name="lake")).sink(sink)
    await p.run()
    got = sink.table()
    assert Counter(got.column("event_id").to_pylist()) == Counter(
        table.column("event_id").to_pylist()
    )
    assert sink.watermarks == sorted(set(sink.watermarks))
    assert p.metrics()["sources"]["lake"]["rows_emitted"] == table.num_rows


@pytest.mark.parametrize("layout", ["ymdh", "iso_hour", "daily"])
async def test_other_layouts(layout: str, tmp_path: Path) -> None:
    table = data(3000, days=2)
    write_hive(tmp_path, table, layout=layout)
    rec = await run(ParquetLake(tmp_path, "event_time"))
    assert rec.ids() == Counter(table.column("event_id").to_pylist())
    check_watermarks(rec)
    width = DAY if layout == "daily" else HOUR
    check_partition_order(rec, width)
    assert T0 + width - 1 in rec.watermarks()


async def test_template_layout(tmp_path: Path) -> None:
    table = data(2000)
    root = tmp_path / "custom"
    for h in hours_of(table):
        part = table.filter(
            pc.and_(
                pc.greater_equal(pc.cast(table["event_time"], pa.int64()), h),
                pc.less(pc.cast(table["event_time"], pa.int64()), h + HOUR),
            )
        )
        moment = DEFAULT_START + timedelta(microseconds=h - T0)
        d = root / f"{moment:%Y}" / f"{moment:%m}" / f"{moment:%d}" / f"{moment:%H}"
        d.mkdir(parents=True)
        pq.write_table(part, d / "data.parquet")
    rec = await run(ParquetLake(root, "event_time", layout="{year}/{month}/{day}/{hour}"))
    assert rec.ids() == Counter(table.column("event_id").to_pylist())
    check_partition_order(rec)


async def test_start_until_filter_projection(tmp_path: Path) -> None:
    table = data(6000)
    write_hive(tmp_path, table, row_group_size=20)
    start, until = T0 + 5 * HOUR + 17 * 60_000_000, T0 + 11 * HOUR
    lake = ParquetLake(
        tmp_path,
        "event_time",
        start=start,
        until=DEFAULT_START + timedelta(microseconds=until - T0),
        filter=pc.field("kind") == "click",
        columns=["event_id", "kind"],
    )
    rec = await run(lake)
    got = rec.table()
    assert got.schema.names == ["event_id", "kind", "event_time"] or set(got.schema.names) == {
        "event_id",
        "kind",
        "event_time",
    }
    ref = ds.dataset(str(tmp_path), format="parquet", partitioning=None).to_table(
        filter=(pc.field("kind") == "click")
        & (pc.field("event_time") >= pa.scalar(start, pa.timestamp("us", tz="UTC")))
        & (pc.field("event_time") < pa.scalar(until, pa.timestamp("us", tz="UTC")))
    )
    assert Counter(got.column("event_id").to_pylist()) == Counter(
        ref.column("event_id").to_pylist()
    )
    assert ref.num_rows > 0
    check_watermarks(rec)
    assert rec.watermarks()[-1] == until - 1
    m = lake.metrics()
    assert m["files_pruned"] > 0 and m["row_groups_pruned"] > 0


async def test_iso_string_bounds_and_empty_selection(tmp_path: Path) -> None:
    write_hive(tmp_path, data(1000))
    rec = await run(
        ParquetLake(tmp_path, "event_time", start="2030-01-01T00:00:00Z", until="2030-01-02")
    )
    assert rec.batches() == []
    assert rec.watermarks() == [to_micros("2030-01-02") - 1]


@pytest.mark.s3
async def test_s3_projection_uses_ranged_reads(tmp_path: Path, s3: Any) -> None:
    table = data(500_000)
    write_hive(tmp_path, table, row_group_size=10_000)
    bucket = s3.new_bucket()
    upload(s3, tmp_path, bucket, "p")
    lake = ParquetLake(
        f"s3://{bucket}/p", "event_time", s3=s3.config(), columns=["device"], batch_size=50_000
    )
    lake.small_file_bytes = 0  # these files are small: force footer-then-ranges reads
    rec = await run(lake)
    got = rec.table()
    assert got.schema.names == ["event_time", "device"]
    assert Counter(
        zip(micros(got["event_time"]), got["device"].to_pylist(), strict=True)
    ) == Counter(zip(micros(table["event_time"]), table["device"].to_pylist(), strict=True))
    total = sum(p.stat().st_size for p in parquet_files(tmp_path))
    # footer probes + the time and device column chunks only (the time column is most of it)
    assert 0 < lake.metrics()["bytes_read"] < total * 0.6
    check_watermarks(rec)


# --- bad input --------------------------------------------------------------------------------


async def test_corrupt_file_raises_naming_it_or_is_quarantined(tmp_path: Path) -> None:
    table = data(2000)
    written = write_hive(tmp_path, table)
    bad = tmp_path / written[2]
    bad.write_bytes(b"PAR1" + os.urandom(500) + b"PAR1")
    with pytest.raises(LakeReadError, match=r"part-000\.parquet") as info:
        await run(ParquetLake(tmp_path, "event_time"))
    assert written[2].split("/")[0] in str(info.value)
    lake = ParquetLake(tmp_path, "event_time", on_corrupt="quarantine")
    rec = await run(lake)
    lost = pq.read_table  # the quarantined file's rows are missing, everything else is there
    del lost
    expected = Counter(table.column("event_id").to_pylist()) - Counter(
        pa.concat_tables([pq.read_table(tmp_path / w) for w in written if w != written[2]])
        .column("event_id")
        .to_pylist()
    )
    assert sum(rec.ids().values()) == table.num_rows - sum(expected.values())
    assert [q["file"] for q in lake.metrics()["quarantined_files"]] == [str(bad)]
    check_watermarks(rec)


async def test_truncated_file_raises_naming_it(tmp_path: Path) -> None:
    written = write_hive(tmp_path, data(2000))
    victim = tmp_path / written[1]
    content = victim.read_bytes()
    victim.write_bytes(content[: len(content) // 2])
    with pytest.raises(LakeReadError, match=written[1].replace("/", ".")):
        await run(ParquetLake(tmp_path, "event_time"))
    lake = ParquetLake(tmp_path, "event_time", on_corrupt="quarantine")
    await run(lake)
    assert len(lake.metrics()["quarantined_files"]) == 1


async def test_corrupt_data_pages_raise_at_read(tmp_path: Path) -> None:
    written = write_hive(tmp_path, data(2000), row_group_size=10_000)
    victim = tmp_path / written[3]
    content = bytearray(victim.read_bytes())
    for i in range(8, len(content) // 2):  # smash the column chunks, keep the footer
        content[i] = 0xFF
    victim.write_bytes(bytes(content))
    with pytest.raises(LakeReadError, match="file="):
        await run(ParquetLake(tmp_path, "event_time"))
    lake = ParquetLake(tmp_path, "event_time", on_corrupt="quarantine")
    rec = await run(lake)
    assert lake.metrics()["quarantined_files"]
    check_watermarks(rec)


async def test_missing_hour_is_reported_and_watermark_advances(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = data(3000)
    write_hive(tmp_path, table, drop_hours=(3, 4))
    lake = ParquetLake(tmp_path, "event_time")
    with caplog.at_level(logging.WARNING, logger="lambdasource.lake"):
        rec = await run(lake)
    assert lake.metrics()["missing_partitions"] == 2
    assert "missing partition" in caplog.text
    hours = hours_of(table)
    wms = rec.watermarks()
    assert hours[2] + HOUR - 1 in wms
    assert hours[5] - 1 in wms  # the watermark advances over the gap
    check_watermarks(rec)


async def test_rows_outside_their_partition_are_counted_and_never_late(tmp_path: Path) -> None:
    table = data(3000)
    write_hive(tmp_path, table)
    # Hour 5's directory also holds two rows from hour 1 and one from hour 9.
    stray_times = [T0 + HOUR + 10, T0 + HOUR + 20, T0 + 9 * HOUR + 5]
    stray = table.slice(0, 3).set_column(
        0, "event_time", pa.array(stray_times, pa.int64()).cast(table.schema.field(0).type)
    )
    stray = stray.set_column(1, "event_id", pa.array([10**9, 10**9 + 1, 10**9 + 2]))
    pq.write_table(stray, tmp_path / "dt=2026-01-01" / "hour=05" / "zz-stray.parquet")
    lake = ParquetLake(tmp_path, "event_time")
    rec = await run(lake)
    assert lake.metrics()["rows_outside_partition"] == 3
    assert sum(rec.ids().values()) == table.num_rows + 3
    check_watermarks(rec)  # hour 1's end watermark was held back for the stray rows


async def test_schema_unification_and_mismatch(tmp_path: Path) -> None:
    table = data(2000)
    written = write_hive(tmp_path, table)
    # one file lacks "device" and stores user_id as int32: unified (null + safe cast)
    f = tmp_path / written[1]
    t = pq.read_table(f).drop_columns(["device"])
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id", t["user_id"].cast(pa.int32()))
    pq.write_table(t, f)
    declared = table.schema
    declared = declared.set(declared.get_field_index("device"), pa.field("device", pa.string()))
    rec = await run(ParquetLake(tmp_path, "event_time", schema=declared))
    got = rec.table()
    assert got.schema.field("user_id").type == pa.int64()
    assert got.column("device").null_count == t.num_rows
    # a string where an int64 is declared: error naming the column and the file
    f2 = tmp_path / written[2]
    t2 = pq.read_table(f2)
    t2 = t2.set_column(
        t2.schema.get_field_index("amount"), "amount", t2["amount"].cast(pa.string())
    )
    pq.write_table(t2, f2)
    with pytest.raises(SchemaError, match=r"'amount'.*" + written[2].split("/")[-1]):
        await run(ParquetLake(tmp_path, "event_time", schema=declared))


async def test_unparseable_string_times_are_dead_letters(tmp_path: Path) -> None:
    d = tmp_path / "dt=2026-01-01" / "hour=00"
    d.mkdir(parents=True)
    t = pa.table(
        {
            "ts": ["2026-01-01T00:00:01Z", "garbage", "2026-01-01T00:00:03Z", None],
            "event_id": [1, 2, 3, 4],
        }
    )
    pq.write_table(t, d / "a.parquet")
    lake = ParquetLake(tmp_path, "ts")
    rec = await run(lake)
    assert rec.table().column("event_id").to_pylist() == [1, 3, 4]  # null → runtime dead-letters
    dead = [p for k, p in rec.events if k == "dead"]
    assert len(dead) == 1
    batch, reason, position = dead[0]
    assert batch.column("event_id").to_pylist() == [2]
    assert "unparseable" in reason and "a.parquet" in (position or "")
    assert "row_group=0" in (position or "")
    assert lake.metrics()["dead_letters"] == 1


async def test_orphans_skipped_with_commit_records_and_lake_facts(tmp_path: Path) -> None:
    table = data(2000)
    written = write_hive(tmp_path, table)
    commits_dir = tmp_path / "_lambdasource" / "commits"
    commits_dir.mkdir(parents=True)
    c1 = CommitRecord(sequence=1, offsets={0: 10, 1: 5}, topic="t", files=tuple(written[:3]))
    c2 = CommitRecord(
        sequence=2,
        offsets={0: 20},
        topic="t",
        files=tuple(written[3:-1]),
        high_watermark=T0 + 7 * HOUR,
    )
    for c in (c1, c2):
        (tmp_path / c.file_name()).write_bytes(c.to_json())
    lake = ParquetLake(tmp_path, "event_time")
    rec = await run(lake)
    assert lake.metrics()["orphan_files"] == [written[-1]]
    orphan_rows = pq.read_table(tmp_path / written[-1]).num_rows
    assert sum(rec.ids().values()) == table.num_rows - orphan_rows
    assert await lake.high_water_mark() == T0 + 7 * HOUR
    recorded = await lake.recorded_offsets()
    assert recorded is not None
    assert recorded.offsets == {0: 20, 1: 5} and recorded.sequence == 2 and recorded.topic == "t"
    # without commits: the newest data's maximum time (statistics) + 1µs − out_of_orderness,
    # never the end of a half-written partition
    other = tmp_path.parent / "plain"
    write_hive(other, table)
    plain = ParquetLake(other, "event_time")
    newest = int(pc.max(table.column("event_time")).cast(pa.int64()).as_py())
    assert newest + 1 < hours_of(table)[-1] + HOUR
    assert await plain.high_water_mark() == newest + 1
    assert await plain.high_water_mark("5m") == newest + 1 - 5 * 60_000_000
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    bounded = ParquetLake(other, "event_time", until=T0 + 2 * HOUR)
    assert await bounded.high_water_mark() == int(times[times < T0 + 2 * HOUR].max()) + 1
    assert await plain.recorded_offsets() is None


async def test_not_event_time_partitioned_uses_out_of_orderness(tmp_path: Path) -> None:
    table = data(3000, jitter="10m")
    write_hive(tmp_path, table, sort=False)
    lake = ParquetLake(tmp_path, "event_time", event_time_partitioned=False, out_of_orderness="10m")
    rec = await run(lake)
    assert rec.ids() == Counter(table.column("event_id").to_pylist())
    check_watermarks(rec)
    assert len(rec.watermarks()) >= len(hours_of(table)) - 1


async def test_snapshot_mid_run_and_restore_neither_duplicates_nor_skips(tmp_path: Path) -> None:
    table = data(5000)
    write_hive(tmp_path, table, row_group_size=300)
    full = await run(ParquetLake(tmp_path, "event_time", batch_size=70))
    batches = full.batches()
    for cut in (1, len(batches) // 3, len(batches) // 2 + 1, len(batches) - 1):
        state = full.snapshots[cut]
        assert state is not None
        lake = ParquetLake(tmp_path, "event_time", batch_size=70)
        lake.restore(orjson.loads(orjson.dumps(state)))  # positions are plain data
        rest = await run(lake)
        before = Counter(pa.Table.from_batches(batches[:cut]).column("event_id").to_pylist())
        assert before + rest.ids() == Counter(table.column("event_id").to_pylist())
        check_watermarks(rest)


async def test_a_restored_lake_keeps_its_position_through_more_restarts(tmp_path: Path) -> None:
    """Restore at a position, run, snapshot, restore that, run again — a job killed and
    restarted twice. A run that resumes where nothing is left (the lake's end, as in every
    checkpoint of a stream phase) must still report that position: it used to report none, and
    the next restart read the whole lake again. Likewise a mid-lake position resumed twice."""
    table = data(3000)
    write_hive(tmp_path, table, row_group_size=300)
    full = await run(ParquetLake(tmp_path, "event_time", batch_size=100))
    expected = Counter(table.column("event_id").to_pylist())
    assert full.ids() == expected
    end = orjson.loads(orjson.dumps(full.source.snapshot()))
    assert end["position"]["partition"] == "<end>"
    state = end
    for restart in range(3):
        lake = ParquetLake(tmp_path, "event_time", batch_size=100)
        lake.restore(state)
        again = await run(lake)
        assert again.ids() == Counter(), f"restart {restart} read {again.ids().total()} rows again"
        state = orjson.loads(orjson.dumps(lake.snapshot()))
        assert state["position"] == end["position"]
    middle = full.snapshots[len(full.batches()) // 2]
    before = Counter(
        pa.Table.from_batches(full.batches()[: len(full.batches()) // 2])
        .column("event_id")
        .to_pylist()
    )
    lake = ParquetLake(tmp_path, "event_time", batch_size=100)
    lake.restore(middle)
    rest = await run(lake)
    lake = ParquetLake(tmp_path, "event_time", batch_size=100)
    lake.restore(orjson.loads(orjson.dumps(rest.source.snapshot())))
    assert (await run(lake)).ids() == Counter()
    assert before + rest.ids() == expected


class HeldBytes(Recorder):
    """Measures, from outside the reader, the decoded bytes a lake holds at once.

    ``sizes`` maps each hour partition's start to its decoded size (read independently with
    pyarrow). A partition counts as held from the moment its load starts (the lake's partition
    loader is wrapped) until the lake moves past it: a batch of a later partition, or a watermark
    ≥ its end − 1µs, is emitted. ``peak_others`` is the largest total held by partitions other than
    the earliest held one (the partition being emitted, always loaded whatever the bound)."""

    def __init__(self, sizes: dict[int, int]) -> None:
        super().__init__()
        self.sizes = sizes
        self.held: set[int] = set()
        self.loads = 0
        self.peak_others = 0

    def wrap(self, lake: Any) -> None:
        load = lake._load_files

        async def counted(files: Any, partition: Any, *args: Any) -> Any:
            assert partition.start in self.sizes, partition.label
            self.held.add(partition.start)
            self.loads += 1
            others = sum(self.sizes[h] for h in self.held if h != min(self.held))
            self.peak_others = max(self.peak_others, others)
            return await load(files, partition, *args)

        lake._load_files = counted

    def _release(self, upto: int) -> None:
        """Partitions starting before ``upto`` are done."""
        self.held = {h for h in self.held if h >= upto}

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        await super().emit(batch, position)
        hour = min(micros(batch.column("event_time")))
        self._release(hour - hour % HOUR)
        await asyncio.sleep(0.002)  # a slow consumer: prefetch has time to run ahead

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        await super().emit_watermark(time, idle)
        self._release(time - (HOUR - 1) + 1)  # done: every hour h with h + HOUR - 1 <= time


async def _held_bytes(root: Path, **options: Any) -> tuple[HeldBytes, Counter[int]]:
    sizes: dict[int, int] = {}
    for f in parquet_files(root):
        t = pq.read_table(f)
        low = min(micros(t.column("event_time")))
        sizes[low - low % HOUR] = sizes.get(low - low % HOUR, 0) + t.nbytes
    lake = ParquetLake(root, "event_time", **options)
    rec = HeldBytes(sizes)
    rec.source = lake
    rec.wrap(lake)
    await lake.run(rec)
    assert rec.loads == len(sizes) and not rec.held
    return rec, rec.ids()


async def test_prefetch_is_bounded_and_order_kept(tmp_path: Path) -> None:
    """``max_bytes_in_flight`` bounds the decoded bytes held beside the partition being emitted.

    Files are plain and uncompressed, so the lake's size estimate (from file sizes or footers)
    is an upper bound of the decoded size measured here; the bound then caps the measure."""
    table = data(4000)  # 24 hour partitions of ~12 KB decoded
    write_hive(
        tmp_path,
        table,
        files=2,
        row_group_size=40,
        write_options={"compression": "none", "use_dictionary": False},
    )
    expected = Counter(table.column("event_id").to_pylist())
    # control: without a tight bound, prefetch=8 holds 7 partitions besides the one emitted
    free, got = await _held_bytes(tmp_path, prefetch=8)
    bound = 3 * max(free.sizes.values())
    assert got == expected
    assert free.peak_others > bound  # so the bound below is what keeps the measure under it
    # bounded: never more than max_bytes_in_flight besides the partition being emitted
    held, got = await _held_bytes(tmp_path, prefetch=8, max_bytes_in_flight=bound)
    assert got == expected
    assert held.peak_others <= bound, f"{held.peak_others} bytes held beyond {bound}"
    check_partition_order(held)
    check_watermarks(held)
    # the tightest bound still reads everything, one partition at a time
    one, got = await _held_bytes(tmp_path, prefetch=8, max_bytes_in_flight=1)
    assert got == expected and one.peak_others == 0
    check_partition_order(one)


async def test_cancellation_propagates(tmp_path: Path) -> None:
    write_hive(tmp_path, data(3000))

    class Slow(Recorder):
        async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
            await asyncio.sleep(10)

    task = asyncio.create_task(ParquetLake(tmp_path, "event_time").run(Slow()))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- property test over random lakes ----------------------------------------------------------


@st.composite
def lakes(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "events": draw(st.integers(0, 1500)),
        "seed": draw(st.integers(0, 10_000)),
        "files": draw(st.integers(1, 3)),
        "sort": draw(st.booleans()),
        "row_group_size": draw(st.sampled_from([7, 50, 333, 5000])),
        "drop": tuple(draw(st.sets(st.integers(0, 23), max_size=4))),
        "jitter": draw(st.sampled_from([None, "5m", "2h"])),
        "prefetch": draw(st.integers(1, 5)),
        "empty": draw(st.sets(st.integers(0, 23), max_size=3)),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=lakes())
def test_property_random_lakes(
    spec: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("prop")
    table = data(spec["events"], seed=spec["seed"], jitter=spec["jitter"])
    write_hive(
        root,
        table,
        files=spec["files"],
        sort=spec["sort"],
        row_group_size=spec["row_group_size"],
        drop_hours=spec["drop"],
    )
    for hour in spec["empty"]:  # empty files, also in otherwise missing hours
        d = root / f"dt=2026-01-01/hour={hour:02d}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.schema.empty_table(), d / "empty.parquet")
    if not any(root.rglob("*.parquet")):
        return
    lake = ParquetLake(root, "event_time", prefetch=spec["prefetch"])
    rec = asyncio.run(run(lake))
    assert rec.ids() == reference_ids(root)
    check_watermarks(rec)
    check_partition_order(rec)
    present = sorted(
        {
            to_micros(f"{p.parent.parent.name[3:]}T{p.parent.name[5:]}:00")
            for p in root.rglob("*.parquet")
        }
    )
    for h in present:  # each partition's end is promised before a later row is emitted
        end = h + HOUR - 1
        for kind, payload in rec.events:
            if kind == "wm" and payload >= end:
                break
            if kind == "batch":
                times = pc.cast(payload.column("event_time"), pa.int64()).to_numpy()
                assert not (times > end).any(), f"a row after {end} before the watermark reached it"
        else:
            raise AssertionError(f"the watermark never reached the end of partition {h}")


async def test_empty_and_missing_lakes(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    rec = await run(ParquetLake(tmp_path / "empty", "event_time", until="2026-01-02"))
    assert rec.batches() == [] and rec.watermarks() == [to_micros("2026-01-02") - 1]
    with pytest.raises(LakeReadError, match="does not exist"):
        await run(ParquetLake(tmp_path / "nope", "event_time"))
    with pytest.raises(ls.ConfigError):
        ParquetLake(tmp_path, "event_time", on_corrupt="ignore")  # type: ignore[arg-type]
    with pytest.raises(ls.ConfigError):
        ParquetLake("gs://bucket/x", "event_time")


@pytest.mark.parametrize(
    "time_type", [pa.int64(), pa.timestamp("ns"), pa.timestamp("ms", tz="Europe/Paris")]
)
async def test_other_time_types_are_normalised_with_exact_watermarks(
    time_type: pa.DataType, tmp_path: Path
) -> None:
    table = data(3000)
    micros_col = pc.cast(table["event_time"], pa.int64())
    if pa.types.is_int64(time_type):  # epoch milliseconds
        col = pc.divide(micros_col, 1000)
        table = table.set_column(0, "event_time", col)
    else:
        unit_factor = {"ns": 1000, "ms": None}[time_type.unit]
        ms_or_ns = (
            pc.multiply(micros_col, unit_factor) if unit_factor else pc.divide(micros_col, 1000)
        )
        table = table.set_column(0, "event_time", ms_or_ns.cast(time_type))
    write_hive(tmp_path, table, row_group_size=100)
    rec = await run(ParquetLake(tmp_path, "event_time"))
    got = rec.table()
    assert got.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert rec.ids() == Counter(table.column("event_id").to_pylist())
    check_watermarks(rec)
    check_partition_order(rec)
    wms = set(rec.watermarks())
    for h in hours_of(got):
        assert h + HOUR - 1 in wms
    assert len(wms) > len(hours_of(got))  # statistics in ms/ns still give row-group watermarks
