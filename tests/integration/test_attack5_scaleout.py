"""Attack round 5 on scale-out (issue 15), through the public API only: rescaling, kill -9 and
user mistakes against a PostgreSQL store checked record by record.

The job: a 4-partition topic keyed by ``user_id`` (``user_id % 4``), one lake per partition
(tests/faults/scaleout_jobs.prepare_partitioned, offsets handoff), lambda source → a throttling
map → ``Tumbling(1h)`` ``emit="every"`` (count, sum of event ids, sum of amounts: no
``count_distinct``, so ``bootstrap="state"`` applies) → ``PostgresUpsert``. The oracle is a
DuckDB ``GROUP BY user_id, hour`` over every input record: each (user, hour) row must hold the
exact count and id sum (a lost or duplicated record changes both).

``python -m tests.integration.test_attack5_scaleout --join GROUP ...`` runs one worker and prints
JSON lines as tests/faults/scaleout_jobs does (``assigned``, ``progress``, ``done``), so the tests
reuse :class:`tests.integration.test_scaleout.WorkerProcess`; progress lines also say each
task's bootstrap mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.checkpoints import Checkpoints
from lambdasource.errors import MisplacedKeyError
from lambdasource.partitioning import KeyPartitioner
from lambdasource.scaleout import TaskContext, Worker, serve
from lambdasource.sinks.postgres import PostgresUpsert
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.sources.lambda_source import LambdaSource
from tests.faults.jobs import (
    HOUR_US,
    KEY,
    OUT_OF_ORDERNESS,
    SCHEMA,
    arrival_ms,
    clickstream,
    hour_ordered,
    produce_parts,
    to_json,
)
from tests.faults.scaleout_jobs import PartitionedDataset, prepare_partitioned
from tests.integration.test_scaleout import WorkerProcess, check_handovers, wait_for
from tests.services.apache_kafka import ApacheKafkaService
from tests.services.postgres import PostgresService

ROOT = Path(__file__).resolve().parents[2]
TABLE = "user_hour_sums"
PARTITIONS = 4


@dataclass(frozen=True)
class SumTasks:
    """Task factory (picklable): the partition's lake and stream → hourly sums → PostgreSQL."""

    lake_root: str
    topic: str
    bootstrap: str
    postgres: str
    interval: str = "300ms"
    batch: int = 20
    lake_batch: int = 200
    throttle_ms: float = 0.0

    def __call__(self, context: TaskContext) -> ls.Pipeline:
        lake = ParquetLake(
            f"{self.lake_root}/p{context.partition}",
            "event_time",
            schema=SCHEMA,
            batch_size=self.lake_batch,
        )
        stream = KafkaStream(
            self.topic,
            self.bootstrap,
            time_column="event_time",
            schema=SCHEMA,
            stop_at="latest",
            partitions=[context.partition],
            max_batch_records=self.batch,
        )
        source = LambdaSource(
            lake,
            stream,
            handoff="offsets",
            out_of_orderness=OUT_OF_ORDERNESS,
            idle_timeout="300ms",
        )
        pipeline = ls.Pipeline(
            checkpoints=Checkpoints(context.checkpoint_url, interval=self.interval, keep=3),
            name="attack5-sums",
            flush="all",
        )
        flow = pipeline.source(source)
        if self.throttle_ms > 0:
            delay = self.throttle_ms / 1000

            def throttle(batch: pa.RecordBatch) -> pa.RecordBatch:
                time.sleep(delay)  # deliberately slow: the tests rescale mid-stream
                return batch

            flow = flow.map(throttle, schema=SCHEMA, on_error="raise")
        (
            flow.key_by(KEY)
            .window(ls.Tumbling("1h"), emit="every")
            .aggregate(n=ls.count(), id_sum=ls.sum("event_id"), amount=ls.sum("amount"))
            .sink(
                PostgresUpsert(
                    self.postgres, table=TABLE, key=[KEY, "window_end"], flush_interval="200ms"
                )
            )
        )
        return pipeline


# oracle ------------------------------------------------------------------------------------------


def reference(events: pa.Table) -> pa.Table:
    """Per (user, hour) of every input record: count, id sum, amount (DuckDB)."""
    con = duckdb.connect()
    con.register("events", events)
    return con.sql(
        f"""
        SELECT {KEY} AS user_id, epoch_us(date_trunc('hour', event_time)) AS hour,
               count(*) AS n, sum(event_id) AS id_sum, sum(amount) AS amount
        FROM events GROUP BY ALL
        """
    ).to_arrow_table()


