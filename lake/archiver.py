"""The archiver: a Kafka topic → an hour-partitioned lake, recording the offsets each commit covers.

(What any stream input shares is :mod:`lake.archive_core`; the Kinesis input is
:mod:`lake.kinesis_archiver`; ``lambdasource archive --kinesis STREAM`` runs it.)

Invariants (what the exact-offset handoff relies on, DESIGN §3):

- **Exactly once in the lake.** On start the archiver reads the lake's commits and resumes every
  Kafka partition at its recorded next offset (partitions never archived: the earliest retained
  offset). Each commit holds exactly the records consumed since the previous commit, and records,
  per partition, the next offset to read. The commit record is written last and atomically, so a
  crash at any point loses only uncommitted work, which the restarted archiver consumes again; the
  files of a failed attempt are orphans no commit lists.
- **Event-time partitions.** Rows are written by their event time, sorted; late records land in
  their own (old) hour partition.
- **Split by Kafka partition.** Each commit writes its rows per Kafka partition: a Parquet file
  holds one partition's records (``part-<sequence>-p<partition>-<uuid>.parquet``, same hour
  directories), an Iceberg table has the identity partition field ``_kafka_partition``; so a
  scale-out task reads only its partition's files and the commit records' per-partition offsets
  make its handoff exact. Lakes archived before the split stay readable (their files are read
  whole and filtered by key, :mod:`lambdasource.sources.lake.partitioned`).
- **Nothing lost silently.** A message that does not decode (or has no event time) becomes a
  dead letter (topic/partition/offset/timestamp/key/value/reason) stored under the same commit;
  counted in :meth:`Archiver.metrics`. An offset gap (retention deleted records never archived) is
  logged and counted.
- **The high-water mark.** Each commit records, per Kafka partition, the newest event time archived
  so far (``event_times``) and the lake's high-water mark: the minimum of those − the
  ``out_of_orderness`` of the topic's records, + 1µs — every record with an older time is in the
  lake, provided no partition delivers a record more than ``out_of_orderness`` behind its newest.
- **Never past the topic.** A partition whose end is below the offset the lake recorded (the topic
  was deleted and recreated, or the lake archived another cluster) stops the archiver with
  :class:`~lambdasource.errors.StreamGapError` naming partition and offsets: appending would mix
  two topics' offsets in one lake. The consumer never resets a position by itself.
- **New partitions.** Unbounded, the archiver looks for partitions added to the topic every
  ``partition_discovery`` (the consumer's metadata refresh) and archives them from their earliest
  offset, with a warning (``metrics()["partitions_added"]``).
- ``stop_at="latest"`` stops at the fetch highwater first seen per partition (the end when the
  archiver started); records at or beyond it are left for the next run. ``consumer.end_offsets``
  is never used (it lags on some brokers, DESIGN §6).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa
from aiokafka.errors import OffsetOutOfRangeError

from lambdasource import kafka_security
from lambdasource.errors import ConfigError, StreamError, StreamGapError
from lambdasource.kafka_security import KafkaSecurity, diagnose_connect_failure
from lambdasource.sources.kafka.decode import Decoder
from lambdasource.sources.kafka.positions import topic_partitions
from lambdasource.sources.lake.commits import merge_event_times, merge_offsets
from lambdasource.timeutil import Duration, parse_duration

from .archive_core import ArchiverCore, ArchiveSummary
from .writer import IcebergLakeWriter, LakeWriter, ParquetLakeWriter

__all__ = ["ArchiveSummary", "Archiver", "add_arguments", "command"]

log = logging.getLogger("lake.archiver")


class Archiver(ArchiverCore):
    """Consume ``topic`` (all partitions, manual assignment) into ``lake``, committing periodically.

    A commit happens when ``commit_rows`` rows are buffered, when ``commit_interval`` has passed
    with something new consumed, at the end of a bounded run (``stop_at="latest"``) and after
    :meth:`stop`. ``format``/``schema``/``time_column`` are those of
    :func:`lambdasource.sources.kafka.decode.decode_records` (``time_column=None`` archives the
    Kafka record timestamp as a ``timestamp`` column). ``group_id`` (optional) also commits the
    archived offsets to that consumer group after each lake commit, for standard lag monitoring;
    the lake's commit records stay the source of truth for resuming. ``out_of_orderness``: how
    far behind its partition's newest record one may arrive (it lowers the recorded high-water
    mark, which a timestamp handoff uses as its cutoff). ``max_ahead`` (default ``"1d"``, None
    disables): a record whose event time is more than this after the wall clock is a dead
    letter, as in :class:`~lambdasource.KafkaStream` (it would raise the high-water mark).
    ``security``: TLS/SASL (:class:`~lambdasource.KafkaSecurity`); a consumer that does not
    connect within ``connect_timeout`` is a one-line StreamError naming the broker and the cause.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        lake: ParquetLakeWriter | IcebergLakeWriter | LakeWriter,
        time_column: str | None,
        *,
        format: Literal["json", "raw"] | Decoder = "json",
        schema: pa.Schema | None = None,
        commit_interval: Duration = "10s",
        commit_rows: int = 500_000,
        stop_at: Literal["latest"] | None = None,
        group_id: str | None = None,
        progress_interval: Duration = "10s",
        max_records: int = 50_000,
        consumer_options: Mapping[str, Any] | None = None,
        topic_timeout: Duration = "10s",
        out_of_orderness: Duration = "5m",
        partition_discovery: Duration | None = "30s",
        max_ahead: Duration | None = "1d",
        security: KafkaSecurity | None = None,
        connect_timeout: Duration = "30s",
    ) -> None:
        super().__init__(
            topic,
            lake,
            time_column,
            format=format,
            schema=schema,
            commit_interval=commit_interval,
            commit_rows=commit_rows,
            stop_at=stop_at,
            progress_interval=progress_interval,
            max_records=max_records,
            out_of_orderness=out_of_orderness,
            max_ahead=max_ahead,
        )
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.consumer_options = dict(consumer_options or {})
        self.security = security
        self.connect_timeout_s = parse_duration(connect_timeout, name="connect_timeout") / 1e6
        self.topic_timeout_s = parse_duration(topic_timeout, name="topic_timeout") / 1e6
        self.discovery_s: float | None = (
            None
            if partition_discovery is None or stop_at is not None
            else parse_duration(partition_discovery, name="partition_discovery") / 1e6
        )
        self.partitions_added: list[int] = []
        self._consumer: Any = None
        self._tps: dict[int, Any] = {}
        self._targets: dict[int, int] = {}
        self._highwater: dict[int, int] = {}

    # -- public ------------------------------------------------------------------------------

    def _lag(self) -> dict[int, int]:
        return {p: max(0, hw - self._next.get(p, hw)) for p, hw in sorted(self._highwater.items())}

    def metrics(self) -> dict[str, Any]:
        """Plain-data progress: counts, offsets, highwaters and lag per partition."""
        return {
            **super().metrics(),
            "partitions_added": list(self.partitions_added),
            "highwater": dict(sorted(self._highwater.items())),
        }

    async def run(self) -> ArchiveSummary:
        """Archive until cancelled, :meth:`stop` is called, or (``stop_at="latest"``) caught up."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        self._reset()
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "none",  # out of range: see _out_of_range
            "fetch_max_wait_ms": 200 if self.stop_at else 500,
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
        }
        if self.discovery_s is not None:
            options["metadata_max_age_ms"] = max(100, int(self.discovery_s * 1000))
        if self.security is not None:
            options.update(self.security.client_options())
        options.update(self.consumer_options)
        consumer = AIOKafkaConsumer(**options)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await consumer.start()
        except (KafkaError, TimeoutError) as exc:
            await consumer.stop()
            diagnosis = await diagnose_connect_failure(
                self.bootstrap_servers, self.security, self.connect_timeout_s
            )
            what = (
                f"no connection within connect_timeout={self.connect_timeout_s:g}s"
                if isinstance(exc, TimeoutError)
                else f"aiokafka: {type(exc).__name__}"
            )
            error = StreamError(
                f"archive: topic={self.topic}: cannot connect to the Kafka broker(s) "
                f"{self.bootstrap_servers}: {diagnosis} ({what})"
            )
            error.retriable = not diagnosis.permanent
            raise error from exc
        try:
            partitions = await self._partitions(consumer)
            tps = {p: TopicPartition(self.topic, p) for p in partitions}
            resume, self._event_times = await asyncio.to_thread(self._resume_offsets)
            consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                if p in resume:
                    consumer.seek(tp, resume[p])
                else:
                    await consumer.seek_to_beginning(tp)
            self._committed = dict(resume)
            self._submitted = dict(resume)
            for p, tp in tps.items():
                self._next[p] = await consumer.position(tp)
                if p in resume and self._next[p] != resume[p]:  # pragma: no cover - defensive
                    raise StreamError(
                        f"archive: topic={self.topic} partition={p} cannot resume at "
                        f"offset={resume[p]} (position {self._next[p]})"
                    )
            log.info(
                "archive topic=%s %s: resuming %s",
                self.topic,
                self.lake.describe(),
                ", ".join(
                    f"partition={p} offset={o}" + ("" if p in resume else " (earliest)")
                    for p, o in sorted(self._next.items())
                ),
            )
            self._consumer, self._tps = consumer, tps
            await self._loop()
        except KafkaError as exc:
            raise StreamError(f"archive: topic={self.topic}: {exc}") from exc
        finally:
            await consumer.stop()
        return self._summary()

    # -- internals ---------------------------------------------------------------------------

    async def _partitions(self, consumer: Any) -> list[int]:
        deadline = time.monotonic() + self.topic_timeout_s
        while True:
            partitions = await topic_partitions(consumer, self.topic)
            if partitions:
                return sorted(partitions)
            if time.monotonic() > deadline:
                raise StreamError(
                    f"archive: topic={self.topic} not found at "
                    f"bootstrap_servers={self.bootstrap_servers}"
                )
            await asyncio.sleep(0.2)

    def _reset(self) -> None:
        super()._reset()
        self._targets, self._highwater = {}, {}
        self.partitions_added = []

    def _resume_offsets(self) -> tuple[dict[int, int], dict[int, int]]:
        """Next offsets and newest archived event times per partition, from the lake's commits."""
        commits = self.lake.commits()
        self._check_lake_stream(commits)
        return merge_offsets(commits), merge_event_times(commits)

    def _done(self) -> bool:
        if self.stop_at != "latest" or len(self._targets) < len(self._next):
            return False
        return all(self._next[p] >= target for p, target in self._targets.items())

    async def _fetch_once(self, timeout_s: float) -> None:
        consumer, tps = self._consumer, self._tps
        if self.discovery_s is not None:
            await self._discover_partitions(consumer, tps)
        try:
            fetched = await consumer.getmany(
                timeout_ms=int(timeout_s * 1000),
                max_records=min(self.max_records, self.commit_rows),
            )
        except OffsetOutOfRangeError as exc:
            await self._out_of_range(exc, consumer)
            return
        await self._absorb(fetched, consumer, tps)

    async def _absorb(
        self, fetched: dict[Any, list[Any]], consumer: Any, tps: dict[int, Any]
    ) -> None:
        """Decode one fetch into the buffer and advance the next offsets (consumer positions,
        capped at the ``stop_at`` targets; positions also step over control records)."""
        for p, tp in tps.items():
            hw = consumer.highwater(tp)
            if hw is not None:
                if hw < self._next.get(p, 0):
                    self._beyond_end(p, self._next[p], hw)
                self._highwater[p] = hw
                if self.stop_at == "latest" and p not in self._targets:
                    self._targets[p] = hw
        for tp, messages in fetched.items():
            p = tp.partition
            target = self._targets.get(p)
            if target is not None and messages and messages[-1].offset >= target:
                messages = [m for m in messages if m.offset < target]
            if not messages:
                continue
            first = messages[0].offset
            if first > self._next[p]:
                self._metrics["offset_gaps"] += 1
                self._metrics["missing_offsets"] += first - self._next[p]
                log.warning(
                    "archive topic=%s partition=%d: offsets %d..%d are missing from the topic "
                    "(retention or compaction); they cannot be archived",
                    self.topic,
                    p,
                    self._next[p],
                    first - 1,
                )
            await asyncio.to_thread(self._decode, p, messages)
            self._metrics["records"] += len(messages)
        for p, tp in tps.items():
            position = await consumer.position(tp)
            target = self._targets.get(p)
            if target is not None:
                position = min(position, target)
            self._next[p] = max(self._next[p], position)
            if target is not None and self._next[p] >= target and tp not in consumer.paused():
                consumer.pause(tp)

    def _beyond_end(self, partition: int, offset: int, end: int) -> None:
        raise StreamGapError(
            f"archive: topic={self.topic} partition={partition}: the lake is complete up to "
            f"offset {offset}, but the partition ends at offset {end}: was the topic deleted and "
            f"recreated? Its records are not the ones {self.lake.describe()} archived; archive "
            "the new topic into a new lake"
        )

    async def _out_of_range(self, exc: OffsetOutOfRangeError, consumer: Any) -> None:
        """A fetch position outside the partition: below its start, retention deleted records
        never archived (continue at the earliest, the gap is counted by :meth:`_absorb`);
        beyond its end, the topic was recreated (:meth:`_beyond_end`)."""
        positions: dict[Any, int] = (
            exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        )
        if not positions:
            raise StreamError(f"archive: topic={self.topic}: {exc!r}") from exc
        begins = await consumer.beginning_offsets(list(positions))
        for tp, offset in positions.items():
            if offset < begins[tp]:
                consumer.seek(tp, begins[tp])
            else:
                ends = await consumer.end_offsets([tp])
                self._beyond_end(tp.partition, offset, ends[tp])

    async def _discover_partitions(self, consumer: Any, tps: dict[int, Any]) -> None:
        """Archive partitions added to the topic since the start, from their earliest offsets
        (``tps`` is extended in place; assign() forgets positions, so every one is sought)."""
        from aiokafka import TopicPartition

        available = consumer.partitions_for_topic(self.topic) or set()
        added = sorted(set(available) - set(tps))
        if not added:
            return
        for p in added:
            tps[p] = TopicPartition(self.topic, p)
        consumer.assign(list(tps.values()))
        for p in added:
            await consumer.seek_to_beginning(tps[p])
            self._next[p] = await consumer.position(tps[p])
        for p, tp in tps.items():
            if p not in added:
                consumer.seek(tp, self._next[p])
        self.partitions_added.extend(added)
        log.warning(
            "archive topic=%s: partition(s) %s were added to the topic; archiving them from "
            "offsets %s",
            self.topic,
            added,
            [self._next[p] for p in added],
        )

    def _dead_letter_row(self, partition: int, message: Any, reason: str) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": partition,
            "offset": message.offset,
            "timestamp": message.timestamp,
            "key": message.key,
            "value": message.value,
            "reason": reason,
        }

    async def _after_commit(self, positions: dict[int, int]) -> None:
        if self.group_id is not None:
            await self._commit_group(positions)

    async def _commit_group(self, offsets: dict[int, int]) -> None:
        """Mirror the lake's offsets into the consumer group (monitoring only; best effort)."""
        from aiokafka.errors import KafkaError
        from aiokafka.structs import OffsetAndMetadata

        try:
            await self._consumer.commit(
                {self._tps[p]: OffsetAndMetadata(o, "") for p, o in offsets.items()}
            )
        except KafkaError as exc:
            self._metrics["group_commit_failures"] = (
                self._metrics.get("group_commit_failures", 0) + 1
            )
            log.warning(
                "archive topic=%s: could not commit offsets to group_id=%s: %s",
                self.topic,
                self.group_id,
                exc,
            )


