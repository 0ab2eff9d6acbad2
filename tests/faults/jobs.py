"""Checkpointed bootstrap jobs for the fault suite, runnable as ``python -m tests.faults.jobs``.

lake (ParquetLake with the Kafka offsets it covers) → ``LambdaSource(handoff=…)`` →
``key_by("user_id")`` → one of two windows → ``DuckDBUpsert`` or ``PostgresUpsert``; checkpoints
at ``--checkpoints``:

- ``--job hourly`` (what the kill suite and the soak check): ``Tumbling(1h)`` ``emit="every"``
  with count, ``count_distinct(event_id)``, ``sum(event_id)`` and ``sum(amount)`` into a store
  keyed by ``(user_id, window_end)``, ``flush="all"``: the store must equal
  :func:`tests.faults.oracle.hourly_reference` over the input events — one lost or duplicated
  record anywhere changes a row. :func:`prepare_hourly` builds its data set (an
  archiver-written lake holding exactly the records before an hour boundary, and the whole
  history on the topic), exact for both handoffs.
- ``--job sliding`` (older; the broker and S3 fault tests use its data set, :func:`prepare`):
  ``Sliding(2h, 30m)`` ``emit="latest"``, checked against :func:`reference_store`.
- ``--job sliding-sums`` (the state bootstrap's kill suite; no ``count_distinct``, so
  ``--bootstrap-mode state`` builds its state in one pass): ``Sliding(2h, 30m)``
  ``emit="every"`` with count, sum/min/max of ``event_id`` and sum of amounts into a store keyed
  by ``(user_id, window_end)``, ``flush="all"``, on :func:`prepare_hourly`'s data set.

``--bootstrap-mode replay|state`` (default replay) is ``Pipeline.run(bootstrap=...)``.

The job prints one JSON object per line on stdout so a test can time a kill:
``{"event": "start"}``, then ``{"event": "progress", "phase": "lake"|"handoff"|"stream", ...}``
every ``--progress`` seconds (``"handoff"`` exactly once: the first line after the lake finished),
and ``{"event": "done", ...}`` with the final metrics (diagnostics only: no test takes its
expectations from them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

import lambdasource as ls
from lake.archiver import Archiver
from lake.generator import generate_clickstream
from lake.maintenance import CompactionResult, compact
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from lambdasource.checkpoints import Checkpoints
from lambdasource.embedded import create_topic
from lambdasource.reference import sliding_changelog
from lambdasource.s3 import S3Config
from lambdasource.sinks.base import Sink
from lambdasource.sinks.duckdb import DuckDBUpsert
from lambdasource.sinks.postgres import PostgresUpsert
from lambdasource.sources.alignment import Alignment
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.lake.iceberg import IcebergLake
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.sources.lambda_source import LambdaSource
from lambdasource.timeutil import MS, normalize_time_array, to_micros

SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("event_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)
WINDOW = ls.Sliding(size="2h", slide="30m")
AGGREGATES: dict[str, tuple[str, str | None]] = {
    "clicks": ("count", None),
    "revenue": ("sum", "amount"),
}
TABLE = "user_2h"
KEY = "user_id"
OUT_OF_ORDERNESS = "10m"
HOUR_US = 3_600_000_000

SUMS_TABLE = "user_2h_sums"

HOURLY_TABLE = "user_hour"
HOURLY_KEY = [KEY, "window_end"]
HOURLY_COLUMNS = [KEY, "window_start", "window_end", "n", "ids", "id_sum", "amount"]
HOURLY_TYPES = {"n": pa.int64(), "ids": pa.int64(), "id_sum": pa.int64(), "amount": pa.float64()}
LAKE_ROW_GROUP_ROWS = 256  # small row groups: many lake watermarks, many kill points
ICEBERG = "iceberg:"  # a lake "iceberg:DIR": table ICEBERG_TABLE, SQLite catalog + warehouse in DIR
ICEBERG_TABLE = "faults.clicks"


@dataclass(frozen=True)
class Dataset:
    """What :func:`prepare` made: every record, the lake's root and offsets, the topic."""

    table: pa.Table
    lake: str
    topic: str
    offsets: dict[int, int]
    lake_rows: int


