"""The Prometheus endpoint (issue 15 §5) scraped over HTTP while real pipelines run and after.

Oracles: every scraped figure is checked against ``pipeline.metrics()`` (bracketed by readings
taken on the loop just before and after the scrape while the job runs, equal after it ended) and,
where the figure is about the input, against DuckDB SQL over the same lake (records in, hour
partitions, per (user, hour) window counts) or the broker's offsets (Kafka lag and positions).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

import lambdasource as ls
from lake.generator import generate_clickstream
from lambdasource.errors import ConfigError
from lambdasource.metrics_endpoint import METRICS, MetricsEndpoint
from lambdasource.timeutil import HOUR, MS
from tests.services.brokers import Broker, both_brokers

broker = both_brokers(default=("apache",))

SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("event_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("kind", pa.string()),
    ]
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- helpers ----------------------------------------------------------------------------------


def clicks(events: int, seed: int) -> pa.Table:
    table = generate_clickstream(events, 1, 40, seed=seed, jitter="2m")
    return table.select(SCHEMA.names).cast(SCHEMA)


def write_lake(root: Path, table: pa.Table) -> None:
    """Hour partitions ``dt=…/hour=…/part-000.parquet``, each sorted by event time."""
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    hours = (times // HOUR) * HOUR
    for hour in np.unique(hours):
        part = table.filter(pa.array(hours == hour)).sort_by("event_time")
        stamp = pa.scalar(int(hour), pa.timestamp("us", tz="UTC")).as_py()
        path = root / f"dt={stamp:%Y-%m-%d}/hour={stamp:%H}/part-000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, path, row_group_size=500)


def sql(query: str) -> Any:
    with duckdb.connect() as con:
        return con.execute(query).fetchall()


def scrape(url: str) -> Samples:
    """GET ``url`` and parse it with prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=15) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith(("lambdasource_", "process_")), family.name
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels`` (None: absent)."""
    found = [
        v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have)
    ]
    assert len(found) <= 1, f"{name} {labels}: {len(found)} series"
    return found[0] if found else None


def seconds(micros: int | None) -> float | None:
    return None if micros is None else micros / 1_000_000


class SlowSink(ls.CollectSink):
    """Collects, taking a while per batch: a job that runs long enough to be scraped."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def write(self, batch: pa.RecordBatch) -> None:
        await asyncio.sleep(self.delay)
        await super().write(batch)


# --- a lake job scraped while it runs and after -----------------------------------------------


def lake_job(root: Path, checkpoints: Path, *, delay: float) -> tuple[ls.Pipeline, ls.CollectSink]:
    p = ls.Pipeline(
        ls.Checkpoints(str(checkpoints), interval="100ms", keep=100), name="clicks", flush="all"
    )
    events = p.source(ls.ParquetLake(root, "event_time", schema=SCHEMA, batch_size=1000))
    events.sink(SlowSink(delay), name="raw")
    windows = ls.CollectSink()
    (
        events.key_by("user_id")
        .window(ls.Tumbling("1h"), emit="every", name="hourly")
        .aggregate(events=ls.count())
        .sink(windows, name="hourly_out")
    )
    return p, windows


