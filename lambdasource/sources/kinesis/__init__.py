"""Kinesis Data Streams presented in the Kafka stream's integer model (DESIGN §3, issue 16).

partition = shard number (``shardId-000000000007`` → 7), offset = sequence number (a Python int of
any size; written as a decimal string in JSON), position = the next sequence number to emit (last
emitted + 1). :mod:`.config` (endpoint and credentials), :mod:`.shards` (listing and lineage),
:mod:`.reader` (one shard's GetRecords loop), :mod:`.stream` (``ls.KinesisStream``) with its
:mod:`.shardset` (splits in lineage order, checkpoint), :mod:`.split`, :mod:`.emit` (Kafka's
decoders over Kinesis records) and :mod:`.starts`.
"""

from .config import KinesisConfig
from .reader import KinesisRecord, ShardFetch, ShardReader, first_retained
from .shards import Shard, ShardLineage, list_shards, shard_id, shard_number
from .stream import KinesisStream

__all__ = [
    "KinesisConfig",
    "KinesisRecord",
    "KinesisStream",
    "Shard",
    "ShardFetch",
    "ShardLineage",
    "ShardReader",
    "first_retained",
    "list_shards",
    "shard_id",
    "shard_number",
]
