"""LambdaSource on a real Parquet lake and both real brokers (Apache Kafka in the default run,
Tansu in -m slow): timestamp and exact-offset handoff, gap detection, watermarks, idleness and
alignment.

Reference: the expected output is computed independently with pyarrow over the generated table
(lake rows with time < cutoff + stream rows with time >= cutoff, or every produced row once) and
compared as multisets of the unique ``event_id``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lake.generator import DEFAULT_START, generate_clickstream
from lambdasource.errors import HandoffError, HandoffGapError
from lambdasource.sources.alignment import Alignment
from lambdasource.sources.kafka.stream import KafkaStream
from lambdasource.sources.lake.commits import CommitRecord
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.sources.lambda_source import LambdaSource
from lambdasource.timeutil import HOUR, MINUTE, MS, to_micros
from tests.services.brokers import Broker, both_brokers

broker = both_brokers(default=("apache",))

T0 = to_micros(DEFAULT_START)
SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("event_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("amount", pa.float64()),
    ]
)


# --- helpers ----------------------------------------------------------------------------------


class OrderedSink(ls.CollectSink):
    """CollectSink that also records the interleaving of batches and watermarks."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, Any]] = []

    async def write(self, batch: pa.RecordBatch) -> None:
        await super().write(batch)
        if batch.num_rows:
            self.events.append(("batch", batch))

    async def on_watermark(self, watermark: int) -> None:
        await super().on_watermark(watermark)
        self.events.append(("wm", watermark))

    def ids(self) -> Counter[int]:
        return Counter(self.table().column("event_id").to_pylist()) if self.batches else Counter()

    def late_rows(self) -> int:
        """Rows that arrived with time <= an earlier watermark (must be 0)."""
        last, late = None, 0
        for kind, payload in self.events:
            if kind == "wm":
                assert last is None or payload > last, "watermark regressed"
                last = payload
            elif last is not None:
                times = payload.column("event_time").cast(pa.int64()).to_numpy()
                late += int(np.count_nonzero(times <= last))
        return late


def clickstream(events: int, seed: int, jitter: str) -> pa.Table:
    table = generate_clickstream(events, 1, 50, seed=seed, jitter=jitter)
    return table.select(SCHEMA.names).cast(SCHEMA)


def write_lake(root: Path, table: pa.Table, *, commit: CommitRecord | None = None) -> list[str]:
    """Hour partitions ``dt=YYYY-MM-DD/hour=HH/part-000.parquet``, each sorted by event time."""
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    hours = (times // HOUR) * HOUR
    files = []
    for hour in np.unique(hours):
        part = table.filter(pa.array(hours == hour)).sort_by("event_time")
        stamp = pa.scalar(int(hour), pa.timestamp("us", tz="UTC")).as_py()
        rel = f"dt={stamp:%Y-%m-%d}/hour={stamp:%H}/part-000.parquet"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, root / rel, row_group_size=200)
        files.append(rel)
    if commit is not None:
        path = root / CommitRecord(sequence=commit.sequence).file_name()
        path.parent.mkdir(parents=True, exist_ok=True)
        full = CommitRecord(
            sequence=commit.sequence,
            offsets=commit.offsets,
            topic=commit.topic,
            files=tuple(files),
            rows=table.num_rows,
            high_watermark=commit.high_watermark,
        )
        path.write_bytes(full.to_json())
    return files


def to_json(table: pa.Table) -> list[bytes]:
    return [orjson.dumps(row) for row in table.to_pylist()]


