"""KafkaStream's pipelined decode (issue 13 §5): fetch k is read on the decode thread while the
loop takes fetch k+1. What must not change: per partition, rows are emitted in offset order,
each offset once; a split's state (position, max event time seen) moves only once its rows are
out, so a snapshot taken at an emit (where the runtime injects barriers) names exactly the rows
emitted before it, and no watermark emitted meanwhile covers a row still in decode.

Many small fetches (``max_batch_records=300``) over four partitions keep fetches in decode while
others are emitted. Every-record oracle: offsets and event ids of all rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.timeutil import MS
from tests.services.brokers import Broker, both_brokers

broker = both_brokers(default=("tansu",))

SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("event_id", pa.int64()),
        pa.field("kind", pa.string()),
    ]
)
BASE_MS = 1_700_000_000_000
PARTITIONS = 4
PER_PARTITION = 6_000


class _Checking:
    """A SourceOutput that, at every emit, snapshots the stream and checks it against the rows
    emitted so far, and checks each row against the watermarks emitted before it."""

    def __init__(self, stream: KafkaStream, starts: dict[int, int]) -> None:
        self.stream = stream
        self.emitted = dict.fromkeys(starts, 0)
        self.starts = starts
        self.ids: list[int] = []
        self.next_offset = dict(starts)
        self.watermark: int | None = None
        self.snapshots = 0

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        assert position is not None
        partition = int(position.split("partition=")[1].split()[0])
        first = int(position.split("offsets=")[1].split("-")[0])
        # the snapshot a barrier injected here would take: the rows emitted before this batch
        positions = self.stream.snapshot()["positions"]
        assert positions == {p: self.starts[p] + n for p, n in self.emitted.items()}, position
        assert first == self.next_offset[partition], "a fetch emitted out of order or twice"
        self.snapshots += 1
        times = pc.cast(batch.column("event_time"), pa.int64()).to_numpy()
        if self.watermark is not None:
            assert int(times.min()) > self.watermark, "a watermark covered a row in decode"
        self.emitted[partition] += batch.num_rows
        self.next_offset[partition] += batch.num_rows
        self.ids.extend(batch.column("event_id").to_pylist())

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        self.watermark = time if self.watermark is None else max(self.watermark, time)

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: Any) -> None:
        raise AssertionError(f"unexpected dead letter at {position}: {reason}")

    async def barrier_point(self) -> None:
        return None


async def test_pipelined_decode_keeps_order_snapshots_and_watermarks(broker: Broker) -> None:
    topic = await asyncio.to_thread(broker.new_topic, PARTITIONS)
    for p in range(PARTITIONS):
        # event time rises with the offset in each partition; partitions interleave in time
        values = [
            orjson.dumps(
                {
                    "event_time": BASE_MS + (i * PARTITIONS + p) * 10,
                    "event_id": p * PER_PARTITION + i,
                    "kind": "view" if i % 3 else "click",
                }
            )
            for i in range(PER_PARTITION)
        ]
        await broker.aproduce(topic, values, partition=p)
    stream = KafkaStream(
        topic,
        broker.bootstrap,
        "event_time",
        schema=SCHEMA,
        stop_at="latest",
        max_batch_records=300,
    )
    await stream.open()
    out = _Checking(stream, {p: 0 for p in range(PARTITIONS)})
    try:
        await stream.drive(out)
    finally:
        await stream.close()
    assert sorted(out.ids) == list(range(PARTITIONS * PER_PARTITION))  # each record once
    assert out.emitted == dict.fromkeys(range(PARTITIONS), PER_PARTITION)
    assert stream.snapshot()["positions"] == dict.fromkeys(range(PARTITIONS), PER_PARTITION)
    assert out.snapshots >= PARTITIONS * PER_PARTITION // 300
    final = stream.final_watermark()
    assert final == (BASE_MS + (PER_PARTITION * PARTITIONS - 1) * 10) * MS
