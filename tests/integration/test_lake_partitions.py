"""The lake by Kafka partition (issue 15 §2): one task per partition reads its part exactly.

A 4-partition topic on the Tansu broker gets keyed records (key = the user id as text, placed by
aiokafka's default partitioner); the archiver writes part of it, the rest stays in the stream.
For each partition p, ``LambdaSource.for_partition(p, 4, ["user_id"])`` runs through a pipeline.
Oracle: DuckDB SQL over the produced records (event id, the partition the broker acknowledged)
gives each task's multiset of event ids; the tasks' union must equal the single-source run's,
no record in two tasks, each in the task of its partition — for the archiver's split lake (also
after compaction), an Iceberg table the archiver wrote, an archiver lake from before the split
(files without the partition: read and filtered by key) and a lake with no commit records.
Java agreement: kafka-clients' own ``BuiltInPartitioner.partitionForKey`` over the serialised
keys (StringSerializer / IntegerSerializer / LongSerializer), run with ``java`` on the jars of the
Apache Kafka test fixture.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from lake.archiver import Archiver
from lake.generator import generate_clickstream
from lake.maintenance import compact, live_files
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from lambdasource.errors import MisplacedKeyError
from lambdasource.partitioning import KeyPartitioner, kafka_partition
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.lake.commits import CommitRecord
from lambdasource.sources.lake.iceberg import IcebergLake
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.sources.lake.partitioned import file_kafka_partition
from lambdasource.sources.lambda_source import LambdaSource
from lambdasource.timeutil import HOUR, MS
from tests.services.kafka import KafkaService
from tests.services.s3 import S3Service

pytestmark = [pytest.mark.kafka]

PARTITIONS = 4
TIME = "event_time"
SCHEMA = pa.schema(
    [
        pa.field(TIME, pa.timestamp("us", tz="UTC")),
        pa.field("event_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)


def clickstream(events: int, seed: int) -> pa.Table:
    table = generate_clickstream(events, 1, 60, seed=seed, jitter="5m")
    ms = pc.cast(table.column(TIME), pa.int64()).to_numpy() // 1000  # what JSON epoch-ms holds
    table = table.set_column(0, TIME, pa.array(ms * 1000, pa.int64()).cast(SCHEMA.field(TIME).type))
    return table.select(SCHEMA.names).cast(SCHEMA)


async def produce_keyed(kafka: KafkaService, topic: str, table: pa.Table) -> pa.Table:
    """Produce with key = str(user_id) (aiokafka's default partitioner places them); returns
    (event_id, partition, offset) as the broker acknowledged them."""
    rows = table.to_pylist()
    values = [orjson.dumps({**row, TIME: int(row[TIME].timestamp() * 1000)}) for row in rows]
    keys = [str(row["user_id"]).encode() for row in rows]
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    stamps = (np.maximum.accumulate(times) // MS).tolist()
    acks = await kafka.aproduce(topic, values, keys=keys, timestamps_ms=stamps)
    return pa.table(
        {
            "event_id": table.column("event_id"),
            "user_id": table.column("user_id"),
            "partition": pa.array([p for p, _ in acks], pa.int32()),
            "offset": pa.array([o for _, o in acks], pa.int64()),
        }
    )


def expected_ids(produced: pa.Table, partition: int) -> Counter[int]:
    """DuckDB: the event ids of the records the broker put on ``partition``."""
    query = duckdb.sql(f"SELECT event_id FROM produced WHERE partition = {int(partition)}")
    assert query is not None
    found = query.fetchall()
    return Counter(int(row[0]) for row in found)


def stream(kafka: KafkaService, topic: str) -> KafkaStream:
    return KafkaStream(
        topic,
        kafka.bootstrap,
        time_column=TIME,
        schema=SCHEMA,
        stop_at="latest",
        max_batch_records=300,
    )


async def run_ids(source: ls.Source) -> Counter[int]:
    pipeline = ls.Pipeline()
    sink = ls.CollectSink()
    pipeline.source(source).sink(sink)
    await pipeline.run()
    return Counter(sink.table().column("event_id").to_pylist()) if sink.batches else Counter()


def lambda_source(lake: Any, kafka: KafkaService, topic: str) -> LambdaSource:
    return LambdaSource(
        lake,
        stream(kafka, topic),
        handoff="offsets",
        out_of_orderness="10m",
        idle_timeout="200ms",
    )


async def check_tasks(make: Any, produced: pa.Table, *, split: bool) -> list[dict[str, Any]]:
    """Every task's ids equal DuckDB's for its partition; their union is the single-source
    run's and every produced record once. Returns each task's lake metrics."""
    whole = await run_ids(make())
    everything = Counter(produced.column("event_id").to_pylist())
    assert whole == everything
    union: Counter[int] = Counter()
    metrics = []
    for p in range(PARTITIONS):
        task = make().for_partition(p, PARTITIONS, ["user_id"])
        got = await run_ids(task)
        assert got == expected_ids(produced, p), f"partition {p}"
        assert not set(got) & set(union), f"partition {p} repeats records of another task"
        union += got
        lake = task.metrics()["lake"]["kafka_partition"]
        assert task.metrics()["recorded_offsets"].keys() <= {p}
        if split:
            assert lake["filtered_files"] == 0 and lake["rows_other_partitions"] == 0
            assert lake["split_files"] > 0 and lake["files_other_partitions"] > 0
        else:
            assert lake["split_files"] == 0 and lake["rows_other_partitions"] > 0
        metrics.append(lake)
    assert union == whole
    return metrics


async def setup_topic(kafka: KafkaService) -> tuple[str, pa.Table, pa.Table, pa.Table]:
    table = clickstream(2400, seed=5)
    first, second = table.slice(0, 1500), table.slice(1500)
    topic = await asyncio.to_thread(kafka.new_topic, PARTITIONS)
    produced_first = await produce_keyed(kafka, topic, first)
    return topic, first, second, produced_first


def check_broker_placement(produced: pa.Table) -> None:
    """aiokafka's default partitioner (through the broker) = kafka_partition = partitions_of."""
    keys = [str(u).encode() for u in produced.column("user_id").to_pylist()]
    acked = produced.column("partition").to_pylist()
    assert acked == [kafka_partition(k, PARTITIONS) for k in keys]
    vectorised = KeyPartitioner("user_id", PARTITIONS).partitions_of(produced)
    assert vectorised.tolist() == acked
    assert len(set(acked)) == PARTITIONS


async def archive(kafka: KafkaService, topic: str, writer: Any) -> None:
    await Archiver(
        kafka.bootstrap,
        topic,
        writer,
        TIME,
        format="json",
        schema=SCHEMA,
        stop_at="latest",
        commit_rows=400,
        commit_interval="60s",
    ).run()


async def test_archiver_lake_split_by_partition_and_compaction_keeps_it(
    kafka: KafkaService, tmp_path: Path
) -> None:
    topic, _, second, produced_first = await setup_topic(kafka)
    check_broker_placement(produced_first)
    writer = ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=128)
    await archive(kafka, topic, writer)
    produced = pa.concat_tables([produced_first, await produce_keyed(kafka, topic, second)])
    duckdb.register("produced", produced)
    files = live_files(writer)
    assert files and all(file_kafka_partition(f) is not None for f in files)
    for f in files:  # a split file holds exactly the records of its partition
        rows = pq.read_table(tmp_path / "lake" / f, columns=["user_id"])
        owners = KeyPartitioner("user_id", PARTITIONS).partitions_of(rows)
        assert set(owners.tolist()) == {file_kafka_partition(f)}
    assert writer.offsets() == {
        p: int(pc.sum(pc.equal(produced_first.column("partition"), p)).as_py())
        for p in range(PARTITIONS)
    }

    def make() -> LambdaSource:
        return lambda_source(ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA), kafka, topic)

    await check_tasks(make, produced, split=True)

    result = compact(writer, min_files=2)
    assert result.sequence is not None and result.files_after < result.files_before
    compacted = live_files(writer)
    assert all(file_kafka_partition(f) is not None for f in compacted)
    by_group = Counter((f.rsplit("/", 1)[0], file_kafka_partition(f)) for f in compacted)
    assert max(by_group.values()) == 1  # one file per (hour, partition) after compaction
    await check_tasks(make, produced, split=True)


