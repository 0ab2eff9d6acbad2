"""Edge cases of stream values (issue 12): numbers, event times and casts decided per message.

Each test names the issue's wording. Verdicts, before → after the fix:

- JSON ``3.7`` in an int64 column: 3.7, -0.5 (int64) and 2.5 (int32) were stored truncated →
  dead letters naming column and value; 3.0 → 3; floats into decimals by their shortest repr.
- float epoch-ms time: passed alone, dead letter in a fetch with ISO strings (the property found
  it) → a time in any fetch, rounded to the µs; one decision per message (hypothesis).
- ISO-8601 with 7–9 digits, date-only, lowercase t/z: dead letters → read (digits beyond 6
  floored to the µs, date = midnight UTC); garbage still dead letters.
- stream value failing the cast to the lake's schema: SchemaError stopped the job naming only
  the topic → dead letter with topic/partition/offset, column and value; the other rows pass.
- far-future event time: delivered, the watermark jumped and all 6 later records were late →
  dead letter (``max_ahead``, default 1d), nothing late.

Oracles are computed from the input: the expected (event_id → values) rows and the offsets of the
messages that must be dead letters, written per message next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lake.archiver import Archiver, add_arguments
from lake.writer import ParquetLakeWriter
from lambdasource.sources.kafka.decode import decode_records
from lambdasource.timeutil import DAY, HOUR, MINUTE, SECOND
from tests.integration.ordered import SCHEMA, TIME, OrderedSink
from tests.services.kafka import KafkaService

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
T0_MS = T0 // 1000
TS = pa.timestamp("us", tz="UTC")

NUMBERS = pa.schema(
    [
        pa.field(TIME, TS),
        pa.field("event_id", pa.int64()),
        pa.field("n", pa.int64()),
        pa.field("small", pa.int32()),
        pa.field("byte", pa.uint8()),
        pa.field("x", pa.float64()),
        pa.field("price", pa.decimal128(10, 2)),
    ]
)


def number_msg(event_id: int, **values: Any) -> bytes:
    return orjson.dumps({TIME: "2026-01-01T10:00:00Z", "event_id": event_id, **values})


# (message, expected {column: value} of the row, or the reason's words when a dead letter)
NUMBER_CASES: list[tuple[bytes, dict[str, Any] | tuple[str, ...]]] = [
    (number_msg(1, n=3.0, small=2147483647.0, byte=255.0, x=3), {"n": 3, "small": 2**31 - 1,
                                                               "byte": 255, "x": 3.0}),
    (number_msg(2, n=9223372036854775807), {"n": 2**63 - 1}),
    (number_msg(3, n=-0.0), {"n": 0}),
    (number_msg(4, n=3.7), ("'n'", "3.7")),
    (number_msg(5, n=-0.5), ("'n'", "-0.5")),
    (number_msg(6, n=1e19), ("'n'", "1e+19")),
    (b'{"event_time": "2026-01-01T10:00:00Z", "event_id": 7, "n": 18446744073709551616}',
     ("'n'", "1.8446744073709552e+19")),
    (number_msg(8, n=9223372036854775808), ("'n'", "9223372036854775808")),
    (number_msg(9, small=2**31), ("'small'", "2147483648")),
    (number_msg(10, small=2.5), ("'small'", "2.5")),
    (number_msg(11, byte=-1), ("'byte'", "-1")),
    (number_msg(12, byte=256.0), ("'byte'", "256.0")),
    (number_msg(13, n=True), ("'n'", "True")),
    (number_msg(14, n=1.5e300), ("'n'", "1.5e+300")),
    (number_msg(15, n=5), {"n": 5}),
    (number_msg(16, price=3.75), {"price": Decimal("3.75")}),  # the float's shortest repr
    (number_msg(17, price=12), {"price": Decimal("12.00")}),
    (number_msg(18, price=0.125), ("'price'", "0.125")),  # a third decimal digit
]  # fmt: skip


class Collect(ls.CollectSink):
    pass


def dead_positions(dead: ls.CollectSink) -> dict[int, str]:
    """offset → reason of every dead letter (each offset once)."""
    if not dead.batches:
        return {}
    letters = dead.table()
    out: dict[int, str] = {}
    for position, reason in zip(
        letters.column("_position").to_pylist(), letters.column("_error").to_pylist(), strict=True
    ):
        offset = int(str(position).rsplit("offset=", 1)[1].split()[0])
        assert offset not in out, f"offset {offset} dead-lettered twice"
        out[offset] = reason
    return out


async def run_stream(stream: ls.KafkaStream) -> tuple[pa.Table, dict[int, str]]:
    p = ls.Pipeline()
    main, dead = Collect(), Collect()
    s = p.source(stream)
    s.sink(main)
    s.dead_letters().sink(dead)
    await asyncio.wait_for(p.run(), 60)
    table = main.table() if main.batches else stream.schema.empty_table()  # type: ignore[union-attr]
    return table, dead_positions(dead)


@pytest.mark.kafka
async def test_json_numbers_pass_only_when_exact(kafka: KafkaService) -> None:
    """Issue: "JSON `3.7` in an int64 column is stored as 3 (wrong key, wrong sum): only exact
    conversions pass, the rest are dead letters"."""
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    placed = await kafka.aproduce(topic, [m for m, _ in NUMBER_CASES], partition=0)
    table, dead = await run_stream(
        ls.KafkaStream(topic, kafka.bootstrap, TIME, schema=NUMBERS, stop_at="latest")
    )
    rows = {r["event_id"]: r for r in table.to_pylist()}
    expected_rows = {
        i + 1: want for i, (_, want) in enumerate(NUMBER_CASES) if isinstance(want, dict)
    }
    assert Counter(table.column("event_id").to_pylist()) == Counter(list(expected_rows))
    for event_id, want in expected_rows.items():
        assert {k: rows[event_id][k] for k in want} == want, event_id
        assert all(type(rows[event_id][k]) is type(v) for k, v in want.items())
    expected_dead = {
        placed[i][1]: want for i, (_, want) in enumerate(NUMBER_CASES) if isinstance(want, tuple)
    }
    assert set(dead) == set(expected_dead)
    for offset, words in expected_dead.items():
        assert all(w in dead[offset] for w in words), (dead[offset], words)


