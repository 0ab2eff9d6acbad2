"""`lambdasource run job.toml --workers N / --join GROUP`: what is refused before anything runs,
the default group name, the task checkpoint locations (no broker: nothing here connects)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.cli import main
from lambdasource.errors import ConfigError
from lambdasource.job import JobSpec
from lambdasource.scaleout import task_checkpoint_url
from lambdasource.scaleout.jobs import default_group
from lambdasource.scaleout.task import TaskContext

JOB = """
[lake]
path = "lake"
time_column = "event_time"

[stream]
topic = "clicks"
bootstrap_servers = "127.0.0.1:1"
time_column = "event_time"
schema = "lake"

[window]
key = "user_id"
kind = "tumbling"
size = "1h"
aggregates = {{ n = "count()" }}

[sink]
url = "{sink}"
table = "user_hour"
{checkpoints}
"""


def job_file(tmp_path: Path, sink: str, checkpoints: bool = True) -> Path:
    rows = pa.table(
        {
            "event_time": pa.array([1_700_000_000_000_000], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([1], pa.int64()),
        }
    )
    ParquetLakeWriter(str(tmp_path / "lake"), "event_time").write(rows)
    section = f'[checkpoints]\nurl = "{tmp_path / "ck"}"' if checkpoints else ""
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(sink=sink, checkpoints=section))
    return path


@pytest.mark.parametrize("how", [["--workers", "2"], ["--join", "g1"]])
def test_duckdb_store_is_refused_for_several_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: list[str]
) -> None:
    job = job_file(tmp_path, f"duckdb:///{tmp_path / 'f.duckdb'}")
    assert main(["run", str(job), *how]) == 1
    err = capsys.readouterr().err
    assert "only one process" in err and "PostgreSQL" in err and "--workers 1" in err
    assert not (tmp_path / "f.duckdb").exists()  # nothing ran


def test_duckdb_store_with_one_worker_passes_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = job_file(tmp_path, f"duckdb:///{tmp_path / 'f.duckdb'}")
    assert main(["run", str(job), "--workers", "1", "--check"]) == 0
    assert "ok (as 1 worker(s) of group lambdasource-clicks-" in capsys.readouterr().out


def test_checkpoints_are_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = job_file(tmp_path, "postgresql://127.0.0.1:1/x", checkpoints=False)
    assert main(["run", str(job), "--workers", "2"]) == 1
    assert "need a [checkpoints] section" in capsys.readouterr().err


def test_a_kinesis_job_is_refused_for_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = job_file(tmp_path, "postgresql://127.0.0.1:1/x")
    job.write_text(
        job.read_text().replace(
            'topic = "clicks"\nbootstrap_servers = "127.0.0.1:1"',
            'kind = "kinesis"\nstream_name = "clicks"',
        )
    )
    assert main(["run", str(job), "--workers", "2"]) == 1
    assert "a Kinesis job runs in one process" in capsys.readouterr().err


def test_default_group_follows_topic_and_checkpoint_url(tmp_path: Path) -> None:
    job = job_file(tmp_path, "postgresql://127.0.0.1:1/x")
    spec = JobSpec.from_toml(job)
    group = default_group(spec)
    assert group.startswith("lambdasource-clicks-") and group == default_group(spec)
    assert spec.checkpoints is not None
    spec.checkpoints = {**spec.checkpoints, "url": "s3://other/ck"}
    assert default_group(spec) != group


def test_task_checkpoints_live_under_the_job_url() -> None:
    assert task_checkpoint_url("s3://b/ck/", "clicks", 3) == "s3://b/ck/tasks/clicks-3"
    context = TaskContext("clicks", 3, 8, "w", task_checkpoint_url("/tmp/ck", "clicks", 3))
    assert context.task_id == "clicks-3"
    assert context.checkpoint_url == "/tmp/ck/tasks/clicks-3"


class DuckDBTasks:
    """A task factory whose job writes to a DuckDB store (single-writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, context: TaskContext) -> ls.Pipeline:
        rows = pa.table({"event_time": pa.array([1], pa.timestamp("us", tz="UTC")), "k": [1]})
        pipeline = ls.Pipeline(checkpoints=ls.Checkpoints(context.checkpoint_url))
        pipeline.source(ls.MemorySource(rows, "event_time")).sink(
            ls.DuckDBUpsert(str(self.path), table="t", key=["k"], version="event_time")
        )
        return pipeline


def test_run_workers_refuses_a_duckdb_store_before_any_process_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only one process"):
        ls.run_workers(
            DuckDBTasks(tmp_path / "f.duckdb"),
            topic="clicks",
            bootstrap_servers="127.0.0.1:1",  # nothing listens: nothing may connect
            group="g",
            checkpoints=(tmp_path / "ck").as_uri(),
            workers=2,
        )
    assert not (tmp_path / "f.duckdb").exists() and not (tmp_path / "ck").exists()