@pytest.mark.iceberg
async def test_iceberg_archiver_table_split_by_partition(
    kafka: KafkaService, tmp_path: Path, iceberg_catalog_props: dict[str, str]
) -> None:
    topic, _, second, produced_first = await setup_topic(kafka)
    writer = IcebergLakeWriter("lake.events", iceberg_catalog_props, TIME)
    await archive(kafka, topic, writer)
    produced = pa.concat_tables([produced_first, await produce_keyed(kafka, topic, second)])
    duckdb.register("produced", produced)
    spec = writer.table().spec()
    assert [f.name for f in spec.fields] == [f"{TIME}_hour", "_kafka_partition"]

    def make() -> LambdaSource:
        return lambda_source(IcebergLake("lake.events", iceberg_catalog_props, TIME), kafka, topic)

    await check_tasks(make, produced, split=True)
    lake = IcebergLake("lake.events", iceberg_catalog_props, TIME)
    pipeline = ls.Pipeline()
    sink = ls.CollectSink()
    pipeline.source(lake).sink(sink)
    await pipeline.run()
    assert "_kafka_partition" not in sink.table().column_names  # bookkeeping, not a record field


def write_plain_lake(root: Path, table: pa.Table, commit: CommitRecord | None) -> None:
    """A lake with no partition in its paths (hour directories, one file per hour), as the
    archiver wrote before the split, with a commit record when ``commit`` is given."""
    times = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    hours = times // HOUR * HOUR
    files = []
    for hour in np.unique(hours):
        part = table.filter(pa.array(hours == hour)).sort_by(TIME)
        stamp = pa.scalar(int(hour), pa.timestamp("us", tz="UTC")).as_py()
        relative = f"dt={stamp:%Y-%m-%d}/hour={stamp:%H}/part-{1:020d}-{'0' * 32}.parquet"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, root / relative, row_group_size=100)
        files.append(relative)
    if commit is not None:
        path = root / commit.file_name()
        path.parent.mkdir(parents=True, exist_ok=True)
        record = CommitRecord(
            sequence=commit.sequence,
            offsets=commit.offsets,
            topic=commit.topic,
            files=tuple(files),
            rows=table.num_rows,
        )
        path.write_bytes(record.to_json())


