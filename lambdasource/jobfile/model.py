"""The job file's schema: one pydantic model per section, every key typed, unknown keys refused.

Validation is strict (TOML's own types, never coerced: ``3600`` is not ``"3600"``), and values
written in a small language are checked here as well, so every mistake is found before anything
is built:

- durations are strings with a unit (``"3600s"``, ``"1h"``, ``"30d"``); a bare number is refused,
  since its unit would be a guess;
- times are TOML datetimes (``2026-11-01T00:00:00Z``; a date means its midnight UTC) or ISO-8601
  strings (naive = UTC); a bare number is refused for the same reason;
- lists of columns (``select``, ``columns``) are lists; ``key`` takes a column or a list, as the
  Python API does;
- filters, aggregates and stream schemas are parsed.

:func:`validate_job` returns a :class:`JobModel` or raises one ConfigError with one line per
problem, each naming its place: ``[window] size = 3600: a duration needs a unit, e.g. "3600s"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import ConfigError
from ..expressions import parse_filter
from ..timeutil import from_micros, parse_duration, to_micros
from .text import parse_aggregate, parse_schema

# --- values ----------------------------------------------------------------------------------------


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("job_value", "{message}", {"message": message})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _duration(value: object) -> str:
    if _is_number(value):
        raise _fail(f'a duration needs a unit, e.g. "{value}s"')
    if not isinstance(value, str):
        raise _fail('expected a duration such as "90s", "5m", "1h" or "30d"')
    try:
        parse_duration(value)
    except ConfigError:
        raise _fail(
            f'cannot read {value!r} as a duration (use e.g. "200ms", "90s", "5m", "1h", "30d")'
        ) from None
    return value


def _time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            return from_micros(to_micros(value))
        except ConfigError:
            raise _fail(
                f"cannot read {value!r} as a time (use ISO-8601, e.g. 2026-11-01T00:00:00Z)"
            ) from None
    if _is_number(value):
        raise _fail(
            "a time needs a date, e.g. 2026-11-01T00:00:00Z (a bare number would be a guess: "
            "seconds, milliseconds or microseconds?)"
        )
    raise _fail("expected a time: a TOML datetime or an ISO-8601 string")


def _column_list(value: object) -> list[str]:
    if isinstance(value, str):
        raise _fail(f'must be a list of column names, e.g. ["{value}"]')
    if isinstance(value, list) and value and all(isinstance(c, str) and c for c in value):
        return list(value)
    raise _fail('expected a list of column names, e.g. ["user_id", "amount"]')


def _key_columns(value: object) -> list[str]:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(c, str) and c for c in value):
        return list(value)
    raise _fail('expected a column name or a list of them, e.g. "user_id" or ["user_id", "page"]')


def _filter(value: object) -> str:
    if not isinstance(value, str):
        raise _fail("expected a filter expression (a string), e.g. \"kind = 'click'\"")
    try:
        parse_filter(value)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    return value


def _aggregate(value: object) -> str:
    if not isinstance(value, str):
        raise _fail('expected an aggregate (a string), e.g. "count()" or "sum(amount)"')
    try:
        parse_aggregate(value)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    return value


def _stream_schema(value: object) -> str | dict[str, str]:
    if value == "lake":
        return "lake"
    if isinstance(value, str) or (
        isinstance(value, dict) and all(isinstance(t, str) for t in value.values())
    ):
        try:
            parse_schema(value)
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        return value
    raise _fail('expected "lake", "column:type,…" or a table {column = "type", …}')


def _stream_start(value: object) -> str | datetime | dict[int, int]:
    if value in ("earliest", "latest", "trim_horizon"):
        return str(value)
    if isinstance(value, dict):
        offsets: dict[int, int] = {}
        for partition, offset in value.items():
            if isinstance(offset, str) and offset.isdigit():  # a Kinesis sequence number
                offset = int(offset)
            if not (str(partition).isdigit() and isinstance(offset, int) and offset >= 0):
                raise _fail(
                    "expected a table of partition (shard number) = offset (next sequence "
                    'number, may be a string of digits), e.g. {"0" = 1200, "1" = 0}'
                )
            offsets[int(partition)] = offset
        return offsets
    if isinstance(value, str):
        try:
            return _time(value)
        except PydanticCustomError:
            raise _fail(
                'expected "earliest" ("trim_horizon"), "latest", a time or a table of '
                "partition = offset"
            ) from None
    return _time(value)


def _alignment(value: object) -> object:
    if value is False:
        return None
    if isinstance(value, dict):
        return value
    raise _fail('expected a table {max_drift = "30m"} or false (no alignment)')


def _duration_or_off(value: object) -> str | None:
    return None if value is False else _duration(value)


Duration = Annotated[str, PlainValidator(_duration)]
DurationOrOff = Annotated[str | None, PlainValidator(_duration_or_off)]  # false: None (off)
Time = Annotated[datetime, PlainValidator(_time)]
Columns = Annotated[list[str], PlainValidator(_column_list)]
Key = Annotated[list[str], PlainValidator(_key_columns)]
Filter = Annotated[str, PlainValidator(_filter)]
AggregateText = Annotated[str, PlainValidator(_aggregate)]
StreamSchema = Annotated[str | dict[str, str], PlainValidator(_stream_schema)]
StreamStart = Annotated[str | datetime | dict[int, int], PlainValidator(_stream_start)]


# --- sections ------------------------------------------------------------------------------------


class Section(BaseModel):
    """A section: strict types, unknown keys refused, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def options(self) -> dict[str, Any]:
        """The keys the file set, as keyword arguments of the Python API."""
        return self.model_dump(exclude_unset=True, by_alias=True)


