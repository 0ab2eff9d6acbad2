"""Skew/memory study: what watermark alignment buys, measured (DESIGN §3 "Alignment").

A lake holds ``lake_span`` of history; a Kafka topic holds the ``backlog`` that follows it (event
time ``[lake_end, lake_end + backlog)``). ``LambdaSource(lake, stream, cutoff=lake_end)`` →
:class:`Probe` → ``key_by(user_id)`` → ``Sliding(size, slide)`` (count + sum by default, any
job-file aggregates) → a counting sink. While the job runs, a sampler in the same event loop reads
``pipeline.metrics()`` every ~50 ms and a thread of its own reads the process RSS.

What the next operator sees: the :class:`Probe`, a pass-through operator right after the source,
records for every batch ``max(event time) − the last watermark it received`` (batches before the
first watermark are measured against the first one), and counts the rows beyond that watermark
+ ``max_drift + out_of_orderness`` — alignment's bound, checked where a user sees records, not
with the source's own counters (``source_max_lead_h`` is kept for comparison only).

Mechanism (what the figures measure, nothing else): the window operator's watermark is the
minimum over the lake and the stream partitions, so it follows the lake. Unaligned, the stream is
read as fast as it arrives: its records are ahead of the watermark, so the sliding engine keeps
them as *pending slices* (one row per key × slice, ``_pending``, plus one per key × value × slice
for ``count_distinct``) until the lake catches up — window state grows with the backlog, and when
the lake ends the watermark jumps over the whole backlog at once. Aligned, a stream partition
stops being read once its watermark is ``max_drift`` ahead of the global one, and no record
leaves the source beyond the bound, so pending state stays bounded by drift.
``state_rows``/``state_bytes`` (window state + queues, ``metrics()["buffered"]``) are the direct
signal; RSS (``VmHWM``, reset before each run) is the operator's view and noisier (allocator
pools, decoded Kafka batches, the interpreter).

Every figure is also reported as a ratio against a baseline measured in the same run: unaligned /
aligned peak state and RSS growth at the same backlog, aligned / unaligned throughput.

``run_config`` is the unit; :class:`StudyEnv` caches generated events, lakes and topics between
configs (and owns an embedded broker unless given ``bootstrap``). The notebooks import both.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lambdasource.embedded import create_topic, produce_json
from lambdasource.operator import Context, Operator
from lambdasource.sinks.base import Sink
from lambdasource.timeutil import parse_duration, to_micros

from .common import Report, fmt, markdown_table, measure_phase

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
GRANULARITIES = {"hour": HOUR_US, "day": DAY_US}
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# --- measuring -----------------------------------------------------------------------------------


def current_rss_bytes() -> int | None:
    """Resident set size of this process now (``/proc/self/statm``; None where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Sample:
    """One reading of a running pipeline: ``t`` seconds since the sampler started."""

    t: float
    rss_bytes: int | None
    state_rows: int
    state_bytes: int
    queue_rows: int
    queue_bytes: int
    records: int  # rows the source emitted so far (lake + stream for a lambda source)
    late: int
    global_watermark: int | None
    watermarks: dict[str, int | None]  # per alignment split (lake, stream:partition=N)
    held: dict[str, bool]


def read_sample(metrics: dict[str, Any], t: float, rss_bytes: int | None) -> Sample:
    """Extract a :class:`Sample` from ``pipeline.metrics()`` (plain data, any source kind)."""
    buffered = metrics.get("buffered") or {}
    records = 0
    splits: dict[str, Any] = {}
    for source in (metrics.get("sources") or {}).values():
        rows = source.get("rows")
        if isinstance(rows, dict):
            records += sum(int(v or 0) for v in rows.values())
        else:
            records += int(source.get("records_out", 0) or 0)
        splits.update((source.get("alignment") or {}).get("splits") or {})
    return Sample(
        t=t,
        rss_bytes=rss_bytes,
        state_rows=int(buffered.get("state_rows", 0) or 0),
        state_bytes=int(buffered.get("state_bytes", 0) or 0),
        queue_rows=int(buffered.get("queue_rows", 0) or 0),
        queue_bytes=int(buffered.get("queue_bytes", 0) or 0),
        records=records,
        late=int(metrics.get("late", 0) or 0),
        global_watermark=metrics.get("global_watermark"),
        watermarks={name: s.get("watermark") for name, s in splits.items()},
        held={name: bool(s.get("held")) for name, s in splits.items()},
    )


class RssWatcher:
    """Reads the RSS every ``interval`` seconds from a thread of its own, so the readings go on
    while the event loop is busy in one long step (a sampler inside the loop cannot see the peak
    of, say, a window completing days of slides at once). ``with RssWatcher() as w:``; then
    ``w.series`` is ``[(seconds since start, bytes)]``."""

    def __init__(self, interval: float = 0.05) -> None:
        if interval <= 0:
            raise ValueError(f"RssWatcher: interval must be > 0, got {interval}")
        self.interval = interval
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _run(self) -> None:
        while True:
            rss = current_rss_bytes()
            if rss is not None:
                self.series.append((time.perf_counter() - self._t0, rss))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssWatcher:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="rss-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        rss = current_rss_bytes()
        if rss is not None:
            self.series.append((time.perf_counter() - self._t0, rss))

    def peak(self) -> int:
        return max((rss for _, rss in self.series), default=0)


class Sampler:
    """Samples ``pipeline.metrics()`` and RSS every ``interval`` seconds in the running loop.

    ``await sampler.run()`` until cancelled (the caller cancels it when the job ends and then
    calls :meth:`take` once more, so the final state is always recorded). Peaks are over all
    samples; a sample is plain data, safe to keep after the run.
    """

    def __init__(self, pipeline: Any, interval: float = 0.05) -> None:
        if interval <= 0:
            raise ValueError(f"Sampler: interval must be > 0, got {interval}")
        self.pipeline = pipeline
        self.interval = interval
        self.samples: list[Sample] = []
        self._t0 = time.perf_counter()

    def take(self) -> Sample:
        sample = read_sample(
            self.pipeline.metrics(), time.perf_counter() - self._t0, current_rss_bytes()
        )
        self.samples.append(sample)
        return sample

    def reset_clock(self) -> None:
        """Sample times count from now (call right before the job starts)."""
        self._t0 = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds on the sampler's clock."""
        return time.perf_counter() - self._t0

    async def run(self) -> None:
        while True:
            self.take()
            await asyncio.sleep(self.interval)

    def peak(self, name: str) -> int:
        """Largest value of the integer field ``name`` over the samples (0 when none)."""
        values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
        return int(max(values)) if values else 0


class Probe(Operator):
    """Pass-through operator right after the source: what the *next operator* sees.

    Lead: for every batch, ``max(event time) − the last watermark this operator received`` —
    how far the source let records run ahead of the watermark it emitted, which is what
    downstream state has to buffer. Batches that arrive before the first watermark are measured
    against the first one when it comes. ``bound_us`` (``max_drift + out_of_orderness``) is the
    yardstick: ``rows_beyond_bound`` counts rows whose time is beyond watermark + bound. Rows
    before ``cutoff_us`` came from the lake, the others from the stream (the job hands over by
    timestamp at the lake's end), so the lead is also kept per side.

    Sampling: it takes a sampler reading just before each watermark passes (pending window state
    is at a local peak then; a timer alone misses peaks in short runs) and at most every
    ``sampler.interval`` seconds on batches.
    """

    stateful = False

    def __init__(
        self,
        sampler: Sampler,
        bound_us: int,
        cutoff_us: int | None = None,
        time_column: str = "event_time",
        min_gap: float = 0.005,
    ) -> None:
        super().__init__()
        self.sampler = sampler
        self.bound_us = bound_us
        self.cutoff_us = cutoff_us
        self.time_column = time_column
        self.min_gap = min_gap
        self.watermark: int | None = None  # the last watermark received
        self.first_watermark: int | None = None
        self.watermarks = 0
        self.rows = 0
        self.max_lead_us: dict[str, int | None] = {"lake": None, "stream": None}
        self.rows_beyond_bound: dict[str, int] = {"lake": 0, "stream": 0}
        self.leads: list[tuple[float, int]] = []  # (seconds since start, batch lead µs)
        self._early: list[tuple[float, np.ndarray]] = []  # batches before the first watermark
        self._last = 0.0

    def _maybe_take(self, gap: float) -> None:
        now = time.perf_counter()
        if now - self._last >= gap:
            self._last = now
            self.sampler.take()

    def _measure(self, t: float, times: np.ndarray, watermark: int) -> None:
        """Account one batch's rows (``times``: µs) against ``watermark``."""
        self.leads.append((t, int(times.max()) - watermark))
        lake = times < self.cutoff_us if self.cutoff_us is not None else np.zeros(len(times), bool)
        for side, rows in (("lake", times[lake]), ("stream", times[~lake])):
            if not len(rows):
                continue
            lead = int(rows.max()) - watermark
            old = self.max_lead_us[side]
            self.max_lead_us[side] = lead if old is None else max(old, lead)
            beyond = int(np.count_nonzero(rows > watermark + self.bound_us))
            self.rows_beyond_bound[side] += beyond

    def on_batch(self, batch: pa.RecordBatch, ctx: Context) -> None:
        self._maybe_take(self.sampler.interval)
        if batch.num_rows:
            column = batch.column(self.time_column).cast(pa.int64())
            times = np.asarray(column.drop_null().to_numpy(zero_copy_only=False), dtype=np.int64)
            self.rows += batch.num_rows
            if len(times):
                t = self.sampler.elapsed()
                if self.watermark is None:
                    self._early.append((t, times))
                else:
                    self._measure(t, times, self.watermark)
        ctx.emit(batch)

    def on_watermark(self, watermark: int, ctx: Context) -> None:
        self._maybe_take(self.min_gap)
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
            self.watermarks += 1
        if self.first_watermark is None:
            self.first_watermark = watermark
            early, self._early = self._early, []
            for t, times in early:
                self._measure(t, times, watermark)
        ctx.emit_watermark(watermark)

    def on_end(self, ctx: Context) -> None:
        if self._early:  # no watermark ever came: nothing to measure against
            self._early = []

    def max_lead(self) -> int | None:
        """The largest lead of any batch, lake or stream (µs; None: nothing measured)."""
        known = [v for v in self.max_lead_us.values() if v is not None]
        return max(known) if known else None

    def lead_series(self, points: int = 4_000) -> list[tuple[float, float]]:
        """``(seconds, lead hours)`` per batch, thinned to at most ``points`` (keeping, in each
        stretch, the batch with the largest lead)."""
        if not self.leads:
            return []
        step = max(1, math.ceil(len(self.leads) / points))
        out = []
        for i in range(0, len(self.leads), step):
            t, lead = max(self.leads[i : i + step], key=lambda x: x[1])
            out.append((t, lead / HOUR_US))
        return out


class CountingSink(Sink):
    """Counts the rows it receives and keeps nothing (so the sink adds no memory of its own)."""

    name = "count"

    def __init__(self) -> None:
        self.rows = 0

    async def write(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows

    def metrics(self) -> dict[str, Any]:
        return {"rows_written": self.rows}


# --- data ----------------------------------------------------------------------------------------


def generate_span(
    hours: int, events_per_hour: int, users: int, seed: int, start: datetime, jitter: str
) -> pa.Table:
    """Clickstream over ``hours`` from ``start``, generated day by day (seed + day) so that a
    longer span extends a shorter one with the same rows (prefix-stable); rows ordered by arrival
    (bounded out of order by ``jitter``), times clipped to the span by filtering."""
    from lake.generator import generate_clickstream

    days = max(1, math.ceil(hours / 24))
    tables = [
        generate_clickstream(
            events_per_hour * 24,
            1,
            users,
            seed=seed + day,
            start=start + timedelta(days=day),
            jitter=jitter,
        )
        for day in range(days)
    ]
    table = pa.concat_tables(tables)
    times = table.column("event_time")
    lo, hi = to_micros(start), to_micros(start) + hours * HOUR_US
    as_int = pc.cast(times, pa.int64())
    keep = pc.and_(pc.greater_equal(as_int, lo), pc.less(as_int, hi))
    return table.filter(keep).combine_chunks()


def write_lake(
    table: pa.Table,
    root: Path,
    granularity: str,
    sorted_partitions: bool,
    seed: int = 0,
    row_group_rows: int = 8_192,
) -> int:
    """Write ``table`` as an event-time partitioned Parquet lake; returns the partition count.

    Sorted: the ``lake`` writer (files sorted by event time, row groups that carry watermarks).
    Unsorted: the same partition directories, rows shuffled inside each partition, written with
    plain pyarrow — every row group then spans its whole partition, so the lake's watermark can
    only advance at partition boundaries.
    """
    from lake.writer import Layout, ParquetLakeWriter, partition_path

    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {sorted(GRANULARITIES)}, got {granularity!r}")
    if sorted_partitions:
        layout: Layout = "hour" if granularity == "hour" else "day"
        ParquetLakeWriter(root, "event_time", layout=layout, row_group_rows=row_group_rows).write(
            table
        )
        return len({p.parent for p in root.rglob("*.parquet")})
    width = GRANULARITIES[granularity]
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    parts = times // width * width
    rng = np.random.default_rng(seed)
    count = 0
    for part in np.unique(parts):
        rows = np.flatnonzero(parts == part)
        rng.shuffle(rows)
        directory = root / partition_path(int(part), granularity)
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            table.take(pa.array(rows)),
            directory / "part-000.parquet",
            row_group_size=row_group_rows,
        )
        count += 1
    return count


async def produce(bootstrap: str, topic: str, table: pa.Table) -> None:
    """Rows as JSON (ISO times), keyed by user, in arrival order."""
    await produce_json(bootstrap, topic, table, key_column="user_id")


# --- one configuration ---------------------------------------------------------------------------

DEFAULT_AGGREGATES = "clicks=count(),revenue=sum(amount)"


def parse_aggregates(text: str) -> dict[str, Any]:
    """``"clicks=count(),pages=count_distinct(page)"`` → ``{"clicks": kernel, …}`` (the job
    file's aggregate syntax)."""
    from lambdasource.job import parse_aggregate

    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in re.split(r",(?![^(]*\))", text))):
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ValueError(f"aggregate {item!r}: use name=kind(column)")
        out[name.strip()] = parse_aggregate(spec.strip())
    if not out:
        raise ValueError("no aggregates given")
    return out