# -- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lambdasource archive``."""
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap host:port (with --topic)")
    stream = parser.add_mutually_exclusive_group(required=True)
    stream.add_argument("--topic", help="the Kafka topic to archive")
    stream.add_argument(
        "--kinesis",
        metavar="STREAM",
        help="archive this Kinesis stream instead (every shard; positions are sequence numbers)",
    )
    parser.add_argument(
        "--kinesis-endpoint-url",
        default=None,
        help="Kinesis endpoint (default: AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL / AWS)",
    )
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION …)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--lake", help="Parquet lake root: local path, file:// or s3:// URL")
    target.add_argument("--iceberg", metavar="IDENT", help="Iceberg table identifier (ns.table)")
    parser.add_argument(
        "--catalog-uri",
        help="Iceberg catalog URI (sqlite:///…, postgresql://…, http(s)://… for REST)",
    )
    parser.add_argument("--catalog-type", help="Iceberg catalog type (default: from the URI)")
    parser.add_argument("--warehouse", help="Iceberg warehouse location")
    parser.add_argument("--time-column", required=True, help="event-time column of the records")
    parser.add_argument("--format", default="json", choices=["json", "raw"])
    schema = parser.add_mutually_exclusive_group()
    schema.add_argument(
        "--schema", help="'col:type,…' e.g. 'event_time:timestamp[us, UTC],user_id:int64'"
    )
    schema.add_argument(
        "--schema-from", metavar="PARQUET_FILE", help="take the schema of this Parquet file"
    )
    parser.add_argument("--layout", default="hour", choices=["hour", "iso_hour", "ymdh", "day"])
    parser.add_argument("--stop-at", choices=["latest"], default=None)
    parser.add_argument("--commit-interval", default="10s")
    parser.add_argument(
        "--out-of-orderness",
        default="5m",
        help="how far behind its partition's newest record one may arrive (lowers the recorded "
        "high-water mark; default 5m)",
    )
    parser.add_argument(
        "--max-ahead",
        default="1d",
        help="a record whose event time is more than this ahead of the wall clock is a dead "
        "letter, not archived ('none' disables; default 1d)",
    )
    parser.add_argument("--commit-rows", type=int, default=500_000)
    parser.add_argument("--group-id", default=None)
    parser.add_argument(
        "--s3-endpoint-url", default=None, help="S3 endpoint (default: AWS environment)"
    )
    parser.add_argument(
        "--connect-timeout", default="30s", help="give up connecting to Kafka after this"
    )
    kafka_security.add_arguments(parser)


