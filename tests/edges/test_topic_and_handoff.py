"""Edge cases where the topic and the lake disagree, and handoffs at the lake's edges (issue 12).

Each test's docstring gives the verdict before its fix. Oracle: the multiset of event ids
delivered (``OrderedSink``) against the ids produced — one lost or duplicated record fails.

- a fresh offsets-handoff run while the archiver commits every 0.2 s (Parquet and Iceberg);
- an Iceberg rollback: the archiver resumes at the offsets of the remaining lineage;
- the default timestamp cutoff of a lake bounded by ``until``;
- a recorded (or restored) offset beyond a partition's end: the topic was recreated;
- partitions added to a topic: read by an unbounded stream and archived (Apache Kafka: Tansu
  cannot add partitions) — see ``test_partitions_added.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

import lambdasource as ls
from lake.archiver import Archiver
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from lambdasource.timeutil import HOUR, MINUTE
from tests.faults.test_archiving_race import race_run, report
from tests.integration.ordered import SCHEMA, TIME, OrderedSink
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def events(ids: range, start: int = T0, step: int = MINUTE) -> pa.Table:
    """One event per id, ``step`` apart from ``start``; user = id % 7."""
    return pa.table(
        {
            TIME: pa.array([start + (i - ids.start) * step for i in ids], SCHEMA.field(TIME).type),
            "event_id": pa.array(list(ids), pa.int64()),
            "user_id": pa.array([i % 7 for i in ids], pa.int64()),
            "amount": pa.array([float(i) for i in ids], pa.float64()),
        },
        schema=SCHEMA,
    )


def messages(table: pa.Table) -> tuple[list[bytes], list[int]]:
    rows = table.to_pylist()
    values = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in rows]
    stamps = [int(r[TIME].timestamp() * 1000) for r in rows]
    return values, stamps


async def produce(kafka: KafkaService, topic: str, table: pa.Table) -> None:
    values, stamps = messages(table)
    await kafka.aproduce(topic, values, partition=0, timestamps_ms=stamps)


def stream(kafka: KafkaService, topic: str, **options: Any) -> ls.KafkaStream:
    return ls.KafkaStream(
        topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest", **options
    )


async def run_source(source: Any, limit_s: float = 60.0) -> OrderedSink:
    sink = OrderedSink()
    pipeline = ls.Pipeline()
    pipeline.source(source).sink(sink)
    await asyncio.wait_for(pipeline.run(), limit_s)
    return sink


# --- the archiver racing fresh jobs ----------------------------------------------------------


@pytest.mark.parametrize("lake_kind", ["parquet", "iceberg"])
async def test_fresh_offsets_handoff_while_the_archiver_commits(
    kafka: KafkaService, tmp_path: Path, lake_kind: str
) -> None:
    """Before (8f6a9df): about 1 fresh run in 8 duplicated 26–33 records, the recorded offsets
    and the file list coming from different commits. After: one pinned lake state, exact (three
    job starts per lake kind here; 10 seeds × 2 lake kinds in the slow suite)."""
    report(f"archiving-race-{lake_kind}", [await race_run(kafka, tmp_path, 100, lake_kind)])


# --- Iceberg rollback ------------------------------------------------------------------------


async def test_archiver_resumes_at_the_lineage_after_an_iceberg_rollback(
    kafka: KafkaService, iceberg_catalog_props: dict[str, str]
) -> None:
    """A rollback removes the newest snapshots; the archiver must archive their records again.
    Before: it resumed at the offsets merged over every snapshot (including the rolled-back
    ones), so ids 100–299 were in neither the lake nor the handoff's stream range."""
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    await produce(kafka, topic, events(range(300)))
    writer = IcebergLakeWriter("db.rollback", iceberg_catalog_props, TIME)

    def archiver() -> Archiver:
        return Archiver(
            kafka.bootstrap, topic, writer, TIME, schema=SCHEMA, commit_rows=100, stop_at="latest"
        )

    await archiver().run()
    table = writer.table()
    first = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)[0]
    table.manage_snapshots().rollback_to_snapshot(first.snapshot_id).commit()
    await produce(kafka, topic, events(range(300, 400), start=T0 + 300 * MINUTE))
    summary = await archiver().run()
    assert summary.records == 300  # 100..399, archived again after the rollback

    lake = ls.IcebergLake("db.rollback", iceberg_catalog_props, TIME, schema=SCHEMA)
    assert (await run_source(lake)).ids() == Counter(range(400))
    lambda_source = ls.LambdaSource(
        ls.IcebergLake("db.rollback", iceberg_catalog_props, TIME, schema=SCHEMA),
        stream(kafka, topic),
        handoff="offsets",
    )
    sink = await run_source(lambda_source)
    assert sink.ids() == Counter(range(400))
    assert lambda_source.metrics()["rows"].get("stream", 0) == 0  # the lake has it all


# --- the default timestamp cutoff of a bounded lake -----------------------------------------


async def test_default_cutoff_respects_the_lakes_until(kafka: KafkaService, tmp_path: Path) -> None:
    """Lake 00:00–04:00 read with ``until=01:30``; the topic holds everything. Before: the
    default cutoff was the lake's end (04:00), so 01:30–03:59 was in neither side (one record
    counted). After: the cutoff is ``until`` and every record arrives once."""
    table = events(range(240))  # one per minute, 00:00..03:59
    writer = ParquetLakeWriter(tmp_path / "lake", TIME)
    writer.write(table)
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    await produce(kafka, topic, table)
    until = datetime(2026, 1, 1, 1, 30, tzinfo=UTC)
    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA, until=until),
        stream(kafka, topic),
        out_of_orderness="0s",
    )
    sink = await run_source(source)
    assert sink.ids() == Counter(range(240))
    assert source.cutoff == T0 + HOUR + 30 * MINUTE


