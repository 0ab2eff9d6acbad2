"""One pinned lake state per job (DESIGN §3), against lakes that change between a checkpoint and
its restore: new commits, compactions, files added or removed, Iceberg appends and rollbacks —
and the true high-water mark of a half-written hour, with a real archiver and broker.

Every check is a multiset of event ids computed from the input: one lost or repeated record
fails it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from lake.archiver import Archiver
from lake.generator import generate_clickstream
from lake.maintenance import compact
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from lambdasource.errors import LakeStateError
from lambdasource.sources.lake.inspect import acheckpoint_sources, format_checkpoint
from lambdasource.sources.lake.source import LakeSource
from lambdasource.timeutil import HOUR, MINUTE, MS
from tests.services.kafka import KafkaService

TIME = "event_time"
COLUMNS = ["event_id", "event_time", "user_id", "amount"]


def events(n: int, seed: int, hours: int = 24) -> pa.Table:
    table = generate_clickstream(n, 1, 40, seed=seed, jitter="2m")
    times = pc.cast(table.column(TIME), pa.int64())
    start = int(pc.min(times).as_py())
    table = table.filter(pc.less(times, start + hours * HOUR))
    return table.select(COLUMNS)


def ids(table: pa.Table) -> Counter[int]:
    return Counter(table.column("event_id").to_pylist())


class Stop(Exception):
    pass


class Interrupt:
    """A SourceOutput that snapshots the lake and stops before emitting its ``after``-th batch
    (the snapshot covers exactly the batches emitted so far)."""

    def __init__(self, lake: LakeSource, after: int | None = None) -> None:
        self.lake = lake
        self.after = after
        self.seen: Counter[int] = Counter()
        self.batches = 0
        self.state: Any = None

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        if self.after is not None and self.batches == self.after:
            self.state = self.lake.snapshot()
            raise Stop
        self.batches += 1
        self.seen.update(batch.column("event_id").to_pylist())

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        return None

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        raise AssertionError(f"dead letter: {reason} at {position}")

    async def barrier_point(self) -> None:
        return None


async def interrupted(lake: LakeSource, after: int) -> Interrupt:
    out = Interrupt(lake, after)
    with pytest.raises(Stop):
        await lake.run(out)
    return out


async def read_all(lake: LakeSource, state: Any = None) -> Counter[int]:
    if state is not None:
        lake.restore(state)
    out = Interrupt(lake)
    await lake.run(out)
    return out.seen


def parquet_lake(root: Path) -> ls.ParquetLake:
    return ls.ParquetLake(root, TIME, batch_size=50)


def hour_slices(table: pa.Table, first: int, last: int) -> pa.Table:
    """Rows whose hour (from the table's first hour) is in [first, last)."""
    times = pc.cast(table.column(TIME), pa.int64())
    base = (int(pc.min(times).as_py()) // HOUR) * HOUR
    mask = pc.and_(pc.greater_equal(times, base + first * HOUR), pc.less(times, base + last * HOUR))
    return table.filter(mask)


# --- Parquet lakes with commit records -----------------------------------------------------------


@pytest.mark.parametrize("change", ["new-commits", "compaction-kept", "compaction-deleted"])
async def test_restore_reads_the_pinned_commits_whatever_came_after(
    tmp_path: Path, change: str
) -> None:
    """A checkpoint mid-lake; then the writer commits more rows (into the partition being read
    and later ones) and/or compacts; the restored job reads exactly the pinned commits."""
    table = events(3000, 1)
    first, later = table.slice(0, 2000), table.slice(2000)
    writer = ParquetLakeWriter(tmp_path, TIME, row_group_rows=100)
    for start in range(0, 2000, 500):  # four commits: several files per partition
        writer.write(first.slice(start, 500), offsets={0: start + 500}, topic="t")
    lake = parquet_lake(tmp_path)
    before = await interrupted(lake, after=7)
    assert before.state["state"]["kind"] == "commits" and before.state["state"]["sequence"] == 4
    # the lake moves on while the job is down
    writer.write(later, offsets={0: 3000}, topic="t")
    if change == "compaction-kept":
        compact(writer)
    elif change == "compaction-deleted":
        done = before.state["position"]["partition"]
        # compact (and delete) only partitions the job has not begun and that hold pinned
        # files only: the pinned state follows the compaction's record
        writer2 = ParquetLakeWriter(tmp_path, TIME, row_group_rows=100)
        pinned = {
            f.rsplit("/", 1)[0] for c in writer2.commits()[:4] for f in c.files if done not in f
        }
        fresh = {f.rsplit("/", 1)[0] for f in writer2.commits()[4].files}
        untouched = sorted(pinned - fresh)
        assert untouched, "the test needs a partition the later commit did not touch"
        result = compact(writer2, min_files=1, partitions=untouched[-2:], delete_replaced=True)
        assert result.removed and not any((tmp_path / f).exists() for f in result.removed)
    restored = parquet_lake(tmp_path)
    after = await read_all(restored, before.state)
    assert before.seen + after == ids(first)
    assert restored.metrics()["files_after_pin"] >= 1
    # a fresh job pins the newest state and reads everything
    assert await read_all(parquet_lake(tmp_path)) == ids(table)


async def test_a_compaction_that_mixes_in_later_commits_fails_naming_the_file(
    tmp_path: Path,
) -> None:
    """Replaced files deleted, and the compaction also rewrote rows committed after the pin:
    the pinned rows cannot be separated again, so the restore fails naming the file."""
    table = events(2000, 2)
    writer = ParquetLakeWriter(tmp_path, TIME, row_group_rows=100)
    writer.write(table.slice(0, 1000), offsets={0: 1000}, topic="t")
    lake = parquet_lake(tmp_path)
    before = await interrupted(lake, after=2)
    writer.write(table.slice(1000), offsets={0: 2000}, topic="t")  # same partitions again
    compact(writer, delete_replaced=True)
    with pytest.raises(LakeStateError, match=r"file=dt=.*\.parquet"):
        await read_all(parquet_lake(tmp_path), before.state)


async def test_a_compaction_of_the_partition_in_progress_fails_naming_the_file(
    tmp_path: Path,
) -> None:
    table = events(2000, 3)
    writer = ParquetLakeWriter(tmp_path, TIME, row_group_rows=50)
    for start in range(0, 2000, 500):
        writer.write(table.slice(start, 500), offsets={0: start + 500}, topic="t")
    for after in range(1, 40):  # stop inside a partition, not at its start
        before = await interrupted(ls.ParquetLake(tmp_path, TIME, batch_size=20), after=after)
        position = before.state["position"]
        if position["rows"] > 0 or position["chunk"] > 0:
            break
    assert position["file"] is not None and (position["rows"] > 0 or position["chunk"] > 0)
    current = position["file"].rsplit("/", 1)[0]
    compact(writer, min_files=1, partitions=[current], delete_replaced=True)
    with pytest.raises(LakeStateError, match=r"file=") as err:
        await read_all(ls.ParquetLake(tmp_path, TIME, batch_size=20), before.state)
    assert current in str(err.value)


async def test_a_position_whose_chunk_changed_is_refused(tmp_path: Path) -> None:
    """Positions name file + row group: a restore into a lake read differently (here another
    ``until``) is refused, never a silent shift."""
    table = events(2000, 4)
    ParquetLakeWriter(tmp_path, TIME, row_group_rows=50).write(table, offsets={0: 1}, topic="t")
    before = await interrupted(ls.ParquetLake(tmp_path, TIME, batch_size=20), after=1)
    assert before.state["position"]["rows"] == 20
    times = pc.cast(table.column(TIME), pa.int64())
    cut = int(pc.min(times).as_py()) + 10 * MINUTE  # the first row group now holds fewer rows
    changed = ls.ParquetLake(tmp_path, TIME, batch_size=20, start=cut)
    with pytest.raises(LakeStateError, match="partition="):
        await read_all(changed, before.state)


# --- lakes without commit records: a pinned file list --------------------------------------------


async def test_a_lake_without_commits_pins_its_file_list(tmp_path: Path) -> None:
    table = events(20_000, 5)
    part = tmp_path / "dt=2026-01-01" / "hour=00"
    part.mkdir(parents=True)
    shifted = table.set_column(
        table.schema.get_field_index(TIME),
        TIME,
        pc.cast(
            pc.add(
                pc.subtract(
                    pc.cast(table.column(TIME), pa.int64()),
                    pc.min(pc.cast(table.column(TIME), pa.int64())),
                ),
                pa.scalar(1_767_225_600_000_000),
            ),
            pa.timestamp("us", tz="UTC"),
        ),
    ).sort_by(TIME)
    shifted = shifted.filter(
        pc.less(pc.cast(shifted.column(TIME), pa.int64()), 1_767_225_600_000_000 + HOUR)
    )
    pq.write_table(shifted.slice(0, 300), part / "a.parquet", row_group_size=50)
    pq.write_table(shifted.slice(300), part / "b.parquet", row_group_size=50)
    before = await interrupted(parquet_lake(tmp_path), after=2)
    assert before.state["state"]["kind"] == "files"
    # a file added after the pin is not read (its rows are the stream's), and reported
    pq.write_table(shifted.slice(0, 10), part / "c.parquet")
    restored = parquet_lake(tmp_path)
    assert before.seen + await read_all(restored, before.state) == ids(shifted)
    assert restored.metrics()["files_after_pin"] == 1
    # a pinned file that vanished fails naming it
    (part / "b.parquet").unlink()
    with pytest.raises(LakeStateError, match=r"file=dt=2026-01-01/hour=00/b\.parquet"):
        await read_all(parquet_lake(tmp_path), before.state)


# --- Iceberg: the pinned snapshot and its lineage -------------------------------------------------


async def test_iceberg_pins_a_snapshot_and_offsets_follow_its_lineage(
    iceberg_catalog_props: dict[str, str],
) -> None:
    table = events(2000, 6)
    writer = IcebergLakeWriter("db.pinned", iceberg_catalog_props, TIME)
    writer.write(table.slice(0, 800), offsets={0: 800}, topic="t")
    writer.write(table.slice(800, 700), offsets={0: 1500}, topic="t")
    lake = ls.IcebergLake("db.pinned", iceberg_catalog_props, TIME, batch_size=50)
    before = await interrupted(lake, after=3)
    pinned = before.state["state"]
    assert pinned["kind"] == "snapshot" and pinned["offsets"] == {"0": 1500}
    writer.write(table.slice(1500), offsets={0: 2000}, topic="t")  # after the pin
    restored = ls.IcebergLake("db.pinned", iceberg_catalog_props, TIME, batch_size=50)
    assert before.seen + await read_all(restored, before.state) == ids(table.slice(0, 1500))
    # a rollback removes the newest snapshot from the lineage: its offsets no longer count
    catalog_table = writer._load()
    snapshots = catalog_table.snapshots()
    catalog_table.manage_snapshots().rollback_to_snapshot(snapshots[1].snapshot_id).commit()
    fresh = ls.IcebergLake("db.pinned", iceberg_catalog_props, TIME)
    recorded = await fresh.recorded_offsets()
    assert recorded is not None and recorded.offsets == {0: 1500}
    assert await read_all(fresh) == ids(table.slice(0, 1500))


# --- the true high-water mark, with a real archiver ---------------------------------------------


async def test_a_half_written_hour_hands_over_without_losing_a_record(
    kafka: KafkaService, tmp_path: Path
) -> None:
    """The archiver stopped at 13:20 in the middle of an hour partition; the topic still holds
    every event. The default cutoff is what the lake truly covers (recorded by the archiver),
    so lake + stream is every event exactly once (before: the partition end 14:00 was the
    cutoff and 13:20–14:00 was in neither side, uncounted)."""
    table = generate_clickstream(3000, 1, 30, seed=11, jitter="0s").select(COLUMNS)
    table = table.sort_by(TIME)
    times = pc.cast(table.column(TIME), pa.int64())
    start = int(pc.min(times).as_py())
    stop = (start // HOUR) * HOUR + 13 * HOUR + 20 * MINUTE
    archived = table.filter(pc.less(times, stop))
    assert 0 < archived.num_rows < table.num_rows
    topic = await asyncio.to_thread(kafka.new_topic, 1)

    def messages(rows: pa.Table) -> tuple[list[bytes], list[int]]:
        values = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in rows.to_pylist()]
        stamps = (pc.cast(rows.column(TIME), pa.int64()).to_numpy() // MS).tolist()
        return values, stamps

    values, stamps = messages(archived)
    await kafka.aproduce(topic, values, partition=0, timestamps_ms=stamps)
    schema = table.schema
    writer = ParquetLakeWriter(tmp_path / "lake", TIME)
    await Archiver(
        kafka.bootstrap,
        topic,
        writer,
        TIME,
        schema=schema,
        stop_at="latest",
        out_of_orderness="0s",
    ).run()
    assert writer.commits()[-1].high_watermark is not None
    values, stamps = messages(table.filter(pc.greater_equal(times, stop)))
    await kafka.aproduce(topic, values, partition=0, timestamps_ms=stamps)

    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME),
        ls.KafkaStream(topic, kafka.bootstrap, time_column=TIME, schema=schema, stop_at="latest"),
        out_of_orderness="5m",
        idle_timeout="200ms",
    )
    sink = ls.CollectSink()
    pipeline = ls.Pipeline()
    pipeline.source(source).sink(sink)
    await pipeline.run()
    assert ids(sink.table()) == ids(table)
    assert source.cutoff is not None and source.cutoff <= stop
    metrics = source.metrics()
    assert metrics["pinned"]["kind"] == "commits"
    # what the stream held before the cutoff was dropped and counted (the lake has it)
    assert metrics["dropped_before_cutoff"] > 0


async def test_inspect_shows_the_pinned_state_of_a_checkpoint(tmp_path: Path) -> None:
    table = events(1500, 7)
    ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=100).write(
        table, offsets={0: 1500, 1: 7}, topic="clicks"
    )
    lake = ls.ParquetLake(tmp_path / "lake", TIME, batch_size=10)

    def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(0.003)  # a slow step, so checkpoints complete while the lake is read
        return batch

    pipeline = ls.Pipeline(checkpoints=ls.Checkpoints((tmp_path / "ckpt").as_uri(), "20ms"))
    pipeline.source(lake).map(slow).sink(ls.CollectSink())
    await pipeline.run()
    checkpoint, sources = await acheckpoint_sources((tmp_path / "ckpt").as_uri())
    text = format_checkpoint(checkpoint, sources)
    assert "pinned lake state: commit sequence 1" in text
    assert "recorded offsets (topic clicks): 0:1500, 1:7" in text
    assert "lake position: partition" in text


