"""Property: KeyPartitioner.partitions_of (vectorised: distinct keys hashed at once) agrees row
for row with kafka_partition of the serialised key, for random keys — empty strings, non-ASCII
text, arbitrary bytes, any int64 — and nulls (NULL_KEY)."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdasource.partitioning import NULL_KEY, KeyPartitioner, kafka_partition

PROPERTY = settings(derandomize=True, max_examples=150, deadline=None)
counts = st.integers(min_value=1, max_value=64)


@PROPERTY
@given(st.lists(st.none() | st.text(max_size=12), max_size=60), counts)
def test_text_keys(keys: list[str | None], partitions: int) -> None:
    got = KeyPartitioner("k", partitions).partitions_of(
        pa.table({"k": pa.array(keys, pa.string())})
    )
    assert got.tolist() == [
        NULL_KEY if k is None else kafka_partition(k.encode(), partitions) for k in keys
    ]


@PROPERTY
@given(st.lists(st.none() | st.binary(max_size=40), max_size=60), counts)
def test_bytes_keys(keys: list[bytes | None], partitions: int) -> None:
    table = pa.table({"k": pa.array(keys, pa.large_binary())})
    got = KeyPartitioner("k", partitions, "bytes").partitions_of(table)
    assert got.tolist() == [NULL_KEY if k is None else kafka_partition(k, partitions) for k in keys]


@PROPERTY
@given(
    st.lists(st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=60),
    counts,
    st.sampled_from(["string", "int64"]),
)
def test_integer_keys(keys: list[int | None], partitions: int, serializer: str) -> None:
    table = pa.table({"k": pa.array(keys, pa.int64())})
    got = KeyPartitioner("k", partitions, serializer).partitions_of(table)

    def encode(value: int) -> bytes:
        if serializer == "string":
            return str(value).encode()
        return value.to_bytes(8, "big", signed=True)

    assert got.tolist() == [
        NULL_KEY if k is None else kafka_partition(encode(k), partitions) for k in keys
    ]