def arrival_ms(table: pa.Table) -> list[int]:
    """Record timestamps: the producer's clock, i.e. the running max of event times (ms)."""
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    return (np.maximum.accumulate(times) // MS).tolist() if len(times) else []


async def produce_partitioned(
    broker: Broker, topic: str, table: pa.Table, weights: list[float]
) -> dict[int, pa.Table]:
    """Spread rows over partitions with the given weights (0 → empty); returns rows per partition."""
    rng = np.random.default_rng(7)
    probs = np.asarray(weights) / sum(weights)
    assign = rng.choice(len(weights), size=table.num_rows, p=probs)
    parts = {}
    for p in range(len(weights)):
        rows = table.filter(pa.array(assign == p))
        parts[p] = rows
        if rows.num_rows:
            await broker.aproduce(topic, to_json(rows), partition=p, timestamps_ms=arrival_ms(rows))
    return parts


def stream_for(broker: Broker, topic: str, **kw: Any) -> KafkaStream:
    return KafkaStream(
        topic,
        broker.bootstrap,
        time_column="event_time",
        schema=SCHEMA,
        stop_at=kw.pop("stop_at", "latest"),
        max_batch_records=kw.pop("max_batch_records", 200),
        **kw,
    )


async def run(source: LambdaSource) -> tuple[OrderedSink, ls.Pipeline]:
    p = ls.Pipeline()
    sink = OrderedSink()
    p.source(source).sink(sink)
    await p.run()
    return sink, p


async def new_topic(broker: Broker, partitions: int) -> str:
    return await asyncio.to_thread(broker.new_topic, partitions)


# --- timestamp handoff ------------------------------------------------------------------------


async def check_timestamp_handoff(
    broker: Broker,
    root: Path,
    *,
    events: int,
    seed: int,
    lake_hours: int,
    overlap_hours: int,
    weights: list[float],
    cutoff: int | None = None,
) -> tuple[OrderedSink, LambdaSource]:
    table = clickstream(events, seed, jitter="5m")
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    lake_end = T0 + lake_hours * HOUR
    lake_rows = table.filter(pa.array(times < lake_end))
    write_lake(root, lake_rows)
    # the stream holds everything that arrived after (lake_end - overlap), in arrival order
    arrival = np.maximum.accumulate(times)
    stream_rows = table.filter(pa.array(arrival >= lake_end - overlap_hours * HOUR))
    topic = await new_topic(broker, len(weights))
    parts = await produce_partitioned(broker, topic, stream_rows, weights)

    lake = ParquetLake(root, "event_time", schema=SCHEMA)
    source = LambdaSource(
        lake,
        stream_for(broker, topic),
        cutoff=cutoff,
        out_of_orderness="10m",
        idle_timeout="200ms",
    )
    sink, _ = await run(source)
    # default cutoff: what the lake truly covers, the newest lake time + 1µs − out_of_orderness
    newest = int(pc.max(lake_rows.column("event_time")).cast(pa.int64()).as_py())
    cut = newest + 1 - 10 * MINUTE if cutoff is None else cutoff
    assert source.cutoff == cut
    lake_t = pc.cast(lake_rows.column("event_time"), pa.int64()).to_numpy()
    stream_t = pc.cast(stream_rows.column("event_time"), pa.int64()).to_numpy()
    expected = Counter(lake_rows.filter(pa.array(lake_t < cut)).column("event_id").to_pylist())
    expected.update(stream_rows.filter(pa.array(stream_t >= cut)).column("event_id").to_pylist())
    assert sink.ids() == expected
    # the stream is read from record timestamp cutoff - 10m on; what it holds before the
    # cutoff is dropped and counted
    start_ms = (cut - 10 * MINUTE) // MS
    dropped = 0
    for rows in parts.values():
        t = pc.cast(rows.column("event_time"), pa.int64()).to_numpy()
        read = np.asarray(arrival_ms(rows), dtype=np.int64) >= start_ms
        dropped += int(np.count_nonzero(read & (t < cut)))
    assert source.dropped_before_cutoff == dropped
    assert sink.late_rows() == 0
    assert sink.watermarks[-1] >= int(max(stream_t.max(), cut - 1))
    return sink, source


@pytest.mark.parametrize(
    "weights",
    [[1.0], [6.0, 1.0, 0.0, 2.0]],  # one partition; skewed lag with an empty partition
    ids=["one-partition", "four-skewed-one-empty"],
)
async def test_timestamp_handoff_union_is_lake_before_and_stream_after(
    broker: Broker, tmp_path: Path, weights: list[float]
) -> None:
    _, source = await check_timestamp_handoff(
        broker, tmp_path, events=4000, seed=3, lake_hours=14, overlap_hours=2, weights=weights
    )
    m = source.metrics()
    assert m["dropped_before_cutoff"] > 0  # the overlap was really there
    assert m["rows"]["lake"] > 0 and m["rows"]["stream"] > 0


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lake_hours=st.integers(2, 20),
    overlap_hours=st.integers(0, 3),
    cut_shift_min=st.integers(-120, 0),
    seed=st.integers(0, 100),
)
def test_timestamp_handoff_property(
    broker: Broker, lake_hours: int, overlap_hours: int, cut_shift_min: int, seed: int
) -> None:
    """Any lake end, overlap and explicit cutoff (at or before the lake's end)."""
    cutoff = T0 + lake_hours * HOUR + cut_shift_min * MINUTE
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(
            check_timestamp_handoff(
                broker,
                Path(tmp),
                events=1500,
                seed=seed,
                lake_hours=lake_hours,
                overlap_hours=overlap_hours,
                weights=[2.0, 1.0],
                cutoff=cutoff,
            )
        )


