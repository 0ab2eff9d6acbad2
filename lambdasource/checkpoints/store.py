"""Checkpoint stores: where checkpoints live (a local directory or an S3 prefix).

Layout under the base location, one directory (prefix) per checkpoint::

    chk-000000000012/state.bin       the encoded state (see ``format.py``), written first
    chk-000000000012/MANIFEST.json   written last; names the data's size and SHA-256
    chk-000000000009/LINEAGE.json    a lineage marker: lineage 9 starts at id 9 (``lineage.py``)

Invariants: a checkpoint is *complete* iff its manifest exists, and only complete checkpoints
are listed by :meth:`CheckpointStore.complete_ids`; reading verifies size and checksum, so a
crash at any point of a write (or a corrupt object) never yields a restorable wrong state.
Local writes go to a temporary file, are fsynced and renamed into place (``os.replace``), then
the directory is fsynced; S3 writes are single PUTs (atomic per object), manifest last.
Deletion removes the manifest first, so a half-deleted checkpoint is simply incomplete.
Lineage markers are only removed by :meth:`CheckpointStore.clear` (and the store-wide
``prune(keep)`` without a lineage): pruning a lineage deletes states and keeps markers, so which
lineage an id belongs to never changes.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import CheckpointError, ConfigError
from ..s3 import S3Config, split_s3_url
from .format import Encoded, sha256
from .lineage import MARKER, Inventory

DATA = "state.bin"
MANIFEST = "MANIFEST.json"
_DIR = re.compile(r"^chk-(\d{12})$")


def checkpoint_dir(checkpoint_id: int) -> str:
    return f"chk-{checkpoint_id:012d}"


class CheckpointStore(abc.ABC):
    """A place for checkpoints. Methods may do I/O; none blocks the event loop.

    Subclasses implement the object primitives; the write order and verification live here.
    """

    url: str

    async def open(self) -> None:
        """Acquire clients (called once before use)."""

    async def close(self) -> None:
        """Release clients (called once, also after errors)."""

    # primitives -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_data(self, checkpoint_id: int, data: Encoded) -> None: ...

    @abc.abstractmethod
    async def put_manifest(self, checkpoint_id: int, manifest: bytes) -> None: ...

    @abc.abstractmethod
    async def get(self, checkpoint_id: int, name: str) -> bytearray | None:
        """The object's bytes, or None when it does not exist."""

    @abc.abstractmethod
    async def list_dirs(self) -> dict[int, set[str]]:
        """Every checkpoint id present (complete or not) → the object names it holds."""

    @abc.abstractmethod
    async def delete(self, checkpoint_id: int) -> None:
        """Remove a checkpoint: manifest first, then the rest (a lineage marker too)."""

    @abc.abstractmethod
    async def put_marker(self, checkpoint_id: int, body: bytes) -> None:
        """Write the lineage marker ``chk-<id>/LINEAGE.json`` (atomically, like a manifest)."""

    async def delete_state(self, checkpoint_id: int) -> None:
        """Remove a checkpoint's manifest, then its data, but keep its lineage marker.

        Stores override this with a direct implementation; this default deletes everything and
        writes the marker back.
        """
        marker = await self.get(checkpoint_id, MARKER)
        await self.delete(checkpoint_id)
        if marker is not None:
            await self.put_marker(checkpoint_id, bytes(marker))

    # protocol -------------------------------------------------------------------------------

    def where(self, checkpoint_id: int) -> str:
        return f"{self.url.rstrip('/')}/{checkpoint_dir(checkpoint_id)}"

    async def write(self, checkpoint_id: int, data: Encoded, manifest: dict[str, Any]) -> None:
        """Write the data, then the manifest (which records the data's size and checksum)."""
        body = dict(manifest, data={"name": DATA, "bytes": data.size, "sha256": data.sha256})
        await self.put_data(checkpoint_id, data)
        await self.put_manifest(checkpoint_id, json.dumps(body, indent=1).encode())

    async def complete_ids(self) -> list[int]:
        """Ids of checkpoints that have a manifest, ascending."""
        return sorted(i for i, names in (await self.list_dirs()).items() if MANIFEST in names)

    async def read_manifest(self, checkpoint_id: int) -> dict[str, Any]:
        raw = await self.get(checkpoint_id, MANIFEST)
        if raw is None:
            raise CheckpointError(f"checkpoint {self.where(checkpoint_id)}: no {MANIFEST}")
        try:
            manifest = json.loads(bytes(raw))
            manifest["data"]["sha256"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {self.where(checkpoint_id)}: unreadable {MANIFEST}: {exc!r}"
            ) from exc
        if not isinstance(manifest, dict):
            raise CheckpointError(f"checkpoint {self.where(checkpoint_id)}: bad {MANIFEST}")
        return manifest

    async def read_data(self, checkpoint_id: int, manifest: dict[str, Any]) -> bytearray:
        """The state bytes, verified against the manifest's size and SHA-256."""
        where = f"{self.where(checkpoint_id)}/{DATA}"
        raw = await self.get(checkpoint_id, DATA)
        if raw is None:
            raise CheckpointError(f"checkpoint {where}: data missing")
        expected = manifest["data"]
        if len(raw) != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {where}: {len(raw)} bytes, manifest says {expected['bytes']}"
            )
        digest = await asyncio.to_thread(sha256, raw)
        if digest != expected["sha256"]:
            raise CheckpointError(f"checkpoint {where}: checksum mismatch (corrupt data)")
        return raw

    async def inventory(self) -> Inventory:
        """What the store holds: ids present, complete ones, lineage markers (one listing)."""
        return Inventory.of(await self.list_dirs(), MANIFEST)

    async def read_marker(self, lineage: int) -> dict[str, Any]:
        """The body of lineage ``lineage``'s marker (``{}`` when it is missing or unreadable)."""
        raw = await self.get(lineage, MARKER)
        if raw is None:
            return {}
        try:
            body = json.loads(bytes(raw))
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    async def prune(self, keep: int, lineage: int | None = None) -> list[int]:
        """Keep the ``keep`` newest complete checkpoints of ``lineage``; delete its older ones
        (and its incomplete leftovers below them). Returns the ids whose state was deleted.

        Checkpoints of other lineages are never touched, and markers stay (see module
        docstring). ``lineage=None`` prunes the whole store as one history, markers included:
        only for stores that never had more than one lineage.
        """
        inventory = await self.inventory()
        if lineage is None:
            members, candidates = inventory.complete, sorted(inventory.dirs)
        else:
            members = inventory.members(lineage)
            candidates = [i for i in sorted(inventory.dirs) if inventory.lineage_of(i) == lineage]
        if len(members) <= keep:
            return []
        oldest_kept = members[-keep]
        doomed: list[int] = []
        for checkpoint_id in candidates:
            if checkpoint_id >= oldest_kept:
                break
            names = inventory.dirs[checkpoint_id]
            if lineage is None:
                await self.delete(checkpoint_id)
            elif names - {MARKER}:
                await self.delete_state(checkpoint_id)
            else:
                continue  # only the marker: it stays
            doomed.append(checkpoint_id)
        return doomed

    async def clear(self) -> list[int]:
        """Delete every checkpoint and lineage marker at this location (explicit deletion:
        ``await Checkpoints(url).clear()``; a run never calls it)."""
        doomed = sorted(await self.list_dirs())
        for checkpoint_id in doomed:
            await self.delete(checkpoint_id)
        return doomed


