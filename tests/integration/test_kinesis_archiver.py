"""The archiver's Kinesis input against moto's Kinesis server (real HTTP): exactly-once lakes by
sequence number, a split between runs (children after parents), crashes between commits, dead
letters, the stream check, Iceberg and the CLI (issue 16 §2).

The reference is what the test put: every event id once, and per shard the sequence numbers
PutRecords acknowledged (so the recorded next positions are checked exactly).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake.archiver import add_arguments, command
from lake.kinesis_archiver import KinesisArchiver
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from lambdasource.errors import ConfigError, StreamGapError
from lambdasource.sources.kinesis.config import KinesisConfig
from lambdasource.sources.lake.commits import CommitRecord
from lambdasource.sources.lake.inspect import ainspect_parquet, format_report
from tests.integration.test_archiver import SCHEMA, TIME, encode, ids, lake_table, rows
from tests.services.iceberg import load
from tests.services.kinesis import KinesisService
from tests.services.kinesis_reshard import kinesis_resharding  # noqa: F401 - a fixture

pytestmark = pytest.mark.kinesis


def config_of(kinesis: KinesisService) -> KinesisConfig:
    return KinesisConfig(
        endpoint_url=kinesis.endpoint_url,
        region=kinesis.region,
        access_key_id=kinesis.access_key_id,
        secret_access_key=kinesis.secret_access_key,
    )


def open_shards(kinesis: KinesisService, stream: str) -> list[dict[str, Any]]:
    shards = kinesis.client().list_shards(StreamName=stream)["Shards"]
    return [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]


def put(
    kinesis: KinesisService, stream: str, values: list[bytes], *, shard: str | None = None
) -> dict[int, list[int]]:
    """Put ``values`` (500 per call) spread over the open shards by explicit hash key (or all
    to ``shard``); returns the acknowledged sequence numbers per shard number."""
    client = kinesis.client()
    targets = [s for s in open_shards(kinesis, stream) if shard is None or s["ShardId"] == shard]
    keys = [s["HashKeyRange"]["StartingHashKey"] for s in targets]
    acked: dict[int, list[int]] = {}
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        entries = [
            {
                "Data": value,
                "PartitionKey": str(start + i),
                "ExplicitHashKey": keys[(start + i) % len(keys)],
            }
            for i, value in enumerate(chunk)
        ]
        response = client.put_records(StreamName=stream, Records=entries)
        assert not response.get("FailedRecordCount")
        for entry in response["Records"]:
            number = int(entry["ShardId"].rsplit("-", 1)[1])
            acked.setdefault(number, []).append(int(entry["SequenceNumber"]))
    return acked


def next_positions(*acks: dict[int, list[int]]) -> dict[int, int]:
    """Per shard, the last acknowledged sequence number + 1 (the position a lake records)."""
    out: dict[int, int] = {}
    for ack in acks:
        for number, sequences in ack.items():
            out[number] = max(out.get(number, 0), max(sequences) + 1)
    return out


def archiver(kinesis: KinesisService, stream: str, lake: Any, **kwargs: Any) -> KinesisArchiver:
    kwargs.setdefault("stop_at", "latest")
    kwargs.setdefault("commit_interval", "60s")
    kwargs.setdefault("min_call_interval", "20ms")
    return KinesisArchiver(
        stream, lake, TIME, config=config_of(kinesis), format="json", schema=SCHEMA, **kwargs
    )


def split_shard(kinesis: KinesisService, stream: str, shard: str) -> None:
    client = kinesis.client()
    described = {s["ShardId"]: s for s in client.list_shards(StreamName=stream)["Shards"]}
    hashes = described[shard]["HashKeyRange"]
    middle = (int(hashes["StartingHashKey"]) + int(hashes["EndingHashKey"])) // 2
    client.split_shard(StreamName=stream, ShardToSplit=shard, NewStartingHashKey=str(middle))
    client.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
    )


def merge_shards(kinesis: KinesisService, stream: str, shard: str, adjacent: int) -> None:
    client = kinesis.client()
    client.merge_shards(
        StreamName=stream, ShardToMerge=shard, AdjacentShardToMerge=f"shardId-{adjacent:012d}"
    )
    client.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
    )


@pytest.mark.usefixtures("kinesis_resharding")
async def test_exactly_once_by_sequence_number_then_split_and_merge(
    kinesis: KinesisService, tmp_path: Path
) -> None:
    stream = await asyncio.to_thread(kinesis.new_stream, 2)
    first = rows(1_000)
    acked1 = await asyncio.to_thread(put, kinesis, stream, encode(first))
    lake = ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=128)
    summary = await archiver(kinesis, stream, lake, commit_rows=300).run()
    assert summary.records == summary.rows == 1_000
    assert summary.commits >= 2  # commit_rows forces several commits
    assert lake.offsets() == summary.offsets == next_positions(acked1)
    assert ids(lake_table(lake)) == ids(first)
    newest = lake.commits()[-1]
    assert newest.stream_kind == "kinesis" and newest.topic == stream
    assert sorted(newest.shards) == [0, 1] and not any(s.closed for s in newest.shards.values())
    for commit in lake.commits():  # files per shard: part-<seq>-p<shard number>-…
        assert all(f"-p{n}-" in f for f in commit.files for n in [int(f.split("-p")[1][0])])

    # split shard 0 and put more: the children are archived after their parent's remainder
    tail = rows(200, seed=3, first_id=50_000)
    acked_tail = await asyncio.to_thread(
        put, kinesis, stream, encode(tail), shard="shardId-000000000000"
    )
    await asyncio.to_thread(split_shard, kinesis, stream, "shardId-000000000000")
    second = rows(900, seed=7, first_id=100_000)
    acked2 = await asyncio.to_thread(put, kinesis, stream, encode(second))
    assert set(acked2) == {1, 2, 3}  # shard 0 is closed: its children 2 and 3 take its keys
    summary2 = await archiver(kinesis, stream, lake, commit_rows=300).run()
    assert summary2.records == 1_100
    everything = pa.concat_tables([first, tail, second])
    assert ids(lake_table(lake)) == ids(everything)  # no duplicate, no loss
    assert lake.offsets() == next_positions(acked1, acked_tail, acked2)
    lineage = lake.commits()[-1].shards
    assert lineage[0].closed and lineage[0].finished
    assert lineage[2].parents == (0,) and lineage[3].parents == (0,)
    assert not lineage[2].closed and not lineage[1].finished
    report = format_report(await ainspect_parquet(tmp_path / "lake"))  # `lambdasource inspect`
    assert f"kinesis stream {stream}, next per shard): 0:" in report
    # merge the two children back: the merged shard (parents 2 and 3) is archived after both
    await asyncio.to_thread(merge_shards, kinesis, stream, "shardId-000000000002", 3)
    third = rows(300, seed=9, first_id=200_000)
    acked3 = await asyncio.to_thread(put, kinesis, stream, encode(third))
    assert set(acked3) == {1, 4}
    summary3 = await archiver(kinesis, stream, lake).run()
    assert summary3.records == 300
    assert ids(lake_table(lake)) == ids(pa.concat_tables([everything, third]))
    assert lake.offsets() == next_positions(acked1, acked_tail, acked2, acked3)
    lineage = lake.commits()[-1].shards
    assert lineage[4].parents == (2, 3) and lineage[2].finished and lineage[3].finished
    # a fourth run finds nothing new and commits nothing
    before = len(lake.commits())
    summary4 = await archiver(kinesis, stream, lake).run()
    assert summary4.records == 0 and len(lake.commits()) == before


async def test_crash_between_commits_resumes_exactly_once(
    kinesis: KinesisService, tmp_path: Path
) -> None:
    stream = await asyncio.to_thread(kinesis.new_stream, 3)
    table = rows(1_800)
    acked = await asyncio.to_thread(put, kinesis, stream, encode(table))
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    calls = 0

    def crash_on_second(record: CommitRecord) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("simulated crash after data files")

    first = archiver(kinesis, stream, lake, commit_rows=400)
    first._after_files_written = crash_on_second
    with pytest.raises(RuntimeError, match="simulated crash"):
        await first.run()
    assert len(lake.commits()) == 1
    again = ParquetLakeWriter(tmp_path / "lake", TIME)
    summary = await archiver(kinesis, stream, again).run()
    assert summary.records == 1_800 - lake.commits()[0].rows
    assert ids(lake_table(again)) == ids(table)
    assert again.offsets() == next_positions(acked)


async def test_dead_letters_name_stream_shard_and_sequence(
    kinesis: KinesisService, tmp_path: Path
) -> None:
    stream = await asyncio.to_thread(kinesis.new_stream, 1)
    good = rows(50)
    values = encode(good)
    values.insert(10, b"{not json")
    acked = await asyncio.to_thread(put, kinesis, stream, values)
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    summary = await archiver(kinesis, stream, lake).run()
    assert summary.rows == 50 and summary.dead_letters == 1
    dead = lake.read_dead_letters().to_pylist()
    bad_sequence = acked[0][10]
    assert len(dead) == 1
    assert dead[0]["topic"] == stream and dead[0]["partition"] == 0
    assert dead[0]["offset"] == bad_sequence and dead[0]["value"] == b"{not json"
    assert dead[0]["reason"].startswith(f"shard=shardId-000000000000 sequence={bad_sequence}:")


async def test_lake_of_another_stream_or_a_recreated_one_is_refused(
    kinesis: KinesisService, tmp_path: Path
) -> None:
    stream = await asyncio.to_thread(kinesis.new_stream, 1)
    await asyncio.to_thread(put, kinesis, stream, encode(rows(20)))
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    await archiver(kinesis, stream, lake).run()
    other = await asyncio.to_thread(kinesis.new_stream, 1)
    with pytest.raises(ConfigError, match=f"already archives.*not kinesis stream={other}"):
        await archiver(kinesis, other, lake).run()
    # a lake that recorded a shard the stream does not list (deleted and recreated)
    ghost = ParquetLakeWriter(tmp_path / "ghost", TIME)
    ghost.write(SCHEMA.empty_table(), offsets={0: 21, 5: 7}, topic=stream, stream_kind="kinesis")
    with pytest.raises(StreamGapError, match=r"shard number 5.*does not list this shard"):
        await archiver(kinesis, stream, ghost).run()


@pytest.mark.iceberg
async def test_iceberg_lake_partitions_by_shard_number(
    kinesis: KinesisService, iceberg_catalog_props: dict[str, str]
) -> None:
    stream = await asyncio.to_thread(kinesis.new_stream, 2)
    table = rows(600)
    acked = await asyncio.to_thread(put, kinesis, stream, encode(table))
    writer = IcebergLakeWriter("db.kinesis", iceberg_catalog_props, TIME)
    await archiver(kinesis, stream, writer, commit_rows=250).run()
    assert writer.offsets() == next_positions(acked)
    got = load(iceberg_catalog_props).load_table("db.kinesis").scan().to_arrow()
    assert ids(got) == ids(table)
    per_shard = Counter(got.column("_kafka_partition").to_pylist())
    assert per_shard == {n: len(seqs) for n, seqs in acked.items()}
    assert writer.commits()[-1].stream_kind == "kinesis"


def test_cli_archive_kinesis(
    kinesis: KinesisService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``archive --kinesis STREAM`` with the endpoint flag and credentials from the environment."""

    stream = kinesis.new_stream(2)
    table = rows(300)
    acked = put(kinesis, stream, encode(table))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    schema_file = tmp_path / "schema.parquet"
    pq.write_table(SCHEMA.empty_table(), schema_file)
    args = parser.parse_args(
        [
            *("--kinesis", stream, "--kinesis-endpoint-url", kinesis.endpoint_url),
            *("--region", kinesis.region, "--lake", str(tmp_path / "lake")),
            *("--time-column", TIME, "--schema-from", str(schema_file), "--stop-at", "latest"),
        ]
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", kinesis.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", kinesis.secret_access_key)
    assert command(args) == 0
    out = capsys.readouterr().out
    assert f"archived stream={stream} records=300" in out
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    assert ids(lake_table(lake)) == ids(table)
    assert lake.offsets() == next_positions(acked)
    assert (
        orjson.loads((tmp_path / "lake" / lake.commits()[-1].file_name()).read_bytes())[
            "stream_kind"
        ]
        == "kinesis"
    )
