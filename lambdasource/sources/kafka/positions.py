"""Start positions of a Kafka partition, and a trustworthy timestamp → offset lookup.

Broker answers are used and verified, never trusted (tests/integration/test_broker_differences.py):

* ``offsets_for_times``: Apache Kafka answers right; Tansu answers from broker write time and
  returns 0 for old timestamps (DESIGN §6). :func:`offset_for_time` checks the answer with one
  fetch (the records just before and at it) and, when it is wrong, binary-searches the record
  timestamps instead.
* ``end_offsets()``: Apache Kafka answers right; Tansu lags (the last batch's base offset + 1).
  :func:`end_offset` fetches the record just before the answer: the fetch's highwater is the end
  (right on both brokers), the answer only picks where to fetch, and the record read there is
  kept, so the check before a lookup's end costs no second fetch.

Every record a probe fetch returns is cached by offset for the prober's life (one stream open):
``probes`` counts fetches, not records asked for.

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
    """Reads records at given offsets with a dedicated consumer (no group, no commits).

    Invariant: ``seen[(partition, offset)]`` is the record a fetch returned at exactly that
    offset (offsets are immutable while the prober lives), so a probe there needs no fetch.
    """

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self.probes = 0  # fetches made
        self.seen: dict[tuple[int, int], Probe] = {}
        self.end_answers: dict[int, tuple[int | None, int]] = {}  # partition: (answer, highwater)

    async def read(
        self,
        partition: int,
        offset: int,
        timeout_ms: int = 2000,
        max_records: int = 2000,
        *,
        until_response: bool = False,
    ) -> list[Probe]:
        """The records of one fetch from offset ``>= offset`` (empty at the end).

        ``until_response``: return as soon as a fetch response came (the highwater is known),
        even without records, instead of waiting ``timeout_ms`` for records at the end.
        """
        tp = TopicPartition(self.topic, partition)
        self.probes += 1
        try:
            if self.consumer.assignment() != {tp}:
                # one partition at a time: records buffered for others would delay the next
                # fetch by aiokafka's prefetch backoff (100 ms per probe)
                self.consumer.assign([tp])
            self.consumer.seek(tp, offset)
            if not until_response:
                records = await self.consumer.getmany(
                    tp, timeout_ms=timeout_ms, max_records=max_records
                )
            else:
                records = {}
                for _ in range(max(1, timeout_ms // 20)):  # one seek, polls until a response
                    records = await self.consumer.getmany(
                        tp, timeout_ms=20, max_records=max_records
                    )
                    if records.get(tp) or self.consumer.highwater(tp) is not None:
                        break
        except KafkaError as exc:
            raise StreamError(
                f"reading topic={self.topic} partition={partition} offset={offset} failed: {exc!r}"
            ) from exc
        got = [Probe(r.offset, r.timestamp) for r in records.get(tp, [])]
        self.seen.update(((partition, r.offset), r) for r in got)
        return got

    async def probe(self, partition: int, offset: int, timeout_ms: int = 2000) -> Probe | None:
        """The first record at offset ``>= offset``, or None when there is none (the end).

        One fetch returns the record after it too (kept in :attr:`seen`)."""
        if (partition, offset) in self.seen:
            return self.seen[partition, offset]
        got = await self.read(partition, offset, timeout_ms, max_records=2)
        return got[0] if got else None

    async def listed_ends(self, partitions: list[int]) -> dict[int, int | None]:
        """The broker's ``end_offsets()`` answers, one request (unverified; None when the
        request failed)."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        try:
            got = await self.consumer.end_offsets(tps)
        except KafkaError:
            return dict.fromkeys(partitions)
        return {tp.partition: got.get(tp) for tp in tps}

    async def highwaters(self, at: dict[int, int], timeout_ms: int = 2000) -> dict[int, int]:
        """One fetch round over every partition of ``at`` (each from its offset): the
        highwater each fetch response gave, for the partitions that had one within
        ``timeout_ms``; the records read are kept in :attr:`seen`."""
        tps = {p: TopicPartition(self.topic, p) for p in at}
        self.probes += 1
        found: dict[int, int] = {}
        try:
            self.consumer.assign(list(tps.values()))
            for partition, offset in at.items():
                self.consumer.seek(tps[partition], offset)
            for _ in range(max(1, timeout_ms // 20)):
                records = await self.consumer.getmany(
                    *[tps[p] for p in at if p not in found], timeout_ms=20, max_records=2
                )
                for tp, batch in records.items():
                    self.seen.update(
                        ((tp.partition, r.offset), Probe(r.offset, r.timestamp)) for r in batch
                    )
                for partition, tp in tps.items():
                    if partition not in found and (hw := self.consumer.highwater(tp)) is not None:
                        found[partition] = hw
                if len(found) == len(at):
                    break
        except KafkaError as exc:
            raise StreamError(
                f"reading topic={self.topic} partitions={sorted(at)} failed: {exc!r}"
            ) from exc
        return found

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
    # not tracked here (``consumer.assign`` tracks the topic once the stream reads it)
    return partitions


async def end_offsets(prober: OffsetProber, begins: dict[int, int]) -> dict[int, int]:
    """Each partition's end offset: the highwater of a fetch made at the record just before the
    broker's ``end_offsets()`` answer (at the partition's ``begins`` offset when the answer says
    empty or failed) — one request for the answers, one fetch round for every partition.

    The answer is verified, not trusted: the highwater decides (``prober.end_answers`` keeps
    both; they differ on Tansu, whose answer lags, or when records arrived in between).
    """
    answers = await prober.listed_ends(list(begins))
    at = {
        p: answer - 1 if (answer := answers[p]) is not None and answer > begin else begin
        for p, begin in begins.items()
    }
    found = await prober.highwaters(at)
    missing = {p: at[p] for p in at if p not in found}
    if missing:  # a second round only for partitions without a response within 2 s
        found.update(await prober.highwaters(missing))
    ends = {}
    for p, begin in begins.items():
        if p not in found:
            raise StreamError(
                f"topic={prober.topic} partition={p}: no fetch response to learn the end offset"
            )
        prober.end_answers[p] = (answers[p], found[p])
        ends[p] = max(found[p], begin)
    return ends


async def end_offset(prober: OffsetProber, partition: int, begin: int) -> int:
    """One partition's end offset (see :func:`end_offsets`)."""
    return (await end_offsets(prober, {partition: begin}))[partition]


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
