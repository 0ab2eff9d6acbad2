"""ShardReader against moto's Kinesis server (real HTTP), faults through the proxy.

Oracles: the sequence numbers and payloads read equal those put, each exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lambdasource.errors import StreamError
from lambdasource.sources.kinesis import (
    KinesisConfig,
    ShardReader,
    first_retained,
    list_shards,
    shard_id,
)
from tests.services.kinesis import KinesisService
from tests.services.kinesis_proxy import KinesisProxy, kinesis_proxy  # noqa: F401

pytestmark = [pytest.mark.kinesis, pytest.mark.timeout(60)]


def config_for(kinesis: KinesisService, endpoint: str | None = None, **extra: Any) -> KinesisConfig:
    return KinesisConfig(
        endpoint_url=endpoint or kinesis.endpoint_url,
        region=kinesis.region,
        access_key_id=kinesis.access_key_id,
        secret_access_key=kinesis.secret_access_key,
        **extra,
    )


def put(kinesis: KinesisService, stream: str, shard: int, values: list[str]) -> list[int]:
    """Put ``values`` on shard ``shard`` (explicit hash key inside its range); their sequences."""
    client = kinesis.client()
    listed = {s["ShardId"]: s for s in client.list_shards(StreamName=stream)["Shards"]}
    low = int(listed[shard_id(shard)]["HashKeyRange"]["StartingHashKey"])
    return [
        int(
            client.put_record(
                StreamName=stream, Data=v.encode(), PartitionKey=v, ExplicitHashKey=str(low)
            )["SequenceNumber"]
        )
        for v in values
    ]


async def read_all(reader: ShardReader, calls: int = 20) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    for _ in range(calls):
        fetch = await reader.read()
        got.extend((r.offset, r.value) for r in fetch.records)
        if not fetch.records and fetch.millis_behind_latest == 0:
            break
    return got


@pytest.fixture
async def client(kinesis: KinesisService) -> AsyncIterator[Any]:
    async with config_for(kinesis).create_client() as made:
        yield made


async def test_seek_kinds_read_exactly_what_was_put(kinesis: KinesisService, client: Any) -> None:
    stream = kinesis.new_stream(2)
    first = put(kinesis, stream, 1, [f"a{i}" for i in range(5)])
    shards = {s.number: s for s in await list_shards(client, stream)}
    assert sorted(shards) == [0, 1] and not shards[1].closed

    reader = ShardReader(client, stream, shards[1], min_interval=0.0)
    await reader.seek("trim_horizon")
    assert await read_all(reader) == [(seq, f"a{i}".encode()) for i, seq in enumerate(first)]
    assert reader.position == first[-1] + 1

    latest = ShardReader(client, stream, shards[1], min_interval=0.0)
    await latest.seek("latest")
    assert await read_all(latest) == []
    later = put(kinesis, stream, 1, ["b0", "b1"])
    assert await read_all(latest) == [(later[0], b"b0"), (later[1], b"b1")]

    at = ShardReader(client, stream, shards[1], min_interval=0.0)
    await at.seek("position", first[3])
    assert [seq for seq, _ in await read_all(at)] == [*first[3:], *later]

    await asyncio.sleep(0.05)
    since = time.time_ns() // 1000
    await asyncio.sleep(0.05)
    timed = put(kinesis, stream, 1, ["c0"])
    by_time = ShardReader(client, stream, shards[1], min_interval=0.0)
    await by_time.seek("time", since)
    assert await read_all(by_time) == [(timed[0], b"c0")]

    empty = ShardReader(client, stream, shards[0], min_interval=0.0)
    assert await first_retained(empty) is None
    probe = ShardReader(client, stream, shards[1], min_interval=0.0)
    assert await first_retained(probe) == first[0]


async def test_ended_only_after_the_closed_shard_is_read_to_its_end(
    kinesis: KinesisService, client: Any
) -> None:
    stream = kinesis.new_stream(1)
    before = put(kinesis, stream, 0, [f"p{i}" for i in range(6)])
    [parent] = await list_shards(client, stream)
    reader = ShardReader(client, stream, parent, limit=4, min_interval=0.0)
    await reader.seek("trim_horizon")
    first = await reader.read()  # the shard is open: never ended
    assert [r.offset for r in first.records] == before[:4] and not first.ended
    low, high = parent.hash_range
    kinesis.client().split_shard(
        StreamName=stream, ShardToSplit=parent.shard_id, NewStartingHashKey=str((low + high) // 2)
    )
    listed = {s.number: s for s in await list_shards(client, stream)}
    assert listed[0].closed and listed[1].parent_ids == (parent.shard_id,)
    # closure learned after the read was sent does not end it; a read after it learned does
    reader.update_shard(listed[0])
    rest = await reader.read()
    assert [r.offset for r in rest.records] == before[4:] and rest.ended
    assert (await reader.read()).ended  # stays ended without another call
    assert reader.calls == 2

    # closed with records not yet read: a caught-up empty read ends it too
    empty_child = ShardReader(client, stream, listed[2], min_interval=0.0)
    await empty_child.seek("trim_horizon")
    assert not (await empty_child.read()).ended  # open
    # a resume beyond the closed shard's last record is ended at once
    resumed = ShardReader(client, stream, listed[0], min_interval=0.0)
    await resumed.seek("position", before[-1] + 1)
    assert resumed.ended


async def test_calls_per_second_stay_within_the_shard_limit(
    kinesis: KinesisService, client: Any
) -> None:
    stream = kinesis.new_stream(1)
    [shard] = await list_shards(client, stream)
    reader = ShardReader(client, stream, shard)
    await reader.seek("trim_horizon")
    started = time.monotonic()
    for _ in range(4):
        await reader.read()
    assert time.monotonic() - started >= 3 * 0.2 - 0.01
    assert reader.calls == 4


async def test_throttling_and_expired_iterators_through_the_proxy(
    kinesis: KinesisService,
    kinesis_proxy: KinesisProxy,  # noqa: F811
) -> None:
    stream = kinesis.new_stream(2)
    values = [f"v{i}" for i in range(9)]
    sequences = put(kinesis, stream, 1, values)
    async with config_for(kinesis, kinesis_proxy.endpoint_url).create_client() as client:
        shards = {s.number: s for s in await list_shards(client, stream)}
        reader = ShardReader(client, stream, shards[1], limit=3, min_interval=0.0)
        await reader.seek("trim_horizon")
        got = [(r.offset, r.value) for r in (await reader.read()).records]
        kinesis_proxy.inject("ProvisionedThroughputExceededException", 3, shard=shards[1].shard_id)
        kinesis_proxy.inject("ProvisionedThroughputExceededException", 5, shard=shards[0].shard_id)
        got += [(r.offset, r.value) for r in (await reader.read()).records]
        assert reader.throttled == 3
        kinesis_proxy.inject("ExpiredIteratorException", 2, shard=shards[1].shard_id)
        got += await read_all(reader)
        assert reader.iterators_renewed == 2
        assert got == [(seq, v.encode()) for seq, v in zip(sequences, values, strict=True)]
        assert kinesis_proxy.injected["ExpiredIteratorException"] == 2
        # an expired iterator before anything was read re-seeks the original kind
        fresh = ShardReader(client, stream, shards[1], min_interval=0.0)
        await fresh.seek("trim_horizon")
        kinesis_proxy.inject("ExpiredIteratorException", 1, shard=shards[1].shard_id)
        assert [seq for seq, _ in await read_all(fresh)] == sequences
        # anything else is a StreamError naming stream, shard and sequence
        kinesis_proxy.inject("AccessDeniedException", 1, shard=shards[1].shard_id)
        with pytest.raises(StreamError, match=rf"stream={stream} shard=shardId-000000000001"):
            await reader.read()


async def test_unknown_stream_and_unreachable_endpoint_are_one_line_errors(
    kinesis: KinesisService, client: Any
) -> None:
    stream = kinesis.new_stream(1)
    [shard] = await list_shards(client, stream)
    missing = ShardReader(client, "no-such-stream", shard)
    with pytest.raises(StreamError, match=r"stream=no-such-stream .*not found") as caught:
        await missing.seek("trim_horizon")
    assert kinesis.endpoint_url in str(caught.value) and "\n" not in str(caught.value)
    dead = "http://127.0.0.1:9"
    async with config_for(kinesis, dead, connect_timeout=1.0).create_client() as offline:
        reader = ShardReader(offline, stream, shard, retries=1)
        with pytest.raises(StreamError, match=r"cannot reach the Kinesis endpoint"):
            await reader.seek("trim_horizon")
