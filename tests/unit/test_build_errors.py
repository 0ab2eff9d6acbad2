"""Misuse fails when the graph is built, with a message naming the problem."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lambdasource.timeutil import format_duration, parse_duration, to_micros

TABLE = pa.table(
    {
        "ts": pa.array([1, 2], pa.timestamp("ms", tz="Europe/Paris")),
        "user": ["a", "b"],
        "amount": [1.5, 2.0],
        "kind": ["click", "view"],
    }
)


def stream() -> ls.Stream:
    return ls.Pipeline().source(ls.MemorySource(TABLE, "ts"))


def test_unknown_key_column() -> None:
    with pytest.raises(ls.SchemaError, match="key_by: unknown column 'usr'"):
        stream().key_by("usr")


def test_filter_expression_is_checked_against_the_schema() -> None:
    with pytest.raises(ls.SchemaError, match="invalid filter expression"):
        stream().filter(pc.field("nope") == 1)
    with pytest.raises(ls.SchemaError, match="invalid filter expression"):
        stream().filter(pc.field("kind") > 3)


def test_time_column_must_be_a_timestamp_or_int64() -> None:
    bad = pa.table({"ts": ["2024-01-01"], "x": [1]})
    with pytest.raises(ls.SchemaError, match="time column 'ts' has type string"):
        ls.MemorySource(bad, "ts")
    with pytest.raises(ls.SchemaError, match="time column 'when' not in columns"):
        ls.MemorySource(TABLE, "when")


def test_window_needs_keys() -> None:
    with pytest.raises(ls.ConfigError, match=r"needs a keyed stream; call .key_by"):
        stream().window(ls.Tumbling("1h"))


def test_slide_larger_than_size() -> None:
    with pytest.raises(ls.ConfigError, match="slide 2h is larger than size 1h"):
        ls.Sliding("1h", "2h")


def test_bad_durations_and_modes() -> None:
    with pytest.raises(ls.ConfigError, match="cannot parse duration '5 parsecs'"):
        ls.Tumbling("5 parsecs")
    with pytest.raises(ls.ConfigError, match="emit must be one of"):
        stream().key_by("user").window(ls.Tumbling("1h"), emit="sometimes")
    with pytest.raises(ls.ConfigError, match="allowed_lateness: duration must not be negative"):
        stream().key_by("user").window(ls.Tumbling("1h"), allowed_lateness=timedelta(seconds=-1))


def test_aggregate_columns_and_types() -> None:
    w = stream().key_by("user").window(ls.Tumbling("1h"))
    with pytest.raises(ls.SchemaError, match=r"sum\('amt'\) names an unknown column"):
        w.aggregate(total=ls.sum("amt"))
    w = stream().key_by("user").window(ls.Tumbling("1h"))
    with pytest.raises(ls.SchemaError, match=r"sum\('kind'\) needs a numeric column"):
        w.aggregate(total=ls.sum("kind"))
    w = stream().key_by("user").window(ls.Tumbling("1h"))
    with pytest.raises(ls.SchemaError, match="clashes with a key or window column"):
        w.aggregate(window_end=ls.count())


def test_window_without_aggregate_and_no_sink() -> None:
    p = ls.Pipeline()
    s = p.source(ls.MemorySource(TABLE, "ts"))
    with pytest.raises(ls.ConfigError, match="nothing to run"):
        p.run_sync()
    s.key_by("user").window(ls.Tumbling("1h")).late().sink(ls.CollectSink())
    with pytest.raises(ls.ConfigError, match=r"needs .aggregate"):
        p.run_sync()


def test_union_of_different_schemas() -> None:
    p = ls.Pipeline()
    a = p.source(ls.MemorySource(TABLE, "ts"))
    b = p.source(ls.MemorySource(TABLE.drop_columns(["kind"]), "ts"))
    with pytest.raises(ls.SchemaError, match="union: schemas differ"):
        a.union(b)


def test_output_schema_is_known_at_build_time() -> None:
    out = (
        stream()
        .key_by("user")
        .window(ls.Sliding("1h", "10m"), emit="changes")
        .aggregate(n=ls.count(), total=ls.sum("amount"), top=ls.max("kind"))
    )
    assert out.schema is not None
    assert out.schema.names == [
        "user",
        "window_start",
        "window_end",
        "n",
        "total",
        "top",
        "_deleted",
    ]
    assert out.schema.field("window_end").type == pa.timestamp("us", tz="UTC")
    assert out.schema.field("total").type == pa.float64()
    assert out.schema.field("top").type == pa.string()


def test_durations_and_times() -> None:
    assert parse_duration("30d") == 30 * 86_400_000_000
    assert parse_duration("200ms") == 200_000
    assert parse_duration(timedelta(minutes=5)) == 300_000_000
    assert parse_duration("1.5s") == 1_500_000
    assert format_duration(parse_duration("90s")) == "90s"
    assert to_micros("1970-01-01T00:00:01Z") == 1_000_000
    assert to_micros("1970-01-01T00:00:01") == 1_000_000  # naive = UTC


def test_time_columns_of_every_unit_normalise_to_utc_micros() -> None:
    from lambdasource.timeutil import normalize_time_array

    for arr, expected in [
        (pa.array([1_500], pa.int64()), 1_500_000),  # epoch ms
        (pa.array([2], pa.timestamp("s")), 2_000_000),
        (pa.array([-1_500], pa.timestamp("ns")), -2),  # floor, before the epoch
        (pa.array([7], pa.timestamp("us", tz="America/New_York")), 7),
    ]:
        out = normalize_time_array(arr)
        assert out.type == pa.timestamp("us", tz="UTC")
        assert out.cast(pa.int64()).to_pylist() == [expected]
