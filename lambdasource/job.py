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

    [source]                    # LambdaSource(lake, stream, ...) when both are present
    handoff = "offsets"         # or "timestamp"
    out_of_orderness = "5m"
    alignment = { max_drift = "30m" }   # or false

    [transform]
    where = "kind = 'click'"    # lambdasource.expressions grammar

    [window]
    key = ["user_id"]
    kind = "sliding"            # sliding | tumbling | session
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

Unknown keys are errors (a typo must not silently change a job). Relative paths resolve against
the job file's directory.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import ConfigError
from .expressions import parse_filter
from .windows import aggregates as agg
from .windows.assigners import Session, Sliding, Tumbling

_AGGREGATE = re.compile(r"^\s*(\w+)\s*\(\s*([\w.\"]*)\s*\)\s*$")
_FUNCTIONS = {
    "count": agg.count,
    "sum": agg.sum,
    "mean": agg.mean,
    "avg": agg.mean,
    "min": agg.min,
    "max": agg.max,
    "first": agg.first,
    "last": agg.last,
    "count_distinct": agg.count_distinct,
}
_TYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "utf8": pa.string(),
    "binary": pa.binary(),
    "date32": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:,\s*(?:tz=)?([\w/+:-]+))?\]$")


def parse_type(text: str) -> pa.DataType:
    """``"int64"``, ``"string"``, ``"timestamp[ms, UTC]"`` … → an Arrow type (ConfigError if unknown)."""
    name = text.strip().lower()
    if name in _TYPES:
        return _TYPES[name]
    match = _TIMESTAMP.match(name)
    if match:
        tz = match.group(2)
        return pa.timestamp(match.group(1), tz="UTC" if tz and tz.lower() == "utc" else tz)
    raise ConfigError(
        f"unknown type {text!r} (use e.g. int64, float64, string, timestamp[us, UTC])"
    )


def parse_schema(spec: str | Mapping[str, str]) -> pa.Schema:
    """``"a:int64,b:string"`` or ``{"a": "int64"}`` → ``pa.Schema`` (order kept)."""
    if isinstance(spec, str):
        pairs: list[tuple[str, str]] = []
        for part in re.split(r",(?![^\[]*\])", spec):
            if not part.strip():
                continue
            name, sep, dtype = part.partition(":")
            if not sep or not name.strip():
                raise ConfigError(f"schema: expected 'column:type', got {part.strip()!r}")
            pairs.append((name.strip(), dtype))
    else:
        pairs = list(spec.items())
    if not pairs:
        raise ConfigError("schema: no columns")
    return pa.schema([pa.field(name, parse_type(dtype)) for name, dtype in pairs])


def parse_aggregate(text: str) -> agg.Kernel:
    """``"count()"``, ``"sum(amount)"``, ``"count_distinct(page)"`` → an aggregate kernel."""
    match = _AGGREGATE.match(text)
    if not match or match.group(1).lower() not in _FUNCTIONS:
        raise ConfigError(
            f"aggregate {text!r}: expected one of {', '.join(f'{f}(…)' for f in _FUNCTIONS)}"
        )
    function, column = match.group(1).lower(), match.group(2).strip('"')
    if function == "count":
        return agg.count(column or None)
    if not column:
        raise ConfigError(f"aggregate {text!r}: {function} needs a column")
    return _FUNCTIONS[function](column)


