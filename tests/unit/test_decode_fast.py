"""The fast JSON path (Arrow's reader over a whole fetch) against the exact per-message path.

Property: for any fetch, the fast path either declines (``None``) or returns exactly the columns
the exact path gives — same types, same nulls, same bits (a ``-0.0`` for ``0.0`` is a difference)
— with no message in error. The messages are written token by token from the corner cases where
Arrow's parser and orjson were found to differ (NaN/Infinity, overflowing numbers, ``-0``, integers
beyond 2**53, invalid UTF-8, BOM, duplicate and unknown keys, several values in one message, a
top-level ``null``, nesting, whitespace) and from ordinary values, so that both paths are taken.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lambdasource.sources.kafka import decode as decode_module
from lambdasource.sources.kafka.decode import FetchDecode, decode_records
from lambdasource.sources.kafka.decode_fast import read_json_fetch

SCHEMA = pa.schema(
    [
        pa.field("t", pa.timestamp("us", tz="UTC")),
        pa.field("a", pa.int64()),
        pa.field("i8", pa.int8()),
        pa.field("u", pa.uint64()),
        pa.field("f", pa.float64()),
        pa.field("s", pa.string()),
        pa.field("b", pa.bool_()),
    ]
)
TIME_FIELDS = frozenset({"t"})

NUMBERS = [
    "0", "-0", "7", "-128", "127", "128", "-129", "9007199254740992", "9007199254740993",
    "9223372036854775807", "9223372036854775808", "18446744073709551615", "1" + "0" * 30,
    "3.0", "3.7", "-0.0", "0.1", "1E2", "1e-400", "1e308", "18e307", "1.7976931348623157e309",
    "2.4703282292062328e-324", "NaN", "-NaN", "Infinity", "-Infinity", "Inf",
]  # fmt: skip
OTHERS = [
    "null", "true", "false", '"x"', '""', '"\\u00e9\\ud83d\\ude00"', '"\\u0000"', '"\\/"',
    '"é"', '"\\ud800"', "[1]", "{}", '{"x": 1}', "[" * 3 + "]" * 3,
    '"\udcff"', '"\udced\udca0\udc80"',  # \udcXX is the raw byte XX (surrogateescape)
]  # fmt: skip
TIMES = [
    '"2026-01-01T10:00:00Z"', '"2026-01-01T10:00:00.123456789Z"', '"2026-01-01"',
    '"2026-01-01t10:00:00z"', '"not a time"', "1767261600000", "1767261600000.5",
    "1767261600000.0", "-0", "9223372036854775807", "null", "true",
]  # fmt: skip

tokens = st.sampled_from(NUMBERS + OTHERS)
keys = st.sampled_from([*SCHEMA.names, "zz", "\\u0061"])  # "\u0061" is "a" escaped


@st.composite
def message(draw: Any) -> bytes | None:
    """Mostly one object of schema keys; sometimes a corner of the JSON grammar."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(
            st.sampled_from(
                [
                    *(None, b"", b"null", b"[]", b"{}", b' {"a": 1}', b'{"a": 1}\n'),
                    *(b"\xef\xbb\xbf{}", b'{"a": 1}{"a": 2}', b'{"a": 1} null', b'{"a": 1'),
                    b'{"a": 1}}',
                ]
            )
        )
    fields = draw(st.lists(st.tuples(keys, tokens), max_size=4))
    if draw(st.booleans()):
        fields.append(("t", draw(st.sampled_from(TIMES))))
    text = "{" + ", ".join(f'"{k}": {v}' for k, v in fields) + "}"
    if kind == 1:
        text = text.replace(", ", ",\n")
    return text.encode("utf-8", "surrogateescape")


plain = st.fixed_dictionaries(
    {
        "t": st.sampled_from(["2026-01-01T10:00:00Z", "2026-01-01T10:00:00.5+02:00", None]),
        "a": st.integers(-(2**63), 2**63 - 1),
        "i8": st.integers(-128, 127),
        "u": st.integers(0, 2**64 - 1),
        # below 2**53 and no -0.0: the float values the fast path takes (others decline)
        "f": st.floats(-1e15, 1e15).map(lambda x: x + 0.0),
        "s": st.text(),
        "b": st.booleans(),
    }
).map(orjson.dumps)


def exact(values: list[bytes | None]) -> Any:
    with mock.patch.object(decode_module, "prepare_json_fetch", return_value=None):
        return decode_records(values, SCHEMA, time_column="t", timestamps_ms=[0] * len(values))


