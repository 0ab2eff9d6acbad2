"""Edge case (issue 12): messages the archiver dead-lettered were invisible to the lambda job's
dead-letter output and metrics.

Verdict before: a lake-only run and a ``LambdaSource(handoff="offsets")`` over an archived topic
emitted none of the archived dead letters (the stream starts after them), and the run's
``dead_letters`` metric did not count them. After: the lake source emits its pinned commits'
dead letters (original reason, position ``topic=… partition=… offset=… (archived: …)``), counted,
exactly once across a kill and a restore from a checkpoint; Parquet and Iceberg lakes.

Oracles: the (partition, offset) of every bad message as the broker acknowledged it when produced,
and the event ids of the good ones.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

import lambdasource as ls
from lake.writer import IcebergLakeWriter, ParquetLakeWriter
from tests.integration.test_archiver import SCHEMA, TIME, archiver, encode, rows
from tests.services.kafka import KafkaService

pytestmark = pytest.mark.kafka

POSITION = re.compile(r"topic=(\S+) partition=(\d+) offset=(\d+)")
BAD = [
    b"{not json",
    b"[1, 2, 3]",
    orjson.dumps({"event_time": "yesterday-ish", "event_id": 999_001}),
    orjson.dumps({"event_id": 999_002}),  # no event time at all
]


async def produce_mixed(
    kafka: KafkaService, topic: str, good: pa.Table, every: int, stamped: bool = False
) -> tuple[Counter[int], Counter[tuple[int, int]], dict[tuple[int, int], bytes]]:
    """``good`` over partitions 0 and 1 with a bad message after every ``every`` good ones;
    returns the good ids, the (partition, offset) of each bad message, and its value.
    ``stamped``: record timestamps are the event times (a bad message: its predecessor's)."""
    values = encode(good)
    ids = good.column("event_id").to_pylist()
    ms = [t // 1000 for t in good.column(TIME).cast(pa.int64()).to_pylist()]
    bad_at: Counter[tuple[int, int]] = Counter()
    bad_values: dict[tuple[int, int], bytes] = {}
    for p in (0, 1):
        mine = [i for i in range(len(values)) if i % 2 == p]
        mixed: list[bytes] = []
        stamps: list[int | None] = []
        is_bad: list[bytes | None] = []
        for j, i in enumerate(mine):
            mixed.append(values[i])
            stamps.append(ms[i])
            is_bad.append(None)
            if j % every == every - 1:
                bad = BAD[(j // every + p) % len(BAD)]
                mixed.append(bad)
                stamps.append(ms[i])
                is_bad.append(bad)
        placed = await kafka.aproduce(
            topic, mixed, partition=p, timestamps_ms=stamps if stamped else None
        )
        for (partition, offset), bad_value in zip(placed, is_bad, strict=True):
            if bad_value is not None:
                bad_at[(partition, offset)] += 1
                bad_values[(partition, offset)] = bad_value
    return Counter(ids), bad_at, bad_values


def lake_writer(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if kind == "parquet":
        return ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=64)
    props = request.getfixturevalue("iceberg_catalog_props")
    return IcebergLakeWriter("db.archive", props, TIME)


def lake_source(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> ls.Source:
    if kind == "parquet":
        return ls.ParquetLake(tmp_path / "lake", TIME, batch_size=64)
    props = request.getfixturevalue("iceberg_catalog_props")
    return ls.IcebergLake("db.archive", props, TIME, batch_size=64)


class Logged(ls.CollectSink):
    """A CollectSink that logs its batches and every checkpoint flush, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Any]] = []

    async def write(self, batch: pa.RecordBatch) -> None:
        await super().write(batch)
        self.log.append(("batch", batch))

    async def flush(self) -> None:
        self.log.append(("flush", None))

    def prefixes(self, count: Any) -> list[Counter[Any]]:
        """What was delivered before each flush (starting with nothing)."""
        out: list[Counter[Any]] = [Counter()]
        seen: Counter[Any] = Counter()
        for kind, payload in self.log:
            if kind == "flush":
                out.append(Counter(seen))
            else:
                seen.update(count(payload))
        return out


def good_ids(batch: pa.RecordBatch | pa.Table) -> list[int]:
    return batch.column("event_id").to_pylist() if batch.num_rows else []


def positions(batch: pa.RecordBatch | pa.Table) -> list[tuple[int, int]]:
    out = []
    for text in batch.column("_position").to_pylist():
        match = POSITION.search(text)
        assert match is not None, text
        out.append((int(match.group(2)), int(match.group(3))))
    return out


def build(
    lake: ls.Source,
    topic: str | None,
    kafka: KafkaService,
    main: ls.CollectSink,
    dead: ls.CollectSink,
    checkpoints: str | None = None,
) -> ls.Pipeline:
    source: ls.Source = lake
    if topic is not None:
        stream = ls.KafkaStream(
            topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"
        )
        source = ls.LambdaSource(
            lake, stream, handoff="offsets", out_of_orderness="1m", idle_timeout="300ms"
        )
    p = ls.Pipeline(
        checkpoints=None
        if checkpoints is None
        else ls.Checkpoints(checkpoints, interval="50ms", keep=100)
    )
    src = p.source(source)
    src.sink(main)
    src.dead_letters().sink(dead)
    return p


@pytest.mark.parametrize("kind", ["parquet", "iceberg"])
async def test_archived_dead_letters_reach_the_job(
    kafka: KafkaService, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    topic = await asyncio.to_thread(kafka.new_topic, 2)
    first = rows(300, seed=1)
    good1, bad1, values1 = await produce_mixed(kafka, topic, first, every=23)
    writer = lake_writer(kind, tmp_path, request)
    summary = await archiver(kafka, topic, writer, commit_rows=60).run()
    assert summary.dead_letters == sum(bad1.values()) and summary.commits >= 2
    stored = writer.read_dead_letters()
    reasons = {
        (p, o): r
        for p, o, r in zip(
            stored.column("partition").to_pylist(),
            stored.column("offset").to_pylist(),
            stored.column("reason").to_pylist(),
            strict=True,
        )
    }
    # more after the archive: the stream reads these (and dead-letters their bad ones itself)
    second = rows(200, seed=2, first_id=10_000)
    good2, bad2, _ = await produce_mixed(kafka, topic, second, every=17)

    # lake alone: the archived dead letters, with their reasons, marked archived
    main, dead = ls.CollectSink(), ls.CollectSink()
    p = build(lake_source(kind, tmp_path, request), None, kafka, main, dead)
    await asyncio.wait_for(p.run(), 60)
    got = dead.table()
    assert Counter(positions(got)) == bad1
    assert Counter(good_ids(main.table())) == good1
    assert p.metrics()["dead_letters"] == sum(bad1.values())
    for position, error, value in zip(
        positions(got),
        got.column("_error").to_pylist(),
        got.column("value").to_pylist(),
        strict=True,
    ):
        assert error == reasons[position] and error
        assert value == values1[position]
    assert all("(archived: lake=" in text for text in got.column("_position").to_pylist())
    assert set(got.column("topic").to_pylist()) == {topic}

    # lambda source, exact offsets: archived + stream dead letters, each bad message once
    main, dead = ls.CollectSink(), ls.CollectSink()
    p = build(lake_source(kind, tmp_path, request), topic, kafka, main, dead)
    await asyncio.wait_for(p.run(), 60)
    got = dead.table()
    assert Counter(positions(got)) == bad1 + bad2
    assert Counter(good_ids(main.table())) == good1 + good2
    assert p.metrics()["dead_letters"] == sum((bad1 + bad2).values())
    archived = [
        pos
        for pos, text in zip(positions(got), got.column("_position").to_pylist(), strict=True)
        if "(archived:" in text
    ]
    assert Counter(archived) == bad1


async def test_archived_dead_letters_exactly_once_across_a_restore(
    kafka: KafkaService, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Cancelled after checkpoints, restored from the newest: what each sink saw before the
    restored checkpoint's flush plus what the restored run delivered is every message once."""
    topic = await asyncio.to_thread(kafka.new_topic, 2)
    good1, bad1, _ = await produce_mixed(kafka, topic, rows(600, seed=3), every=7)
    writer = lake_writer("parquet", tmp_path, request)
    await archiver(kafka, topic, writer, commit_rows=150).run()
    good2, bad2, _ = await produce_mixed(kafka, topic, rows(300, seed=4, first_id=50_000), every=11)
    url = (tmp_path / "ckpt").as_uri()

    def slow_lake() -> ls.Source:
        return ls.ParquetLake(tmp_path / "lake", TIME, batch_size=16)

    def make(main: Logged, dead: Logged) -> ls.Pipeline:
        stream = ls.KafkaStream(
            topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"
        )
        source = ls.LambdaSource(
            slow_lake(), stream, handoff="offsets", out_of_orderness="1m", idle_timeout="300ms"
        )
        p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="50ms", keep=100))
        src = p.source(source)

        def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
            import time

            time.sleep(0.01)
            return batch

        src.map(slow).sink(main)
        src.dead_letters().sink(dead)
        return p

    main1, dead1 = Logged(), Logged()
    task = asyncio.create_task(make(main1, dead1).run())
    try:
        for _ in range(1000):
            await asyncio.sleep(0.02)
            if sum(1 for k, _ in main1.log if k == "flush") >= 3:
                break
        assert not task.done(), "the first run ended before it could be cancelled"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert dead1.batches, "no dead letter reached the sink before the cancel"
    main2, dead2 = Logged(), Logged()
    await asyncio.wait_for(make(main2, dead2).run(), 90)
    main_after = Counter(good_ids(main2.table()))
    dead_after = Counter(positions(dead2.table())) if dead2.batches else Counter()
    mains = main1.prefixes(good_ids)
    deads = dead1.prefixes(positions)
    assert any(
        m + main_after == good1 + good2 and d + dead_after == bad1 + bad2
        for m, d in zip(mains, deads, strict=False)
    ), (
        f"no checkpoint prefix + restored run is every message once: restored run delivered "
        f"{sum(dead_after.values())} dead letters, prefixes {[sum(d.values()) for d in deads]}, "
        f"bad {sum((bad1 + bad2).values())}"
    )


async def test_timestamp_handoff_leaves_re_read_dead_letters_to_the_stream(
    kafka: KafkaService, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Timestamp handoff: the stream re-reads the archived topic from the cutoff's offsets and
    dead-letters the bad messages there itself; the lake emits only the archived ones before
    those offsets — every bad message once, every good one once."""
    topic = await asyncio.to_thread(kafka.new_topic, 2)
    first = rows(400, seed=5).sort_by(TIME)
    good1, bad1, _ = await produce_mixed(kafka, topic, first, every=9, stamped=True)
    writer = lake_writer("parquet", tmp_path, request)
    await archiver(kafka, topic, writer, commit_rows=100).run()
    later = rows(100, seed=6, first_id=20_000, days=1).sort_by(TIME)
    shifted = pa.array(
        [t + 5 * 86_400_000_000 for t in later.column(TIME).cast(pa.int64()).to_pylist()],
        pa.int64(),
    ).cast(later.schema.field(TIME).type)
    later = later.set_column(0, TIME, shifted)
    good2, bad2, _ = await produce_mixed(kafka, topic, later, every=13, stamped=True)
    stream = ls.KafkaStream(
        topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"
    )
    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME, batch_size=64),
        stream,
        handoff="timestamp",
        cutoff=first.column(TIME)[200].as_py(),  # mid-archive: the stream re-reads half of it
        out_of_orderness="1m",
        idle_timeout="300ms",
    )
    main, dead = ls.CollectSink(), ls.CollectSink()
    p = ls.Pipeline()
    src = p.source(source)
    src.sink(main)
    src.dead_letters().sink(dead)
    await asyncio.wait_for(p.run(), 60)
    got = dead.table()
    assert Counter(positions(got)) == bad1 + bad2
    assert Counter(good_ids(main.table())) == good1 + good2
    archived = [t for t in got.column("_position").to_pylist() if "(archived:" in t]
    assert 0 < len(archived) < sum(bad1.values())  # the stream took over mid-archive
