"""Attack: malformed stream input a user could send, through KafkaStream alone and through the
lambda source (both handoffs).

"Nothing is lost silently": every message is either a record in the main output (with its time
read correctly: ISO-8601 with any offset, naive = UTC, epoch ms) or a dead letter with a reason
and its position; nothing crashes the job, and no time is misread (an overflowing epoch value
must not wrap around into another time).

Oracle: the expected split into good records (with their exact UTC µs) and dead letters is
written out by hand per message below.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.writer import ParquetLakeWriter
from lambdasource.timeutil import HOUR
from tests.integration.ordered import SCHEMA, TIME
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
T0_MS = T0 // 1000


def msg(event_id: int, time: Any, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, TIME: time, "user_id": 1, "amount": 1.0, **extra})


# (message, expected time in µs UTC or None when it must be a dead letter)
CASES: list[tuple[bytes, int | None]] = [
    (msg(1, "2026-01-01T10:00:00Z"), T0 + 10 * HOUR),
    (msg(2, "2026-01-01T12:00:00+02:00"), T0 + 10 * HOUR),  # an offset: 10:00 UTC
    (msg(3, "2026-01-01T10:00:00"), T0 + 10 * HOUR),  # naive means UTC
    (msg(4, T0_MS + 10 * 3_600_000), T0 + 10 * HOUR),  # epoch ms
    (msg(5, "2026-01-01T10:00:00.123456Z"), T0 + 10 * HOUR + 123_456),
    (msg(6, "2026-01-01T09:00:00-01:00"), T0 + 10 * HOUR),
    (msg(7, "2026-01-01T10:00:00.5+00:00"), T0 + 10 * HOUR + 500_000),
    (b"{not json", None),
    (b"", None),
    (b"[1, 2, 3]", None),
    (b"42", None),
    (b"null", None),
    (msg(20, None), None),  # null time
    (orjson.dumps({"event_id": 21, "user_id": 1}), None),  # no time at all
    (msg(22, "yesterday"), None),
    (msg(23, "2026-13-45T99:00:00Z"), None),
    (msg(24, 10**16), None),  # epoch ms beyond the µs range (year ~318,000): overflow
    (msg(25, -(10**16)), None),
    (msg(26, 1.5e300), None),
    (msg(27, True), None),
    (msg(28, {"nested": 1}), None),
    (msg(29, "2026-01-01T10:00:00Z", user_id="abc"), None),  # not an int64
    (msg(30, "2026-01-01T10:00:00Z", user_id=2**63), None),  # beyond int64
    (msg(31, "2026-01-01T10:00:00Z", amount="NaN-ish"), None),
]
GOOD = {eid: t for eid, t in ((i + 1, t) for i, (_, t) in enumerate(CASES[:7]))}


class Collect(ls.CollectSink):
    pass


def check(main: ls.CollectSink, dead: ls.CollectSink, offset_of: dict[int, int]) -> None:
    out = main.table() if main.batches else pa.table({"event_id": [], TIME: []})
    got = dict(
        zip(
            out.column("event_id").to_pylist(),
            pc.cast(out.column(TIME), pa.int64()).to_pylist(),
            strict=True,
        )
    )
    assert Counter(out.column("event_id").to_pylist()) == Counter(list(GOOD)), got
    assert got == GOOD, "a time was misread"
    letters = dead.table() if dead.batches else None
    n_dead = 0 if letters is None else letters.num_rows
    bad_offsets = sorted(o for i, o in offset_of.items() if CASES[i][1] is None)
    positions = [] if letters is None else letters.column("_position").to_pylist()
    assert n_dead == len(bad_offsets), positions
    seen = sorted(int(str(p).rsplit("offset=", 1)[1].split()[0]) for p in positions)
    assert seen == bad_offsets


async def produce_cases(kafka: KafkaService) -> tuple[str, dict[int, int]]:
    topic = await asyncio.to_thread(kafka.new_topic, 1)
    stamps = [T0_MS + 10 * 3_600_000] * len(CASES)
    placed = await kafka.aproduce(topic, [m for m, _ in CASES], partition=0, timestamps_ms=stamps)
    return topic, {i: off for i, (_, off) in enumerate(placed)}


async def test_stream_alone_routes_every_malformed_message_to_dead_letters(
    kafka: KafkaService,
) -> None:
    topic, offset_of = await produce_cases(kafka)
    p = ls.Pipeline()
    main, dead = Collect(), Collect()
    s = p.source(
        ls.KafkaStream(topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest")
    )
    s.sink(main)
    s.dead_letters().sink(dead)
    await asyncio.wait_for(p.run(), 60)
    check(main, dead, offset_of)


@pytest.mark.parametrize("handoff", ["timestamp", "offsets"])
async def test_lambda_source_routes_every_malformed_message_to_dead_letters(
    kafka: KafkaService, tmp_path: Path, handoff: str
) -> None:
    """A lake with one early record (archived 'offset -1' = nothing of this topic), then the
    malformed topic: the stream side must sort good from bad exactly as alone."""
    topic, offset_of = await produce_cases(kafka)
    early = pa.table(
        {
            TIME: pa.array([T0 + HOUR], pa.timestamp("us", tz="UTC")),
            "event_id": pa.array([1000], pa.int64()),
            "user_id": pa.array([1], pa.int64()),
            "amount": pa.array([1.0]),
        }
    )
    ParquetLakeWriter(tmp_path / "lake", TIME).write(early, offsets={0: 0}, topic=topic)
    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA),
        ls.KafkaStream(topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"),
        handoff=handoff,
        cutoff=T0 + 2 * HOUR if handoff == "timestamp" else None,
        out_of_orderness="5m",
        idle_timeout="200ms",
    )
    p = ls.Pipeline()
    main, dead = Collect(), Collect()
    s = p.source(source)
    s.sink(main)
    s.dead_letters().sink(dead)
    await asyncio.wait_for(p.run(), 60)
    out = main.table()
    ids = out.column("event_id").to_pylist()
    assert ids.count(1000) == 1
    keep = pc.not_equal(out.column("event_id"), 1000)
    only_stream = Collect()
    only_stream.batches = [b for b in out.filter(keep).to_batches() if b.num_rows]
    check(only_stream, dead, offset_of)
