"""Tools that make and keep the lake: the synthetic dataset generator, the Arrow table writer,
the archivers (Kafka; Kinesis: :mod:`.kinesis_archiver`) and maintenance (compaction). ``lake``
may import ``lambdasource``; never the reverse."""

from .archiver import Archiver, ArchiveSummary
from .generator import CLICKSTREAM_SCHEMA, generate_clickstream, iter_clickstream
from .kinesis_archiver import KinesisArchiver
from .maintenance import CompactionResult, compact, expire_replaced
from .writer import DEAD_LETTER_SCHEMA, IcebergLakeWriter, ParquetLakeWriter

__all__ = [
    "CLICKSTREAM_SCHEMA",
    "DEAD_LETTER_SCHEMA",
    "ArchiveSummary",
    "Archiver",
    "CompactionResult",
    "IcebergLakeWriter",
    "KinesisArchiver",
    "ParquetLakeWriter",
    "compact",
    "expire_replaced",
    "generate_clickstream",
    "iter_clickstream",
]
