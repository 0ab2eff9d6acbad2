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

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.archiver import Archiver
from lake.generator import generate_clickstream
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from tests.services.iceberg import file_catalog_props
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

TIME = "event_time"
COLUMNS = ["event_id", "event_time", "user_id", "amount"]
HOUR = 3_600_000_000
MINUTE = 60_000_000
MS = 1000


class OrderedSink(ls.CollectSink):
    """Records the interleaving of batches and watermarks as the sink saw them."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, Any]] = []

    async def write(self, batch: pa.RecordBatch) -> None:
        await super().write(batch)
        if batch.num_rows:
            self.events.append(("batch", batch))

    async def on_watermark(self, watermark: int) -> None:
        await super().on_watermark(watermark)
        self.events.append(("wm", watermark))

    def ids(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for kind, payload in self.events:
            if kind == "batch":
                out.update(payload.column("event_id").to_pylist())
        return out

    def late(self) -> list[tuple[int, int, int]]:
        """(event_id, time, watermark) of every row at or before an earlier watermark."""
        last: int | None = None
        bad: list[tuple[int, int, int]] = []
        for kind, payload in self.events:
            if kind == "wm":
                last = payload if last is None else max(last, payload)
            elif last is not None:
                times = pc.cast(payload.column(TIME), pa.int64()).to_numpy()
                ids = payload.column("event_id").to_numpy()
                for i in np.flatnonzero(times <= last)[:5]:
                    bad.append((int(ids[i]), int(times[i]), last))
        return bad

    def last_watermark(self) -> int | None:
        marks = [p for k, p in self.events if k == "wm"]
        return marks[-1] if marks else None


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
