"""S3 faults (the fault proxy in front of moto answers 500/503 or answers slowly) during lake
reads (``ParquetLake`` over ``s3://``) and checkpoint writes (``Checkpoints`` on ``s3://``):
transient faults are retried with backoff and the run's result is exact; persistent faults end
the run with a library error naming the object."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.checkpoints import Checkpoints
from lambdasource.errors import CheckpointError, LakeReadError, LambdaSourceError
from lambdasource.s3 import S3Config
from lambdasource.sinks.duckdb import DuckDBUpsert
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.timeutil import HOUR
from tests.faults import jobs
from tests.faults.s3_faults import Rule, S3FaultProxy
from tests.faults.verify import VerifyingSink
from tests.services.s3 import S3Service

pytestmark = pytest.mark.s3


@pytest.fixture
def proxy(s3: S3Service) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(s3.endpoint_url, seed=1) as p:
        yield p


def via(proxy: S3FaultProxy, s3: S3Service, retries: int = 5) -> S3Config:
    return replace(s3.config(), endpoint_url=proxy.endpoint_url, retries=retries)


def lake_on_s3(s3: S3Service, events: int = 4_000) -> tuple[str, pa.Table]:
    bucket = s3.new_bucket("lake")
    table = jobs.clickstream(events, seed=12)
    ParquetLakeWriter(f"s3://{bucket}/clicks", "event_time", s3=s3.config()).write(table)
    return f"s3://{bucket}/clicks", table


async def read_lake(url: str, cfg: S3Config, table: pa.Table) -> VerifyingSink:
    sink = VerifyingSink(table.column("event_id").to_numpy())
    p = ls.Pipeline()
    p.source(ParquetLake(url, "event_time", s3=cfg, schema=jobs.SCHEMA, batch_size=500)).sink(sink)
    await p.run()
    return sink


def gaps(rule: Rule) -> dict[str, list[float]]:
    """Seconds between successive faulted requests of the same object (retries' backoff)."""
    by_object: dict[str, list[float]] = {}
    for t, what in rule.seen:
        by_object.setdefault(what.rsplit("/", 1)[-1][-40:], []).append(t)
    return {
        name: [round(b - a, 3) for a, b in itertools.pairwise(ts)]
        for name, ts in by_object.items()
        if len(ts) > 1
    }


async def test_transient_lake_read_faults_are_retried(s3: S3Service, proxy: S3FaultProxy) -> None:
    url, table = lake_on_s3(s3)
    files = proxy.fail(503, methods={"GET"}, path_contains=".parquet", count=4)
    errors = proxy.fail(500, methods={"GET"}, count=2)  # listing / commits / anything
    slow = proxy.slow(0.4, methods={"GET"}, path_contains=".parquet", count=3)
    started = time.perf_counter()
    sink = await read_lake(url, via(proxy, s3), table)
    elapsed = time.perf_counter() - started
    report = sink.report()
    assert report["missing"] == 0 and report["duplicates"] == 0, report
    assert report["unexpected"] == 0 and report["late"] == 0, report
    assert files.hits == 4 and errors.hits == 2 and slow.hits == 3, (files, errors, slow)
    print(
        f"FIGURES s3-lake-transient: injected={proxy.injected} requests={proxy.requests} "
        f"elapsed_s={elapsed:.2f} retry_gaps_s={gaps(files)}"
    )


async def test_persistent_lake_read_faults_fail_naming_the_file(
    s3: S3Service, proxy: S3FaultProxy
) -> None:
    url, table = lake_on_s3(s3)
    proxy.fail(503, methods={"GET"}, path_contains=".parquet")
    started = time.perf_counter()
    with pytest.raises(LakeReadError) as info:
        await read_lake(url, via(proxy, s3, retries=3), table)
    message = str(info.value)
    assert "file=s3://" in message and ".parquet" in message, message
    assert "SlowDown" in message or "503" in message, message
    print(
        f"FIGURES s3-lake-persistent: failed_after_s={time.perf_counter() - started:.2f} "
        f"message={message[:300]!r}"
    )


def slow_job(table: pa.Table, checkpoints: Checkpoints, sink: ls.Sink) -> ls.Pipeline:
    def throttle(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(0.01)
        return batch

    p = ls.Pipeline(checkpoints=checkpoints)
    (
        p.source(ls.MemorySource(table, time_column="event_time", batch_size=50))
        .map(throttle, schema=jobs.SCHEMA, on_error="raise")
        .sink(sink)
    )
    return p


async def test_transient_checkpoint_write_faults_are_retried(
    s3: S3Service, proxy: S3FaultProxy
) -> None:
    bucket = s3.new_bucket("ckpt")
    table = jobs.clickstream(12_000, seed=13)
    puts = proxy.fail(503, methods={"PUT"}, path_contains="/ckpt/", count=2)
    errors = proxy.fail(500, methods={"PUT"}, path_contains="MANIFEST", count=1)
    slow = proxy.slow(0.3, methods={"PUT"}, path_contains="/ckpt/", count=2)
    url = f"s3://{bucket}/ckpt"
    sink = VerifyingSink(table.column("event_id").to_numpy())
    p = slow_job(table, Checkpoints(url, interval="100ms", s3=via(proxy, s3)), sink)
    await p.run(restore=None)
    ck = p.metrics()["checkpoints"]
    report = sink.report()
    assert report["missing"] == 0 and report["duplicates"] == 0, report
    assert puts.hits == 2 and errors.hits == 1 and slow.hits >= 1, (puts, errors, slow)
    assert ck["count"] >= 1 and ck["failed"] == 0, ck
    # the checkpoints written through the faults are complete and readable
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="ckpt/")
    names = [o["Key"] for o in listed.get("Contents", [])]
    assert any(n.endswith("MANIFEST.json") for n in names), names
    print(
        f"FIGURES s3-checkpoint-transient: checkpoints={ck['count']} "
        f"mean_s={ck['mean_duration_s']:.3f} max_s={ck['max_duration_s']:.3f} "
        f"retry_gaps_s={gaps(puts)}"
    )


async def test_persistent_checkpoint_write_faults_fail_naming_the_object(
    s3: S3Service, proxy: S3FaultProxy
) -> None:
    bucket = s3.new_bucket("ckpt")
    table = jobs.clickstream(20_000, seed=14)
    proxy.fail(503, methods={"PUT"}, path_contains="/ckpt/")
    url = f"s3://{bucket}/ckpt"
    checkpoints = Checkpoints(
        url, interval="100ms", s3=via(proxy, s3, retries=2), tolerable_failures=1
    )
    p = slow_job(table, checkpoints, VerifyingSink())
    started = time.perf_counter()
    with pytest.raises(LambdaSourceError) as info:
        await p.run(restore=None)
    error: BaseException = info.value
    message = str(error)
    assert isinstance(error, CheckpointError), repr(error)
    assert f"s3://{bucket}/ckpt/chk-" in message, message
    ck = p.metrics()["checkpoints"]
    assert ck["count"] == 0 and ck["failed"] >= 2, ck
    print(
        f"FIGURES s3-checkpoint-persistent: failed_after_s={time.perf_counter() - started:.2f} "
        f"failed={ck['failed']} message={message[:300]!r}"
    )


class Crash(RuntimeError):
    """The simulated failure of the first run."""


def hourly_job(
    table: pa.Table, checkpoints: Checkpoints, store: Path, *, crash_after: int | None = None
) -> ls.Pipeline:
    """MemorySource → per user, tumbling 1 h count and sum → DuckDB upsert keyed by
    (user, window end); ``crash_after``: fail once that many checkpoints completed."""
    p = ls.Pipeline(checkpoints=checkpoints, flush="all")

    def throttle(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(0.01)
        if crash_after is not None and p.metrics()["checkpoints"]["count"] >= crash_after:
            raise Crash(f"crash after {crash_after} checkpoints")
        return batch

    (
        p.source(
            ls.MemorySource(table, time_column="event_time", batch_size=50, out_of_orderness="5m")
        )
        .map(throttle, schema=jobs.SCHEMA, on_error="raise")
        .key_by("user_id")
        .window(ls.Tumbling("1h"), emit="every")
        .aggregate(clicks=ls.count(), revenue=ls.sum("amount"))
        .sink(
            DuckDBUpsert(
                store, table="hourly", key=["user_id", "window_end"], flush_interval="50ms"
            )
        )
    )
    return p


def hourly_reference(table: pa.Table) -> dict[tuple[int, int], tuple[int, float]]:
    """Per (user, hour start): count and sum of amount, straight from the input records."""
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    out: dict[tuple[int, int], tuple[int, float]] = {}
    for user, t, amount in zip(
        table.column("user_id").to_pylist(),
        (times - times % HOUR).tolist(),
        table.column("amount").to_pylist(),
        strict=True,
    ):
        clicks, revenue = out.get((user, t), (0, 0.0))
        out[(user, t)] = (clicks + 1, revenue + (amount or 0.0))
    return out


def hourly_store(store: Path) -> dict[tuple[int, int], tuple[int, float]]:
    """The DuckDB store as per (user, window start): clicks and revenue."""
    import duckdb

    with duckdb.connect(str(store), read_only=True) as con:
        rows = con.sql(
            "SELECT user_id, epoch_us(window_start), clicks, revenue FROM hourly"
        ).fetchall()
    return {(int(u), int(ws)): (int(c), float(r or 0.0)) for u, ws, c, r in rows}


def store_diff(
    got: dict[tuple[int, int], tuple[int, float]],
    expected: dict[tuple[int, int], tuple[int, float]],
    limit: int = 5,
) -> list[str]:
    out = [f"(user, hour)={k}: missing, expected {expected[k]}" for k in expected.keys() - got]
    out += [f"(user, hour)={k}: unexpected {got[k]}" for k in got.keys() - expected]
    for k in sorted(got.keys() & expected.keys()):
        (c, r), (ec, er) = got[k], expected[k]
        if c != ec or abs(r - er) > 1e-6 * max(1.0, abs(er)):
            out.append(f"(user, hour)={k}: got clicks={c} revenue={r}, expected {ec} {er}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


async def test_restore_reads_through_transient_faults(
    s3: S3Service, proxy: S3FaultProxy, tmp_path: Path
) -> None:
    """A run crashes after checkpoints written cleanly; the restart restores while GETs fail
    transiently and finishes. The store must equal, per user and hour, the count and sum of the
    input records: one record lost or counted twice across the restore fails it."""
    bucket = s3.new_bucket("ckpt")
    table = jobs.clickstream(6_000, seed=15)
    expected = hourly_reference(table)
    store = tmp_path / "store.duckdb"
    url = f"s3://{bucket}/ckpt"
    first = hourly_job(
        table, Checkpoints(url, interval="100ms", s3=s3.config()), store, crash_after=1
    )
    # DID NOT RAISE here means no checkpoint completed before the input ended
    with pytest.raises(LambdaSourceError, match="crash after 1 checkpoints"):
        await first.run(restore=None)
    assert first.metrics()["checkpoints"]["count"] >= 1
    assert len(hourly_store(store)) < len(expected)  # the crash left the store incomplete
    gets = proxy.fail(503, methods={"GET"}, path_contains="/ckpt/", count=3)
    second = hourly_job(table, Checkpoints(url, interval="1s", s3=via(proxy, s3)), store)
    await second.run()
    assert gets.hits == 3
    m = second.metrics()
    assert m["checkpoints"]["restored_from"] is not None
    resumed = sum(s["records_out"] for s in m["sources"].values())
    assert 0 < resumed < table.num_rows, resumed  # it resumed mid-input, not from the start
    assert m["late"] == 0 and m["dead_letters"] == 0
    diff = store_diff(hourly_store(store), expected)
    assert not diff, diff
