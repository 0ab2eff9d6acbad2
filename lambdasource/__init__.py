"""lambdasource — union a data lake and a live stream into one event-time-correct stream.

The public API (DESIGN §4). Everything flows as Arrow record batches through an asyncio
operator graph; see ``Pipeline`` for building and running, ``Operator`` for custom logic.
"""

from __future__ import annotations

from .backfill import BackfillProgress, BackfillSummary, backfill
from .checkpoints import Checkpoints
from .errors import (
    CheckpointError,
    CheckpointFormatError,
    ConfigError,
    HandoffError,
    HandoffGapError,
    IncompatibleStateError,
    LakeReadError,
    LakeStateError,
    LambdaSourceError,
    MisplacedKeyError,
    OperatorError,
    ScaleOutError,
    SchemaError,
    SinkError,
    SourceError,
    StateError,
    StreamError,
    StreamGapError,
)
from .kafka_security import KafkaSecurity
from .lead import LeadMeter
from .messages import Barrier, End, Watermark
from .operator import Context, Operator, Timer
from .partitioning import KeyPartitioner
from .pipeline import Pipeline, Stream, WindowedStream
from .s3 import S3Config
from .scaleout import TaskContext, Worker, run_workers
from .sinks.base import Sink
from .sinks.collect import CollectSink
from .sinks.duckdb import DuckDBUpsert
from .sinks.iceberg import IcebergUpsert
from .sinks.kafka import KafkaUpsert
from .sinks.parquet import ParquetSink
from .sinks.postgres import PostgresUpsert
from .sinks.urls import sink_from_url
from .sources.alignment import Alignment
from .sources.base import Source, SourceOutput
from .sources.kafka.stream import KafkaStream
from .sources.kinesis import KinesisConfig, KinesisStream
from .sources.lake.iceberg import IcebergLake
from .sources.lake.inspect import LakeReport, inspect_iceberg, inspect_parquet
from .sources.lake.parquet import ParquetLake
from .sources.lambda_source import LambdaSource
from .sources.memory import MemorySource
from .windows.aggregates import (
    Aggregate,
    count,
    count_distinct,
    first,
    last,
    max,
    mean,
    min,
    sum,
)
from .windows.assigners import Session, Sliding, Tumbling

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "Alignment",
    "BackfillProgress",
    "BackfillSummary",
    "Barrier",
    "CheckpointError",
    "CheckpointFormatError",
    "Checkpoints",
    "CollectSink",
    "ConfigError",
    "Context",
    "DuckDBUpsert",
    "End",
    "HandoffError",
    "HandoffGapError",
    "IcebergLake",
    "IcebergUpsert",
    "IncompatibleStateError",
    "KafkaSecurity",
    "KafkaStream",
    "KafkaUpsert",
    "KeyPartitioner",
    "KinesisConfig",
    "KinesisStream",
    "LakeReadError",
    "LakeReport",
    "LakeStateError",
    "LambdaSource",
    "LambdaSourceError",
    "LeadMeter",
    "MemorySource",
    "MisplacedKeyError",
    "Operator",
    "OperatorError",
    "ParquetLake",
    "ParquetSink",
    "Pipeline",
    "PostgresUpsert",
    "S3Config",
    "ScaleOutError",
    "SchemaError",
    "Session",
    "Sink",
    "SinkError",
    "Sliding",
    "Source",
    "SourceError",
    "SourceOutput",
    "StateError",
    "Stream",
    "StreamError",
    "StreamGapError",
    "TaskContext",
    "Timer",
    "Tumbling",
    "Watermark",
    "WindowedStream",
    "Worker",
    "backfill",
    "count",
    "count_distinct",
    "first",
    "inspect_iceberg",
    "inspect_parquet",
    "last",
    "max",
    "mean",
    "min",
    "run_workers",
    "sink_from_url",
    "sum",
]
