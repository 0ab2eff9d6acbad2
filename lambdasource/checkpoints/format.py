"""The on-disk format of a checkpoint's state (``state.bin``) and its manifest.

Format (version 2): the state tree as JSON plus binary buffers — numpy data as it is, Arrow
objects as Arrow IPC streams (see :mod:`.codec`). Nothing in it runs code when read: a checkpoint
location others can write cannot take over the job. Version 1 (pickle, lambdasource before
2026-12) is refused with a message saying what to do. The manifest's SHA-256 detects truncated
or corrupted data.

Layout of ``state.bin`` (little-endian)::

    b"LSCKPT\\0\\0" | u32 format version | u32 buffer count n | u64 JSON length
    | n × u64 buffer length | JSON tree | padding to 64 | buffer 0 | padding to 64 | buffer 1 …

Buffers start on 64-byte boundaries of the file, so views of them into a read buffer (malloc:
16-byte aligned) are aligned for every numpy/Arrow type.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError, CheckpointFormatError
from .codec import Decoder, Encoder, from_json, state_type, to_json

FORMAT_VERSION = 2
PICKLE_FORMAT_VERSION = 1
MAGIC = b"LSCKPT\0\0"
_HEAD = struct.Struct("<8sIIQ")
_ALIGN = 64


@state_type("frozen")
@dataclass(frozen=True, slots=True)
class Frozen:
    """State encoded at capture time (for state whose owner may mutate it after the barrier).

    Built-in engines hand out immutable snapshots; user operators, keyed state and source
    positions are frozen into bytes synchronously so a background write never sees later changes.
    """

    data: bytes

    @staticmethod
    def of(value: Any, what: str = "state") -> Frozen:
        """``value`` encoded now; ``what`` names its owner in errors (``operator=x snapshot()``)."""
        return Frozen(encode(value, what).join())

    def thaw(self) -> Any:
        return decode(bytearray(self.data), where="frozen state")


def thaw(value: Any) -> Any:
    return value.thaw() if isinstance(value, Frozen) else value


def _pad(n: int) -> int:
    return (-n) % _ALIGN


@dataclass(slots=True)
class Encoded:
    """An encoded state: ``chunks`` to write in order, their total ``size`` and ``sha256``."""

    chunks: list[memoryview | bytes]
    size: int
    sha256: str
    sizes: dict[str, int] = field(default_factory=dict)  # encode_checkpoint: bytes per node

    def __iter__(self) -> Iterator[memoryview | bytes]:
        return iter(self.chunks)

    def join(self) -> bytes:
        return b"".join(self.chunks)


def encode(state: Any, what: str = "state") -> Encoded:
    """Serialise ``state`` (CPU-bound: call from a worker thread); CheckpointError names the
    part of the state that is not plain data, starting from ``what``."""
    encoder = Encoder()
    return _pack(to_json(encoder.encode(state, what)), encoder.buffers)


def encode_checkpoint(checkpoint_id: int, nodes: dict[str, Any]) -> Encoded:
    """A checkpoint's payload ``{"checkpoint_id", "nodes": {name: state}}``, with the bytes each
    node's state takes in :attr:`Encoded.sizes` (for the manifest)."""
    encoder = Encoder()
    sizes: dict[str, int] = {}
    trees: dict[str, Any] = {}
    for name, state in nodes.items():
        first = len(encoder.buffers)
        trees[name] = encoder.encode(state, f"node={name}")
        sizes[name] = len(to_json(trees[name])) + sum(map(_length, encoder.buffers[first:]))
    tree = {"$": "map", "v": {"checkpoint_id": checkpoint_id, "nodes": {"$": "map", "v": trees}}}
    encoded = _pack(to_json(tree), encoder.buffers)
    encoded.sizes = sizes
    return encoded


def _length(view: memoryview | bytes) -> int:
    return len(view) if isinstance(view, bytes) else view.nbytes


def _pack(tree: bytes, views: list[memoryview | bytes]) -> Encoded:
    header = _HEAD.pack(MAGIC, FORMAT_VERSION, len(views), len(tree))
    header += struct.pack(f"<{len(views)}Q", *map(_length, views))
    chunks: list[memoryview | bytes] = [header, tree]
    offset = len(header) + len(tree)
    for view in views:
        if pad := _pad(offset):
            chunks.append(b"\0" * pad)
            offset += pad
        chunks.append(view)
        offset += _length(view)
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return Encoded(chunks, offset, digest.hexdigest())


def pickle_refused(where: str) -> CheckpointFormatError:
    """The error for a checkpoint in format version 1 (pickle)."""
    return CheckpointFormatError(
        f"{where}: written in the pickle format of lambdasource before 2026-12, which this "
        "version does not read (reading pickle runs code from the file). Finish the job with "
        "the version that wrote it, or start this one fresh: Pipeline.run(restore=None), or a "
        "new [checkpoints] url in a job file (the old checkpoints are left where they are)"
    )


def decode(data: bytearray | bytes, *, where: str) -> Any:
    """Inverse of :func:`encode`; ``data`` should be a bytearray so restored arrays are writable."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise CheckpointError(f"{where}: state is truncated ({len(view)} bytes)")
    magic, version, n, tree_len = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise CheckpointError(f"{where}: not a lambdasource checkpoint (bad magic)")
    if version == PICKLE_FORMAT_VERSION:
        raise pickle_refused(where)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: state format version {version}, this lambdasource reads {FORMAT_VERSION}"
        )
    if len(view) < _HEAD.size + 8 * n:
        raise CheckpointError(f"{where}: state is truncated ({len(view)} bytes)")
    lengths = struct.unpack_from(f"<{n}Q", view, _HEAD.size)
    offset = _HEAD.size + 8 * n
    tree = view[offset : offset + tree_len]
    offset += tree_len
    buffers = []
    for length in lengths:
        offset += _pad(offset)
        buffers.append(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise CheckpointError(f"{where}: state has {len(view)} bytes, layout says {offset}")
    try:
        return Decoder(buffers, where).decode(from_json(tree, where))
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        # a tree that is valid JSON but not one encode() writes (corrupt or forged)
        raise CheckpointError(f"{where}: state cannot be decoded: {exc!r}") from exc


def sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
