"""An in-process lambda job over a live (unbounded) stream, verified record by record: the
harness of the broker-outage, broker-restart and soak tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import lambdasource as ls
from lake.generator import DEFAULT_START, generate_clickstream
from lambdasource.checkpoints import Checkpoints
from lambdasource.sources.alignment import Alignment
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.lambda_source import LambdaSource
from tests.faults import jobs
from tests.faults.verify import VerifyingSink


def more_events(events: int, day: int, seed: int, id_offset: int, days: int = 1) -> pa.Table:
    """``events`` further records over ``days`` days from day ``day`` after the data set's
    start, ids shifted by ``id_offset`` (unique against the data set's)."""
    table = generate_clickstream(
        events, days, 40, seed=seed, start=DEFAULT_START + timedelta(days=day), jitter="2m"
    )
    table = table.select(jobs.SCHEMA.names).cast(jobs.SCHEMA)
    ids = pc.add(table.column("event_id"), pa.scalar(id_offset, pa.int64()))
    return table.set_column(table.schema.get_field_index("event_id"), "event_id", ids)


class LiveJob:
    """lake → LambdaSource(offsets handoff, unbounded stream) → VerifyingSink, with checkpoints."""

    def __init__(
        self,
        lake: str,
        topic: str,
        bootstrap: str,
        checkpoints: str | None,
        expected: np.ndarray,
        *,
        interval: str = "300ms",
        consumer_options: dict[str, Any] | None = None,
        throttle_s: float = 0.0,
        fetch_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.sink = VerifyingSink(expected)
        self.source = LambdaSource(
            jobs.lake_source(lake, 500),
            KafkaStream(
                topic,
                bootstrap,
                time_column="event_time",
                schema=jobs.SCHEMA,
                max_batch_records=500,
                max_partition_fetch_bytes=fetch_bytes,
                consumer_options=consumer_options,
            ),
            handoff="offsets",
            out_of_orderness=jobs.OUT_OF_ORDERNESS,
            idle_timeout="500ms",
            alignment=Alignment(max_drift="30m"),
        )
        ckpt = None if checkpoints is None else Checkpoints(checkpoints, interval=interval)
        self.pipeline = ls.Pipeline(checkpoints=ckpt, name="faults-live")
        stream = self.pipeline.source(self.source)
        if throttle_s > 0:

            def throttle(batch: pa.RecordBatch) -> pa.RecordBatch:
                time.sleep(throttle_s)  # slows the catch-up so a fault can land inside it
                return batch

            stream = stream.map(throttle, schema=jobs.SCHEMA, on_error="raise")
        stream.sink(self.sink)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> LiveJob:
        self.task = asyncio.create_task(self.pipeline.run(restore=None))
        return self

    async def wait_for(self, cond: Callable[[], bool], limit_s: float, what: str) -> float:
        """Wait until ``cond()``; fail with the job's error or a timeout naming ``what``."""
        started = time.perf_counter()
        while not cond():
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError(f"the job ended before {what}")
            if time.perf_counter() - started > limit_s:
                raise AssertionError(
                    f"timed out after {limit_s}s waiting for {what}: {self.sink.report()}"
                )
            await asyncio.sleep(0.05)
        return time.perf_counter() - started

    async def wait_rows(self, rows: int, limit_s: float) -> float:
        return await self.wait_for(
            lambda: len(np.unique(self.sink.ids())) >= rows if self.sink.rows >= rows else False,
            limit_s,
            f"{rows} distinct rows",
        )

    async def stop(self) -> None:
        if self.task is None:
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def metrics(self) -> dict[str, Any]:
        return self.pipeline.metrics()


async def produce_later(
    bootstrap: str, topic: str, table: pa.Table, partitions: int, seed: int
) -> None:
    """Produce ``table`` in its (event-time) order, interleaving the partitions as a live
    producer does. (Producing one partition's whole day before the next's makes the first
    partition drive the watermark while the other is idle: its records then arrive late, by
    the idleness rule, with or without faults.)"""
    from aiokafka import AIOKafkaProducer

    rng = np.random.default_rng(seed)
    assign = rng.integers(0, partitions, size=table.num_rows).tolist()
    values = jobs.to_json(table)
    stamps = jobs.arrival_ms(table)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, v, partition=p, timestamp_ms=ts)
            for v, p, ts in zip(values, assign, stamps, strict=True)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
