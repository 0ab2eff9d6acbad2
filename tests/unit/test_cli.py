"""The ``lambdasource`` command line: commands, exit codes, one-line errors, demo and bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from lambdasource import cli

IMPLEMENTED = [c.name for c in cli.COMMANDS]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ["demo", "bench", *IMPLEMENTED]:
        assert command in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("command", IMPLEMENTED)
def test_commands_have_help_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"lambdasource {command}" in out


def test_backfill_of_a_missing_lake_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "backfill",
            "--lake",
            str(tmp_path / "nope"),
            "--time-column",
            "t",
            "--into",
            f"duckdb:///{tmp_path}/x.db",
            "--table",
            "t",
            "--key",
            "k",
            "--quiet",
        ]
    )
    assert code == cli.EXIT_FAILURE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lambdasource: error:"), lines
    assert "nope" in lines[0]


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bad_option_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--events", "0"])
    assert exc.value.code == 2
    assert "--events" in capsys.readouterr().err


def test_unexpected_error_is_one_line_and_verbose_shows_trace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lake.generator

    def boom(*args: object, **kwargs: object) -> pa.Table:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(lake.generator, "generate_clickstream", boom)
    assert cli.main(["demo", "--events", "10"]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lambdasource: error: RuntimeError: disk on fire second line")
    assert "Traceback" not in "\n".join(err)

    assert cli.main(["demo", "--events", "10", "--verbose"]) == cli.EXIT_FAILURE
    err_verbose = capsys.readouterr().err
    assert "Traceback" in err_verbose
    assert err_verbose.strip().splitlines()[-1].startswith("lambdasource: error: RuntimeError")


def test_python_dash_m_and_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lambdasource", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("lambdasource ")


def test_bench_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--list"]) == 0
    assert "engine" in capsys.readouterr().out


def test_bench_engine_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "engine", "--events", "20000", "--keys", "300", "--days", "3"]
    args += ["--naive-events", "1500", "--naive-keys", "5", "--naive-days", "1"]
    args += ["--out", str(tmp_path)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "| implementation |" in out
    (result,) = tmp_path.glob("engine-*.json")
    report = json.loads(result.read_text())
    assert report["benchmark"] == "engine"
    assert [row["equal"] for row in report["rows"]] == [True] * len(report["rows"])
    assert {row["contender"].split(" (")[0] for row in report["rows"]} == {
        "lambdasource",
        "duckdb",
        "naive one-copy-per-window",
    }
    assert report["rows"][0]["state_rows"] is not None


@pytest.mark.parametrize(
    ("size", "slide"), [("30d", "5m"), ("1h", "5m"), ("10m", "10m"), ("30m", "12m")]
)
def test_bench_sql_and_naive_changelogs_agree(size: str, slide: str) -> None:
    """The benchmark's DuckDB SQL and its naive implementation compute the same changelog."""
    from benchmarks.engine import (
        NaiveStats,
        WindowParams,
        compare,
        duckdb_changelog,
        naive_changelog,
        parse_duration,
    )
    from lake.generator import generate_clickstream

    window = WindowParams(parse_duration(size), parse_duration(slide))
    events = generate_clickstream(3_000, days=2, users=7, seed=3).combine_chunks()
    stats = NaiveStats()
    naive = naive_changelog(events, window, stats)
    sql = duckdb_changelog(events, window)
    check = compare(naive, sql)
    assert check.equal, check.describe("naive", "duckdb")
    assert stats.windows > 0
    assert naive.num_rows > 0
