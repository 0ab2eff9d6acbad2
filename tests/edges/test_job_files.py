"""Job files: every section and key is typed, and every mistake is one line naming
``[section] key`` (issue 12, helper h2).

Verdicts (before → after):

- ``size = 3600`` ran 3,600 µs windows, ``interval = 30`` checkpointed every 30 µs (every bare
  number as a duration was read as µs) → ConfigError ``[window] size = 3600: a duration needs a
  unit, e.g. "3600s"`` (each duration key of each section).
- ``select = "user_id"`` became the columns u, s, e, r, … → refused: a list is needed; ``key``
  takes a column or a list, as the Python API does.
- ``slide`` on a tumbling window, ``gap`` on a sliding one: silently ignored → refused naming
  the key.
- wrong-typed values (``path = 5``, ``aggregates = "count()"``, ``key = 5`` …) ended in
  ``TypeError`` / ``AttributeError`` / ``ValueError`` without section and key → ConfigError
  naming both (hypothesis, every key of every section).
- several mistakes: only the first was reported → all of them, one line each.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.generator import generate_clickstream
from lake.writer import ParquetLakeWriter
from lambdasource import cli
from lambdasource.errors import ConfigError
from lambdasource.job import JobSpec, build

START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return generate_clickstream(4_000, 2, 30, seed=11, start=START)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, events: pa.Table) -> Path:
    root = tmp_path_factory.mktemp("jobs") / "lake"
    ParquetLakeWriter(root, "event_time").write(events)
    return root


def full_job(lake: Path, work: Path) -> dict[str, Any]:
    """A job with every section (lake + stream: the lambda source; nothing connects in build)."""
    return {
        "lake": {"path": str(lake), "time_column": "event_time", "out_of_orderness": "1m"},
        "stream": {
            "topic": "clicks",
            "bootstrap_servers": "127.0.0.1:1",
            "time_column": "event_time",
            "format": "json",
            "schema": "lake",
            "stop_at": "latest",
            "out_of_orderness": "1m",
            "idle_timeout": "1s",
        },
        "source": {
            "handoff": "timestamp",
            "out_of_orderness": "5m",
            "idle_timeout": "30s",
            "alignment": {"max_drift": "30m"},
        },
        "transform": {
            "where": "kind = 'click'",
            "select": ["event_time", "user_id", "kind", "amount"],
        },
        "window": {
            "key": ["user_id"],
            "kind": "sliding",
            "size": "1h",
            "slide": "5m",
            "emit": "latest",
            "allowed_lateness": "0s",
            "aggregates": {"clicks": "count()", "revenue": "sum(amount)"},
        },
        "sink": {"url": f"duckdb:///{work / 'out.duckdb'}", "table": "t"},
        "checkpoints": {"url": f"file://{work / 'ckpt'}", "interval": "30s", "keep": 2},
    }


def _build(data: dict[str, Any], base: Path) -> None:
    build(JobSpec.from_dict(data, base=base))


def _error(data: dict[str, Any], base: Path) -> str:
    with pytest.raises(ConfigError) as info:
        _build(data, base)
    return str(info.value)


def test_the_full_job_builds(tmp_path: Path, lake: Path) -> None:
    _build(full_job(lake, tmp_path), tmp_path)


DURATION_KEYS = [
    ("lake", "out_of_orderness"),
    ("stream", "out_of_orderness"),
    ("stream", "idle_timeout"),
    ("stream", "max_ahead"),
    ("stream", "partition_discovery"),
    ("source", "out_of_orderness"),
    ("source", "idle_timeout"),
    ("source", "alignment.max_drift"),
    ("window", "size"),
    ("window", "slide"),
    ("window", "allowed_lateness"),
    ("checkpoints", "interval"),
]


def test_stream_edge_options_from_a_job_file() -> None:
    """``max_ahead`` and ``partition_discovery`` take a duration or ``false`` (off)."""
    from lambdasource.jobfile.build import build_stream

    section = {
        "topic": "clicks",
        "bootstrap_servers": "127.0.0.1:1",
        "schema": {"event_time": "timestamp[us, UTC]"},
        "time_column": "event_time",
    }
    on = build_stream({**section, "max_ahead": "2h", "partition_discovery": "5s"}, None)
    assert (on.max_ahead, on.discovery, on.allow_gaps) == (7_200_000_000, 5.0, False)
    off = build_stream(
        {**section, "max_ahead": False, "partition_discovery": False, "allow_gaps": True}, None
    )
    assert (off.max_ahead, off.discovery, off.allow_gaps) == (None, None, True)


def test_exactly_once_into_kafka_from_a_job_file(tmp_path: Path, lake: Path) -> None:
    """``[sink] exactly_once`` / ``transactional_id`` reach KafkaUpsert; other stores refuse them."""
    data = full_job(lake, tmp_path)
    data["sink"] = {"url": "kafka://127.0.0.1:1/out", "table": "t", "exactly_once": True}
    _, sink = build(JobSpec.from_dict(data, base=tmp_path))
    assert getattr(sink, "exactly_once", None) is True
    data = full_job(lake, tmp_path)
    data["sink"]["exactly_once"] = True
    assert _error(data, tmp_path) == "[sink] exactly_once = true: applies to kafka:// sinks only"


def test_bootstrap_security_flags_become_the_jobs_security_table(
    tmp_path: Path, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lambdasource bootstrap --security-protocol …`` puts a ``[stream] security`` table in the
    job; ``--print-job`` writes it and the file builds the same KafkaStream security (no password
    anywhere: only the variable that holds it)."""
    from lambdasource.bootstrap import spec_from_args, to_toml

    monkeypatch.setenv("KAFKA_PASSWORD", "not-in-the-job")
    args = cli.build_parser().parse_args(
        ["bootstrap", "--lake", str(lake), "--time-column", "event_time", "--topic", "clicks",
         "--bootstrap-servers",
         "127.0.0.1:1", "--key", "user_id", "--into", "duckdb:///x.db", "--table", "t",
         "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
         "--sasl-username", "alice", "--sasl-password-env", "KAFKA_PASSWORD"]
    )  # fmt: skip
    spec = spec_from_args(args)
    assert spec.stream is not None and spec.stream["security"] == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username": "alice",
        "password_env": "KAFKA_PASSWORD",
    }
    job = tmp_path / "job.toml"
    job.write_text(to_toml(spec))
    again = JobSpec.from_toml(job)
    assert again.stream == spec.stream
    stream = again.validate().stream
    assert stream is not None and stream.security is not None
    assert stream.security.sasl_mechanism == "SCRAM-SHA-512"
    assert "not-in-the-job" not in job.read_text()