def _rules(problems: list[tuple[str, str]]) -> None:
    """Raise the (key, message) problems a section's own rules found, all at once."""
    if problems:
        raise PydanticCustomError("job_rules", "{problems}", {"problems": problems})


class LakeSection(Section):
    """``[lake]``: ``ParquetLake(path, …)``, or ``IcebergLake(identifier, catalog, …)``."""

    path: str | None = None
    identifier: str | None = None
    catalog: dict[str, str] | None = None
    time_column: str
    partitioning: Literal["hour", "day"] = "hour"
    event_time_partitioned: bool = True
    start: Time | None = None
    until: Time | None = None
    columns: Columns | None = None
    out_of_orderness: Duration | None = None
    snapshot_id: int | None = None
    s3_endpoint: str | None = None
    on_corrupt: Literal["raise", "quarantine"] = "raise"

    @model_validator(mode="after")
    def _one_kind_of_lake(self) -> LakeSection:
        given = self.model_fields_set
        problems: list[tuple[str, str]] = []
        if self.identifier is not None:
            if self.path is not None:
                problems.append(("path", "a lake has path (Parquet) or identifier (Iceberg)"))
            if self.catalog is None:
                problems.append(
                    ("catalog", "is required for an Iceberg lake: {uri = …, warehouse = …}")
                )
            for key in ("partitioning", "event_time_partitioned"):
                if key in given:
                    problems.append((key, "applies to Parquet lakes, not Iceberg"))
        elif self.path is None:
            problems.append(("path", "is required (Parquet), or identifier + catalog (Iceberg)"))
        else:
            for key in ("snapshot_id", "catalog"):
                if key in given:
                    problems.append((key, "applies to Iceberg lakes (identifier + catalog)"))
        if self.start is not None and self.until is not None and self.until <= self.start:
            problems.append(("until", "must be after start"))
        _rules(problems)
        return self