async def test_unsplit_lake_is_filtered_by_key(kafka: KafkaService, tmp_path: Path) -> None:
    """An archiver lake from before the split: every file read, other partitions' rows dropped
    (counted), the handoff per partition exact."""
    topic, first, second, produced_first = await setup_topic(kafka)
    offsets = {
        p: int(pc.sum(pc.equal(produced_first.column("partition"), p)).as_py())
        for p in range(PARTITIONS)
    }
    write_plain_lake(
        tmp_path / "lake", first, CommitRecord(sequence=1, offsets=offsets, topic=topic)
    )
    produced = pa.concat_tables([produced_first, await produce_keyed(kafka, topic, second)])
    duckdb.register("produced", produced)

    def make() -> LambdaSource:
        return lambda_source(ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA), kafka, topic)

    metrics = await check_tasks(make, produced, split=False)
    # every task read the whole lake: what each skipped is the rest of the lake
    for p, lake in enumerate(metrics):
        assert lake["rows_other_partitions"] == first.num_rows - offsets[p]


async def test_lake_without_commits_null_keys_are_dead_letters_once(tmp_path: Path) -> None:
    """A lake no archiver wrote: tasks' rows partition the lake by key; a null key belongs to
    no partition, so the task of partition 0 dead-letters it and every task counts it."""
    table = clickstream(1200, seed=9)
    nulls = pc.equal(pc.bit_wise_and(table.column("event_id"), 31), 0)
    table = table.set_column(
        2, "user_id", pc.if_else(nulls, pa.scalar(None, pa.int64()), table.column("user_id"))
    )
    write_plain_lake(tmp_path / "lake", table, None)
    null_count = int(pc.sum(nulls).as_py())
    assert null_count
    duckdb.register("lake_rows", table)
    union: Counter[int] = Counter()
    for p in range(PARTITIONS):
        lake = ParquetLake(tmp_path / "lake", TIME).for_partition(p, PARTITIONS, "user_id")
        got = await run_ids(lake)
        keyed = duckdb.sql("SELECT event_id, user_id FROM lake_rows WHERE user_id IS NOT NULL")
        assert keyed is not None
        rows = keyed.to_arrow_table()
        owners = KeyPartitioner("user_id", PARTITIONS).partitions_of(rows)
        mine = rows.filter(pa.array(owners == p)).column("event_id").to_pylist()
        assert got == Counter(mine)
        union += got
        counts = lake.metrics()
        assert counts["kafka_partition"]["null_key_rows"] == null_count
        assert counts["dead_letters"] == (null_count if p == 0 else 0)
    assert union == Counter(table.filter(pc.invert(nulls)).column("event_id").to_pylist())