def _set(data: dict[str, Any], section: str, key: str, value: Any) -> None:
    target = data[section]
    *parents, last = key.split(".")
    for parent in parents:
        target = target[parent]
    target[last] = value


@pytest.mark.parametrize(("section", "key"), DURATION_KEYS)
@pytest.mark.parametrize("number", [3600, 30, 1.5])
def test_a_bare_number_as_a_duration_is_refused(
    section: str, key: str, number: float, tmp_path: Path, lake: Path
) -> None:
    data = full_job(lake, tmp_path)
    _set(data, section, key, number)
    message = _error(data, tmp_path)
    assert message == f'[{section}] {key} = {number}: a duration needs a unit, e.g. "{number}s"'


def test_session_gap_as_a_number_is_refused_and_through_the_cli(
    tmp_path: Path, lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = full_job(lake, tmp_path)
    data["window"] = {
        "key": "user_id",
        "kind": "session",
        "gap": 300,
        "aggregates": {"n": "count()"},
    }
    assert _error(data, tmp_path) == '[window] gap = 300: a duration needs a unit, e.g. "300s"'
    job = tmp_path / "job.toml"
    job.write_text(
        f"""
[lake]
path = "{lake}"
time_column = "event_time"

[window]
key = "user_id"
kind = "tumbling"
size = 3600
aggregates = {{ n = "count()" }}

[sink]
url = "duckdb:///{tmp_path / "o.duckdb"}"
table = "t"

[checkpoints]
url = "file://{tmp_path / "ckpt"}"
interval = 30
"""
    )
    assert cli.main(["run", str(job), "--check"]) == 1
    err = capsys.readouterr().err
    assert '[window] size = 3600: a duration needs a unit, e.g. "3600s"' in err
    assert '[checkpoints] interval = 30: a duration needs a unit, e.g. "30s"' in err


@pytest.mark.parametrize(("section", "key"), [("transform", "select"), ("lake", "columns")])
def test_a_bare_string_is_not_a_list_of_columns(
    section: str, key: str, tmp_path: Path, lake: Path
) -> None:
    data = full_job(lake, tmp_path)
    data[section][key] = "user_id"
    assert _error(data, tmp_path) == (
        f'[{section}] {key} = "user_id": must be a list of column names, e.g. ["user_id"]'
    )


def test_key_takes_a_column_or_a_list(tmp_path: Path, lake: Path) -> None:
    data = full_job(lake, tmp_path)
    data["window"]["key"] = "user_id"
    data["sink"]["key"] = "user_id"
    spec = JobSpec.from_dict(data, base=tmp_path)
    assert spec.window is not None and spec.window.key == ["user_id"]
    build(spec)


@pytest.mark.parametrize(
    ("window", "line"),
    [
        (
            {"kind": "tumbling", "size": "1h", "slide": "5m"},
            '[window] slide = "5m": does not apply to a tumbling window (it takes size)',
        ),
        (
            {"kind": "sliding", "size": "1h", "slide": "5m", "gap": "10m"},
            '[window] gap = "10m": does not apply to a sliding window (it takes size, slide)',
        ),
        (
            {"kind": "session", "gap": "10m", "size": "1h"},
            '[window] size = "1h": does not apply to a session window (it takes gap)',
        ),
        (
            {"kind": "sliding", "size": "1h"},
            "[window] slide: is required: sliding needs size and slide",
        ),
        ({"kind": "session"}, "[window] gap: is required: session needs gap"),
    ],
)
def test_window_keys_must_fit_the_kind(
    window: dict[str, str], line: str, tmp_path: Path, lake: Path
) -> None:
    data = full_job(lake, tmp_path)
    data["window"] = {"key": "user_id", "aggregates": {"n": "count()"}, **window}
    assert _error(data, tmp_path) == line


def test_unknown_keys_and_sections_name_the_section(tmp_path: Path, lake: Path) -> None:
    data = full_job(lake, tmp_path)
    data["sink"]["keys"] = ["user_id"]
    data["window"]["sizes"] = "1h"
    data["transforms"] = {}
    lines = _error(data, tmp_path).splitlines()
    assert lines[0].endswith("3 problems:")
    assert sorted(lines[1:]) == [
        '[sink] keys = ["user_id"]: unknown key; allowed: url, table, key, version, security, '
        "exactly_once, transactional_id",
        '[window] sizes = "1h": unknown key; allowed: key, kind, size, slide, gap, emit, '
        "allowed_lateness, aggregates, bootstrap",
        "job: unknown section [transforms]; allowed: [lake], [stream], [source], [transform], "
        "[window], [sink], [checkpoints]",
    ]


def test_every_problem_is_one_line(tmp_path: Path, lake: Path) -> None:
    data = full_job(lake, tmp_path)
    data["lake"]["partitioning"] = "week"
    data["stream"]["stop_at"] = True
    data["source"]["allow_gaps"] = "yes"
    data["window"]["emit"] = "sometimes"
    data["checkpoints"]["keep"] = 0
    lines = _error(data, tmp_path).splitlines()[1:]
    assert lines == [
        "[lake] partitioning = \"week\": expected 'hour' or 'day'",
        "[stream] stop_at = true: expected 'latest'",
        '[source] allow_gaps = "yes": expected true or false',
        "[window] emit = \"sometimes\": expected 'latest', 'changes' or 'every'",
        "[checkpoints] keep = 0: must be at least 1",
    ]


def test_times_take_toml_datetimes_and_iso_strings_not_numbers(tmp_path: Path, lake: Path) -> None:
    data = full_job(lake, tmp_path)
    data["lake"]["start"] = date(2026, 11, 1)
    data["lake"]["until"] = "2026-11-02T00:00:00Z"
    data["source"]["cutoff"] = datetime(2026, 11, 1, 12)  # a local datetime: UTC
    _build(data, tmp_path)
    data["lake"]["until"] = 1_793_577_600
    assert _error(data, tmp_path).startswith("[lake] until = 1793577600: a time needs a date")


def test_column_names_are_checked_against_the_lake(tmp_path: Path, lake: Path) -> None:
    data = full_job(lake, tmp_path)
    data["window"]["key"] = "usr_id"
    message = _error(data, tmp_path)
    assert message.startswith("[window] key: unknown column 'usr_id' (did you mean 'user_id'?)")
    data = full_job(lake, tmp_path)
    data["transform"]["select"] = ["event_time", "user_id", "amount"]  # drops kind, …
    data["window"]["aggregates"] = {"pages": "count_distinct(page)"}  # … and page
    assert "[window] aggregates.pages: unknown column 'page'" in _error(data, tmp_path)
    data = full_job(lake, tmp_path)
    data["transform"]["select"] = ["user_id", "amount"]
    assert "must keep the time column" in _error(data, tmp_path)


# --- wrong types, every key ----------------------------------------------------------------------

# the kinds of TOML value of each key's type: a value of another kind must be refused, naming
# the key; a value of the right kind may still be refused (a bad duration string, a column the
# lake has not), by any ConfigError
S, T, COLS = {"str"}, {"str", "datetime", "date"}, {"list_str"}
ACCEPTS: dict[tuple[str, str], set[str]] = {
    **{("lake", k): S for k in ("path", "time_column", "partitioning", "s3_endpoint")},
    **{("lake", k): S for k in ("on_corrupt", "out_of_orderness")},
    ("lake", "event_time_partitioned"): {"bool", "false"},
    ("lake", "start"): T,
    ("lake", "until"): T,
    ("lake", "columns"): COLS,
    **{("stream", k): S for k in ("topic", "bootstrap_servers", "time_column", "format")},
    **{("stream", k): S for k in ("stop_at", "group_id", "out_of_orderness", "idle_timeout")},
    ("stream", "schema"): {"str", "dict"},
    ("stream", "start"): {*T, "dict"},
    **{("source", k): S for k in ("handoff", "out_of_orderness", "idle_timeout")},
    ("source", "cutoff"): T,
    ("source", "alignment"): {"false", "dict"},
    ("source", "allow_gaps"): {"bool", "false"},
    ("transform", "where"): S,
    ("transform", "select"): COLS,
    ("window", "key"): {"str", "list_str"},
    **{("window", k): S for k in ("kind", "size", "slide", "emit", "allowed_lateness")},
    ("window", "aggregates"): {"dict"},
    **{("sink", k): S for k in ("url", "table", "version")},
    ("sink", "key"): {"str", "list_str"},
    ("checkpoints", "url"): S,
    ("checkpoints", "interval"): S,
    ("checkpoints", "keep"): {"int"},
}


def _kind(value: Any) -> str:
    if value is False:
        return "false"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    if isinstance(value, list):
        return "list_str" if value and all(isinstance(v, str) for v in value) else "list"
    return "dict"


scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)),
)
toml_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=4), scalars, max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(sorted(ACCEPTS)), value=toml_values)
def test_wrong_types_are_config_errors_naming_section_and_key(
    tmp_path_factory: pytest.TempPathFactory, lake: Path, place: tuple[str, str], value: Any
) -> None:
    section, key = place
    right_type = _kind(value) in ACCEPTS[place]
    work = tmp_path_factory.getbasetemp()
    data = copy.deepcopy(full_job(lake, work))
    data[section][key] = value
    message = None
    try:
        _build(data, work)  # any other exception fails the test
    except ConfigError as exc:
        message = str(exc)
    if message is None:
        assert right_type, f"[{section}] {key} = {value!r} was accepted"
    elif not right_type:
        assert re.search(rf"\[{section}\] {key}\b", message), message