class SecuritySection(Section):
    """``security = {…}`` of ``[stream]`` / ``[sink]``: ``KafkaSecurity(…)``. The password is
    named by ``password_env`` / ``password_file``, never written here: a ``password`` key (or any
    unknown key) is refused without echoing its value."""

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password_env: str | None = None
    check_hostname: bool = True

    @model_validator(mode="before")
    @classmethod
    def _no_secret_in_the_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems = []
        for key in data:
            if key in cls.model_fields:
                continue
            if "password" in str(key).lower() or "secret" in str(key).lower():
                problems.append(
                    (
                        str(key),
                        'a secret never goes in a job file: use password_env = "VAR" '
                        '(an environment variable) or password_file = "path"',
                    )
                )
            else:
                allowed = ", ".join(cls.model_fields)
                problems.append((str(key), f"unknown key; allowed: {allowed}"))
        _rules(problems)
        return data

    @model_validator(mode="after")
    def _fits_the_protocol(self) -> SecuritySection:
        from ..kafka_security import structure_problems

        _rules(structure_problems(self.model_dump()))
        return self


KAFKA_ONLY = ("topic", "bootstrap_servers", "group_id", "partition_discovery", "connect_timeout")
KINESIS_ONLY = ("stream_name", "endpoint_url", "region", "shard_discovery", "poll_interval")


class StreamSection(Section):
    """``[stream]``: ``KafkaStream(topic, bootstrap_servers, …)``, or with ``kind = "kinesis"``
    ``KinesisStream(stream_name, config=KinesisConfig(endpoint_url, region), …)`` (credentials
    from the standard AWS environment)."""

    kind: Literal["kafka", "kinesis"] = "kafka"
    topic: str | None = None
    bootstrap_servers: str | None = None
    stream_name: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    shard_discovery: DurationOrOff = None  # false: no discovery
    poll_interval: Duration | None = None
    time_column: str | None = None
    format: Literal["json", "raw"] = "json"
    schema_: StreamSchema | None = Field(None, alias="schema")
    stop_at: Literal["latest"] | None = None
    group_id: str | None = None
    start: StreamStart = "earliest"
    out_of_orderness: Duration | None = None
    idle_timeout: Duration | None = None
    max_ahead: DurationOrOff = None  # false: no plausibility bound
    partition_discovery: DurationOrOff = None  # false: no discovery
    allow_gaps: bool | None = None
    connect_timeout: Duration | None = None
    security: SecuritySection | None = None

    @model_validator(mode="after")
    def _fits_its_kind(self) -> StreamSection:
        problems: list[tuple[str, str]] = []
        if self.format == "json" and self.schema_ is None:
            problems.append(("schema", 'is required for JSON: {col = "type", …} or "lake"'))
        given = self.model_fields_set
        if self.kind == "kinesis":
            if not self.stream_name:
                problems.append(("stream_name", 'is required with kind = "kinesis" (not empty)'))
            problems += [(key, "applies to Kafka streams") for key in KAFKA_ONLY if key in given]
            if "security" in given:
                problems.append(("security", "applies to Kafka (Kinesis: the AWS environment)"))
        else:
            for key in ("topic", "bootstrap_servers"):
                if key not in given:
                    problems.append((key, 'is required (or kind = "kinesis" with stream_name)'))
            problems += [
                (key, 'applies to kind = "kinesis"') for key in KINESIS_ONLY if key in given
            ]
        _rules(problems)
        return self

    def stream_options(self) -> dict[str, Any]:
        """The keyword arguments of KafkaStream / KinesisStream (``kind`` and, for Kinesis, the
        endpoint keys taken out: they build its ``KinesisConfig``)."""
        options = self.options()
        options.pop("kind", None)
        return options


class AlignmentSection(Section):
    """``alignment = {…}`` of ``[source]``: ``Alignment(max_drift)``."""

    max_drift: Duration = "30m"


class SourceSection(Section):
    """``[source]``: the ``LambdaSource`` options (only with both a lake and a stream)."""

    handoff: Literal["offsets", "timestamp"] | None = None
    cutoff: Time | None = None
    out_of_orderness: Duration | None = None
    idle_timeout: Duration | None = None
    alignment: Annotated[AlignmentSection | None, BeforeValidator(_alignment)] = AlignmentSection()
    allow_gaps: bool | None = None


class TransformSection(Section):
    """``[transform]``: a filter and a projection."""

    where: Filter | None = None
    select: Columns | None = None


