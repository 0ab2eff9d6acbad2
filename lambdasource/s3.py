"""``ls.S3Config``: how to reach S3 (or an S3-compatible endpoint), shared by lakes and checkpoints.

Unset fields fall back to the standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``
…), exactly as botocore resolves them. One config yields an aiobotocore client (async listing and
ranged reads), a pyarrow ``S3FileSystem`` and pyiceberg ``s3.*`` properties for the same endpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .errors import ConfigError


def resolved_region(explicit: str | None) -> str:
    """The AWS region: ``explicit``, else the environment's as botocore reads it, else
    us-east-1 (shared by S3 and Kinesis configs)."""
    return (
        explicit
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )


def credential_kwargs(
    access_key_id: str | None, secret_access_key: str | None, session_token: str | None
) -> dict[str, str]:
    """aiobotocore ``create_client`` credentials for the fields that are set (unset ones: the
    standard AWS chain)."""
    given = {
        "aws_access_key_id": access_key_id,
        "aws_secret_access_key": secret_access_key,
        "aws_session_token": session_token,
    }
    return {name: value for name, value in given.items() if value}


@dataclass(frozen=True)
class S3Config:
    """Endpoint, region and credentials; ``max_pool_connections`` bounds concurrent requests."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    max_pool_connections: int = 16
    retries: int = 5

    def resolved_endpoint(self) -> str | None:
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )

    def resolved_region(self) -> str:
        return resolved_region(self.region)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiobotocore`` ``session.create_client("s3", **kwargs)``."""
        from aiobotocore.config import AioConfig

        kwargs: dict[str, Any] = {
            "region_name": self.resolved_region(),
            "config": AioConfig(
                max_pool_connections=self.max_pool_connections,
                retries={"max_attempts": self.retries, "mode": "standard"},
            ),
        }
        if endpoint := self.resolved_endpoint():
            kwargs["endpoint_url"] = endpoint
        kwargs.update(
            credential_kwargs(self.access_key_id, self.secret_access_key, self.session_token)
        )
        return kwargs

    def client(self) -> Any:
        """An aiobotocore S3 client context manager: ``async with cfg.client() as s3: ...``."""
        from aiobotocore.session import get_session

        return get_session().create_client("s3", **self.client_kwargs())

    def pyarrow_filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` for the same endpoint and credentials."""
        from pyarrow import fs

        kwargs: dict[str, Any] = {"region": self.resolved_region()}
        if endpoint := self.resolved_endpoint():
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        if self.access_key_id:
            kwargs["access_key"] = self.access_key_id
            kwargs["secret_key"] = self.secret_access_key
            if self.session_token:
                kwargs["session_token"] = self.session_token
        return fs.S3FileSystem(**kwargs)

    def pyiceberg_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties (``s3.endpoint`` …) for the same endpoint."""
        props = {"s3.region": self.resolved_region()}
        if endpoint := self.resolved_endpoint():
            props["s3.endpoint"] = endpoint
        if self.access_key_id:
            props["s3.access-key-id"] = self.access_key_id
        if self.secret_access_key:
            props["s3.secret-access-key"] = self.secret_access_key
        if self.session_token:
            props["s3.session-token"] = self.session_token
        return props


def split_s3_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/some/prefix"`` → ``("bucket", "some/prefix")`` (no leading/trailing slash)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
        raise ConfigError(f"not an s3:// URL: {url!r}")
    return parsed.netloc, parsed.path.strip("/")
