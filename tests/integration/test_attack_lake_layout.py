"""Attack: lakes laid out the way users' own writers leave them — files of one hour partition that
overlap and are unsorted, rows filed under the hour they *arrived* in (a few minutes into the next
partition), and ``until=`` in the middle of an hour — read alone and through the lambda source
(aligned and not).

Oracle: the event ids written (multiset) and the watermark rule at the sink: no row at or before
a watermark the sink already received.
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
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from lake.generator import generate_clickstream
from lambdasource.timeutil import HOUR, MINUTE
from tests.integration.ordered import SCHEMA, TIME, OrderedSink
from tests.services.kafka import KafkaService


def events(n: int = 4000, seed: int = 3) -> pa.Table:
    table = generate_clickstream(n, 1, 30, seed=seed, jitter="4m")
    return table.select(SCHEMA.names).cast(SCHEMA)


def hour_of(times: np.ndarray) -> np.ndarray:
    return (times // HOUR) * HOUR


def write_file(root: Path, hour: int, name: str, rows: pa.Table, **kw: Any) -> None:
    stamp = pa.scalar(int(hour), pa.timestamp("us", tz="UTC")).as_py()
    path = root / f"dt={stamp:%Y-%m-%d}/hour={stamp:%H}/{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, path, row_group_size=kw.pop("row_group_size", 64), **kw)


def write_by_arrival(root: Path, table: pa.Table, lag: int) -> None:
    """Rows filed under the hour of ``time + lag`` (their arrival), two unsorted files per
    partition (split by event-id parity), as an ingest job partitioning by processing time."""
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    arrival = hour_of(times + lag)
    rng = np.random.default_rng(1)
    for hour in np.unique(arrival):
        rows = table.filter(pa.array(arrival == hour))
        rows = rows.take(pa.array(rng.permutation(rows.num_rows)))
        even = pc.equal(pc.bit_wise_and(rows.column("event_id"), 1), 0)
        write_file(root, int(hour), "a", rows.filter(even))
        write_file(root, int(hour), "b", rows.filter(pc.invert(even)))


def write_overlapping_unsorted(root: Path, table: pa.Table) -> None:
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    hours = hour_of(times)
    rng = np.random.default_rng(2)
    for hour in np.unique(hours):
        rows = table.filter(pa.array(hours == hour))
        rows = rows.take(pa.array(rng.permutation(rows.num_rows)))
        third = rows.num_rows // 3
        write_file(root, int(hour), "x", rows.slice(0, third))
        write_file(root, int(hour), "y", rows.slice(third, third).sort_by(TIME))
        write_file(root, int(hour), "z", rows.slice(2 * third))


async def run_lake(lake: ls.Source) -> OrderedSink:
    sink = OrderedSink()
    p = ls.Pipeline()
    p.source(lake).sink(sink)
    await asyncio.wait_for(p.run(), 120)
    return sink


@pytest.mark.parametrize("declared", [True, False], ids=["event-time-partitioned", "not"])
async def test_rows_filed_under_their_arrival_hour_are_never_late(
    tmp_path: Path, declared: bool
) -> None:
    """Rows 0–6 minutes into the next hour partition: the partition-end watermark of hour h must
    be capped by the statistics of partition h+1 (which starts inside hour h)."""
    table = events()
    write_by_arrival(tmp_path, table, lag=6 * MINUTE)
    lake = ls.ParquetLake(
        tmp_path,
        TIME,
        schema=SCHEMA,
        batch_size=50,
        event_time_partitioned=declared,
        out_of_orderness="10m",
    )
    sink = await run_lake(lake)
    assert sink.ids() == Counter(table.column("event_id").to_pylist())
    late = sink.late()
    assert not late, f"{len(late)} lake rows at or before the watermark, first {late[:3]}"


async def test_overlapping_unsorted_files_are_never_late(tmp_path: Path) -> None:
    table = events(seed=4)
    write_overlapping_unsorted(tmp_path, table)
    sink = await run_lake(ls.ParquetLake(tmp_path, TIME, schema=SCHEMA, batch_size=50))
    assert sink.ids() == Counter(table.column("event_id").to_pylist())
    assert not sink.late()


@pytest.mark.parametrize("until_min", [0, 1, 37])
async def test_until_in_the_middle_of_an_hour(tmp_path: Path, until_min: int) -> None:
    table = events(seed=6)
    write_overlapping_unsorted(tmp_path, table)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    until = int(hour_of(times.min()) + 9 * HOUR + until_min * MINUTE)
    sink = await run_lake(ls.ParquetLake(tmp_path, TIME, schema=SCHEMA, batch_size=50, until=until))
    expected = Counter(table.filter(pa.array(times < until)).column("event_id").to_pylist())
    assert sink.ids() == expected
    assert not sink.late()
    assert sink.watermarks and sink.watermarks[-1] <= until - 1


@pytest.mark.kafka
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("until_min", [None, 37], ids=["no-until", "until-mid-hour"])
async def test_lambda_over_a_lake_filed_by_arrival(
    kafka: KafkaService, tmp_path: Path, aligned: bool, until_min: int | None
) -> None:
    """Timestamp handoff at the default cutoff over a lake filed by arrival hour (and optionally
    cut by ``until`` mid-hour); the stream holds the last 2 h of the lake onwards."""
    table = events(seed=8)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    base = int(hour_of(times.min()))
    lake_end = base + 14 * HOUR
    write_by_arrival(tmp_path / "lake", table.filter(pa.array(times < lake_end)), 6 * MINUTE)
    arrival = np.maximum.accumulate(times)
    keep = arrival >= lake_end - 3 * HOUR
    stream_rows = table.filter(pa.array(keep))
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    values = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in stream_rows.to_pylist()]
    await kafka.aproduce(topic, values, partition=0, timestamps_ms=(arrival[keep] // 1000).tolist())
    until = None if until_min is None else base + 12 * HOUR + until_min * MINUTE
    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA, batch_size=50, until=until),
        ls.KafkaStream(topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"),
        out_of_orderness="10m",
        idle_timeout="200ms",
        alignment=ls.Alignment(max_drift="10m") if aligned else None,
    )
    sink = await run_lake(source)
    expected = Counter(table.column("event_id").to_pylist())
    got = sink.ids()
    assert got == expected, (
        f"cutoff {source.cutoff}: missing {sum((expected - got).values())}, duplicated "
        f"{sum((got - expected).values())}"
    )
    if until is not None:
        assert source.cutoff is not None and source.cutoff <= until
    late = sink.late()
    assert not late, f"{len(late)} rows at or before the watermark, first {late[:3]}"


@pytest.mark.parametrize("until_min", [1, 37])
async def test_until_mid_hour_does_not_complete_the_hour_window(
    tmp_path: Path, until_min: int
) -> None:
    """A bounded run ends at ``until`` (README "End of a bounded run"): the hourly window that
    holds ``until`` has not completed, so it is not emitted (only with ``flush="all"``)."""
    table = events(seed=6)
    write_overlapping_unsorted(tmp_path, table)
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    until = int(hour_of(times.min()) + 9 * HOUR + until_min * MINUTE)
    sink = ls.CollectSink()
    p = ls.Pipeline()
    (
        p.source(ls.ParquetLake(tmp_path, TIME, schema=SCHEMA, batch_size=50, until=until))
        .key_by("user_id")
        .window(ls.Tumbling(size="1h"), emit="every")
        .aggregate(n=ls.count())
        .sink(sink)
    )
    await asyncio.wait_for(p.run(), 120)
    out = sink.table()
    ends = pc.cast(out.column("window_end"), pa.int64()).to_numpy()
    assert int(ends.max()) <= until, (
        f"window ending {int(ends.max())} emitted although the lake ends at until={until}"
    )
    # and what was emitted is right: per-user counts of the complete hours before until
    done = int(hour_of(np.int64(until)))
    sel = table.filter(pa.array(times < done))
    ref = Counter(
        zip(
            sel.column("user_id").to_pylist(),
            (hour_of(pc.cast(sel.column(TIME), pa.int64()).to_numpy()) + HOUR).tolist(),
            strict=True,
        )
    )
    got = {
        (u, int(e)): n
        for u, e, n in zip(
            out.column("user_id").to_pylist(),
            ends.tolist(),
            out.column("n").to_pylist(),
            strict=True,
        )
    }
    assert got == dict(ref)
