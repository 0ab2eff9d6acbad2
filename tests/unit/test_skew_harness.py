"""The skew/memory study's harness pieces that need no broker: data, lakes, sampler, probe,
ratios.

The sampler and the probe run over a real pipeline (``MemorySource`` → probe → sliding window →
counting sink); the probe's lead is also checked call by call against hand-computed values; lakes
written by the harness are read back with the real ``ParquetLake`` and compared with the input
table (multiset of ``event_id``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import lambdasource as ls
from benchmarks.skew import (
    DEFAULT_START,
    HOUR_US,
    CountingSink,
    Probe,
    RssWatcher,
    Sampler,
    add_ratios,
    current_rss_bytes,
    generate_span,
    parse_aggregates,
    parse_layouts,
    read_sample,
    write_lake,
)
from lambdasource.sources.lake.parquet import ParquetLake
from lambdasource.timeutil import to_micros

T0 = to_micros(DEFAULT_START)


def _times(table: pa.Table) -> list[int]:
    return pc.cast(table.column("event_time"), pa.int64()).to_pylist()


def test_generate_span_is_prefix_stable_and_inside_the_span() -> None:
    short = generate_span(30, 500, 50, seed=3, start=DEFAULT_START, jitter="30s")
    long = generate_span(50, 500, 50, seed=3, start=DEFAULT_START, jitter="30s")
    assert all(T0 <= t < T0 + 30 * HOUR_US for t in _times(short))
    assert all(T0 <= t < T0 + 50 * HOUR_US for t in _times(long))
    cut = long.filter(pc.less(pc.cast(long.column("event_time"), pa.int64()), T0 + 30 * HOUR_US))
    assert cut.equals(short)


class _Collect:
    """Drives a source without the runtime, keeping rows and watermarks."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.watermarks: list[int] = []

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        self.batches.append(batch)

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        self.watermarks.append(time)

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        raise AssertionError(f"dead letter: {reason} at {position}")

    async def barrier_point(self) -> None:
        return None


@pytest.mark.parametrize("granularity", ["hour", "day"])
async def test_written_lakes_hold_every_row_and_unsorted_ones_have_coarse_watermarks(
    granularity: str, tmp_path: Path
) -> None:
    table = generate_span(48, 2_000, 100, seed=1, start=DEFAULT_START, jitter="30s")
    watermarks: dict[bool, list[int]] = {}
    for sorted_partitions in (True, False):
        root = tmp_path / f"{granularity}-{sorted_partitions}"
        count = write_lake(table, root, granularity, sorted_partitions, row_group_rows=1_000)
        assert count == (48 if granularity == "hour" else 2)
        out = _Collect()
        await ParquetLake(str(root), "event_time", partitioning=granularity).run(out)
        read = pa.Table.from_batches(out.batches)
        assert Counter(read.column("event_id").to_pylist()) == Counter(
            table.column("event_id").to_pylist()
        )
        # never a record at or below a watermark emitted before it (checked in emit order)
        assert out.watermarks == sorted(out.watermarks)
        watermarks[sorted_partitions] = out.watermarks
        files = sorted(root.rglob("*.parquet"))
        times = _times(pq.read_table(files[0]))
        assert (times == sorted(times)) is sorted_partitions
    # Sorted partitions carry row-group watermarks through a partition; in unsorted ones every
    # row group spans the partition, so the watermark only passes the partition's first minutes
    # (the exact minimum of the rows still to come) before the partition ends.
    width = HOUR_US if granularity == "hour" else 24 * HOUR_US

    def depth(w: int) -> float:
        return ((w + 1 - T0) % width) / width

    assert max(depth(w) for w in watermarks[True]) > 0.5
    assert max(depth(w) for w in watermarks[False]) < 0.05


