"""An embedded Kinesis endpoint (moto's server, real HTTP) and JSON producers for it.

``lambdasource demo --stream kinesis`` starts one like the embedded Kafka broker; tests and
benchmarks put records with :func:`put_json`. moto is an optional dependency
(``pip install -e '.[kinesis-demo]'``); importing this module does not need it, starting the
server does and says so when it is missing.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

import pyarrow as pa

from .embedded import free_port, wait_for_port
from .errors import ConfigError, StreamError

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "embedded", "aws_secret_access_key": "embedded"}
PUT_RECORDS_LIMIT = 500  # records per PutRecords call (the service's limit)


class EmbeddedKinesis:
    """moto's threaded server on ``127.0.0.1:port``: a context manager or ``start()``/``stop()``.

    :meth:`client_kwargs` gives aiobotocore's ``create_client("kinesis", **kwargs)`` arguments
    for it (fixed local credentials, region us-east-1)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_kwargs(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "region_name": REGION, **CREDENTIALS}

    def start(self, timeout: float = 20.0) -> EmbeddedKinesis:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise ConfigError(
                "the embedded Kinesis endpoint needs moto's server: "
                "pip install -e '.[kinesis-demo]' (or pip install 'moto[server]')"
            ) from exc
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per call
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        try:
            wait_for_port(self.port, timeout=timeout, what="moto Kinesis")
        except TimeoutError as exc:
            self.stop()
            raise StreamError(f"embedded Kinesis did not start on port {self.port}") from exc
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> EmbeddedKinesis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def create_stream(client: Any, stream: str, shards: int) -> None:
    """Create ``stream`` with ``shards`` shards and wait until it is ACTIVE."""
    await client.create_stream(StreamName=stream, ShardCount=shards)
    for _ in range(200):
        described = await client.describe_stream_summary(StreamName=stream)
        if described["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.05)
    raise StreamError(f"Kinesis stream {stream!r} did not become ACTIVE")


async def put_json(
    client: Any,
    stream: str,
    table: pa.Table,
    key_column: str,
    *,
    attempts: int = 10,
) -> None:
    """Put ``table``'s rows as JSON (orjson: ISO-8601 times) with ``PutRecords``, partition key
    = the ``key_column`` value as text, in table order per key: records a call did not take
    (``FailedRecordCount``, e.g. throttling) are put again, before the next chunk."""
    import orjson

    rows = table.to_pylist()
    for first in range(0, len(rows), PUT_RECORDS_LIMIT):
        entries = [
            {"Data": orjson.dumps(row), "PartitionKey": str(row[key_column])}
            for row in rows[first : first + PUT_RECORDS_LIMIT]
        ]
        for attempt in range(attempts):
            answer = await client.put_records(StreamName=stream, Records=entries)
            if not answer.get("FailedRecordCount"):
                break
            entries = [
                entry
                for entry, result in zip(entries, answer["Records"], strict=True)
                if "ErrorCode" in result
            ]
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        else:
            raise StreamError(
                f"Kinesis stream {stream!r}: {len(entries)} record(s) not accepted after "
                f"{attempts} PutRecords attempts"
            )
