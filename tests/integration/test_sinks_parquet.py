"""ParquetSink: hour partitions, unique file names, sorted by time, local and moto-S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from lambdasource.sinks.parquet import ParquetSink

HOUR_US = 3_600_000_000


def data(n: int = 1_000) -> pa.Table:
    times = [(i * 7_919_000_000) % (5 * HOUR_US) for i in range(n)]
    return pa.table(
        {"t": pa.array(times, pa.timestamp("us", tz="UTC")), "i": pa.array(range(n), pa.int64())}
    )


async def write(sink: ParquetSink, table: pa.Table, flushes: int = 2) -> None:
    sink.bind(table.schema)
    await sink.open()
    for i, b in enumerate(table.to_batches(max_chunksize=table.num_rows // flushes)):
        await sink.write(b)
        await sink.flush()
        assert i < flushes + 1
    await sink.close()


async def test_local_hour_partitions(tmp_path: Path) -> None:
    table = data()
    sink = ParquetSink(tmp_path / "out", "t")
    await write(sink, table)
    files = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.parquet"))
    assert len(files) == len(set(files)) == 10  # 5 hours x 2 flushes
    assert {str(f.parent) for f in files} == {f"dt=1970-01-01/hour=0{h}" for h in range(5)}
    back = ds.dataset(tmp_path / "out", format="parquet").to_table()
    assert sorted(back.column("i").to_pylist()) == list(range(1_000))
    for f in files:
        t = ds.dataset(tmp_path / "out" / f).to_table().column("t").to_pylist()
        assert t == sorted(t)
        assert {x.hour for x in t} == {int(str(f.parent)[-2:])}
    assert sink.metrics()["rows_written"] == 1_000


@pytest.mark.s3
async def test_s3(s3: Any) -> None:
    bucket = s3.new_bucket("sink")
    sink = ParquetSink(f"s3://{bucket}/events", "t", s3=s3.config())
    await write(sink, data(100), flushes=1)
    fs = s3.config().pyarrow_filesystem()
    back = ds.dataset(f"{bucket}/events", filesystem=fs, format="parquet").to_table()
    assert back.num_rows == 100
