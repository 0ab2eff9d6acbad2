"""Backfill (source → filter → select → upsert store) against real stores and a DuckDB reference.

Includes a killed-and-rerun backfill (``kill -9`` of a subprocess mid-way, then a rerun: the store
equals the reference) and a windowed bootstrap (Sliding 1h/5m, ``emit="latest"``) into DuckDB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.generator import generate_clickstream
from lambdasource.backfill import BackfillProgress, backfill
from lambdasource.sinks.duckdb import DuckDBUpsert
from tests.integration.test_sinks_common import postgres_store, reference_state, rows

START = datetime(2024, 3, 1, tzinfo=UTC)
COLUMNS = ["user_id", "event_time", "event_id", "kind", "amount"]


def events(n: int = 4_000, seed: int = 1) -> pa.Table:
    return generate_clickstream(n, days=2, users=300, seed=seed, start=START, jitter="10m")


def read_duckdb(path: Path, table: str) -> pa.Table:
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(f'SELECT * FROM "{table}"').to_arrow_table()
    finally:
        con.close()


def latest_per_user(data: pa.Table) -> pa.Table:
    return reference_state([data.select(COLUMNS)], ["user_id"], "event_time")


async def test_backfill_memory_to_duckdb_matches_reference(tmp_path: Path) -> None:
    data = events()
    path = tmp_path / "s.duckdb"
    seen: list[BackfillProgress] = []
    summary = await backfill(
        ls.MemorySource(data, "event_time", batch_size=500),
        DuckDBUpsert(path, "clicks", key="user_id", batch_rows=1_000),
        key="user_id",
        select=["user_id", "kind", "amount", "event_id"],
        progress=seen.append,
        progress_interval=0.01,
    )
    assert summary.rows_read == data.num_rows
    assert summary.dead_letters == 0
    got = read_duckdb(path, "clicks")
    assert sorted(got.column_names) == sorted(COLUMNS)
    assert rows(got, COLUMNS) == rows(latest_per_user(data), COLUMNS)
    assert seen and seen[-1].rows_read == data.num_rows


async def test_backfill_where_and_replays_never_regress(tmp_path: Path) -> None:
    data = events()
    path = tmp_path / "s.duckdb"
    where = pc.field("kind") == "click"

    def run(source_data: pa.Table) -> Any:
        return backfill(
            ls.MemorySource(source_data, "event_time", batch_size=700),
            DuckDBUpsert(path, "clicks", key="user_id"),
            where=where,
            select=COLUMNS,
        )

    first = await run(data)
    clicks = data.filter(pc.equal(data.column("kind"), "click"))
    expected = rows(latest_per_user(clicks), COLUMNS)
    assert rows(read_duckdb(path, "clicks"), COLUMNS) == expected
    assert first.rows_written > 0
    again = await run(data)  # idempotent replay
    assert rows(read_duckdb(path, "clicks"), COLUMNS) == expected
    assert again.rows_written == first.rows_written  # equal versions rewrite, never regress
    older = data.filter(pc.less(data.column("event_time"), pa.scalar(START.replace(day=2))))
    replay = await run(older)  # an older range: every row is older than what is stored
    assert rows(read_duckdb(path, "clicks"), COLUMNS) == expected
    assert replay.rows_written + replay.skipped_older > 0


@pytest.mark.postgres
async def test_backfill_into_postgres(postgres: Any) -> None:
    from lambdasource.sinks.urls import sink_from_url

    data = events(3_000, seed=5)
    dsn = postgres.new_database()
    sink = sink_from_url(dsn, table="clicks", key=["user_id"], version="event_time")
    summary = await backfill(
        ls.MemorySource(data, "event_time", batch_size=400), sink, select=COLUMNS
    )
    assert summary.rows_read == 3_000
    got = postgres_store(dsn).read("clicks")
    assert rows(got, COLUMNS) == rows(latest_per_user(data), COLUMNS)


async def test_windowed_bootstrap_latest_equals_sql_reference(tmp_path: Path) -> None:
    from lambdasource import reference

    data = events(5_000, seed=3)
    path = tmp_path / "w.duckdb"
    p = ls.Pipeline()
    (
        p.source(ls.MemorySource(data, "event_time", batch_size=300, out_of_orderness="10m"))
        .key_by("user_id")
        .window(ls.Sliding("1h", "5m"), emit="latest")
        .aggregate(clicks=ls.count(), revenue=ls.sum("amount"))
        .sink(DuckDBUpsert(path, "user_1h", key=["user_id"], batch_rows=2_000))
    )
    await p.run()
    log = reference.sliding_changelog(
        data,
        time_column="event_time",
        keys="user_id",
        window=ls.Sliding("1h", "5m"),
        aggregates={"clicks": ("count", None), "revenue": ("sum", "amount")},
    )
    expected = reference.upsert_state(log.sort_by("window_end"), "user_id")
    got = read_duckdb(path, "user_1h")
    cols = ["user_id", "clicks", "revenue"]
    assert expected.num_rows > 0
    assert rows(got, cols) == rows(expected, cols)


KILLABLE = textwrap.dedent(
    """
    import asyncio, sys, time
    from datetime import UTC, datetime
    import lambdasource as ls
    from lake.generator import generate_clickstream
    from lambdasource.backfill import backfill
    from lambdasource.sinks.urls import sink_from_url

    url, slow = sys.argv[1], sys.argv[2] == "slow"
    data = generate_clickstream(20_000, days=2, users=500, seed=9,
                                start=datetime(2024, 3, 1, tzinfo=UTC), jitter="10m")
    sink = sink_from_url(url, table="clicks", key="user_id", version="event_time",
                         batch_rows=500, flush_interval="0s")

    def progress(p):
        print(f"written {p.rows_written}", flush=True)

    source = ls.MemorySource(data, "event_time", batch_size=250)
    if slow:
        real_write = sink.write
        async def slow_write(batch):
            await asyncio.sleep(0.03)
            await real_write(batch)
        sink.write = slow_write
    summary = asyncio.run(backfill(source, sink, progress=progress, progress_interval=0.05))
    print("done", summary.rows_read, flush=True)
    """
)


@pytest.mark.parametrize("store", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_killed_backfill_rerun_equals_reference(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store == "duckdb":
        path = tmp_path / "k.duckdb"
        url = f"duckdb:///{path}"

        def read() -> pa.Table:
            return read_duckdb(path, "clicks")
    else:
        url = request.getfixturevalue("postgres").new_database()

        def read() -> pa.Table:
            return postgres_store(url).read("clicks")

    script = tmp_path / "job.py"
    script.write_text(KILLABLE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, str(script), url, "slow"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("written ") and int(line.split()[1]) >= 2_000:
                break
            assert not line.startswith("done"), "the backfill finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert read().num_rows > 0  # killed after some flushes were durable
    data = generate_clickstream(
        20_000, days=2, users=500, seed=9, start=datetime(2024, 3, 1, tzinfo=UTC), jitter="10m"
    )
    expected = latest_per_user(data)
    rerun = subprocess.run(
        [sys.executable, str(script), url, "fast"],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
        check=True,
    )
    assert "done 20000" in rerun.stdout
    assert rows(read(), COLUMNS) == rows(expected, COLUMNS)


async def _write_lake(root: Path, data: pa.Table) -> None:
    from lambdasource.sinks.parquet import ParquetSink

    sink = ParquetSink(root, "event_time", batch_rows=10_000_000)
    await sink.open()
    for b in data.to_batches(max_chunksize=1_000):
        await sink.write(b)
    await sink.flush()
    await sink.close()
    assert sink.metrics()["files_written"] >= 24


async def test_lake_to_duckdb_via_cli(tmp_path: Path) -> None:
    import argparse

    from lambdasource.backfill import add_arguments, command

    data = events(6_000, seed=11)
    lake = tmp_path / "lake"
    await _write_lake(lake, data)
    store = tmp_path / "store.duckdb"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--lake",
            str(lake),
            "--time-column",
            "event_time",
            "--into",
            f"duckdb:///{store}",
            "--table",
            "clicks",
            "--key",
            "user_id",
            "--where",
            "amount >= 0",
            "--select",
            ",".join(COLUMNS),
            "--quiet",
            "--until",
            "2024-03-02T12:00:00Z",
        ]
    )
    import asyncio

    assert await asyncio.to_thread(command, args) == 0
    # the Python API reports the lake's partitions as progress
    from lambdasource.sources.lake.parquet import ParquetLake

    seen: list[BackfillProgress] = []
    await backfill(
        ParquetLake(lake, "event_time"),
        DuckDBUpsert(tmp_path / "p.duckdb", "c", key="user_id"),
        progress=seen.append,
    )
    assert seen[-1].partitions_total == seen[-1].partitions_done == 48
    assert seen[-1].rows_read == data.num_rows
    cut = data.filter(
        pc.less(data.column("event_time"), pa.scalar(datetime(2024, 3, 2, 12, tzinfo=UTC)))
    )
    assert rows(read_duckdb(store, "clicks"), COLUMNS) == rows(latest_per_user(cut), COLUMNS)


@pytest.mark.iceberg
async def test_iceberg_lake_to_iceberg_store_via_cli(
    tmp_path: Path, iceberg_catalog_props: dict[str, str]
) -> None:
    import argparse
    import asyncio
    from urllib.parse import urlencode

    from lambdasource.backfill import add_arguments, command
    from tests.services.iceberg import load

    data = events(3_000, seed=21).select(COLUMNS)
    catalog = load(iceberg_catalog_props)
    catalog.create_namespace_if_not_exists("db")
    catalog.create_table("db.events", schema=data.schema).append(data)
    store = "iceberg://?" + urlencode(
        {
            "name": iceberg_catalog_props["name"],
            "uri": iceberg_catalog_props["uri"],
            "warehouse": iceberg_catalog_props["warehouse"],
        }
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--iceberg", "db.events",
            "--catalog-uri", iceberg_catalog_props["uri"],
            "--warehouse", iceberg_catalog_props["warehouse"],
            "--catalog-name", iceberg_catalog_props["name"],
            "--time-column", "event_time", "--into", store, "--table", "db.latest",
            "--key", "user_id", "--quiet",
        ]
    )  # fmt: skip
    assert await asyncio.to_thread(command, args) == 0
    got = load(iceberg_catalog_props).load_table("db.latest").scan().to_arrow()
    assert rows(got, COLUMNS) == rows(latest_per_user(data), COLUMNS)
