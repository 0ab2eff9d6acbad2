"""Adversarial edge cases found by a tester who did not write the code, after the first round
of issue 12's fixes. Each test failed on that code (its docstring says what happened and what a
careful user expects); all pass since the conversions became exact in nested values and in the
lambda source's cast to the lake's schema (``lambdasource/sources/conform.py``), and a user
decoder that raises is retried per message.

Oracles see every record: the event ids delivered with their values, and the Kafka offset of
every dead letter (acknowledged by the broker when produced).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from tests.edges.test_stream_values import Collect, dead_positions, run_stream
from tests.services.kafka import KafkaService

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
T0_MS = T0 // 1000
HOUR = 3_600_000_000
TS = pa.timestamp("us", tz="UTC")
TIME = "event_time"


def msg(event_id: int, **values: Any) -> bytes:
    return orjson.dumps({TIME: "2026-01-01T10:00:00Z", "event_id": event_id, **values})


async def stream_rows_and_dead(
    kafka: KafkaService, schema: pa.Schema, values: list[bytes], fetch: int = 10_000
) -> tuple[dict[int, Any], dict[int, str], list[tuple[int, int]]]:
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    placed = await kafka.aproduce(topic, values, partition=0)
    table, dead = await run_stream(
        ls.KafkaStream(
            topic, kafka.bootstrap, TIME, schema=schema, stop_at="latest", max_batch_records=fetch
        )
    )
    ids = table.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)), "an event delivered twice"
    return {r["event_id"]: r for r in table.to_pylist()}, dead, placed


# -- stream values: nested columns are not held to "only exact conversions" -----------------


@pytest.mark.kafka
async def test_nested_integers_are_truncated_not_dead_lettered(kafka: KafkaService) -> None:
    """README: "a value that does not convert *exactly* to its column (`3.0` fits an int64 as 3;
    `3.7` … do not)" is a dead letter. That holds for a top-level int64 column, but the same
    value one level down — ``struct<a: int64>`` ``{"a": 3.7}``, ``list<int64>`` ``[1, 2.5]``,
    ``map<string, int64>`` ``{"k": 1.5}``, ``struct<a: int8>`` ``{"a": -1.5}`` — is silently
    truncated (3, [1, 2], 1, -1) and delivered as a good row: a misread record, no count.
    Expected: those four messages are dead letters naming the column; exact ones (``{"a": 3}``,
    ``[1, 2.0]``) pass."""
    schema = pa.schema(
        [
            pa.field(TIME, TS),
            pa.field("event_id", pa.int64()),
            pa.field("s", pa.struct([pa.field("a", pa.int64())])),
            pa.field("l", pa.list_(pa.int64())),
            pa.field("m", pa.map_(pa.string(), pa.int64())),
            pa.field("b", pa.struct([pa.field("a", pa.int8())])),
        ]
    )
    values = [
        msg(0, s={"a": 3}, l=[1, 2.0]),  # exact: passes
        msg(1, s={"a": 3.7}),
        msg(2, l=[1, 2.5]),
        msg(3, m={"k": 1.5}),
        msg(4, b={"a": -1.5}),
    ]
    rows, dead, placed = await stream_rows_and_dead(kafka, schema, values)
    assert set(rows) == {0}, {i: (r["s"], r["l"], r["m"], r["b"]) for i, r in rows.items()}
    assert rows[0]["s"] == {"a": 3} and rows[0]["l"] == [1, 2]
    assert set(dead) == {placed[i][1] for i in (1, 2, 3, 4)}


@pytest.mark.kafka
async def test_float32_out_of_range_becomes_infinity(kafka: KafkaService) -> None:
    """README: "a number out of the column's range" is a dead letter. In a ``float32`` column
    ``1e39`` (beyond float32's 3.4e38) is stored as ``inf`` and ``-1e39`` as ``-inf`` — a
    misread value in a good row, uncounted (sums and means become inf). An int64 column
    dead-letters 1e19 for the same reason. Expected: dead letters naming the column and value;
    ``0.5`` passes."""
    schema = pa.schema(
        [pa.field(TIME, TS), pa.field("event_id", pa.int64()), pa.field("x", pa.float32())]
    )
    values = [msg(0, x=0.5), msg(1, x=1e39), msg(2, x=-1e39)]
    rows, dead, placed = await stream_rows_and_dead(kafka, schema, values)
    assert {i: r["x"] for i, r in rows.items()} == {0: 0.5}
    assert set(dead) == {placed[1][1], placed[2][1]}


@pytest.mark.kafka
async def test_fractional_days_are_not_truncated_into_a_date(kafka: KafkaService) -> None:
    """A ``date32`` column (days since the epoch) given ``20000.5`` stored 2024-10-04 (the
    fraction truncated, uncounted). Expected: a dead letter; ``20000.0`` and ``20000`` pass."""
    schema = pa.schema(
        [pa.field(TIME, TS), pa.field("event_id", pa.int64()), pa.field("day", pa.date32())]
    )
    values = [msg(0, day=20000), msg(1, day=20000.0), msg(2, day=20000.5)]
    rows, dead, placed = await stream_rows_and_dead(kafka, schema, values)
    assert {i: r["day"].isoformat() for i, r in rows.items()} == {
        0: "2024-10-04",
        1: "2024-10-04",
    }
    assert set(dead) == {placed[2][1]}


@pytest.mark.kafka
async def test_nested_timestamp_epoch_ms_is_read_as_microseconds(kafka: KafkaService) -> None:
    """README: JSON times are "ISO-8601 … epoch milliseconds as integers or floats", and the
    decoder's docstring says "every timestamp-typed field" accepts them. A timestamp inside a
    struct (``{"ctx": {"seen": 1767225600000}}``) is taken as **microseconds**: stored as
    1970-01-21T10:53:45.6Z instead of 2026-01-01T00:00:00Z — a misread record, no dead letter,
    no count (the same value at top level is read as ms). An ISO string there is dead-lettered
    instead. Expected: the nested time read as epoch ms (or ISO), like every other time; if
    nested times are not supported, a dead letter — never a silently shifted time."""
    schema = pa.schema(
        [
            pa.field(TIME, TS),
            pa.field("event_id", pa.int64()),
            pa.field("ctx", pa.struct([pa.field("seen", TS)])),
        ]
    )
    values = [msg(0, ctx={"seen": T0_MS}), msg(1, ctx={"seen": "2026-01-01T00:00:00Z"})]
    rows, dead, placed = await stream_rows_and_dead(kafka, schema, values)
    seen = {
        i: None
        if r["ctx"] is None
        else pc.cast(pa.scalar(r["ctx"]["seen"], TS), pa.int64()).as_py()
        for i, r in rows.items()
    }
    # every row that passes carries the true time; nothing is shifted by a factor of 1000
    assert all(v == T0 for v in seen.values()), seen
    assert sorted([*seen, *(i for i in range(2) if placed[i][1] in dead)]) == [0, 1]


# -- a stream value not castable to the lake's declared type (both handoffs) ----------------


async def lambda_run(
    kafka: KafkaService,
    tmp_path: Path,
    handoff: str,
    lake_type: pa.DataType,
    stream_type: pa.DataType,
    values: list[Any],
) -> tuple[dict[int, Any], dict[int, str], list[tuple[int, int]]]:
    """Lake: one early row (event_id 1000, v null) with ``v: lake_type``; stream: one message per
    value (event_id = index) with ``v: stream_type``, after the lake's offsets/cutoff."""
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    messages = [
        orjson.dumps({TIME: T0_MS + 3 * 3_600_000 + i, "event_id": i, "v": v})
        for i, v in enumerate(values)
    ]
    placed = await kafka.aproduce(topic, messages, partition=0)
    lake_schema = pa.schema(
        [pa.field(TIME, TS), pa.field("event_id", pa.int64()), pa.field("v", lake_type)]
    )
    early = pa.table(
        {
            TIME: pa.array([T0 + HOUR], TS),
            "event_id": pa.array([1000], pa.int64()),
            "v": pa.array([None], lake_type),
        }
    )
    ParquetLakeWriter(tmp_path / "lake", TIME).write(early, offsets={0: 0}, topic=topic)
    stream_schema = pa.schema(
        [pa.field(TIME, TS), pa.field("event_id", pa.int64()), pa.field("v", stream_type)]
    )
    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME, schema=lake_schema),
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
    await asyncio.wait_for(p.run(), 30)
    out = main.table()
    ids = out.column("event_id").to_pylist()
    assert Counter(ids).most_common(1)[0][1] == 1, "an event delivered twice"
    rows = dict(zip(ids, out.column("v").to_pylist(), strict=True))
    return rows, dead_positions(dead), placed


