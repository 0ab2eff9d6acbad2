"""Kafka: the stream source (:class:`KafkaStream`) and the shared message decoder."""

from .decode import Decoded, decode_records, output_schema
from .emit import DriveHooks
from .split import PartitionSplit
from .stream import KafkaStream

__all__ = [
    "Decoded",
    "DriveHooks",
    "KafkaStream",
    "PartitionSplit",
    "decode_records",
    "output_schema",
]
