"""The lake writers against real storage: local paths, ``file://``, moto S3 and Iceberg catalogs.

References are independent: ``pyarrow.dataset`` (hive partitioning) and plain ``pyarrow.parquet``
for Parquet lakes, pyiceberg ``scan().to_arrow()`` for Iceberg, and the generator's input table,
compared as multisets of the unique ``event_id``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.generator import generate_clickstream
from lake.writer import (
    DEAD_LETTER_SCHEMA,
    IcebergLakeWriter,
    ParquetLakeWriter,
    partition_path,
    row_group_bounds,
)
from lambdasource.errors import SchemaError, SinkError
from lambdasource.pipeline import Pipeline
from lambdasource.sinks.collect import CollectSink
from lambdasource.sources.lake.commits import (
    COMMITS_DIR,
    PROP_OFFSETS,
    PROP_SEQUENCE,
    PROP_TOPIC,
    CommitRecord,
)
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.timeutil import DAY, HOUR, MINUTE, TIME_TYPE, to_micros
from tests.services.iceberg import load
from tests.services.s3 import S3Service

TIME = "event_time"


def ids(table: pa.Table) -> Counter[int]:
    return Counter(table.column("event_id").to_pylist())


def micros(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_int64(col.type):  # epoch ms
        return np.asarray(col.to_numpy(), dtype=np.int64) * 1000
    normalized = pc.cast(col.cast(pa.timestamp("us", tz="UTC")), pa.int64())
    return np.asarray(normalized.to_numpy(), dtype=np.int64)


_DIR_PATTERNS = {
    "hour": (r"dt=(\d{4})-(\d\d)-(\d\d)/hour=(\d\d)$", HOUR),
    "iso_hour": (r"hour=(\d{4})-(\d\d)-(\d\d)T(\d\d)$", HOUR),
    "ymdh": (r"year=(\d{4})/month=(\d\d)/day=(\d\d)/hour=(\d\d)$", HOUR),
    "day": (r"dt=(\d{4})-(\d\d)-(\d\d)$", DAY),
}


def partition_range(directory: str, layout: str) -> tuple[int, int]:
    pattern, width = _DIR_PATTERNS[layout]
    match = re.search(pattern, directory)
    assert match, f"{directory} does not follow layout {layout}"
    parts = [int(g) for g in match.groups()] + [0]
    start = to_micros(datetime(parts[0], parts[1], parts[2], parts[3], tzinfo=UTC))
    return start, start + width


def check_parquet_lake(
    fs: pafs.FileSystem,
    base: str,
    expected: pa.Table,
    commits: list[CommitRecord],
    *,
    layout: str = "hour",
    row_group_rows: int | None = None,
) -> None:
    """Every committed file: inside its partition, sorted, row groups bounded and ordered; the
    committed files hold exactly the expected rows (multiset of event_id)."""
    committed = [f for c in commits for f in c.files]
    assert len(committed) == len(set(committed))
    assert sum(c.rows for c in commits) == expected.num_rows
    pieces = []
    for relative in committed:
        directory = relative.rsplit("/", 1)[0]
        low, high = partition_range(directory, layout)
        pf = pq.ParquetFile(f"{base}/{relative}", filesystem=fs)
        table = pf.read()
        times = micros(table.column(TIME))
        assert times.min() >= low and times.max() < high, relative
        assert np.all(np.diff(times) >= 0), f"{relative} not sorted by time"
        previous_max = None
        for i in range(pf.metadata.num_row_groups):
            group = pf.metadata.row_group(i)
            if row_group_rows is not None:
                assert group.num_rows <= row_group_rows
            gt = micros(pf.read_row_group(i, columns=[TIME]).column(TIME))
            if previous_max is not None:
                assert gt.min() >= previous_max
            previous_max = gt.max()
        pieces.append(table.select(expected.column_names))
    got = pa.concat_tables(pieces) if pieces else expected.schema.empty_table()
    assert ids(got) == ids(expected)
    # full content equal, not only ids
    cols = (
        ["event_id", "user_id", "amount", "kind"]
        if "kind" in expected.column_names
        else ["event_id", "user_id", "amount"]
    )
    assert got.sort_by("event_id").select(cols).to_pydict() == (
        expected.sort_by("event_id").select(cols).to_pydict()
    )
    assert sorted(micros(got.column(TIME)).tolist()) == sorted(
        micros(expected.column(TIME)).tolist()
    )


def data(events: int = 4_000, days: int = 2, seed: int = 1) -> pa.Table:
    return generate_clickstream(events, days, 50, seed=seed, jitter="3h")


# --- unit-level pieces -------------------------------------------------------------------------


def test_partition_paths() -> None:
    t = to_micros(datetime(2026, 3, 4, 5, 6, tzinfo=UTC))
    assert partition_path(t, "hour") == "dt=2026-03-04/hour=05"
    assert partition_path(t, "iso_hour") == "hour=2026-03-04T05"
    assert partition_path(t, "ymdh") == "year=2026/month=03/day=04/hour=05"
    assert partition_path(t, "day") == "dt=2026-03-04"


@given(
    st.lists(st.integers(0, 3 * HOUR), max_size=300),
    st.integers(1, 50),
    st.sampled_from([None, MINUTE, 10 * MINUTE]),
    st.integers(1, 20),
)
def test_row_group_bounds_cover_and_bound(
    times: list[int], max_rows: int, span: int | None, min_rows: int
) -> None:
    arr = np.sort(np.asarray(times, dtype=np.int64))
    bounds = row_group_bounds(arr, max_rows, span, min_rows)
    assert [b for b in bounds] == sorted(bounds)
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(len(arr)))
    assert all(0 < stop - start <= max_rows for start, stop in bounds)


# --- Parquet: local and file:// -----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["hour", "iso_hour", "ymdh", "day"])
@pytest.mark.parametrize("url", [False, True])
def test_parquet_writer_local(tmp_path: Path, layout: str, url: bool) -> None:
    table = data()
    root = tmp_path / "lake"
    writer = ParquetLakeWriter(
        root.as_uri() if url else str(root),
        TIME,
        layout=layout,
        row_group_rows=100,  # type: ignore[arg-type]
    )
    chunks = [table.slice(0, 1500), table.slice(1500, 0), table.slice(1500)]
    for i, chunk in enumerate(chunks):
        record = writer.write(chunk, offsets={0: 10 * (i + 1), 1: i}, topic="clicks")
        assert record.sequence == i + 1
        assert record.rows == chunk.num_rows
    commits = writer.commits()
    assert [c.sequence for c in commits] == [1, 2, 3]
    assert commits[1].files == ()  # the empty write still commits its offsets
    assert writer.offsets() == {0: 30, 1: 2}
    assert writer.latest_commit() == commits[-1]
    stored = orjson.loads((root / COMMITS_DIR / f"{3:020d}.json").read_bytes())
    assert stored["topic"] == "clicks" and stored["offsets"] == {"0": 30, "1": 2}
    # every data file on disk is committed (no orphans from successful writes)
    on_disk = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.parquet") if "_lambdasource" not in str(p)
    )
    assert on_disk == sorted(f for c in commits for f in c.files)
    check_parquet_lake(
        pafs.LocalFileSystem(), str(root), table, commits, layout=layout, row_group_rows=100
    )
    # a standard reader sees exactly the rows
    if layout == "hour":
        dataset = ds.dataset(root, format="parquet", partitioning="hive")
        read = dataset.to_table()
        assert ids(read) == ids(table)
        assert set(read.column_names) >= {"dt", "hour"}


def test_row_groups_follow_time_span(tmp_path: Path) -> None:
    """With ``row_group_span="10m"`` no row group of a dense hour spans two 10-minute buckets."""
    table = generate_clickstream(20_000, 1, 50, seed=3)
    writer = ParquetLakeWriter(
        tmp_path, TIME, row_group_rows=1_000_000, row_group_span="10m", row_group_min_rows=10
    )
    record = writer.write(table)
    for relative in record.files:
        pf = pq.ParquetFile(tmp_path / relative)
        assert pf.metadata.num_row_groups >= 5
        for i in range(pf.metadata.num_row_groups):
            t = micros(pf.read_row_group(i, columns=[TIME]).column(TIME))
            assert t.min() // (10 * MINUTE) == t.max() // (10 * MINUTE)


@pytest.mark.parametrize(
    "dtype",
    [pa.int64(), pa.timestamp("ns"), pa.timestamp("s", tz="UTC"), pa.timestamp("ms")],
)
@pytest.mark.parametrize("normalize", [True, False])
def test_time_column_types(tmp_path: Path, dtype: pa.DataType, normalize: bool) -> None:
    table = data(1_000, 1)
    us = micros(table.column(TIME))
    if pa.types.is_int64(dtype):
        us = us - us % 1000
        column = pa.array(us // 1000, pa.int64())
    else:
        unit = dtype.unit
        if unit == "s":
            us = us - us % 1_000_000
        elif unit == "ms":
            us = us - us % 1000
        column = pa.array(us, pa.int64()).cast(pa.timestamp("us")).cast(dtype)
    table = table.set_column(0, pa.field(TIME, dtype), column)
    writer = ParquetLakeWriter(tmp_path, TIME, normalize_time=normalize)
    record = writer.write(table)
    read = pa.concat_tables(pq.read_table(tmp_path / f) for f in record.files)
    kept = pa.timestamp("ms", tz="UTC") if dtype == pa.timestamp("s", tz="UTC") else dtype
    assert read.schema.field(TIME).type == (TIME_TYPE if normalize else kept)  # Parquet has no s
    assert sorted(micros(read.column(TIME)).tolist()) == sorted(us.tolist())
    check_parquet_lake(pafs.LocalFileSystem(), str(tmp_path), table, writer.commits())


def test_bad_input_is_rejected(tmp_path: Path) -> None:
    writer = ParquetLakeWriter(tmp_path, TIME)
    table = data(100, 1)
    with_null = table.set_column(
        0,
        pa.field(TIME, TIME_TYPE),
        pa.array([None, *micros(table.column(TIME))[1:].tolist()], pa.int64()).cast(TIME_TYPE),
    )
    with pytest.raises(SchemaError, match="null event time"):
        writer.write(with_null)
    with pytest.raises(SchemaError, match="not in columns"):
        writer.write(table.drop_columns([TIME]))
    with pytest.raises(SchemaError, match="time column"):
        writer.write(table.set_column(0, TIME, pa.array(["x"] * 100)))
    assert writer.commits() == []


def test_crash_between_files_and_commit_leaves_orphans(tmp_path: Path) -> None:
    """A failure after the data files, before the commit record: no commit, orphan files that
    the lake reader ignores; the next write reuses the sequence and the lake has every row once."""
    table = data(2_000, 1)
    writer = ParquetLakeWriter(tmp_path, TIME)
    writer.write(table.slice(0, 500), offsets={0: 500})

    def crash(record: CommitRecord) -> None:
        raise RuntimeError("simulated crash")

    writer._after_files_written = crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        writer.write(table.slice(500, 700), offsets={0: 1200})
    assert [c.sequence for c in writer.commits()] == [1]
    orphans = [p for p in tmp_path.rglob("part-00000000000000000002-*.parquet")]
    assert orphans, "the crashed attempt should have left its data files"

    writer2 = ParquetLakeWriter(tmp_path, TIME)  # a restarted process
    writer2.write(table.slice(500), offsets={0: 2000})
    commits = writer2.commits()
    assert [c.sequence for c in commits] == [1, 2]
    assert writer2.offsets() == {0: 2000}
    check_parquet_lake(pafs.LocalFileSystem(), str(tmp_path), table, commits)
    # the lambdasource reader follows the commit records: exactly once, orphans ignored
    assert ids(read_with_parquet_lake(str(tmp_path))) == ids(table)


def read_with_parquet_lake(path: str, **kwargs: Any) -> pa.Table:
    sink = CollectSink()
    pipeline = Pipeline()
    pipeline.source(ParquetLake(path, TIME, **kwargs)).sink(sink)
    pipeline.run_sync()
    return sink.table()


def test_exclusive_commit_sequence(tmp_path: Path) -> None:
    """Two writers on one root: the second to commit a sequence fails instead of overwriting."""
    table = data(200, 1)
    a = ParquetLakeWriter(tmp_path, TIME)
    b = ParquetLakeWriter(tmp_path, TIME)
    a._sequence()
    b._sequence()
    a.write(table)
    with pytest.raises(SinkError, match="already exists"):
        b.write(table)
    b.write(table)  # re-lists after the failure
    assert [c.sequence for c in ParquetLakeWriter(tmp_path, TIME).commits()] == [1, 2]


def test_dead_letters_beside_the_lake(tmp_path: Path) -> None:
    writer = ParquetLakeWriter(tmp_path, TIME)
    dead = pa.Table.from_pylist(
        [
            {
                "topic": "t",
                "partition": 1,
                "offset": 7,
                "timestamp": 0,
                "key": None,
                "value": b"{oops",
                "reason": "malformed JSON",
            }
        ],
        schema=DEAD_LETTER_SCHEMA,
    )
    writer.write(data(10, 1), dead_letters=dead)
    got = writer.read_dead_letters()
    assert got.to_pylist() == dead.to_pylist()
    assert (tmp_path / "_lambdasource" / "dead_letters" / f"{1:020d}.parquet").exists()


def test_parquet_lake_reader_reads_writer_output(tmp_path: Path) -> None:
    table = data(3_000, 2)
    writer = ParquetLakeWriter(tmp_path, TIME, row_group_rows=64)
    for start in range(0, 3_000, 1_000):
        writer.write(table.slice(start, 1_000))
    read = read_with_parquet_lake(str(tmp_path))
    assert ids(read) == ids(table)
    times = micros(read.column(TIME))
    hours = times // HOUR
    assert np.all(np.diff(hours) >= 0), "partitions out of order"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(
        st.lists(st.integers(-2 * DAY, 3 * DAY), min_size=0, max_size=120), min_size=1, max_size=4
    ),
    row_group_rows=st.integers(1, 40),
    layout=st.sampled_from(["hour", "day", "iso_hour"]),
)
def test_property_every_row_once_in_its_partition(
    batches: list[list[int]], row_group_rows: int, layout: str
) -> None:
    """Random (out-of-order, late, empty, multi-day, pre-epoch) inputs over several commits."""
    root = tempfile.mkdtemp(prefix="lake-prop-")
    try:
        base = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
        writer = ParquetLakeWriter(
            root,
            TIME,
            layout=layout,
            row_group_rows=row_group_rows,
            row_group_span="20m",  # type: ignore[arg-type]
            row_group_min_rows=3,
        )
        tables = []
        next_id = 0
        for times in batches:
            t = pa.table(
                {
                    TIME: pa.array([base + x for x in times], pa.int64()).cast(TIME_TYPE),
                    "event_id": pa.array(range(next_id, next_id + len(times)), pa.int64()),
                    "user_id": pa.array([x % 7 for x in times], pa.int64()),
                    "amount": pa.array([float(x % 5) for x in times], pa.float64()),
                }
            )
            next_id += len(times)
            tables.append(t)
            writer.write(t, offsets={0: next_id})
        expected = pa.concat_tables(tables)
        commits = writer.commits()
        assert len(commits) == len(batches)
        assert writer.offsets() == {0: next_id}
        check_parquet_lake(
            pafs.LocalFileSystem(),
            root,
            expected,
            commits,
            layout=layout,
            row_group_rows=row_group_rows,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- Parquet on S3 ------------------------------------------------------------------------------


@pytest.mark.s3
def test_parquet_writer_s3(s3: S3Service) -> None:
    bucket = s3.new_bucket("lake")
    table = data(3_000, 2)
    writer = ParquetLakeWriter(f"s3://{bucket}/clicks", TIME, s3=s3.config(), row_group_rows=200)
    writer.write(table.slice(0, 1_000), offsets={0: 1_000}, topic="clicks")
    writer.write(table.slice(1_000), offsets={0: 3_000}, topic="clicks")
    commits = writer.commits()
    assert [c.sequence for c in commits] == [1, 2]
    assert ParquetLakeWriter(f"s3://{bucket}/clicks", TIME, s3=s3.config()).offsets() == {0: 3_000}
    fs = s3.config().pyarrow_filesystem()
    check_parquet_lake(fs, f"{bucket}/clicks", table, commits, row_group_rows=200)
    dataset = ds.dataset(f"{bucket}/clicks", filesystem=fs, format="parquet", partitioning="hive")
    assert ids(dataset.to_table()) == ids(table)
    # the commit record is a complete JSON object on S3
    raw = fs.open_input_stream(f"{bucket}/clicks/{COMMITS_DIR}/{2:020d}.json").read()
    assert CommitRecord.from_json(raw, where="s3").offsets == {0: 3_000}
    read = read_with_parquet_lake(f"s3://{bucket}/clicks", s3=s3.config())
    assert ids(read) == ids(table)


# --- Iceberg ------------------------------------------------------------------------------------


def check_iceberg(writer: IcebergLakeWriter, expected: pa.Table, row_group_rows: int) -> None:
    table = writer.table()
    got = table.scan().to_arrow()
    assert ids(got) == ids(expected)
    assert got.schema.field(TIME).type == TIME_TYPE
    spec = table.spec()
    assert [str(f.transform) for f in spec.fields] == ["hour"]
    io = table.io
    for task in table.scan().plan_files():
        path = task.file.file_path
        with io.new_input(path).open() as f:
            pf = pq.ParquetFile(pa.BufferReader(f.read()))
        times = micros(pf.read().column(TIME))
        assert np.all(np.diff(times) >= 0), f"{path} not sorted"
        assert len(np.unique(times // HOUR)) == 1, f"{path} spans two hours"
        for i in range(pf.metadata.num_row_groups):
            assert pf.metadata.row_group(i).num_rows <= row_group_rows


def run_iceberg_writer(props: dict[str, str]) -> None:
    table = data(3_000, 2)
    writer = IcebergLakeWriter("db.clicks", props, TIME, row_group_rows=100)
    assert writer.commits() == []
    r1 = writer.write(
        table.slice(0, 1_200), offsets={0: 1_200}, topic="clicks", properties={"job": "nightly"}
    )
    r2 = writer.write(table.slice(1_200, 0), offsets={0: 1_200, 1: 5}, topic="clicks")
    r3 = writer.write(table.slice(1_200), offsets={0: 3_000}, topic="clicks")
    assert (r1.sequence, r2.sequence, r3.sequence) == (1, 2, 3)
    check_iceberg(writer, table, 100)
    commits = writer.commits()
    assert [c.sequence for c in commits] == [1, 2, 3]
    assert [c.rows for c in commits] == [1_200, 0, 1_800]
    assert writer.offsets() == {0: 3_000, 1: 5}
    snapshots = load(props).load_table("db.clicks").snapshots()
    assert len(snapshots) == 3
    first = dict(snapshots[0].summary.additional_properties)
    assert first["job"] == "nightly"
    assert first[PROP_TOPIC] == "clicks"
    assert first[PROP_SEQUENCE] == "1"
    assert orjson.loads(first[PROP_OFFSETS]) == {"0": 1_200}
    parsed = CommitRecord.from_snapshot_properties(first, where="s")
    assert parsed is not None
    assert (parsed.sequence, parsed.offsets, parsed.topic) == (1, {0: 1_200}, "clicks")
    # a second writer (restarted process) continues the sequence on the existing table
    again = IcebergLakeWriter("db.clicks", props, TIME)
    extra = data(100, 1, seed=9)
    extra = extra.set_column(1, "event_id", pc.add(extra.column("event_id"), 10_000))
    assert again.write(extra, offsets={0: 3_100}).sequence == 4
    check_iceberg(again, pa.concat_tables([table, extra], promote_options="permissive"), 100)


@pytest.mark.iceberg
def test_iceberg_writer_file_warehouse(iceberg_catalog_props: dict[str, str]) -> None:
    run_iceberg_writer(iceberg_catalog_props)


@pytest.mark.iceberg
@pytest.mark.s3
def test_iceberg_writer_s3_warehouse(iceberg_s3_catalog_props: dict[str, str]) -> None:
    run_iceberg_writer(iceberg_s3_catalog_props)


@pytest.mark.iceberg
def test_iceberg_writer_int64_ms_time_and_missing_columns(
    iceberg_catalog_props: dict[str, str],
) -> None:
    table = data(500, 1)
    ms = pa.array(micros(table.column(TIME)) // 1000, pa.int64())
    as_ms = table.set_column(0, pa.field(TIME, pa.int64()), ms)
    writer = IcebergLakeWriter("db.ms", iceberg_catalog_props, TIME)
    writer.write(as_ms)
    writer.write(
        as_ms.slice(0, 10)
        .drop_columns(["amount"])
        .set_column(1, "event_id", pa.array(range(10_000, 10_010), pa.int64()))
    )
    got = writer.table().scan().to_arrow()
    assert got.num_rows == 510
    assert got.schema.field(TIME).type == TIME_TYPE
    assert (
        got.filter(pc.greater_equal(got.column("event_id"), 10_000)).column("amount").null_count
        == 10
    )
    with pytest.raises(SchemaError, match="not in the table schema"):
        writer.write(as_ms.append_column("surprise", pa.array([1] * 500)))


@pytest.mark.iceberg
def test_iceberg_dead_letters(iceberg_catalog_props: dict[str, str]) -> None:
    writer = IcebergLakeWriter("db.dl", iceberg_catalog_props, TIME)
    dead = pa.Table.from_pylist(
        [
            {
                "topic": "t",
                "partition": 0,
                "offset": 3,
                "timestamp": 5,
                "key": b"k",
                "value": b"x",
                "reason": "bad",
            }
        ],
        schema=DEAD_LETTER_SCHEMA,
    )
    writer.write(data(20, 1), dead_letters=dead)
    assert writer.read_dead_letters().to_pylist() == dead.to_pylist()


# --- compaction ---------------------------------------------------------------------------------


def test_compaction_merges_small_files_and_keeps_commits_valid(tmp_path: Path) -> None:
    from lake.maintenance import compact, live_files
    from lambdasource.sources.lake.commits import merge_offsets

    table = data(3_000, 1)
    writer = ParquetLakeWriter(tmp_path, TIME, row_group_rows=100)
    for start in range(0, 3_000, 300):  # ten commits, many small files per hour
        writer.write(table.slice(start, 300), offsets={0: start + 300}, topic="t")
    before = live_files(writer)
    offsets = writer.offsets()
    result = compact(writer, min_files=2)
    assert result.sequence == 11
    assert result.rows > 0 and result.files_after < result.files_before
    after = live_files(writer)
    per_partition = Counter(f.rsplit("/", 1)[0] for f in after)
    assert max(per_partition.values()) == 1
    # replaced files stay (jobs pinned to an older state read them) until expired explicitly
    assert all((tmp_path / f).exists() for f in result.removed)
    assert set(before) - set(result.removed) <= set(after)
    # every commit record still parses; offsets unchanged; rows still sum to the lake's rows
    commits = ParquetLakeWriter(tmp_path, TIME).commits()
    assert merge_offsets(commits) == offsets
    assert (commits[-1].offsets, commits[-1].topic) == (offsets, "t")
    assert sum(c.rows for c in commits) == table.num_rows
    # the live files hold exactly the rows, sorted, in their partitions
    live = [CommitRecord(sequence=1, files=tuple(after), rows=table.num_rows)]
    check_parquet_lake(pafs.LocalFileSystem(), str(tmp_path), table, live, row_group_rows=100)
    assert ids(read_with_parquet_lake(str(tmp_path))) == ids(table)
    # idempotent: nothing left to compact
    assert compact(writer).sequence is None
    # the writer continues after the compaction commit
    assert writer.write(table.slice(0, 0), offsets={0: 3_000}).sequence == 12


def test_compaction_keeps_replaced_files_until_expired(tmp_path: Path) -> None:
    from lake.maintenance import compact, expire_replaced, live_files

    table = data(1_000, 1)
    writer = ParquetLakeWriter(tmp_path, TIME)
    for start in range(0, 1_000, 250):
        writer.write(table.slice(start, 250))
    result = compact(writer)
    assert result.removed and all((tmp_path / f).exists() for f in result.removed)
    assert result.removed[0] not in live_files(writer)
    # readers see only the new files (atomic for readers); the replaced ones are reported
    assert ids(read_with_parquet_lake(str(tmp_path))) == ids(table)
    assert expire_replaced(writer, keep_last=1) == []
    assert sorted(expire_replaced(writer)) == sorted(result.removed)
    assert not any((tmp_path / f).exists() for f in result.removed)
    assert ids(read_with_parquet_lake(str(tmp_path))) == ids(table)
    # an explicit word deletes at once
    writer.write(table.slice(0, 10))
    writer.write(table.slice(10, 10))
    again = compact(writer, delete_replaced=True)
    assert again.removed and not any((tmp_path / f).exists() for f in again.removed)
