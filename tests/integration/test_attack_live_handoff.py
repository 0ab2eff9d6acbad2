"""Attack: a live lambda job whose lake ends in the middle of an hour partition.

The archiver stopped at 13:20 inside hour partition 13 (a half-written newest hour). A job
starts on lake + an unbounded stream that is caught up (nothing newer yet), goes idle, and then
live records for 13:20 onwards arrive. Those records are neither in the lake nor older than what
the lake truly covers (its recorded high-water mark), so none may be late: the lake must not
promise the rest of hour 13 with a partition-end watermark (13:59:59.999999).

Oracle: every generated event id exactly once, and no row at or before a watermark already
seen at the sink (the operator after the source).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.archiver import Archiver
from lake.generator import generate_clickstream
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from lambdasource.timeutil import HOUR, MINUTE, MS
from tests.integration.ordered import TIME, OrderedSink
from tests.services.iceberg import file_catalog_props
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

COLUMNS = ["event_id", "event_time", "user_id", "amount"]


def messages(rows: pa.Table) -> tuple[list[bytes], list[int]]:
    values = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in rows.to_pylist()]
    stamps = (pc.cast(rows.column(TIME), pa.int64()).to_numpy() // MS).tolist()
    return values, stamps


async def half_written_lake(
    kafka: KafkaService, writer: Any, seed: int
) -> tuple[str, pa.Table, pa.Table, int]:
    table = generate_clickstream(3000, 1, 30, seed=seed, jitter="0s").select(COLUMNS)
    table = table.sort_by(TIME)
    times = pc.cast(table.column(TIME), pa.int64())
    start = int(pc.min(times).as_py())
    stop = (start // HOUR) * HOUR + 13 * HOUR + 20 * MINUTE
    archived = table.filter(pc.less(times, stop))
    rest = table.filter(pc.greater_equal(times, stop))
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    values, stamps = messages(archived)
    await kafka.aproduce(topic, values, partition=0, timestamps_ms=stamps)
    await Archiver(
        kafka.bootstrap,
        topic,
        writer,
        TIME,
        schema=table.schema,
        stop_at="latest",
        out_of_orderness="0s",
    ).run()
    return topic, archived, rest, stop


async def wait_for(predicate: Any, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("handoff", ["timestamp", "offsets"])
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("kind", ["parquet", pytest.param("iceberg", marks=pytest.mark.iceberg)])
async def test_live_records_after_a_half_written_hour_are_not_late(
    kafka: KafkaService, tmp_path: Path, handoff: str, aligned: bool, kind: str
) -> None:
    lake: ls.Source
    if kind == "parquet":
        writer: Any = ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=200)
        lake = ls.ParquetLake(tmp_path / "lake", TIME)
    else:
        props = file_catalog_props(tmp_path / "ice")
        writer = IcebergLakeWriter("db.half", props, TIME, row_group_rows=200)
        lake = ls.IcebergLake("db.half", props, TIME)
    topic, archived, rest, stop = await half_written_lake(kafka, writer, seed=21)
    source = ls.LambdaSource(
        lake,
        ls.KafkaStream(topic, kafka.bootstrap, time_column=TIME, schema=archived.schema),
        handoff=handoff,
        out_of_orderness="5m",
        idle_timeout="200ms",
        alignment=ls.Alignment(max_drift="30m") if aligned else None,
    )
    sink = OrderedSink()
    pipeline = ls.Pipeline()
    pipeline.source(source).sink(sink)
    task = asyncio.create_task(pipeline.run())
    try:
        # the job catches up with lake + stream and the stream goes idle
        assert await wait_for(lambda: sum(sink.ids().values()) >= archived.num_rows, 30)
        await asyncio.sleep(1.5)
        mark = sink.last_watermark()
        # live records arrive: 13:20 onwards, in time order
        values, stamps = messages(rest)
        await kafka.aproduce(topic, values, partition=0, timestamps_ms=stamps)
        total = archived.num_rows + rest.num_rows
        await wait_for(lambda: sum(sink.ids().values()) >= total, 30)
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    expected = Counter(archived.column("event_id").to_pylist())
    expected.update(rest.column("event_id").to_pylist())
    got = sink.ids()
    assert got == expected, (
        f"missing {sum((expected - got).values())}, duplicated {sum((got - expected).values())}"
    )
    late = sink.late()
    assert not late, (
        f"{len(late)}+ live rows at or before the watermark (watermark before the live records: "
        f"{mark}, lake covered up to {stop}); first: {late[:3]}"
    )