@dataclass
class StudyEnv:
    """Shared inputs of a sweep: events, lakes and topics are built once per distinct need.

    The lake always spans ``lake_span`` from ``start``; the topic for backlog B holds the events
    of ``[start + lake_span, start + lake_span + B)``. Without ``bootstrap`` an embedded broker is
    started on first use; ``close()`` stops it and removes the work directory it created.
    """

    lake_span: str = "4d"
    events_per_hour: int = 40_000
    users: int = 30_000
    partitions: int = 4
    seed: int = 0
    jitter: str = "30s"
    start: datetime = DEFAULT_START
    bootstrap: str | None = None
    workdir: Path | None = None
    lake_span_us: int = field(default=0, init=False)
    _hours: int = field(default=0, init=False)
    _broker: Any = None
    _own_dir: bool = False
    _events: pa.Table | None = None
    _lakes: dict[tuple[str, bool], Path] = field(default_factory=dict)
    _lake_rows: int = 0
    _topics: dict[int, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        span = parse_duration(self.lake_span, name="lake_span")
        if span % DAY_US:
            raise ValueError(f"lake_span must be whole days (day partitions), got {self.lake_span}")
        self.lake_span_us = span
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="lambdasource-skew-"))
            self._own_dir = True

    @property
    def lake_end_us(self) -> int:
        return to_micros(self.start) + self.lake_span_us

    def bootstrap_servers(self) -> str:
        if self.bootstrap is None:
            from lambdasource.embedded import EmbeddedBroker

            self._broker = EmbeddedBroker().start()
            self.bootstrap = self._broker.bootstrap_servers
        return self.bootstrap

    def events(self, backlog_us: int) -> pa.Table:
        """Events of lake + backlog (prefix-stable: regenerated longer only when needed)."""
        hours = (self.lake_span_us + backlog_us + HOUR_US - 1) // HOUR_US
        if self._events is None or self._hours < hours:
            self._events = generate_span(
                hours, self.events_per_hour, self.users, self.seed, self.start, self.jitter
            )
            self._hours = hours
        return self._events

    def _slice(self, lo: int, hi: int) -> pa.Table:
        table = self.events(hi - self.lake_end_us)
        times = pc.cast(table.column("event_time"), pa.int64())
        return table.filter(pc.and_(pc.greater_equal(times, lo), pc.less(times, hi)))

    def lake(self, granularity: str, sorted_partitions: bool) -> tuple[Path, int]:
        """The lake directory for this layout and its row count."""
        key = (granularity, sorted_partitions)
        if key not in self._lakes:
            table = self._slice(to_micros(self.start), self.lake_end_us)
            assert self.workdir is not None
            root = (
                self.workdir / f"lake-{granularity}-{'sorted' if sorted_partitions else 'unsorted'}"
            )
            shutil.rmtree(root, ignore_errors=True)
            write_lake(table, root, granularity, sorted_partitions, seed=self.seed)
            self._lakes[key] = root
            self._lake_rows = table.num_rows
        return self._lakes[key], self._lake_rows

    async def topic(self, backlog_us: int) -> tuple[str, int]:
        """The topic holding ``backlog_us`` of stream after the lake, and its row count."""
        if backlog_us not in self._topics:
            table = self._slice(self.lake_end_us, self.lake_end_us + backlog_us)
            name = f"skew-{backlog_us // 60_000_000}m"
            bootstrap = self.bootstrap_servers()
            await create_topic(bootstrap, name, self.partitions)
            await produce(bootstrap, name, table)
            self._topics[backlog_us] = (name, table.num_rows)
        return self._topics[backlog_us]

    async def prepare(self, backlogs: Sequence[str], layouts: Sequence[tuple[str, bool]]) -> None:
        """Build every lake and topic a sweep needs now, then drop the generated events (so
        the runs that follow start without them in memory)."""
        spans = [parse_duration(b, name="backlog") for b in backlogs]
        self.events(max(spans, default=0))
        for granularity, sorted_partitions in layouts:
            self.lake(granularity, sorted_partitions)
        for span in spans:
            await self.topic(span)
        self.release_events()

    def release_events(self) -> None:
        """Forget the generated events (regenerated if a new lake or topic needs them)."""
        self._events = None
        self._hours = 0
        gc.collect()

    def close(self) -> None:
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
            self.bootstrap = None
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def run_config_async(
    env: StudyEnv,
    backlog: str,
    aligned: bool,
    max_drift: str = "30m",
    granularity: str = "hour",
    sorted_partitions: bool = True,
    size: str = "1h",
    slide: str = "5m",
    interval: float = 0.05,
    max_batch_records: int = 2_000,
    aggregates: str = DEFAULT_AGGREGATES,
) -> dict[str, Any]:
    """Run one configuration in ``env`` and return its figures (plain data, one row).

    ``aggregates``: ``"name=kind(column),…"`` as in a job file (``count()``, ``sum(amount)``,
    ``count_distinct(page)``, …)."""
    import lambdasource as ls
    from lake.generator import CLICKSTREAM_SCHEMA

    backlog_us = parse_duration(backlog, name="backlog")
    root, lake_rows = env.lake(granularity, sorted_partitions)
    topic, stream_rows = await env.topic(backlog_us)
    bootstrap = env.bootstrap_servers()
    lake = ls.ParquetLake(
        str(root), time_column="event_time", partitioning=granularity, event_time_partitioned=True
    )
    stream = ls.KafkaStream(
        topic,
        bootstrap_servers=bootstrap,
        time_column="event_time",
        format="json",
        schema=CLICKSTREAM_SCHEMA,
        stop_at="latest",
        out_of_orderness=env.jitter,
        idle_timeout="2s",
        max_batch_records=max_batch_records,
    )
    source = ls.LambdaSource(
        lake,
        stream,
        cutoff=datetime.fromtimestamp(env.lake_end_us / 1e6, UTC),
        handoff="timestamp",
        out_of_orderness=env.jitter,
        idle_timeout="2s",
        alignment=ls.Alignment(max_drift=max_drift) if aligned else None,
    )
    sink = CountingSink()
    pipeline = ls.Pipeline()
    sampler = Sampler(pipeline, interval)
    # the yardstick of the lead, aligned or not: max_drift + out_of_orderness (DESIGN §3)
    bound_us = parse_duration(max_drift, name="max_drift") + parse_duration(env.jitter)
    probe = Probe(sampler, bound_us, cutoff_us=env.lake_end_us)
    (
        pipeline.source(source)
        .process(probe, name="probe")
        .key_by("user_id")
        .window(ls.Sliding(size, slide), emit="latest")
        .aggregate(**parse_aggregates(aggregates))
        .sink(sink)
    )
    gc.collect()
    pa.default_memory_pool().release_unused()
    with measure_phase() as memory, RssWatcher(interval) as watcher:
        sampler.reset_clock()
        started = time.perf_counter()
        sampling = asyncio.create_task(sampler.run())
        try:
            await pipeline.run()
        finally:
            sampling.cancel()
            try:
                await sampling
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
        elapsed = time.perf_counter() - started
        sampler.take()
    metrics = pipeline.metrics()
    lam = metrics["sources"][source.name]
    rows = lam["rows"]
    total = int(rows["lake"]) + int(rows["stream"])
    if total != lake_rows + stream_rows or probe.rows != total:
        raise RuntimeError(
            f"skew config backlog={backlog} aligned={aligned}: read {total:,} rows (probe saw "
            f"{probe.rows:,}), expected {lake_rows:,} lake + {stream_rows:,} stream"
        )
    splits = lam["alignment"]["splits"]
    start_mb = memory.start_mb or 0.0
    phases = lam.get("phases") or {}
    lead = probe.max_lead()
    return {
        "backlog": backlog,
        "backlog_h": backlog_us / HOUR_US,
        "aligned": aligned,
        "max_drift": max_drift if aligned else None,
        "granularity": granularity,
        "sorted": sorted_partitions,
        "window": f"Sliding({size}, {slide})",
        "aggregates": aggregates,
        "lake_rows": lake_rows,
        "stream_rows": stream_rows,
        "seconds": elapsed,
        "events_per_s": total / elapsed if elapsed > 0 else None,
        "peak_state_rows": sampler.peak("state_rows"),
        "peak_state_bytes": sampler.peak("state_bytes"),
        "peak_queue_rows": sampler.peak("queue_rows"),
        "peak_rss_mb": memory.peak_mb,
        "rss_growth_mb": (memory.peak_mb or 0.0) - start_mb,
        "peak_sampled_rss_mb": sampler.peak("rss_bytes") / 2**20,
        "peak_watched_rss_mb": watcher.peak() / 2**20,
        "start_rss_mb": memory.start_mb,
        "rss_exact": memory.exact,
        "late": int(metrics.get("late", 0) or 0),
        "max_skew_h": int(lam["alignment"].get("max_skew_us", 0) or 0) / HOUR_US,
        # measured at the operator after the source (the Probe), against the watermark it got
        "bound_h": bound_us / HOUR_US,
        "max_lead_h": None if lead is None else lead / HOUR_US,
        "max_lead_lake_h": _hours(probe.max_lead_us["lake"]),
        "max_lead_stream_h": _hours(probe.max_lead_us["stream"]),
        "lead_vs_bound": None if lead is None else lead / bound_us,
        "rows_beyond_bound": sum(probe.rows_beyond_bound.values()),
        "rows_beyond_bound_lake": probe.rows_beyond_bound["lake"],
        "rows_beyond_bound_stream": probe.rows_beyond_bound["stream"],
        "probe_rows": probe.rows,
        "watermarks_at_probe": probe.watermarks,
        # the source's own counter (against its global watermark), for comparison only
        "source_max_lead_h": max(int(v or 0) for v in lam["max_lead_us"].values()) / HOUR_US,
        "held_s": sum(float(s.get("held_s", 0.0) or 0.0) for s in splits.values()),
        "lake_s": phases.get("lake_s"),
        "stream_after_lake_s": phases.get("stream_after_lake_s"),
        "rows_out": sink.rows,
        "samples": len(sampler.samples),
        "series": [asdict(s) for s in sampler.samples],
        "lead_series": probe.lead_series(),
        "rss_series": [(t, rss / 2**20) for t, rss in watcher.series],
    }


