"""``[stream] kind = "kinesis"`` in job files: its keys, the Kafka keys it refuses, the stream it
builds (no service needed: building a stream does not connect)."""

from __future__ import annotations

import pytest

from lambdasource.errors import ConfigError
from lambdasource.jobfile.build import build_stream
from lambdasource.jobfile.model import validate_section
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.kinesis.stream import KinesisStream

SCHEMA = {"event_time": "timestamp[us, UTC]", "user_id": "int64"}


def test_kinesis_section_builds_a_kinesis_stream() -> None:
    stream = build_stream(
        {
            "kind": "kinesis",
            "stream_name": "clicks",
            "endpoint_url": "http://127.0.0.1:4566",
            "region": "eu-west-1",
            "time_column": "event_time",
            "schema": SCHEMA,
            "start": {"0": "49590338271490256608559692538361571095921575989136588898"},
            "stop_at": "latest",
            "shard_discovery": False,
        },
        lake=None,
    )
    assert isinstance(stream, KinesisStream)
    assert stream.stream_name == "clicks" and stream.bounded
    assert stream.config.endpoint_url == "http://127.0.0.1:4566"
    assert stream.config.region == "eu-west-1"


def test_kafka_is_the_default_kind() -> None:
    stream = build_stream(
        {"topic": "clicks", "bootstrap_servers": "127.0.0.1:9092", "schema": SCHEMA}, lake=None
    )
    assert isinstance(stream, KafkaStream)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kind": "kinesis", "schema": SCHEMA}, r"\[stream\] stream_name.*is required"),
        (
            {"kind": "kinesis", "stream_name": "", "schema": SCHEMA},
            r"\[stream\] stream_name.*not empty",
        ),
        (
            {"kind": "kinesis", "stream_name": "s", "topic": "t", "schema": SCHEMA},
            r"\[stream\] topic.*applies to Kafka",
        ),
        (
            {"kind": "kinesis", "stream_name": "s", "group_id": "g", "schema": SCHEMA},
            r"\[stream\] group_id.*applies to Kafka",
        ),
        (
            {"topic": "t", "bootstrap_servers": "b", "endpoint_url": "x", "schema": SCHEMA},
            r'\[stream\] endpoint_url.*applies to kind = "kinesis"',
        ),
        ({"stream_name": "s", "schema": SCHEMA}, r"\[stream\] topic.*is required"),
        ({"kind": "pulsar", "topic": "t"}, r"\[stream\] kind"),
    ],
)
def test_keys_that_do_not_fit_the_kind_are_named(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_section("stream", section)
