"""Where lake files live: the local file system or S3 (aiobotocore), behind one small async API.

Invariants: paths handed out by :meth:`Storage.list` are relative to the storage root, use ``/``
and are sorted; every read is a whole-file or byte-range read (S3: ranged GETs, issued
concurrently); blocking local I/O runs in ``asyncio.to_thread``. Errors of the layer underneath are
translated to :class:`LakeReadError` naming the file.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import struct
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ...errors import ConfigError, LakeReadError
from ...s3 import S3Config, split_s3_url

FOOTER_PROBE = 64 * 1024  # first ranged GET of a file's tail; enough for most footers


@dataclass(frozen=True)
class StoredFile:
    """One listed file: ``path`` relative to the root (``/``-separated) and its size in bytes."""

    path: str
    size: int


class Storage:
    """Async access to the files under one root (a local directory or an S3 prefix)."""

    root: str

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def list(self, under: str = "") -> builtins.list[StoredFile]:
        raise NotImplementedError

    async def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``path``."""
        raise NotImplementedError

    async def read_tail(self, path: str, nbytes: int) -> bytes:
        """The last ``nbytes`` bytes of ``path`` (fewer if the file is shorter)."""
        raise NotImplementedError

    async def read(self, path: str) -> bytes:
        raise NotImplementedError

    def url(self, path: str) -> str:
        """A user-facing name of ``path`` for messages."""
        return f"{self.root.rstrip('/')}/{path}"

    async def read_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]]
    ) -> builtins.list[bytes]:
        """Several byte ranges of one file, fetched concurrently."""
        return list(await asyncio.gather(*(self.read_range(path, a, b) for a, b in ranges)))

    async def read_footer(self, path: str, size: int, probe: int = FOOTER_PROBE) -> bytes:
        """The last ``probe`` bytes of ``path``, at least its whole Parquet footer (with the
        8-byte trailer): one ranged GET, two if the footer is longer than the probe."""
        tail = await self.read_tail(path, min(size, max(probe, 12)))
        if len(tail) < 12 or tail[-4:] != b"PAR1":
            raise LakeReadError(f"not a Parquet file (no PAR1 trailer) file={self.url(path)}")
        (footer_len,) = struct.unpack("<I", tail[-8:-4])
        need = footer_len + 8
        if need + 4 > size:
            raise LakeReadError(
                f"truncated Parquet file (footer length {footer_len} > size {size}) "
                f"file={self.url(path)}"
            )
        if need > len(tail):
            tail = await self.read_tail(path, need)
        return tail


class LocalStorage(Storage):
    """A local directory (``path`` or ``file://`` URL)."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self._base = Path(self.root)

    def _full(self, path: str) -> str:
        return str(self._base / path) if path else str(self._base)

    async def list(self, under: str = "") -> builtins.list[StoredFile]:
        def walk() -> builtins.list[StoredFile]:
            base = self._base / under if under else self._base
            if not base.exists():
                if under:
                    return []
                raise LakeReadError(f"lake path does not exist: {self.root}")
            found: builtins.list[StoredFile] = []
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    full = Path(dirpath) / name
                    rel = full.relative_to(self._base).as_posix()
                    found.append(StoredFile(rel, full.stat().st_size))
            return sorted(found, key=lambda f: f.path)

        return await asyncio.to_thread(walk)

    def _read_range_sync(self, path: str, start: int, end: int) -> bytes:
        try:
            with open(self._full(path), "rb") as fh:
                fh.seek(start)
                return fh.read(end - start)
        except OSError as exc:
            raise LakeReadError(f"cannot read file={self.url(path)}: {exc}") from exc

    async def read_range(self, path: str, start: int, end: int) -> bytes:
        return await asyncio.to_thread(self._read_range_sync, path, start, end)

    async def read_tail(self, path: str, nbytes: int) -> bytes:
        def tail() -> bytes:
            try:
                with open(self._full(path), "rb") as fh:
                    size = fh.seek(0, os.SEEK_END)
                    fh.seek(max(0, size - nbytes))
                    return fh.read()
            except OSError as exc:
                raise LakeReadError(f"cannot read file={self.url(path)}: {exc}") from exc

        return await asyncio.to_thread(tail)

    async def read(self, path: str) -> bytes:
        def whole() -> bytes:
            try:
                return Path(self._full(path)).read_bytes()
            except OSError as exc:
                raise LakeReadError(f"cannot read file={self.url(path)}: {exc}") from exc

        return await asyncio.to_thread(whole)

    def local_path(self, path: str) -> str:
        return self._full(path)


class S3Storage(Storage):
    """An ``s3://bucket/prefix`` through one aiobotocore client (opened by ``async with``)."""

    def __init__(self, url: str, config: S3Config | None) -> None:
        self.root = url.rstrip("/")
        self.bucket, self.prefix = split_s3_url(url)
        self.config = config or S3Config()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def __aenter__(self) -> S3Storage:
        self._stack = AsyncExitStack()
        client = _session().create_client("s3", **self.config.client_kwargs())
        self._client = await self._stack.enter_async_context(client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Storage used outside 'async with'")
        return self._client

    async def list(self, under: str = "") -> builtins.list[StoredFile]:
        root = self.prefix + "/" if self.prefix else ""
        prefix = self._key(under) + "/" if under else root
        found: builtins.list[StoredFile] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", ()):
                    found.append(StoredFile(obj["Key"][len(root) :], int(obj["Size"])))
        except Exception as exc:  # botocore errors → one library error naming the prefix
            raise LakeReadError(f"cannot list s3://{self.bucket}/{prefix}: {exc}") from exc
        return sorted(found, key=lambda f: f.path)

    async def _get(self, path: str, byte_range: str | None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(path)}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        try:
            response = await self.client.get_object(**kwargs)
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data
        except Exception as exc:
            raise LakeReadError(f"cannot read file={self.url(path)}: {exc}") from exc

    async def read_range(self, path: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return await self._get(path, f"bytes={start}-{end - 1}")

    async def read_tail(self, path: str, nbytes: int) -> bytes:
        return await self._get(path, f"bytes=-{nbytes}")

    async def read(self, path: str) -> bytes:
        return await self._get(path, None)


_SESSION: Any = None


def _session() -> Any:
    """One aiobotocore session per process: it caches the service model, which makes creating
    a client cheap (a fresh session re-reads botocore's JSON data, ~0.1–0.3 s)."""
    global _SESSION
    if _SESSION is None:
        from aiobotocore.session import get_session

        _SESSION = get_session()
    return _SESSION


def open_storage(path: str | Path, s3: S3Config | None = None) -> Storage:
    """Local path, ``file://`` URL or ``s3://bucket/prefix`` → a :class:`Storage`."""
    text = str(path)
    if text.startswith(("s3://", "s3a://")):
        return S3Storage(text, s3)
    if text.startswith("file://"):
        parsed = urlparse(text)
        return LocalStorage(unquote(parsed.path))
    if "://" in text:
        raise ConfigError(f"unsupported lake URL {text!r} (use a local path, file:// or s3://)")
    return LocalStorage(text)