class LocalStore(CheckpointStore):
    """Checkpoints in a local directory (created on first write)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.url = str(self.path)

    def _dir(self, checkpoint_id: int) -> Path:
        return self.path / checkpoint_dir(checkpoint_id)

    def _put(self, checkpoint_id: int, name: str, chunks: Any) -> None:
        directory = self._dir(checkpoint_id)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        tmp = directory / f".{name}.tmp"
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(directory)

    async def put_data(self, checkpoint_id: int, data: Encoded) -> None:
        await asyncio.to_thread(self._put, checkpoint_id, DATA, data.chunks)

    async def put_manifest(self, checkpoint_id: int, manifest: bytes) -> None:
        await asyncio.to_thread(self._put, checkpoint_id, MANIFEST, [manifest])

    async def get(self, checkpoint_id: int, name: str) -> bytearray | None:
        def read() -> bytearray | None:
            target = self._dir(checkpoint_id) / name
            try:
                with open(target, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    buf = bytearray(size)
                    f.readinto(buf)
                    return buf
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(read)

    async def list_dirs(self) -> dict[int, set[str]]:
        def scan() -> dict[int, set[str]]:
            out: dict[int, set[str]] = {}
            if not self.path.is_dir():
                return out
            for entry in self.path.iterdir():
                m = _DIR.match(entry.name)
                if m and entry.is_dir():
                    out[int(m.group(1))] = {p.name for p in entry.iterdir()}
            return out

        return await asyncio.to_thread(scan)

    async def delete(self, checkpoint_id: int) -> None:
        def remove() -> None:
            directory = self._dir(checkpoint_id)
            with contextlib.suppress(FileNotFoundError):
                (directory / MANIFEST).unlink()
                _fsync_dir(directory)
            shutil.rmtree(directory, ignore_errors=True)

        await asyncio.to_thread(remove)

    async def put_marker(self, checkpoint_id: int, body: bytes) -> None:
        await asyncio.to_thread(self._put, checkpoint_id, MARKER, [body])

    async def delete_state(self, checkpoint_id: int) -> None:
        def remove() -> None:
            directory = self._dir(checkpoint_id)
            if not (directory / MARKER).exists():
                with contextlib.suppress(FileNotFoundError):
                    (directory / MANIFEST).unlink()
                    _fsync_dir(directory)
                shutil.rmtree(directory, ignore_errors=True)
                return
            with contextlib.suppress(FileNotFoundError):
                (directory / MANIFEST).unlink()
                _fsync_dir(directory)
            for entry in directory.iterdir():
                if entry.name != MARKER:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)

        await asyncio.to_thread(remove)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Store(CheckpointStore):
    """Checkpoints under an ``s3://bucket/prefix`` (aiobotocore; one client for the run)."""

    def __init__(self, url: str, config: S3Config | None = None) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_s3_url(url)
        self.config = config or S3Config()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    def _key(self, checkpoint_id: int, name: str) -> str:
        base = f"{self.prefix}/" if self.prefix else ""
        return f"{base}{checkpoint_dir(checkpoint_id)}/{name}"

    async def open(self) -> None:
        if self._client is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(self.config.client())
        except Exception as exc:
            await stack.aclose()
            raise CheckpointError(f"checkpoints at {self.url}: cannot create S3 client") from exc
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _call(self, what: str, key: str, **kwargs: Any) -> Any:
        if self._client is None:
            await self.open()
        try:
            return await getattr(self._client, what)(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from exc
            raise CheckpointError(
                f"checkpoints: S3 {what} s3://{self.bucket}/{key} failed: {exc!r}"
            ) from exc

    async def put_data(self, checkpoint_id: int, data: Encoded) -> None:
        key = self._key(checkpoint_id, DATA)
        body = await asyncio.to_thread(data.join)
        await self._call("put_object", key, Key=key, Body=body)

    async def put_manifest(self, checkpoint_id: int, manifest: bytes) -> None:
        key = self._key(checkpoint_id, MANIFEST)
        await self._call("put_object", key, Key=key, Body=manifest)

    async def get(self, checkpoint_id: int, name: str) -> bytearray | None:
        key = self._key(checkpoint_id, name)
        try:
            response = await self._call("get_object", key, Key=key)
        except FileNotFoundError:
            return None
        async with response["Body"] as body:
            return bytearray(await body.read())

    async def list_dirs(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": base}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call("list_objects_v2", base, **kwargs)
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(base) :].split("/")
                if len(parts) == 2 and (m := _DIR.match(parts[0])):
                    out.setdefault(int(m.group(1)), set()).add(parts[1])
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    async def delete(self, checkpoint_id: int) -> None:
        for name in (MANIFEST, DATA, MARKER):  # deleting a missing key is a no-op on S3
            key = self._key(checkpoint_id, name)
            await self._call("delete_object", key, Key=key)

    async def put_marker(self, checkpoint_id: int, body: bytes) -> None:
        key = self._key(checkpoint_id, MARKER)
        await self._call("put_object", key, Key=key, Body=body)

    async def delete_state(self, checkpoint_id: int) -> None:
        for name in (MANIFEST, DATA):
            key = self._key(checkpoint_id, name)
            await self._call("delete_object", key, Key=key)


def store_for(url: str, s3: S3Config | None = None) -> CheckpointStore:
    """The store for ``url``: ``s3://bucket/prefix``, ``file:///abs/dir`` or a plain path."""
    parsed = urlparse(url)
    if parsed.scheme in ("s3", "s3a"):
        return S3Store(url, s3)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"Checkpoints: file URL with a host is not supported: {url!r}")
        return LocalStore(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:\..." is a path, "gs://" is not supported
        raise ConfigError(
            f"Checkpoints: unsupported URL scheme {parsed.scheme!r} in {url!r} "
            "(use a local path, file:// or s3://)"
        )
    return LocalStore(url)
