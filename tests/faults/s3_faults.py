"""An HTTP fault proxy in front of moto: answers a chosen share of S3 requests with 500/503
(S3's XML error body) or delays them, and forwards everything else unchanged.

moto has no general fault injection of its own (its ``/moto-api`` offers reset, recording and
a few service-specific knobs, not "fail the next N S3 calls"), hence this proxy. It runs its own
event loop in a daemon thread (aiohttp server + client), so it serves aiobotocore and pyarrow's
S3 filesystem alike. Faults are rules matched in order; a rule with ``count`` fails that many
matching requests and then stops matching (a transient fault), ``count=None`` never stops (a
persistent one) until :meth:`S3FaultProxy.clear`.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, web

from lambdasource.embedded import free_port
from tests.faults.loop_thread import LoopThread

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
_CODES = {500: "InternalError", 503: "SlowDown"}


@dataclass
class Rule:
    """Which requests a fault applies to and what it does."""

    status: int | None = 503  # None: no error, just ``delay``
    delay: float = 0.0
    rate: float = 1.0
    methods: frozenset[str] | None = None  # e.g. {"GET"}; None: any
    path_contains: str | None = None  # substring of "/bucket/key"
    count: int | None = None  # faults left; None: unlimited
    hits: int = 0
    seen: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, 'GET /b/k')


class S3FaultProxy(LoopThread):
    """``endpoint_url`` forwards to ``target`` (moto's URL) through the fault rules."""

    def __init__(self, target: str, port: int | None = None, seed: int = 0) -> None:
        super().__init__("s3-faults")
        self.target = target.rstrip("/")
        self.port = port or free_port()
        self.rules: list[Rule] = []
        self.requests = 0
        self.injected = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(
        self,
        status: int = 503,
        *,
        rate: float = 1.0,
        methods: set[str] | None = None,
        path_contains: str | None = None,
        count: int | None = None,
    ) -> Rule:
        """Answer matching requests with ``status`` (500 InternalError / 503 SlowDown)."""
        rule = Rule(
            status=status,
            rate=rate,
            methods=frozenset(m.upper() for m in methods) if methods else None,
            path_contains=path_contains,
            count=count,
        )
        with self._lock:
            self.rules.append(rule)
        return rule

    def slow(
        self,
        delay: float,
        *,
        rate: float = 1.0,
        methods: set[str] | None = None,
        path_contains: str | None = None,
        count: int | None = None,
    ) -> Rule:
        """Delay matching requests by ``delay`` seconds, then forward them."""
        rule = Rule(
            status=None,
            delay=delay,
            rate=rate,
            methods=frozenset(m.upper() for m in methods) if methods else None,
            path_contains=path_contains,
            count=count,
        )
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.count is not None and rule.count <= 0:
                    continue
                if rule.methods is not None and method not in rule.methods:
                    continue
                if rule.path_contains is not None and rule.path_contains not in path:
                    continue
                if rule.rate < 1.0 and self._random.random() >= rule.rate:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                rule.hits += 1
                rule.seen.append((time.monotonic(), f"{method} {path}"))
                return rule
        return None

    # serving -------------------------------------------------------------------------------------

    async def _start_serving(self) -> None:
        self._session = ClientSession(timeout=ClientTimeout(total=60), auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def _stop_serving(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        session = self._session
        assert session is not None
        self.requests += 1
        body = await request.read()
        rule = self._match(request.method, request.path)
        if rule is not None:
            self.injected += 1
            if rule.delay:
                await asyncio.sleep(rule.delay)
            if rule.status is not None:
                code = _CODES.get(rule.status, "InternalError")
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>injected fault</Message><Resource>{request.path}</Resource>"
                    "<RequestId>fault</RequestId></Error>"
                )
                return web.Response(status=rule.status, text=xml, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD" and "Content-Length" in upstream.headers:
                out["Content-Length"] = upstream.headers["Content-Length"]
            return web.Response(status=upstream.status, body=payload, headers=out)
