"""Resharding on moto as Kinesis does it: parents keep their records, children start empty.

moto 5.2's ``split_shard`` *moves* the parent's records into the children (re-put by hash key,
new sequence numbers) and ``merge_shards`` *copies* both parents' records into the child (so every
record of a merged parent exists twice). Real Kinesis does neither: a closed parent keeps its
records until retention trims them and a child holds only records put after the reshard — the
reason readers must finish a parent before its children. The fixture ``kinesis_resharding``
replaces both operations of moto's in-process model (the threaded server runs in the test process)
with that behaviour, validation as moto's, for the test's duration. Puts go to the open shard of the key's hash (moto also
matches closed parents). Everything else (closing the parents, ListShards' ``ParentShardId``/``AdjacentParentShardId``, ending sequence numbers) is
moto's own.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import pytest


def _split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
    from moto.kinesis.exceptions import InvalidArgumentError
    from moto.kinesis.models import Shard

    new_start = int(new_starting_hash_key)
    shard = self.shards[shard_to_split]
    if not shard.starting_hash < new_start < shard.ending_hash or not shard.is_open:
        raise InvalidArgumentError(message=f"cannot split {shard_to_split} at {new_start}")
    last = max(self.shards.values(), key=attrgetter("_shard_id"))._shard_id
    for number, low, high in (
        (last + 1, shard.starting_hash, new_start - 1),
        (last + 2, new_start, shard.ending_hash),
    ):
        child = Shard(number, starting_hash=low, ending_hash=high, parent=shard.shard_id)
        self.shards[child.shard_id] = child
    shard.is_open = False


def _merge_shards(self: Any, shard_to_merge: str, adjacent_shard_to_merge: str) -> None:
    from moto.kinesis.exceptions import InvalidArgumentError
    from moto.kinesis.models import Shard

    first, second = self.shards[shard_to_merge], self.shards[adjacent_shard_to_merge]
    if first.ending_hash + 1 == second.starting_hash:
        low, high = first.starting_hash, second.ending_hash
    elif second.ending_hash + 1 == first.starting_hash:
        low, high = second.starting_hash, first.ending_hash
    else:
        raise InvalidArgumentError(adjacent_shard_to_merge)
    last = max(self.shards.values(), key=attrgetter("_shard_id"))._shard_id
    child = Shard(
        last + 1,
        starting_hash=low,
        ending_hash=high,
        parent=first.shard_id,
        adjacent_parent=second.shard_id,
    )
    self.shards[child.shard_id] = child
    first.is_open = second.is_open = False


def _shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
    """The *open* shard whose hash range holds the key (moto also matches closed parents,
    which then keep receiving records after a reshard)."""
    from moto.utilities.utils import md5_hash

    if explicit_hash_key:
        key = int(explicit_hash_key)
    else:
        key = int(md5_hash(partition_key.encode("utf-8")).hexdigest(), 16)
    for shard in self.shards.values():
        if shard.is_open and shard.starting_hash <= key <= shard.ending_hash:
            return shard
    return None


@pytest.fixture
def kinesis_resharding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split and merge on the in-process moto server behave as on Kinesis (module docstring)."""
    from moto.kinesis.models import Stream

    monkeypatch.setattr(Stream, "split_shard", _split_shard)
    monkeypatch.setattr(Stream, "merge_shards", _merge_shards)
    monkeypatch.setattr(Stream, "get_shard_for_key", _shard_for_key)
