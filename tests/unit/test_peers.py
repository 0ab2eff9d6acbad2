"""The peer benchmark's own plumbing, with no peer installed: the DuckDB baseline against a brute
force reference, our engine against it, reading the peers' output formats, and the skip path
(a peer whose venv cannot be made is reported in a note, never a failure)."""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections import Counter
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import peers
from lake.generator import generate_clickstream

HOUR = 3_600_000_000
MINUTE = 60_000_000
TS = pa.timestamp("us", tz="UTC")


def brute_force(
    table: pa.Table, size: int, slide: int
) -> Counter[tuple[int, int, int, int, float]]:
    """Every (user, window) with a record, by expanding each record into its windows."""
    acc: dict[tuple[int, int], list[float]] = {}
    users = table.column("user_id").to_pylist()
    times = table.column("event_time").cast(pa.int64()).to_pylist()
    amounts = table.column("amount").to_pylist()
    for user, t, amount in zip(users, times, amounts, strict=True):
        end = (t // slide + 1) * slide  # first window end > t
        while end - size <= t:
            cell = acc.setdefault((user, end), [0, 0.0])
            cell[0] += 1
            cell[1] += amount
            end += slide
    return Counter((u, e - size, e, int(c), s) for (u, e), (c, s) in acc.items())


def as_counter(table: pa.Table) -> Counter[tuple[int, int, int, int, float]]:
    rows = zip(
        table.column("user_id").to_pylist(),
        table.column("window_start").cast(pa.int64()).to_pylist(),
        table.column("window_end").cast(pa.int64()).to_pylist(),
        table.column("clicks").to_pylist(),
        table.column("revenue").to_pylist(),
        strict=True,
    )
    return Counter(rows)


@settings(max_examples=25, deadline=None)
@given(
    events=st.integers(1, 400),
    users=st.integers(1, 8),
    slide_min=st.sampled_from([20, 30, 60]),
    factor=st.integers(1, 5),
    seed=st.integers(0, 1_000),
)
def test_duckdb_every_matches_brute_force(
    events: int, users: int, slide_min: int, factor: int, seed: int
) -> None:
    table = generate_clickstream(events, 1, users, seed=seed)
    slide = slide_min * MINUTE
    size = slide * factor
    assert as_counter(peers.duckdb_every(table, size, slide)) == brute_force(table, size, slide)


@pytest.mark.parametrize(("size", "slide"), [(24 * HOUR, HOUR), (2 * HOUR, 40 * MINUTE)])
def test_engine_every_equals_duckdb(size: int, slide: int) -> None:
    """Our engine (``emit="every"``, ``until`` = last window end) emits every window DuckDB does."""
    table = generate_clickstream(5_000, 2, 50, seed=3).select(["user_id", "event_time", "amount"])
    reference = peers.duckdb_every(table, size, slide)
    ours = peers.engine_every(table, size, slide, batch_size=700)
    check = peers.compare_every(ours, reference, peers.last_window_end(table, slide, size))
    assert check.equal, check.describe("lambdasource", "duckdb")
    assert check.rows_left == reference.num_rows > 0


def test_compare_every_reports_differences_and_restricts_to_common_windows() -> None:
    table = generate_clickstream(2_000, 2, 20, seed=1)
    reference = peers.duckdb_every(table, 6 * HOUR, HOUR)
    shifted = reference.set_column(
        3, "clicks", pa.array([c + 1 for c in reference["clicks"].to_pylist()])
    )
    check = peers.compare_every(shifted, reference)
    assert not check.equal
    assert check.only_left == check.only_right == reference.num_rows
    assert "only in" in check.describe("x", "duckdb")
    # Windows beyond last_end are ignored on both sides.
    first_end = int(reference.column("window_end").cast(pa.int64()).to_pylist()[0])
    trimmed = reference.filter(
        pc.less_equal(reference["window_end"], pa.scalar(first_end, pa.int64()).cast(TS))
    )
    assert peers.compare_every(trimmed, reference, first_end).equal


def test_read_peer_outputs(tmp_path: Path) -> None:
    """Flink's part files (quoted naive UTC times, no header) and the Bytewax job's CSV parse to
    the same table."""
    flink_dir = tmp_path / "flink-out"
    flink_dir.mkdir()
    (flink_dir / "part-a-0-0").write_text(
        '72,"2025-12-31 01:00:00","2026-01-01 01:00:00",5,22.25\n'
    )
    (flink_dir / "part-a-1-0").write_text('18,"2025-12-31 02:00:00","2026-01-01 02:00:00",12,0.0\n')
    bytewax_csv = tmp_path / "bytewax-out.csv"
    start_72 = 1767142800000000  # 2025-12-31 01:00:00 UTC
    bytewax_csv.write_text(
        "user_id,window_start_us,window_end_us,clicks,revenue\n"
        f"18,{start_72 + HOUR},{start_72 + HOUR + 24 * HOUR},12,0.0\n"
        f"72,{start_72},{start_72 + 24 * HOUR},5,22.25\n"
    )
    flink = peers.read_flink_output(flink_dir)
    bytewax = peers.read_bytewax_output(bytewax_csv)
    assert flink.schema == peers.EVERY_SCHEMA
    assert flink.to_pylist() == bytewax.to_pylist()
    assert flink.column("window_start").cast(pa.int64()).to_pylist() == [start_72 + HOUR, start_72]
    assert peers.read_flink_output(tmp_path / "missing").num_rows == 0


def _flink_job() -> ModuleType:
    path = peers.JOBS_DIR / "flink_job.py"
    spec = importlib.util.spec_from_file_location("flink_job", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flink_interval_literals() -> None:
    interval = _flink_job().interval
    assert interval(24 * HOUR) == "INTERVAL '1' DAY"
    assert interval(HOUR) == "INTERVAL '1' HOUR"
    assert interval(90 * MINUTE) == "INTERVAL '90' MINUTE"
    assert interval(150 * MINUTE) == "INTERVAL '150' MINUTE(3)"
    assert interval(90_000_000) == "INTERVAL '90' SECOND"
    with pytest.raises(ValueError, match="whole seconds"):
        interval(1_500)


def test_peer_list_argument() -> None:
    parser = argparse.ArgumentParser()
    peers.add_arguments(parser)
    assert parser.parse_args([]).peers == ["flink", "bytewax"]
    assert parser.parse_args(["--peers", "bytewax"]).peers == ["bytewax"]
    assert parser.parse_args(["--peers", ""]).peers == []
    with pytest.raises(SystemExit):
        parser.parse_args(["--peers", "spark"])


def test_env_skip_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No java → Flink skipped with a note; an unusable cache dir → skipped with a note."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    env = peers.ensure_env(peers.SPECS["flink"], tmp_path, timeout=60)
    assert env.python is None and env.note is not None and "java" in env.note
    monkeypatch.undo()
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("")
    env = peers.ensure_env(peers.SPECS["bytewax"], not_a_dir, timeout=60)
    assert env.python is None and env.note is not None and env.note.startswith("bytewax: skipped")


def test_run_reports_skipped_peer_without_failing(tmp_path: Path) -> None:
    """The whole benchmark on a tiny input: our engine matches DuckDB; a peer that cannot be
    installed becomes a note and a skipped row, and the summary renders."""
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("")
    parser = argparse.ArgumentParser()
    peers.add_arguments(parser)
    args = parser.parse_args(
        [
            "--events",
            "3000",
            "--keys",
            "30",
            "--days",
            "2",
            "--size",
            "6h",
            "--slide",
            "2h",
            "--peers",
            "bytewax",
            "--cache-dir",
            str(not_a_dir),
        ]
    )
    report = peers.run(args)
    by_name = {row["contender"]: row for row in report.rows}
    assert by_name["lambdasource (every)"]["equal"] is True
    assert by_name["duckdb"]["ratio_vs_duckdb"] == 1.0
    assert by_name["Bytewax (1 worker)"]["skipped"] is True
    assert any(note.startswith("bytewax: skipped") for note in report.notes)
    assert not any(note.startswith("RESULTS DIFFER") for note in report.notes)
    text = peers.summary(report)
    assert "Bytewax" in text and "Note: bytewax: skipped" in text


def test_extrapolate_is_a_power_law_never_below_linear() -> None:
    projected, k = peers.extrapolate((100, 1.0), (200, 4.0), 800)
    assert math.isclose(k, 2.0) and math.isclose(projected, 64.0)
    projected, k = peers.extrapolate((100, 3.0), (200, 4.0), 800)  # fixed cost: sublinear fit
    assert k == 1.0 and math.isclose(projected, 16.0)