def clickstream(events: int, seed: int, users: int = 40) -> pa.Table:
    table = generate_clickstream(events, 1, users, seed=seed, jitter="2m")
    return table.select(SCHEMA.names).cast(SCHEMA)


def split_partitions(table: pa.Table, partitions: int, seed: int) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    assign = rng.integers(0, partitions, size=table.num_rows)
    return [table.filter(pa.array(assign == p)) for p in range(partitions)]


def to_json(table: pa.Table) -> list[bytes]:
    return [orjson.dumps(row) for row in table.to_pylist()]


def arrival_ms(table: pa.Table) -> list[int]:
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    return (np.maximum.accumulate(times) // MS).tolist() if len(times) else []


async def produce(bootstrap: str, topic: str, parts: Sequence[pa.Table]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for p, rows in enumerate(parts):
            for value, ts in zip(to_json(rows), arrival_ms(rows), strict=True):
                futures.append(await producer.send(topic, value, partition=p, timestamp_ms=ts))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def prepare(
    bootstrap: str,
    topic: str,
    lake: str,
    *,
    events: int,
    seed: int,
    partitions: int = 2,
    archived: float = 0.6,
    s3: S3Config | None = None,
) -> Dataset:
    """Make the data set: ``events`` records spread over ``partitions``; the first ``archived``
    fraction of each partition (by offset) is written to the lake with a commit recording the
    offsets; every record goes to the topic (the stream keeps the whole history, as within
    retention). The job must deliver every record exactly once."""
    table = clickstream(events, seed)
    parts = split_partitions(table, partitions, seed)
    await create_topic(bootstrap, topic, partitions)
    await produce(bootstrap, topic, parts)
    offsets = {p: int(rows.num_rows * archived) for p, rows in enumerate(parts)}
    lake_rows = pa.concat_tables([rows.slice(0, offsets[p]) for p, rows in enumerate(parts)])
    writer = ParquetLakeWriter(lake, "event_time", s3=s3, row_group_rows=256)
    await asyncio.to_thread(writer.write, lake_rows, offsets=offsets, topic=topic)
    return Dataset(table, lake, topic, offsets, lake_rows.num_rows)


def reference_store(table: pa.Table, final_watermark: int) -> pa.Table:
    """The upsert store an exact run leaves: per key the newest completed window (watermark
    ``final_watermark``), keys whose newest window is empty absent. Sorted by key."""
    changes = sliding_changelog(
        table,
        time_column="event_time",
        keys=[KEY],
        window=WINDOW,
        aggregates=AGGREGATES,
        until=final_watermark + 1,
    )
    if changes.num_rows == 0:
        return changes.select([KEY, "window_start", "window_end", *AGGREGATES])
    ordered = changes.sort_by([(KEY, "ascending"), ("window_end", "ascending")])
    keys = ordered.column(KEY).to_numpy()
    last = np.append(keys[1:] != keys[:-1], True)
    newest = ordered.filter(pa.array(last))
    newest = newest.filter(pc.invert(newest.column("_deleted")))
    return newest.select([KEY, "window_start", "window_end", *AGGREGATES])


def read_duckdb(path: str | Path) -> pa.Table:
    """The job's DuckDB store table, in the reference's shape."""
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        table = con.sql(f"SELECT * FROM {TABLE}").to_arrow_table()
    return normalize_store(table)


async def read_postgres(dsn: str) -> pa.Table:
    """The job's PostgreSQL store table, in the reference's shape."""
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        cols = [KEY, "window_start", "window_end", *AGGREGATES]
        rows = await con.fetch(f"SELECT {', '.join(cols)} FROM {TABLE}")
    finally:
        await con.close()
    data = {c: [r[c] for r in rows] for c in cols}
    return normalize_store(
        pa.table(
            {
                KEY: pa.array(data[KEY], pa.int64()),
                "window_start": pa.array(data["window_start"], pa.timestamp("us", tz="UTC")),
                "window_end": pa.array(data["window_end"], pa.timestamp("us", tz="UTC")),
                "clicks": pa.array(data["clicks"], pa.int64()),
                "revenue": pa.array(data["revenue"], pa.float64()),
            }
        )
    )


def normalize_store(table: pa.Table) -> pa.Table:
    """A store table in the reference's shape: its columns, µs UTC times, sorted by key."""
    out = table.select([KEY, "window_start", "window_end", *AGGREGATES])
    arrays = []
    for name in out.column_names:
        col = out.column(name)
        if name in ("window_start", "window_end"):
            col = normalize_time_array(col.combine_chunks())
        elif name == "clicks":
            col = col.cast(pa.int64())
        elif name == "revenue":
            col = col.cast(pa.float64())
        else:
            col = col.cast(pa.int64())
        arrays.append(col)
    return pa.table(arrays, names=out.column_names).sort_by(KEY)


def diff_stores(
    got: pa.Table, expected: pa.Table, final_watermark: int | None = None, limit: int = 5
) -> list[str]:
    """Differences between normalized stores (empty: equal), naming the keys.

    Keys and aggregates must be equal. ``emit="latest"`` writes a key's *newest completed* window
    when the watermark advances and its value changed since the key's last emitted row; which
    ends a watermark step spans depends on batch timing, so a key whose value changed and came
    back within one step keeps its older row (same value, older ``window_end``). With
    ``final_watermark`` any ``window_end`` up to the newest end complete then is accepted (and
    ``window_start = window_end - size``); without it window bounds must be equal.
    """
    size = WINDOW.size
    newest = (
        None if final_watermark is None else (final_watermark + 1) // WINDOW.slide * WINDOW.slide
    )
    a = {r[KEY]: r for r in got.to_pylist()}
    b = {r[KEY]: r for r in expected.to_pylist()}
    out = [f"{KEY}={k}: missing, expected {b[k]}" for k in sorted(b.keys() - a.keys())]
    out += [f"{KEY}={k}: unexpected {a[k]}" for k in sorted(a.keys() - b.keys())]
    for k in sorted(a.keys() & b.keys()):
        x, y = a[k], b[k]
        end_x, end_y = to_micros(x["window_end"]), to_micros(y["window_end"])
        ends_ok = end_x == end_y if newest is None else end_x <= newest
        ends_ok = ends_ok and to_micros(x["window_start"]) == end_x - size
        same = x["clicks"] == y["clicks"] and (
            (x["revenue"] is None and y["revenue"] is None)
            or (
                x["revenue"] is not None
                and y["revenue"] is not None
                and abs(x["revenue"] - y["revenue"]) <= 1e-6 * max(1.0, abs(y["revenue"]))
            )
        )
        if not (same and ends_ok):
            out.append(f"{KEY}={k}: got {x}, expected {y} (newest end {newest})")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


# --- the hourly data set and store --------------------------------------------------------------


@dataclass(frozen=True)
class HourlyDataset:
    """What :func:`prepare_hourly` made.

    ``table``: every record of the topic (the input the oracle is computed from). Each Kafka
    partition holds its records ordered by event hour (bounded out of order within the hour), so
    the archiver-written lake — the first ``offsets[p]`` records of each partition — holds exactly
    the records with time < ``cutoff`` (an hour boundary). Hence both handoffs are exact: offsets
    (lake + stream from the recorded offsets) and timestamp (lake < cutoff, stream >= cutoff,
    cutoff = the lake's high-water mark, which is the end of its last hour partition).
    ``positions``: ``event_id, partition, offset`` of every record (for failure messages).
    """

    table: pa.Table
    lake: str
    topic: str
    offsets: dict[int, int]
    cutoff: int
    lake_rows: int
    commits: int
    positions: pa.Table


def hour_ordered(part: pa.Table) -> pa.Table:
    """``part`` stably sorted by event hour (within an hour the generator's order stays)."""
    micros = pc.cast(part.column("event_time"), pa.int64()).to_numpy()
    order = np.lexsort((np.arange(len(micros)), micros // HOUR_US))
    return part.take(pa.array(order))


async def produce_parts(
    bootstrap: str, topic: str, parts: dict[int, pa.Table], *, keyed: bool = False
) -> None:
    """Produce each table to its partition, in order, record timestamp = running max time;
    ``keyed``: with the message key ``str(user_id)`` (what a keyed producer sends)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for p, rows in parts.items():
            keys = (
                [str(user).encode() for user in rows.column(KEY).to_pylist()]
                if keyed
                else [None] * rows.num_rows
            )
            for key, value, ts in zip(keys, to_json(rows), arrival_ms(rows), strict=True):
                futures.append(
                    await producer.send(topic, value, key=key, partition=p, timestamp_ms=ts)
                )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def iceberg_catalog(lake: str) -> dict[str, str]:
    """pyiceberg SqlCatalog properties of a lake ``"iceberg:DIR"`` (SQLite + file warehouse)."""
    root = Path(lake.removeprefix(ICEBERG))
    warehouse = root / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    return {
        "name": "faults",
        "type": "sql",
        "uri": f"sqlite:///{root / 'catalog.db'}",
        "warehouse": warehouse.as_uri(),
    }


def lake_writer(lake: str, s3: S3Config | None = None) -> ParquetLakeWriter | IcebergLakeWriter:
    """The writer every archiver and compaction of the fault suite's lakes uses (``lake`` is a
    Parquet lake's root, or ``"iceberg:DIR"``)."""
    if lake.startswith(ICEBERG):
        return IcebergLakeWriter(
            ICEBERG_TABLE,
            iceberg_catalog(lake),
            "event_time",
            s3=s3,
            row_group_rows=LAKE_ROW_GROUP_ROWS,
        )
    return ParquetLakeWriter(lake, "event_time", s3=s3, row_group_rows=LAKE_ROW_GROUP_ROWS)


def write_lake_prefix(ds: HourlyDataset, lake: str, commit_rows: int = 500) -> int:
    """Write ``ds``'s lake part (each partition's first ``ds.offsets[p]`` records) into another
    lake as the archiver would: commits of about ``commit_rows`` records taking the next offsets
    of every partition, each recording the offsets it completes. Returns the commits made."""
    writer = lake_writer(lake)
    partitions = ds.positions.column("partition").to_numpy()
    parts = {p: ds.table.filter(pa.array(partitions == p)) for p in sorted(ds.offsets)}
    commits = max(1, -(-ds.lake_rows // commit_rows))
    for k in range(commits):
        ends = {p: -(-n * (k + 1) // commits) for p, n in ds.offsets.items()}
        starts = {p: -(-n * k // commits) for p, n in ds.offsets.items()}
        rows = pa.concat_tables([parts[p].slice(starts[p], ends[p] - starts[p]) for p in parts])
        writer.write(rows, offsets=ends, topic=ds.topic)
    return commits


def make_archiver(
    bootstrap: str,
    topic: str,
    lake: str,
    *,
    commit_rows: int = 500,
    commit_interval: str = "10s",
    stop_at: Literal["latest"] | None = "latest",
) -> Archiver:
    """A :class:`lake.archiver.Archiver` of ``topic`` into ``lake`` (it resumes at the lake's
    recorded offsets) with the suite's writer settings."""
    return Archiver(
        bootstrap,
        topic,
        lake_writer(lake),
        "event_time",
        schema=SCHEMA,
        commit_rows=commit_rows,
        commit_interval=commit_interval,
        stop_at=stop_at,
    )


async def archive(bootstrap: str, topic: str, lake: str, *, commit_rows: int = 500) -> Any:
    """Archive ``topic`` into ``lake`` until caught up with the topic's end; the summary."""
    return await make_archiver(bootstrap, topic, lake, commit_rows=commit_rows).run()


def compact_lake(lake: str) -> CompactionResult:
    """:func:`lake.maintenance.compact` on ``lake`` (every partition with >= 2 live files)."""
    writer = lake_writer(lake)
    assert isinstance(writer, ParquetLakeWriter), f"compaction needs a Parquet lake: {lake}"
    return compact(writer, min_files=2)


async def prepare_hourly(
    bootstrap: str,
    topic: str,
    lake: str,
    *,
    events: int,
    seed: int,
    partitions: int = 2,
    archived: float = 0.5,
    users: int = 40,
    commit_rows: int = 500,
) -> HourlyDataset:
    """``events`` records over one day on ``partitions`` partitions (see :class:`HourlyDataset`):
    the records before the hour boundary nearest ``archived`` of the day are produced first and
    archived into ``lake`` by the archiver (a commit per ``commit_rows`` records, recording the
    offsets), then the rest is produced: it is only on the stream."""
    table = clickstream(events, seed, users)
    micros = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    first_hour = int(micros.min()) // HOUR_US * HOUR_US
    cutoff = first_hour + round(24 * archived) * HOUR_US
    parts = [hour_ordered(part) for part in split_partitions(table, partitions, seed)]
    offsets: dict[int, int] = {}
    for p, part in enumerate(parts):
        times = pc.cast(part.column("event_time"), pa.int64()).to_numpy()
        offsets[p] = int(np.count_nonzero(times < cutoff))
        assert np.all(times[: offsets[p]] < cutoff) and np.all(times[offsets[p] :] >= cutoff)
    await create_topic(bootstrap, topic, partitions)
    await produce_parts(bootstrap, topic, {p: t.slice(0, offsets[p]) for p, t in enumerate(parts)})
    summary = await archive(bootstrap, topic, lake, commit_rows=commit_rows)
    assert summary.offsets == offsets, (summary.offsets, offsets)
    await produce_parts(bootstrap, topic, {p: t.slice(offsets[p]) for p, t in enumerate(parts)})
    positions = pa.concat_tables(
        [
            pa.table(
                {
                    "event_id": part.column("event_id"),
                    "partition": pa.array(np.full(part.num_rows, p), pa.int64()),
                    "offset": pa.array(np.arange(part.num_rows), pa.int64()),
                }
            )
            for p, part in enumerate(parts)
        ]
    )
    return HourlyDataset(
        table=pa.concat_tables(parts),
        lake=lake,
        topic=topic,
        offsets=offsets,
        cutoff=cutoff,
        lake_rows=sum(offsets.values()),
        commits=summary.commits,
        positions=positions,
    )


def normalize_hourly(table: pa.Table) -> pa.Table:
    """An hourly store table as ``HOURLY_COLUMNS`` with µs UTC times and int64/float64 values."""
    out = table.select(HOURLY_COLUMNS)
    arrays = []
    for name in HOURLY_COLUMNS:
        col = out.column(name).combine_chunks()
        if name in ("window_start", "window_end"):
            col = normalize_time_array(col)
        elif name == KEY:
            col = col.cast(pa.int64())
        else:
            col = col.cast(HOURLY_TYPES[name])
        arrays.append(col)
    return pa.table(arrays, names=HOURLY_COLUMNS)


def read_hourly_duckdb(path: str | Path) -> pa.Table:
    """The hourly job's DuckDB store (empty with the right columns if the table is absent)."""
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        tables = {
            r[0] for r in con.sql("SELECT table_name FROM information_schema.tables").fetchall()
        }
        if HOURLY_TABLE not in tables:
            return empty_hourly()
        table = con.sql(f"SELECT * FROM {HOURLY_TABLE}").to_arrow_table()
    return normalize_hourly(table)


async def read_hourly_postgres(dsn: str) -> pa.Table:
    """The hourly job's PostgreSQL store."""
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(f"SELECT {', '.join(HOURLY_COLUMNS)} FROM {HOURLY_TABLE}")
    finally:
        await con.close()
    types = {
        KEY: pa.int64(),
        "window_start": pa.timestamp("us", tz="UTC"),
        "window_end": pa.timestamp("us", tz="UTC"),
        **HOURLY_TYPES,
    }
    return normalize_hourly(
        pa.table({c: pa.array([r[c] for r in rows], types[c]) for c in HOURLY_COLUMNS})
    )


def empty_hourly() -> pa.Table:
    return pa.table(
        {
            KEY: pa.array([], pa.int64()),
            "window_start": pa.array([], pa.timestamp("us", tz="UTC")),
            "window_end": pa.array([], pa.timestamp("us", tz="UTC")),
            **{name: pa.array([], t) for name, t in HOURLY_TYPES.items()},
        }
    )


# --- the job -----------------------------------------------------------------------------------


def lake_source(lake: str, batch: int, s3: S3Config | None = None) -> ParquetLake | IcebergLake:
    """The reading side of :func:`lake_writer` (``lake``: a Parquet root or ``"iceberg:DIR"``)."""
    if lake.startswith(ICEBERG):
        return IcebergLake(
            ICEBERG_TABLE,
            iceberg_catalog(lake),
            "event_time",
            schema=SCHEMA,
            batch_size=batch,
            s3=s3,
        )
    return ParquetLake(lake, "event_time", schema=SCHEMA, batch_size=batch, s3=s3)


def build(args: argparse.Namespace) -> tuple[ls.Pipeline, LambdaSource, Sink]:
    s3 = S3Config(endpoint_url=args.s3_endpoint, region="us-east-1") if args.s3_endpoint else None
    lake = lake_source(args.lake, args.batch, s3)
    stream = KafkaStream(
        args.topic,
        args.bootstrap,
        time_column="event_time",
        schema=SCHEMA,
        stop_at=None if args.live else "latest",
        max_batch_records=args.batch,
    )
    source = LambdaSource(
        lake,
        stream,
        handoff=args.handoff,
        out_of_orderness=OUT_OF_ORDERNESS,
        idle_timeout="300ms",
        alignment=Alignment(max_drift="30m"),
    )
    checkpoints = Checkpoints(args.checkpoints, interval=args.interval, keep=3, s3=s3)
    hourly, sums = args.job == "hourly", args.job == "sliding-sums"
    # hourly, sliding-sums: every window with data is written at the end, so the store holds
    # every record
    p = ls.Pipeline(
        checkpoints=checkpoints,
        name="faults-job",
        flush="all" if hourly or sums else "watermark",
    )
    tables = {"hourly": (HOURLY_TABLE, HOURLY_KEY), "sliding-sums": (SUMS_TABLE, HOURLY_KEY)}
    table, key = tables.get(args.job, (TABLE, [KEY]))
    sink: Sink
    if args.duckdb:
        sink = DuckDBUpsert(args.duckdb, table=table, key=key, flush_interval="200ms")
    else:
        sink = PostgresUpsert(args.postgres, table=table, key=key, flush_interval="200ms")
    stream_ = p.source(source)
    if args.throttle_ms > 0:
        delay = args.throttle_ms / 1000

        def throttle(batch: pa.RecordBatch) -> pa.RecordBatch:
            time.sleep(delay)  # deliberately slow: lets the test kill inside each phase
            return batch

        stream_ = stream_.map(throttle, schema=SCHEMA, on_error="raise")
    if hourly:
        (
            stream_.key_by(KEY)
            .window(ls.Tumbling("1h"), emit="every")
            .aggregate(
                n=ls.count(),
                ids=ls.count_distinct("event_id"),
                id_sum=ls.sum("event_id"),
                amount=ls.sum("amount"),
            )
            .sink(sink)
        )
    elif sums:
        (
            stream_.key_by(KEY)
            .window(WINDOW, emit="every")
            .aggregate(
                n=ls.count(),
                id_sum=ls.sum("event_id"),
                id_min=ls.min("event_id"),
                id_max=ls.max("event_id"),
                amount=ls.sum("amount"),
            )
            .sink(sink)
        )
    else:
        (
            stream_.key_by(KEY)
            .window(WINDOW, emit="latest")
            .aggregate(clicks=ls.count(), revenue=ls.sum("amount"))
            .sink(sink)
        )
    return p, source, sink


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}, default=str) + "\n")
    sys.stdout.flush()


def progress(p: ls.Pipeline, source: LambdaSource, phase: str) -> dict[str, Any]:
    m = p.metrics()
    sm = source.metrics()
    ck = m.get("checkpoints", {})
    return {
        "phase": phase,
        "rows": sm["rows"],
        "watermark": sm["watermark"],
        "checkpoints": ck.get("count"),
        "restored_from": ck.get("restored_from"),
    }


async def main_async(args: argparse.Namespace) -> None:
    p, source, _ = build(args)
    say("start", pid=__import__("os").getpid())
    task = asyncio.create_task(p.run(restore="latest", bootstrap=args.bootstrap_mode))
    handoff_said = False
    while not task.done():
        await asyncio.wait({task}, timeout=args.progress)
        if task.done():
            break
        phase = "lake"
        if source.metrics()["lake_finished"]:
            phase = "stream" if handoff_said else "handoff"
            handoff_said = True
        say("progress", **progress(p, source, phase))
    await task
    m = p.metrics()
    say(
        "done",
        rows=source.metrics()["rows"],
        final_watermark=m["global_watermark"],
        sinks={k: v.get("watermark") for k, v in m["sinks"].items()},
        checkpoints=m["checkpoints"],
        late=m["late"],
        handoff={
            k: source.metrics().get(k)
            for k in ("handoff", "cutoff", "dropped_before_cutoff", "lake_rows_at_or_after_cutoff")
        },
        recorded_offsets=source.recorded if args.handoff == "offsets" else None,
        dead_letters=m["dead_letters"],
        bootstrap=m.get("bootstrap"),
    )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.faults.jobs", description=__doc__)
    ap.add_argument("--lake", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--checkpoints", required=True, help="file:///dir or s3://bucket/prefix")
    store = ap.add_mutually_exclusive_group(required=True)
    store.add_argument("--duckdb", help="DuckDB file of the upsert store")
    store.add_argument("--postgres", help="PostgreSQL DSN of the upsert store")
    ap.add_argument("--job", choices=("sliding", "hourly", "sliding-sums"), default="sliding")
    ap.add_argument(
        "--bootstrap-mode",
        choices=("replay", "state"),
        default="replay",
        help="Pipeline.run(bootstrap=...): replay the lake, or build the windows' state in a pass",
    )
    ap.add_argument("--handoff", choices=("offsets", "timestamp"), default="offsets")
    ap.add_argument("--interval", default="200ms", help="checkpoint interval")
    ap.add_argument("--batch", type=int, default=100, help="rows per source batch")
    ap.add_argument("--throttle-ms", type=float, default=0.0, help="sleep per batch")
    ap.add_argument("--progress", type=float, default=0.05, help="seconds between lines")
    ap.add_argument("--s3-endpoint", default=None)
    ap.add_argument("--live", action="store_true", help="unbounded stream (run until killed)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(main_async(parse(argv)))


if __name__ == "__main__":
    main()
