"""TLS and SASL (PLAIN, SCRAM-SHA-256/512) against a real Apache Kafka broker with a SASL_SSL and
an mTLS listener and certificates made by the test (tests/services/apache_kafka_secure.py).

Proven over SASL_SSL: KafkaStream reads, KafkaUpsert writes, the archiver (through the CLI)
archives and a job file runs — each checked record by record. A wrong password, an untrusted
certificate, a refused or silent broker, TLS to a plaintext listener and a missing client
certificate each give a one-line error naming the broker and the cause within a bounded time,
for the stream, the sink and the archiver. The password never appears in a repr, an error or a
log record (aiokafka's DEBUG logs included).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

import lambdasource as ls
from lake.archiver import Archiver
from lake.writer import ParquetLakeWriter
from lambdasource import cli, kafka_security
from lambdasource.errors import ConfigError, SinkError, StreamError
from lambdasource.jobfile.model import validate_job
from tests.integration.test_sinks_common import batch, write_all
from tests.services.apache_kafka import ApacheKafkaUnavailable
from tests.services.apache_kafka_secure import USERS, SecuredKafka
from tests.services.ports import free_port

PASSWORD_VAR = "LS_TEST_KAFKA_PASSWORD"
WRONG = "wrong-password-7d3b"
SCHEMA = pa.schema(
    [pa.field("event_time", pa.timestamp("ms", tz="UTC")), pa.field("event_id", pa.int64())]
)
FAILURE_BOUND_S = 10.0  # refused / rejected / untrusted: the diagnosis takes well under a second


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredKafka]:
    missing: str | None = None
    try:
        broker = SecuredKafka.start()
    except ApacheKafkaUnavailable as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_VAR, USERS["alice"])
    return USERS["alice"]


def sasl(
    secured: SecuredKafka, mechanism: str = "SCRAM-SHA-512", **changes: Any
) -> ls.KafkaSecurity:
    options: dict[str, Any] = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "username": "alice",
        "password_env": PASSWORD_VAR,
        "ca_file": secured.certificates.ca,
        **changes,
    }
    return ls.KafkaSecurity(**options)


def mtls(secured: SecuredKafka) -> ls.KafkaSecurity:
    certs = secured.certificates
    return ls.KafkaSecurity(
        security_protocol="SSL",
        ca_file=certs.ca,
        cert_file=certs.client_cert,
        key_file=certs.client_key,
    )


def events(n: int) -> list[bytes]:
    start = datetime.now(UTC) - timedelta(hours=2)
    return [
        orjson.dumps(
            {"event_time": (start + timedelta(seconds=i)).isoformat(), "event_id": 1000 + i}
        )
        for i in range(n)
    ]


async def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` (plaintext listener), up to its end offsets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})
        ]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        got: list[tuple[bytes | None, bytes | None]] = []
        while [await consumer.position(tp) for tp in tps] < [ends[tp] for tp in tps]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend((r.key, r.value) for r in records)
        return got
    finally:
        await consumer.stop()


def assert_no_secret(secret: str, *texts: str, caplog: pytest.LogCaptureFixture) -> None:
    for text in texts:
        assert secret not in text
    for record in caplog.records:
        assert secret not in record.getMessage(), record.name
        assert secret not in (record.exc_text or "")
    assert secret not in caplog.text


# --- configuration (no broker) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"security_protocol": "SASL_SSL", "username": "u", "password_env": "HOME"},
            "sasl_mechanism: is required for SASL_SSL",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "password_env": "HOME"},
            "username: is required",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "username": "u"},
            "needs password_env (a variable) or password_file",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-1",
                "username": "u",
                "password_env": "HOME",
            },
            "sasl_mechanism: expected one of PLAIN, SCRAM-SHA-256",
        ),
        ({"security_protocol": "TLS"}, "security_protocol: expected one of PLAINTEXT, SSL"),
        (
            {"security_protocol": "SSL", "ca_file": "/no/such/ca.pem"},
            "ca_file: no such file: /no/such/ca.pem",
        ),
        (
            {"security_protocol": "SSL", "sasl_mechanism": "PLAIN"},
            "sasl_mechanism: applies to SASL_SSL or SASL_PLAINTEXT, not SSL",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "username": "u",
                "password_env": "HOME",
                "ca_file": "x.pem",
            },
            "ca_file: applies to SSL or SASL_SSL",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "username": "u",
                "password_env": "LS_TEST_UNSET_VARIABLE",
            },
            "password_env: the environment variable LS_TEST_UNSET_VARIABLE is not set",
        ),
        ({"security_protocol": "SSL", "key_file": __file__}, "key_file: needs cert_file"),
    ],
)
def test_invalid_settings_are_config_errors_naming_the_key(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"^KafkaSecurity: ") as caught:
        ls.KafkaSecurity(**options)
    assert message in str(caught.value)


def test_password_sources_and_no_secret_in_repr(
    tmp_path: Path, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    from_env = ls.KafkaSecurity(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", username="alice",
        password_env=PASSWORD_VAR,
    )  # fmt: skip
    assert from_env.client_options()["sasl_plain_password"] == password
    secret_file = tmp_path / "secret"
    secret_file.write_text("first-secret\n")
    from_file = ls.KafkaSecurity(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", username="alice",
        password_file=secret_file,
    )  # fmt: skip
    assert from_file.client_options()["sasl_plain_password"] == "first-secret"
    secret_file.write_text("rotated-secret")  # read again for each client
    assert from_file.client_options()["sasl_plain_password"] == "rotated-secret"
    secret_file.write_text("")
    with pytest.raises(ConfigError, match=r"the file .* is empty") as empty:
        from_file.client_options()
    for shown in (repr(from_env), str(from_env), from_env.describe(), str(empty.value)):
        for secret in (password, "first-secret", "rotated-secret"):
            assert secret not in shown
    assert from_env.describe() == (
        "security_protocol=SASL_PLAINTEXT sasl_mechanism=PLAIN user=alice"
    )
    assert_no_secret(password, caplog=caplog)


def test_unreadable_tls_files_are_config_errors(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    security = ls.KafkaSecurity(security_protocol="SSL", ca_file=bogus)
    with pytest.raises(ConfigError, match=r"cannot load the TLS files \(ca_file=.*ca\.pem\)"):
        security.client_options()


def test_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    kafka_security.add_arguments(parser)
    assert kafka_security.from_args(parser.parse_args([])) is None
    args = parser.parse_args(
        ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
         "--sasl-username", "alice", "--sasl-password-env", "HOME", "--ssl-no-check-hostname"]
    )  # fmt: skip
    security = kafka_security.from_args(args)
    assert security is not None
    assert (security.sasl_mechanism, security.username, security.check_hostname) == (
        "SCRAM-SHA-512",
        "alice",
        False,
    )
    with pytest.raises(ConfigError, match="need --security-protocol"):
        kafka_security.from_args(parser.parse_args(["--sasl-username", "alice"]))


def _job(stream_security: str, sink: str = 'url = "duckdb:///x.db"') -> dict[str, Any]:
    import tomllib

    return tomllib.loads(
        textwrap.dedent(
            f"""
            [stream]
            topic = "t"
            bootstrap_servers = "127.0.0.1:9093"
            format = "raw"
            [stream.security]
            {stream_security}
            [sink]
            {sink}
            table = "t"
            key = "value"
            """
        )
    )


@pytest.mark.parametrize(
    ("security", "sink", "message"),
    [
        (
            'security_protocol = "SASL_SSL"\npassword = "hunter2-secret"',
            'url = "duckdb:///x.db"',
            "[stream] security.password: a secret never goes in a job file: use password_env",
        ),
        (
            'security_protocol = "SASL_SSL"\nsasl_password = "hunter2-secret"',
            'url = "duckdb:///x.db"',
            "[stream] security.sasl_password: a secret never goes",
        ),
        (
            'security_protocol = "SASL_SSL"\nusername = "u"\npassword_env = "V"',
            'url = "duckdb:///x.db"',
            "[stream] security.sasl_mechanism: is required for SASL_SSL",
        ),
        (
            'security_protocol = "SSL"',
            'url = "duckdb:///x.db"\nsecurity = {security_protocol = "SSL"}',
            '[sink] security = {security_protocol = "SSL"}: applies to kafka:// sinks',
        ),
    ],
)
def test_job_file_security_table_is_validated_without_echoing_secrets(
    security: str, sink: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_job(_job(security, sink))
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


# --- the secured broker ---------------------------------------------------------------------------


@pytest.mark.apache_kafka
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "mTLS"])
async def test_stream_reads_every_record_over_tls_and_sasl(
    secured: SecuredKafka, password: str, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # aiokafka logs each request it sends at DEBUG
    topic = await asyncio.to_thread(secured.service.new_topic, 2)
    values = events(300)
    await secured.service.aproduce(topic, values[:150], partition=0)
    await secured.service.aproduce(topic, values[150:], partition=1)
    security = mtls(secured) if mechanism == "mTLS" else sasl(secured, mechanism)
    address = secured.mtls if mechanism == "mTLS" else secured.sasl_ssl
    stream = ls.KafkaStream(
        topic, address, time_column="event_time", schema=SCHEMA, stop_at="latest",
        security=security,
    )  # fmt: skip
    pipeline = ls.Pipeline()
    rows = pipeline.source(stream).sink(ls.CollectSink())
    assert isinstance(rows, ls.CollectSink)
    await pipeline.run()
    got = sorted(rows.table().column("event_id").to_pylist())
    assert got == sorted(orjson.loads(v)["event_id"] for v in values)
    assert_no_secret(password, repr(stream.security), caplog=caplog)


@pytest.mark.apache_kafka
async def test_upsert_writes_every_row_over_sasl_ssl(
    secured: SecuredKafka, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    topic = await asyncio.to_thread(secured.service.new_topic, 1)
    sink = ls.KafkaUpsert(
        topic, "k", secured.sasl_ssl, "v", security=sasl(secured, "SCRAM-SHA-256")
    )
    await write_all(sink, [batch(range(200), [1] * 200, ["x"] * 200)])
    written = await read_topic(secured.service.bootstrap, topic)
    assert sorted(orjson.loads(k or b"") for k, _ in written) == list(range(200))
    assert all(orjson.loads(v or b"")["x"] == "x" for _, v in written)
    assert_no_secret(password, caplog=caplog)


@pytest.mark.apache_kafka
def test_cli_archive_and_backfill_over_sasl_ssl(
    secured: SecuredKafka, password: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = secured.service.new_topic(1)
    values = events(250)
    secured.service.produce(topic, values)
    lake = tmp_path / "lake"
    code = cli.main(
        ["archive", "--bootstrap-servers", secured.sasl_ssl, "--topic", topic,
         "--lake", str(lake), "--time-column", "event_time",
         "--schema", "event_time:timestamp[ms, UTC],event_id:int64", "--stop-at", "latest",
         "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
         "--sasl-username", "alice", "--sasl-password-env", PASSWORD_VAR,
         "--ssl-ca-file", str(secured.certificates.ca)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"archived topic={topic} records=250 rows=250 dead_letters=0" in out
    writer = ParquetLakeWriter(lake, "event_time")
    import pyarrow.parquet as pq

    archived = pa.concat_tables(
        pq.read_table(f"{writer.root.base}/{f}", filesystem=writer.root.fs)
        for c in writer.commits()
        for f in c.files
    )
    assert sorted(archived.column("event_id").to_pylist()) == list(range(1000, 1250))
    assert password not in out + err

    # and back from the lake into a topic on the secured broker
    target = secured.service.new_topic(1)
    code = cli.main(
        ["backfill", "--lake", str(lake), "--time-column", "event_time",
         "--into", f"kafka://{secured.sasl_ssl}/{target}", "--table", "events",
         "--key", "event_id", "--quiet",
         "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-256",
         "--sasl-username", "alice", "--sasl-password-env", PASSWORD_VAR,
         "--ssl-ca-file", str(secured.certificates.ca)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    written = asyncio.run(read_topic(secured.service.bootstrap, target))
    assert sorted(orjson.loads(k or b"") for k, _ in written) == list(range(1000, 1250))
    assert password not in out + err


def test_cli_backfill_security_flags_need_a_kafka_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["backfill", "--lake", str(tmp_path), "--time-column", "t",
         "--into", f"duckdb:///{tmp_path}/x.db", "--table", "t", "--key", "k",
         "--security-protocol", "SSL"]
    )  # fmt: skip
    assert code != 0
    assert "flags apply to a kafka:// store" in capsys.readouterr().err


@pytest.mark.apache_kafka
def test_job_file_runs_over_sasl_ssl(
    secured: SecuredKafka, password: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = secured.service.new_topic(1), secured.service.new_topic(1)
    values = events(200)
    secured.service.produce(source, values)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(secured.certificates.ca.read_bytes())
    job = tmp_path / "job.toml"
    job.write_text(
        textwrap.dedent(
            f"""
            [stream]
            topic = "{source}"
            bootstrap_servers = "{secured.sasl_ssl}"
            time_column = "event_time"
            schema = {{event_time = "timestamp[ms, UTC]", event_id = "int64"}}
            stop_at = "latest"

            [stream.security]
            security_protocol = "SASL_SSL"
            sasl_mechanism = "SCRAM-SHA-512"
            username = "alice"
            password_env = "{PASSWORD_VAR}"
            ca_file = "certs/ca.pem"        # relative to the job file

            [sink]
            url = "kafka://{secured.sasl_ssl}/{target}"
            table = "events"
            key = "event_id"

            [sink.security]
            security_protocol = "SASL_SSL"
            sasl_mechanism = "SCRAM-SHA-256"
            username = "alice"
            password_env = "{PASSWORD_VAR}"
            ca_file = "certs/ca.pem"
            """
        )
    )
    code = cli.main(["run", str(job)])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = asyncio.run(read_topic(secured.service.bootstrap, target))
    assert sorted(orjson.loads(k or b"") for k, _ in written) == list(range(1000, 1200))
    assert password not in out + err


# --- failures: one line, the broker and the cause, in bounded time --------------------------------


def _silent_listener() -> tuple[socket.socket, int]:
    """A socket that accepts TCP connections (the backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener, listener.getsockname()[1]


async def _connect(
    client: str, address: str, security: ls.KafkaSecurity, tmp: Path, connect_timeout: str
) -> None:
    """Make ``client`` connect to ``address`` (raises what the client raises)."""
    if client == "stream":
        stream = ls.KafkaStream(
            "t", address, format="raw", stop_at="latest", security=security,
            connect_timeout=connect_timeout,
        )  # fmt: skip
        try:
            await stream.open()
        finally:
            await stream.close()
    elif client == "sink":
        sink = ls.KafkaUpsert(
            "t", "k", address, "v", security=security, connect_timeout=connect_timeout
        )
        await sink.open()
        await sink.close()
    else:
        archiver = Archiver(
            address, "t", ParquetLakeWriter(tmp / "lake", "event_time"), "event_time",
            schema=SCHEMA, stop_at="latest", security=security, connect_timeout=connect_timeout,
        )  # fmt: skip
        await archiver.run()


@pytest.mark.apache_kafka
@pytest.mark.parametrize("client", ["stream", "sink", "archiver"])
@pytest.mark.parametrize(
    ("case", "cause"),
    [
        pytest.param(
            "wrong password",
            "SASL authentication failed for user=alice (SCRAM-SHA-512): ",
            id="wrong-password",
        ),
        pytest.param(
            "untrusted certificate",
            "the broker's TLS certificate is not trusted (self-signed",
            id="untrusted-certificate",
        ),
        pytest.param("refused", "Connection refused", id="refused"),
        pytest.param(
            "silent",
            "accepts TCP connections but did not complete a SASL_SSL handshake within 1s",
            id="silent",
        ),
        pytest.param(
            "plaintext listener",
            "closed the connection during the SASL_SSL handshake",
            id="tls-to-plaintext-listener",
        ),
        pytest.param(
            "no client certificate",
            "closed the connection during the SSL handshake (a client certificate required",
            id="no-client-certificate",
        ),
    ],
)
async def test_connect_failures_are_one_line_naming_broker_and_cause(
    secured: SecuredKafka,
    password: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    client: str,
    case: str,
    cause: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    address, security, permanent, bound = secured.sasl_ssl, sasl(secured), True, FAILURE_BOUND_S
    listener, timeout = None, "2s"
    if case == "wrong password":
        monkeypatch.setenv(PASSWORD_VAR, WRONG)
    elif case == "untrusted certificate":
        security = sasl(secured, ca_file=secured.certificates.other_ca)
    elif case == "refused":
        address, permanent = f"127.0.0.1:{free_port()}", False
    elif case == "silent":
        listener, port = _silent_listener()
        address, permanent, timeout = f"127.0.0.1:{port}", False, "1s"
        bound = 1 + 1 + FAILURE_BOUND_S / 2  # connect_timeout + diagnosing handshake + slack
    elif case == "plaintext listener":
        address, permanent = secured.service.bootstrap, False
    else:
        address, permanent = secured.mtls, False
        security = ls.KafkaSecurity(security_protocol="SSL", ca_file=secured.certificates.ca)
    begun = time.monotonic()
    try:
        with pytest.raises((StreamError, SinkError)) as caught:
            await _connect(client, address, security, tmp_path, timeout)
    finally:
        if listener is not None:
            listener.close()
    elapsed = time.monotonic() - begun
    message = str(caught.value)
    assert elapsed < bound, (elapsed, message)
    assert "\n" not in message
    assert f"cannot connect to the Kafka broker(s) {address}: {address}" in message
    assert cause in message, message
    assert caught.value.retriable is not permanent
    for secret in (password, WRONG):
        assert_no_secret(secret, message, repr(caught.value), caplog=caplog)
