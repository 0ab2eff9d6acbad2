"""A test server on its own asyncio loop in a daemon thread, so it keeps serving (or failing on
purpose) whatever the test's own loop is doing. Subclasses implement ``_start_serving`` and
``_stop_serving``."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Self


class LoopThread:
    """``start()`` returns once ``_start_serving()`` is listening; ``stop()`` awaits
    ``_stop_serving()`` on the server's loop, then ends the thread. Also a context manager."""

    port: int

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    async def _start_serving(self) -> None:
        """Start serving on ``self.port`` (runs on the server's loop)."""
        raise NotImplementedError

    async def _stop_serving(self) -> None:
        """Stop serving and release resources (runs on the server's loop)."""

    def call_soon(self, callback: object) -> None:
        """Run ``callback()`` on the server's loop (thread-safe; ignored when not running)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(callback)  # type: ignore[arg-type]

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._serve, name=f"{self._name}-{self.port}")
        self._thread.daemon = True
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self._name} on port {self.port} did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), loop)
        thread.join(10)
        self._loop = self._thread = None

    async def _stop(self) -> None:
        try:
            await self._stop_serving()
        finally:
            asyncio.get_running_loop().stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start_serving())
            self._ready.set()
            loop.run_forever()
        finally:
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
