"""Attack: lakes whose time column is not ``timestamp[us, UTC]`` (README: "Arrow timestamps of any
unit — naive means UTC — or int64 epoch milliseconds"), with a timestamp handoff at the default
cutoff (the high-water mark from statistics) to a JSON stream.

A unit mix-up anywhere (statistics read as µs, a cutoff compared in the wrong unit, a watermark
in ms) shows as lost or duplicated records around the handoff, or rows at or before a watermark.

Oracle: the lake holds every event before ``lake_end``, the stream every event from
``lake_end - 2h`` on (arrival order); whatever the cutoff in between, lake + stream must be every
event exactly once, none late. Times are whole milliseconds so every unit is exact.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from lake.generator import generate_clickstream
from lambdasource.timeutil import HOUR, MINUTE
from tests.integration.ordered import TIME, OrderedSink
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka


def events() -> pa.Table:
    table = generate_clickstream(3000, 1, 30, seed=5, jitter="3m").select(
        ["event_time", "event_id", "user_id", "amount"]
    )
    ms = pc.multiply(pc.divide(pc.cast(table.column(TIME), pa.int64()), 1000), 1000)
    return table.set_column(0, TIME, pc.cast(ms, pa.timestamp("us", tz="UTC")))


def as_type(col: pa.ChunkedArray, kind: str) -> pa.ChunkedArray:
    if kind == "int64-ms":
        return pc.divide(pc.cast(col, pa.int64()), 1000)
    if kind == "ns-naive":
        return pc.cast(pc.cast(col, pa.timestamp("ns", tz="UTC")), pa.timestamp("ns"))
    if kind == "ms-new-york":
        return pc.cast(col, pa.timestamp("ms", tz="America/New_York"))
    if kind == "s-naive":
        return pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.timestamp("us"))
    raise AssertionError(kind)


def write_hive(root: Path, table: pa.Table, kind: str) -> None:
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    hours = (times // HOUR) * HOUR
    for n, hour in enumerate(np.unique(hours)):
        part = table.filter(pa.array(hours == hour)).sort_by(TIME)
        part = part.set_column(0, TIME, as_type(part.column(TIME), kind))
        stamp = pa.scalar(int(hour), pa.timestamp("us", tz="UTC")).as_py()
        rel = root / f"dt={stamp:%Y-%m-%d}/hour={stamp:%H}/part-{n:03d}.parquet"
        rel.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, rel, row_group_size=100)


@pytest.mark.parametrize("kind", ["int64-ms", "ns-naive", "ms-new-york", "s-naive"])
async def test_timestamp_handoff_with_any_time_unit(
    kafka: KafkaService, tmp_path: Path, kind: str
) -> None:
    table = events()
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    start = int(times.min()) // HOUR * HOUR
    lake_end = start + 13 * HOUR + 25 * MINUTE
    write_hive(tmp_path, table.filter(pa.array(times < lake_end)), kind)
    arrival = np.maximum.accumulate(times)
    stream_rows = table.filter(pa.array(arrival >= lake_end - 2 * HOUR))
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    int_ms = kind == "int64-ms"
    rows = stream_rows.to_pylist()
    values = [
        orjson.dumps(
            {
                **r,
                TIME: int(pa.scalar(r[TIME]).cast(pa.int64()).as_py() // 1000)
                if int_ms
                else r[TIME].isoformat(),
            }
        )
        for r in rows
    ]
    stamps = (arrival[arrival >= lake_end - 2 * HOUR] // 1000).tolist()
    await kafka.aproduce(topic, values, partition=0, timestamps_ms=stamps)
    schema = pa.schema(
        [
            pa.field(TIME, pa.int64() if int_ms else pa.timestamp("us", tz="UTC")),
            pa.field("event_id", pa.int64()),
            pa.field("user_id", pa.int64()),
            pa.field("amount", pa.float64()),
        ]
    )
    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path, TIME, schema=schema, batch_size=100),
        ls.KafkaStream(topic, kafka.bootstrap, time_column=TIME, schema=schema, stop_at="latest"),
        out_of_orderness="10m",
        idle_timeout="200ms",
    )
    sink = OrderedSink(to_us=1000 if int_ms else 1)
    p = ls.Pipeline()
    p.source(source).sink(sink)
    await asyncio.wait_for(p.run(), 120)
    expected = Counter(table.column("event_id").to_pylist())
    got = sink.ids()
    newest = int(times[times < lake_end].max())
    assert got == expected, (
        f"cutoff {source.cutoff} (lake newest {newest}): missing "
        f"{sum((expected - got).values())}, duplicated {sum((got - expected).values())}"
    )
    assert source.cutoff == newest + 1 - 10 * MINUTE
    assert not sink.late()
