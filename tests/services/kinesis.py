"""Kinesis Data Streams via moto's threaded server (real HTTP): one server per test session.

``kinesis`` yields a :class:`KinesisService` with the endpoint and credentials and
``new_stream(shards)``, which creates a uniquely named stream and waits until it is ACTIVE.
Tests isolate themselves by stream name; the server is never reset mid-session.

Facts about moto 5.2 here (DESIGN §6): sequence numbers are small decimal integers, dense per
shard (1, 2, 3 …; real Kinesis uses sparse 56-digit ones — code must treat them as arbitrary-size
integers); ``ApproximateArrivalTimestamp`` is the wall clock at put; ``GetRecords`` never reports
child shards (``ListShards`` gives ``ParentShardId``/``AdjacentParentShardId``) and never ends a
closed shard's iterator; no throttling, no retention trimming (inject both through a proxy).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .ports import free_port, wait_for_port

REGION = "us-east-1"
KEY_ID = "testing"
SECRET = "testing"


@dataclass
class KinesisService:
    endpoint_url: str
    port: int
    region: str = REGION
    access_key_id: str = KEY_ID
    secret_access_key: str = SECRET
    streams: list[str] = field(default_factory=list)

    def client(self) -> Any:
        """A synchronous botocore Kinesis client for test set-up (puts, resharding)."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "kinesis",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiobotocore's ``create_client("kinesis", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }

    def new_stream(self, shards: int = 2, prefix: str = "test") -> str:
        """Create a stream with ``shards`` shards; returns its name once it is ACTIVE."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        client = self.client()
        client.create_stream(StreamName=name, ShardCount=shards)
        client.get_waiter("stream_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
        )
        self.streams.append(name)
        return name


@pytest.fixture(scope="session")
def kinesis_server() -> Iterator[KinesisService]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port, what="moto Kinesis")
    try:
        yield KinesisService(endpoint_url=f"http://127.0.0.1:{port}", port=port)
    finally:
        server.stop()


@pytest.fixture
def kinesis(kinesis_server: KinesisService) -> KinesisService:
    """The session's moto server (tests isolate themselves with ``new_stream()``)."""
    return kinesis_server