def _take(section: Mapping[str, Any], where: str, allowed: set[str]) -> dict[str, Any]:
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(
            f"[{where}]: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    return dict(section)


@dataclass
class WindowSpec:
    key: list[str]
    kind: str
    size: str | None = None
    slide: str | None = None
    gap: str | None = None
    emit: str = "latest"
    allowed_lateness: str = "0s"
    aggregates: dict[str, str] = field(default_factory=dict)

    def assigner(self) -> Sliding | Session:
        if self.kind == "sliding":
            if not self.size or not self.slide:
                raise ConfigError("[window]: sliding needs size and slide")
            return Sliding(self.size, self.slide)
        if self.kind == "tumbling":
            if not self.size:
                raise ConfigError("[window]: tumbling needs size")
            return Tumbling(self.size)
        if self.kind == "session":
            if not self.gap:
                raise ConfigError("[window]: session needs gap")
            return Session(self.gap)
        raise ConfigError(f"[window]: kind must be sliding, tumbling or session, got {self.kind!r}")


@dataclass
class JobSpec:
    """A parsed job; ``build()`` turns it into a ready-to-run Pipeline plus the sink."""

    lake: dict[str, Any] | None = None
    stream: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    where: str | None = None
    select: list[str] | None = None
    window: WindowSpec | None = None
    sink: dict[str, Any] = field(default_factory=dict)
    checkpoints: dict[str, Any] | None = None
    base: Path = field(default_factory=Path.cwd)

    @classmethod
    def from_toml(cls, path: str | Path) -> JobSpec:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"job file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"job file {path}: {exc}") from exc
        return cls.from_dict(data, base=path.resolve().parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> JobSpec:
        top = _take(
            data,
            "job",
            {"lake", "stream", "source", "transform", "window", "sink", "checkpoints"},
        )
        if "lake" not in top and "stream" not in top:
            raise ConfigError("job: needs a [lake] section, a [stream] section, or both")
        if "sink" not in top:
            raise ConfigError("job: needs a [sink] section")
        transform = _take(top.get("transform", {}), "transform", {"where", "select"})
        window = None
        if "window" in top:
            raw = _take(
                top["window"],
                "window",
                {"key", "kind", "size", "slide", "gap", "emit", "allowed_lateness", "aggregates"},
            )
            key = raw.pop("key", None)
            if not key:
                raise ConfigError("[window]: key is required (a column or a list of columns)")
            raw["key"] = [key] if isinstance(key, str) else list(key)
            raw.setdefault("kind", "sliding")
            if not raw.get("aggregates"):
                raise ConfigError('[window]: aggregates is required, e.g. {clicks = "count()"}')
            window = WindowSpec(**raw)
        sink = _take(top["sink"], "sink", {"url", "table", "key", "version"})
        if "url" not in sink:
            raise ConfigError("[sink]: url is required (duckdb:///file.db, postgresql://…, …)")
        checkpoints = top.get("checkpoints")
        if checkpoints is not None:
            checkpoints = _take(checkpoints, "checkpoints", {"url", "interval", "keep"})
        return cls(
            lake=top.get("lake"),
            stream=top.get("stream"),
            source=_take(
                top.get("source", {}),
                "source",
                {
                    "handoff",
                    "cutoff",
                    "out_of_orderness",
                    "idle_timeout",
                    "alignment",
                    "allow_gaps",
                },
            ),
            where=transform.get("where"),
            select=transform.get("select"),
            window=window,
            sink=sink,
            checkpoints=checkpoints,
            base=base or Path.cwd(),
        )

    def validate(self) -> None:
        """Check everything that needs no I/O: aggregates, filters, window, schema strings."""
        if self.where:
            parse_filter(self.where)
        if self.window:
            self.window.assigner()
            for name, text in self.window.aggregates.items():
                try:
                    parse_aggregate(text)
                except ConfigError as exc:
                    raise ConfigError(f"[window.aggregates] {name}: {exc}") from None
        schema = (self.stream or {}).get("schema")
        if isinstance(schema, (dict, str)) and schema != "lake":
            parse_schema(schema)


_LAKE_KEYS = {
    "path",
    "identifier",
    "catalog",
    "time_column",
    "partitioning",
    "event_time_partitioned",
    "start",
    "until",
    "columns",
    "out_of_orderness",
    "snapshot_id",
    "s3_endpoint",
    "on_corrupt",
}
_STREAM_KEYS = {
    "topic",
    "bootstrap_servers",
    "time_column",
    "format",
    "schema",
    "stop_at",
    "group_id",
    "start",
    "out_of_orderness",
    "idle_timeout",
}


def _lake_schema(lake: Any) -> pa.Schema:
    """The lake's Arrow schema, for ``[stream] schema = "lake"``."""
    from .sources.lake.iceberg import IcebergLake

    if isinstance(lake, IcebergLake):
        return lake._table().schema().as_arrow()
    import pyarrow.dataset as ds

    path = str(lake.path)
    if path.startswith("s3://"):
        fs = lake.s3.pyarrow_filesystem() if lake.s3 else None
        dataset = ds.dataset(path[5:], format="parquet", filesystem=fs, partitioning="hive")
    else:
        dataset = ds.dataset(
            path.removeprefix("file://"),
            format="parquet",
            partitioning="hive",
            exclude_invalid_files=True,
        )
    partition_columns = {"dt", "hour", "year", "month", "day"}
    schema = dataset.schema
    keep = [f for f in schema if f.name not in partition_columns]
    return pa.schema(keep)


def build_lake(spec: Mapping[str, Any], base: Path) -> Any:
    """``[lake]`` → ``ParquetLake`` (``path``) or ``IcebergLake`` (``identifier`` + ``catalog``)."""
    from .s3 import S3Config
    from .sources.lake.iceberg import IcebergLake
    from .sources.lake.parquet import ParquetLake

    raw = _take(spec, "lake", _LAKE_KEYS)
    if "time_column" not in raw:
        raise ConfigError("[lake]: time_column is required")
    endpoint = raw.pop("s3_endpoint", None)
    s3 = S3Config(endpoint_url=endpoint) if endpoint else None
    if "identifier" in raw:
        identifier = raw.pop("identifier")
        catalog = raw.pop("catalog", None)
        if not isinstance(catalog, dict):
            raise ConfigError("[lake]: an Iceberg lake needs catalog = {uri = …, warehouse = …}")
        for key in ("path", "partitioning", "event_time_partitioned"):
            if key in raw:
                raise ConfigError(f"[lake]: {key} applies to Parquet lakes, not Iceberg")
        return IcebergLake(identifier, catalog=catalog, s3=s3, **raw)
    if "path" not in raw:
        raise ConfigError("[lake]: needs path (Parquet) or identifier + catalog (Iceberg)")
    path = str(raw.pop("path"))
    if "://" not in path and not Path(path).is_absolute():
        path = str(base / path)
    if "snapshot_id" in raw:
        raise ConfigError("[lake]: snapshot_id applies to Iceberg lakes")
    return ParquetLake(path, s3=s3, **raw)


def build_stream(spec: Mapping[str, Any], lake: Any | None) -> Any:
    """``[stream]`` → ``KafkaStream``; ``schema = "lake"`` takes the lake's schema."""
    from .sources.kafka.stream import KafkaStream

    raw = _take(spec, "stream", _STREAM_KEYS)
    for key in ("topic", "bootstrap_servers"):
        if key not in raw:
            raise ConfigError(f"[stream]: {key} is required")
    schema = raw.pop("schema", None)
    if schema == "lake":
        if lake is None:
            raise ConfigError('[stream]: schema = "lake" needs a [lake] section')
        raw["schema"] = _lake_schema(lake)
    elif schema is not None:
        raw["schema"] = parse_schema(schema)
    elif raw.get("format", "json") == "json":
        raise ConfigError('[stream]: JSON needs a schema ({col = "type", …} or "lake")')
    return KafkaStream(raw.pop("topic"), raw.pop("bootstrap_servers"), **raw)


def build(spec: JobSpec) -> tuple[Any, Any]:
    """The job as a ``(Pipeline, sink)`` pair, ready for ``await pipeline.run()``."""
    from .pipeline import Pipeline
    from .sinks.urls import sink_from_url

    spec.validate()
    lake = build_lake(spec.lake, spec.base) if spec.lake else None
    stream = build_stream(spec.stream, lake) if spec.stream else None
    if lake is not None and stream is not None:
        from .sources.alignment import Alignment
        from .sources.lambda_source import LambdaSource

        options = dict(spec.source)
        alignment = options.pop("alignment", {"max_drift": "30m"})
        if alignment is False or alignment is None:
            aligned = None
        elif isinstance(alignment, dict):
            aligned = Alignment(**alignment)
        else:
            raise ConfigError('[source]: alignment = {max_drift = "30m"} or false')
        source: Any = LambdaSource(lake, stream, alignment=aligned, **options)
    else:
        if spec.source:
            raise ConfigError("[source]: handoff options need both [lake] and [stream]")
        source = lake if lake is not None else stream
    checkpoints = None
    if spec.checkpoints:
        from .checkpoints import Checkpoints

        checkpoints = Checkpoints(**spec.checkpoints)
    pipeline = Pipeline(checkpoints=checkpoints) if checkpoints is not None else Pipeline()
    flow = pipeline.source(source)
    if spec.where:
        flow = flow.filter(parse_filter(spec.where))
    if spec.select:
        columns = list(spec.select)
        flow = flow.map(lambda batch: batch.select(columns))
    sink_options = dict(spec.sink)
    url = sink_options.pop("url")
    key = sink_options.pop("key", None)
    table = sink_options.pop("table", None)
    if table is None:
        raise ConfigError("[sink]: table is required")
    if spec.window is not None:
        window = spec.window
        flow = (
            flow.key_by(*window.key)
            .window(window.assigner(), allowed_lateness=window.allowed_lateness, emit=window.emit)
            .aggregate(**{name: parse_aggregate(text) for name, text in window.aggregates.items()})
        )
        # latest: one row per key; changes/every are histories, keyed by key + window end
        key = key or (window.key if window.emit == "latest" else [*window.key, "window_end"])
    if not key:
        raise ConfigError("[sink]: key is required for raw rows (the upsert key)")
    keys = [key] if isinstance(key, str) else list(key)
    version = sink_options.pop("version", None)
    if version is None and spec.window is None:
        version = source.time_column
    sink = sink_from_url(url, table=table, key=keys, version=version)
    flow.sink(sink)
    return pipeline, sink
