"""Filters are checked against the source's schema before anything runs; a run that dead-letters
every input record is a failure; a deeply nested filter is a clear error (issue 12, helper h2).

Verdicts (before → after):

- ``--where "kidn = 'click'"`` on a lake-only backfill/bootstrap: every row dead-lettered, exit 0
  (``run --check`` said ok) → refused before running: exit 1 naming ``kidn``, suggesting
  ``kind``, listing the lake's columns; nothing is written.
- ``--where "amount = 'x'"``: the same → refused naming the column, its type and the literal's.
- A lake whose every time is unparseable: 40 dead letters, exit 0 → exit 1 with the count and the
  first reason and position; the Python ``backfill()`` reports it in its summary instead.
- 2,000 nested parentheses: ``RecursionError`` → ConfigError "nested too deeply (more than 100
  levels)"; a 20,000-term OR chain: pyarrow crashed the process (segmentation fault) → ConfigError
  "more than 1000 conditions (use IN (…) …)"; 1,000 terms run (as a balanced tree).

Oracles: the stores are compared row for row with DuckDB SQL over the generated events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from lake.generator import generate_clickstream
from lake.writer import ParquetLakeWriter
from lambdasource import cli
from lambdasource.backfill import backfill
from lambdasource.errors import ConfigError, SchemaError
from lambdasource.expressions import MAX_CONDITIONS, MAX_DEPTH, parse_filter
from lambdasource.sinks.duckdb import DuckDBUpsert

START = datetime(2026, 11, 1, tzinfo=UTC)
COLUMNS = ["event_time", "event_id", "user_id", "session_id", "kind", "page", "device", "amount"]


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return generate_clickstream(3_000, 1, 40, seed=7, start=START)


@pytest.fixture
def lake(tmp_path: Path, events: pa.Table) -> Path:
    root = tmp_path / "lake"
    ParquetLakeWriter(root, "event_time").write(events)
    return root


def _backfill_argv(lake: Path, db: Path, where: str) -> list[str]:
    return [
        "backfill",
        "--lake",
        str(lake),
        "--time-column",
        "event_time",
        "--into",
        f"duckdb:///{db}",
        "--table",
        "t",
        "--key",
        "event_id",
        "--where",
        where,
        "--quiet",
    ]


def _bootstrap_argv(lake: Path, db: Path, where: str) -> list[str]:
    return [
        "bootstrap",
        "--lake",
        str(lake),
        "--time-column",
        "event_time",
        "--key",
        "user_id",
        "--size",
        "1h",
        "--agg",
        "n=count()",
        "--into",
        f"duckdb:///{db}",
        "--table",
        "t",
        "--where",
        where,
        "--quiet",
    ]


def _job(tmp_path: Path, lake: Path, db: Path, where: str) -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        f"""
[lake]
path = "{lake}"
time_column = "event_time"

[transform]
where = "{where}"

[window]
key = "user_id"
kind = "tumbling"
size = "1h"
aggregates = {{ n = "count()" }}

