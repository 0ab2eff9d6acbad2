"""``inspect`` on real lakes: partitions, rows, time ranges, gaps, skipped/orphan files, offsets."""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lake.generator import generate_clickstream
from lambdasource.sources.lake.commits import CommitRecord
from lambdasource.sources.lake.inspect import (
    add_arguments,
    command,
    format_report,
    inspect_iceberg,
    inspect_parquet,
)

from .test_iceberg_lake import make_table
from .test_parquet_lake import hours_of, write_hive


def test_inspect_parquet_lake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = generate_clickstream(3000, 1, 100, seed=1)
    written = write_hive(tmp_path, table, files=2, drop_hours=(4,))
    (tmp_path / "_SUCCESS").write_text("")
    commit = CommitRecord(sequence=3, offsets={0: 42}, topic="clicks", files=tuple(written[:-1]))
    (tmp_path / "_lambdasource" / "commits").mkdir(parents=True)
    (tmp_path / commit.file_name()).write_bytes(commit.to_json())
    report = inspect_parquet(tmp_path)
    assert report.layout == "dt_hour" and report.time_column == "event_time"
    assert report.rows == sum(pq.read_metadata(tmp_path / w).num_rows for w in written[:-1])
    assert len(report.missing_partitions) == 1
    assert report.orphan_files == [written[-1]]
    assert [s["file"] for s in report.skipped_files] == ["_SUCCESS"]
    assert report.recorded is not None and report.recorded.offsets == {0: 42}
    assert report.partitions[0].min_time is not None
    text = format_report(report)
    assert "dt=2026-01-01/hour=00" in text and "gaps (1 missing" in text and "0:42" in text
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert command(parser.parse_args([str(tmp_path)])) == 0
    assert "recorded offsets (commit 3" in capsys.readouterr().out


@pytest.mark.iceberg
def test_inspect_iceberg_table(
    iceberg_catalog_props: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    table = generate_clickstream(2000, 1, 50, seed=2)
    c = CommitRecord(sequence=1, offsets={0: 9}, topic="t")
    make_table(iceberg_catalog_props, table, properties=[c.snapshot_properties(), {}])
    report = inspect_iceberg("db.clicks", iceberg_catalog_props)
    assert report.rows == table.num_rows
    assert len(report.partitions) == len(hours_of(table))
    assert report.recorded is not None and report.recorded.offsets == {0: 9}
    assert "hour=" in format_report(report)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--iceberg",
            "db.clicks",
            "--catalog-uri",
            iceberg_catalog_props["uri"],
            "--warehouse",
            iceberg_catalog_props["warehouse"],
            "--catalog-name",
            iceberg_catalog_props["name"],
        ]
    )
    assert command(args) == 0
    assert "rows: 2,000" in capsys.readouterr().out