def _hours(micros: int | None) -> float | None:
    return None if micros is None else micros / HOUR_US


def run_config(
    backlog: str,
    aligned: bool,
    max_drift: str = "30m",
    granularity: str = "hour",
    sorted_partitions: bool = True,
    events: int = 40_000,
    *,
    env: StudyEnv | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One configuration, synchronously; ``events`` is events per hour of event time (lake and
    stream alike). Builds (and closes) its own :class:`StudyEnv` unless ``env`` is given."""
    own = env is None
    study = env if env is not None else StudyEnv(events_per_hour=events)
    try:
        return asyncio.run(
            run_config_async(
                study, backlog, aligned, max_drift, granularity, sorted_partitions, **options
            )
        )
    finally:
        if own:
            study.close()


def add_ratios(rows: Sequence[dict[str, Any]]) -> None:
    """Add, to each row, ratios against the unaligned run of the same backlog / layout.

    ``state_vs_unaligned`` = peak state bytes / the unaligned one's, ``rss_growth_vs_unaligned``
    the same for RSS growth, ``throughput_vs_unaligned`` = events/s / the unaligned one's.
    """
    base: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        if not row["aligned"]:
            base[_pair_key(row)] = row
    for row in rows:
        ref = base.get(_pair_key(row))
        if ref is None:
            continue
        row["state_vs_unaligned"] = _ratio(row["peak_state_bytes"], ref["peak_state_bytes"])
        row["rss_growth_vs_unaligned"] = _ratio(row["rss_growth_mb"], ref["rss_growth_mb"])
        row["throughput_vs_unaligned"] = _ratio(row["events_per_s"], ref["events_per_s"])


def _pair_key(row: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("backlog", "granularity", "sorted", "window", "aggregates")
    return tuple(row.get(k) for k in keys)


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return float(a) / float(b)


# --- the benchmark (python -m benchmarks skew) -----------------------------------------------------

COLUMNS = [
    ("backlog", "backlog"),
    ("granularity", "partitions"),
    ("sorted", "sorted"),
    ("max_drift", "alignment"),
    ("stream_rows", "stream rows"),
    ("peak_state_rows", "peak state rows"),
    ("peak_state_bytes", "peak state bytes"),
    ("state_vs_unaligned", "state ÷ unaligned"),
    ("rss_growth_mb", "RSS growth MiB"),
    ("rss_growth_vs_unaligned", "RSS ÷ unaligned"),
    ("events_per_s", "events/s"),
    ("throughput_vs_unaligned", "throughput ÷ unaligned"),
    ("lake_s", "lake phase s"),
    ("stream_after_lake_s", "stream after lake s"),
    ("max_lead_h", "max lead at next operator h"),
    ("bound_h", "drift + ooo h"),
    ("rows_beyond_bound", "rows beyond bound"),
    ("late", "late"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backlogs",
        default="3h,12h,24h",
        help="stream backlogs beyond the lake's end, comma-separated (3h,12h,24h)",
    )
    parser.add_argument("--max-drift", default="30m", help="alignment drift (30m)")
    parser.add_argument("--lake-span", default="4d", help="lake history, whole days (4d)")
    parser.add_argument(
        "--events-per-hour", type=int, default=40_000, help="event rate, lake and stream (40000)"
    )
    parser.add_argument("--users", type=int, default=30_000)
    parser.add_argument("--partitions", type=int, default=4, help="Kafka partitions (4)")
    parser.add_argument("--window", default="1h", help="sliding window size (1h)")
    parser.add_argument("--slide", default="5m", help="sliding window slide (5m)")
    parser.add_argument(
        "--layouts",
        default="hour:sorted",
        help="lake layouts to sweep, granularity:sorted|unsorted, comma-separated (hour:sorted)",
    )
    parser.add_argument(
        "--aggregates",
        default=DEFAULT_AGGREGATES,
        help=f"window aggregates, job-file syntax ({DEFAULT_AGGREGATES})",
    )
    parser.add_argument("--seed", type=int, default=0)


def parse_layouts(text: str) -> list[tuple[str, bool]]:
    """``"hour:sorted,day:unsorted"`` → ``[("hour", True), ("day", False)]``."""
    layouts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        granularity, _, order = item.partition(":")
        if granularity not in GRANULARITIES or order not in ("sorted", "unsorted", ""):
            raise ValueError(f"layout {item!r}: use hour|day:sorted|unsorted")
        layouts.append((granularity, order != "unsorted"))
    return layouts


def run(args: argparse.Namespace) -> Report:
    backlogs = [b.strip() for b in args.backlogs.split(",") if b.strip()]
    layouts = parse_layouts(args.layouts)
    report = Report(
        "skew",
        {
            "backlogs": backlogs,
            "max_drift": args.max_drift,
            "lake_span": args.lake_span,
            "events_per_hour": args.events_per_hour,
            "users": args.users,
            "kafka_partitions": args.partitions,
            "window": f"Sliding({args.window}, {args.slide})",
            "aggregates": args.aggregates,
            "layouts": args.layouts,
            "job": "LambdaSource(ParquetLake, KafkaStream json, handoff=timestamp) → probe → "
            "key_by(user_id) → Sliding emit=latest → counting sink",
        },
    )
    env = StudyEnv(
        lake_span=args.lake_span,
        events_per_hour=args.events_per_hour,
        users=args.users,
        partitions=args.partitions,
        seed=args.seed,
    )

    async def sweep() -> None:
        await env.prepare(backlogs, layouts)
        # warm-up (discarded): the first run in a process pays allocator and import growth
        await run_config_async(
            env, backlogs[0], False, args.max_drift, *layouts[0], aggregates=args.aggregates
        )
        for granularity, sorted_partitions in layouts:
            for backlog in backlogs:
                for aligned in (False, True):  # unaligned first: the baseline of the pair
                    row = await run_config_async(
                        env,
                        backlog,
                        aligned,
                        args.max_drift,
                        granularity,
                        sorted_partitions,
                        size=args.window,
                        slide=args.slide,
                        aggregates=args.aggregates,
                    )
                    row.pop("series")
                    row.pop("lead_series")
                    row.pop("rss_series")
                    report.rows.append(row)

    try:
        asyncio.run(sweep())
    finally:
        env.close()
    add_ratios(report.rows)
    report.notes.append(
        "one discarded warm-up run precedes the sweep; "
        "ratios are against the unaligned run of the same backlog and layout in this run: "
        "state ÷ unaligned = peak buffered state bytes (window state + queues), RSS ÷ unaligned = "
        "peak RSS growth over the run's start, throughput ÷ unaligned = events/s; "
        "max lead = max over batches of (newest event time − last watermark received) at the "
        "operator right after the source (batches before the first watermark measured against "
        "it); rows beyond bound = rows later than that watermark + max_drift + out_of_orderness "
        "(unaligned runs measured against the same yardstick)"
    )
    return report


def summary(report: Report) -> str:
    return markdown_table(report.rows, COLUMNS) + "\n" + "\n".join(report.notes)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.skew", description=__doc__)
    add_arguments(parser)
    report = run(parser.parse_args())
    path = report.save()
    print(summary(report))
    print(f"saved {path}  ({fmt(len(report.rows))} configurations)")


if __name__ == "__main__":
    main()
