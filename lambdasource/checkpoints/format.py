"""The on-disk format of a checkpoint's state (``state.bin``) and its manifest.

Format choice: pickle protocol 5 with *out-of-band* buffers. Checkpoint state is plain Python
(dicts, tuples, ints), numpy arrays and Arrow objects; protocol 5 hands every large contiguous
buffer (numpy arrays, Arrow buffers) to us as a zero-copy ``PickleBuffer``, so encoding costs one
small pickle stream plus a sequential write of the arrays as they are, and decoding maps them
back without a copy. Arrow IPC + JSON would need a bespoke schema for every engine's state;
pickle round-trips the engines' own structures exactly. Pickle executes code when loaded, so a
checkpoint must only ever be read from a location the job itself writes (it is our own file,
like Flink's savepoints); the manifest's SHA-256 detects truncated or corrupted data.

Layout of ``state.bin`` (little-endian)::

    b"LSCKPT\\0\\0" | u32 format version | u32 buffer count n | u64 pickle length
    | n × u64 buffer length | pickle stream | padding to 64 | buffer 0 | padding to 64 | buffer 1 …

Buffers start on 64-byte boundaries of the file, so views of them into a read buffer (malloc:
16-byte aligned) are aligned for every numpy/Arrow type.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError

FORMAT_VERSION = 1
MAGIC = b"LSCKPT\0\0"
_HEAD = struct.Struct("<8sIIQ")
_ALIGN = 64


@dataclass(frozen=True, slots=True)
class Frozen:
    """State pickled at capture time (for state whose owner may mutate it after the barrier).

    Built-in engines hand out immutable snapshots; user operators, keyed state and source
    positions are frozen into bytes synchronously so a background write never sees later changes.
    """

    data: bytes

    @staticmethod
    def of(value: Any) -> Frozen:
        return Frozen(pickle.dumps(value, protocol=5))

    def thaw(self) -> Any:
        return pickle.loads(self.data)


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

    def __iter__(self) -> Iterator[memoryview | bytes]:
        return iter(self.chunks)

    def join(self) -> bytes:
        return b"".join(self.chunks)


def encode(state: Any) -> Encoded:
    """Serialise ``state`` (CPU-bound: call from a worker thread)."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = pickle.dumps(state, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:  # an operator snapshot that cannot be pickled
        raise CheckpointError(f"checkpoint state cannot be serialised: {exc!r}") from exc
    views = [b.raw() for b in buffers]
    header = _HEAD.pack(MAGIC, FORMAT_VERSION, len(views), len(stream))
    header += struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
    chunks: list[memoryview | bytes] = [header, stream]
    offset = len(header) + len(stream)
    for view in views:
        if pad := _pad(offset):
            chunks.append(b"\0" * pad)
            offset += pad
        chunks.append(view)
        offset += view.nbytes
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return Encoded(chunks, offset, digest.hexdigest())


def decode(data: bytearray | bytes, *, where: str) -> Any:
    """Inverse of :func:`encode`; ``data`` should be a bytearray so restored arrays are writable."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise CheckpointError(f"{where}: state is truncated ({len(view)} bytes)")
    magic, version, n, stream_len = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise CheckpointError(f"{where}: not a lambdasource checkpoint (bad magic)")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: state format version {version}, this lambdasource reads {FORMAT_VERSION}"
        )
    lengths = struct.unpack_from(f"<{n}Q", view, _HEAD.size)
    offset = _HEAD.size + 8 * n
    stream = view[offset : offset + stream_len]
    offset += stream_len
    buffers = []
    for length in lengths:
        offset += _pad(offset)
        buffers.append(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise CheckpointError(f"{where}: state has {len(view)} bytes, layout says {offset}")
    try:
        return pickle.loads(stream, buffers=buffers)
    except Exception as exc:
        raise CheckpointError(f"{where}: state cannot be decoded: {exc!r}") from exc


def sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
