"""The archiver against both real brokers (Apache Kafka in the default run, Tansu in -m slow):
exactly-once lakes, resume, crashes, bad input.

The reference is what the test produced (the generator's rows, by unique ``event_id``) and the
(partition, offset) the broker acknowledged for each record; the lake is read back with
``pyarrow.parquet`` from the committed files, pyiceberg ``scan().to_arrow()`` and the lambdasource
``ParquetLake`` reader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from lake.archiver import Archiver, add_arguments, command
from lake.generator import generate_clickstream
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from lambdasource.errors import ConfigError, StreamError
from lambdasource.sources.lake.commits import PROP_OFFSETS, PROP_TOPIC, CommitRecord
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.timeutil import HOUR
from tests.integration.test_lake_writer import check_parquet_lake, micros, read_with_parquet_lake
from tests.services.brokers import Broker, both_brokers
from tests.services.iceberg import load
from tests.services.s3 import S3Service

broker = both_brokers(default=("apache",))

TIME = "event_time"
SCHEMA = pa.schema(
    [
        pa.field(TIME, pa.timestamp("us", tz="UTC")),
        pa.field("event_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("session_id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("page", pa.string()),
        pa.field("device", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)
REPO = Path(__file__).resolve().parents[2]


def rows(events: int, *, seed: int = 0, first_id: int = 0, days: int = 2) -> pa.Table:
    """Clickstream rows with times truncated to ms (what JSON epoch-ms carries) and shifted ids."""
    table = generate_clickstream(events, days, 40, seed=seed, jitter="2h")
    ms = pc.cast(table.column(TIME), pa.int64()).to_numpy() // 1000
    table = table.set_column(0, TIME, pa.array(ms * 1000, pa.int64()).cast(SCHEMA.field(TIME).type))
    return table.set_column(1, "event_id", pc.add(table.column("event_id"), first_id))


def encode(table: pa.Table) -> list[bytes]:
    ms = (pc.cast(table.column(TIME), pa.int64()).to_numpy() // 1000).tolist()
    out = []
    for t, row in zip(ms, table.drop_columns([TIME]).to_pylist(), strict=True):
        row[TIME] = t
        out.append(orjson.dumps(row))
    return out


async def produce(
    broker: Broker, topic: str, table: pa.Table, partitions: list[int]
) -> dict[int, list[int]]:
    """Produce ``table`` spread over ``partitions`` (by event_id); returns event ids per partition."""
    values = encode(table)
    event_ids = table.column("event_id").to_pylist()
    by_partition: dict[int, list[int]] = {}
    for i, p in enumerate(partitions):
        chosen = [j for j in range(len(values)) if j % len(partitions) == i]
        if chosen:
            await broker.aproduce(topic, [values[j] for j in chosen], partition=p)
        by_partition[p] = [event_ids[j] for j in chosen]
    return by_partition


def lake_table(writer: ParquetLakeWriter) -> pa.Table:
    commits = writer.commits()
    pieces = [
        pq.read_table(f"{writer.root.base}/{f}", filesystem=writer.root.fs)
        for c in commits
        for f in c.files
    ]
    return pa.concat_tables(pieces) if pieces else SCHEMA.empty_table()


def ids(table: pa.Table) -> Counter[int]:
    return Counter(table.column("event_id").to_pylist())


def archiver(broker: Broker, topic: str, lake: Any, **kwargs: Any) -> Archiver:
    kwargs.setdefault("stop_at", "latest")
    kwargs.setdefault("commit_interval", "60s")
    return Archiver(broker.bootstrap, topic, lake, TIME, format="json", schema=SCHEMA, **kwargs)


async def test_archive_exactly_once_then_incremental(broker: Broker, tmp_path: Path) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 4)
    first = rows(3_000)
    await produce(broker, topic, first, [0, 1, 2])  # partition 3 stays empty
    lake = ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=128)
    summary = await archiver(broker, topic, lake, commit_rows=700).run()
    assert summary.records == summary.rows == 3_000
    assert summary.dead_letters == 0
    assert summary.commits >= 4  # commit_rows forces several commits
    assert summary.offsets == {0: 1_000, 1: 1_000, 2: 1_000, 3: 0}
    assert lake.offsets() == summary.offsets
    assert ids(lake_table(lake)) == ids(first)
    check_parquet_lake(
        pafs.LocalFileSystem(), lake.root.base, first, lake.commits(), row_group_rows=128
    )
    assert all(c.topic == topic for c in lake.commits())

    # produce more (including late records for hours already archived) and run again
    second = rows(1_000, seed=7, first_id=100_000)
    await produce(broker, topic, second, [1, 3])
    before = len(lake.commits())
    summary2 = await archiver(broker, topic, lake).run()
    assert summary2.records == 1_000
    assert lake.offsets() == {0: 1_000, 1: 1_500, 2: 1_000, 3: 500}
    assert len(lake.commits()) == before + 1
    everything = pa.concat_tables([first, second])
    assert ids(lake_table(lake)) == ids(everything)
    check_parquet_lake(pafs.LocalFileSystem(), lake.root.base, everything, lake.commits())
    # late data landed in the old hours: the newest commit wrote into already existing partitions
    newest = lake.commits()[-1]
    older_dirs = {f.rsplit("/", 1)[0] for c in lake.commits()[:-1] for f in c.files}
    assert {f.rsplit("/", 1)[0] for f in newest.files} & older_dirs
    # the lambdasource reader agrees (exactly once)
    assert ids(await asyncio.to_thread(read_with_parquet_lake, str(lake.root.base))) == ids(
        everything
    )
    recorded = await ParquetLake(str(lake.root.base), TIME).recorded_offsets()
    assert recorded is not None
    assert (recorded.offsets, recorded.topic) == (lake.offsets(), topic)

    # nothing new: a third run commits nothing new and adds no rows
    summary3 = await archiver(broker, topic, lake).run()
    assert summary3.records == 0
    assert ids(lake_table(lake)) == ids(everything)


async def test_crash_between_files_and_commit_record(broker: Broker, tmp_path: Path) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 3)
    table = rows(2_400)
    await produce(broker, topic, table, [0, 1, 2])
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    calls = 0

    def crash_on_second(record: CommitRecord) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("simulated crash after data files")

    first = archiver(broker, topic, lake, commit_rows=500)
    first._after_files_written = crash_on_second
    with pytest.raises(RuntimeError, match="simulated crash"):
        await first.run()
    assert len(lake.commits()) == 1
    committed = {f for c in lake.commits() for f in c.files}
    on_disk = {
        str(p.relative_to(tmp_path / "lake")) for p in (tmp_path / "lake").rglob("part-*.parquet")
    }
    assert on_disk - committed, "the crashed commit should have left orphan files"

    summary = await archiver(broker, topic, ParquetLakeWriter(tmp_path / "lake", TIME)).run()
    assert summary.records == 2_400 - lake.commits()[0].rows
    assert ids(lake_table(lake)) == ids(table)  # no duplicate, no loss
    assert lake.offsets() == {0: 800, 1: 800, 2: 800}
    assert ids(await asyncio.to_thread(read_with_parquet_lake, str(lake.root.base))) == ids(table)


async def test_cancel_during_commit_is_all_or_nothing(broker: Broker, tmp_path: Path) -> None:
    """Cancelling the task while a commit is in flight: the commit finishes (or never starts),
    then CancelledError propagates; a restart completes the lake exactly once."""
    import threading

    topic = await asyncio.to_thread(broker.new_topic, 2)
    table = rows(2_000)
    await produce(broker, topic, table, [0, 1])
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    in_commit = threading.Event()
    release = threading.Event()

    def hold(record: CommitRecord) -> None:
        in_commit.set()
        release.wait(10)

    arch = archiver(broker, topic, lake, commit_rows=300)
    arch._after_files_written = hold
    task = asyncio.create_task(arch.run())
    assert await asyncio.to_thread(in_commit.wait, 30)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done()  # waits for the commit in flight
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(lake.commits()) == 1
    await archiver(broker, topic, ParquetLakeWriter(tmp_path / "lake", TIME)).run()
    assert ids(lake_table(lake)) == ids(table)


CRASH_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    import pyarrow as pa
    from lake.archiver import Archiver
    from lake.writer import ParquetLakeWriter
    from tests.integration.test_archiver import SCHEMA, TIME

    bootstrap, topic, root = sys.argv[1:4]
    lake = ParquetLakeWriter(root, TIME)
    calls = 0

    def hang_on_third(record):
        global calls
        calls += 1
        if calls == 3:
            print("FILES_WRITTEN", record.sequence, flush=True)
            time.sleep(120)

    arch = Archiver(bootstrap, topic, lake, TIME, format="json", schema=SCHEMA,
                    stop_at="latest", commit_rows=400, commit_interval="60s")
    arch._after_files_written = hang_on_third
    asyncio.run(arch.run())
    """
)