async def read_store(dsn: str) -> pa.Table:
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(f"SELECT {KEY}, window_start, n, id_sum, amount FROM {TABLE}")
    finally:
        await con.close()
    return pa.table(
        {
            "user_id": pa.array([r[KEY] for r in rows], pa.int64()),
            "hour": pa.array([r["window_start"] for r in rows], pa.timestamp("us", tz="UTC")),
            "n": pa.array([r["n"] for r in rows], pa.int64()),
            "id_sum": pa.array([r["id_sum"] for r in rows], pa.int64()),
            "amount": pa.array([r["amount"] for r in rows], pa.float64()),
        }
    )


def store_diff(dsn: str, events: pa.Table) -> list[tuple[Any, ...]]:
    """(user, hour, expected n, got n, expected id sum, got id sum) of every row that differs."""
    store = asyncio.run(read_store(dsn))
    con = duckdb.connect()
    con.register("expected", reference(events))
    con.register("store", store)
    return con.sql(
        """
        SELECT coalesce(e.user_id, g.user_id) AS user_id, coalesce(e.hour, g.hour) AS hour,
               e.n, g.n, e.id_sum, g.id_sum
        FROM expected e
        FULL JOIN (SELECT user_id, epoch_us(hour) AS hour, n, id_sum, amount FROM store) g
          ON e.user_id = g.user_id AND e.hour = g.hour
        WHERE e.n IS DISTINCT FROM g.n OR e.id_sum IS DISTINCT FROM g.id_sum
           OR abs(coalesce(e.amount, 0) - coalesce(g.amount, 0)) > 1e-6
           OR g.n IS NULL OR e.n IS NULL
        ORDER BY 2, 1
        """
    ).fetchall()


def assert_exact(dsn: str, events: pa.Table, label: str) -> None:
    diff = store_diff(dsn, events)
    expected = reference(events).num_rows
    assert not diff, (
        f"{label}: {len(diff)} of {expected} (user, hour) rows differ "
        f"(user, hour, exp n, got n, exp id_sum, got id_sum): {diff[:10]}"
    )


# setup -------------------------------------------------------------------------------------------


@dataclass
class Job:
    bootstrap: str
    data: PartitionedDataset
    dsn: str
    checkpoints: str
    group: str

    def command(self, worker_id: str, **options: Any) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "tests.integration.test_attack5_scaleout",
            "--join",
            self.group,
            "--lake-root",
            self.data.lake_root,
            "--topic",
            self.data.topic,
            "--bootstrap",
            self.bootstrap,
            "--postgres",
            self.dsn,
            "--checkpoints",
            self.checkpoints,
            "--worker-id",
            worker_id,
        ]
        for name, value in options.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        return command


def make_job(
    kafka: ApacheKafkaService,
    postgres: PostgresService,
    tmp_path: Path,
    *,
    events: int,
    seed: int,
    archived: float = 0.5,
) -> Job:
    topic = kafka.new_topic(PARTITIONS, "attack5", config={"retention.ms": "-1"})
    data = asyncio.run(
        prepare_partitioned(
            kafka.bootstrap,
            topic,
            tmp_path / "lakes",
            partitions=PARTITIONS,
            events=events,
            seed=seed,
            archived=archived,
        )
    )
    return Job(
        kafka.bootstrap,
        data,
        postgres.new_database(),
        (tmp_path / "checkpoints").as_uri(),
        f"attack5-{uuid.uuid4().hex[:8]}",
    )


def owned(workers: list[WorkerProcess]) -> list[int]:
    return sorted(p for w in workers for p in (w.assigned() or []))