# -- one decision per message, whatever the fetch -------------------------------------------

NOW = T0 + 30 * DAY
TIMES = pa.schema(
    [
        pa.field("t", TS),
        pa.field("n", pa.int64()),
        pa.field("s", pa.string()),
        pa.field("small", pa.int32()),
        pa.field("price", pa.decimal128(10, 2)),
    ]
)

time_values = st.sampled_from(
    [
        "2026-01-01T10:00:00Z",
        "2026-01-01T10:00:00.123456789Z",
        "2026-01-01t10:00:00.5z",
        "2026-01-01",
        "2026-01-01T10:00:00",
        "not a time",
        "2026-13-45T99:00:00Z",
        T0_MS,
        T0_MS + 0.25,
        float(T0_MS),
        1e300,
        10**16,
        True,
        None,
        {"nested": 1},
        (NOW + 2 * DAY) // 1000,  # beyond max_ahead
        "2126-01-01T00:00:00Z",  # beyond max_ahead
    ]
) | st.integers(T0_MS - 10**9, T0_MS + 10**9)
int_values = st.one_of(
    st.integers(-(2**63), 2**64 - 1),  # what orjson can write
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53).map(float),
    st.none(),
    st.just("7"),
    st.booleans(),
)
objects = st.fixed_dictionaries(
    {
        "t": time_values,
        "n": int_values,
        "s": st.one_of(st.none(), st.text(max_size=3), st.just(1)),
        "small": int_values,
        "price": st.one_of(st.sampled_from([0.1, 3.75, 1e-5, 1e300, 12]), st.none()),
    }
)
messages = st.one_of(
    objects.map(orjson.dumps), st.sampled_from([b"{broken", b"[1]", b"null", b'"s"', None])
)


