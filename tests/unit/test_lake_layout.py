"""Partition layouts, non-data file classification, safe casts: pure functions."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lambdasource.errors import ConfigError, SchemaError
from lambdasource.sources.lake.layout import classify, detect
from lambdasource.sources.lake.schema import safe_cast_allowed, unify
from lambdasource.timeutil import DAY, HOUR, to_micros

H5 = to_micros("2026-01-02T05:00:00")
D2 = to_micros("2026-01-02T00:00:00")


@pytest.mark.parametrize(
    ("path", "kind", "start", "width"),
    [
        ("dt=2026-01-02/hour=05/part-0.parquet", "dt_hour", H5, HOUR),
        ("date=2026-01-02/hour=5/x.parquet", "dt_hour", H5, HOUR),
        ("year=2026/month=01/day=02/hour=05/x.parquet", "ymdh", H5, HOUR),
        ("hour=2026-01-02T05/x.parquet", "iso_hour", H5, HOUR),
        ("hour=2026-01-02T05:00/x.parquet", "iso_hour", H5, HOUR),
        ("dt=2026-01-02/x.parquet", "daily", D2, DAY),
        ("tenant=a/dt=2026-01-02/hour=05/x.parquet", "dt_hour", H5, HOUR),
    ],
)
def test_detected_layouts(path: str, kind: str, start: int, width: int) -> None:
    layout = detect([path])
    assert layout.kind == kind
    key = layout.key(path)
    assert key is not None and key.start == start and key.end == start + width


def test_template_and_day_grouping() -> None:
    layout = detect([], template="{year}/{month}/{day}/{hour}")
    key = layout.key("2026/01/02/05/data.parquet")
    assert key is not None and (key.start, key.end) == (H5, H5 + HOUR)
    assert layout.key("misc/data.parquet") is None
    daily = detect(["dt=2026-01-02/hour=05/a.parquet"], partitioning="day")
    key = daily.key("dt=2026-01-02/hour=05/a.parquet")
    assert key is not None and (key.start, key.end) == (D2, D2 + DAY)
    with pytest.raises(ConfigError, match="placeholder"):
        detect([], template="{yr}/{hour}")
    with pytest.raises(ConfigError):
        detect([], partitioning="minute")


def test_flat_layout_and_files_outside_it() -> None:
    assert detect(["a.parquet", "b.parquet"]).flat
    layout = detect(["dt=2026-01-02/hour=05/a.parquet"])
    assert layout.key("other/a.parquet") is None
    assert layout.key("dt=2026-13-02/hour=05/a.parquet") is None  # invalid month


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("_SUCCESS", "underscore file"),
        ("dt=2026-01-02/hour=05/_committed_123", "underscore file"),
        ("_lambdasource/commits/00000000000000000001.json", "metadata"),
        ("_temporary/0/part.parquet", "metadata"),
        (".hidden/part.parquet", "hidden"),
        ("dt=2026-01-02/.part-0.parquet.crc", "hidden"),
        ("dt=2026-01-02/part-0.parquet.crc", "checksum"),
        ("dt=2026-01-02/notes.txt", "not a .parquet file"),
        ("dt=2026-01-02/hour=05/part-0.snappy.parquet", None),
    ],
)
def test_classify(path: str, reason: str | None) -> None:
    assert classify(path) == reason


def test_safe_casts_and_unify() -> None:
    assert safe_cast_allowed(pa.int32(), pa.int64())
    assert safe_cast_allowed(pa.float32(), pa.float64())
    assert safe_cast_allowed(pa.string(), pa.large_string())
    assert safe_cast_allowed(pa.timestamp("ms"), pa.timestamp("us", tz="UTC"))
    assert safe_cast_allowed(pa.dictionary(pa.int8(), pa.string()), pa.string())
    assert not safe_cast_allowed(pa.int64(), pa.int32())
    assert not safe_cast_allowed(pa.string(), pa.int64())
    assert not safe_cast_allowed(pa.float64(), pa.int64())
    target = pa.schema([("a", pa.int64()), ("b", pa.string()), ("c", pa.float64())])
    t = pa.table({"c": pa.array([1.5], pa.float32()), "a": pa.array([1], pa.int16()), "z": [0]})
    out = unify(t, target, where="file=x")
    assert out.schema == target and out.column("b").null_count == 1
    with pytest.raises(SchemaError, match=r"'a'.*file=x"):
        unify(pa.table({"a": ["1"]}), target, where="file=x")
    strict = pa.schema([pa.field("b", pa.string(), nullable=False)])
    with pytest.raises(SchemaError, match=r"'b'.*missing.*file=y"):
        unify(pa.table({"a": [1]}), strict, where="file=y")
