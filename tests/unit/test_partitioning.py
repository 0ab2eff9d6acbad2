"""Kafka's default partitioner (lambdasource.partitioning) against Kafka's own test vectors and
the serialisations producers use; agreement with real producers is in
tests/integration/test_lake_partitions.py (aiokafka through a broker, Java's kafka-clients)."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest

from lambdasource.errors import ConfigError, SchemaError
from lambdasource.partitioning import (
    NULL_KEY,
    KeyPartitioner,
    kafka_partition,
    murmur2,
    murmur2_many,
)

# apache/kafka clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java testMurmur2
KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), sorted(KAFKA_MURMUR2.items()))
def test_murmur2_kafka_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_murmur2_many_kafka_vectors_and_every_tail_length() -> None:
    keys = list(KAFKA_MURMUR2)
    hashed = murmur2_many(pa.array(keys, pa.binary())).view(np.int32)
    assert hashed.tolist() == [KAFKA_MURMUR2[k] for k in keys]
    # every length 0..40 (each remainder mod 4, words of 0xff: Java's signed bytes masked)
    samples = [bytes((i * 37 + j) % 256 for j in range(n)) for n in range(41) for i in (1, 255)]
    vector = murmur2_many(pa.array(samples, pa.binary())).view(np.int32).tolist()
    assert vector == [murmur2(s) for s in samples]


def test_kafka_partition_is_to_positive_mod() -> None:
    # toPositive(-973932308) = -973932308 & 0x7fffffff = 1173551340
    assert kafka_partition(b"21", 1_000_000_007) == 1173551340 % 1_000_000_007
    assert kafka_partition(b"21", 4) == 1173551340 % 4
    assert kafka_partition(b"abc", 7) == 479470107 % 7
    with pytest.raises(ConfigError):
        kafka_partition(b"x", 0)


def test_string_serializer_text_and_integers() -> None:
    keys = ["21", "foobar", "", "é€😀", None]
    table = pa.table({"k": keys})
    got = KeyPartitioner("k", 5).partitions_of(table).tolist()
    assert got == [kafka_partition(k.encode(), 5) if k is not None else NULL_KEY for k in keys]
    numbers = pa.table({"k": pa.array([0, -7, 2**40, None], pa.int64())})
    got = KeyPartitioner("k", 5).partitions_of(numbers).tolist()
    expected = [kafka_partition(str(v).encode(), 5) for v in (0, -7, 2**40)]
    assert got == [*expected, NULL_KEY]


def test_int_serializers_are_big_endian() -> None:
    table = pa.table({"k": pa.array([1, -1, 2**31 - 1, None], pa.int64())})
    got32 = KeyPartitioner("k", 9, "int32").partitions_of(table).tolist()
    assert got32[:3] == [
        kafka_partition(v.to_bytes(4, "big", signed=True), 9) for v in (1, -1, 2**31 - 1)
    ]
    assert got32[3] == NULL_KEY
    got64 = KeyPartitioner("k", 9, "int64").partitions_of(table).tolist()
    assert got64[:3] == [
        kafka_partition(v.to_bytes(8, "big", signed=True), 9) for v in (1, -1, 2**31 - 1)
    ]
    with pytest.raises(SchemaError, match="outside int32"):
        KeyPartitioner("k", 9, "int32").partitions_of(pa.table({"k": [2**31]}))
    with pytest.raises(SchemaError, match="integer column"):
        KeyPartitioner("k", 9, "int64").partitions_of(pa.table({"k": ["1"]}))


def test_json_serializer_is_kafka_upserts_key() -> None:
    table = pa.table({"a": [1, 2, None], "b": ["x", "é", "z"]})
    one = KeyPartitioner("b", 6, "json").partitions_of(table).tolist()
    assert one == [kafka_partition(orjson.dumps(v), 6) for v in ("x", "é", "z")]
    two = KeyPartitioner(["a", "b"], 6, "json").partitions_of(table).tolist()
    assert two[:2] == [
        kafka_partition(orjson.dumps([1, "x"]), 6),
        kafka_partition(orjson.dumps([2, "é"]), 6),
    ]
    assert two[2] == NULL_KEY


def test_bytes_callable_dictionary_and_chunks() -> None:
    raw = [b"\x00\xff", b"", None, b"abc"]
    got = KeyPartitioner("k", 4, "bytes").partitions_of(pa.table({"k": pa.array(raw, pa.binary())}))
    assert got.tolist() == [
        kafka_partition(b"\x00\xff", 4),
        kafka_partition(b"", 4),
        NULL_KEY,
        kafka_partition(b"abc", 4),
    ]
    reverse = KeyPartitioner("k", 4, lambda v: v[::-1].encode())
    assert reverse.partitions_of(pa.table({"k": ["ab", None]})).tolist() == [
        kafka_partition(b"ba", 4),
        NULL_KEY,
    ]
    encoded = pa.array(["b", "a", None, "b"]).dictionary_encode()
    chunked = pa.table({"k": pa.chunked_array([encoded.slice(0, 2), encoded.slice(2)])})
    assert KeyPartitioner("k", 3).partitions_of(chunked).tolist() == [
        kafka_partition(b"b", 3),
        kafka_partition(b"a", 3),
        NULL_KEY,
        kafka_partition(b"b", 3),
    ]


def test_configuration_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="several columns"):
        KeyPartitioner(["a", "b"], 4)
    with pytest.raises(ConfigError, match="serializer"):
        KeyPartitioner("a", 4, "avro")
    with pytest.raises(ConfigError, match="partitions"):
        KeyPartitioner("a", 0)
    with pytest.raises(SchemaError, match=r"\['user'\]"):
        KeyPartitioner("user", 4).partitions_of(pa.table({"a": [1]}))
    with pytest.raises(SchemaError, match="string or integer"):
        KeyPartitioner("a", 4).partitions_of(pa.table({"a": [1.5]}))