def decode_all(values: list[bytes | None], offset: int) -> tuple[list[Any], list[Any]]:
    got = decode_records(
        values,
        TIMES,
        time_column="t",
        timestamps_ms=[0] * len(values),
        max_ahead=DAY,
        now_us=NOW,
    )
    indices = got.row_indices(len(values)).tolist()
    rows = got.batch.to_pylist()
    return (
        [(offset + i, row) for i, row in zip(indices, rows, strict=True)],
        [(offset + i, reason) for i, reason in got.errors],
    )


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(messages, max_size=25), st.lists(st.integers(0, 25), max_size=6))
@example(  # a boolean among float times: Arrow's inference reads it as 1.0
    values=[orjson.dumps({"t": t}) for t in (T0_MS, T0_MS + 0.25, True)], cuts=[2]
)
def test_each_message_decoded_alone_whatever_the_fetch(
    values: list[bytes | None], cuts: list[int]
) -> None:
    """Issue: "Whether a message is dead-lettered depends on its neighbours in a fetch (a float
    epoch-ms time passes alone, fails in a batch): one decision per message, whatever the fetch
    size". Decoding a list at once equals decoding any split of it (same rows, same dead letters
    with the same reason per message index), and equals decoding every message alone."""
    whole_rows, whole_errors = decode_all(values, 0)
    assert sorted([i for i, _ in whole_rows] + [i for i, _ in whole_errors]) == list(
        range(len(values))
    )
    bounds = sorted({0, len(values), *(c for c in cuts if c <= len(values))})
    for parts in (
        list(itertools.pairwise(bounds)),
        [(i, i + 1) for i in range(len(values))],
    ):
        rows: list[Any] = []
        errors: list[Any] = []
        for start, stop in parts:
            part_rows, part_errors = decode_all(values[start:stop], start)
            rows += part_rows
            errors += part_errors
        assert rows == whole_rows
        assert errors == whole_errors


@pytest.mark.kafka
async def test_float_epoch_ms_passes_in_any_fetch(kafka: KafkaService) -> None:
    """The issue's example: a float epoch-ms time among ISO strings, fetched one by one and all at
    once: the same rows (float ms rounded to the µs) and the same dead letters."""
    values = [
        orjson.dumps({TIME: "2026-01-01T10:00:00Z", "event_id": 1}),
        orjson.dumps({TIME: T0_MS + 0.25, "event_id": 2}),
        orjson.dumps({TIME: float(T0_MS + 1), "event_id": 3}),
        orjson.dumps({TIME: T0_MS + 2, "event_id": 4}),
        orjson.dumps({TIME: 1e300, "event_id": 5}),  # beyond any time: dead letter
        orjson.dumps({TIME: -1.5, "event_id": 6}),  # 1969-12-31T23:59:59.9985Z
    ]
    want = {1: T0 + 10 * HOUR, 2: T0 + 250, 3: T0 + 1000, 4: T0 + 2000, 6: -1500}
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    placed = await kafka.aproduce(topic, values, partition=0)
    for fetch in (1, 1000):
        table, dead = await run_stream(
            ls.KafkaStream(
                topic,
                kafka.bootstrap,
                TIME,
                schema=SCHEMA,
                stop_at="latest",
                max_batch_records=fetch,
                max_ahead=None,
            )
        )
        got = dict(
            zip(
                table.column("event_id").to_pylist(),
                pc.cast(table.column(TIME), pa.int64()).to_pylist(),
                strict=True,
            )
        )
        assert table.num_rows == len(want) and got == want, fetch
        assert list(dead) == [placed[4][1]] and "1e+300" in dead[placed[4][1]], dead


# -- ISO-8601 forms -------------------------------------------------------------------------

ISO_CASES: list[tuple[str, int | None]] = [
    ("2026-01-01T10:00:00.123456789Z", T0 + 10 * HOUR + 123_456),  # Go RFC3339Nano
    ("2026-01-01T10:00:00.1234567Z", T0 + 10 * HOUR + 123_456),  # .NET 7 digits
    ("2026-01-01T12:00:00.999999999+02:00", T0 + 10 * HOUR + 999_999),  # floor, not round
    ("1969-12-31T23:59:59.9999999Z", -1),  # floor before the epoch too
    ("2026-01-01", T0),  # date only: midnight UTC
    ("2026-01-01t10:00:00z", T0 + 10 * HOUR),
    ("2026-01-01t10:00:00.5", T0 + 10 * HOUR + 500_000),  # naive, lowercase
    ("2026-01-01T10:00:00.123456789", T0 + 10 * HOUR + 123_456),  # naive, ns
    ("2026-01-01 10:00:00Z", T0 + 10 * HOUR),
    ("yesterday", None),
    ("2026-13-45T99:00:00Z", None),
    ("2026-01-01T10:00:00.Z", None),
    ("2026-01-01T", None),
    ("2026-01-01Tz", None),
    ("20260101", None),
    ("2026-1-1", None),
    ("", None),
]


