"""Make moto's Kinesis reshard like Kinesis does, for tests of splits and merges (issue 16).

Measured on moto 5.2 (in-process ``ThreadedMotoServer``): ``split_shard`` re-puts the parent's
records (they reappear renumbered in whichever shard's hash range comes first — the closed
parent itself), ``merge_shards`` copies both parents' records into the child, and ``put_record``
routes a key to the first shard whose range holds it, closed or not — so after a split every new
record still lands in the closed parent and the children stay empty. Real Kinesis keeps a closed
shard's records where they are and routes new records to open shards only.

:func:`realistic_resharding` patches the server's model classes (the server runs in this process)
for one test: records stay in their parent, new records go to the open shard of their hash key.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import pytest


@pytest.fixture
def realistic_resharding(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.kinesis import models

    original_for_key = models.Stream.get_shard_for_key
    original_split = models.Stream.split_shard
    original_merge = models.Stream.merge_shards

    def open_shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
        shard = original_for_key(self, partition_key, explicit_hash_key)  # validates
        if shard is None or shard.is_open:
            return shard
        key = (
            int(explicit_hash_key)
            if explicit_hash_key
            else int(hashlib.md5(partition_key.encode()).hexdigest(), 16)
        )
        for candidate in self.shards.values():
            if candidate.is_open and candidate.starting_hash <= key <= candidate.ending_hash:
                return candidate
        return shard

    def keep_records(original: Any, *shard_ids: str) -> Any:
        def call(self: Any, *args: Any) -> None:
            parents = [self.shards[shard_id] for shard_id in args[: len(shard_ids)]]
            kept = [parent.records for parent in parents]
            for parent in parents:
                parent.records = OrderedDict()  # nothing to move: records stay in the parent
            try:
                original(self, *args)
            finally:
                for parent, records in zip(parents, kept, strict=True):
                    parent.records = records

        return call

    monkeypatch.setattr(models.Stream, "get_shard_for_key", open_shard_for_key)
    monkeypatch.setattr(models.Stream, "split_shard", keep_records(original_split, "shard"))
    monkeypatch.setattr(models.Stream, "merge_shards", keep_records(original_merge, "a", "b"))