async def test_lake_job_scraped_while_running_and_after(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_lake(root, clicks(24_000, seed=5))
    lake_glob = f"{root}/**/*.parquet"
    (total,) = sql(f"SELECT count(*) FROM read_parquet('{lake_glob}')")[0]
    (hours,) = sql(
        f"SELECT count(DISTINCT date_trunc('hour', event_time)) FROM read_parquet('{lake_glob}')"
    )[0]
    pipeline, windows = lake_job(root, tmp_path / "ckpt", delay=0.02)
    labels = {"worker": "w1", "task": "lake"}
    endpoint = MetricsEndpoint(0)
    endpoint.register(pipeline, labels)  # on this loop: scrapes read metrics() here
    seen_mid_run = []
    with endpoint:
        url = endpoint.url
        task = asyncio.create_task(pipeline.run())
        while not task.done():
            before = pipeline.metrics()
            samples = await asyncio.to_thread(scrape, url)
            after = pipeline.metrics()
            if before.get("status") != "running" or after.get("status") != "running":
                continue
            scraped = value(samples, "lambdasource_source_records_total", source="lake", **labels)
            low = before["sources"]["lake"]["records_out"]
            high = after["sources"]["lake"]["records_out"]
            assert scraped is not None and low <= scraped <= high
            if 0 < scraped < total:
                seen_mid_run.append(scraped)
            # the watermark never regresses: bracketed too
            mark = value(samples, "lambdasource_watermark_seconds", **labels)
            if before["global_watermark"] is not None:
                assert mark is not None and seconds(before["global_watermark"]) <= mark
            if mark is not None:
                assert after["global_watermark"] is not None
                assert mark <= seconds(after["global_watermark"])
            await asyncio.sleep(0.05)
        await task
        assert seen_mid_run, "no scrape landed while the lake was being read"
        final = pipeline.metrics()
        samples = await asyncio.to_thread(scrape, url)
        check_final(samples, final, labels, total=total, hours=hours, ckpt=tmp_path / "ckpt")
    # every record reached the window: per (user, hour) counts equal the SQL reference
    emitted = windows.table().to_pylist()  # emit="every": each window once, when it closes
    got = Counter((row["user_id"], row["window_start"], row["events"]) for row in emitted)
    want = Counter(
        (user, start, n)
        for user, start, n in sql(
            f"SELECT user_id, date_trunc('hour', event_time), count(*) "
            f"FROM read_parquet('{lake_glob}') GROUP BY ALL"
        )
    )
    assert got == want
    assert value(samples, "lambdasource_sink_records_in_total", sink="hourly_out") == len(
        windows.table()
    )


def check_final(
    samples: Samples,
    metrics: dict[str, Any],
    labels: dict[str, str],
    *,
    total: int,
    hours: int,
    ckpt: Path,
) -> None:
    """After the run: the scrape equals metrics(), and the input's figures equal SQL's."""
    base = {**labels, "pipeline": "clicks"}
    assert value(samples, "lambdasource_pipeline_status", status="finished", **base) == 1
    lake = metrics["sources"]["lake"]
    assert lake["records_out"] == total  # metrics() itself counts every lake row
    assert value(samples, "lambdasource_source_records_total", source="lake", **base) == total
    assert value(samples, "lambdasource_split_records_total", split="lake", **base) == total
    assert value(samples, "lambdasource_lake_partitions_planned", **base) == hours
    assert value(samples, "lambdasource_lake_partitions_remaining", **base) == 0
    assert value(samples, "lambdasource_lake_read_bytes_total", **base) == lake["bytes_read"] > 0
    assert value(samples, "lambdasource_split_watermark_seconds", split="lake", **base) == seconds(
        lake["watermark"]
    )
    assert value(samples, "lambdasource_watermark_seconds", **base) == seconds(
        metrics["global_watermark"]
    )
    window = metrics["operators"]["hourly"]
    assert window["records_in"] == total
    for figure, name in [
        ("records_in", "lambdasource_operator_records_in_total"),
        ("records_out", "lambdasource_operator_records_out_total"),
        ("late", "lambdasource_operator_late_records_total"),
        ("state_rows", "lambdasource_operator_state_rows"),
        ("state_bytes", "lambdasource_operator_state_bytes"),
        ("timers", "lambdasource_operator_timers"),
    ]:
        assert value(samples, name, operator="hourly", **base) == window[figure], name
    assert value(samples, "lambdasource_sink_records_in_total", sink="raw", **base) == total
    checkpoints = metrics["checkpoints"]
    assert checkpoints["count"] >= 2  # the job ran several intervals
    assert (
        value(samples, "lambdasource_checkpoints_completed_total", **base) == checkpoints["count"]
    )
    assert (
        value(samples, "lambdasource_checkpoint_duration_seconds_count", **base)
        == (checkpoints["count"])
    )
    duration_sum = value(samples, "lambdasource_checkpoint_duration_seconds_sum", **base)
    assert duration_sum == pytest.approx(checkpoints["mean_duration_s"] * checkpoints["count"])
    last_duration = value(samples, "lambdasource_checkpoint_last_duration_seconds", **base)
    assert last_duration == checkpoints["last_duration_s"]
    # the newest checkpoint on disk is the one reported, with the size reported
    newest = max(
        int(d.name.removeprefix("chk-"))
        for d in ckpt.iterdir()
        if d.name.startswith("chk-") and (d / "MANIFEST.json").exists()
    )
    assert value(samples, "lambdasource_checkpoint_last_id", **base) == newest
    size = (ckpt / f"chk-{newest:012d}" / "state.bin").stat().st_size
    assert value(samples, "lambdasource_checkpoint_last_size_bytes", **base) == size
    for (name, _), _ in samples.items():
        family = re.sub(r"_(total|count|sum)$", "", name)
        assert name.startswith("process_") or name in METRICS or family in METRICS, (
            f"{name} is not in METRICS"
        )


# --- several pipelines, one endpoint; start and stop ------------------------------------------


async def test_registrations_label_series_and_stop_releases_port() -> None:
    table = clicks(3_000, seed=9)
    first, second = ls.Pipeline(name="a"), ls.Pipeline(name="b")
    for pipeline in (first, second):
        pipeline.source(ls.MemorySource(table, "event_time", batch_size=700)).sink(
            ls.CollectSink(), name="out"
        )
    endpoint = MetricsEndpoint(0)
    endpoint.register(first, {"worker": "w1", "task": "t0"})
    endpoint.register(second, {"worker": "w1", "task": "t1"})
    with pytest.raises(ConfigError, match="differ"):
        endpoint.register(ls.Pipeline(name="c"), {"worker": "w2"})
    with pytest.raises(ConfigError, match="not allowed"):
        endpoint.register(ls.Pipeline(name="d"), {"worker": "w2", "split": "x"})
    with pytest.raises(ConfigError, match="registered already"):
        endpoint.register(first, {"worker": "w3", "task": "t0"})
    await first.run()
    with endpoint:
        port = endpoint.port
        assert port > 0
        samples = await asyncio.to_thread(scrape, endpoint.url)
        for task, pipeline in (("t0", first), ("t1", second)):
            want = pipeline.metrics()
            got = value(
                samples, "lambdasource_source_records_total", task=task, pipeline=pipeline.name
            )
            assert got == (want["sources"]["memory"]["records_out"] if task == "t0" else None)
            status = want["status"]
            assert value(samples, "lambdasource_pipeline_status", task=task, status=status) == 1
        assert value(samples, "lambdasource_source_records_total", task="t0") == table.num_rows
        endpoint.unregister(first)
        samples = await asyncio.to_thread(scrape, endpoint.url)
        assert value(samples, "lambdasource_pipeline_status", task="t0", status="finished") is None
        assert value(samples, "lambdasource_pipeline_status", task="t1", status="created") == 1
    # stopped: nothing listens on the port, the serving thread is gone
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass
    assert not [t for t in threading.enumerate() if t.name.startswith("lambdasource-metrics")]


def test_a_port_in_use_is_a_config_error_naming_it() -> None:
    """Another server on the port: a ConfigError naming host and port, not a bare OSError."""
    with MetricsEndpoint(0) as first:
        busy = MetricsEndpoint(first.port)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{first.port}.*--metrics-port"):
            busy.start()
        assert busy.requested_port == first.port


class GatedSource(ls.Source):
    """Emits its rows, then waits for ``release``; notes the thread of every metrics() call."""

    name = "gated"
    time_column = "event_time"

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.release = asyncio.Event()
        self.emitted = asyncio.Event()
        self.read_on: list[int] = []

    async def run(self, out: ls.SourceOutput) -> None:
        for batch in self.table.to_batches(max_chunksize=500):
            await out.emit(batch)
        self.emitted.set()
        await self.release.wait()

    def metrics(self) -> dict[str, Any]:
        self.read_on.append(threading.get_ident())
        return {}


async def test_a_scrape_reads_metrics_on_the_pipeline_loop() -> None:
    """metrics() of a running pipeline is read on its loop's thread, not the server's: one
    consistent reading between two loop steps."""
    table = clicks(2_000, seed=3)
    source = GatedSource(table)
    pipeline = ls.Pipeline(name="gated")
    pipeline.source(source).sink(ls.CollectSink(), name="out")
    with MetricsEndpoint(0) as endpoint:
        endpoint.register(pipeline, {"worker": "w1"})
        task = asyncio.create_task(pipeline.run())
        await asyncio.wait_for(source.emitted.wait(), 10)
        source.read_on.clear()
        samples = await asyncio.to_thread(scrape, endpoint.url)
        assert source.read_on == [threading.get_ident()]
        assert value(samples, "lambdasource_source_records_total") == table.num_rows
        assert value(samples, "lambdasource_pipeline_status", status="running") == 1
        source.release.set()
        await task


# --- a lambda source over a real broker, through the CLI ----------------------------------------


def produce_split(broker: Broker, topic: str, rows: pa.Table, partitions: int) -> dict[int, int]:
    """Rows round-robin over ``partitions`` partitions; records produced per partition."""
    assign = np.arange(rows.num_rows) % partitions
    produced: dict[int, int] = {}
    for partition in range(partitions):
        part = rows.filter(pa.array(assign == partition))
        times = pc.cast(part.column("event_time"), pa.int64()).to_numpy()
        broker.produce(
            topic,
            [orjson.dumps(row) for row in part.to_pylist()],
            partition=partition,
            timestamps_ms=(np.maximum.accumulate(times) // MS).tolist(),
        )
        produced[partition] = part.num_rows
    return produced


async def test_held_split_and_lag_scraped_mid_stream(broker: Broker, tmp_path: Path) -> None:
    """Partition 1 is 3 h ahead of partition 0 (not idle: 60 s timeout), max_drift 30m:
    alignment holds partition 1's whole fetch. Scraped while so: partition 1 held (the only
    held split), its held records as metrics() says, none of its rows emitted — the records
    out are exactly the lake (DuckDB count) and partition 0; end offsets are what was produced,
    lag = end − next offset."""
    table = clicks(6_000, seed=13)
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    cutoff = int(np.quantile(times, 0.5)) // HOUR * HOUR
    root = tmp_path / "lake"
    write_lake(root, table.filter(pa.array(times < cutoff)))
    (lake_rows,) = sql(f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet')")[0]
    near = table.filter(pa.array((times >= cutoff) & (times < cutoff + 20 * 60 * 1_000_000)))
    ahead = table.filter(pa.array(times >= cutoff + 3 * HOUR)).slice(0, 300)
    topic = await asyncio.to_thread(broker.new_topic, 2)
    for partition, rows in ((0, near), (1, ahead)):
        stamps = (pc.cast(rows.column("event_time"), pa.int64()).to_numpy() // MS).tolist()
        values = [orjson.dumps(row) for row in rows.to_pylist()]
        await broker.aproduce(topic, values, partition=partition, timestamps_ms=stamps)
    source = ls.LambdaSource(
        ls.ParquetLake(root, "event_time", schema=SCHEMA),
        ls.KafkaStream(topic, broker.bootstrap, time_column="event_time", schema=SCHEMA),
        cutoff=cutoff,
        out_of_orderness="1m",
        idle_timeout="60s",
        alignment=ls.Alignment(max_drift="30m"),
    )
    pipeline = ls.Pipeline(name="held")
    sink = ls.CollectSink()
    pipeline.source(source).sink(sink, name="out")
    with MetricsEndpoint(0) as endpoint:
        endpoint.register(pipeline, {"worker": "w1", "task": topic})
        task = asyncio.create_task(pipeline.run())
        try:
            deadline = time.monotonic() + 30
            while True:
                samples = await asyncio.to_thread(scrape, endpoint.url)
                out = value(samples, "lambdasource_source_records_total")
                held = value(samples, "lambdasource_split_held", split="stream:partition=1")
                if (out == lake_rows + near.num_rows and held) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            metrics = pipeline.metrics()  # nothing moves while partition 1 is held
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert out == lake_rows + near.num_rows
    lake_ids = [i for (i,) in sql(f"SELECT event_id FROM read_parquet('{root}/**/*.parquet')")]
    want = Counter([*lake_ids, *near.column("event_id").to_pylist()])
    assert Counter(sink.table().column("event_id").to_pylist()) == want
    assert held == 1
    assert value(samples, "lambdasource_split_held", split="stream:partition=0") == 0
    assert value(samples, "lambdasource_split_held", split="lake") == 0
    assert value(samples, "lambdasource_source_held_splits") == 1
    assert value(samples, "lambdasource_split_holds_total", split="stream:partition=1") >= 1
    partitions = metrics["sources"]["lambda"]["stream"]["partitions"]
    held_rows = value(samples, "lambdasource_split_held_records", split="stream:partition=1")
    assert held_rows == partitions[1]["held_rows"] > 0
    for partition, rows in ((0, near), (1, ahead)):
        split = f"stream:partition={partition}"
        end = value(samples, "lambdasource_split_end_offset", split=split)
        next_offset = value(samples, "lambdasource_split_next_offset", split=split)
        assert end == rows.num_rows
        assert next_offset is not None
        assert value(samples, "lambdasource_split_lag_records", split=split) == end - next_offset
        assert value(samples, "lambdasource_split_watermark_seconds", split=split) == seconds(
            partitions[partition]["watermark"]
        )
    assert value(samples, "lambdasource_split_finished", split="lake") == 1


async def test_kafka_stream_source_splits_by_partition(broker: Broker) -> None:
    """A KafkaStream on its own (no lake, no alignment): one split per partition, named
    ``partition=N``, with the records, end offset and next offset the broker holds."""
    table = clicks(900, seed=17)
    topic = await asyncio.to_thread(broker.new_topic, 2)
    produced = {0: table.slice(0, 600), 1: table.slice(600)}
    for partition, rows in produced.items():
        values = [orjson.dumps(row) for row in rows.to_pylist()]
        await broker.aproduce(topic, values, partition=partition)
    stream = ls.KafkaStream(
        topic, broker.bootstrap, time_column="event_time", schema=SCHEMA, stop_at="latest"
    )
    pipeline = ls.Pipeline(name="stream")
    sink = ls.CollectSink()
    pipeline.source(stream, name="clicks").sink(sink, name="out")
    await pipeline.run()
    with MetricsEndpoint(0) as endpoint:
        endpoint.register(pipeline, {"worker": "w1"})
        samples = await asyncio.to_thread(scrape, endpoint.url)
    assert Counter(sink.table().column("event_id").to_pylist()) == Counter(
        table.column("event_id").to_pylist()
    )
    assert value(samples, "lambdasource_source_records_total", source="clicks") == 900
    for partition, rows in produced.items():
        split = f"partition={partition}"
        assert value(samples, "lambdasource_split_records_total", split=split) == rows.num_rows
        assert value(samples, "lambdasource_split_end_offset", split=split) == rows.num_rows
        assert value(samples, "lambdasource_split_next_offset", split=split) == rows.num_rows
        assert value(samples, "lambdasource_split_lag_records", split=split) == 0
    assert value(samples, "lambdasource_source_held_splits") is None  # no alignment here


@pytest.mark.slow
def test_cli_bootstrap_metrics_port_lambda_source(broker: Broker, tmp_path: Path) -> None:
    """``lambdasource bootstrap … --metrics-port 0``: the port is printed, the job scraped while
    it runs: records in reach lake + stream (SQL over the lake + the rows produced), every
    partition's lag is 0 at the end with its next offset at the records produced, splits carry
    watermarks and alignment's held flags; Ctrl-C stops it and the endpoint with it."""
    table = clicks(8_000, seed=21)
    times = pc.cast(table.column("event_time"), pa.int64()).to_numpy()
    cutoff = int(np.quantile(times, 0.6)) // HOUR * HOUR
    root = tmp_path / "lake"
    write_lake(root, table.filter(pa.array(times < cutoff)))
    stream_rows = table.filter(pa.array(times >= cutoff))
    topic = broker.new_topic(3)
    produced = produce_split(broker, topic, stream_rows, 3)
    (lake_rows,) = sql(f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet')")[0]
    total = lake_rows + stream_rows.num_rows
    cutoff_text = pa.scalar(cutoff, pa.timestamp("us", tz="UTC")).as_py().isoformat()
    command = [
        sys.executable, "-m", "lambdasource", "bootstrap",
        "--lake", str(root), "--time-column", "event_time",
        "--bootstrap-servers", broker.bootstrap, "--topic", topic,
        "--handoff", "timestamp", "--cutoff", cutoff_text, "--idle-timeout", "1s",
        "--key", "user_id", "--size", "1h", "--bootstrap-mode", "replay",
        "--into", f"duckdb:///{tmp_path / 'store.duckdb'}", "--table", "hourly",
        "--quiet", "--metrics-port", "0",
    ]  # fmt: skip
    job = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    try:
        assert job.stderr is not None
        found = None
        for line in job.stderr:  # the URL comes first, perhaps after warnings
            found = re.search(r"metrics: (http://\S+/metrics)", line)
            if found:
                break
        assert found, "the job did not print its metrics URL"
        url = found.group(1)
        said: list[str] = []  # the rest of stderr, drained so the job never blocks on it
        drain = threading.Thread(target=lambda: said.extend(job.stderr or ()), daemon=True)
        drain.start()
        deadline = time.monotonic() + 60
        while True:
            assert job.poll() is None, "".join(said)
            samples = scrape(url)
            records = value(samples, "lambdasource_source_records_total")
            if records == total or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert records == total
        assert value(samples, "lambdasource_handoff_records_total", part="lake") == lake_rows
        assert value(samples, "lambdasource_handoff_records_total", part="stream") == (
            stream_rows.num_rows
        )
        for partition, count in produced.items():
            split = f"stream:partition={partition}"
            assert value(samples, "lambdasource_split_next_offset", split=split) == count
            assert value(samples, "lambdasource_split_end_offset", split=split) == count
            assert value(samples, "lambdasource_split_lag_records", split=split) == 0
            assert value(samples, "lambdasource_split_records_total", split=split) == count
            assert value(samples, "lambdasource_split_watermark_seconds", split=split) is not None
            assert value(samples, "lambdasource_split_held", split=split) in (0, 1)
        held = sum(v for (n, _), v in samples.items() if n == "lambdasource_split_held")
        assert value(samples, "lambdasource_source_held_splits") == held
        assert value(samples, "lambdasource_pipeline_status", status="running") == 1
        assert value(samples, "lambdasource_split_finished", split="lake") == 1
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=30) == 130
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(url, timeout=2)