def _schema_from_args(args: argparse.Namespace) -> pa.Schema | None:
    if args.schema:
        from lambdasource.job import parse_schema

        return parse_schema(args.schema)
    if args.schema_from:
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(args.schema_from)
        except (OSError, pa.ArrowException) as exc:
            raise ConfigError(f"--schema-from: cannot read file={args.schema_from}: {exc}") from exc
    if args.format == "json":
        raise ConfigError("archive --format json needs --schema or --schema-from")
    return None


def _writer_from_args(args: argparse.Namespace) -> ParquetLakeWriter | IcebergLakeWriter:
    from lambdasource.s3 import S3Config

    s3 = S3Config(endpoint_url=args.s3_endpoint_url) if args.s3_endpoint_url else None
    if args.lake:
        return ParquetLakeWriter(args.lake, args.time_column, s3=s3, layout=args.layout)
    if not args.catalog_uri:
        raise ConfigError("archive --iceberg needs --catalog-uri")
    kind = args.catalog_type or (
        "rest" if args.catalog_uri.startswith(("http://", "https://")) else "sql"
    )
    props = {"name": "default", "type": kind, "uri": args.catalog_uri}
    if args.warehouse:
        props["warehouse"] = args.warehouse
    return IcebergLakeWriter(
        args.iceberg,
        props,
        args.time_column,
        s3=s3,
        partition="day" if args.layout == "day" else "hour",
    )