@pytest.mark.kafka
async def test_valid_iso_forms_are_read_and_garbage_is_not(kafka: KafkaService) -> None:
    """Issue: "Valid ISO-8601 times are dead-lettered: 7–9 fractional digits (Java `Instant`, Go
    `RFC3339Nano`), date-only, lowercase `t`/`z`"."""
    values = [orjson.dumps({TIME: s, "event_id": i}) for i, (s, _) in enumerate(ISO_CASES)]
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    placed = await kafka.aproduce(topic, values, partition=0)
    table, dead = await run_stream(
        ls.KafkaStream(topic, kafka.bootstrap, TIME, schema=SCHEMA, stop_at="latest")
    )
    got = dict(
        zip(
            table.column("event_id").to_pylist(),
            pc.cast(table.column(TIME), pa.int64()).to_pylist(),
            strict=True,
        )
    )
    assert got == {i: t for i, (_, t) in enumerate(ISO_CASES) if t is not None}
    bad = {placed[i][1]: s for i, (s, t) in enumerate(ISO_CASES) if t is None}
    assert set(dead) == set(bad)
    assert all(repr(s) in dead[o] and repr(TIME) in dead[o] for o, s in bad.items())


# -- the cast to the lake's schema ----------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.parametrize("handoff", ["offsets", "timestamp"])
async def test_value_failing_the_lake_cast_is_a_dead_letter(
    kafka: KafkaService, tmp_path: Path, handoff: str
) -> None:
    """Issue: "One stream value that fails the cast to the unified schema stops the whole job,
    naming only the topic: it is a dead letter with partition and offset". The lake declares
    ``user_id: int64``, the stream ``user_id: string``."""
    stream_schema = pa.schema(
        [
            pa.field(TIME, TS),
            pa.field("event_id", pa.int64()),
            pa.field("user_id", pa.string()),
            pa.field("amount", pa.float64()),
        ]
    )
    cases: list[tuple[str | None, int | None]] = [
        ("7", 7),
        ("abc", None),
        ("8", 8),
        ("99999999999999999999", None),  # beyond int64
        (None, None),  # null passes as null
        ("1.5", None),
        ("-3", -3),
    ]
    passing = {0, 2, 4, 6}
    topic = await asyncio.to_thread(kafka.new_topic, 2)
    values = [
        orjson.dumps({TIME: T0_MS + 3 * 3_600_000 + i, "event_id": i, "user_id": u, "amount": 1.0})
        for i, (u, _) in enumerate(cases)
    ]
    placed = await kafka.aproduce(topic, values, partition=1)
    early = pa.table(
        {
            TIME: pa.array([T0 + HOUR], TS),
            "event_id": pa.array([1000], pa.int64()),
            "user_id": pa.array([1], pa.int64()),
            "amount": pa.array([1.0]),
        }
    )
    ParquetLakeWriter(tmp_path / "lake", TIME).write(early, offsets={0: 0, 1: 0}, topic=topic)
    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA),
        ls.KafkaStream(
            topic, kafka.bootstrap, time_column=TIME, schema=stream_schema, stop_at="latest"
        ),
        handoff=handoff,
        cutoff=T0 + 2 * HOUR if handoff == "timestamp" else None,
        idle_timeout="200ms",
    )
    p = ls.Pipeline()
    main, dead = Collect(), Collect()
    s = p.source(source)
    s.sink(main)
    s.dead_letters().sink(dead)
    await asyncio.wait_for(p.run(), 60)
    out = main.table()
    assert out.schema.field("user_id").type == pa.int64()
    got = dict(
        zip(out.column("event_id").to_pylist(), out.column("user_id").to_pylist(), strict=True)
    )
    assert Counter(out.column("event_id").to_pylist()) == Counter([1000, *passing])
    assert got == {1000: 1, **{i: cases[i][1] for i in passing}}
    letters = dead.table()
    positions = letters.column("_position").to_pylist()
    reasons = letters.column("_error").to_pylist()
    want = {placed[i][1] for i in range(len(cases)) if i not in passing}
    assert len(positions) == len(want)
    assert all(f"topic={topic} partition=1 offset=" in p for p in positions), positions
    assert {int(p.rsplit("offset=", 1)[1]) for p in positions} == want
    assert all("'user_id'" in r and "int64" in r for r in reasons), reasons
    assert set(letters.column("offset").to_pylist()) == want  # the raw message is kept


