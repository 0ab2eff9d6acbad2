"""Scale-out on Kafka's consumer-group protocol (issue 15 §1, §3), on Apache Kafka.

A 4-partition topic keyed by user, one lake per partition (what each task reads), the hourly
job (lambda source → key_by → Tumbling(1h) emit="every" → PostgreSQL) run as workers of one
consumer group in separate processes. Every test checks the store against the DuckDB SQL
reference of the input record by record (tests/faults/oracle.py: lost and duplicated records
per (user, hour)); the rebalance test also checks that tasks moved through checkpoints and that
nothing was recomputed (records read over all task runs ≈ the input, plus what was read after
each stop's barrier).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import lambdasource as ls
from tests.faults import oracle
from tests.faults.jobs import read_hourly_postgres
from tests.faults.scaleout_jobs import (
    HourlyTasks,
    PartitionedDataset,
    prepare_keyed_lake,
    prepare_partitioned,
)
from tests.services.apache_kafka import ApacheKafkaService
from tests.services.brokers import Broker, both_brokers
from tests.services.ports import free_port_run
from tests.services.postgres import PostgresService

pytestmark = [pytest.mark.postgres]

broker = both_brokers(default=("apache",))  # Tansu (slow): consumer groups there too

PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Setup:
    kafka: Broker
    data: PartitionedDataset
    dsn: str
    checkpoints: str
    group: str

    def tasks(self, **options: Any) -> HourlyTasks:
        return HourlyTasks(
            self.data.lake_root, self.data.topic, self.kafka.bootstrap, self.dsn, **options
        )

    def check(self, label: str) -> oracle.HourlyCheck:
        store = asyncio.run(read_hourly_postgres(self.dsn))
        check = oracle.compare_hourly(
            store, self.data.table, cutoff=self.data.cutoff, positions=self.data.positions
        )
        assert check.ok, check.message(label)
        return check

    def worker_command(self, worker_id: str, **options: Any) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "tests.faults.scaleout_jobs",
            "--join",
            self.group,
            "--lake-root",
            self.data.lake_root,
            "--topic",
            self.data.topic,
            "--bootstrap",
            self.kafka.bootstrap,
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


def make_setup(
    kafka: Broker,
    postgres: PostgresService,
    tmp_path: Path,
    *,
    events: int,
    seed: int,
    partitions: int = PARTITIONS,
) -> Setup:
    topic = kafka.new_topic(partitions, "scaleout")
    data = asyncio.run(
        prepare_partitioned(
            kafka.bootstrap,
            topic,
            tmp_path / "lakes",
            partitions=partitions,
            events=events,
            seed=seed,
        )
    )
    return Setup(
        kafka,
        data,
        postgres.new_database(),
        (tmp_path / "checkpoints").as_uri(),
        f"scaleout-{uuid.uuid4().hex[:8]}",
    )


def test_two_worker_processes_fill_the_store_exactly(
    broker: Broker, postgres: PostgresService, tmp_path: Path
) -> None:
    """ls.run_workers(workers=2): two spawned processes split the 4 partitions; the store holds
    every record once; every partition has checkpoints of its own."""
    setup = make_setup(broker, postgres, tmp_path, events=6000, seed=11)
    started = time.monotonic()
    ls.run_workers(
        setup.tasks(),
        topic=setup.data.topic,
        bootstrap_servers=broker.bootstrap,
        group=setup.group,
        checkpoints=setup.checkpoints,
        workers=2,
        session_timeout="6s",
        heartbeat_interval="500ms",
    )
    elapsed = time.monotonic() - started
    check = setup.check("2 workers")
    print(f"2 workers on {broker.name}: {check.totals()} in {elapsed:.1f}s")
    tasks = sorted(p.name for p in (tmp_path / "checkpoints" / "tasks").iterdir())
    assert tasks == [f"{setup.data.topic}-{p}" for p in range(PARTITIONS)]


@dataclass
class WorkerProcess:
    """A worker of ``tests.faults.scaleout_jobs`` whose JSON lines are read as they come."""

    name: str
    process: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, command: list[str]) -> WorkerProcess:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        worker = cls(name, process)
        threading.Thread(target=worker._read, daemon=True).start()
        threading.Thread(target=worker._read_errors, daemon=True).start()
        return worker

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        self.stderr.extend(self.process.stderr)

    def last(self, event: str) -> dict[str, Any] | None:
        found = [line for line in self.lines if line["event"] == event]
        return found[-1] if found else None

    def assigned(self) -> list[int] | None:
        line = self.last("assigned")
        return None if line is None else list(line["partitions"])

    def records(self) -> int:
        line = self.last("progress")
        return 0 if line is None else sum(t["records"] for t in line["tasks"].values())

    def finish(self, timeout: float) -> list[dict[str, Any]]:
        """Wait for the exit (code 0 asserted); the runs the worker reported."""
        code = self.process.wait(timeout)
        time.sleep(0.1)  # the reader thread takes the last lines
        assert code == 0, f"worker {self.name} exited {code}:\n{''.join(self.stderr[-40:])}"
        done = self.last("done")
        assert done is not None, f"worker {self.name} said no 'done'"
        return list(done["runs"])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def check_handovers(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task, its runs in order; every run but the last took a checkpoint to stop (or a
    final one, having finished), and every run after the first restored the newest checkpoint
    its predecessor wrote (after a final one: one before it, see scaleout.completion.
    resume_point): the partition's state moved with it, nothing was recomputed from an older
    state."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: r["ended_at"]):
        by_task.setdefault(run["task"], []).append(run)
    for task_runs in by_task.values():
        for before, after in itertools.pairwise(task_runs):
            handed_over = before["stop_checkpoint"] or before["final_checkpoint"]
            assert handed_over is not None, json.dumps(task_runs, indent=1)
            if before["final_checkpoint"] is not None:  # resumed before the final flush
                restored = after["restored_from"]
                assert restored is None or restored < before["final_checkpoint"], task_runs
                continue
            assert after["restored_from"] == before["last_checkpoint"], json.dumps(
                task_runs, indent=1
            )
    return by_task


@pytest.mark.apache_kafka
def test_rebalance_add_then_remove_a_worker_moves_tasks_through_checkpoints(
    apache_kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path
) -> None:
    """1 worker, a 2nd joins mid-stream (every task stops with a checkpoint, the new
    assignment restores them), then the 1st leaves (SIGTERM: its tasks checkpoint, the 2nd
    restores them and ends the job). The store is exact; every run after a handover restored
    the checkpoint its predecessor took when it stopped. Periodic checkpoints are off (1h), so
    the only checkpoints are the handovers'."""
    setup = make_setup(Broker("apache", apache_kafka), postgres, tmp_path, events=4000, seed=12)
    total = setup.data.table.num_rows
    started = time.monotonic()
    options = {"interval": "1h", "throttle_ms": 40}
    first = WorkerProcess.start("A", setup.worker_command("A", **options))
    second: WorkerProcess | None = None
    try:
        wait_for(lambda: first.assigned() == list(range(PARTITIONS)), "A owns every partition")
        wait_for(lambda: first.records() >= total // 5, "A to read a fifth of the input")
        second = WorkerProcess.start("B", setup.worker_command("B", **options))
        wait_for(lambda: bool(second and second.assigned()), "B to get partitions")
        wait_for(
            lambda: sum(line["event"] == "assigned" for line in first.lines) >= 2,
            "A's assignment after B joined",
        )
        time.sleep(0.5)  # A's new tasks restore and run a little
        first.process.send_signal(signal.SIGTERM)
        runs = first.finish(timeout=30) + second.finish(timeout=60)
    finally:
        for worker in (first, second):
            if worker is not None and worker.process.poll() is None:
                worker.process.kill()
    setup.check("1 → 2 → 1 workers")
    by_task = check_handovers(runs)
    assert all(len(task_runs) >= 2 for task_runs in by_task.values()), by_task
    assert any(len(task_runs) >= 3 for task_runs in by_task.values()), by_task
    read = sum(run["records"] for run in runs)
    print(
        f"rebalance: {len(runs)} task runs read {read} records for {total} "
        f"({read / total:.2f}x) in {time.monotonic() - started:.1f}s"
    )


JOB_FILE = """
[lake]
path = "{lake}"
time_column = "event_time"

[stream]
topic = "{topic}"
bootstrap_servers = "{bootstrap}"
time_column = "event_time"
schema = "lake"
stop_at = "latest"

[source]
handoff = "offsets"
out_of_orderness = "10m"
idle_timeout = "300ms"

[window]
key = "user_id"
kind = "tumbling"
size = "1h"
emit = "every"
aggregates = {{ n = "count()", ids = "count_distinct(event_id)", id_sum = "sum(event_id)", amount = "sum(amount)" }}

[sink]
url = "{dsn}"
table = "user_hour"

[checkpoints]
url = "{checkpoints}"
interval = "300ms"
"""


def completed_by_partition(data: PartitionedDataset) -> pa.Table:
    """The input records whose hour window each partition's task completes: a bounded task's
    final watermark is the newest event time of its partition (flush="watermark", the job
    file's default), so a window is written when it ends at or before that time."""
    con = duckdb.connect()
    con.register("events", data.table)
    con.register("positions", data.positions)
    return con.sql(
        """
        WITH placed AS (
            SELECT e.*, p.partition FROM events e JOIN positions p USING (event_id)
        ), newest AS (
            SELECT partition, max(event_time) AS newest FROM placed GROUP BY partition
        )
        SELECT placed.* EXCLUDE (partition) FROM placed JOIN newest USING (partition)
        WHERE date_trunc('hour', event_time) + INTERVAL 1 HOUR <= newest
        """
    ).to_arrow_table()


@pytest.mark.apache_kafka
def test_job_file_runs_as_two_worker_processes(
    apache_kafka: ApacheKafkaService, postgres: PostgresService, tmp_path: Path
) -> None:
    """`lambdasource run job.toml --workers 2`: one archiver-style lake for all partitions
    (each task keeps its partition's rows by Kafka's partitioner over the key) and a topic
    keyed by user; the store equals the SQL reference of the windows each partition completes;
    each worker serves its tasks' metrics on its own port (--metrics-port P: P and P+1)."""
    topic = apache_kafka.new_topic(PARTITIONS, "scaleout-job", config={"retention.ms": "-1"})
    data = asyncio.run(
        prepare_keyed_lake(
            apache_kafka.bootstrap,
            topic,
            tmp_path / "lake",
            partitions=PARTITIONS,
            events=4000,
            seed=13,
        )
    )
    dsn = postgres.new_database()
    job = tmp_path / "job.toml"
    job.write_text(
        JOB_FILE.format(
            lake=data.lake_root,
            topic=topic,
            bootstrap=apache_kafka.bootstrap,
            dsn=dsn,
            checkpoints=(tmp_path / "checkpoints").as_uri(),
        )
    )
    started = time.monotonic()
    port = free_port_run(2)
    command = [sys.executable, "-m", "lambdasource", "run", str(job), "--workers", "2"]
    process = subprocess.Popen(
        [*command, "--metrics-port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served: set[str] = set()  # task="…" labels seen on the workers' endpoints while running
    while process.poll() is None and time.monotonic() - started < 120:
        for worker_port in (port, port + 1):
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{worker_port}/metrics"
                text = urllib.request.urlopen(url, timeout=1).read().decode()
                served.update(re.findall(r'task="([^"]+)"', text))
        time.sleep(0.1)
    _, stderr = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, stderr[-4000:]
    assert "2 workers in consumer group lambdasource-" in stderr
    assert served and served <= {f"{topic}-{p}" for p in range(PARTITIONS)}, served
    store = asyncio.run(read_hourly_postgres(dsn))
    expected = completed_by_partition(data)
    check = oracle.compare_hourly(store, expected, positions=data.positions)
    assert check.ok, check.message("job file, 2 workers")
    assert expected.num_rows > data.table.num_rows * 0.9
    print(f"job file, 2 workers: {check.totals()} in {elapsed:.1f}s")
