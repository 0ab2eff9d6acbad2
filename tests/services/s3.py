"""S3 via moto's threaded server: one per test session, a fresh bucket per test.

``s3`` yields an :class:`S3Service` with the endpoint, credentials (also exported to the
environment, as botocore, pyarrow and Tansu read them there) and a ``new_bucket()`` helper.
"""

from __future__ import annotations

import os
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
class S3Service:
    endpoint_url: str
    port: int
    region: str = REGION
    access_key_id: str = KEY_ID
    secret_access_key: str = SECRET
    buckets: list[str] = field(default_factory=list)

    def client(self) -> Any:
        """A synchronous boto3-style client (botocore) for test set-up."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def new_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def config(self) -> Any:
        """The library's ``S3Config`` for this endpoint (import deferred: fixtures load first)."""
        from lambdasource.s3 import S3Config

        return S3Config(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
        )

    def pyiceberg_properties(self) -> dict[str, str]:
        return {
            "s3.endpoint": self.endpoint_url,
            "s3.region": self.region,
            "s3.access-key-id": self.access_key_id,
            "s3.secret-access-key": self.secret_access_key,
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Service]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port, what="moto S3")
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_ENDPOINT=f"http://127.0.0.1:{port}",
        AWS_ALLOW_HTTP="true",
    )
    try:
        yield S3Service(endpoint_url=f"http://127.0.0.1:{port}", port=port)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
)


@pytest.fixture
def s3(s3_server: S3Service) -> S3Service:
    """The session's moto server (tests isolate themselves with ``new_bucket()``)."""
    return s3_server