async def test_idle_partition_does_not_stall_the_lambda_watermark(
    broker: Broker, tmp_path: Path
) -> None:
    """Unbounded: an empty partition becomes idle (caught up + quiet) and the output watermark
    reaches the busy partition's max − out_of_orderness."""
    table = clickstream(2000, 5, jitter="1m")
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    lake_end = T0 + 10 * HOUR
    write_lake(tmp_path, table.filter(pa.array(times < lake_end)))
    stream_rows = table.filter(pa.array(times >= lake_end))
    topic = await new_topic(broker, 2)
    await broker.aproduce(
        topic, to_json(stream_rows), partition=0, timestamps_ms=arrival_ms(stream_rows)
    )
    source = LambdaSource(
        ParquetLake(tmp_path, "event_time", schema=SCHEMA),
        stream_for(broker, topic, stop_at=None),
        cutoff=lake_end,  # the lake is complete up to its last partition's end
        out_of_orderness="10m",
        idle_timeout="300ms",
    )
    p = ls.Pipeline()
    sink = OrderedSink()
    p.source(source).sink(sink)
    expected = (
        int(pc.cast(stream_rows.column("event_time"), pa.int64()).to_numpy().max()) - 10 * MINUTE
    )
    task = asyncio.create_task(p.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            if sink.watermarks and sink.watermarks[-1] >= expected:
                break
        assert sink.watermarks[-1] == expected
        parts = source.metrics()["stream"]["partitions"]
        assert parts[1]["idle"] and not parts[0]["paused"]
        assert len(sink) == table.num_rows
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- exact offset handoff ---------------------------------------------------------------------


async def offset_setup(
    broker: Broker, root: Path, weights: list[float], *, archive_fraction: float
) -> tuple[str, pa.Table, dict[int, int]]:
    """Produce part 1, archive it (lake files + commit with the offsets produced), produce part 2.
    Partition 0's archive stops in the middle; the last partition is never archived."""
    table = clickstream(3000, 11, jitter="5m")
    n1 = int(table.num_rows * archive_fraction)
    first, second = table.slice(0, n1), table.slice(n1)
    topic = await new_topic(broker, len(weights))
    parts = await produce_partitioned(broker, topic, first, weights)
    archived, offsets = [], {}
    for p, rows in parts.items():
        if p == len(weights) - 1 and len(weights) > 1:
            continue  # never archived: the stream must read it from the earliest offset
        keep = rows.num_rows if p else rows.num_rows * 2 // 3
        archived.append(rows.slice(0, keep))
        offsets[p] = keep
    lake_rows = pa.concat_tables(archived)
    write_lake(
        root,
        lake_rows,
        commit=CommitRecord(sequence=1, offsets=offsets, topic=topic, high_watermark=None),
    )
    await produce_partitioned(broker, topic, second, weights)
    return topic, table, offsets


@pytest.mark.parametrize(
    "weights",
    [[1.0], [5.0, 1.0, 0.0, 2.0]],
    ids=["one-partition", "four-skewed-one-empty-one-unarchived"],
)
async def test_offset_handoff_delivers_every_record_exactly_once(
    broker: Broker, tmp_path: Path, weights: list[float]
) -> None:
    topic, table, offsets = await offset_setup(broker, tmp_path, weights, archive_fraction=0.6)
    source = LambdaSource(
        ParquetLake(tmp_path, "event_time", schema=SCHEMA),
        stream_for(broker, topic),
        handoff="offsets",
        out_of_orderness="10m",
        idle_timeout="200ms",
    )
    sink, _ = await run(source)
    assert sink.ids() == Counter(table.column("event_id").to_pylist())
    m = source.metrics()
    assert m["recorded_offsets"] == offsets
    assert m["dropped_before_cutoff"] == 0 and m["missing_offsets_total"] == 0
    starts = {k: v["start"] for k, v in m["stream"]["partitions"].items()}
    assert starts == {k: offsets.get(k, 0) for k in range(len(weights))}


async def test_offset_handoff_detects_retention_gaps(broker: Broker, tmp_path: Path) -> None:
    """Retention simulated by a fake beginning-offsets lookup: the stream 'starts' 5 past the
    recorded offset of partition 0."""
    topic, table, offsets = await offset_setup(broker, tmp_path, [1.0, 1.0], archive_fraction=0.5)

    def make(allow_gaps: bool) -> LambdaSource:
        stream = stream_for(broker, topic)

        async def retained_from(partitions: list[int]) -> dict[int, int]:
            return {p: offsets[0] + 5 if p == 0 else 0 for p in partitions}

        stream.beginning_offsets = retained_from
        return LambdaSource(
            ParquetLake(tmp_path, "event_time", schema=SCHEMA),
            stream,
            handoff="offsets",
            idle_timeout="200ms",
            allow_gaps=allow_gaps,
        )

    with pytest.raises(HandoffGapError) as info:
        await run(make(False))
    message = str(info.value)
    assert f"partition=0: offsets {offsets[0]}..{offsets[0] + 4}" in message
    assert f"topic={topic}" in message

    source = make(True)
    sink, _ = await run(source)
    assert source.metrics()["missing_offsets"] == {
        0: {"from": offsets[0], "to": offsets[0] + 5, "count": 5}
    }
    got = sink.ids()
    everything = Counter(table.column("event_id").to_pylist())
    missing = everything - got
    assert sum(missing.values()) == 5 and not (got - everything)


async def test_offset_handoff_needs_recorded_offsets(broker: Broker, tmp_path: Path) -> None:
    table = clickstream(200, 1, jitter="1m")
    write_lake(tmp_path, table)
    topic = await new_topic(broker, 1)
    source = LambdaSource(
        ParquetLake(tmp_path, "event_time", schema=SCHEMA),
        stream_for(broker, topic),
        handoff="offsets",
    )
    with pytest.raises(HandoffError, match="no commit records"):
        await run(source)


# --- alignment --------------------------------------------------------------------------------


def leads(sink: OrderedSink, stream_ids: set[int]) -> dict[str, int]:
    """Largest lead of a record over the watermark in force when it reached the sink (the
    operator after the source), for lake and stream records; records that arrive before the
    first watermark are measured against it. Computed from what the sink saw, not the source's
    own counters."""
    worst = {"lake": -(2**62), "stream": -(2**62)}
    pending: list[pa.RecordBatch] = []
    mark: int | None = None

    def measure(batch: pa.RecordBatch, against: int) -> None:
        times = batch.column("event_time").cast(pa.int64()).to_numpy()
        ids = np.asarray(batch.column("event_id").to_numpy(zero_copy_only=False))
        from_stream = np.isin(ids, np.fromiter(stream_ids, dtype=ids.dtype))
        for kind, rows in (("stream", from_stream), ("lake", ~from_stream)):
            if rows.any():
                worst[kind] = max(worst[kind], int(times[rows].max()) - against)

    for kind, payload in sink.events:
        if kind == "wm":
            mark = payload
            for batch in pending:
                measure(batch, mark)
            pending = []
        elif kind == "batch":
            if mark is None:
                pending.append(payload)
            else:
                measure(payload, mark)
    return worst


async def alignment_job(
    broker: Broker,
    root: Path,
    topic: str,
    alignment: Alignment | None,
    *,
    handoff: str = "timestamp",
    cutoff: int | None = None,
    max_batch_records: int = 50,
) -> tuple[OrderedSink, LambdaSource]:
    source = LambdaSource(
        ParquetLake(root, "event_time", schema=SCHEMA),
        stream_for(broker, topic, max_batch_records=max_batch_records),
        handoff=handoff,
        cutoff=cutoff,
        out_of_orderness="1m",
        idle_timeout="200ms",
        alignment=alignment,
    )
    sink, _ = await run(source)
    return sink, source


@pytest.mark.parametrize("handoff", ["timestamp", "offsets"])
@pytest.mark.parametrize("max_batch_records", [50, 5000], ids=["small-fetch", "whole-topic-fetch"])
async def test_alignment_bounds_every_record_at_the_next_operator(
    broker: Broker, tmp_path: Path, handoff: str, max_batch_records: int
) -> None:
    """A 20-hour lake and a stream whose partitions open at the handoff: aligned, no stream
    record reaches the next operator more than max_drift + out_of_orderness ahead of the
    watermark in force there — the first fetch (which here may hold the whole topic, hours of
    event time) included; lake records too (lake batches span at most max_drift). Unaligned,
    the stream runs hours ahead. Every record arrives once and none is late."""
    table = clickstream(6000, 2, jitter="30s")
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    cut = T0 + 20 * HOUR
    lake_rows = table.filter(pa.array(times < cut))
    stream_rows = table.filter(pa.array(times >= cut))
    topic = await new_topic(broker, 2)
    parts = await produce_partitioned(broker, topic, stream_rows, [1.0, 1.0])
    offsets = {p: rows.num_rows for p, rows in parts.items()} if handoff == "offsets" else None
    commit = None
    if offsets is not None:  # the lake archived nothing of the topic: the stream starts at 0
        commit = CommitRecord(sequence=1, offsets=dict.fromkeys(offsets, 0), topic=topic)
    write_lake(tmp_path, lake_rows, commit=commit)
    expected = Counter(table.column("event_id").to_pylist())
    stream_ids = set(stream_rows.column("event_id").to_pylist())
    cutoff = cut if handoff == "timestamp" else None

    drift = 30 * MINUTE
    sink, aligned = await alignment_job(
        broker,
        tmp_path,
        topic,
        Alignment(max_drift="30m"),
        handoff=handoff,
        cutoff=cutoff,
        max_batch_records=max_batch_records,
    )
    assert sink.ids() == expected
    assert sink.late_rows() == 0
    lead = leads(sink, stream_ids)
    assert lead["stream"] <= drift + MINUTE, lead
    assert lead["lake"] <= drift + MINUTE, lead  # lake batches span <= max_drift
    splits = aligned.metrics()["alignment"]["splits"]
    assert any(s["holds"] > 0 for n, s in splits.items() if n.startswith("stream:"))

    sink2, _ = await alignment_job(
        broker,
        tmp_path,
        topic,
        None,
        handoff=handoff,
        cutoff=cutoff,
        max_batch_records=max_batch_records,
    )
    assert sink2.ids() == expected
    assert leads(sink2, stream_ids)["stream"] > 3 * HOUR


# --- checkpoint / restore, schema unification -------------------------------------------------


class BarrierSink(OrderedSink):
    """Marks where checkpoint barriers reached the sink (``flush`` runs at each barrier).

    With ``pause_when`` it stops taking batches once that holds, until ``resume()``: the
    source is then backpressured mid-run, so a checkpoint triggered while paused lands in the
    middle however fast or slow the machine is."""

    def __init__(self, pause_when: Callable[[BarrierSink], bool] | None = None) -> None:
        super().__init__()
        self.pause_when = pause_when
        self.paused = asyncio.Event()
        self._resumed = asyncio.Event()

    async def write(self, batch: pa.RecordBatch) -> None:
        if self.pause_when is not None and not self._resumed.is_set() and self.pause_when(self):
            self.paused.set()
            await self._resumed.wait()
        await super().write(batch)

    def resume(self) -> None:
        self._resumed.set()

    async def flush(self) -> None:
        self.events.append(("flush", None))

    def ids_before_first_flush(self) -> Counter[int]:
        ids: Counter[int] = Counter()
        for kind, payload in self.events:
            if kind == "flush":
                return ids
            if kind == "batch":
                ids.update(payload.column("event_id").to_pylist())
        raise AssertionError("no barrier reached the sink")


@pytest.mark.parametrize("fetch", [50, 5000], ids=["small-fetch", "held-rows-in-checkpoint"])
async def test_restore_from_a_checkpoint_delivers_the_rest_exactly_once(
    broker: Broker, tmp_path: Path, fetch: int
) -> None:
    """A checkpoint mid-lake, restored into a new source: every record once. With whole-topic
    fetches the checkpoint holds the rows alignment kept back, and the restore emits them."""
    table = clickstream(3000, 9, jitter="2m")
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    cut = T0 + 12 * HOUR
    write_lake(tmp_path, table.filter(pa.array(times < cut)))
    topic = await new_topic(broker, 2)
    await produce_partitioned(broker, topic, table.filter(pa.array(times >= cut)), [1.0, 2.0])
    expected = Counter(table.column("event_id").to_pylist())

    def make(stop_at: str | None) -> LambdaSource:
        return LambdaSource(
            ParquetLake(tmp_path, "event_time", schema=SCHEMA, batch_size=100),
            stream_for(broker, topic, stop_at=stop_at, max_batch_records=fetch),
            cutoff=cut,  # the lake is complete up to its last partition's end
            out_of_orderness="5m",
            idle_timeout="200ms",
            alignment=Alignment(max_drift="10m"),
        )

    first = make(None)
    p = ls.Pipeline()

    def pause_when(sink: BarrierSink) -> bool:
        """Mid-lake; with whole-topic fetches, once alignment holds back stream rows."""
        if fetch == 50:
            return len(sink) >= 300
        return any(part["held_rows"] for part in first.metrics()["stream"]["partitions"].values())

    sink = BarrierSink(pause_when)
    p.source(first).sink(sink)
    task = asyncio.create_task(p.run())
    try:
        await asyncio.wait_for(sink.paused.wait(), 30)
        checkpoint = p.trigger_checkpoint()
        sink.resume()
        for _ in range(300):
            await asyncio.sleep(0.02)
            if checkpoint in p.snapshots and any(k == "flush" for k, _ in sink.events):
                break
        state = p.snapshots[checkpoint][first.name]
        state = state.thaw() if hasattr(state, "thaw") else state
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    before = sink.ids_before_first_flush()
    assert 0 < sum(before.values()) < table.num_rows  # really in the middle
    assert state["cutoff"] == cut and set(state["stream"]["positions"]) == {0, 1}
    if fetch == 5000:
        assert state["stream"]["held"], "the checkpoint holds the rows alignment kept back"

    second = make("latest")
    second.restore(state)
    after, _ = await run(second)
    assert before + after.ids() == expected


async def test_lake_and_stream_schemas_are_unified(broker: Broker, tmp_path: Path) -> None:
    """The lake has a column the stream lacks (nulls on the stream side) and stores user_id as
    int32 (cast to the declared int64)."""
    table = clickstream(800, 4, jitter="1m")
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    cut = T0 + 12 * HOUR
    lake_rows = table.filter(pa.array(times < cut))
    lake_rows = lake_rows.append_column("country", pa.array(["NL"] * lake_rows.num_rows))
    lake_rows = lake_rows.set_column(2, "user_id", lake_rows.column("user_id").cast(pa.int32()))
    write_lake(tmp_path, lake_rows)
    stream_rows = table.filter(pa.array(times >= cut))
    topic = await new_topic(broker, 1)
    await produce_partitioned(broker, topic, stream_rows, [1.0])
    declared = SCHEMA.append(pa.field("country", pa.string()))
    source = LambdaSource(
        ParquetLake(tmp_path, "event_time", schema=declared),
        stream_for(broker, topic),
        cutoff=cut,  # the lake is complete up to its last partition's end
        idle_timeout="200ms",
    )
    sink, _ = await run(source)
    out = sink.table()
    assert out.schema.field("user_id").type == pa.int64()
    countries = Counter(out.column("country").to_pylist())
    assert countries == {"NL": lake_rows.num_rows, None: stream_rows.num_rows}
