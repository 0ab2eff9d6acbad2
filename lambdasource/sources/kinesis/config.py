"""``ls.KinesisConfig``: how to reach Kinesis Data Streams (or an endpoint that speaks its API).

Unset fields fall back to the standard AWS environment exactly as botocore resolves them
(``AWS_ENDPOINT_URL_KINESIS``, then ``AWS_ENDPOINT_URL``; ``AWS_REGION``, then
``AWS_DEFAULT_REGION``; credentials through botocore's own chain when not given). Like
:class:`~lambdasource.S3Config`, one frozen value yields the keyword arguments of aiobotocore's
``create_client("kinesis", …)`` and the client itself.

Retries: botocore's own retries are switched off for the client this config makes
(``total_max_attempts=1``): the shard readers back off on throttling themselves (counted, per
shard, without a retry quota shared across shards) and retry transient failures (connection
errors, 5xx) at most ``retries`` times before raising a :class:`~lambdasource.errors.StreamError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...s3 import credential_kwargs, resolved_region


@dataclass(frozen=True)
class KinesisConfig:
    """Endpoint, region and credentials; ``max_pool_connections`` bounds concurrent requests
    (one GetRecords per shard may be in flight), ``retries`` the attempts after a transient
    failure, ``connect_timeout``/``read_timeout`` in seconds."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    max_pool_connections: int = 32
    retries: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"KinesisConfig: retries must be >= 0, got {self.retries}")
        if self.max_pool_connections < 1:
            raise ConfigError(
                f"KinesisConfig: max_pool_connections must be >= 1, got {self.max_pool_connections}"
            )

    def resolved_endpoint(self) -> str | None:
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_KINESIS")
            or os.environ.get("AWS_ENDPOINT_URL")
        )

    def resolved_region(self) -> str:
        return resolved_region(self.region)

    def describe_endpoint(self) -> str:
        """How messages name where the stream lives: the endpoint, else the region's AWS one."""
        return self.resolved_endpoint() or f"kinesis.{self.resolved_region()}.amazonaws.com"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiobotocore's ``session.create_client("kinesis", **kwargs)``."""
        from aiobotocore.config import AioConfig

        kwargs: dict[str, Any] = {
            "region_name": self.resolved_region(),
            "config": AioConfig(
                max_pool_connections=self.max_pool_connections,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        }
        if endpoint := self.resolved_endpoint():
            kwargs["endpoint_url"] = endpoint
        kwargs.update(
            credential_kwargs(self.access_key_id, self.secret_access_key, self.session_token)
        )
        return kwargs

    def create_client(self) -> Any:
        """An aiobotocore Kinesis client context manager: ``async with cfg.create_client() as
        kinesis: ...``."""
        from aiobotocore.session import get_session

        return get_session().create_client("kinesis", **self.client_kwargs())
