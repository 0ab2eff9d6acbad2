"""KafkaStream against both real brokers (Apache Kafka in the default run, Tansu in -m slow): decoding, dead letters, start positions, bounded
reads, idleness, snapshot/restore and error translation."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lambdasource.errors import StreamError
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.timeutil import MS
from tests.services.brokers import Broker, both_brokers

broker = both_brokers(default=("apache",))

SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("user_id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)
BASE_MS = 1_700_000_000_000
# a verified time start on one partition: the end offset's fetch + one fetch checking the answer
VERIFIED_LOOKUP_PROBES = 2


async def new_topic(broker: Broker, partitions: int = 1) -> str:
    return await asyncio.to_thread(broker.new_topic, partitions)


async def run_bounded(source: ls.Source) -> tuple[pa.Table, pa.Table, ls.CollectSink, ls.Pipeline]:
    p = ls.Pipeline()
    s = p.source(source)
    main = s.sink(ls.CollectSink())
    dead = s.dead_letters().sink(ls.CollectSink())
    assert isinstance(main, ls.CollectSink) and isinstance(dead, ls.CollectSink)
    await p.run()
    return main.table(), dead.table(), main, p


def event(i: int, t_ms: int, *, iso: bool) -> bytes:
    when: Any = (
        datetime.fromtimestamp(t_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        if iso
        else t_ms
    )
    return orjson.dumps({"event_time": when, "user_id": i, "kind": "click", "amount": i * 0.25})


async def test_decode_iso_and_epoch_times_nulls_and_dead_letters(broker: Broker) -> None:
    topic = await new_topic(broker)
    values = [
        event(0, BASE_MS, iso=True),
        event(1, BASE_MS + 1000, iso=False),
        b'{"event_time": "2023-11-14T23:13:22+01:00", "user_id": 2}',  # zone offset, nulls
        b"not json",  # offset 3
        b'{"event_time": "yesterday", "user_id": 4}',  # offset 4: bad time
        b'{"event_time": 1700000005000, "user_id": "five"}',  # offset 5: bad type
        b'{"user_id": 6}',  # offset 6: null event time
        b"[1, 2]",  # offset 7: not an object
    ]
    await broker.aproduce(topic, values, partition=0)
    stream = KafkaStream(
        topic, broker.bootstrap, time_column="event_time", schema=SCHEMA, stop_at="latest"
    )
    table, dead, _, p = await run_bounded(stream)
    assert table.column("user_id").to_pylist() == [0, 1, 2]
    assert table.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    times = table.column("event_time").cast(pa.int64()).to_pylist()
    assert times == [BASE_MS * MS, (BASE_MS + 1000) * MS, 1_700_000_002_000_000]
    assert table.column("kind").to_pylist() == ["click", "click", None]
    by_offset = {
        int(pos.split("offset=")[1].split()[0]): (err, pos)
        for err, pos in zip(
            dead.column("_error").to_pylist(), dead.column("_position").to_pylist(), strict=True
        )
        if "offset=" in pos
    }
    assert set(by_offset) == {3, 4, 5, 6, 7}
    assert "malformed JSON" in by_offset[3][0]
    assert "yesterday" in by_offset[4][0]
    assert "'user_id'" in by_offset[5][0]
    assert "JSON object" in by_offset[7][0]
    assert all(f"topic={topic} partition=0" in pos for _, pos in by_offset.values())
    raw = {
        o: v
        for o, v in zip(dead["offset"].to_pylist(), dead["value"].to_pylist(), strict=True)
        if o is not None
    }
    assert raw[3] == b"not json"
    assert "null event time" in by_offset[6][0]
    assert raw[6] == b'{"user_id": 6}'
    metrics = p.metrics()["sources"]["stream"]
    assert metrics["dead_letters"] == 5
    assert metrics["partitions"][0]["dead_letters"] == 5


async def test_raw_format_and_record_timestamps(broker: Broker) -> None:
    topic = await new_topic(broker)
    stamps = [BASE_MS + 10 * i for i in range(20)]
    await broker.aproduce(topic, [b"v%d" % i for i in range(20)], partition=0, timestamps_ms=stamps)
    stream = KafkaStream(topic, broker.bootstrap, format="raw", stop_at="latest")
    table, dead, sink, _ = await run_bounded(stream)
    assert table.column("value").to_pylist() == [b"v%d" % i for i in range(20)]
    assert table.column("timestamp").cast(pa.int64()).to_pylist() == [s * MS for s in stamps]
    assert dead.num_rows == 0
    assert sink.watermarks[-1] == stamps[-1] * MS  # bounded end: max time read


async def test_start_positions_explicit_offsets_and_latest(broker: Broker) -> None:
    topic = await new_topic(broker, 2)
    await broker.aproduce(topic, [b"a%d" % i for i in range(10)], partition=0)
    await broker.aproduce(topic, [b"b%d" % i for i in range(5)], partition=1)
    stream = KafkaStream(topic, broker.bootstrap, format="raw", stop_at="latest", start={0: 7})
    table, _, _, _ = await run_bounded(stream)
    assert sorted(table.column("value").to_pylist()) == sorted(
        [b"a7", b"a8", b"a9"] + [b"b%d" % i for i in range(5)]
    )
    latest = KafkaStream(topic, broker.bootstrap, format="raw", stop_at="latest", start="latest")
    table, _, _, _ = await run_bounded(latest)
    assert table.num_rows == 0


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    gaps=st.lists(st.integers(0, 5_000), min_size=1, max_size=40),
    pick=st.floats(-0.1, 1.1),
)
def test_timestamp_start_is_verified_or_searched(
    broker: Broker, gaps: list[int], pick: float
) -> None:
    """Start at a time: the first record read is the first whose record timestamp is >= it,
    whatever the broker's offsets_for_times says (Tansu's answer is wrong for old times)."""
    stamps = []
    t = BASE_MS
    for gap in gaps:
        t += gap
        stamps.append(t)
    target_ms = int(stamps[0] + pick * (stamps[-1] - stamps[0]))
    topic = broker.new_topic(1)
    broker.produce(
        topic, [b"%d" % i for i in range(len(stamps))], partition=0, timestamps_ms=stamps
    )
    stream = KafkaStream(
        topic, broker.bootstrap, format="raw", stop_at="latest", start=target_ms * MS
    )
    table, _, _, _ = asyncio.run(run_bounded(stream))
    expected = [b"%d" % i for i, s in enumerate(stamps) if s >= target_ms]
    assert table.column("value").to_pylist() == expected
    lookup = stream.lookups[0]
    assert lookup["offset"] == len(stamps) - len(expected)


async def test_stop_at_latest_reads_exactly_what_was_there(broker: Broker) -> None:
    topic = await new_topic(broker, 3)
    for partition, n in ((0, 300), (1, 0), (2, 57)):  # partition 1 stays empty
        if n:
            await broker.aproduce(
                topic, [event(i, BASE_MS + i, iso=False) for i in range(n)], partition=partition
            )
    stream = KafkaStream(
        topic,
        broker.bootstrap,
        time_column="event_time",
        schema=SCHEMA,
        stop_at="latest",
        max_batch_records=50,
    )
    table, _, sink, p = await run_bounded(stream)
    assert table.num_rows == 357
    assert sink.watermarks[-1] == (BASE_MS + 299) * MS
    parts = p.metrics()["sources"]["stream"]["partitions"]
    assert {k: v["position"] for k, v in parts.items()} == {0: 300, 1: 0, 2: 57}
    assert all(v["finished"] and v["lag"] == 0 for v in parts.values())


async def test_idle_partition_does_not_stall_the_watermark(broker: Broker) -> None:
    """Partition 1 never gets data: once caught up and quiet for idle_timeout it stops holding
    the watermark back; partition 0's watermark goes through."""
    topic = await new_topic(broker, 2)
    await broker.aproduce(
        topic, [event(i, BASE_MS + i * 1000, iso=False) for i in range(100)], partition=0
    )
    stream = KafkaStream(
        topic,
        broker.bootstrap,
        time_column="event_time",
        schema=SCHEMA,
        out_of_orderness="2s",
        idle_timeout="300ms",
    )
    p = ls.Pipeline()
    sink = p.source(stream).sink(ls.CollectSink())
    assert isinstance(sink, ls.CollectSink)
    expected = (BASE_MS + 99_000) * MS - 2_000_000
    task = asyncio.create_task(p.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            if sink.watermarks and sink.watermarks[-1] >= expected:
                break
        assert sink.watermarks and sink.watermarks[-1] == expected
        parts = stream.metrics()["partitions"]
        assert parts[1]["idle"] and parts[1]["watermark"] is None
        # data arriving later on the idle partition makes it active again
        await broker.aproduce(topic, [event(1000, BASE_MS + 500_000, iso=False)], partition=1)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if stream.metrics()["partitions"][1]["records"]:
                break
        assert stream.metrics()["partitions"][1]["records"] == 1
        assert len(sink) == 101
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_snapshot_and_restore_resume_exactly(broker: Broker) -> None:
    topic = await new_topic(broker, 2)
    await broker.aproduce(topic, [b"x%d" % i for i in range(40)], partition=0)
    await broker.aproduce(topic, [b"y%d" % i for i in range(10)], partition=1)
    first = KafkaStream(topic, broker.bootstrap, format="raw", stop_at="latest")
    table1, _, _, _ = await run_bounded(first)
    state = first.snapshot()
    assert state == {"positions": {0: 40, 1: 10}, "held": {}}
    await broker.aproduce(topic, [b"x%d" % i for i in range(40, 55)], partition=0)
    await broker.aproduce(topic, [b"y%d" % i for i in range(10, 12)], partition=1)
    second = KafkaStream(topic, broker.bootstrap, format="raw", stop_at="latest")
    second.restore(state)
    table2, _, _, _ = await run_bounded(second)
    got = table1.column("value").to_pylist() + table2.column("value").to_pylist()
    assert sorted(got) == sorted([b"x%d" % i for i in range(55)] + [b"y%d" % i for i in range(12)])
    assert second.snapshot() == {"positions": {0: 55, 1: 12}, "held": {}}
    # the older form (positions only) still restores
    third = KafkaStream(topic, broker.bootstrap, format="raw", stop_at="latest")
    third.restore({0: 55, 1: 12})
    assert (await run_bounded(third))[0].num_rows == 0


async def test_errors_name_the_topic(broker: Broker) -> None:
    stream = KafkaStream("no-such-topic-xyz", broker.bootstrap, format="raw", stop_at="latest")
    with pytest.raises(StreamError, match="topic=no-such-topic-xyz"):
        await run_bounded(stream)
    topic = await new_topic(broker, 1)
    bad = KafkaStream(topic, broker.bootstrap, format="raw", partitions=[3], stop_at="latest")
    with pytest.raises(StreamError, match=r"partition\(s\) \[3\]"):
        await run_bounded(bad)


async def test_offsets_for_times_answer_is_verified_or_replaced_by_a_search(broker: Broker) -> None:
    """Apache Kafka's offsets_for_times answer passes verification and is used; Tansu answers
    from broker write time (offset 0 for old timestamps): its answer fails verification and a
    binary search over record timestamps replaces it."""
    topic = await new_topic(broker)
    stamps = [BASE_MS + 1000 * i for i in range(200)]
    await broker.aproduce(topic, [b"%d" % i for i in range(200)], partition=0, timestamps_ms=stamps)
    stream = KafkaStream(
        topic, broker.bootstrap, format="raw", stop_at="latest", start=(BASE_MS + 150_500) * MS
    )
    table, _, _, _ = await run_bounded(stream)
    assert table.column("value").to_pylist()[0] == b"151"
    lookup = stream.lookups[0]
    assert lookup["offset"] == 151
    if broker.is_apache:
        assert lookup["broker_answer"] == 151 and lookup["verified"] is True
        assert stream.lookup_probes == VERIFIED_LOOKUP_PROBES
    else:
        assert lookup["broker_answer"] != 151 and lookup["verified"] is False
        assert stream.lookup_probes <= 2 * 8 + 4  # logarithmic, not a scan


@pytest.mark.parametrize("answer", [None, 0, 10, 150, 151, 152, 199, 10_000])
async def test_any_wrong_answer_is_searched_and_end_answers_are_checked(
    broker: Broker, answer: int | None
) -> None:
    """The verification, not the broker, decides: every wrong offsets_for_times answer (too
    early, too late, none, past the end) is replaced by the search on either broker, the right
    one (151) passes; the end is the fetch highwater, whatever end_offsets() said."""
    from aiokafka import AIOKafkaConsumer

    from lambdasource.sources.kafka.positions import OffsetProber, end_offset, offset_for_time

    topic = await new_topic(broker)
    stamps = [BASE_MS + 1000 * i for i in range(200)]
    await broker.aproduce(topic, [b"%d" % i for i in range(200)], partition=0, timestamps_ms=stamps)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        prober = OffsetProber(consumer, topic)
        end = await end_offset(prober, 0, 0)
        got = await offset_for_time(
            prober, 0, BASE_MS + 150_500, begin=0, end=end, broker_answer=answer
        )
    finally:
        await consumer.stop()
    assert end == 200
    listed, highwater = prober.end_answers[0]
    assert highwater == 200 and listed is not None
    assert listed == 200 if broker.is_apache else listed <= 200  # Tansu's lags (by its last batch)
    assert got == (151, answer == 151)


async def test_group_id_commits_positions_for_observability(broker: Broker) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = await new_topic(broker, 2)
    await broker.aproduce(topic, [b"a"] * 7, partition=0)
    await broker.aproduce(topic, [b"b"] * 3, partition=1)
    group = f"g-{topic}"
    stream = KafkaStream(
        topic,
        broker.bootstrap,
        format="raw",
        stop_at="latest",
        group_id=group,
        commit_interval="1h",
    )
    await run_bounded(stream)
    assert stream.commit_failures == 0
    probe = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
    await probe.start()
    try:
        committed = {p: await probe.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await probe.stop()
    assert committed == {0: 7, 1: 3}


async def test_completed_checkpoints_commit_their_offsets_to_the_group(
    broker: Broker, tmp_path: Any
) -> None:
    """With checkpoints, the group's committed offsets are those of a completed checkpoint
    (what a restart resumes from), not merely what was read."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = await asyncio.to_thread(broker.new_topic, 2)
    values = [orjson.dumps({"t": 1_700_000_000_000 + i, "v": i}) for i in range(4_000)]
    await broker.aproduce(topic, values[:2_000], partition=0)
    await broker.aproduce(topic, values[2_000:], partition=1)
    group = f"g-{topic}"
    taken: list[dict[int, int]] = []

    class Recording(KafkaStream):
        def snapshot(self) -> dict[str, Any]:
            state = super().snapshot()
            taken.append(state["positions"])  # nothing is held without alignment
            return state

    stream = Recording(
        topic,
        broker.bootstrap,
        time_column="t",
        schema=pa.schema([("t", pa.int64()), ("v", pa.int64())]),
        group_id=group,
        max_batch_records=50,
    )
    p = ls.Pipeline(checkpoints=ls.Checkpoints(str(tmp_path / "ckpt"), interval="50ms"))
    p.source(stream).sink(ls.CollectSink())
    task = asyncio.create_task(p.run(restore=None))
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
    await consumer.start()
    try:
        committed: dict[int, int | None] = {}
        for _ in range(600):  # until a checkpoint taken after the catch-up has completed (30 s)
            await asyncio.sleep(0.05)
            committed = {q: await consumer.committed(TopicPartition(topic, q)) for q in (0, 1)}
            if committed == {0: 2_000, 1: 2_000}:
                break
            for q, offset in committed.items():  # read one partition at a time (not atomic)
                if offset is not None:  # only ever a checkpoint's position for that partition
                    assert offset in {positions[q] for positions in taken}, (q, offset, taken)
        assert committed == {0: 2_000, 1: 2_000}
        assert committed in taken
    finally:
        await consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
