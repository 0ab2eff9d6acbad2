"""Commit records of a Kinesis archiver: sequence numbers beyond 64 bits as decimal strings, the
shard lineage, and Kafka records unchanged (issue 16, KINESIS_CONTRACT)."""

from __future__ import annotations

import orjson

from lambdasource.checkpoints.codec import from_json, to_json
from lambdasource.sources.lake.commits import (
    CommitRecord,
    ShardRecord,
    merge_offsets,
    merge_shards,
    stream_kind_of,
)
from lambdasource.sources.lake.pinned import LakeState

BIG = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898  # 56 digits

LINEAGE = {
    0: ShardRecord("shardId-000000000000", closed=True, finished=True),
    1: ShardRecord("shardId-000000000001"),
    2: ShardRecord("shardId-000000000002", parents=(0,)),
}


def kinesis_record(sequence: int = 3) -> CommitRecord:
    return CommitRecord(
        sequence=sequence,
        offsets={0: BIG + 1, 1: 7, 2: BIG + 99},
        topic="clicks",
        high_watermark=123,
        event_times={0: 100, 1: 200},
        stream_kind="kinesis",
        shards=dict(LINEAGE),
    )


def test_kinesis_record_round_trips_with_decimal_strings() -> None:
    record = kinesis_record()
    raw = orjson.loads(record.to_json())
    assert raw["stream_kind"] == "kinesis"
    assert raw["offsets"] == {"0": str(BIG + 1), "1": "7", "2": str(BIG + 99)}
    assert raw["shards"]["2"] == {
        "id": "shardId-000000000002",
        "parents": [0],
        "closed": False,
        "finished": False,
    }
    again = CommitRecord.from_json(record.to_json(), where="test")
    assert again == record


def test_kinesis_snapshot_properties_round_trip() -> None:
    record = kinesis_record()
    again = CommitRecord.from_snapshot_properties(record.snapshot_properties(), where="test")
    assert again is not None
    assert again.offsets == record.offsets
    assert again.stream_kind == "kinesis"
    assert again.shards == record.shards


def test_kafka_record_format_unchanged() -> None:
    record = CommitRecord(sequence=1, offsets={0: 5, 1: 9}, topic="t")
    raw = orjson.loads(record.to_json())
    assert raw["offsets"] == {"0": 5, "1": 9}
    assert "stream_kind" not in raw and "shards" not in raw
    again = CommitRecord.from_json(record.to_json(), where="test")
    assert again.stream_kind == "kafka" and again.shards == {}
    assert record.describe_positions() == "recorded offsets (commit 1, topic t): 0:5, 1:9"


def test_lineage_merges_and_pinned_state_carries_it_through_a_checkpoint() -> None:
    older = CommitRecord(
        sequence=1,
        offsets={0: 3},
        topic="clicks",
        stream_kind="kinesis",
        shards={0: ShardRecord("shardId-000000000000")},
    )
    newer = kinesis_record(2)
    commits = [older, newer]
    assert merge_offsets(commits)[0] == BIG + 1
    assert merge_shards(commits)[0].finished
    assert stream_kind_of(commits) == "kinesis"
    state = LakeState.of_commits(commits)
    restored = LakeState.from_dict(from_json(to_json(state.to_dict()), "test"))
    assert restored == state
    recorded = restored.commit_record()
    assert recorded is not None
    assert recorded.stream_kind == "kinesis" and recorded.shards == newer.shards
    assert "kinesis stream clicks" in recorded.describe_positions()