@pytest.mark.kafka
@pytest.mark.parametrize("handoff", ["offsets", "timestamp"])
async def test_lake_cast_rounds_decimals(kafka: KafkaService, tmp_path: Path, handoff: str) -> None:
    """Stream ``amount: float64``, lake ``amount: decimal128(10, 2)``. The stream value 0.125
    (a third decimal digit) reaches the job as ``Decimal('0.12')``: rounded silently on the cast
    to the lake's type. The stream decoder itself dead-letters 0.125 in a decimal(10, 2) column
    ("a value that does not convert exactly"), and the README says a stream value that cannot be
    cast to the lake's declared type is a dead letter. Expected: 0.125 → dead letter with its
    offset; 3.75 → Decimal('3.75')."""
    rows, dead, placed = await lambda_run(
        kafka, tmp_path, handoff, pa.decimal128(10, 2), pa.float64(), [3.75, 0.125]
    )
    assert rows == {1000: None, 0: Decimal("3.75")}, rows
    assert set(dead) == {placed[1][1]}


@pytest.mark.kafka
@pytest.mark.parametrize("handoff", ["offsets", "timestamp"])
async def test_lake_cast_turns_integers_into_true(
    kafka: KafkaService, tmp_path: Path, handoff: str
) -> None:
    """Stream ``flag: int64``, lake ``flag: bool``. The stream values 2 and -7 arrive as
    ``True`` (any non-zero integer): a misread record, no dead letter. The decoder refuses even
    1 in a bool column; the cast to the lake's type accepts anything. Expected: 0 → False,
    1 → True at most; 2 and -7 dead letters (they do not convert exactly)."""
    rows, dead, placed = await lambda_run(
        kafka, tmp_path, handoff, pa.bool_(), pa.int64(), [0, 1, 2, -7]
    )
    assert {k: v for k, v in rows.items() if k in (2, 3)} == {}, rows
    assert {placed[2][1], placed[3][1]} <= set(dead)


