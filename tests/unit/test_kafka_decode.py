"""decode_records against a per-message pure-Python reference (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdasource.errors import ConfigError, SchemaError
from lambdasource.sources.kafka.decode import decode_records, output_schema

TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema(
    [
        pa.field("t", pa.timestamp("ms")),
        pa.field("n", pa.int64()),
        pa.field("s", pa.string()),
        pa.field("x", pa.float64()),
    ]
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

times = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)
time_value = st.one_of(
    st.none(),
    times.map(lambda d: ("ms", int((d - EPOCH) / timedelta(milliseconds=1)))),
    times.map(lambda d: ("iso", d.isoformat())),
    times.map(lambda d: ("naive", d.replace(tzinfo=None).isoformat())),
    st.just(("bad", "not a time")),
)
good = st.fixed_dictionaries(
    {
        "t": time_value,
        "n": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.just("oops")),
        "s": st.one_of(st.none(), st.text(max_size=5)),
        "x": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    }
)
message = st.one_of(good, st.just(b"{broken"), st.just(b"[1]"), st.just(None))


def encode(m: Any) -> bytes | None:
    if m is None or isinstance(m, bytes):
        return m
    obj = {k: (v[1] if k == "t" and v is not None else v) for k, v in m.items()}
    return orjson.dumps(obj)


def reference(m: Any) -> dict[str, Any] | None:
    """The expected row (None: the message must be an error)."""
    if m is None or isinstance(m, bytes):
        return None
    t = m["t"]
    if t is None:
        micros = None
    elif t[0] == "ms":
        micros = t[1] * 1000
    elif t[0] == "bad":
        return None
    else:
        d = datetime.fromisoformat(t[1])
        d = d if d.tzinfo else d.replace(tzinfo=UTC)
        micros = (d - EPOCH) // timedelta(microseconds=1)
    if m["n"] == "oops":
        return None
    return {"t": micros, "n": m["n"], "s": m["s"], "x": m["x"]}


@settings(max_examples=150, deadline=None)
@given(st.lists(message, max_size=30))
def test_decode_matches_per_message_reference(messages: list[Any]) -> None:
    values = [encode(m) for m in messages]
    got = decode_records(values, SCHEMA, time_column="t", timestamps_ms=[0] * len(values))
    expected = [reference(m) for m in messages]
    want_rows = [r for r in expected if r is not None]
    rows = got.batch.to_pydict()
    rows["t"] = got.batch.column("t").cast(pa.int64()).to_pylist()
    assert got.batch.schema.field("t").type == TS
    assert [dict(zip(rows, vals, strict=True)) for vals in zip(*rows.values(), strict=True)] == (
        want_rows
    )
    assert [i for i, _ in got.errors] == [i for i, r in enumerate(expected) if r is None]
    kept = got.row_indices(len(values)).tolist()
    assert kept == [i for i, r in enumerate(expected) if r is not None]


def test_record_timestamp_column_when_no_time_column() -> None:
    schema = pa.schema([pa.field("a", pa.int64())])
    got = decode_records(
        [b'{"a": 1}', b"x", b'{"a": 3}'], schema, time_column=None, timestamps_ms=[5, 6, 7]
    )
    assert got.batch.column("timestamp").cast(pa.int64()).to_pylist() == [5000, 7000]
    assert got.batch.schema.names == ["a", "timestamp"]
    assert [i for i, _ in got.errors] == [1]


def test_callable_decoder_and_its_failure() -> None:
    def decode(values: list[bytes | None]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({"v": [len(v or b"") for v in values]})

    got = decode_records([b"ab", b"c"], None, format=decode, time_column=None, timestamps_ms=[1, 2])
    assert got.batch.column("v").to_pylist() == [2, 1]

    def broken(values: list[bytes | None]) -> pa.RecordBatch:
        raise ValueError("nope")

    got = decode_records([b"ab"], None, format=broken, time_column=None, timestamps_ms=[1])
    assert got.batch.num_rows == 0 and "nope" in got.errors[0][1]


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="schema"):
        output_schema(None, format="json", time_column=None)
    with pytest.raises(SchemaError, match="not in schema"):
        output_schema(SCHEMA, format="json", time_column="missing")
    with pytest.raises(SchemaError, match="timestamp"):
        output_schema(pa.schema([("timestamp", pa.int64())]), format="json", time_column=None)
