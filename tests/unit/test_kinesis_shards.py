"""Shard ids, listings and lineage; KinesisConfig's environment fallbacks; backoff bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdasource.errors import ConfigError
from lambdasource.sources.kinesis import KinesisConfig, Shard, ShardLineage, shard_id, shard_number
from lambdasource.sources.kinesis.calls import BACKOFF_CAP, backoff_delay


def test_shard_numbers_round_trip_and_reject_other_ids() -> None:
    assert shard_number("shardId-000000000007") == 7
    assert shard_id(7) == "shardId-000000000007"
    for bad in ("shardId-7", "shard-000000000007", "shardId-0000000000071", ""):
        with pytest.raises(ConfigError, match="not a Kinesis shard id"):
            shard_number(bad)


def test_shard_from_listing_keeps_big_sequence_numbers_and_both_parents() -> None:
    big = "49590338271490256608559692538361571095921575989136588898"
    shard = Shard.from_response(
        {
            "ShardId": "shardId-000000000004",
            "ParentShardId": "shardId-000000000001",
            "AdjacentParentShardId": "shardId-000000000002",
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "99"},
            "SequenceNumberRange": {"StartingSequenceNumber": big, "EndingSequenceNumber": big},
        }
    )
    assert shard.starting_sequence == int(big) > 2**63 and shard.closed
    assert shard.parent_numbers == (1, 2) and shard.hash_range == (0, 99)


def _shard(number: int, parents: tuple[int, ...] = ()) -> Shard:
    return Shard(shard_id(number), number, tuple(map(shard_id, parents)), 0, None, (0, 1))


def test_a_child_is_ready_only_after_every_listed_parent_finished() -> None:
    # 0 and 1 open; 0 split into 2, 3; then 3 and 1 merged into 4
    lineage = ShardLineage([_shard(0), _shard(1)])
    added = lineage.update(
        [_shard(0), _shard(1), _shard(2, (0,)), _shard(3, (0,)), _shard(4, (3, 1))]
    )
    assert [s.number for s in added] == [2, 3, 4]
    assert [s.number for s in lineage.ready(set())] == [0, 1]
    assert [s.number for s in lineage.ready({0})] == [1, 2, 3]
    assert [s.number for s in lineage.ready({0, 3})] == [1, 2]
    assert [s.number for s in lineage.ready({0, 1, 3})] == [2, 4]
    assert lineage.ancestors(4) == {0, 1, 3}
    # a parent never listed (trimmed by retention) does not block its child
    assert [s.number for s in ShardLineage([_shard(9, (5,))]).ready(set())] == [9]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_reading_in_ready_order_puts_every_parent_before_its_children(
    operations: list[int], rng: random.Random
) -> None:
    """Random split/merge histories: finishing shards in any order that ready() allows reads
    every shard once, each after all its parents (what per-key order parent-before-child
    needs)."""
    shards = [_shard(0), _shard(1)]
    open_shards = [0, 1]
    for op in operations:
        number = len(shards)
        if op % 2 == 0 or len(open_shards) < 2:  # split
            parent = open_shards.pop(op % len(open_shards))
            shards += [_shard(number, (parent,)), _shard(number + 1, (parent,))]
            open_shards += [number, number + 1]
        else:  # merge two open shards
            first = open_shards.pop(op % len(open_shards))
            second = open_shards.pop(op % len(open_shards))
            shards.append(_shard(number, (first, second)))
            open_shards.append(number)
    lineage = ShardLineage(shards)
    finished: set[int] = set()
    order: list[int] = []
    while len(finished) < len(shards):
        ready = lineage.ready(finished)
        assert ready, "a lineage always has a shard ready until all are finished"
        chosen = rng.choice(ready)
        order.append(chosen.number)
        finished.add(chosen.number)
    assert sorted(order) == list(range(len(shards)))
    position = {number: index for index, number in enumerate(order)}
    for shard in shards:
        for parent in shard.parent_numbers:
            assert position[parent] < position[shard.number]


def test_config_falls_back_to_the_environment_as_botocore_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "AWS_ENDPOINT_URL_KINESIS",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    assert KinesisConfig().resolved_region() == "us-east-1"
    assert KinesisConfig().describe_endpoint() == "kinesis.us-east-1.amazonaws.com"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert KinesisConfig().resolved_region() == "eu-west-1"
    assert KinesisConfig().client_kwargs()["endpoint_url"] == "http://generic:1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://kinesis:2")
    kwargs = KinesisConfig(access_key_id="k", secret_access_key="s").client_kwargs()
    assert kwargs["region_name"] == "eu-central-1" and kwargs["endpoint_url"] == "http://kinesis:2"
    assert kwargs["aws_access_key_id"] == "k" and "aws_session_token" not in kwargs
    assert KinesisConfig(endpoint_url="http://own:3").resolved_endpoint() == "http://own:3"
    with pytest.raises(ConfigError, match="retries"):
        KinesisConfig(retries=-1)


def test_backoff_is_jittered_capped_and_never_zero() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, rng) for attempt in range(40)]
    assert all(0 < delay <= BACKOFF_CAP for delay in delays)
    assert max(delays[:3]) <= 0.2 and max(delays[10:]) > 1.0
