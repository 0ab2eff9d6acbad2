"""Kinesis shards in the Kafka stream's integer model, and their lineage.

A shard id is ``shardId-`` + 12 digits; its number (:func:`shard_number`) plays the Kafka
partition. Children made by a split or merge get new numbers, so a number is never reused within
a stream. Sequence numbers are Python ints of any size (real Kinesis: ~56 digits).

:class:`ShardLineage` orders reading: a child shard is *ready* only once every parent it names is
finished (read to its end) or was never listed (trimmed by retention: nothing of it is left to
read), so per partition key every record of the parent comes before any of the child.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError

_SHARD_ID = re.compile(r"shardId-(\d{12})")


def shard_number(shard_id: str) -> int:
    """``"shardId-000000000007"`` → 7; anything else is a ConfigError naming it."""
    match = _SHARD_ID.fullmatch(shard_id)
    if match is None:
        raise ConfigError(
            f"not a Kinesis shard id: {shard_id!r} (expected 'shardId-' and 12 digits)"
        )
    return int(match.group(1))


def shard_id(number: int) -> str:
    """7 → ``"shardId-000000000007"`` (the inverse of :func:`shard_number`)."""
    if not 0 <= number < 10**12:
        raise ConfigError(f"shard number out of range: {number}")
    return f"shardId-{number:012d}"


@dataclass(frozen=True)
class Shard:
    """One shard as ListShards describes it. ``ending_sequence`` is set once the shard is closed
    (split or merged away: no record is added after it); ``starting_sequence`` is the start of
    its sequence range (not necessarily a retained record's)."""

    shard_id: str
    number: int
    parent_ids: tuple[str, ...]
    starting_sequence: int
    ending_sequence: int | None
    hash_range: tuple[int, int]

    @property
    def closed(self) -> bool:
        return self.ending_sequence is not None

    @property
    def parent_numbers(self) -> tuple[int, ...]:
        return tuple(shard_number(parent) for parent in self.parent_ids)

    @classmethod
    def from_response(cls, item: dict[str, Any]) -> Shard:
        """From one element of ListShards' ``Shards``."""
        sequences = item.get("SequenceNumberRange", {})
        ending = sequences.get("EndingSequenceNumber")
        hashes = item.get("HashKeyRange", {})
        parents = tuple(
            parent
            for parent in (item.get("ParentShardId"), item.get("AdjacentParentShardId"))
            if parent
        )
        return cls(
            shard_id=item["ShardId"],
            number=shard_number(item["ShardId"]),
            parent_ids=parents,
            starting_sequence=int(sequences.get("StartingSequenceNumber", 0)),
            ending_sequence=None if ending is None else int(ending),
            hash_range=(int(hashes.get("StartingHashKey", 0)), int(hashes.get("EndingHashKey", 0))),
        )


async def list_shards(client: Any, stream: str) -> list[Shard]:
    """Every shard ListShards reports for ``stream`` (all pages: ``NextToken``), by number.
    Errors propagate (callers wrap them with :func:`~.calls.call_with_retries`)."""
    shards: list[Shard] = []
    response = await client.list_shards(StreamName=stream)
    while True:
        shards.extend(Shard.from_response(item) for item in response.get("Shards", []))
        token = response.get("NextToken")
        if not token:
            break
        response = await client.list_shards(NextToken=token)  # no StreamName with a token
    return sorted(shards, key=lambda shard: shard.number)


class ShardLineage:
    """The shards known so far and their parent links (see module docstring)."""

    def __init__(self, shards: Iterable[Shard] = ()) -> None:
        self.shards: dict[int, Shard] = {}
        self.update(shards)

    def update(self, shards: Iterable[Shard]) -> list[Shard]:
        """Add or refresh shards (a newer listing); returns those not known before. A shard that
        a listing no longer reports (trimmed) stays known."""
        added = []
        for shard in shards:
            if shard.number not in self.shards:
                added.append(shard)
            self.shards[shard.number] = shard
        return added

    def ready(self, finished: set[int]) -> list[Shard]:
        """Shards not in ``finished`` whose every parent is finished or was never listed, by
        number."""
        return [
            shard
            for number, shard in sorted(self.shards.items())
            if number not in finished
            and all(
                parent in finished or parent not in self.shards for parent in shard.parent_numbers
            )
        ]

    def children(self, number: int) -> list[Shard]:
        """Shards that name ``number`` as a parent."""
        return [s for s in self.shards.values() if number in s.parent_numbers]

    def ancestors(self, number: int) -> set[int]:
        """Every known shard ``number`` descends from (parents, their parents …)."""
        seen: set[int] = set()
        todo = list(self.shards[number].parent_numbers) if number in self.shards else []
        while todo:
            parent = todo.pop()
            if parent in seen:
                continue
            seen.add(parent)
            if parent in self.shards:
                todo.extend(self.shards[parent].parent_numbers)
        return seen
