"""``lambdasource bootstrap`` and ``run JOB.toml`` against a real lake, broker and DuckDB store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from lake.archiver import Archiver
from lake.generator import CLICKSTREAM_SCHEMA, generate_clickstream
from lake.writer import ParquetLakeWriter
from lambdasource import cli
from lambdasource.bootstrap import run_job, spec_from_args, to_toml
from lambdasource.demo import verify_store
from lambdasource.errors import ConfigError
from lambdasource.job import JobSpec, build
from tests.services.kafka import KafkaService

START = datetime(2026, 11, 1, tzinfo=UTC)


def _json(table: pa.Table) -> tuple[list[bytes], list[bytes]]:
    import orjson

    rows = table.to_pylist()
    return [orjson.dumps(r) for r in rows], [str(r["user_id"]).encode() for r in rows]


def _store(db: Path, table: str) -> pa.Table:
    con = duckdb.connect(str(db))
    try:
        return con.sql(
            f"SELECT user_id, clicks, revenue FROM {table} ORDER BY user_id"
        ).to_arrow_table()
    finally:
        con.close()


def _args(*argv: str) -> object:
    parser = cli.build_parser()
    return parser.parse_args(["bootstrap", *argv])


@pytest.mark.kafka
def test_bootstrap_offsets_handoff_matches_the_reference(
    tmp_path: Path, kafka: KafkaService
) -> None:
    events = generate_clickstream(
        30_000, 3, 200, seed=5, start=START, jitter="20s"
    ).combine_chunks()
    history, archived, backlog = (
        events.slice(0, 18_000),
        events.slice(18_000, 6_000),
        events.slice(24_000),
    )
    lake = tmp_path / "lake"
    writer = ParquetLakeWriter(lake, "event_time")
    writer.write(history)
    topic = kafka.new_topic(3)
    values, keys = _json(archived)
    kafka.produce(topic, values, keys=keys)
    asyncio.run(
        Archiver(
            kafka.bootstrap,
            topic,
            writer,
            "event_time",
            schema=CLICKSTREAM_SCHEMA,
            stop_at="latest",
        ).run()
    )
    values, keys = _json(backlog)
    kafka.produce(topic, values, keys=keys)

    db = tmp_path / "store.duckdb"
    args = _args(
        "--lake",
        str(lake),
        "--time-column",
        "event_time",
        "--bootstrap-servers",
        kafka.bootstrap,
        "--topic",
        topic,
        "--stop-at-latest",
        "--out-of-orderness",
        "20s",
        "--idle-timeout",
        "1s",
        "--key",
        "user_id",
        "--size",
        "30d",
        "--slide",
        "5m",
        "--agg",
        "clicks=count()",
        "--agg",
        "revenue=sum(amount)",
        "--into",
        f"duckdb:///{db}",
        "--table",
        "user_30d",
        "--quiet",
    )
    spec = spec_from_args(args)  # type: ignore[arg-type]
    metrics = run_job(spec, quiet=True)
    sink = next(iter(metrics["sinks"].values()))
    assert metrics["late"] == 0
    assert verify_store(events, _store(db, "user_30d"), int(sink["watermark"])) == 200

    # the same job as a file: --print-job → run JOB.toml gives the same store
    job = tmp_path / "job.toml"
    job.write_text(to_toml(spec).replace(str(db), str(tmp_path / "again.duckdb")))
    again = JobSpec.from_toml(job)
    assert again.window == spec.window and again.lake == spec.lake and again.stream == spec.stream
    assert cli.main(["run", str(job), "--quiet"]) == 0
    assert _store(tmp_path / "again.duckdb", "user_30d").equals(_store(db, "user_30d"))


def test_lake_only_job_file_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = generate_clickstream(5_000, 2, 50, seed=2, start=START)
    ParquetLakeWriter(tmp_path / "lake", "event_time").write(events)
    job = tmp_path / "job.toml"
    job.write_text(
        """
[lake]
path = "lake"
time_column = "event_time"

[transform]
where = "kind = 'purchase'"

[window]
key = "user_id"
kind = "tumbling"
size = "1d"
emit = "changes"
aggregates = { purchases = "count()", revenue = "sum(amount)" }

[sink]
url = "duckdb:///%s"
table = "daily"
"""
        % (tmp_path / "daily.duckdb")
    )
    assert cli.main(["run", str(job), "--check"]) == 0
    assert "ok" in capsys.readouterr().out
    assert cli.main(["run", str(job), "--quiet"]) == 0
    con = duckdb.connect(str(tmp_path / "daily.duckdb"))
    got = con.sql(
        "SELECT user_id, epoch_us(window_end), purchases, revenue FROM daily ORDER BY ALL"
    ).fetchall()
    con.close()
    ref = duckdb.sql(
        """SELECT user_id, epoch_us(time_bucket(INTERVAL 1 DAY, event_time) + INTERVAL 1 DAY),
                  count(*) AS purchases, sum(amount) AS revenue
           FROM events WHERE kind = 'purchase' GROUP BY ALL ORDER BY ALL"""
    ).fetchall()
    assert got == ref and len(got) > 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sink]\nurl='duckdb:///x.db'\ntable='t'", "needs a \\[lake\\] section"),
        (
            "[lake]\npath='x'\ntime_column='t'\n[sink]\nurl='duckdb:///x.db'\ntable='t'\nkeys=['a']",
            "unknown key",
        ),
        (
            "[lake]\npath='x'\ntime_column='t'\n[window]\nkey='k'\nkind='tumbling'\nsize='1h'\naggregates={n='median(x)'}\n[sink]\nurl='duckdb:///x.db'\ntable='t'",
            "median",
        ),
        (
            "[lake]\npath='x'\ntime_column='t'\n[window]\nkey='k'\nkind='sliding'\nsize='1h'\naggregates={n='count()'}\n[sink]\nurl='duckdb:///x.db'\ntable='t'",
            "sliding needs size and slide",
        ),
        (
            "[lake]\npath='x'\ntime_column='t'\n[transform]\nwhere='a ='\n[sink]\nurl='duckdb:///x.db'\ntable='t'",
            "expected a value",
        ),
        ("[lake]\npath='x'\n", "needs a \\[sink\\] section"),
    ],
)
def test_job_file_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build(JobSpec.from_toml(job))
