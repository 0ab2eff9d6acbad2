"""A proxy in front of moto that gives Kinesis' real sequence numbers: sparse and 56 digits.

moto numbers the records of a shard 1, 2, 3 …; real Kinesis numbers are ~56-digit decimals with
large, irregular steps between consecutive records of a shard (never ``last + 1``). The proxy maps
moto's ``n`` to ``OFFSET + n * STRIDE`` in every answer that carries a sequence number (PutRecord,
PutRecords, GetRecords, ListShards, DescribeStream) and back in every request that names one
(GetShardIterator at/after a sequence number): ``AT`` a number between two records starts at the
next record, ``AFTER`` one starts after the previous record — a sequence number names a place in
the shard's order, as on Kinesis. Iterators stay moto's (opaque to the client). With
``end_closed_shards`` (fixture ``real_kinesis``), an empty GetRecords answer at the end of a
closed shard carries no ``NextShardIterator``, as Kinesis ends a closed shard, and a closed
shard's ``EndingSequenceNumber`` is a number no record has (half a stride past its last one:
on Kinesis an empty closed shard has an end too).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.services.kinesis import KinesisService
from tests.services.kinesis_proxy import JsonForwardingProxy

OFFSET = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
STRIDE = 1_000_003


def to_real(moto_sequence: str | int) -> str:
    return str(OFFSET + int(moto_sequence) * STRIDE)


def to_moto(real_sequence: str, iterator_type: str) -> str:
    """A real number back to moto's: AT rounds up to the next record, AFTER rounds down."""
    steps, remainder = divmod(int(real_sequence) - OFFSET, STRIDE)
    if iterator_type == "AT_SEQUENCE_NUMBER" and remainder:
        steps += 1
    return str(max(steps, 0))


def _shard_is_closed(iterator: str) -> bool:
    """Whether the shard of moto's iterator (base64 of ``stream:shardId:…``) is closed, asked of
    the in-process moto model."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.kinesis.models import kinesis_backends

    try:
        stream, shard = base64.b64decode(iterator).decode().split(":")[:2]
    except (ValueError, IndexError):
        return False
    for backend in kinesis_backends[DEFAULT_ACCOUNT_ID].values():
        if stream in backend.streams:
            found = backend.streams[stream].shards.get(shard)
            return found is not None and not found.is_open
    return False


def _end_closed_shard(request: dict[str, Any], body: dict[str, Any]) -> None:
    """Kinesis ends a closed shard: an empty answer at its end has no ``NextShardIterator``."""
    if body.get("Records") or body.get("MillisBehindLatest", 0) != 0:
        return
    if _shard_is_closed(str(request.get("ShardIterator", ""))):
        body.pop("NextShardIterator", None)
        body["ChildShards"] = []


def _rewrite_answer(operation: str, body: dict[str, Any], *, real_ends: bool = False) -> None:
    if operation == "PutRecord" and "SequenceNumber" in body:
        body["SequenceNumber"] = to_real(body["SequenceNumber"])
    for record in body.get("Records", []):
        if "SequenceNumber" in record:
            record["SequenceNumber"] = to_real(record["SequenceNumber"])
    shards = body.get("Shards") or body.get("StreamDescription", {}).get("Shards", [])
    for shard in shards:
        numbers = shard.get("SequenceNumberRange", {})
        for key in ("StartingSequenceNumber", "EndingSequenceNumber"):
            if key in numbers:
                numbers[key] = to_real(numbers[key])
        if real_ends and "EndingSequenceNumber" in numbers:
            # a closed shard's end is a number no record has (an empty closed shard has one too)
            numbers["EndingSequenceNumber"] = str(
                int(numbers["EndingSequenceNumber"]) + STRIDE // 2
            )


def _rewrite_request(operation: str, body: dict[str, Any]) -> None:
    if operation == "GetShardIterator" and "StartingSequenceNumber" in body:
        body["StartingSequenceNumber"] = to_moto(
            body["StartingSequenceNumber"], body.get("ShardIteratorType", "")
        )


@dataclass
class SparseSequenceProxy(JsonForwardingProxy):
    """moto's sequence numbers rewritten as Kinesis' (module docstring)."""

    end_closed_shards: bool = False

    def rewrite_request(self, operation: str, body: dict[str, Any]) -> bool:
        _rewrite_request(operation, body)
        return True

    def rewrite_answer(self, operation: str, request: dict[str, Any], answer: Any) -> bool:
        _rewrite_answer(operation, answer, real_ends=self.end_closed_shards)
        if self.end_closed_shards and operation == "GetRecords":
            _end_closed_shard(request, answer)
        return True


@pytest.fixture(name="sparse_kinesis")
def sparse_kinesis_fixture(kinesis: KinesisService) -> Iterator[KinesisService]:
    """The session's moto server seen through the proxy: a KinesisService whose endpoint (and
    ``client()``) gives real-looking sparse 56-digit sequence numbers."""
    proxy = SparseSequenceProxy(upstream=urlparse(kinesis.endpoint_url).netloc)
    proxy.start()
    try:
        yield KinesisService(endpoint_url=proxy.endpoint_url, port=proxy.port)
    finally:
        proxy.stop()


@pytest.fixture(name="real_kinesis")
def real_kinesis_fixture(kinesis: KinesisService) -> Iterator[KinesisService]:
    """As ``sparse_kinesis``, and a closed shard read to its end answers without a
    ``NextShardIterator`` (moto never ends an iterator; Kinesis does)."""
    proxy = SparseSequenceProxy(
        upstream=urlparse(kinesis.endpoint_url).netloc, end_closed_shards=True
    )
    proxy.start()
    try:
        yield KinesisService(endpoint_url=proxy.endpoint_url, port=proxy.port)
    finally:
        proxy.stop()
