"""A fault proxy between a Kinesis client and moto: forwards every request, and on command answers
GetRecords (or any operation) with an AWS JSON error instead.

``kinesis_proxy`` yields a :class:`KinesisProxy` in front of the session's moto server; point a
client at ``proxy.endpoint_url``. ``proxy.inject("ProvisionedThroughputExceededException",
times=3, shard="shardId-000000000001")`` makes the next 3 GetRecords calls for that shard (any
shard when ``shard`` is None) fail with HTTP 400 and the body botocore parses
(``{"__type": code, "message": …}``); ``ExpiredIteratorException`` the same way. The shard of a
GetRecords call is read from moto's iterator (base64 of ``stream:shardId:sequence``).
``proxy.injected`` counts the error answers served, ``proxy.calls`` the requests per operation.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import pytest

from .kinesis import KinesisService
from .ports import free_port


@dataclass
class Fault:
    code: str
    remaining: int
    operation: str = "GetRecords"
    shard: str | None = None
    status: int = 400


@dataclass
class JsonForwardingProxy:
    """An HTTP proxy for Kinesis' JSON protocol in front of ``upstream`` (moto): every POST is
    forwarded, through three hooks a subclass overrides — :meth:`local_answer` (answer here
    instead), :meth:`rewrite_request` and :meth:`rewrite_answer` (edit the JSON bodies in
    place; a rewritten answer drops moto's ``x-amz-crc32``, which no longer matches)."""

    upstream: str  # host:port of moto
    port: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def local_answer(self, operation: str, body: dict[str, Any]) -> tuple[int, str] | None:
        """(HTTP status, AWS error code) to answer with instead of forwarding, or None."""
        return None

    def rewrite_request(self, operation: str, body: dict[str, Any]) -> bool:
        """Edit a request body in place; True when it changed."""
        return False

    def rewrite_answer(self, operation: str, request: dict[str, Any], answer: Any) -> bool:
        """Edit a successful answer in place; True when it changed."""
        return False

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                local = proxy.local_answer(operation, body)
                if local is not None:
                    status, code = local
                    payload = json.dumps(
                        {"__type": code, "message": f"injected by the test proxy ({code})"}
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("x-amzn-ErrorType", code)
                    self._send_body(payload)
                    return
                if raw and proxy.rewrite_request(operation, body):
                    raw = json.dumps(body).encode()
                host, _, port = proxy.upstream.partition(":")
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() not in ("host", "content-length")
                    }
                    headers["Content-Length"] = str(len(raw))
                    connection.request("POST", self.path, body=raw, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    dropped = {"content-length", "connection", "transfer-encoding"}
                    if response.status == 200 and data:
                        answer = json.loads(data)
                        if proxy.rewrite_answer(operation, body, answer):
                            data = json.dumps(answer).encode()
                            dropped.add("x-amz-crc32")
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in dropped:
                            self.send_header(key, value)
                    self._send_body(data)
                finally:
                    connection.close()

            def _send_body(self, data: bytes) -> None:
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.port = self.port or free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class KinesisProxy(JsonForwardingProxy):
    """Injects AWS errors on command (module docstring)."""

    faults: list[Fault] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(
        self,
        code: str,
        times: int = 1,
        *,
        shard: str | None = None,
        operation: str = "GetRecords",
        status: int = 400,
    ) -> None:
        """The next ``times`` calls of ``operation`` (for ``shard``, if given) fail with ``code``."""
        with self.lock:
            self.faults.append(Fault(code, times, operation, shard, status))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, operation: str, body: dict[str, Any]) -> Fault | None:
        """The fault this request gets (counted down), if any."""
        shard = _shard_of(body)
        with self.lock:
            self.calls[operation] += 1
            for fault in self.faults:
                if (
                    fault.remaining > 0
                    and fault.operation == operation
                    and (fault.shard is None or fault.shard == shard)
                ):
                    fault.remaining -= 1
                    self.injected[fault.code] += 1
                    return fault
        return None

    def local_answer(self, operation: str, body: dict[str, Any]) -> tuple[int, str] | None:
        fault = self.take_fault(operation, body)
        return None if fault is None else (fault.status, fault.code)


def _shard_of(body: dict[str, Any]) -> str | None:
    """The shard id of a request: its ``ShardId``, or the one in moto's iterator."""
    if "ShardId" in body:
        return str(body["ShardId"])
    iterator = body.get("ShardIterator")
    if not iterator:
        return None
    try:
        return base64.b64decode(iterator).decode().split(":")[1]
    except (ValueError, IndexError):
        return None


@pytest.fixture
def kinesis_proxy(kinesis: KinesisService) -> Iterator[KinesisProxy]:
    """A fault proxy in front of the session's moto Kinesis server (one per test)."""
    proxy = KinesisProxy(upstream=urlparse(kinesis.endpoint_url).netloc)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
