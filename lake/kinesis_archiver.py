"""The archiver's Kinesis input: a Kinesis stream → the same lake, commit records by sequence number.

Kinesis in the Kafka model (issue 16): partition = shard number, offset = sequence number (an
int of any size), position = the next sequence number to archive (last archived + 1). Everything
the Kafka archiver promises holds (:mod:`lake.archive_core`, :mod:`lake.archiver`), plus:

- **Exactly once across restarts.** Each commit records, per shard, the next sequence number
  (decimal strings in JSON) and the shard lineage (:class:`~lambdasource.sources.lake.commits.
  ShardRecord`: id, parents, closed, finished); a restart resumes every shard at its recorded
  position (``AFTER_SEQUENCE_NUMBER`` of position − 1), shards never archived from TRIM_HORIZON.
- **Children after parents.** A shard made by a split or merge is read only once every parent
  is finished (closed and archived to its end, recorded ``finished`` in the same commit as its
  last records) or was never listed (trimmed): per partition key, parent records are archived
  before child records. Unbounded, shards are re-listed every ``shard_discovery``.
- **Files per shard.** ``part-<sequence>-p<shard number>-….parquet``; Iceberg ``_kafka_partition``
  = shard number.
- **Dead letters** carry ``topic`` = the stream, ``partition`` = the shard number, ``offset`` =
  the sequence number when it fits int64 (else null), and the reason begins with
  ``shard=shardId-… sequence=…`` (always exact).
- **The high-water mark** is the Kafka archiver's over the shards still open (a finished shard's
  records are all in the lake: it holds nothing back).
- **Never past the stream.** A recorded position beyond a closed shard's end, or a recorded shard
  the stream does not list that was not finished (deleted and recreated, or trimmed before it was
  archived), stops the archiver with :class:`~lambdasource.errors.StreamGapError` naming stream,
  shard and sequence numbers. A recorded position below the shard's first retained record
  (retention trimmed records never archived) is logged and counted (``offset_gaps``).
- ``stop_at="latest"``: each shard is read until a read is caught up (``MillisBehindLatest`` 0,
  no records) or the shard ended; records put meanwhile may be included.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Literal

import pyarrow as pa

from lambdasource.errors import StreamGapError
from lambdasource.sources.kafka.decode import Decoder
from lambdasource.sources.kinesis.calls import all_or_nothing, call_with_retries
from lambdasource.sources.kinesis.config import KinesisConfig
from lambdasource.sources.kinesis.reader import ShardFetch, ShardReader, first_retained
from lambdasource.sources.kinesis.shards import Shard, ShardLineage, list_shards
from lambdasource.sources.lake.commits import (
    ShardRecord,
    archived_high_watermark,
    merge_event_times,
    merge_offsets,
    merge_shards,
)
from lambdasource.timeutil import Duration, parse_duration

from .archive_core import ArchiverCore, ArchiveSummary
from .writer import IcebergLakeWriter, LakeWriter, ParquetLakeWriter

__all__ = ["KinesisArchiver"]

log = logging.getLogger("lake.archiver")

INT64_MAX = 2**63 - 1


class KinesisArchiver(ArchiverCore):
    """Archive every shard of Kinesis stream ``stream`` into ``lake`` (module docstring).

    Options as :class:`lake.archiver.Archiver` where they apply; ``config``: endpoint and
    credentials (:class:`~lambdasource.KinesisConfig`, default from the AWS environment);
    ``max_records``: GetRecords ``Limit`` per call (≤ 10000); ``shard_discovery``: how often an
    unbounded archiver lists shards (new children after a split or merge).
    """

    stream_kind = "kinesis"
    label = "stream"

    def __init__(
        self,
        stream: str,
        lake: ParquetLakeWriter | IcebergLakeWriter | LakeWriter,
        time_column: str | None,
        *,
        config: KinesisConfig | None = None,
        format: Literal["json", "raw"] | Decoder = "json",
        schema: pa.Schema | None = None,
        commit_interval: Duration = "10s",
        commit_rows: int = 500_000,
        stop_at: Literal["latest"] | None = None,
        progress_interval: Duration = "10s",
        max_records: int = 10_000,
        out_of_orderness: Duration = "5m",
        max_ahead: Duration | None = "1d",
        shard_discovery: Duration = "30s",
        min_call_interval: Duration = "200ms",
    ) -> None:
        super().__init__(
            stream,
            lake,
            time_column,
            format=format,
            schema=schema,
            commit_interval=commit_interval,
            commit_rows=commit_rows,
            stop_at=stop_at,
            progress_interval=progress_interval,
            max_records=min(max(1, max_records), commit_rows, 10_000),
            out_of_orderness=out_of_orderness,
            max_ahead=max_ahead,
        )
        self.config = config or KinesisConfig()
        self.discovery_s = parse_duration(shard_discovery, name="shard_discovery") / 1e6
        self.min_call_interval_s = parse_duration(min_call_interval, name="min_call_interval") / 1e6
        self._client: Any = None
        self._lineage = ShardLineage()
        self._lake_shards: dict[int, ShardRecord] = {}
        self._readers: dict[int, ShardReader] = {}
        self._finished: set[int] = set()  # shards archived to their end (children may start)
        self._caught_up: set[int] = set()  # stop_at="latest": shards read up to the end
        self._behind: dict[int, int] = {}  # MillisBehindLatest per shard, last read
        self._listed_at = 0.0

    # -- ArchiverCore ----------------------------------------------------------------------------

    def _lag(self) -> dict[int, int]:
        """Milliseconds behind the stream's newest record, per shard being read."""
        return {n: self._behind.get(n, 0) for n in sorted(self._readers)}

    def metrics(self) -> dict[str, Any]:
        return {
            **super().metrics(),
            "finished_shards": sorted(self._finished),
            "shards": {n: reader.metrics() for n, reader in sorted(self._readers.items())},
        }

    def _high_watermark(self, event_times: dict[int, int]) -> int | None:
        open_times = {n: t for n, t in event_times.items() if n not in self._finished}
        if not open_times and event_times:  # every shard archived to its end
            return max(event_times.values()) + 1
        return archived_high_watermark(open_times, self.out_of_orderness)

    def _commit_kwargs(self) -> dict[str, Any]:
        """The shard lineage as of this commit (taken with its positions)."""
        shards = dict(self._lake_shards)  # shards no longer listed (trimmed) stay recorded
        for number, shard in self._lineage.shards.items():
            shards[number] = ShardRecord(
                shard_id=shard.shard_id,
                parents=shard.parent_numbers,
                closed=shard.closed,
                finished=number in self._finished,
            )
        return {"stream_kind": self.stream_kind, "shards": shards}

    def _dead_letter_row(self, partition: int, message: Any, reason: str) -> dict[str, Any]:
        shard = self._lineage.shards.get(partition)
        shard_name = shard.shard_id if shard is not None else f"#{partition}"
        return {
            "topic": self.topic,
            "partition": partition,
            "offset": message.offset if message.offset <= INT64_MAX else None,
            "timestamp": message.timestamp,
            "key": message.key,
            "value": message.value,
            "reason": f"shard={shard_name} sequence={message.offset}: {reason}",
            "sequence": str(message.offset),
        }

    def _done(self) -> bool:
        if self.stop_at != "latest" or not self._listed_at:
            return False
        pending = [s.number for s in self._lineage.ready(self._finished)]
        return all(n in self._caught_up for n in pending)

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> ArchiveSummary:
        """Archive until cancelled, :meth:`stop` is called, or (``stop_at="latest"``) caught up."""
        self._reset()
        self._lineage = ShardLineage()
        self._readers, self._finished, self._caught_up, self._behind = {}, set(), set(), {}
        self._listed_at = 0.0
        commits = await asyncio.to_thread(self.lake.commits)
        self._check_lake_stream(commits)
        resume = merge_offsets(commits)
        self._event_times = merge_event_times(commits)
        self._lake_shards = merge_shards(commits)
        self._finished = {n for n, s in self._lake_shards.items() if s.finished}
        self._committed, self._submitted = dict(resume), dict(resume)
        self._next = dict(resume)
        async with self.config.create_client() as client:
            self._client = client
            try:
                await self._list_shards()
                self._check_recorded_shards(resume)
                await self._open_ready(resume)
                log.info(
                    "archive stream=%s %s: resuming %s",
                    self.topic,
                    self.lake.describe(),
                    ", ".join(
                        f"shard={r.shard.shard_id} "
                        + (f"sequence={resume[n]}" if n in resume else "(trim horizon)")
                        for n, r in sorted(self._readers.items())
                    )
                    or "no shard ready",
                )
                await self._loop()
            finally:
                self._client = None
        return self._summary()

    async def _list_shards(self) -> None:
        client = self._client
        shards: list[Shard] = await call_with_retries(
            lambda: list_shards(client, self.topic),
            endpoint=self.config.describe_endpoint(),
            where=f"archive: stream={self.topic}",
            retries=self.config.retries,
            rng=random.Random(0),
        )
        added = self._lineage.update(shards)
        for shard in shards:
            reader = self._readers.get(shard.number)
            if reader is not None:
                reader.update_shard(shard)  # a shard may have closed since
        if self._listed_at and added:
            log.warning(
                "archive stream=%s: new shard(s) %s (split or merge); archived once their "
                "parents are",
                self.topic,
                [s.shard_id for s in added],
            )
        self._listed_at = time.monotonic()

    def _check_recorded_shards(self, resume: dict[int, int]) -> None:
        """The lake's positions must belong to this stream (see module docstring)."""
        for number, position in sorted(resume.items()):
            shard = self._lineage.shards.get(number)
            recorded = self._lake_shards.get(number)
            if shard is None:
                if recorded is not None and recorded.finished:
                    continue  # archived to its end, then trimmed: nothing is missing
                raise StreamGapError(
                    f"archive: stream={self.topic} shard number {number}"
                    + (f" ({recorded.shard_id})" if recorded else "")
                    + f": the lake is complete up to sequence number {position}, but the stream "
                    "does not list this shard: was the stream deleted and recreated (or the "
                    "shard trimmed before it was archived)? Archive the new stream into a new lake"
                )
            end = shard.ending_sequence
            if end is not None and position > end + 1:
                raise StreamGapError(
                    f"archive: stream={self.topic} shard={shard.shard_id}: the lake is complete "
                    f"up to sequence number {position}, but the shard ends at {end}: was the "
                    f"stream deleted and recreated? Its records are not the ones "
                    f"{self.lake.describe()} archived; archive the new stream into a new lake"
                )

    async def _open_ready(self, resume: dict[int, int]) -> None:
        """Open a reader for every shard whose parents are finished and that is not yet open."""
        for shard in self._lineage.ready(self._finished):
            if shard.number in self._readers:
                continue
            reader = ShardReader(
                self._client,
                self.topic,
                shard,
                endpoint=self.config.describe_endpoint(),
                retries=self.config.retries,
                limit=self.max_records,
                min_interval=self.min_call_interval_s,
            )
            position = resume.get(shard.number)
            if position is not None:
                await self._note_trimmed(reader, position)
                await reader.seek("position", position)
            else:
                await reader.seek("trim_horizon")
            self._readers[shard.number] = reader

    async def _note_trimmed(self, reader: ShardReader, position: int) -> None:
        """Count a gap when the shard's first retained record is beyond the recorded position
        (retention trimmed records never archived; exact on moto, conservative on Kinesis)."""
        probe = ShardReader(
            self._client,
            self.topic,
            reader.shard,
            endpoint=reader.endpoint,
            retries=reader.retries,
            limit=1,
            min_interval=0.0,
        )
        begin = await first_retained(probe)
        if begin is not None and begin > position:
            self._metrics["offset_gaps"] += 1
            self._metrics["missing_offsets"] += begin - position
            log.warning(
                "archive stream=%s shard=%s: sequence numbers %d..%d are no longer in the stream "
                "(retention); they cannot be archived",
                self.topic,
                reader.shard.shard_id,
                position,
                begin - 1,
            )

    async def _fetch_once(self, timeout_s: float) -> None:
        """One GetRecords per shard being read (each keeps its own call budget), decoded in
        shard order; ended shards finish and open their ready children."""
        if not self.stop_at and time.monotonic() - self._listed_at >= self.discovery_s:
            await self._list_shards()
            await self._open_ready({})
        active = {
            n: r
            for n, r in self._readers.items()
            if n not in self._finished and n not in self._caught_up
        }
        if not active:
            await asyncio.sleep(timeout_s)
            return
        numbers = sorted(active)
        fetches: list[ShardFetch] = await all_or_nothing(active[n].read() for n in numbers)
        opened = False
        for number, fetch in zip(numbers, fetches, strict=True):
            reader = active[number]
            self._behind[number] = fetch.millis_behind_latest
            if fetch.records:
                await asyncio.to_thread(self._decode, number, fetch.records)
                self._metrics["records"] += len(fetch.records)
                self._next[number] = fetch.records[-1].offset + 1
            if fetch.ended:
                self._finished.add(number)
                opened = True
                log.info(
                    "archive stream=%s shard=%s: archived to its end (closed)",
                    self.topic,
                    reader.shard.shard_id,
                )
            elif self.stop_at == "latest" and not fetch.records and fetch.millis_behind_latest == 0:
                self._caught_up.add(number)
        if opened:  # the children of the shards that ended are listed by now
            await self._list_shards()
            await self._open_ready({})
