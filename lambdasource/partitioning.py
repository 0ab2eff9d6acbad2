"""Kafka's default partitioner, exactly: which stream partition a key belongs to.

A scale-out task owns one Kafka partition ``p`` of ``N`` (DESIGN §3 "Tasks"): the stream records
of ``p`` and the lake records whose key the producer would have sent to ``p``. Kafka's producers
(Java's ``BuiltInPartitioner.partitionForKey``, aiokafka's ``DefaultPartitioner``, librdkafka's
``murmur2_random``) put a record with a non-null key on ``toPositive(murmur2(key bytes)) % N``;
:func:`murmur2` is Java's ``Utils.murmur2`` (signed 32-bit arithmetic, seed ``0x9747b28c``) and
:func:`kafka_partition` that formula.

:class:`KeyPartitioner` maps the rows of an Arrow batch to partitions, vectorised: the key column
is dictionary-encoded, each distinct value serialised once (as the producer serialised it) and
hashed by a numpy murmur2 over all distinct keys at once, then mapped back to the rows.

Serialisers (``serializer=``), as producers serialise keys:

- ``"string"`` — UTF-8 of the value's text (Java's ``StringSerializer``): string columns as
  they are, integer columns as their decimal text (``42`` → ``b"42"``).
- ``"bytes"`` — a binary (or string) column as is.
- ``"int32"`` / ``"int64"`` — big-endian two's complement (``IntegerSerializer`` /
  ``LongSerializer``); a value outside int32 under ``"int32"`` is a :class:`SchemaError`.
- ``"json"`` — ``orjson.dumps`` of the value, as :class:`~lambdasource.KafkaUpsert` writes its
  keys (a scalar for one key column, an array for several).
- a callable ``value -> bytes`` (a tuple of the values for several key columns), called once per
  distinct key.

Several key columns need ``"json"`` or a callable (a :class:`ConfigError` otherwise): a producer
that sends a composite key chose some encoding of it, and only those two say which.

Null keys: Kafka's default partitioner spreads records without a key (sticky, round-robin), so a
null key belongs to no partition deterministically. :meth:`KeyPartitioner.partitions_of` gives
such rows :data:`NULL_KEY` (``-1``); callers count them and decide (the lake reader of a task
dead-letters them once, in the task of partition 0; a stream record with a null key stays on the
partition it arrived on — see :mod:`lambdasource.sources.lake.partitioned`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ConfigError, SchemaError

__all__ = ["NULL_KEY", "SERIALIZERS", "KeyPartitioner", "kafka_partition", "murmur2"]

NULL_KEY = -1
"""The partition :meth:`KeyPartitioner.partitions_of` gives a row whose key is null."""

SERIALIZERS = ("string", "bytes", "int32", "int64", "json")

Serializer: TypeAlias = "str | Callable[[Any], bytes]"

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF
_BLOCK_BYTES = 1 << 24  # padded key bytes hashed at once (bounds memory for long keys)


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2(data)``: a signed 32-bit int, bit for bit as Java computes it."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``: ``toPositive(murmur2) % N``."""
    if partitions < 1:
        raise ConfigError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def murmur2_many(keys: pa.Array) -> np.ndarray:
    """:func:`murmur2` of every value of a binary array (no nulls), as uint32, vectorised.

    Keys are laid out as rows of a zero-padded byte matrix (in blocks, so long keys do not take
    unbounded memory) and hashed a 4-byte word at a time; a row stops changing after its last
    whole word, then its tail bytes are mixed in. numpy's uint32 arithmetic wraps like Java's int.
    """
    if keys.null_count:
        raise ValueError("murmur2_many: null keys have no hash")
    binary = keys.cast(pa.large_binary())
    count = len(binary)
    out = np.empty(count, dtype=np.uint32)
    if count == 0:
        return out
    buffers = binary.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[binary.offset : binary.offset + count + 1]
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.zeros(0, np.uint8)
    )
    lengths = np.diff(offsets)
    start = 0
    while start < count:
        width = int(lengths[start:].max(initial=0))
        rows = max(1, min(count - start, _BLOCK_BYTES // max(width + 4, 4)))
        stop = start + rows
        out[start:stop] = _hash_block(data, offsets[start:stop], lengths[start:stop])
        start = stop
    return out


def _hash_block(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    width = int(lengths.max(initial=0))
    padded_width = (width + 3) // 4 * 4 + 4
    columns = np.arange(padded_width, dtype=np.int64)
    inside = columns[None, :] < lengths[:, None]
    index = np.where(inside, starts[:, None] + columns[None, :], 0)
    matrix = np.where(inside, data[index] if len(data) else 0, 0).astype(np.uint8)
    words = np.ascontiguousarray(matrix).view("<u4")
    m = np.uint32(_M)
    h = np.uint32(_SEED) ^ lengths.astype(np.uint32)
    whole_words = lengths // 4
    for word in range(width // 4):
        k = words[:, word] * m
        k ^= k >> np.uint32(24)
        k *= m
        h = np.where(whole_words > word, (h * m) ^ k, h)
    rest = lengths % 4
    tail = (lengths - rest).astype(np.int64)
    rows = np.arange(len(lengths))
    byte0 = matrix[rows, np.minimum(tail, padded_width - 1)].astype(np.uint32)
    byte1 = matrix[rows, np.minimum(tail + 1, padded_width - 1)].astype(np.uint32)
    byte2 = matrix[rows, np.minimum(tail + 2, padded_width - 1)].astype(np.uint32)
    h = np.where(rest == 3, h ^ (byte2 << np.uint32(16)), h)
    h = np.where(rest >= 2, h ^ (byte1 << np.uint32(8)), h)
    h = np.where(rest >= 1, (h ^ byte0) * m, h)
    h ^= h >> np.uint32(13)
    h *= m
    h ^= h >> np.uint32(15)
    return h.astype(np.uint32)


def _json_default(value: Any) -> Any:  # as KafkaUpsert encodes what JSON has no type for
    from decimal import Decimal

    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


class KeyPartitioner:
    """Rows → Kafka partitions by Kafka's default partitioner over the serialised ``key``.

    ``key``: the key column(s); ``partitions``: the topic's partition count; ``serializer``: how
    the producer serialised the key (module docstring). Invariant: for a non-null key,
    ``partitions_of`` gives exactly ``kafka_partition(serialise(value), partitions)``.
    """

    def __init__(
        self, key: str | Sequence[str], partitions: int, serializer: Serializer = "string"
    ) -> None:
        columns = [key] if isinstance(key, str) else list(key)
        if not columns or not all(isinstance(c, str) and c for c in columns):
            raise ConfigError(f"KeyPartitioner: key must name one or more columns, got {key!r}")
        if partitions < 1:
            raise ConfigError(f"KeyPartitioner: partitions must be >= 1, got {partitions}")
        if not callable(serializer) and serializer not in SERIALIZERS:
            raise ConfigError(
                f"KeyPartitioner: serializer must be one of {SERIALIZERS} or a callable "
                f"value -> bytes, got {serializer!r}"
            )
        if len(columns) > 1 and not (callable(serializer) or serializer == "json"):
            raise ConfigError(
                f"KeyPartitioner: a key of several columns {columns} needs serializer='json' "
                "(a JSON array, as KafkaUpsert writes it) or a callable tuple -> bytes: a "
                f"{serializer!r} serializer has no encoding of a composite key"
            )
        self.key = columns
        self.partitions = partitions
        self.serializer = serializer

    def __repr__(self) -> str:
        name = getattr(self.serializer, "__name__", None) if callable(self.serializer) else None
        kind = name or self.serializer
        return f"KeyPartitioner({self.key!r}, {self.partitions}, serializer={kind!r})"

    def describe(self) -> str:
        return f"key={','.join(self.key)} partitions={self.partitions}"

    def check_schema(self, schema: pa.Schema, where: str) -> None:
        """A :class:`SchemaError` naming ``where`` when a key column is missing."""
        missing = [c for c in self.key if c not in schema.names]
        if missing:
            raise SchemaError(
                f"{where}: key column(s) {missing} of the partitioner are not in the columns "
                f"{schema.names}"
            )

    def partitions_of(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """The partition of every row (int32); :data:`NULL_KEY` where the key is null (for
        several columns: where any of them is null)."""
        self.check_schema(batch.schema, "KeyPartitioner")
        rows = batch.num_rows
        out = np.full(rows, NULL_KEY, dtype=np.int32)
        if rows == 0:
            return out
        if len(self.key) == 1:
            column = batch.column(self.key[0])
            values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            if pa.types.is_dictionary(values.type):
                encoded = values
            else:
                encoded = pc.dictionary_encode(values)
            dictionary = encoded.dictionary
            indices = encoded.indices
            codes = np.asarray(indices.fill_null(0).to_numpy(zero_copy_only=False), np.int64)
            valid = np.asarray(indices.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            if dictionary.null_count:  # a dictionary may hold a null value itself
                null_codes = np.asarray(dictionary.is_null().to_numpy(zero_copy_only=False))
                valid &= ~null_codes[codes]
            fill = _fill_value(dictionary) if dictionary.null_count else None
            filled = dictionary if fill is None else dictionary.fill_null(fill)
            distinct = self._distinct_partitions(filled)
            out[valid] = distinct[codes[valid]]
            return out
        return self._composite(batch, out)

    def _composite(self, batch: pa.RecordBatch | pa.Table, out: np.ndarray) -> np.ndarray:
        """Several key columns: distinct tuples via a Python dict (json or callable only)."""
        columns = [batch.column(c).to_pylist() for c in self.key]
        seen: dict[tuple[Any, ...], int] = {}
        for row, values in enumerate(zip(*columns, strict=True)):
            if any(v is None for v in values):
                continue
            found = seen.get(values)
            if found is None:
                found = seen[values] = kafka_partition(self._encode(values), self.partitions)
            out[row] = found
        return out

    def _encode(self, value: Any) -> bytes:
        if callable(self.serializer):
            data = self.serializer(value)
            if not isinstance(data, bytes | bytearray | memoryview):
                raise SchemaError(
                    f"KeyPartitioner: the serializer returned {type(data).__name__} for key "
                    f"{value!r}, not bytes"
                )
            return bytes(data)
        payload = list(value) if isinstance(value, tuple) else value
        return orjson.dumps(payload, default=_json_default)

    def _distinct_partitions(self, values: pa.Array) -> np.ndarray:
        """The partition of each (non-null) distinct value."""
        serialized = self._serialize(values)
        hashes = murmur2_many(serialized)
        return ((hashes & np.uint32(0x7FFFFFFF)) % np.uint32(self.partitions)).astype(np.int32)

    def _serialize(self, values: pa.Array) -> pa.Array:
        kind = values.type
        name = self.key[0]
        serializer = self.serializer
        if callable(serializer) or serializer == "json":
            return pa.array(
                [b"" if v is None else self._encode(v) for v in values.to_pylist()], pa.binary()
            )
        if serializer == "string":
            if _is_text(kind):
                return values.cast(pa.large_binary())
            if pa.types.is_integer(kind):
                return values.cast(pa.string()).cast(pa.large_binary())
            raise SchemaError(
                f"KeyPartitioner: serializer='string' takes a string or integer column; key "
                f"column {name!r} is {kind}"
            )
        if serializer == "bytes":
            if _is_text(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
                return values.cast(pa.large_binary())
            if pa.types.is_fixed_size_binary(kind):
                return values.cast(pa.binary())
            raise SchemaError(
                f"KeyPartitioner: serializer='bytes' takes a binary column; key column "
                f"{name!r} is {kind}"
            )
        width, dtype = (4, ">i4") if serializer == "int32" else (8, ">i8")
        if not pa.types.is_integer(kind):
            raise SchemaError(
                f"KeyPartitioner: serializer={serializer!r} takes an integer column; key "
                f"column {name!r} is {kind}"
            )
        numbers = np.asarray(values.to_numpy(zero_copy_only=False))
        if width == 4 and len(numbers):
            low, high = numbers.min(), numbers.max()
            if low < -(2**31) or high > 2**31 - 1:
                raise SchemaError(
                    f"KeyPartitioner: serializer='int32': key column {name!r} holds "
                    f"{low if low < -(2**31) else high}, outside int32 (use 'int64')"
                )
        if pa.types.is_unsigned_integer(kind) and len(numbers) and numbers.max() > 2**63 - 1:
            raise SchemaError(
                f"KeyPartitioner: key column {name!r} holds values beyond int64 ({kind})"
            )
        raw = numbers.astype(np.int64).astype(dtype).tobytes()
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(numbers), [None, pa.py_buffer(raw)]
        ).cast(pa.large_binary())


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _fill_value(dictionary: pa.Array) -> Any:
    """A stand-in for a null dictionary value (its rows are marked null anyway)."""
    kind = dictionary.type
    if pa.types.is_integer(kind):
        return 0
    if _is_text(kind):
        return ""
    if pa.types.is_fixed_size_binary(kind):
        return pa.scalar(b"\0" * kind.byte_width, kind)
    return pa.scalar(b"", kind) if pa.types.is_binary(kind) else None
