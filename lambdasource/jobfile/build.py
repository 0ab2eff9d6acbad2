"""A validated job → components → a :class:`~lambdasource.pipeline.Pipeline` and its sink.

Before anything runs, the job's filter and the columns it names (``select``, the window key, the
aggregates, a raw-row sink's key) are checked against the schema the source will emit: declared
(a stream's schema), or learnt from the lake's first file when the lake declares none. A filter
that would fail on every record (a misspelt column, a string compared with a number) is a
SchemaError naming the column and the columns there are, not a run that dead-letters everything.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from ..errors import ConfigError
from ..expressions import check_filter, parse_filter, unknown_column
from .model import JobModel, LakeSection, SourceSection, StreamSection, validate_section
from .outcome import DeadLetterLog
from .text import aggregate_column, parse_aggregate, parse_schema

if TYPE_CHECKING:
    from ..kafka_security import KafkaSecurity
    from ..pipeline import Pipeline
    from ..sinks.base import Sink
    from ..sources.base import Source
    from ..sources.kafka.stream import KafkaStream
    from ..sources.kinesis.stream import KinesisStream
    from ..sources.lake.source import LakeSource
    from .spec import JobSpec

log = logging.getLogger("lambdasource")


@contextlib.contextmanager
def _section(name: str) -> Iterator[None]:
    """Prefix a ConfigError of the Python API with the job-file section it came from."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith("["):
            raise
        raise type(exc)(f"[{name}] {exc}") from exc


# --- schemas -------------------------------------------------------------------------------------


def _dataset(lake: Any, **extra: Any) -> Any:
    """A pyarrow dataset over a Parquet lake's files (hive partition columns parsed)."""
    import pyarrow.dataset as ds

    path = str(lake.path)
    options: dict[str, Any] = {}
    if path.startswith("s3://"):
        from ..s3 import S3Config

        path = path[5:]
        options["filesystem"] = (lake.s3 or S3Config()).pyarrow_filesystem()  # default: AWS env
    else:
        path = path.removeprefix("file://")
    return ds.dataset(path, format="parquet", partitioning="hive", **options, **extra)


def _lake_file_schema(lake: Any) -> pa.Schema:
    """The lake's file schema (Iceberg: the table's; Parquet: the first file's, no partition
    columns). Raises whatever reading it raises."""
    from ..sources.lake.iceberg import IcebergLake

    if isinstance(lake, IcebergLake):
        return lake._table().schema().as_arrow()
    try:
        schema = _dataset(lake).schema
    except (OSError, pa.ArrowInvalid):  # a file that is no Parquet: skip the invalid ones
        schema = _dataset(lake, exclude_invalid_files=True).schema
    partition_columns = {"dt", "hour", "year", "month", "day"}
    return pa.schema([f for f in schema if f.name not in partition_columns])


def learn_schema(source: Source) -> tuple[pa.Schema | None, str]:
    """The schema ``source`` will emit (as far as is known cheaply) and what to call the source
    in messages.

    Declared schemas come first; a lake without one is read for it: an Iceberg table's schema,
    or a Parquet lake's first file (the reader takes the union over all files:
    :func:`check_against_source` reads them all before it reports a problem). None when it
    cannot be known before running (empty or unreadable lake: the run reports those itself).
    """
    from ..sources.lake.iceberg import IcebergLake
    from ..sources.lake.parquet import ParquetLake
    from ..sources.lake.reader import reference_schema
    from ..sources.lambda_source import LambdaSource

    if isinstance(source, LambdaSource):
        return source.schema, "the source"
    if not isinstance(source, ParquetLake | IcebergLake):
        return source.schema, "the stream" if source.schema is not None else "the source"
    if source.schema is not None:
        return source.schema, "the lake"
    try:
        files = _lake_file_schema(source)
    except Exception as exc:  # best effort: the run reads the lake and reports the real error
        log.debug("lake schema not learnt before the run: %r", exc)
        return None, "the lake"
    if source.time_column not in files.names:
        return None, "the lake"
    return reference_schema(files, source.columns, source.time_column), "the lake"


def _union_schema(source: Source) -> pa.Schema | None:
    """A Parquet lake's schema as its reader makes it: the union over every file (None for
    other sources, declared schemas, or when the files cannot be read now)."""
    import pyarrow.parquet as pq

    from ..sources.lake.parquet import ParquetLake
    from ..sources.lake.reader import reference_schema
    from ..sources.lake.schema import union_schema

    if not isinstance(source, ParquetLake) or source.schema is not None:
        return None
    try:
        dataset = _dataset(source, exclude_invalid_files=True)
        schemas = []
        for path in dataset.files:
            with dataset.filesystem.open_input_file(path) as f:
                schemas.append((path, source._file_schema(pq.read_metadata(f))))
        union = union_schema(schemas)
    except Exception as exc:  # best effort, as in learn_schema
        log.debug("lake schema union not learnt before the run: %r", exc)
        return None
    if union is None or source.time_column not in union.names:
        return None
    return reference_schema(union, source.columns, source.time_column)


def check_against_source(source: Source, check: Callable[[pa.Schema, str], object]) -> None:
    """Run ``check(schema, described)`` against the schema ``source`` will emit, before running.

    Cheap first (:func:`learn_schema`); when that fails for a Parquet lake without a declared
    schema, again against the union over all its files (what the reader emits), and only a
    failure there is raised. Nothing is checked when the schema cannot be known in advance.
    """
    schema, described = learn_schema(source)
    if schema is None:
        return
    try:
        check(schema, described)
    except ConfigError:
        union = _union_schema(source)
        if union is None or union.equals(schema):
            raise
        check(union, described)


def check_columns(
    columns: Sequence[str], available: Sequence[str], *, label: str, source: str
) -> None:
    """SchemaError naming the first of ``columns`` not in ``available`` (with a suggestion)."""
    for column in columns:
        if column not in available:
            raise unknown_column(label, column, available, source)


def _check_job(job: JobModel, schema: pa.Schema, source: str) -> None:
    """Check the filter and every column the job names against ``schema``."""
    if job.transform.where is not None:
        try:
            check_filter(job.transform.where, schema, source=source)
        except ConfigError as exc:
            raise type(exc)(f"[transform] where: {exc}") from None
    available = list(schema.names)
    if job.transform.select is not None:
        check_columns(job.transform.select, available, label="[transform] select", source=source)
        available, source = list(job.transform.select), "[transform] select"
    if job.window is not None:
        check_columns(job.window.key, available, label="[window] key", source=source)
        for name, text in job.window.aggregates.items():
            column = aggregate_column(text)
            if column is not None:
                check_columns(
                    [column], available, label=f"[window] aggregates.{name}", source=source
                )
    else:
        key = job.sink.key or []
        version = [job.sink.version] if job.sink.version else []
        check_columns([*key, *version], available, label="[sink] key/version", source=source)


# --- components ----------------------------------------------------------------------------------


def build_lake(spec: Mapping[str, Any] | LakeSection, base: Path) -> LakeSource:
    """``[lake]`` → ``ParquetLake`` (``path``) or ``IcebergLake`` (``identifier`` + ``catalog``)."""
    from ..s3 import S3Config
    from ..sources.lake.iceberg import IcebergLake
    from ..sources.lake.parquet import ParquetLake

    section = spec if isinstance(spec, LakeSection) else validate_section("lake", spec)
    options = section.options()
    endpoint = options.pop("s3_endpoint", None)
    s3 = S3Config(endpoint_url=endpoint) if endpoint else None
    with _section("lake"):
        if section.identifier is not None:
            identifier = options.pop("identifier")
            return IcebergLake(identifier, catalog=options.pop("catalog"), s3=s3, **options)
        path = str(options.pop("path"))
        if "://" not in path and not Path(path).is_absolute():
            path = str(base / path)
        return ParquetLake(path, s3=s3, **options)


def build_security(options: Mapping[str, Any] | None, base: Path) -> KafkaSecurity | None:
    """A ``security`` table → ``KafkaSecurity`` (relative files taken from ``base``)."""
    if options is None:
        return None
    from ..kafka_security import KafkaSecurity, resolve_paths

    return KafkaSecurity(**resolve_paths(options, base))


def build_stream(
    spec: Mapping[str, Any] | StreamSection, lake: Any | None, base: Path | None = None
) -> KafkaStream | KinesisStream:
    """``[stream]`` → ``KafkaStream`` (or ``KinesisStream``, ``kind = "kinesis"``);
    ``schema = "lake"`` takes the lake's schema."""
    from ..sources.kafka.stream import KafkaStream
    from ..sources.kinesis.config import KinesisConfig
    from ..sources.kinesis.stream import KinesisStream

    section = spec if isinstance(spec, StreamSection) else validate_section("stream", spec)
    options = section.stream_options()
    schema = options.pop("schema", None)
    with _section("stream"):
        security = build_security(options.pop("security", None), base or Path.cwd())
        if security is not None:
            options["security"] = security
        if schema == "lake":
            if lake is None:
                raise ConfigError('schema = "lake" needs a [lake] section')
            try:
                options["schema"] = _lake_file_schema(lake)  # as before: the first file's
            except Exception as exc:
                raise ConfigError(
                    f'schema = "lake": cannot read the lake\'s schema: {exc}'
                ) from exc
        elif schema is not None:
            options["schema"] = parse_schema(schema)
        if section.kind == "kinesis":
            config = KinesisConfig(
                endpoint_url=options.pop("endpoint_url", None), region=options.pop("region", None)
            )
            return KinesisStream(options.pop("stream_name"), config=config, **options)
        return KafkaStream(options.pop("topic"), options.pop("bootstrap_servers"), **options)


def _source(job: JobModel, base: Path) -> Source:
    """The job's source: its lake, its stream, or the lambda source of both."""
    lake = build_lake(job.lake, base) if job.lake is not None else None
    stream = build_stream(job.stream, lake, base) if job.stream is not None else None
    if stream is None:
        assert lake is not None  # the model requires a lake or a stream
        return lake
    if lake is None:
        return stream
    from ..sources.alignment import Alignment
    from ..sources.lambda_source import LambdaSource

    section = job.source or SourceSection()
    options = section.options()
    options.pop("alignment", None)
    alignment = section.alignment  # unset: the default {max_drift = "30m"}; false: None
    aligned = None if alignment is None else Alignment(**alignment.options())
    with _section("source"):
        return LambdaSource(lake, stream, alignment=aligned, **options)


@dataclass
class BuiltJob:
    """A built job: the pipeline, its sink, and the log of its dead letters."""

    pipeline: Pipeline
    sink: Sink
    dead_letters: DeadLetterLog
    bootstrap: Literal["replay", "state"] = "replay"
    """``[window] bootstrap``: how ``run`` builds the window state (``Pipeline.run``)."""


def build_job(spec: JobSpec) -> BuiltJob:
    """Validate ``spec``, check it against the source's schema, and build it."""
    from ..checkpoints import Checkpoints
    from ..pipeline import Pipeline
    from ..sinks.urls import sink_from_url
    from ..windows.assigners import Session, Sliding, Tumbling

    job = spec.validate()
    source = _source(job, spec.base)
    check_against_source(source, lambda schema, source_name: _check_job(job, schema, source_name))
    pipeline = Pipeline()
    if job.checkpoints is not None:
        with _section("checkpoints"):
            pipeline = Pipeline(checkpoints=Checkpoints(**job.checkpoints.options()))
    dead_letters = DeadLetterLog()
    flow = pipeline.source(source)
    watched = [flow]
    if job.transform.where is not None:
        with _section("transform"):
            flow = flow.filter(parse_filter(job.transform.where))
        watched.append(flow)
    if job.transform.select is not None:
        columns = list(job.transform.select)
        flow = flow.map(lambda batch: batch.select(columns), name="select")
        watched.append(flow)
    key = job.sink.key
    if job.window is not None:
        window = job.window
        assigner: Sliding | Session
        if window.kind == "sliding":
            assigner = Sliding(window.size or "", window.slide or "")
        elif window.kind == "tumbling":
            assigner = Tumbling(window.size or "")
        else:
            assigner = Session(window.gap or "")
        with _section("window"):
            flow = (
                flow.key_by(*window.key)
                .window(assigner, allowed_lateness=window.allowed_lateness, emit=window.emit)
                .aggregate(**{n: parse_aggregate(t) for n, t in window.aggregates.items()})
            )
        # latest: one row per key; changes/every are histories, keyed by key + window end
        key = key or (window.key if window.emit == "latest" else [*window.key, "window_end"])
    assert key is not None  # the model requires a sink key for raw rows
    version = job.sink.version
    if version is None and job.window is None:
        version = source.time_column
    with _section("sink"):
        options = job.sink.options()
        security = build_security(options.get("security"), spec.base)
        extra = {} if security is None else {"security": security}
        for kafka_option in ("exactly_once", "transactional_id"):
            if kafka_option in options:
                extra[kafka_option] = options[kafka_option]
        sink = sink_from_url(job.sink.url, table=job.sink.table, key=key, version=version, **extra)
        flow.sink(sink)
    for stream in watched:
        dead_letters.watch(stream)
    bootstrap = job.window.bootstrap if job.window is not None else "replay"
    return BuiltJob(pipeline, sink, dead_letters, bootstrap)


def build(spec: JobSpec) -> tuple[Pipeline, Sink]:
    """The job as a ``(Pipeline, sink)`` pair, ready for ``await pipeline.run()``."""
    built = build_job(spec)
    return built.pipeline, built.sink
