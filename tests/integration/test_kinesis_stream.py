"""KinesisStream against moto's Kinesis server (real HTTP), with every-record oracles: the multiset of
event ids read equals the one put (none lost, none duplicated), per user (partition key) ids come
in put order (parent shard before child), no record is at or below a watermark emitted before it,
and watermarks never regress."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from lambdasource.errors import ConfigError, StreamError, StreamGapError
from lambdasource.sources.alignment import AlignmentGroup
from lambdasource.sources.kafka.emit import DriveHooks
from lambdasource.sources.kinesis import KinesisStream
from lambdasource.timeutil import MS
from tests.integration.kinesis_helpers import (
    BASE_MS,
    Recorder,
    config_for,
    put_events,
    stream_args,
)
from tests.services.kinesis import KinesisService
from tests.services.kinesis_proxy import KinesisProxy, kinesis_proxy  # noqa: F401
from tests.services.kinesis_reshard import kinesis_resharding  # noqa: F401

pytestmark = [
    pytest.mark.kinesis,
    pytest.mark.timeout(90),
    pytest.mark.usefixtures("kinesis_resharding"),
]


def events(
    first: int, count: int, *, users: int = 12, spread_ms: int = 40, seed: int = 1
) -> list[tuple[int, int, str]]:
    """Event ids first.. with times rising 10 ms per id, out of order by up to ``spread_ms``."""
    rng = random.Random(seed * 7919 + first)
    return [
        (i, BASE_MS + i * 10 + rng.randrange(spread_ms), f"user{rng.randrange(users)}")
        for i in range(first, first + count)
    ]


def check_oracle(recorder: Recorder, put: list[tuple[int, int, str]]) -> None:
    assert Counter(recorder.ids()) == Counter(event_id for event_id, _, _ in put)
    by_user: dict[str, list[int]] = defaultdict(list)
    for event_id, _, user in recorder.rows:
        by_user[user].append(event_id)
    expected: dict[str, list[int]] = defaultdict(list)
    for event_id, _, user in put:
        expected[user].append(event_id)
    assert dict(by_user) == dict(expected), "per key, records must come in put order"
    assert recorder.late == [] and recorder.regressions == []


async def drive_until(
    stream: KinesisStream, recorder: Recorder, count: int, hooks: DriveHooks | None = None
) -> asyncio.Task[None]:
    task = asyncio.create_task(stream.drive(recorder, hooks))
    waiter = asyncio.create_task(recorder.wait_for(count))
    done, _ = await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    await waiter
    return task


async def stop(task: asyncio.Task[None], stream: KinesisStream) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await stream.close()


async def test_bounded_read_out_of_order_duplicates_empty_shard_and_dead_letters(
    kinesis: KinesisService,
) -> None:
    name = kinesis.new_stream(3)
    put = events(0, 120, spread_ms=200)
    put_events(kinesis, name, put, shard=0)
    put_events(kinesis, name, put[:5], shard=1)  # the same events again: duplicates, kept
    put_events(kinesis, name, events(1000, 30, spread_ms=200), shard=1)
    client = kinesis.client()
    bad = client.put_record(
        StreamName=name, Data=b"{not json", PartitionKey="x", ExplicitHashKey="1"
    )
    stream = KinesisStream(
        name, stop_at="latest", out_of_orderness="300ms", **stream_args(kinesis, max_records=17)
    )
    recorder = Recorder()
    await stream.open()
    after = events(5000, 5)
    put_events(kinesis, name, after)  # after the stream opened: beyond stop_at="latest"
    await stream.drive(recorder)
    await stream.close()
    expected = put + put[:5] + events(1000, 30, spread_ms=200)
    assert Counter(recorder.ids()) == Counter(event_id for event_id, _, _ in expected)
    assert recorder.late == [] and recorder.regressions == []
    [(_, position)] = recorder.dead
    assert position == f"stream={name} shard=shardId-000000000000 sequence={bad['SequenceNumber']}"
    assert (
        stream.final_watermark() == max(t for _, t, _ in put + events(1000, 30, spread_ms=200)) * MS
    )
    shards = stream.metrics()["shards"]
    assert shards[2]["records"] == 0 and all(s["finished"] for s in shards.values())
    assert shards[0]["dead_letters"] == 1 and shards[0]["records"] == 121


async def test_split_and_merge_during_a_run_lose_and_repeat_nothing(
    kinesis: KinesisService,
) -> None:
    """Shard 0 is split while its reader is behind (10 records per call), then a child and shard
    1 are merged: children are read only after their parents ended, per key in put order."""
    name = kinesis.new_stream(2)
    client = kinesis.client()
    put = events(0, 60)
    put_events(kinesis, name, put)
    stream = KinesisStream(
        name,
        out_of_orderness="100ms",
        shard_discovery="100ms",
        idle_timeout="10s",
        **stream_args(kinesis, max_records=10, calls_per_second=10.0),
    )
    recorder = Recorder()
    await stream.open()
    task = await drive_until(stream, recorder, 10)
    more = events(60, 60)
    put_events(kinesis, name, more)
    put += more
    listed = {s["ShardId"]: s for s in client.list_shards(StreamName=name)["Shards"]}
    low = int(listed["shardId-000000000000"]["HashKeyRange"]["StartingHashKey"])
    high = int(listed["shardId-000000000000"]["HashKeyRange"]["EndingHashKey"])
    client.split_shard(
        StreamName=name,
        ShardToSplit="shardId-000000000000",
        NewStartingHashKey=str((low + high) // 2),
    )
    after_split = events(120, 60)
    put_events(kinesis, name, after_split)
    put += after_split
    await recorder.wait_for(len(put) - 30)
    # shard 3 (upper half of 0) and shard 1 are adjacent
    client.merge_shards(
        StreamName=name,
        ShardToMerge="shardId-000000000003",
        AdjacentShardToMerge="shardId-000000000001",
    )
    after_merge = events(180, 60)
    put_events(kinesis, name, after_merge)
    put += after_merge
    await recorder.wait_for(len(put))
    await asyncio.sleep(0.3)  # nothing more may arrive
    metrics = stream.metrics()
    await stop(task, stream)
    check_oracle(recorder, put)
    shards = metrics["shards"]
    assert sorted(shards) == [0, 1, 2, 3, 4]
    assert all(shards[n]["finished"] for n in (0, 1, 3))
    assert all(shards[n]["records"] > 0 for n in (0, 1, 2, 3, 4))
    assert metrics["shards_added"] == [2, 3, 4]


async def test_a_stream_opened_again_reads_every_record_once(kinesis: KinesisService) -> None:
    """The state bootstrap opens the stream for its pass and again for the stream phase: the
    second run starts from no splits or readers (it read through the first run's readers, whose
    client was closed: an aiobotocore error)."""
    name = kinesis.new_stream(2)
    put = events(0, 60)
    put_events(kinesis, name, put)
    stream = KinesisStream(name, stop_at="latest", out_of_orderness="100ms", **stream_args(kinesis))
    await stream.open()
    await stream.close()
    recorder = Recorder()
    await stream.run(recorder)
    check_oracle(recorder, put)


async def test_a_bounded_run_snapshot_does_not_finish_its_shards(kinesis: KinesisService) -> None:
    """A bounded run stops its shards at their end when it opened; its snapshot must not call
    them finished (they are open): restored later, every shard reads what arrived since. A
    snapshot that did left them unread for good (found as a lost shard after a state bootstrap
    and a restart)."""
    name = kinesis.new_stream(2)
    put = events(0, 40)
    put_events(kinesis, name, put)
    first = KinesisStream(name, stop_at="latest", out_of_orderness="100ms", **stream_args(kinesis))
    recorder = Recorder()
    await first.run(recorder)
    check_oracle(recorder, put)
    snapshot = first.snapshot()
    more = events(100, 40)
    put_events(kinesis, name, more)
    second = KinesisStream(name, stop_at="latest", out_of_orderness="100ms", **stream_args(kinesis))
    second.restore(snapshot)
    resumed = Recorder()
    await second.run(resumed)
    check_oracle(resumed, more)


async def test_restart_from_a_snapshot_reads_every_record_once(kinesis: KinesisService) -> None:
    """Killed at the 6th fetch (a split's parent half read, children waiting), restored from the
    snapshot taken just before that fetch was emitted: the union is what was put, once."""
    name = kinesis.new_stream(2)
    client = kinesis.client()
    put = events(0, 80)
    put_events(kinesis, name, put)
    client.split_shard(
        StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**126)
    )
    more = events(80, 80)
    put_events(kinesis, name, more)
    put += more
    args = stream_args(kinesis, max_records=9)
    first = KinesisStream(name, stop_at="latest", out_of_orderness="100ms", **args)
    recorder = Recorder()
    snapshots: list[dict[str, Any]] = []

    def barrier(_: Any) -> None:
        if len(recorder.positions) == 5:
            snapshots.append(first.snapshot())
            raise RuntimeError("killed")

    recorder.on_emit = barrier
    with pytest.raises(RuntimeError, match="killed"):
        await first.run(recorder)
    [snapshot] = snapshots
    assert all(isinstance(v, str) for v in snapshot["positions"].values())
    second = KinesisStream(name, stop_at="latest", out_of_orderness="100ms", **args)
    second.restore(snapshot)
    resumed = Recorder()
    await second.run(resumed)
    union = Recorder(rows=recorder.rows + resumed.rows)
    check_oracle(union, put)
    assert resumed.late == [] and resumed.regressions == []


async def test_throttling_and_expired_iterators_through_the_proxy(
    kinesis: KinesisService,
    kinesis_proxy: KinesisProxy,  # noqa: F811
) -> None:
    name = kinesis.new_stream(2)
    put = events(0, 150)
    put_events(kinesis, name, put)
    # during open (the retained-range probes)
    kinesis_proxy.inject("ProvisionedThroughputExceededException", 2, shard="shardId-000000000001")
    stream = KinesisStream(
        name,
        stop_at="latest",
        out_of_orderness="100ms",
        **stream_args(
            kinesis, max_records=20, config=config_for(kinesis, kinesis_proxy.endpoint_url)
        ),
    )
    recorder = Recorder()
    await stream.open()
    kinesis_proxy.inject("ProvisionedThroughputExceededException", 4, shard="shardId-000000000001")
    kinesis_proxy.inject("ExpiredIteratorException", 2, shard="shardId-000000000000")
    await stream.drive(recorder)
    await stream.close()
    check_oracle(recorder, put)
    metrics = stream.metrics()
    assert metrics["throttled"] >= 4 and metrics["iterators_renewed"] >= 2
    assert kinesis_proxy.injected["ProvisionedThroughputExceededException"] == 6


async def test_alignment_holds_the_shard_ahead_per_record(kinesis: KinesisService) -> None:
    """Shard 1's events are 10 s ahead of shard 0's: with max_drift 1 s its rows beyond the
    release bound are held (the shard is not read meanwhile) and every emitted row is within the
    bound at its emit."""
    name = kinesis.new_stream(2)
    behind = [(i, BASE_MS + i * 100, "a") for i in range(100)]
    ahead = [(1000 + i, BASE_MS + 10_000 + i * 100, "b") for i in range(100)]
    put_events(kinesis, name, behind, shard=0)
    put_events(kinesis, name, ahead, shard=1)
    aligner = AlignmentGroup(max_drift=1_000 * MS)
    stream = KinesisStream(name, stop_at="latest", **stream_args(kinesis, max_records=10))
    recorder = Recorder()
    beyond: list[tuple[int, float]] = []
    held_seen: list[int] = []

    def check_bound(batch: Any) -> None:
        bound = aligner.release_bound(0)
        top = max(batch.column("event_time").cast("int64").to_pylist())
        if top > bound:
            beyond.append((top, bound))
        held_seen.append(stream.metrics()["shards"][1]["held_rows"])

    async def on_progress() -> None:
        mark, idle = stream.combined_watermark()
        if mark is not None:
            aligner.note_output(mark)
            await recorder.emit_watermark(mark, idle)

    recorder.on_emit = check_bound
    await stream.open()
    await stream.drive(recorder, DriveHooks(aligner=aligner, on_progress=on_progress))
    await stream.close()
    check_oracle(recorder, behind + ahead)
    assert beyond == []
    assert max(held_seen) > 0
    assert aligner.metrics()["splits"]["stream:partition=1"]["holds"] >= 1


async def test_starts_by_time_position_and_latest(kinesis: KinesisService) -> None:
    name = kinesis.new_stream(2)
    early = events(0, 20)
    placed = put_events(kinesis, name, early)
    await asyncio.sleep(0.05)
    since = time.time_ns() // 1000
    await asyncio.sleep(0.05)
    late = events(100, 20)
    put_events(kinesis, name, late)

    by_time = KinesisStream(name, stop_at="latest", start=since, **stream_args(kinesis))
    recorder = Recorder()
    await by_time.run(recorder)
    assert sorted(recorder.ids()) == [i for i, _, _ in late]
    assert all(lookup["verified"] for lookup in by_time.lookups.values())

    # {shard id or number: next sequence}: the others from the trim horizon
    shard0 = [
        (i, seq) for (i, _, _), (sid, seq) in zip(early, placed, strict=True) if sid.endswith("0")
    ]
    from_position = KinesisStream(
        name, stop_at="latest", start={"shardId-000000000000": shard0[3][1]}, **stream_args(kinesis)
    )
    recorder = Recorder()
    await from_position.run(recorder)
    skipped = {i for i, _ in shard0[:3]}
    assert Counter(recorder.ids()) == Counter(i for i, _, _ in early + late if i not in skipped)

    latest = KinesisStream(name, start="latest", **stream_args(kinesis))
    recorder = Recorder()
    await latest.open()
    task = asyncio.create_task(latest.drive(recorder))
    await asyncio.sleep(0.2)
    newest = events(500, 10)
    put_events(kinesis, name, newest)
    await recorder.wait_for(10)
    await stop(task, latest)
    assert sorted(recorder.ids()) == [i for i, _, _ in newest]

    # a position beyond a closed shard's end: the stream was recreated, never a silent start
    kinesis.client().split_shard(
        StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**126)
    )
    beyond = KinesisStream(name, start={0: 10_000}, **stream_args(kinesis))
    with pytest.raises(
        StreamGapError,
        match=r"stream=.* shard=shardId-000000000000: start sequence number 10000 is beyond",
    ):
        await beyond.open()


async def test_idle_shard_lets_the_watermark_through_only_when_caught_up(
    kinesis: KinesisService,
) -> None:
    name = kinesis.new_stream(2)
    put_events(kinesis, name, events(0, 30), shard=0)
    stream = KinesisStream(name, idle_timeout="300ms", **stream_args(kinesis))
    recorder = Recorder()
    await stream.open()
    task = await drive_until(stream, recorder, 30)
    await asyncio.sleep(0.8)
    metrics = stream.metrics()
    await stop(task, stream)
    assert metrics["shards"][1]["idle"] and metrics["shards"][0]["idle"]
    assert (
        metrics["stream_idle"]
        and metrics["stream_watermark"] == max(t for _, t, _ in events(0, 30)) * MS
    )
    assert recorder.watermarks[-1] == metrics["stream_watermark"]


async def test_unknown_stream_and_unreachable_endpoint(kinesis: KinesisService) -> None:
    stream = KinesisStream("no-such-stream", **stream_args(kinesis))
    with pytest.raises(
        StreamError,
        match=rf"stream=no-such-stream: not found on the Kinesis endpoint {kinesis.endpoint_url}",
    ):
        await stream.open()
    cfg = config_for(kinesis, "http://127.0.0.1:9")
    offline = KinesisStream(
        "s", **stream_args(kinesis, config=type(cfg)(**{**cfg.__dict__, "retries": 0}))
    )
    with pytest.raises(
        StreamError, match=r"stream=s: cannot reach the Kinesis endpoint http://127.0.0.1:9"
    ):
        await offline.open()


async def test_a_start_naming_a_shard_the_stream_lacks_and_an_empty_name_are_errors(
    kinesis: KinesisService,
) -> None:
    """``start={7: …}`` on a 2-shard stream names shard 7 (it was ignored: every shard read from
    its trim horizon), as ``shards=[7]`` does; an empty stream name is refused at once."""
    name = await asyncio.to_thread(kinesis.new_stream, 2)
    stream = KinesisStream(name, start={7: 1, "shardId-000000000001": 1}, **stream_args(kinesis))
    with pytest.raises(StreamError, match=r"start names shard\(s\) \[7\].*it has \[0, 1\]"):
        await stream.open()
    with pytest.raises(ConfigError, match="stream_name must be a non-empty string"):
        KinesisStream("", **stream_args(kinesis))


async def test_watermark_carries_across_a_merge(kinesis: KinesisService) -> None:
    """Shard 3 (behind: times T..T+0.5 s) and shard 1 (ahead: T+100 s, slow to read) merge into
    4, whose records (T+0.2 s..) lie within out_of_orderness of shard 3's. The first parent to end
    holds the stream at its watermark until the child starts (else the child's records are
    late), and the child starts from it (else the stream's watermark regresses)."""
    name = kinesis.new_stream(2)
    client = kinesis.client()
    client.split_shard(
        StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**126)
    )
    ahead = [(i, BASE_MS + 100_000 + i, f"a{i}") for i in range(60)]
    behind = [(100 + i, BASE_MS + i * 100, f"b{i}") for i in range(6)]
    put_events(kinesis, name, ahead, shard=1)
    put_events(kinesis, name, [(200 + i, BASE_MS + 100_000 + i, "c") for i in range(5)], shard=2)
    put_events(kinesis, name, behind, shard=3)
    client.merge_shards(
        StreamName=name,
        ShardToMerge="shardId-000000000003",
        AdjacentShardToMerge="shardId-000000000001",
    )
    child = [(300 + i, BASE_MS + 200 + i * 10, f"b{i}") for i in range(5)]
    put_events(kinesis, name, child, shard=4)
    stream = KinesisStream(
        name, stop_at="latest", out_of_orderness="1s", **stream_args(kinesis, max_records=5)
    )
    recorder = Recorder()
    await stream.run(recorder)
    put = ahead + behind + child + [(200 + i, BASE_MS + 100_000 + i, "c") for i in range(5)]
    assert Counter(recorder.ids()) == Counter(i for i, _, _ in put)
    assert recorder.late == [] and recorder.regressions == []
    assert stream.metrics()["shards"][4]["carried_watermark"] == (BASE_MS + 500 - 1000) * MS


async def test_raw_values_with_arrival_time_and_a_copy_for_one_shard(
    kinesis: KinesisService,
) -> None:
    name = kinesis.new_stream(2)
    before = time.time_ns() // 1000
    put = events(0, 10)
    placed = put_events(kinesis, name, put)
    after = time.time_ns() // 1000
    stream = KinesisStream(
        name, format="raw", stop_at="latest", config=config_for(kinesis), poll_interval="20ms"
    )
    assert stream.schema is not None and stream.schema.names == ["value", "timestamp"]
    one = stream.for_partitions([1])
    batches: list[Any] = []

    class Out(Recorder):
        async def emit(self, batch: Any, position: str | None = None) -> None:
            batches.append(batch)

    await one.run(Out())
    values = [v for b in batches for v in b.column("value").to_pylist()]
    on_shard_1 = [i for (i, _, _), (sid, _) in zip(put, placed, strict=True) if sid.endswith("1")]
    assert sorted(orjson.loads(v)["id"] for v in values) == on_shard_1 and on_shard_1
    stamps = [t for b in batches for t in b.column("timestamp").cast("int64").to_pylist()]
    assert all(before // 1000 * 1000 - 1000 <= t <= after + 1000 for t in stamps)
    assert sorted(one.splits) == [1]


async def test_restart_with_rows_held_by_alignment(kinesis: KinesisService) -> None:
    """Killed while shard 1 holds rows beyond the alignment bound: the snapshot carries them
    (sequence numbers as strings), the restored stream holds them again and releases them once."""
    name = kinesis.new_stream(2)
    behind = [(i, BASE_MS + i * 100, "a") for i in range(80)]
    ahead = [(1000 + i, BASE_MS + 5_000 + i * 100, "b") for i in range(40)]
    put_events(kinesis, name, behind, shard=0)
    put_events(kinesis, name, ahead, shard=1)

    def hooks_for(stream: KinesisStream, recorder: Recorder) -> DriveHooks:
        aligner = AlignmentGroup(max_drift=500 * MS)

        async def on_progress() -> None:
            mark, idle = stream.combined_watermark()
            if mark is not None:
                aligner.note_output(mark)
                await recorder.emit_watermark(mark, idle)

        return DriveHooks(aligner=aligner, on_progress=on_progress)

    args = stream_args(kinesis, max_records=10)
    first = KinesisStream(name, stop_at="latest", **args)
    recorder = Recorder()
    snapshots: list[dict[str, Any]] = []

    def barrier(_: Any) -> None:
        if first.metrics()["shards"][1]["held_rows"] and len(recorder.positions) >= 3:
            snapshots.append(first.snapshot())
            raise RuntimeError("killed")

    recorder.on_emit = barrier
    await first.open()
    with pytest.raises(RuntimeError, match="killed"):
        await first.drive(recorder, hooks_for(first, recorder))
    await first.close()
    [snapshot] = snapshots
    assert snapshot["held"][1]["offsets"] and all(
        isinstance(o, str) for o in snapshot["held"][1]["offsets"]
    )
    second = KinesisStream(name, stop_at="latest", **args)
    second.restore(snapshot)
    resumed = Recorder()
    await second.open()
    assert second.metrics()["shards"][1]["held_rows"] == len(snapshot["held"][1]["offsets"])
    await second.drive(resumed, hooks_for(second, resumed))
    await second.close()
    union = Recorder(rows=recorder.rows + resumed.rows)
    check_oracle(union, behind + ahead)


async def test_children_of_a_latest_start_are_read_from_their_beginning(
    kinesis: KinesisService,
) -> None:
    """start='latest' applies to the shards listed at open; a child made by a later split is
    read from its trim horizon (records put before the stream listed it are not skipped)."""
    name = kinesis.new_stream(1)
    put_events(kinesis, name, events(0, 5))  # before the stream: not read
    stream = KinesisStream(
        name, start="latest", shard_discovery="200ms", **stream_args(kinesis, max_records=10)
    )
    recorder = Recorder()
    await stream.open()
    task = asyncio.create_task(stream.drive(recorder))
    await asyncio.sleep(0.1)
    kinesis.client().split_shard(
        StreamName=name, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127)
    )
    put = events(100, 30)
    put_events(kinesis, name, put)  # on the children, before the stream lists them
    await recorder.wait_for(len(put))
    await asyncio.sleep(0.2)
    await stop(task, stream)
    check_oracle(recorder, put)


async def test_a_bounded_shard_ends_only_on_an_empty_answer_at_the_tip(
    kinesis: KinesisService,
) -> None:
    """One PutRecords of 40 records arrives within a millisecond: every partial answer (5 a call)
    says MillisBehindLatest 0 though records remain; the shard must not end before they are."""
    name = kinesis.new_stream(1)
    put = events(0, 40)
    kinesis.client().put_records(
        StreamName=name,
        Records=[
            {"Data": orjson.dumps({"event_time": t, "id": i, "user": u}), "PartitionKey": u}
            for i, t, u in put
        ],
    )
    stream = KinesisStream(
        name, stop_at="latest", out_of_orderness="1s", **stream_args(kinesis, max_records=5)
    )
    recorder = Recorder()
    await stream.run(recorder)
    check_oracle(recorder, put)


def _open_shards(client: Any, name: str) -> list[dict[str, Any]]:
    shards = client.list_shards(StreamName=name)["Shards"]
    return sorted(
        (s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]),
        key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]),
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_resharding_while_producing(kinesis: KinesisService, seed: int) -> None:
    """Eight rounds of a random split or merge of open shards while events are put and the
    stream reads (slowly: 10 records a call): every event once, per key in put order, no late
    record, no regression."""
    rng = random.Random(seed)
    name = kinesis.new_stream(2)
    client = kinesis.client()
    stream = KinesisStream(
        name,
        out_of_orderness="200ms",
        shard_discovery="100ms",
        idle_timeout="30s",
        **stream_args(kinesis, max_records=10, calls_per_second=20.0),
    )
    recorder = Recorder()
    await stream.open()
    task = asyncio.create_task(stream.drive(recorder))
    put: list[tuple[int, int, str]] = []
    for round_ in range(8):
        batch = events(round_ * 40, 40, users=20, seed=seed)
        put_events(kinesis, name, batch)
        put += batch
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        shards = _open_shards(client, name)
        if len(shards) >= 2 and rng.random() < 0.5:
            at = rng.randrange(len(shards) - 1)
            client.merge_shards(
                StreamName=name,
                ShardToMerge=shards[at]["ShardId"],
                AdjacentShardToMerge=shards[at + 1]["ShardId"],
            )
        else:
            shard = rng.choice(shards)
            low = int(shard["HashKeyRange"]["StartingHashKey"])
            high = int(shard["HashKeyRange"]["EndingHashKey"])
            client.split_shard(
                StreamName=name,
                ShardToSplit=shard["ShardId"],
                NewStartingHashKey=str(rng.randrange(low + 2, high - 1)),
            )
    final = events(1000, 40, users=20, seed=seed)
    put_events(kinesis, name, final)
    put += final
    await recorder.wait_for(len(put), seconds=60)
    await asyncio.sleep(0.5)
    metrics = stream.metrics()
    await stop(task, stream)
    check_oracle(recorder, put)
    assert len(metrics["shards"]) >= 10