async def test_sampler_over_a_running_pipeline() -> None:
    table = generate_span(6, 20_000, 200, seed=2, start=DEFAULT_START, jitter="30s")
    pipeline = ls.Pipeline()
    sink = CountingSink()
    (
        pipeline.source(
            ls.MemorySource(
                table, time_column="event_time", batch_size=2_000, out_of_orderness="1m"
            )
        )
        .key_by("user_id")
        .window(ls.Sliding("1h", "5m"), emit="latest")
        .aggregate(clicks=ls.count())
        .sink(sink)
    )
    sampler = Sampler(pipeline, interval=0.001)
    import asyncio

    task = asyncio.create_task(sampler.run())
    await pipeline.run()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    last = sampler.take()
    assert last.records == table.num_rows
    assert last.late == 0
    assert sampler.peak("state_rows") > 0 and sampler.peak("state_bytes") > 0
    assert sampler.peak("rss_bytes") > 0
    assert [s.t for s in sampler.samples] == sorted(s.t for s in sampler.samples)
    assert sink.rows > 0 and sink.metrics() == {"rows_written": sink.rows}


def test_read_sample_reads_lambda_metrics() -> None:
    metrics = {
        "global_watermark": 5,
        "late": 2,
        "buffered": {"state_rows": 10, "state_bytes": 100, "queue_rows": 3, "queue_bytes": 30},
        "sources": {
            "lambda": {
                "rows": {"lake": 7, "stream": 4},
                "alignment": {
                    "splits": {
                        "lake": {"watermark": 5, "held": False},
                        "stream:partition=0": {"watermark": 9, "held": True},
                    }
                },
            }
        },
    }
    s = read_sample(metrics, 1.5, 4096)
    assert (s.records, s.late, s.state_rows, s.queue_bytes) == (11, 2, 10, 30)
    assert s.watermarks == {"lake": 5, "stream:partition=0": 9}
    assert s.held == {"lake": False, "stream:partition=0": True}
    plain = read_sample({"sources": {"m": {"records_out": 3}}}, 0.0, None)
    assert plain.records == 3 and plain.watermarks == {} and plain.global_watermark is None


def test_ratios_against_the_unaligned_run_of_the_same_backlog_and_layout() -> None:
    def row(backlog: str, aligned: bool, state: int, rss: float, eps: float) -> dict[str, object]:
        return {
            "backlog": backlog,
            "aligned": aligned,
            "granularity": "hour",
            "sorted": True,
            "window": "Sliding(1h, 5m)",
            "peak_state_bytes": state,
            "rss_growth_mb": rss,
            "events_per_s": eps,
        }

    rows = [row("3h", False, 400, 40.0, 100.0), row("3h", True, 100, 10.0, 90.0)]
    rows.append(row("6h", True, 50, 5.0, 10.0))  # no unaligned baseline: no ratios
    add_ratios(rows)
    assert rows[1]["state_vs_unaligned"] == 0.25
    assert rows[1]["rss_growth_vs_unaligned"] == 0.25
    assert rows[1]["throughput_vs_unaligned"] == 0.9
    assert rows[0]["state_vs_unaligned"] == 1.0
    assert "state_vs_unaligned" not in rows[2]


def test_parse_layouts() -> None:
    assert parse_layouts("hour:sorted, day:unsorted,day") == [
        ("hour", True),
        ("day", False),
        ("day", True),
    ]
    with pytest.raises(ValueError, match="week"):
        parse_layouts("week:sorted")


def test_current_rss_is_positive_here() -> None:
    rss = current_rss_bytes()
    assert rss is not None and rss > 1 << 20


def test_write_lake_rejects_unknown_granularity(tmp_path: Path) -> None:
    table = generate_span(1, 100, 10, seed=0, start=DEFAULT_START, jitter="30s")
    with pytest.raises(ValueError, match="granularity"):
        write_lake(table, tmp_path, "week", True)


class _NoPipeline:
    def metrics(self) -> dict[str, object]:
        return {}


