"""Shared by the Kinesis stream tests and benchmark: puts with known event ids and a recording
SourceOutput that checks watermarks as they are emitted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from lambdasource.sources.kinesis import KinesisConfig, shard_id
from tests.services.kinesis import KinesisService

SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("id", pa.int64()),
        pa.field("user", pa.string()),
    ]
)
BASE_MS = 1_700_000_000_000


def config_for(kinesis: KinesisService, endpoint: str | None = None) -> KinesisConfig:
    return KinesisConfig(
        endpoint_url=endpoint or kinesis.endpoint_url,
        region=kinesis.region,
        access_key_id=kinesis.access_key_id,
        secret_access_key=kinesis.secret_access_key,
    )


def event(event_id: int, t_ms: int, user: str) -> bytes:
    return orjson.dumps({"event_time": t_ms, "id": event_id, "user": user})


def put_events(
    kinesis: KinesisService,
    stream: str,
    events: list[tuple[int, int, str]],
    *,
    shard: int | None = None,
) -> list[tuple[str, int]]:
    """Put ``(id, t_ms, user)`` events keyed by user (or all on ``shard`` by explicit hash key);
    returns (shard id, sequence) per event, in put order."""
    client = kinesis.client()
    hash_key = None
    if shard is not None:
        listed = {s["ShardId"]: s for s in client.list_shards(StreamName=stream)["Shards"]}
        hash_key = listed[shard_id(shard)]["HashKeyRange"]["StartingHashKey"]
    placed: list[tuple[str, int]] = []
    for first in range(0, len(events), 500):  # PutRecords keeps the order of a request's records
        entries = []
        for event_id, t_ms, user in events[first : first + 500]:
            entry: dict[str, Any] = {"Data": event(event_id, t_ms, user), "PartitionKey": user}
            if hash_key is not None:
                entry["ExplicitHashKey"] = hash_key
            entries.append(entry)
        answer = client.put_records(StreamName=stream, Records=entries)
        assert not answer.get("FailedRecordCount")
        placed += [(r["ShardId"], int(r["SequenceNumber"])) for r in answer["Records"]]
    return placed


@dataclass
class Recorder:
    """A SourceOutput keeping every row's (id, µs) in emit order, the watermarks and dead letters;
    ``late`` collects rows at or below a watermark emitted before them; ``on_emit`` runs before a
    batch is recorded (a checkpoint barrier's place)."""

    time_column: str = "event_time"
    rows: list[tuple[int, int, str]] = field(default_factory=list)
    watermarks: list[int] = field(default_factory=list)
    dead: list[tuple[str, str | None]] = field(default_factory=list)
    late: list[tuple[int, int, int]] = field(default_factory=list)
    regressions: list[tuple[int, int]] = field(default_factory=list)
    positions: list[str | None] = field(default_factory=list)
    on_emit: Callable[[pa.RecordBatch], None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        if self.on_emit is not None:
            self.on_emit(batch)
        times = batch.column(self.time_column).cast(pa.int64()).to_pylist()
        ids = batch.column("id").to_pylist() if "id" in batch.schema.names else [0] * len(times)
        users = (
            batch.column("user").to_pylist() if "user" in batch.schema.names else [""] * len(times)
        )
        mark = self.watermarks[-1] if self.watermarks else None
        for event_id, micros, user in zip(ids, times, users, strict=True):
            if mark is not None and micros <= mark:
                self.late.append((event_id, micros, mark))
            self.rows.append((event_id, micros, user))
        self.positions.append(position)
        self.changed.set()

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        if self.watermarks and time < self.watermarks[-1]:
            self.regressions.append((self.watermarks[-1], time))
        if not self.watermarks or time != self.watermarks[-1]:
            self.watermarks.append(time)

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        self.dead.append((reason, position))
        self.changed.set()

    async def barrier_point(self) -> None:
        await asyncio.sleep(0)

    def ids(self) -> list[int]:
        return [event_id for event_id, _, _ in self.rows]

    async def wait_for(self, count: int, seconds: float = 20.0) -> None:
        async with asyncio.timeout(seconds):
            while len(self.rows) < count:
                self.changed.clear()
                await self.changed.wait()


def stream_args(kinesis: KinesisService, **extra: Any) -> dict[str, Any]:
    return {
        "time_column": "event_time",
        "schema": SCHEMA,
        "config": config_for(kinesis),
        "calls_per_second": 50.0,
        "poll_interval": "20ms",
        **extra,
    }
