"""Retention on moto's Kinesis, for gap tests (issue 16): moto never trims a shard.

:func:`trim` deletes a shard's oldest records in the in-process server's model (the threaded
server runs in the test process), as Kinesis' retention would: TRIM_HORIZON then starts after
them and ListShards' starting sequence number moves up. (Resharding as Kinesis does it:
``tests.services.kinesis_reshard.kinesis_resharding``.)
"""

from __future__ import annotations


def trim(stream: str, shard_id: str, below: int, *, region: str = "us-east-1") -> int:
    """Simulate retention on the in-process moto server: delete the records of ``shard_id``
    with sequence number < ``below`` (moto never trims); returns how many were deleted."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.kinesis.models import kinesis_backends

    shard = kinesis_backends[DEFAULT_ACCOUNT_ID][region].streams[stream].shards[shard_id]
    doomed = [sequence for sequence in shard.records if sequence < below]
    for sequence in doomed:
        del shard.records[sequence]
    return len(doomed)