class _Ctx:
    """What the probe uses of an operator context: it passes everything through."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.watermarks: list[int] = []

    def emit(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def emit_watermark(self, watermark: int) -> None:
        self.watermarks.append(watermark)


def _batch(*minutes: int) -> pa.RecordBatch:
    times = pa.array([T0 + m * 60_000_000 for m in minutes], pa.int64()).cast(
        pa.timestamp("us", tz="UTC")
    )
    return pa.RecordBatch.from_arrays([times], names=["event_time"])


def test_probe_measures_the_lead_over_the_last_watermark_it_received() -> None:
    minute = 60_000_000
    # bound 30 min; rows before minute 100 are the lake's, later ones the stream's
    probe = Probe(Sampler(_NoPipeline()), bound_us=30 * minute, cutoff_us=T0 + 100 * minute)
    ctx = _Ctx()
    probe.on_batch(_batch(5, 50), ctx)  # before any watermark: measured against the first
    probe.on_batch(_batch(120), ctx)
    assert probe.max_lead() is None and probe.rows == 3
    probe.on_watermark(T0 + 10 * minute, ctx)
    assert probe.max_lead_us == {"lake": 40 * minute, "stream": 110 * minute}
    assert probe.rows_beyond_bound == {"lake": 1, "stream": 1}
    probe.on_watermark(T0 + 5 * minute, ctx)  # never regresses
    assert probe.watermark == T0 + 10 * minute
    probe.on_watermark(T0 + 90 * minute, ctx)
    probe.on_batch(_batch(95, 119, 121), ctx)  # leads 5, 29, 31 min: one beyond 30
    assert probe.max_lead_us == {"lake": 40 * minute, "stream": 110 * minute}
    assert probe.rows_beyond_bound == {"lake": 1, "stream": 2}
    assert probe.max_lead() == 110 * minute
    # everything passed through, in order
    assert [b.num_rows for b in ctx.batches] == [2, 1, 3]
    assert ctx.watermarks == [T0 + 10 * minute, T0 + 5 * minute, T0 + 90 * minute]
    # per batch: the newest row's lead (3 batches), in hours
    leads = [lead for _, lead in probe.lead_series()]
    assert leads == pytest.approx([40 / 60, 110 / 60, 31 / 60])
    assert [lead for _, lead in probe.lead_series(points=2)] == pytest.approx([110 / 60, 31 / 60])


async def test_probe_in_a_running_pipeline_sees_every_row_within_the_sources_own_lead() -> None:
    table = generate_span(6, 20_000, 200, seed=4, start=DEFAULT_START, jitter="30s")
    pipeline = ls.Pipeline()
    sampler = Sampler(pipeline, interval=0.001)
    probe = Probe(sampler, bound_us=HOUR_US)
    (
        pipeline.source(
            ls.MemorySource(
                table, time_column="event_time", batch_size=2_000, out_of_orderness="1m"
            )
        )
        .process(probe, name="probe")
        .key_by("user_id")
        .window(ls.Sliding("1h", "5m"), emit="latest")
        .aggregate(clicks=ls.count())
        .sink(CountingSink())
    )
    await pipeline.run()
    assert probe.rows == table.num_rows
    assert probe.watermarks > 1 and probe.first_watermark is not None
    # the memory source emits max-seen − 1m after each 2,000-row batch, and rows come in
    # arrival order (at most 30 s out of order): a batch leads its watermark by under an hour
    lead = probe.max_lead()
    assert lead is not None and 0 < lead < HOUR_US
    assert probe.rows_beyond_bound == {"lake": 0, "stream": 0}
    assert len(sampler.samples) > 0  # the probe took readings as watermarks passed


def test_rss_watcher_reads_from_its_own_thread() -> None:
    import time

    with RssWatcher(interval=0.001) as watcher:
        time.sleep(0.05)  # the caller is busy; the thread still reads
    assert len(watcher.series) >= 3
    assert watcher.peak() > 1 << 20
    assert [t for t, _ in watcher.series] == sorted(t for t, _ in watcher.series)
    with pytest.raises(ValueError, match="interval"):
        RssWatcher(interval=0)


def test_parse_aggregates_uses_the_job_file_syntax() -> None:
    parsed = parse_aggregates("clicks=count(), revenue=sum(amount),pages=count_distinct(page)")
    assert list(parsed) == ["clicks", "revenue", "pages"]
    with pytest.raises(ValueError, match="name=kind"):
        parse_aggregates("count()")
    with pytest.raises(ValueError, match="no aggregates"):
        parse_aggregates(" , ")