def same(a: pa.Array, b: pa.Array) -> bool:
    """Equal types, nulls and values, floats compared bit for bit."""
    if a.type != b.type or not a.is_null().equals(b.is_null()):
        return False
    if pa.types.is_floating(a.type):
        bits_a = np.asarray(a.fill_null(0.0).to_numpy(zero_copy_only=False)).view(np.int64)
        bits_b = np.asarray(b.fill_null(0.0).to_numpy(zero_copy_only=False)).view(np.int64)
        return bool((bits_a == bits_b).all())
    return bool(a.equals(b))


def check(values: list[bytes | None]) -> bool:
    """The fast path declines or equals the exact path; True when it answered."""
    fast = read_json_fetch(values, SCHEMA, TIME_FIELDS)
    if fast is None:
        return False
    reference = exact(values)
    assert reference.errors == [], "the fast path accepted a fetch with a bad message"
    assert reference.indices is None
    for name in SCHEMA.names:
        assert same(fast[name], reference.batch.column(name)), name
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message(), min_size=1, max_size=6))
@example(values=[b'{"f": -0}'])  # Arrow reads -0.0; orjson the integer 0 → 0.0
@example(values=[b'{"f": 9007199254740993}'])  # Arrow rounds; pyarrow refuses the int
@example(values=[b"{}", b'{"zz": NaN}'])  # Arrow accepts NaN (unknown fields are refused)
@example(values=[b'{"f": 18e307}'])  # Arrow reads inf; orjson refuses
@example(values=[b"{}", b'{"s": "\xed\xa0\x80"}'])  # Arrow keeps an encoded surrogate in a string
@example(values=[b"{}", b'{"a": 1}{"a": 2}'])  # two values in a message
@example(values=[b'{"a": 1}', b'{"a": 1} null'])
def test_fast_path_declines_or_equals_the_exact_path(values: list[bytes | None]) -> None:
    check(values)


@settings(max_examples=150, deadline=None)
@given(st.lists(plain, min_size=1, max_size=20))
def test_ordinary_fetches_take_the_fast_path_exactly(values: list[bytes | None]) -> None:
    assert check(values), "an ordinary fetch fell back to the exact path"


def test_epoch_ms_times_take_the_fast_path() -> None:
    values: list[bytes | None] = [b'{"t": 1767261600000, "a": 1}', b'{"t": null, "a": 2}']
    assert check(values)


def test_decode_records_mixes_no_path_into_the_other() -> None:
    """A fetch with one bad message is decoded the exact way: the others pass, the bad one is an
    error, as when each message is decoded alone."""
    good, bad = b'{"t": "2026-01-01T10:00:00Z", "a": 1}', b'{"t": "2026-01-01T10:00:00Z", "a": 3.5}'
    got = decode_records([good, bad, good], SCHEMA, time_column="t", timestamps_ms=[0, 0, 0])
    assert [i for i, _ in got.errors] == [1]
    assert got.batch.column("a").to_pylist() == [1, 1]


def _decoded_equal(a: Any, b: Any) -> bool:
    return (
        a.errors == b.errors
        and (a.indices is None) == (b.indices is None)
        and (a.indices is None or bool((a.indices == b.indices).all()))
        and a.batch.schema == b.batch.schema
        and all(same(a.batch.column(i), b.batch.column(i)) for i in range(a.batch.num_columns))
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(message(), plain), min_size=1, max_size=8))
@example(values=[b"{}", b'{"a": 1}{"a": 2}'])  # read on the thread, refused after it
@example(values=[b'{"t": "2026-01-01T10:00:00Z", "f": 1.5}', b'{"s": "x"}'])  # fast path
def test_fetch_decode_in_steps_equals_decode_records(values: list[bytes | None]) -> None:
    """The stream runs :meth:`FetchDecode.read` on its decode thread: whichever thread reads,
    and whether the read ran at all, the result is decode_records'."""
    kwargs: dict[str, Any] = {"time_column": "t", "timestamps_ms": [0] * len(values)}
    reference = decode_records(values, SCHEMA, **kwargs, now_us=0)
    on_thread = FetchDecode(values, SCHEMA, **kwargs)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(on_thread.read).result()
    unread = FetchDecode(values, SCHEMA, **kwargs)
    assert _decoded_equal(on_thread.result(now_us=0), reference)
    assert _decoded_equal(unread.result(now_us=0), reference)


def test_fetch_decode_reads_only_schemas_the_fast_path_takes() -> None:
    ordinary = [b'{"t": "2026-01-01T10:00:00Z", "a": 1}'] * 3
    assert FetchDecode(ordinary, SCHEMA, time_column="t", timestamps_ms=[0] * 3).reads
    nested = pa.schema([pa.field("t", pa.timestamp("us")), pa.field("l", pa.list_(pa.int64()))])
    assert not FetchDecode(ordinary, nested, time_column="t", timestamps_ms=[0] * 3).reads
    raw = FetchDecode(ordinary, None, format="raw", time_column=None, timestamps_ms=[0] * 3)
    assert not raw.reads
