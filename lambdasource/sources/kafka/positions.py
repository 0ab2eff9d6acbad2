"""Start positions of a Kafka partition, and a trustworthy timestamp → offset lookup.

``offsets_for_times`` is not trusted (Tansu answers from broker write time and returns 0 for old
timestamps; DESIGN §6). :func:`offset_for_time` checks the broker's answer by reading the records
around it and, when it is wrong, binary-searches the record timestamps instead. End offsets come
from a fetch's highwater, never from ``end_offsets()`` (which lags on Tansu).

Result contract: the first offset whose record timestamp is ``>= ts`` (the end offset when none
is), assuming record timestamps are non-decreasing in offset order (CreateTime set by a
producer may violate that; readers filter on event time anyway, so starting early only costs
reading).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ...errors import StreamError


@dataclass(frozen=True)
class Probe:
    """The first record at or after an offset: its offset and record timestamp (ms)."""

    offset: int
    timestamp_ms: int


class OffsetProber:
    """Reads single records at given offsets with a dedicated consumer (no group, no commits)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self.probes = 0

    async def read(
        self, partition: int, offset: int, timeout_ms: int = 2000, max_records: int = 2000
    ) -> list[Probe]:
        """The records of one fetch from offset ``>= offset`` (empty at the end)."""
        tp = TopicPartition(self.topic, partition)
        self.probes += 1
        try:
            if self.consumer.assignment() != {tp}:
                # one partition at a time: records buffered for others would delay the next
                # fetch by aiokafka's prefetch backoff (100 ms per probe)
                self.consumer.assign([tp])
            self.consumer.seek(tp, offset)
            records = await self.consumer.getmany(
                tp, timeout_ms=timeout_ms, max_records=max_records
            )
        except KafkaError as exc:
            raise StreamError(
                f"reading topic={self.topic} partition={partition} offset={offset} failed: {exc!r}"
            ) from exc
        return [Probe(r.offset, r.timestamp) for r in records.get(tp, [])]

    async def probe(self, partition: int, offset: int, timeout_ms: int = 2000) -> Probe | None:
        """The first record at offset ``>= offset``, or None when there is none (the end)."""
        got = await self.read(partition, offset, timeout_ms, max_records=1)
        return got[0] if got else None

    def highwater(self, partition: int) -> int | None:
        return self.consumer.highwater(TopicPartition(self.topic, partition))


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int] | None:
    """The partitions of ``topic`` from a fresh metadata request (None: no such topic).

    ``consumer.partitions_for_topic`` answers from the consumer's own view, which on Apache Kafka
    covers only the topics it already tracks (Tansu answers every topic), so it cannot tell
    whether a topic exists before it is assigned.
    """
    cluster = await consumer._client.fetch_all_metadata()
    partitions: set[int] | None = cluster.partitions_for_topic(topic)
    return partitions


async def end_offset(prober: OffsetProber, partition: int, begin: int) -> int:
    """The partition's end offset, from the highwater of a fetch at ``begin``."""
    hw = None
    for _ in range(100):  # an empty partition returns no record: poll until a response came
        await prober.probe(partition, begin, timeout_ms=20)
        hw = prober.highwater(partition)
        if hw is not None:
            break
    if hw is None:
        raise StreamError(
            f"topic={prober.topic} partition={partition}: no fetch response to learn the end offset"
        )
    return max(hw, begin)


async def offset_for_time(
    prober: OffsetProber,
    partition: int,
    ts_ms: int,
    *,
    begin: int,
    end: int,
    broker_answer: int | None,
) -> tuple[int, bool]:
    """First offset in ``[begin, end]`` whose record timestamp is ``>= ts_ms``.

    Returns ``(offset, verified)``: ``verified`` is True when the broker's answer passed the
    check (record before it is older than ``ts_ms``, record at it is not), False when a binary
    search over record timestamps replaced it.
    """
    if begin >= end:
        return begin, True

    async def ts_at(offset: int) -> Probe | None:
        return await prober.probe(partition, offset) if offset < end else None

    candidate = end if broker_answer is None else min(max(broker_answer, begin), end)
    ok = True
    if candidate > begin:
        before = await ts_at(candidate - 1)
        ok = before is not None and before.timestamp_ms < ts_ms and before.offset < candidate
    if ok and candidate < end:
        at = await ts_at(candidate)
        ok = at is not None and at.timestamp_ms >= ts_ms
    if ok:
        return candidate, True
    lo, hi = begin, end
    while lo < hi:  # invariant: the answer is in [lo, hi]
        mid = (lo + hi) // 2
        run = [r for r in await prober.read(partition, mid) if r.offset < hi]
        if not run or run[0].timestamp_ms >= ts_ms:
            hi = mid
            continue
        # every record of the run is a probe: narrow to the run's crossing, if it has one
        crossing = next((i for i, r in enumerate(run) if r.timestamp_ms >= ts_ms), None)
        if crossing is None:
            lo = run[-1].offset + 1
        else:
            lo, hi = run[crossing - 1].offset + 1, run[crossing].offset
    return lo, False