# --- offsets beyond a partition's end: the topic was recreated ------------------------------


async def lake_with_offsets(root: Path, table: pa.Table, topic: str, offset: int) -> None:
    ParquetLakeWriter(root, TIME).write(table, offsets={0: offset}, topic=topic)


async def test_recorded_offset_beyond_the_partition_end_fails_like_a_gap(
    kafka: KafkaService, tmp_path: Path
) -> None:
    """The lake archived offsets 0..499 of a topic that was then deleted and recreated with 100
    new records. Before: the stream waited at offset 500 forever and never read offsets 0..99
    (the test timed out). After: ``HandoffGapError`` naming partition and offsets; with
    ``allow_gaps=True`` the new records are read from offset 0, counted."""
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    await lake_with_offsets(tmp_path / "lake", events(range(500)), topic, 500)
    await produce(kafka, topic, events(range(1000, 1100), start=T0 + 600 * MINUTE))

    def source(**options: Any) -> ls.LambdaSource:
        return ls.LambdaSource(
            ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA),
            stream(kafka, topic),
            handoff="offsets",
            **options,
        )

    with pytest.raises(ls.HandoffGapError, match=r"partition=0: .*offset 500.*ends at offset 100"):
        await run_source(source(), 20.0)
    allowed = source(allow_gaps=True)
    sink = await run_source(allowed, 20.0)
    assert sink.ids() == Counter([*range(500), *range(1000, 1100)])
    assert allowed.metrics()["recorded_beyond_end"] == {0: {"recorded": 500, "end": 100}}


async def test_restored_stream_position_beyond_the_end_is_an_error(kafka: KafkaService) -> None:
    """A checkpoint's position 500 on a recreated topic of 100 records. Before: the stream waited
    at 500 forever. After: ``StreamGapError`` naming partition and offsets, at open."""
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    await produce(kafka, topic, events(range(100)))
    recreated = stream(kafka, topic)
    recreated.restore({"positions": {0: 500}, "held": {}})
    with pytest.raises(ls.StreamGapError, match=r"partition=0: start offset 500 .* end offset 100"):
        await run_source(recreated, 20.0)
    explicit = stream(kafka, topic, start={0: 100})  # exactly the end: nothing to read, fine
    assert (await run_source(explicit, 20.0)).ids() == Counter()


async def test_archiver_refuses_a_recreated_topic(kafka: KafkaService, tmp_path: Path) -> None:
    """The lake is complete up to offset 500; the topic now ends at 100. Before: the archiver
    returned at once with nothing archived and no word (bounded), or waited forever (unbounded).
    After: ``StreamGapError`` naming partition and offsets, both ways; the lake is untouched."""
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    await lake_with_offsets(tmp_path / "lake", events(range(500)), topic, 500)
    await produce(kafka, topic, events(range(1000, 1100)))
    writer = ParquetLakeWriter(tmp_path / "lake", TIME)
    for stop_at in ("latest", None):
        archiver = Archiver(
            kafka.bootstrap,
            topic,
            writer,
            TIME,
            schema=SCHEMA,
            stop_at=stop_at,
        )
        with pytest.raises(
            ls.StreamGapError, match=r"partition=0: .*offset 500.*ends at offset 100"
        ):
            await asyncio.wait_for(archiver.run(), 20.0)
    assert [c.sequence for c in writer.commits()] == [1]


# --- timestamp handoff over a topic that retention trimmed --------------------------------------


@pytest.mark.parametrize(("retained_from", "gap"), [(100, False), (150, True)])
async def test_timestamp_handoff_detects_records_deleted_after_the_cutoff(
    kafka: KafkaService, tmp_path: Path, retained_from: int, gap: bool
) -> None:
    """Lake and topic hold one record per minute 00:00–03:59; cutoff 02:00 (offset 120).
    Retention (simulated: the earliest retained offset) deleted offsets below ``retained_from``.
    Below 120 nothing after the cutoff is gone: exact. At 150 the records 02:00–02:29 are in
    neither side. Before: the stream silently started at 150 (30 records lost, uncounted).
    After: ``HandoffGapError`` naming the partition and the offset; ``allow_gaps=True``
    continues, counted in ``deleted_before``."""
    table = events(range(240))
    ParquetLakeWriter(tmp_path / "lake", TIME).write(table)
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    await produce(kafka, topic, table)

    def source(**options: Any) -> ls.LambdaSource:
        trimmed = stream(kafka, topic)

        async def retained(partitions: list[int]) -> dict[int, int]:
            return dict.fromkeys(partitions, retained_from)

        trimmed.beginning_offsets = retained
        return ls.LambdaSource(
            ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA),
            trimmed,
            cutoff=datetime(2026, 1, 1, 2, tzinfo=UTC),
            out_of_orderness="0s",
            **options,
        )

    if not gap:
        assert (await run_source(source())).ids() == Counter(range(240))
        return
    with pytest.raises(ls.HandoffGapError, match=r"partition=0: .*offset 150, is already"):
        await run_source(source(), 20.0)
    allowed = source(allow_gaps=True)
    assert (await run_source(allowed)).ids() == Counter([*range(120), *range(150, 240)])
    assert allowed.metrics()["deleted_before"] == {0: 150}