# --- the durations mean what they say ------------------------------------------------------------


def test_hour_windows_written_with_units_match_sql(
    tmp_path: Path, lake: Path, events: pa.Table, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "hourly.duckdb"
    job = tmp_path / "job.toml"
    job.write_text(
        f"""
[lake]
path = "{lake}"
time_column = "event_time"

[transform]
where = "kind = 'click'"
select = ["event_time", "user_id", "kind", "amount"]

[window]
key = "user_id"
kind = "tumbling"
size = "3600s"
emit = "every"
aggregates = {{ clicks = "count()", revenue = "sum(amount)" }}

[sink]
url = "duckdb:///{db}"
table = "hourly"
"""
    )
    assert cli.main(["run", str(job), "--quiet"]) == 0, capsys.readouterr().err
    con = duckdb.connect(str(db))
    got = con.sql(
        "SELECT user_id, epoch_us(window_end), clicks, revenue FROM hourly ORDER BY ALL"
    ).fetchall()
    con.close()
    ref = duckdb.sql(
        """SELECT user_id, epoch_us(time_bucket(INTERVAL 1 HOUR, event_time) + INTERVAL 1 HOUR),
                  count(*), sum(amount)
           FROM events WHERE kind = 'click' GROUP BY ALL ORDER BY ALL"""
    ).fetchall()
    assert got == ref and len(ref) > 100