async def test_stream_record_of_another_partition_is_an_error(
    kafka: KafkaService, tmp_path: Path
) -> None:
    topic = await asyncio.to_thread(kafka.new_topic, PARTITIONS)
    table = clickstream(40, seed=3)
    user = next(
        u
        for u in table.column("user_id").to_pylist()
        if kafka_partition(str(u).encode(), PARTITIONS) != 1
    )
    row = table.slice(0, 1).to_pylist()[0] | {"user_id": user}
    value = orjson.dumps({**row, TIME: int(row[TIME].timestamp() * 1000)})
    await kafka.aproduce(topic, [value, value], partition=1)  # misplaced at offsets 0 and 1
    write_plain_lake(tmp_path / "lake", table.slice(0, 0), CommitRecord(1, {}, topic))
    source = lambda_source(ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA), kafka, topic)
    with pytest.raises(
        MisplacedKeyError, match=rf"topic={topic} partition=1 offset=0: key user_id={user}"
    ):
        await run_ids(source.for_partition(1, PARTITIONS, ["user_id"]))
    assert await run_ids(source.for_partition(0, PARTITIONS, ["user_id"])) == Counter()


JAVA = """
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.serialization.*;
import java.nio.file.*;
public class Partitions {
    public static void main(String[] args) throws Exception {
        int n = Integer.parseInt(args[0]);
        StringSerializer s = new StringSerializer();
        IntegerSerializer i = new IntegerSerializer();
        LongSerializer l = new LongSerializer();
        StringBuilder out = new StringBuilder();
        for (String line : Files.readAllLines(Paths.get(args[1]))) {
            String[] kind = line.split(" ", 2);
            byte[] key = kind[0].equals("s") ? s.serialize("t", kind[1])
                : kind[0].equals("i") ? i.serialize("t", Integer.parseInt(kind[1]))
                : l.serialize("t", Long.parseLong(kind[1]));
            out.append(BuiltInPartitioner.partitionForKey(key, n)).append('\\n');
        }
        System.out.print(out);
    }
}
"""


def test_java_producer_partitioner_agrees(tmp_path: Path) -> None:
    """kafka-clients (the Apache Kafka fixture's jars) places the same keys where
    KeyPartitioner does: text (empty, non-ASCII), ints as int32 and int64."""
    from tests.services.apache_kafka import fetch_jars

    jars = fetch_jars()
    texts = [
        "",
        "21",
        "foobar",
        "é€😀",
        "user-42",
        "a-little-bit-longer-string",
        *map(str, range(200)),
    ]
    numbers = [0, 1, -1, 2**31 - 1, -(2**31), 123456789, *range(-50, 50)]
    longs = [2**62, -(2**63), 2**63 - 1, *range(100)]
    lines = [f"s {t}" for t in texts] + [f"i {v}" for v in numbers] + [f"l {v}" for v in longs]
    (tmp_path / "keys.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "Partitions.java").write_text(JAVA)
    for partitions in (4, 7):
        done = subprocess.run(
            [
                "java",
                "-cp",
                f"{jars}/*",
                str(tmp_path / "Partitions.java"),
                str(partitions),
                str(tmp_path / "keys.txt"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        java = [int(x) for x in done.stdout.split()]
        ours = (
            KeyPartitioner("k", partitions).partitions_of(pa.table({"k": texts})).tolist()
            + KeyPartitioner("k", partitions, "int32")
            .partitions_of(pa.table({"k": numbers}))
            .tolist()
            + KeyPartitioner("k", partitions, "int64")
            .partitions_of(pa.table({"k": longs}))
            .tolist()
        )
        assert java == ours


@pytest.mark.s3
async def test_split_lake_on_s3_tasks_partition_the_rows(s3: S3Service) -> None:
    """A lake written per Kafka partition on (moto) S3: each task lists only its files, the
    tasks' rows are the lake's, each row in the task its key maps to."""
    table = clickstream(1500, seed=13)
    owners = KeyPartitioner("user_id", PARTITIONS).partitions_of(table)
    url = f"s3://{s3.new_bucket('split')}/lake"
    writer = ParquetLakeWriter(url, TIME, s3=s3.config(), layout="day")  # few S3 objects
    writer.write({p: table.filter(pa.array(owners == p)) for p in range(PARTITIONS)})
    duckdb.register("lake_rows", table)
    union: Counter[int] = Counter()
    for p in range(PARTITIONS):
        lake = ParquetLake(url, TIME, partitioning="day", s3=s3.config())
        lake = lake.for_partition(p, PARTITIONS, ["user_id"])
        got = await run_ids(lake)
        assert got == Counter(table.filter(pa.array(owners == p)).column("event_id").to_pylist())
        counts = lake.metrics()["kafka_partition"]
        assert counts["split_files"] > 0 and counts["filtered_files"] == 0
        union += got
    query = duckdb.sql("SELECT event_id FROM lake_rows")
    assert query is not None
    assert union == Counter(int(row[0]) for row in query.fetchall())