# -- far-future event times -----------------------------------------------------------------


@pytest.mark.kafka
async def test_far_future_time_is_a_dead_letter_not_a_watermark(kafka: KafkaService) -> None:
    """Issue: "One far-future event time moves the watermark so that nearly every later record is
    late: a plausibility bound (configurable) sends such records to the dead letters". Fetches of
    two records, so watermarks fall between them; the far-future record is the third."""
    now = int(time.time() * SECOND)
    base = now - HOUR
    times = [base + i * SECOND for i in range(12)]
    far = 5
    times[far] = now + 3650 * DAY
    values = [
        orjson.dumps({TIME: t // 1000, "event_id": i, "user_id": i % 3})
        for i, t in enumerate(times)
    ]
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    placed = await kafka.aproduce(topic, values, partition=0)
    p = ls.Pipeline()
    main, dead, late = OrderedSink(), Collect(), Collect()
    s = p.source(
        ls.KafkaStream(
            topic,
            kafka.bootstrap,
            TIME,
            schema=SCHEMA,
            stop_at="latest",
            max_batch_records=2,
            out_of_orderness="1s",
        )
    )
    s.sink(main)
    s.dead_letters().sink(dead)
    window = s.key_by("user_id").window(ls.Tumbling(size="1m"), allowed_lateness="0s")
    window.aggregate(n=ls.count()).sink(Collect())
    window.late().sink(late)
    await asyncio.wait_for(p.run(), 60)
    assert main.ids() == Counter(i for i in range(len(times)) if i != far)
    assert main.late() == []
    assert not late.batches or late.table().num_rows == 0
    letters = dead_positions(dead)
    assert list(letters) == [placed[far][1]]
    assert "ahead of the wall clock" in letters[placed[far][1]]
    assert "max_ahead=1d" in letters[placed[far][1]]


def test_max_ahead_none_disables_and_bounds_are_exact() -> None:
    values = [orjson.dumps({"t": t // 1000, "n": 1}) for t in (NOW + DAY, NOW + DAY + MINUTE)]
    got = decode_records(
        values, TIMES, time_column="t", timestamps_ms=[0, 0], max_ahead=DAY, now_us=NOW
    )
    assert got.batch.num_rows == 1 and [i for i, _ in got.errors] == [1]  # at the bound: kept
    got = decode_records(values, TIMES, time_column="t", timestamps_ms=[0, 0], max_ahead=None)
    assert got.batch.num_rows == 2 and not got.errors
    # the record timestamp is the event time when time_column is None: the same bound
    got = decode_records(
        [b"x", b"y"],
        None,
        format="raw",
        time_column=None,
        timestamps_ms=[NOW // 1000, (NOW + 2 * DAY) // 1000],
        max_ahead=DAY,
        now_us=NOW,
    )
    assert got.batch.num_rows == 1 and [i for i, _ in got.errors] == [1]
    with pytest.raises(ls.ConfigError, match="max_ahead"):
        ls.KafkaStream("t", "127.0.0.1:1", format="raw", max_ahead="soon")


@pytest.mark.kafka
async def test_archiver_dead_letters_far_future_times(kafka: KafkaService, tmp_path: Path) -> None:
    """The archiver shares the decoder: the same bound, and the ``--max-ahead`` flag."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    required = ["--bootstrap-servers", "b", "--topic", "t", "--lake", "l", "--time-column", TIME]
    assert parser.parse_args(required).max_ahead == "1d"
    assert parser.parse_args([*required, "--max-ahead", "2h"]).max_ahead == "2h"
    now = int(time.time() * SECOND)
    times = [now - HOUR, now + 30 * DAY, now - HOUR + 1]
    values = [orjson.dumps({TIME: t // 1000, "event_id": i}) for i, t in enumerate(times)]
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    placed = await kafka.aproduce(topic, values, partition=0)
    lake = ParquetLakeWriter(tmp_path / "lake", TIME)
    arch = Archiver(
        kafka.bootstrap, topic, lake, TIME, schema=SCHEMA, stop_at="latest", max_ahead="1d"
    )
    summary = await arch.run()
    assert summary.rows == 2 and summary.dead_letters == 1
    letters = lake.read_dead_letters()
    assert letters.column("offset").to_pylist() == [placed[1][1]]
    assert "ahead of the wall clock" in letters.column("reason")[0].as_py()