def command(args: argparse.Namespace) -> int:
    """``lambdasource archive``: run the archiver; SIGINT/SIGTERM commit what was read and stop."""
    schema = _schema_from_args(args)
    archiver: ArchiverCore
    if getattr(args, "kinesis", None):
        archiver = _kinesis_archiver(args, schema)
    elif not args.bootstrap_servers:
        raise ConfigError("archive --topic needs --bootstrap-servers")
    else:
        archiver = _kafka_archiver(args, schema)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)

    async def main() -> ArchiveSummary:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix
                loop.add_signal_handler(sig, archiver.stop)
        return await archiver.run()

    summary = asyncio.run(main())
    offsets = ", ".join(f"{p}:{o}" for p, o in summary.offsets.items()) or "-"
    print(
        f"archived {archiver.label}={archiver.topic} records={summary.records} "
        f"rows={summary.rows} dead_letters={summary.dead_letters} commits={summary.commits} "
        f"offsets={{{offsets}}} in {summary.elapsed_s:.1f}s"
    )
    return 0


def _kinesis_archiver(args: argparse.Namespace, schema: pa.Schema | None) -> ArchiverCore:
    from lambdasource.sources.kinesis.config import KinesisConfig

    from .kinesis_archiver import KinesisArchiver

    return KinesisArchiver(
        args.kinesis,
        _writer_from_args(args),
        args.time_column,
        config=KinesisConfig(endpoint_url=args.kinesis_endpoint_url, region=args.region),
        format=args.format,
        schema=schema,
        commit_interval=args.commit_interval,
        commit_rows=args.commit_rows,
        stop_at=args.stop_at,
        out_of_orderness=args.out_of_orderness,
        max_ahead=None if str(args.max_ahead).lower() in ("none", "off") else args.max_ahead,
    )


def _kafka_archiver(args: argparse.Namespace, schema: pa.Schema | None) -> Archiver:
    return Archiver(
        args.bootstrap_servers,
        args.topic,
        _writer_from_args(args),
        args.time_column,
        format=args.format,
        schema=schema,
        commit_interval=args.commit_interval,
        commit_rows=args.commit_rows,
        stop_at=args.stop_at,
        group_id=args.group_id,
        out_of_orderness=args.out_of_orderness,
        max_ahead=None if str(args.max_ahead).lower() in ("none", "off") else args.max_ahead,
        security=kafka_security.from_args(args),
        connect_timeout=args.connect_timeout,
    )