_NEEDS: dict[str, tuple[set[str], set[str]]] = {
    # kind → (keys it needs, keys it has not)
    "sliding": ({"size", "slide"}, {"gap"}),
    "tumbling": ({"size"}, {"slide", "gap"}),
    "session": ({"gap"}, {"size", "slide"}),
}


class WindowSection(Section):
    """``[window]``: ``key_by(key).window(kind(size, slide | gap), …).aggregate(…)``."""

    key: Key
    kind: Literal["sliding", "tumbling", "session"] = "sliding"
    size: Duration | None = None
    slide: Duration | None = None
    gap: Duration | None = None
    emit: Literal["latest", "changes", "every"] = "latest"
    allowed_lateness: Duration = "0s"
    aggregates: dict[str, AggregateText]
    bootstrap: Literal["replay", "state"] = "replay"

    @model_validator(mode="after")
    def _kind_fits_its_keys(self) -> WindowSection:
        needs, refuses = _NEEDS[self.kind]
        problems = [
            (key, f"is required: {self.kind} needs {' and '.join(sorted(needs))}")
            for key in sorted(needs)
            if getattr(self, key) is None
        ]
        problems += [
            (key, f"does not apply to a {self.kind} window (it takes {', '.join(sorted(needs))})")
            for key in sorted(refuses)
            if getattr(self, key) is not None
        ]
        if not self.aggregates:
            problems.append(("aggregates", 'needs at least one, e.g. {clicks = "count()"}'))
        _rules(problems)
        return self


class SinkSection(Section):
    """``[sink]``: the store URL, its table, the upsert key and version."""

    url: str
    table: str
    key: Key | None = None
    version: str | None = None
    security: SecuritySection | None = None  # kafka:// only
    exactly_once: bool | None = None  # kafka:// only: transactions tied to checkpoints
    transactional_id: str | None = None  # kafka:// only (implies exactly_once)

    @model_validator(mode="after")
    def _url_is_a_url(self) -> SinkSection:
        if "://" not in self.url:
            _rules([("url", "expected a store URL: duckdb:///file.db, postgresql://…, …")])
        if not self.url.lower().startswith("kafka://"):
            kafka_only = [
                (key, "applies to kafka:// sinks only")
                for key in ("security", "exactly_once", "transactional_id")
                if getattr(self, key) is not None
            ]
            _rules(kafka_only)
        return self


class CheckpointsSection(Section):
    """``[checkpoints]``: ``Checkpoints(url, interval, keep)``."""

    url: str
    interval: Duration | None = None
    keep: int | None = Field(None, ge=1)


SECTIONS: dict[str, type[Section]] = {
    "lake": LakeSection,
    "stream": StreamSection,
    "source": SourceSection,
    "transform": TransformSection,
    "window": WindowSection,
    "sink": SinkSection,
    "checkpoints": CheckpointsSection,
}