async def test_kill_9_between_files_and_commit(broker: Broker, tmp_path: Path) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 3)
    table = rows(3_000)
    await produce(broker, topic, table, [0, 1, 2])
    root = tmp_path / "lake"
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(  # noqa: ASYNC220 - a process we kill -9, not await
        [sys.executable, str(script), broker.bootstrap, topic, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.startswith(b"FILES_WRITTEN"), (line, proc.stderr.read() if proc.stderr else b"")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lake = ParquetLakeWriter(root, TIME)
    assert [c.sequence for c in lake.commits()] == [1, 2]
    assert len(list(root.rglob("part-00000000000000000003-*.parquet"))) > 0  # orphans
    summary = await archiver(broker, topic, lake).run()
    assert summary.records == 3_000 - sum(c.rows for c in lake.commits()[:2])
    assert ids(lake_table(lake)) == ids(table)
    assert lake.offsets() == {0: 1_000, 1: 1_000, 2: 1_000}
    assert ids(await asyncio.to_thread(read_with_parquet_lake, str(root))) == ids(table)


async def test_malformed_messages_are_dead_lettered(broker: Broker, tmp_path: Path) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 2)
    good = rows(200)
    good_values = encode(good)
    bad_values = [
        b"{not json",
        b"[1, 2, 3]",
        orjson.dumps({"event_time": "yesterday-ish", "event_id": 999_001}),
        orjson.dumps({"event_time": 1_767_225_600_000, "event_id": "not a number"}),
        orjson.dumps({"event_id": 999_002}),  # no event time at all
    ]
    mixed = good_values[:100] + bad_values + good_values[100:]
    placed = await broker.aproduce(topic, mixed, partition=1)
    await broker.aproduce(topic, good_values[:0] or [orjson.dumps({"event_id": 5})], partition=0)
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    arch = archiver(broker, topic, lake)
    summary = await arch.run()
    assert summary.records == 206
    assert summary.dead_letters == 6
    assert arch.metrics()["dead_letters"] == 6
    assert ids(lake_table(lake)) == ids(good)
    dead = lake.read_dead_letters().sort_by([("partition", "ascending"), ("offset", "ascending")])
    assert dead.num_rows == 6
    bad_offsets = [placed[100 + i][1] for i in range(len(bad_values))]
    assert dead.column("offset").to_pylist() == [0, *bad_offsets]
    assert dead.column("partition").to_pylist() == [0] + [1] * 5
    assert set(dead.column("topic").to_pylist()) == {topic}
    assert dead.column("value").to_pylist()[1:] == bad_values
    reasons = dead.column("reason").to_pylist()
    assert "null event time" in reasons[0]
    assert "malformed JSON" in reasons[1]
    assert all(reasons)
    assert lake.offsets() == {0: 1, 1: 205}


async def test_graceful_stop_commits_and_returns(broker: Broker, tmp_path: Path) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 2)
    table = rows(500)
    await produce(broker, topic, table, [0, 1])
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    arch = archiver(broker, topic, lake, stop_at=None, commit_interval="1h")
    task = asyncio.create_task(arch.run())
    for _ in range(600):
        if arch.metrics()["records"] >= 500:
            break
        await asyncio.sleep(0.05)
    assert lake.commits() == []  # nothing committed yet: interval is an hour
    arch.stop()
    summary = await asyncio.wait_for(task, 30)
    assert summary.rows == 500
    assert ids(lake_table(lake)) == ids(table)
    assert lake.offsets() == {0: 250, 1: 250}