[sink]
url = "duckdb:///{db}"
table = "t"
"""
    )
    return job


def _tables(db: Path) -> list[str]:
    if not db.exists():
        return []
    con = duckdb.connect(str(db))
    try:
        return [
            row[0] for row in con.sql("SELECT table_name FROM information_schema.tables").fetchall()
        ]
    finally:
        con.close()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, " ".join(err.split())


@pytest.mark.parametrize("command", ["backfill", "bootstrap", "run --check", "run"])
def test_misspelt_column_is_refused_before_running(
    command: str, tmp_path: Path, lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "out.duckdb"
    where = "kidn = 'click'"
    if command == "backfill":
        argv = _backfill_argv(lake, db, where)
    elif command == "bootstrap":
        argv = _bootstrap_argv(lake, db, where)
    else:
        argv = [*command.split(), str(_job(tmp_path, lake, db, where))]
    code, err = _run(argv, capsys)
    assert code == 1, err
    assert "unknown column 'kidn'" in err
    assert "did you mean 'kind'" in err
    assert all(column in err for column in COLUMNS), err  # the available columns are listed
    assert _tables(db) == []  # nothing ran


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("amount = 'x'", "column amount (double) with 'x' (string)"),
        ("user_id > TIMESTAMP '2026-11-01'", "column user_id (int64) with TIMESTAMP"),
        ("kind IN (1, 2)", "column kind (string)"),
        ("event_time < 5", "column event_time (timestamp[us, tz=UTC]) with 5 (int64)"),
    ],
)
def test_type_mismatch_is_refused_naming_column_and_types(
    where: str, expected: str, tmp_path: Path, lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "out.duckdb"
    code, err = _run(_backfill_argv(lake, db, where), capsys)
    assert code == 1, err
    assert expected in err
    assert _tables(db) == []
    code, err = _run(["run", "--check", str(_job(tmp_path, lake, db, where))], capsys)
    assert code == 1 and "[transform] where" in err and expected in err


def test_a_correct_where_runs_and_matches_sql(
    tmp_path: Path, lake: Path, events: pa.Table, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "out.duckdb"
    where = "kind = 'click' AND amount >= 0 AND event_time >= TIMESTAMP '2026-11-01T06:00:00Z'"
    code, err = _run(_backfill_argv(lake, db, where), capsys)
    assert code == 0, err
    con = duckdb.connect(str(db))
    got = con.sql("SELECT event_id, user_id, kind, amount FROM t ORDER BY event_id").fetchall()
    con.close()
    ref = duckdb.sql(
        """SELECT event_id, user_id, kind, amount FROM events
           WHERE kind = 'click' AND amount >= 0 AND event_time >= TIMESTAMPTZ '2026-11-01 06:00:00+00'
           ORDER BY event_id"""
    ).fetchall()
    assert got == ref and len(ref) > 100


async def test_python_backfill_checks_the_lake_schema_first(tmp_path: Path, lake: Path) -> None:
    store = DuckDBUpsert(tmp_path / "s.duckdb", "t", key="event_id")
    with pytest.raises(SchemaError, match=r"unknown column 'kidn'.*did you mean 'kind'"):
        await backfill(ls.ParquetLake(lake, "event_time"), store, where=pc.field("kidn") == "x")
    with pytest.raises(SchemaError, match=r"equal.*\(double, string\)"):
        await backfill(ls.ParquetLake(lake, "event_time"), store, where=pc.field("amount") == "x")
    assert _tables(tmp_path / "s.duckdb") == []


# --- every record dead-lettered ----------------------------------------------------------------


def _bad_time_lake(root: Path, good: int, bad: int) -> Path:
    """One hour partition whose ``event_time`` strings are ``good`` ISO times then ``bad`` garbage."""
    times = [f"2026-11-01T00:{i % 60:02d}:00Z" for i in range(good)] + [
        f"garbage-{i}" for i in range(bad)
    ]
    table = pa.table(
        {
            "event_time": times,
            "event_id": list(range(good + bad)),
            "user_id": [i % 5 for i in range(good + bad)],
            "kind": ["click"] * (good + bad),
        }
    )
    part = root / "dt=2026-11-01" / "hour=00"
    part.mkdir(parents=True)
    pq.write_table(table, part / "part-0.parquet")
    return root


@pytest.mark.parametrize("command", ["backfill", "bootstrap"])
def test_a_run_that_dead_letters_every_record_fails(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = _bad_time_lake(tmp_path / "bad", good=0, bad=40)
    db = tmp_path / "out.duckdb"
    argv = (_backfill_argv if command == "backfill" else _bootstrap_argv)(
        lake, db, "kind = 'click'"
    )
    code, err = _run(argv, capsys)
    assert code == 1, err
    assert "all 40 input records went to dead letters" in err
    assert "garbage-0" in err or "unparseable" in err.lower() or "cannot parse" in err, err
    assert "file=" in err  # the first dead letter's position


def test_partial_dead_letters_still_succeed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = _bad_time_lake(tmp_path / "bad", good=30, bad=10)
    db = tmp_path / "out.duckdb"
    code, err = _run(_backfill_argv(lake, db, "kind = 'click'"), capsys)
    assert code == 0, err
    con = duckdb.connect(str(db))
    ids = sorted(r[0] for r in con.sql("SELECT event_id FROM t").fetchall())
    con.close()
    assert ids == list(range(30))  # every good record, none of the 10 dead letters


async def test_python_backfill_reports_all_dead_letters_in_its_summary(tmp_path: Path) -> None:
    lake = _bad_time_lake(tmp_path / "bad", good=0, bad=12)
    summary = await backfill(
        ls.ParquetLake(lake, "event_time"),
        DuckDBUpsert(tmp_path / "s.duckdb", "t", key="event_id"),
    )
    assert summary.dead_letters == 12 and summary.rows_written == 0
    assert summary.all_dead_lettered
    assert summary.first_dead_letter is not None and "file=" in summary.first_dead_letter


# --- nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "(" * 2_000 + "a = 1" + ")" * 2_000,
        "NOT " * 2_000 + "a = 1",
        "(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1),
    ],
)
def test_deep_nesting_is_a_config_error_with_the_limit(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"nested too deeply \(more than {MAX_DEPTH} levels\)"):
        parse_filter(text)


def test_nesting_within_the_limit_and_long_chains_work() -> None:
    depth = MAX_DEPTH - 2
    table = pa.table({"a": list(range(3_000))})
    nested = parse_filter("(" * depth + "a = 1" + ")" * depth)
    assert table.filter(nested).column("a").to_pylist() == [1]
    chain = parse_filter(" OR ".join(f"a = {i}" for i in range(MAX_CONDITIONS)))
    assert table.filter(chain).num_rows == MAX_CONDITIONS
    chain = parse_filter(" AND ".join(f"a <> {i}" for i in range(MAX_CONDITIONS)))
    assert table.filter(chain).num_rows == 3_000 - MAX_CONDITIONS
    many = parse_filter(f"a IN ({', '.join(str(i) for i in range(20_000))})")  # one condition
    assert table.filter(many).num_rows == 3_000


def test_too_many_conditions_is_a_config_error_not_a_crash() -> None:
    text = " OR ".join(f"a = {i}" for i in range(20_000))  # crashed pyarrow (segfault) before
    with pytest.raises(ConfigError, match=f"more than {MAX_CONDITIONS} conditions"):
        parse_filter(text)


def test_deep_where_on_the_cli_is_one_clear_line(
    tmp_path: Path, lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = "(" * 2_000 + "kind = 'click'" + ")" * 2_000
    code, err = _run(_backfill_argv(lake, tmp_path / "o.duckdb", where), capsys)
    assert code == 1
    assert "nested too deeply" in err and "RecursionError" not in err


def test_number_literal_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        parse_filter("a = 99999999999999999999999")


@pytest.mark.iceberg
def test_an_iceberg_lake_is_checked_too(
    tmp_path: Path,
    events: pa.Table,
    iceberg_catalog_props: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.services.iceberg import load

    catalog = load(iceberg_catalog_props)
    catalog.create_namespace_if_not_exists("db")
    catalog.create_table("db.events", schema=events.schema).append(events)
    iceberg = [
        "--iceberg", "db.events",
        "--catalog-uri", iceberg_catalog_props["uri"],
        "--warehouse", iceberg_catalog_props["warehouse"],
        "--catalog-name", iceberg_catalog_props["name"],
    ]  # fmt: skip
    db = tmp_path / "out.duckdb"
    for command in ("backfill", "bootstrap"):
        argv = (_backfill_argv if command == "backfill" else _bootstrap_argv)(
            Path("unused"), db, "kidn = 'click'"
        )
        argv[1:3] = iceberg
        code, err = _run(argv, capsys)
        assert code == 1, err
        assert "unknown column 'kidn'" in err and "did you mean 'kind'" in err, err
    assert _tables(db) == []
    argv = _backfill_argv(Path("unused"), db, "kind = 'click'")
    argv[1:3] = iceberg
    code, err = _run(argv, capsys)
    assert code == 0, err
    con = duckdb.connect(str(db))
    got = sorted(r[0] for r in con.sql("SELECT event_id FROM t").fetchall())
    con.close()
    ref = sorted(
        r[0] for r in duckdb.sql("SELECT event_id FROM events WHERE kind = 'click'").fetchall()
    )
    assert got == ref and len(ref) > 100


def test_a_column_only_later_files_have_passes_the_check(
    tmp_path: Path, events: pa.Table, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reader's schema is the union over the lake's files: a filter on a column added in
    later files is valid (the check reads every footer before refusing it)."""
    root = tmp_path / "lake"
    old, new = events.slice(0, 1_500), events.slice(1_500)
    campaign = pa.array([["a", "b", "c"][i % 3] for i in range(new.num_rows)])
    new = new.append_column("campaign", campaign)
    writer = ParquetLakeWriter(root, "event_time")
    writer.write(old)
    writer.write(new)
    db = tmp_path / "out.duckdb"
    code, err = _run(_backfill_argv(root, db, "campaign = 'a'"), capsys)
    assert code == 0, err
    con = duckdb.connect(str(db))
    got = sorted(r[0] for r in con.sql("SELECT event_id FROM t").fetchall())
    con.close()
    ref = sorted(
        r[0] for r in duckdb.sql("SELECT event_id FROM new WHERE campaign = 'a'").fetchall()
    )
    assert got == ref and len(ref) > 100
    code, err = _run(_backfill_argv(root, tmp_path / "o2.duckdb", "campagin = 'a'"), capsys)
    assert code == 1 and "did you mean 'campaign'" in err, err