class JobModel(BaseModel):
    """A whole job, validated; the builders read it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    lake: LakeSection | None = None
    stream: StreamSection | None = None
    source: SourceSection | None = None
    transform: TransformSection = TransformSection()
    window: WindowSection | None = None
    sink: SinkSection
    checkpoints: CheckpointsSection | None = None

    @model_validator(mode="after")
    def _sections_fit_together(self) -> JobModel:
        lines = []
        if self.lake is None and self.stream is None:
            lines.append("job: needs a [lake] section, a [stream] section, or both")
        if self.source is not None and self.source.model_fields_set and self.lake is None:
            lines.append("[source] handoff options need both [lake] and [stream]")
        if self.source is not None and self.source.model_fields_set and self.stream is None:
            lines.append("[source] handoff options need both [lake] and [stream]")
        if self.stream is not None and self.stream.schema_ == "lake" and self.lake is None:
            lines.append('[stream] schema = "lake" needs a [lake] section')
        if (
            self.lake is not None
            and self.stream is not None
            and self.stream.time_column != self.lake.time_column
        ):
            lines.append(
                f"[stream] time_column = {_show(self.stream.time_column)}: differs from [lake] "
                f"time_column = {_show(self.lake.time_column)} (the lambda source needs one)"
            )
        if self.window is None and self.sink.key is None:
            lines.append("[sink] key is required for raw rows (the upsert key)")
        time_column = self.lake.time_column if self.lake else None
        if self.stream is not None and time_column is None:
            time_column = self.stream.time_column
        select = self.transform.select
        if select is not None and time_column is not None and time_column not in select:
            lines.append(
                f"[transform] select = {_show(select)}: must keep the time column "
                f"{_show(time_column)}"
            )
        if lines:
            raise PydanticCustomError("job_lines", "{lines}", {"lines": list(dict.fromkeys(lines))})
        return self


# --- errors --------------------------------------------------------------------------------------


def validate_job(data: Mapping[str, Any], *, origin: str = "job") -> JobModel:
    """``data`` (a parsed job file) as a JobModel; ConfigError with one line per problem."""
    try:
        return JobModel.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe(exc, origin)) from None


def validate_section(name: str, data: Mapping[str, Any]) -> Any:
    """One section (``"lake"``, ``"stream"``, …) as its model; ConfigError naming its keys."""
    try:
        return SECTIONS[name].model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe(exc, "job", section=name)) from None


def describe(exc: ValidationError, origin: str, *, section: str | None = None) -> str:
    """The problems of ``exc`` as lines ``[section] key = value: what was expected``."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if section is not None:
            loc = (section, *loc)
        lines.extend(_lines(error, loc))
    lines = list(dict.fromkeys(lines))
    if len(lines) == 1:
        return lines[0]
    return f"{origin}: {len(lines)} problems:\n" + "\n".join(lines)


def _lines(error: Any, loc: tuple[Any, ...]) -> list[str]:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "job_lines":
        return list(ctx["lines"])
    if not loc:
        return [error["msg"]]
    section = str(loc[0])
    if len(loc) == 1:
        if kind == "missing":
            return [f"job: needs a [{section}] section"]
        if kind == "extra_forbidden":
            return [f"job: unknown section [{section}]; allowed: {_allowed(None)}"]
        if kind == "job_rules":
            data = error["input"] if isinstance(error["input"], dict) else {}
            return [
                f"[{section}] {key}{_value(data, key)}: {message}"
                for key, message in ctx["problems"]
            ]
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            return [
                f"[{section}] must be a table (a [{section}] section), got {_show(error['input'])}"
            ]
        return [f"[{section}] {_message(kind, error['msg'], ctx, section)}"]
    path = str(loc[1])
    for part in loc[2:]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    if kind == "job_rules":  # a nested table's own rules (e.g. alignment)
        return [f"[{section}] {path}.{key}: {message}" for key, message in ctx["problems"]]
    shown = "" if kind == "missing" else f" = {_show(error['input'])}"
    where = section if len(loc) == 2 else None
    return [f"[{section}] {path}{shown}: {_message(kind, error['msg'], ctx, where)}"]


def _message(kind: str, msg: str, ctx: dict[str, Any], section: str | None) -> str:
    if kind == "job_value":
        return str(ctx["message"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return f"unknown key; allowed: {_allowed(section)}" if section else "unknown key"
    if kind == "literal_error":
        return f"expected {ctx['expected']}"
    if kind == "string_type":
        return "expected a string"
    if kind == "bool_type":
        return "expected true or false"
    if kind == "int_type":
        return "expected an integer"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "expected a table {key = value, …}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    return msg


def _allowed(section: str | None) -> str:
    if section is None:
        return ", ".join(f"[{name}]" for name in SECTIONS)
    model = SECTIONS.get(section)
    if model is None:
        return "?"
    return ", ".join(f.alias or name for name, f in model.model_fields.items())


def _value(data: Mapping[str, Any], key: str) -> str:
    return f" = {_show(data[key])}" if key in data else ""


def _show(value: Any) -> str:
    """``value`` as TOML would write it (shortened)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, datetime | date):
        text = value.isoformat()
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"