@pytest.mark.kafka
@pytest.mark.parametrize("handoff", ["offsets", "timestamp"])
async def test_lake_cast_to_float32_overflows_to_infinity(
    kafka: KafkaService, tmp_path: Path, handoff: str
) -> None:
    """Stream ``v: float64``, lake ``v: float32``: 1e39 reaches the job as ``inf`` (out of the
    lake type's range, no dead letter). Expected: a dead letter at its offset, like 1e19 into an
    int64 lake column (which is dead-lettered)."""
    rows, dead, placed = await lambda_run(
        kafka, tmp_path, handoff, pa.float32(), pa.float64(), [0.5, 1e39]
    )
    assert rows == {1000: None, 0: 0.5}, rows
    assert set(dead) == {placed[1][1]}


@pytest.mark.kafka
@pytest.mark.parametrize("handoff", ["offsets", "timestamp"])
async def test_stream_string_for_a_lake_timestamp_column(
    kafka: KafkaService, tmp_path: Path, handoff: str
) -> None:
    """The lake has a second timestamp column (``v: timestamp[us, UTC]``, e.g. ``created_at``);
    the stream schema declares it ``string`` (JSON carries ISO strings). The whole job stops with
    ``SchemaError: time column has type string; expected a timestamp or int64 epoch ms`` — it
    names neither the column (``v``, not the time column ``event_time``) nor the topic, and
    nothing is read. README: "a stream value that cannot be cast to the lake's declared type"
    is a dead letter, "the other records pass". Expected: ISO strings cast to the lake's
    timestamp (or, at the least, per-value dead letters for those that do not parse); the
    unparseable ``"junk"`` a dead letter at its offset."""
    rows, dead, placed = await lambda_run(
        kafka,
        tmp_path,
        handoff,
        TS,
        pa.string(),
        ["2026-01-01T10:00:00Z", "junk"],
    )
    assert set(rows) == {1000, 0}, rows
    assert set(dead) == {placed[1][1]}


# -- a user decoder that raises on one malformed message --------------------------------


def strict_decoder(values: list[bytes | None]) -> pa.RecordBatch:
    """A user's decoder that rejects a malformed message by raising (the natural way)."""
    rows = [orjson.loads(v) for v in values if v is not None]  # raises on b"{broken"
    return pa.RecordBatch.from_pylist(
        [{TIME: r[TIME], "event_id": r["event_id"]} for r in rows],
        schema=pa.schema([pa.field(TIME, pa.int64()), pa.field("event_id", pa.int64())]),
    )


@pytest.mark.kafka
async def test_user_decoder_that_raises_stops_the_job(
    kafka: KafkaService,
) -> None:
    """README: "records a user function rejects" are dead letters, and "each message is judged
    alone: the result never depends on the other messages of its fetch". With
    ``format=<callable>`` (the decoder docstring: "if it raises, every message of the call is an
    error"), a decoder that raises on one malformed message instead stops the whole job:
    ``SourceError: source=stream failed: KeyError('Field "event_time" does not exist in
    schema')`` — at any fetch size (1 or 10,000); nothing is delivered, and the message names
    neither the decoder, the partition nor the offset. Expected: the 5 good records delivered
    and one dead letter (the broken message's offset) for every fetch size — at the least, the
    fetch's messages as dead letters, never a crash on a KeyError."""
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    values = [orjson.dumps({TIME: T0_MS + i, "event_id": i}) for i in range(5)]
    values.insert(2, b"{broken")
    placed = await kafka.aproduce(topic, values, partition=0)
    results = {}
    for fetch in (10_000, 1):
        table, dead = await run_stream(
            ls.KafkaStream(
                topic,
                kafka.bootstrap,
                TIME,
                format=strict_decoder,
                stop_at="latest",
                max_batch_records=fetch,
                max_ahead=None,
            )
        )
        results[fetch] = (Counter(table.column("event_id").to_pylist()), sorted(dead))
    assert results[1] == (Counter(range(5)), [placed[2][1]])
    assert results[10_000] == results[1], results
