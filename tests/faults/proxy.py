"""A TCP fault proxy on a free loopback port: forwards to a target, can drop every connection
and refuse new ones for a while (an outage), and can add latency per forwarded chunk.

It runs its own event loop in a daemon thread, so it serves in-process clients and subprocesses
alike and keeps working while the test's loop is blocked. Invariants: during an outage no byte
is forwarded (established connections are reset at its start; new ones are accepted and reset at
once, which a client sees as a refused connection); after it, new connections forward normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

from lambdasource.embedded import free_port
from tests.faults.loop_thread import LoopThread


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset', as with a dead host."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy(LoopThread):
    """``127.0.0.1:port`` → ``target_host:target_port``. Use as a context manager or
    ``start()``/``stop()``; ``outage(seconds)`` starts an outage and returns at once."""

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        port: int | None = None,
        latency: float = 0.0,
    ) -> None:
        super().__init__("tcp-proxy")
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.latency = latency
        self.connections = 0  # accepted and forwarded
        self.refused = 0  # accepted during an outage and reset
        self.dropped = 0  # established connections reset by an outage
        self._down_until = 0.0
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    # control (thread-safe) -------------------------------------------------------------------

    def outage(self, seconds: float) -> None:
        """Reset every open connection now and refuse new ones for ``seconds``."""
        self._down_until = time.monotonic() + seconds
        self.call_soon(self._drop_all)

    def end_outage(self) -> None:
        self._down_until = 0.0

    # the loop ----------------------------------------------------------------------------------

    async def _start_serving(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _stop_serving(self) -> None:
        """Stop accepting, reset every connection, let the handlers end."""
        if self._server is not None:
            self._server.close()
        self._drop_all()
        handlers = [t for t in self._handlers if not t.done()]
        if handlers:
            await asyncio.wait(handlers, timeout=5)

    def _drop_all(self) -> None:
        for writer in list(self._open):
            self.dropped += 1
            _reset(writer)
        self._open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if self.down:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self.connections += 1
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                _reset(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.down:
                    return
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            return