def finish_all(workers: list[WorkerProcess]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every worker's task runs (each exited 0) and the bootstrap modes its tasks reported."""
    runs: list[dict[str, Any]] = []
    modes: list[str] = []
    for worker in workers:
        runs += worker.finish(timeout=120)
        done = worker.last("done")
        assert done is not None
        modes += done["modes"].values()
    return runs, modes


def dump(workers: dict[str, WorkerProcess]) -> None:
    """What each worker said, for a failing test's output."""
    for name, worker in workers.items():
        print(name, [line for line in worker.lines if line["event"] != "progress"][-5:])
        print(name, worker.lines[-1:], "".join(worker.stderr[-15:]))


def stop_all(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()


# tests -------------------------------------------------------------------------------------------


def task_records(worker: WorkerProcess) -> dict[int, int]:
    """Records read so far per partition in the worker's current task runs."""
    line = worker.last("progress")
    tasks = {} if line is None else line["tasks"]
    return {int(task.rsplit("-", 1)[1]): info["records"] for task, info in tasks.items()}


def in_stream_phase(worker: WorkerProcess) -> bool:
    """``worker`` owns partitions and each of its running tasks is past its lake (reads the
    stream; a task that already finished is no longer listed)."""
    line = worker.last("progress")
    tasks = {} if line is None else line["tasks"]
    return bool(worker.assigned()) and all(info["stream"] for info in tasks.values())


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.apache_kafka
@pytest.mark.postgres
def test_rescale_4_2_3_mid_stream_after_state_bootstrap(
    apache_kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path
) -> None:
    """4 workers bootstrap from state, then mid-stream 2 leave (SIGTERM) and later a 3rd
    joins: every (user, hour) row equals the SQL reference; each task's first run built its
    state by the state pass."""
    job = make_job(apache_kafka, postgres, tmp_path, events=6000, seed=51)
    options = {"throttle_ms": 400, "bootstrap_mode": "state", "lake_batch": 500}
    started = time.monotonic()
    workers = {n: WorkerProcess.start(n, job.command(n, **options)) for n in "ABCD"}
    try:
        four = list(workers.values())
        wait_for(
            lambda: (
                owned(four) == list(range(PARTITIONS))
                and all(len(w.assigned() or []) == 1 for w in four)
            ),
            "4 workers owning one partition each",
            90,
        )
        wait_for(lambda: all(in_stream_phase(w) for w in four), "the stream phase", 60)
        for name in "CD":
            workers[name].process.send_signal(signal.SIGTERM)
        two = [workers["A"], workers["B"]]
        wait_for(
            lambda: (
                owned(two) == list(range(PARTITIONS))
                and all(len(w.assigned() or []) == 2 for w in two)
            ),
            "2 workers owning two partitions each",
            60,
        )
        time.sleep(1.5)  # the 2 workers restore and run on
        workers["E"] = WorkerProcess.start("E", job.command("E", **options))
        three = [*two, workers["E"]]
        wait_for(
            lambda: owned(three) == list(range(PARTITIONS)) and bool(workers["E"].assigned()),
            "3 workers sharing the partitions",
            60,
        )
        runs, modes = finish_all(list(workers.values()))
    except BaseException:
        dump(workers)
        raise
    finally:
        stop_all(list(workers.values()))
    elapsed = time.monotonic() - started
    assert_exact(job.dsn, job.data.table, "4 -> 2 -> 3 workers, state bootstrap")
    by_task = check_handovers([run for run in runs if run["outcome"] != "cancelled"])
    assert all(len(task_runs) >= 2 for task_runs in by_task.values()), by_task
    assert any(len(task_runs) >= 3 for task_runs in by_task.values()), by_task
    assert modes.count("state") >= PARTITIONS, modes  # each partition began with the pass
    print(f"4 -> 2 -> 3: {len(runs)} task runs, modes {modes}, {elapsed:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.apache_kafka
@pytest.mark.postgres
@pytest.mark.parametrize("moment", ["state-pass", "rebalance"])
def test_kill_9_during_state_pass_or_rebalance(
    apache_kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path, moment: str
) -> None:
    """3 workers on 4 partitions with a state bootstrap; one is killed (SIGKILL) while its
    tasks run the state pass over the lake, or mid-stream 50 ms after another worker left
    (SIGTERM: every task is checkpointing for the rebalance). The survivors finish; the store
    is exact. Time to recover: the kill to the assignment holding the victim's partitions."""
    job = make_job(apache_kafka, postgres, tmp_path, events=6000, seed=52, archived=0.8)
    options = {"throttle_ms": 150, "bootstrap_mode": "state", "lake_batch": 50}
    workers = {n: WorkerProcess.start(n, job.command(n, **options)) for n in "ABC"}
    every = list(workers.values())
    try:
        wait_for(
            lambda: owned(every) == list(range(PARTITIONS)) and all(w.assigned() for w in every),
            "3 workers sharing the partitions",
            90,
        )
        victim = next(w for w in every if len(w.assigned() or []) == 1)
        lost = list(victim.assigned() or [])
        if moment == "state-pass":
            wait_for(lambda: bool(task_records(victim)), "the victim's task running", 30)
            assert all(n < job.data.offsets[p] for p, n in task_records(victim).items())
        else:
            wait_for(
                lambda: all(in_stream_phase(w) for w in every),
                "the stream phase",
                60,
            )
            leaver = next(w for w in every if w is not victim)
            leaver.process.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        killed_at = time.time()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        survivors = [w for w in every if w is not victim]

        def taken_over() -> float | None:
            when = [
                line["t"]
                for w in survivors
                for line in w.lines
                if line["event"] == "assigned"
                and line["t"] > killed_at
                and set(lost) <= set(line["partitions"])
            ]
            held = {
                p
                for w in survivors
                for line in w.lines
                if line["event"] == "assigned" and line["t"] > killed_at
                for p in line["partitions"]
            }
            return max(when) if when else (time.time() if set(lost) <= held else None)

        wait_for(lambda: taken_over() is not None, "the survivors taking the partitions", 90)
        recovered = (taken_over() or killed_at) - killed_at
        finish_all(survivors)
    except BaseException:
        dump(workers)
        raise
    finally:
        stop_all(every)
    assert_exact(job.dsn, job.data.table, f"kill -9 at {moment}")
    print(f"kill -9 at {moment}: {lost} owned by the survivors {recovered:.1f}s after the kill")


def later_records(data: PartitionedDataset, events: int, seed: int) -> dict[int, pa.Table]:
    """``events`` new records per partition (``user_id % 4``), from 30 min before the newest
    input time on (they update the last hour's windows and open new ones); ids unique."""
    table = clickstream(events, seed)
    times = pc.cast(table.column("event_time"), pa.int64())
    newest = pc.max(pc.cast(data.table.column("event_time"), pa.int64())).as_py()
    shift = newest - 30 * 60 * 1_000_000 - pc.min(times).as_py()
    table = table.set_column(
        table.schema.get_field_index("event_time"),
        "event_time",
        pc.cast(pc.add(times, shift), SCHEMA.field("event_time").type),
    )
    table = table.set_column(
        table.schema.get_field_index("event_id"),
        "event_id",
        pc.add(table.column("event_id"), 10_000_000),
    )
    owner = pc.bit_wise_and(table.column(KEY), PARTITIONS - 1).to_numpy()
    return {p: hour_ordered(table.filter(pa.array(owner == p))) for p in range(PARTITIONS)}


@pytest.mark.apache_kafka
@pytest.mark.postgres
@pytest.mark.parametrize("first_workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_bounded_rerun_after_new_stream_data(
    apache_kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path, first_workers: int
) -> None:
    """A bounded job completes (1 or 2 workers); new records arrive (some in the last hour's
    windows, some later); the same job runs again with 1 worker: the store equals the
    reference over all records. Failed before the fix (12 of 1018 rows: the re-run restored
    each partition's final checkpoint, taken after the end-of-input flush, so the new records
    of those windows were late and dropped; a single-process re-run counts them)."""
    job = make_job(apache_kafka, postgres, tmp_path, events=3000, seed=53)
    tasks = SumTasks(job.data.lake_root, job.data.topic, job.bootstrap, job.dsn)
    settings: dict[str, Any] = dict(
        topic=job.data.topic,
        bootstrap_servers=job.bootstrap,
        group=job.group,
        checkpoints=job.checkpoints,
        session_timeout="6s",
        heartbeat_interval="500ms",
    )
    ls.run_workers(tasks, workers=first_workers, **settings)
    assert_exact(job.dsn, job.data.table, "first run")
    later = later_records(job.data, 800, seed=54)
    asyncio.run(produce_parts(job.bootstrap, job.data.topic, later))
    ls.run_workers(tasks, workers=1, **settings)
    everything = pa.concat_tables([job.data.table, *later.values()])
    assert_exact(job.dsn, everything, "re-run with 1 worker after new records")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.apache_kafka
@pytest.mark.postgres
def test_standby_takes_over_when_an_owner_leaves(
    apache_kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path
) -> None:
    """5 workers on 4 partitions: one waits as a standby; mid-stream an owner leaves (SIGTERM)
    and the standby gets a partition; later an owner is killed (SIGKILL). The store is exact."""
    job = make_job(apache_kafka, postgres, tmp_path, events=4000, seed=55)
    options = {"throttle_ms": 300, "lake_batch": 500}
    workers = {n: WorkerProcess.start(n, job.command(n, **options)) for n in "ABCDE"}
    every = list(workers.values())
    try:
        wait_for(
            lambda: (
                owned(every) == list(range(PARTITIONS))
                and all(w.assigned() is not None for w in every)
            ),
            "4 owners and a standby",
            90,
        )
        standby = next(w for w in every if not w.assigned())
        leaver = next(w for w in every if w.assigned())
        wait_for(lambda: in_stream_phase(leaver), "the stream phase", 60)
        leaver.process.send_signal(signal.SIGTERM)
        wait_for(lambda: bool(standby.assigned()), "the standby taking a partition", 60)
        rest = [w for w in every if w is not leaver]
        wait_for(lambda: owned(rest) == list(range(PARTITIONS)), "4 owners again", 60)
        victim = next(w for w in rest if w is not standby and w.assigned())
        time.sleep(0.5)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        runs, _ = finish_all([w for w in every if w is not victim])
    except BaseException:
        dump(workers)
        raise
    finally:
        stop_all(every)
    assert_exact(job.dsn, job.data.table, "standby takes over")
    assert any(run["worker_id"] == standby.name for run in runs), runs


@dataclass(frozen=True)
class KeyedTasks:
    """Task factory over one lake for every partition (rows kept by Kafka's partitioner of the
    key, serialised by ``serializer``) and the whole topic, via ``for_partition``."""

    lake_root: str
    topic: str
    bootstrap: str
    postgres: str
    serializer: str

    def __call__(self, context: TaskContext) -> ls.Pipeline:
        source = LambdaSource(
            ParquetLake(self.lake_root, "event_time", schema=SCHEMA),
            KafkaStream(
                self.topic,
                self.bootstrap,
                time_column="event_time",
                schema=SCHEMA,
                stop_at="latest",
            ),
            handoff="offsets",
            out_of_orderness=OUT_OF_ORDERNESS,
            idle_timeout="300ms",
        ).for_partition(
            context.partition,
            context.partitions,
            KEY,
            KeyPartitioner(KEY, context.partitions, self.serializer),
        )
        pipeline = ls.Pipeline(
            checkpoints=Checkpoints(context.checkpoint_url, interval="300ms"),
            name="attack5-keyed",
            flush="all",
        )
        (
            pipeline.source(source)
            .key_by(KEY)
            .window(ls.Tumbling("1h"), emit="every")
            .aggregate(n=ls.count(), id_sum=ls.sum("event_id"), amount=ls.sum("amount"))
            .sink(PostgresUpsert(self.postgres, table=TABLE, key=[KEY, "window_end"]))
        )
        return pipeline


async def produce_int64_keyed(bootstrap: str, topic: str, table: pa.Table) -> list[int]:
    """Produce every row keyed by its user id as a big-endian int64 (Java's LongSerializer),
    the partition left to aiokafka's default partitioner; each row's partition."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        users = table.column(KEY).to_pylist()
        for user, value, ts in zip(users, to_json(table), arrival_ms(table), strict=True):
            key = struct.pack(">q", user)
            futures.append(await producer.send(topic, value, key=key, timestamp_ms=ts))
        return [metadata.partition for metadata in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


def int64_keyed_job(
    kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path, seed: int
) -> tuple[pa.Table, str, str]:
    """A topic keyed by int64 user ids (aiokafka's partitioner) and one archiver-style lake of
    the rows before the middle hour, recording each partition's offset: (rows, topic, lake)."""
    topic = kafka.new_topic(PARTITIONS, "attack5-int64", config={"retention.ms": "-1"})
    table = hour_ordered(clickstream(2000, seed))
    placed = asyncio.run(produce_int64_keyed(kafka.bootstrap, topic, table))
    micros = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    cutoff = int(micros.min()) // HOUR_US * HOUR_US + 12 * HOUR_US
    before = micros < cutoff
    offsets = {
        p: sum(1 for q, b in zip(placed, before, strict=True) if q == p and b)
        for p in range(PARTITIONS)
    }
    lake = str(tmp_path / "lake")
    ParquetLakeWriter(lake, "event_time", row_group_rows=256).write(
        table.filter(pa.array(before)), offsets=offsets, topic=topic
    )
    return table, topic, lake


@pytest.mark.apache_kafka
@pytest.mark.postgres
def test_int64_keys_partitioned_like_the_producer(
    apache_kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path
) -> None:
    """A producer sends int64 keys through aiokafka's default partitioner; a job told so
    (KeyPartitioner(..., "int64")) keeps each lake row in the task of its key's partition: the
    store is exact. Told "string" instead, the job fails naming the misplaced stream record."""
    table, topic, lake = int64_keyed_job(apache_kafka, postgres, tmp_path, seed=56)
    settings: dict[str, Any] = dict(
        topic=topic,
        bootstrap_servers=apache_kafka.bootstrap,
        session_timeout="6s",
        heartbeat_interval="500ms",
    )
    dsn = postgres.new_database()
    ls.run_workers(
        KeyedTasks(lake, topic, apache_kafka.bootstrap, dsn, "int64"),
        group=f"attack5-{uuid.uuid4().hex[:8]}",
        checkpoints=(tmp_path / "int64").as_uri(),
        **settings,
    )
    assert_exact(dsn, table, "int64 keys")
    with pytest.raises(ls.ScaleOutError) as failed:
        ls.run_workers(
            KeyedTasks(lake, topic, apache_kafka.bootstrap, postgres.new_database(), "string"),
            group=f"attack5-{uuid.uuid4().hex[:8]}",
            checkpoints=(tmp_path / "string").as_uri(),
            **settings,
        )
    assert isinstance(failed.value.__cause__, MisplacedKeyError), repr(failed.value)
    assert f"topic={topic} partition=" in str(failed.value.__cause__)


# the worker process ------------------------------------------------------------------------------


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}, default=str) + "\n")
    sys.stdout.flush()


def _task_line(task: Any) -> dict[str, Any]:
    metrics = task.metrics()
    sources = (metrics.get("sources") or {}).values()
    return {
        "records": task.summary()["records"],
        "stream": bool(sources) and all(s.get("lake_finished") for s in sources),
        "state": metrics["state"],
        "bootstrap": (metrics.get("bootstrap") or {}).get("mode"),
    }


async def worker_main(args: argparse.Namespace) -> None:
    tasks = SumTasks(
        args.lake_root,
        args.topic,
        args.bootstrap,
        args.postgres,
        interval=args.interval,
        batch=args.batch,
        lake_batch=args.lake_batch,
        throttle_ms=args.throttle_ms,
    )
    worker = Worker(
        tasks,
        topic=args.topic,
        bootstrap_servers=args.bootstrap,
        group=args.join,
        checkpoints=args.checkpoints,
        worker_id=args.worker_id,
        bootstrap=args.bootstrap_mode,
        session_timeout=args.session_timeout,
        heartbeat_interval="500ms",
    )
    say("start", pid=os.getpid(), worker=worker.worker_id)
    run = asyncio.create_task(serve(worker))
    rebalances = 0
    modes: dict[str, str] = {}
    while not run.done():
        await asyncio.wait({run}, timeout=0.2)
        if worker.membership.rebalances != rebalances:
            rebalances = worker.membership.rebalances
            say("assigned", partitions=sorted(worker.membership.assigned))
        lines = {t.task_id: _task_line(t) for t in worker.tasks.values()}
        for task_id, line in lines.items():
            if line["bootstrap"]:
                modes.setdefault(task_id, line["bootstrap"])
        say("progress", tasks=lines)
    await run
    say("done", runs=worker.runs, finished=sorted(worker.finished), modes=modes)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.integration.test_attack5_scaleout")
    ap.add_argument("--join", required=True)
    ap.add_argument("--lake-root", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--postgres", required=True)
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--worker-id", default=None)
    ap.add_argument("--interval", default="300ms")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--lake-batch", type=int, default=200)
    ap.add_argument("--throttle-ms", type=float, default=0.0)
    ap.add_argument("--session-timeout", default="6s")
    ap.add_argument("--bootstrap-mode", default="replay")
    return ap.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(worker_main(parse()))
