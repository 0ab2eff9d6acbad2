"""Declarative jobs: a TOML file (``lambdasource run JOB.toml``) or CLI flags → a :class:`Pipeline`.

A job is lake and/or stream → optional filter → keyed window with named aggregates (or raw rows)
→ one sink, with optional checkpoints. Every section maps one-to-one onto the Python API, so a
job file is a readable record of a Python program::

    [lake]                      # ParquetLake(path, ...) or, with identifier, IcebergLake(...)
    path = "data/clicks"
    time_column = "event_time"

    [stream]                    # KafkaStream(topic, bootstrap_servers, ...)
    topic = "clicks"
    bootstrap_servers = "127.0.0.1:9092"
    time_column = "event_time"
    format = "json"
    schema = "lake"             # or {event_time = "timestamp[us, UTC]", user_id = "int64", ...}
    # or Kinesis: kind = "kinesis", stream_name = "clicks", endpoint_url/region (optional;
    # credentials from the AWS environment) instead of topic and bootstrap_servers

    [source]                    # LambdaSource(lake, stream, ...) when both are present
    handoff = "offsets"         # or "timestamp"
    out_of_orderness = "5m"
    alignment = { max_drift = "30m" }   # or false

    [transform]
    where = "kind = 'click'"    # lambdasource.expressions grammar
    select = ["event_time", "user_id", "amount"]   # a list, and it keeps the time column

    [window]
    key = ["user_id"]           # a column or a list of columns
    kind = "sliding"            # sliding (size, slide) | tumbling (size) | session (gap)
    size = "30d"
    slide = "5m"
    emit = "latest"
    aggregates = { clicks = "count()", revenue = "sum(amount)" }

    [sink]
    url = "duckdb:///features.duckdb"
    table = "user_30d"
    key = ["user_id"]

    [checkpoints]
    url = "file:///tmp/ckpt"
    interval = "30s"

Every key is typed (:mod:`.model`): durations are strings with a unit (``size = 3600`` is an
error, ``"3600s"`` or ``"1h"`` is right), lists are lists, unknown keys and keys that do not
apply (``slide`` on a tumbling window) are errors, and all problems are reported at once, one
line each, naming ``[section] key``. Before running, the filter and the columns the job names
are checked against the source's schema (:mod:`.build`). Relative paths resolve against the job
file's directory.

Modules: :mod:`.text` (type names, schemas, aggregate specs), :mod:`.model` (the typed
sections), :mod:`.spec` (:class:`JobSpec`), :mod:`.build` (components and the pipeline),
:mod:`.outcome` (dead letters and the CLI's verdict on a run).
"""

from .build import BuiltJob, build, build_job, build_lake, build_stream, learn_schema
from .model import JobModel, validate_job
from .outcome import DeadLetterLog, all_dead_lettered, all_dead_lettered_message
from .spec import JobSpec, WindowSpec
from .text import parse_aggregate, parse_schema, parse_type

__all__ = [
    "BuiltJob",
    "DeadLetterLog",
    "JobModel",
    "JobSpec",
    "WindowSpec",
    "all_dead_lettered",
    "all_dead_lettered_message",
    "build",
    "build_job",
    "build_lake",
    "build_stream",
    "learn_schema",
    "parse_aggregate",
    "parse_schema",
    "parse_type",
    "validate_job",
]
