"""Attack (round 2): lake-only bounded jobs with ``start``/``until`` inside hours, windows at the
end of the run with the default flush and ``flush="all"``, and ``ls.backfill`` with a filter.

Oracle: pyarrow/DuckDB over the input table — per (user, window_end) counts of the rows in
``[start, until)``; with the default flush only windows whose end ≤ ``until`` (the run's end
time), with ``flush="all"`` every window holding a row; for the backfill the filtered rows by id.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from tests.integration.test_attack2_checkpoint_graph import SCHEMA, TIME, events, reference

HOUR = 3_600_000_000
MINUTE = 60_000_000


def window_rows(sink: ls.CollectSink) -> dict[tuple[int, int], int]:
    t = sink.table()
    if t.num_rows == 0:
        return {}
    ends = pc.cast(t.column("window_end"), pa.int64()).to_pylist()
    return dict(
        zip(
            zip(t.column("user_id").to_pylist(), ends, strict=True),
            t.column("n").to_pylist(),
            strict=True,
        )
    )


@pytest.mark.parametrize("flush", ["watermark", "all"])
@pytest.mark.parametrize("size", ["1h", "3h"])
async def test_bounded_lake_range_windows(tmp_path: Path, flush: str, size: str) -> None:
    table = events(4000, 11)
    ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=64).write(table)
    t0 = int(pc.min(pc.cast(table.column(TIME), pa.int64())).as_py()) // HOUR * HOUR
    start, until = t0 + 2 * HOUR + 17 * MINUTE, t0 + 9 * HOUR + 41 * MINUTE
    ts = pa.timestamp("us", tz="UTC")
    lake = ls.ParquetLake(
        tmp_path / "lake",
        TIME,
        schema=SCHEMA,
        batch_size=50,
        start=pa.scalar(start, ts).as_py(),
        until=pa.scalar(until, ts).as_py(),
    )
    sink = ls.CollectSink()
    p = ls.Pipeline(flush=flush)
    p.source(lake).key_by("user_id").window(ls.Tumbling(size)).aggregate(n=ls.count()).sink(sink)
    await asyncio.wait_for(p.run(), 60)
    times = pc.cast(table.column(TIME), pa.int64())
    inside = table.filter(pc.and_(pc.greater_equal(times, start), pc.less(times, until)))
    size_us = {"1h": HOUR, "3h": 3 * HOUR}[size]
    want = reference(inside, size_us)
    if flush == "watermark":
        want = {k: v for k, v in want.items() if k[1] <= until}
    got = window_rows(sink)
    assert got == want, (
        f"extra/wrong {sorted(set(got.items()) - set(want.items()))[:5]}, "
        f"missing {sorted(set(want.items()) - set(got.items()))[:5]}"
    )


async def test_backfill_with_a_filter_into_duckdb(tmp_path: Path) -> None:
    import duckdb

    table = events(4000, 12)
    ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=64).write(table)
    t0 = int(pc.min(pc.cast(table.column(TIME), pa.int64())).as_py()) // HOUR * HOUR
    start, until = t0 + 1 * HOUR + 30 * MINUTE, t0 + 7 * HOUR + 5 * MINUTE
    ts = pa.timestamp("us", tz="UTC")
    db = tmp_path / "out.duckdb"
    for _ in range(2):  # a replay is idempotent
        await ls.backfill(
            ls.ParquetLake(
                tmp_path / "lake",
                TIME,
                schema=SCHEMA,
                start=pa.scalar(start, ts).as_py(),
                until=pa.scalar(until, ts).as_py(),
                batch_size=100,
            ),
            ls.DuckDBUpsert(str(db), table="amounts", key=["event_id"]),
            where=pc.field("amount") > 0,
        )
    times = pc.cast(table.column(TIME), pa.int64())
    mask = pc.and_(
        pc.and_(pc.greater_equal(times, start), pc.less(times, until)),
        pc.greater(table.column("amount"), 0),
    )
    want = sorted(table.filter(mask).column("event_id").to_pylist())
    assert want, "the filter kept nothing: a useless test"
    with duckdb.connect(str(db), read_only=True) as con:
        got = [r[0] for r in con.sql("SELECT event_id FROM amounts ORDER BY 1").fetchall()]
    assert got == want, (len(got), len(want), sorted(set(want) - set(got))[:5])