async def test_rerun_same_instance_and_group_offsets(broker: Broker, tmp_path: Path) -> None:
    """One Archiver run twice (fresh per-run state); ``group_id`` mirrors the lake's offsets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = await asyncio.to_thread(broker.new_topic, 2)
    await produce(broker, topic, rows(200), [0, 1])
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    group = f"archiver-{topic}"
    arch = archiver(broker, topic, lake, group_id=group)
    assert (await arch.run()).records == 200
    await produce(broker, topic, rows(100, first_id=5_000), [1])
    second = await arch.run()
    assert (second.records, second.rows, second.commits) == (100, 100, 1)
    assert lake.offsets() == {0: 100, 1: 200}
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
    await consumer.start()
    try:
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await consumer.stop()
    assert committed == {0: 100, 1: 200}


async def test_commit_interval_commits_periodically(broker: Broker, tmp_path: Path) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 1)
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    arch = archiver(broker, topic, lake, stop_at=None, commit_interval="200ms")
    task = asyncio.create_task(arch.run())
    try:
        await broker.aproduce(topic, encode(rows(100)), partition=0)
        for _ in range(200):
            if lake.offsets().get(0) == 100:
                break
            await asyncio.sleep(0.05)
        assert lake.offsets() == {0: 100}
        await broker.aproduce(topic, encode(rows(50, first_id=1_000)), partition=0)
        for _ in range(200):
            if lake.offsets().get(0) == 150:
                break
            await asyncio.sleep(0.05)
        assert lake.offsets() == {0: 150}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert lake_table(lake).num_rows == 150


async def test_wrong_topic_and_missing_topic(broker: Broker, tmp_path: Path) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 1)
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    lake.write(rows(10), offsets={0: 10}, topic="another-topic")
    with pytest.raises(ConfigError, match="another-topic"):
        await archiver(broker, topic, lake).run()
    with pytest.raises(StreamError, match="not found"):
        await archiver(
            broker,
            "no-such-topic-xyz",
            ParquetLakeWriter(tmp_path / "l2", TIME),
            topic_timeout="1s",
        ).run()


@pytest.mark.s3
async def test_archive_to_s3_lake(broker: Broker, s3: S3Service) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 2)
    table = rows(1_000)
    await produce(broker, topic, table, [0, 1])
    bucket = await asyncio.to_thread(s3.new_bucket, "archive")
    lake = ParquetLakeWriter(f"s3://{bucket}/clicks", TIME, s3=s3.config())
    summary = await archiver(broker, topic, lake, commit_rows=400).run()
    assert summary.offsets == {0: 500, 1: 500}
    assert ids(lake_table(lake)) == ids(table)
    fs = s3.config().pyarrow_filesystem()
    check_parquet_lake(fs, f"{bucket}/clicks", table, lake.commits())


async def test_archive_raw_values_with_record_timestamps(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``time_column=None``: the Kafka record timestamp is the event time (out of order here)."""
    topic = await asyncio.to_thread(broker.new_topic, 1)
    base = 1_767_225_600_000  # 2026-01-01T00:00Z, ms
    stamps = [base + ((i * 7_919) % 50) * 600_000 for i in range(50)]  # 10-min steps, shuffled
    values = [b"v%d" % i for i in range(50)]
    await broker.aproduce(topic, values, partition=0, timestamps_ms=stamps)
    lake = ParquetLakeWriter(tmp_path / "lake", "timestamp")
    with pytest.raises(ConfigError, match="record timestamp"):
        Archiver(broker.bootstrap, topic, ParquetLakeWriter(tmp_path, TIME), None, format="raw")
    arch = Archiver(
        broker.bootstrap, topic, lake, None, format="raw", stop_at="latest", progress_interval=0
    )
    with caplog.at_level(logging.INFO, logger="lake.archiver"):
        summary = await arch.run()
    assert "resuming partition=0 offset=0 (earliest)" in caplog.text
    assert "done: 50 records, 50 rows" in caplog.text
    assert summary.rows == 50
    got = lake_table(lake)
    pairs = dict(
        zip(got.column("value").to_pylist(), micros(got.column("timestamp")).tolist(), strict=True)
    )
    assert pairs == {v: t * 1000 for v, t in zip(values, stamps, strict=True)}
    for commit in lake.commits():
        for f in commit.files:
            t = micros(pq.read_table(tmp_path / "lake" / f).column("timestamp"))
            assert np.all(np.diff(t) >= 0) and len(np.unique(t // HOUR)) == 1


@pytest.mark.iceberg
@pytest.mark.parametrize("warehouse", ["file", pytest.param("s3", marks=pytest.mark.s3)])
async def test_iceberg_archiver_records_offsets(
    broker: Broker, warehouse: str, request: pytest.FixtureRequest
) -> None:
    iceberg_catalog_props = request.getfixturevalue(
        "iceberg_catalog_props" if warehouse == "file" else "iceberg_s3_catalog_props"
    )
    topic = await asyncio.to_thread(broker.new_topic, 3)
    first = rows(1_500)
    await produce(broker, topic, first, [0, 1, 2])
    writer = IcebergLakeWriter("db.archive", iceberg_catalog_props, TIME)
    await archiver(broker, topic, writer, commit_rows=600).run()
    assert writer.offsets() == {0: 500, 1: 500, 2: 500}
    second = rows(300, seed=4, first_id=50_000)
    await produce(broker, topic, second, [2])
    await archiver(
        broker, topic, IcebergLakeWriter("db.archive", iceberg_catalog_props, TIME)
    ).run()
    table = load(iceberg_catalog_props).load_table("db.archive")
    got = table.scan().to_arrow()
    assert ids(got) == ids(pa.concat_tables([first, second]))
    latest = table.current_snapshot()
    props = dict(latest.summary.additional_properties)
    assert props[PROP_TOPIC] == topic
    assert orjson.loads(props[PROP_OFFSETS]) == {"0": 500, "1": 500, "2": 800}
    # every data file is one hour and sorted
    for task in table.scan().plan_files():
        with table.io.new_input(task.file.file_path).open() as f:
            t = micros(pq.read_table(pa.BufferReader(f.read())).column(TIME))
        assert np.all(np.diff(t) >= 0) and len(np.unique(t // HOUR)) == 1


def test_cli_command(broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    topic = broker.new_topic(2)
    table = rows(400)
    asyncio.run(produce(broker, topic, table, [0, 1]))
    parser = argparse.ArgumentParser(prog="lambdasource archive")
    add_arguments(parser)
    schema = ",".join(f"{f.name}:{f.type}" for f in SCHEMA)
    args = parser.parse_args(
        [
            "--bootstrap-servers", broker.bootstrap,
            "--topic", topic,
            "--lake", str(tmp_path / "lake"),
            "--time-column", TIME,
            "--schema", schema,
            "--stop-at", "latest",
        ]
    )  # fmt: skip
    assert command(args) == 0
    out = capsys.readouterr().out
    assert "rows=400" in out and "offsets={0:200, 1:200}" in out
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    assert ids(lake_table(lake)) == ids(table)
    # --schema-from a Parquet file of the lake itself
    more = rows(100, first_id=9_000)
    asyncio.run(produce(broker, topic, more, [1]))
    a_file = f"{lake.root.base}/{lake.commits()[0].files[0]}"
    args = parser.parse_args(
        [
            "--bootstrap-servers", broker.bootstrap,
            "--topic", topic,
            "--lake", str(tmp_path / "lake"),
            "--time-column", TIME,
            "--schema-from", a_file,
            "--stop-at", "latest",
        ]
    )  # fmt: skip
    assert command(args) == 0
    assert ids(lake_table(lake)) == ids(pa.concat_tables([table, more]))


@pytest.mark.iceberg
def test_cli_command_iceberg(broker: Broker, iceberg_catalog_props: dict[str, str]) -> None:
    import argparse

    topic = broker.new_topic(1)
    table = rows(300)
    asyncio.run(produce(broker, topic, table, [0]))
    parser = argparse.ArgumentParser(prog="lambdasource archive")
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--bootstrap-servers", broker.bootstrap,
            "--topic", topic,
            "--iceberg", "db.cli",
            "--catalog-uri", iceberg_catalog_props["uri"],
            "--warehouse", iceberg_catalog_props["warehouse"],
            "--time-column", TIME,
            "--schema", ",".join(f"{f.name}:{f.type}" for f in SCHEMA),
            "--stop-at", "latest",
        ]
    )  # fmt: skip
    assert command(args) == 0
    props = {**iceberg_catalog_props, "name": "default"}
    got = load(props).load_table("db.cli").scan().to_arrow()
    assert ids(got) == ids(table)
    with pytest.raises(ConfigError, match="needs --schema"):
        command(parser.parse_args(["--bootstrap-servers", "x", "--topic", "t", "--lake", "l",
                                   "--time-column", TIME]))  # fmt: skip


@pytest.mark.iceberg
async def test_iceberg_archiver_crash_before_append(
    broker: Broker, iceberg_catalog_props: dict[str, str]
) -> None:
    topic = await asyncio.to_thread(broker.new_topic, 2)
    table = rows(1_200)
    await produce(broker, topic, table, [0, 1])
    calls = 0

    def crash_on_second(record: CommitRecord) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("simulated crash before the snapshot")

    first = archiver(
        broker, topic, IcebergLakeWriter("db.crash", iceberg_catalog_props, TIME), commit_rows=400
    )
    first._after_files_written = crash_on_second
    with pytest.raises(RuntimeError, match="simulated crash"):
        await first.run()
    writer = IcebergLakeWriter("db.crash", iceberg_catalog_props, TIME)
    assert len(writer.commits()) == 1
    await archiver(broker, topic, writer).run()
    assert ids(writer.table().scan().to_arrow()) == ids(table)
    assert writer.offsets() == {0: 600, 1: 600}