class Watch(Interrupt):
    """Also checks the watermark rule on what is emitted: no row at or before the watermark,
    and no batch spanning more than ``span`` ahead of it."""

    def __init__(self, lake: LakeSource, after: int | None, span: int) -> None:
        super().__init__(lake, after)
        self.span = span
        self.mark: int | None = None
        self.worst_lead = 0

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        await super().emit(batch, position)
        times = pc.cast(batch.column(TIME), pa.int64()).to_numpy()
        if self.mark is not None:
            assert int(times.min()) > self.mark, "a lake row at or before the watermark"
            self.worst_lead = max(self.worst_lead, int(times.max()) - self.mark)

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        self.mark = time


async def test_overlapping_files_are_merged_by_time_and_resume_exactly(tmp_path: Path) -> None:
    """Two files per partition covering the same hour (an archiver commit beside a backfill):
    the reader merges them by time, emits slices of at most ``batch_span`` with a watermark
    after each, and a restore at any point inside the merged partition is exact."""
    table = events(6000, 8)
    writer = ParquetLakeWriter(tmp_path, TIME, row_group_rows=100)
    even = pc.equal(pc.bit_wise_and(table.column("event_id"), 1), 0)
    writer.write(table.filter(even), offsets={0: 1}, topic="t")
    writer.write(table.filter(pc.invert(even)), offsets={0: 2}, topic="t")
    span = 10 * MINUTE

    def lake() -> ls.ParquetLake:
        source = ls.ParquetLake(tmp_path, TIME, batch_size=64)
        source.batch_span = span
        return source

    source = lake()
    whole = Watch(source, None, span)
    await source.run(whole)
    assert whole.seen == ids(table)
    assert whole.worst_lead <= span
    for after in (1, 5, 17, 40):
        source = lake()
        first = Watch(source, after, span)
        with pytest.raises(Stop):
            await source.run(first)
        assert first.state["position"]["file"] in (None, "<files merged by time>")
        assert first.seen + await read_all(lake(), first.state) == ids(table)
