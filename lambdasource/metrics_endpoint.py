"""A Prometheus text endpoint over live ``pipeline.metrics()`` (issue 15 §5).

``MetricsEndpoint(port)`` serves ``/metrics`` (Prometheus text format, ``prometheus-client``)
for every pipeline registered with it, each under its own labels (``worker``, ``task``, …, plus
``pipeline``: the pipeline's name)::

    endpoint = MetricsEndpoint(9108)
    endpoint.register(pipeline, labels={"worker": "host-a", "task": "clicks-3"})
    with endpoint:  # start() … stop()
        await pipeline.run()

Invariants:

- No counter of its own: every sample is built at scrape time from the ``pipeline.metrics()``
  dict of that moment (a custom collector), so the endpoint and ``metrics()`` cannot drift.
- ``pipeline.metrics()`` is read on the event loop that runs the pipeline (the loop running when
  ``register`` was called, or ``loop=``), between two of its steps, so a scrape from the server's
  thread sees one consistent reading; a loop that does not answer within ``read_timeout`` (or a
  pipeline registered outside any loop) is read from the server's thread, retried if a dict
  changed size under it; a reading that still fails is skipped and counted in
  ``lambdasource_metrics_read_errors_total``.
- Monotone counts are counters (``_total``); rates, events/s included, are left to Prometheus
  (``rate(lambdasource_source_records_total[1m])``), which computes them over its own interval
  from every worker alike. Everything else is a gauge. Times are seconds, event times (watermarks)
  seconds since the epoch, sizes bytes.

:data:`METRICS` lists every metric family (name, type, help) — the README's table.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from .errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .pipeline import Pipeline

# name → (type, help). Labels: every registration's own labels and ``pipeline``; then ``source``,
# ``split``, ``operator`` or ``sink`` where the name says so.
METRICS: dict[str, tuple[str, str]] = {
    # the pipeline
    "lambdasource_pipeline_status": ("gauge", "1 for the pipeline's status (label status)"),
    "lambdasource_pipeline_elapsed_seconds": ("gauge", "Seconds since the run started"),
    "lambdasource_watermark_seconds": ("gauge", "Global watermark (event time, epoch seconds)"),
    "lambdasource_watermark_skew_seconds": ("gauge", "Newest minus oldest source watermark"),
    "lambdasource_late_records_total": ("counter", "Records behind the watermark (all operators)"),
    "lambdasource_dead_letters_total": ("counter", "Records sent to the dead letters"),
    "lambdasource_dropped_no_sink_records_total": ("counter", "Records sent to an unwired output"),
    "lambdasource_queued_messages": ("gauge", "Messages waiting in the graph's queues"),
    "lambdasource_queued_records": ("gauge", "Records waiting in the graph's queues"),
    "lambdasource_queued_bytes": ("gauge", "Bytes of record batches in the graph's queues"),
    "lambdasource_bootstrap_pass_seconds": ("gauge", "Duration of the state bootstrap's lake pass"),
    # checkpoints
    "lambdasource_checkpoints_completed_total": ("counter", "Checkpoints completed"),
    "lambdasource_checkpoints_failed_total": ("counter", "Checkpoints that failed to be written"),
    "lambdasource_checkpoints_abandoned_total": ("counter", "Checkpoints abandoned"),
    "lambdasource_checkpoints_pending": ("gauge", "Checkpoints triggered, not yet complete"),
    "lambdasource_checkpoint_last_id": ("gauge", "Id of the newest completed checkpoint"),
    "lambdasource_checkpoint_last_duration_seconds": (
        "gauge",
        "Trigger to durable (to complete without a store) of the newest checkpoint",
    ),
    "lambdasource_checkpoint_max_duration_seconds": ("gauge", "Longest checkpoint of the run"),
    "lambdasource_checkpoint_last_write_seconds": ("gauge", "Store write of the newest checkpoint"),
    "lambdasource_checkpoint_last_size_bytes": ("gauge", "Encoded size of the newest checkpoint"),
    "lambdasource_checkpoint_duration_seconds": ("summary", "Checkpoint durations (written ones)"),
    # sources
    "lambdasource_source_records_total": ("counter", "Records the source emitted"),
    "lambdasource_source_batches_total": ("counter", "Batches the source emitted"),
    "lambdasource_source_dead_letters_total": ("counter", "Dead letters of the source"),
    "lambdasource_source_watermark_seconds": ("gauge", "Source's output watermark"),
    "lambdasource_source_idle": ("gauge", "1 while the source is idle"),
    "lambdasource_source_ended": ("gauge", "1 once the source ended"),
    "lambdasource_source_held_splits": ("gauge", "Splits alignment holds back now"),
    "lambdasource_source_max_skew_seconds": ("gauge", "Largest split skew seen by alignment"),
    "lambdasource_handoff_lake_finished": ("gauge", "1 once the lambda source's lake part ended"),
    "lambdasource_handoff_records_total": ("counter", "Lambda source records by part (label part)"),
    "lambdasource_handoff_dropped_before_cutoff_total": (
        "counter",
        "Stream records before the cutoff, dropped (the lake has them)",
    ),
    # splits: the lake, each Kafka partition (label split, as alignment names it)
    "lambdasource_split_watermark_seconds": ("gauge", "Split's watermark"),
    "lambdasource_split_idle": ("gauge", "1 while the split is idle"),
    "lambdasource_split_finished": ("gauge", "1 once the split is finished"),
    "lambdasource_split_held": ("gauge", "1 while alignment holds the split back"),
    "lambdasource_split_holds_total": ("counter", "Times alignment held the split back"),
    "lambdasource_split_held_seconds_total": ("counter", "Seconds alignment held the split back"),
    "lambdasource_split_held_records": ("gauge", "Fetched records alignment keeps in the split"),
    "lambdasource_split_records_total": ("counter", "Records read from the split"),
    "lambdasource_split_paused": ("gauge", "1 while the Kafka partition is paused"),
    "lambdasource_split_lag_records": ("gauge", "Kafka: end offset minus next offset"),
    "lambdasource_split_next_offset": ("gauge", "Kafka: next offset to emit"),
    "lambdasource_split_end_offset": ("gauge", "Kafka: high watermark of the last fetch"),
    "lambdasource_lake_partitions_planned": ("gauge", "Lake partitions the run reads"),
    "lambdasource_lake_partitions_done": ("gauge", "Lake partitions read"),
    "lambdasource_lake_partitions_remaining": ("gauge", "Lake partitions left (the lake's lag)"),
    "lambdasource_lake_read_bytes_total": ("counter", "Bytes read from lake files"),
    "lambdasource_lake_row_groups_read_total": ("counter", "Parquet row groups read"),
    "lambdasource_lake_row_groups_pruned_total": ("counter", "Parquet row groups pruned"),
    "lambdasource_lake_files_pruned_total": ("counter", "Lake files pruned"),
    # operators
    "lambdasource_operator_records_in_total": ("counter", "Records into the operator"),
    "lambdasource_operator_records_out_total": ("counter", "Records out of the operator"),
    "lambdasource_operator_late_records_total": ("counter", "Late records at the operator"),
    "lambdasource_operator_dead_letters_total": ("counter", "Dead letters of the operator"),
    "lambdasource_operator_watermark_seconds": ("gauge", "Operator's input watermark"),
    "lambdasource_operator_timers": ("gauge", "Timers registered"),
    "lambdasource_operator_state_rows": ("gauge", "Rows of keyed/window state held"),
    "lambdasource_operator_state_bytes": ("gauge", "Bytes of keyed/window state held"),
    # sinks
    "lambdasource_sink_records_in_total": ("counter", "Records into the sink"),
    "lambdasource_sink_watermark_seconds": ("gauge", "Sink's watermark"),
    "lambdasource_sink_rows_written_total": ("counter", "Rows written to the store"),
    "lambdasource_sink_conflicts_skipped_total": ("counter", "Rows older than the stored, skipped"),
    "lambdasource_sink_retries_total": ("counter", "Store writes retried"),
    "lambdasource_sink_buffered_rows": ("gauge", "Rows buffered, not yet written"),
    "lambdasource_sink_flush_latency_mean_seconds": ("gauge", "Mean flush latency (recent)"),
    "lambdasource_sink_flush_latency_max_seconds": ("gauge", "Max flush latency (recent)"),
    # the endpoint itself
    "lambdasource_metrics_read_errors_total": ("counter", "Scrapes that could not read metrics()"),
}

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_OWN_LABELS = frozenset({"pipeline", "status", "source", "split", "part", "operator", "sink"})
_US = 1_000_000


def default_labels() -> dict[str, str]:
    """``{"worker": "<host>-<pid>"}``: tells the processes of one job apart."""
    return {"worker": f"{socket.gethostname()}-{os.getpid()}"}


# --- metrics() → metric families ----------------------------------------------------------------


class _Families:
    """The metric families of one scrape, created on first use (label names fixed by the first
    sample: every sample of a family carries the same ones)."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        self._summaries: dict[str, SummaryMetricFamily] = {}

    def add(self, name: str, labels: Mapping[str, str], value: Any) -> None:
        """One sample; ``None`` (figure unknown yet) adds nothing, booleans count as 0/1."""
        if value is None:
            return
        family = self._families.get(name)
        if family is None:
            kind, text = METRICS[name]
            make = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            family = self._families[name] = make(name, text, labels=list(labels))
        family.add_metric(list(labels.values()), float(value))

    def summary(self, name: str, labels: Mapping[str, str], count: int, total: float) -> None:
        family = self._summaries.get(name)
        if family is None:
            family = SummaryMetricFamily(name, METRICS[name][1], labels=list(labels))
            self._summaries[name] = family
        family.add_metric(list(labels.values()), count_value=count, sum_value=total)

    def __iter__(self) -> Iterator[Metric]:
        return iter([*self._families.values(), *self._summaries.values()])


def _seconds(micros: Any) -> float | None:
    return None if micros is None else int(micros) / _US


def metric_families(readings: list[tuple[Mapping[str, str], Mapping[str, Any]]]) -> list[Metric]:
    """Families for ``(labels, pipeline.metrics())`` readings (see :data:`METRICS`)."""
    families = _Families()
    for labels, metrics in readings:
        _pipeline(families, dict(labels), metrics)
    return list(families)


def _pipeline(out: _Families, base: dict[str, str], metrics: Mapping[str, Any]) -> None:
    out.add("lambdasource_pipeline_status", {**base, "status": str(metrics.get("status"))}, 1)
    out.add("lambdasource_pipeline_elapsed_seconds", base, metrics.get("elapsed_s"))
    out.add("lambdasource_watermark_seconds", base, _seconds(metrics.get("global_watermark")))
    out.add("lambdasource_watermark_skew_seconds", base, _seconds(metrics.get("skew")))
    out.add("lambdasource_late_records_total", base, metrics.get("late"))
    out.add("lambdasource_dead_letters_total", base, metrics.get("dead_letters"))
    out.add("lambdasource_dropped_no_sink_records_total", base, metrics.get("dropped_no_sink"))
    buffered = metrics.get("buffered") or {}
    out.add("lambdasource_queued_messages", base, buffered.get("queue_messages"))
    out.add("lambdasource_queued_records", base, buffered.get("queue_rows"))
    out.add("lambdasource_queued_bytes", base, buffered.get("queue_bytes"))
    bootstrap = metrics.get("bootstrap") or {}
    if bootstrap.get("mode") == "state":
        out.add("lambdasource_bootstrap_pass_seconds", base, bootstrap.get("seconds"))
    _checkpoints(out, base, metrics.get("checkpoints") or {})
    for name, source in (metrics.get("sources") or {}).items():
        _source(out, {**base, "source": name}, source)
    for name, operator in (metrics.get("operators") or {}).items():
        labels = {**base, "operator": name}
        out.add("lambdasource_operator_records_in_total", labels, operator.get("records_in"))
        out.add("lambdasource_operator_records_out_total", labels, operator.get("records_out"))
        out.add("lambdasource_operator_late_records_total", labels, operator.get("late"))
        out.add("lambdasource_operator_dead_letters_total", labels, operator.get("dead_letters"))
        out.add(
            "lambdasource_operator_watermark_seconds", labels, _seconds(operator.get("watermark"))
        )
        out.add("lambdasource_operator_timers", labels, operator.get("timers"))
        out.add("lambdasource_operator_state_rows", labels, operator.get("state_rows"))
        out.add("lambdasource_operator_state_bytes", labels, operator.get("state_bytes"))
    for name, sink in (metrics.get("sinks") or {}).items():
        labels = {**base, "sink": name}
        out.add("lambdasource_sink_records_in_total", labels, sink.get("records_in"))
        out.add("lambdasource_sink_watermark_seconds", labels, _seconds(sink.get("watermark")))
        out.add("lambdasource_sink_rows_written_total", labels, sink.get("rows_written"))
        out.add("lambdasource_sink_conflicts_skipped_total", labels, sink.get("conflicts_skipped"))
        out.add("lambdasource_sink_retries_total", labels, sink.get("retries"))
        out.add("lambdasource_sink_buffered_rows", labels, sink.get("buffered_rows"))
        out.add(
            "lambdasource_sink_flush_latency_mean_seconds", labels, sink.get("flush_latency_mean_s")
        )
        out.add(
            "lambdasource_sink_flush_latency_max_seconds", labels, sink.get("flush_latency_max_s")
        )


def _checkpoints(out: _Families, base: dict[str, str], figures: Mapping[str, Any]) -> None:
    """With a checkpoint store the coordinator's figures (durable checkpoints); without, the
    runtime's (checkpoints completed in memory)."""
    stored = "count" in figures
    completed = figures.get("count") if stored else figures.get("completed_total")
    out.add("lambdasource_checkpoints_completed_total", base, completed)
    out.add("lambdasource_checkpoints_failed_total", base, figures.get("failed"))
    out.add("lambdasource_checkpoints_abandoned_total", base, figures.get("abandoned"))
    out.add("lambdasource_checkpoints_pending", base, len(figures.get("pending") or ()))
    ids = figures.get("completed") or []
    last_id = figures.get("last_id") if stored else (ids[-1] if ids else None)
    out.add("lambdasource_checkpoint_last_id", base, last_id)
    durations = figures.get("durations_s") or {}
    last = figures.get("last_duration_s") if stored else durations.get(last_id)
    out.add("lambdasource_checkpoint_last_duration_seconds", base, last)
    if stored:
        out.add("lambdasource_checkpoint_max_duration_seconds", base, figures.get("max_duration_s"))
        out.add("lambdasource_checkpoint_last_write_seconds", base, figures.get("last_write_s"))
        out.add("lambdasource_checkpoint_last_size_bytes", base, figures.get("size_bytes"))
        count = int(figures.get("count") or 0)
        mean = figures.get("mean_duration_s") or 0.0
        out.summary("lambdasource_checkpoint_duration_seconds", base, count, mean * count)


def _source(out: _Families, labels: dict[str, str], source: Mapping[str, Any]) -> None:
    out.add("lambdasource_source_records_total", labels, source.get("records_out"))
    out.add("lambdasource_source_batches_total", labels, source.get("batches_out"))
    out.add("lambdasource_source_dead_letters_total", labels, source.get("dead_letters"))
    out.add("lambdasource_source_watermark_seconds", labels, _seconds(source.get("watermark")))
    out.add("lambdasource_source_idle", labels, source.get("idle"))
    out.add("lambdasource_source_ended", labels, source.get("ended"))
    alignment = source.get("alignment") or {}
    aligned: Mapping[str, Any] = alignment.get("splits") or {}
    if aligned:
        held = sum(1 for figures in aligned.values() if figures.get("held"))
        out.add("lambdasource_source_held_splits", labels, held)
        out.add("lambdasource_source_max_skew_seconds", labels, _seconds(alignment["max_skew_us"]))
    lake: Mapping[str, Any] | None = None
    stream: Mapping[str, Any] = {}
    prefix = ""
    if "handoff" in source:  # a lambda source: lake + stream, alignment names "stream:partition=N"
        lake, stream, prefix = source.get("lake") or {}, source.get("stream") or {}, "stream:"
        out.add("lambdasource_handoff_lake_finished", labels, source.get("lake_finished"))
        for part, rows in (source.get("rows") or {}).items():
            out.add("lambdasource_handoff_records_total", {**labels, "part": part}, rows)
        out.add(
            "lambdasource_handoff_dropped_before_cutoff_total",
            labels,
            source.get("dropped_before_cutoff"),
        )
    elif "topic" in source and "partitions" in source:  # a Kafka stream
        stream = source
    elif "partitions_total" in source:  # a lake
        lake = source
    kafka = {f"{prefix}partition={p}": f for p, f in (stream.get("partitions") or {}).items()}
    for split in dict.fromkeys([*aligned, *kafka, *(["lake"] if lake is not None else [])]):
        _split(
            out,
            {**labels, "split": split},
            aligned.get(split),
            kafka.get(split),
            lake if split == "lake" else None,
        )


def _split(
    out: _Families,
    labels: dict[str, str],
    aligned: Mapping[str, Any] | None,
    kafka: Mapping[str, Any] | None,
    lake: Mapping[str, Any] | None,
) -> None:
    """One split's figures: its own (Kafka partition, lake) first, alignment's view else."""
    own = kafka if kafka is not None else lake
    watermark = (own or {}).get("watermark")
    if watermark is None and aligned is not None:
        watermark = aligned.get("watermark")
    out.add("lambdasource_split_watermark_seconds", labels, _seconds(watermark))
    state = kafka if kafka is not None else aligned
    if state is not None:
        out.add("lambdasource_split_idle", labels, state.get("idle"))
        out.add("lambdasource_split_finished", labels, state.get("finished"))
    if aligned is not None:
        out.add("lambdasource_split_held", labels, aligned.get("held"))
        out.add("lambdasource_split_holds_total", labels, aligned.get("holds"))
        out.add("lambdasource_split_held_seconds_total", labels, aligned.get("held_s"))
    if kafka is not None:
        out.add("lambdasource_split_held_records", labels, kafka.get("held_rows"))
        out.add("lambdasource_split_records_total", labels, kafka.get("records"))
        out.add("lambdasource_split_paused", labels, kafka.get("paused"))
        out.add("lambdasource_split_lag_records", labels, kafka.get("lag"))
        out.add("lambdasource_split_next_offset", labels, kafka.get("position"))
        out.add("lambdasource_split_end_offset", labels, kafka.get("highwater"))
    if lake is not None:
        planned, done = lake.get("partitions_total"), lake.get("partitions_done")
        out.add("lambdasource_split_records_total", labels, lake.get("rows_emitted"))
        out.add("lambdasource_lake_partitions_planned", labels, planned)
        out.add("lambdasource_lake_partitions_done", labels, done)
        if planned is not None and done is not None:
            out.add("lambdasource_lake_partitions_remaining", labels, max(0, planned - done))
        out.add("lambdasource_lake_read_bytes_total", labels, lake.get("bytes_read"))
        out.add("lambdasource_lake_row_groups_read_total", labels, lake.get("row_groups_read"))
        out.add("lambdasource_lake_row_groups_pruned_total", labels, lake.get("row_groups_pruned"))
        out.add("lambdasource_lake_files_pruned_total", labels, lake.get("files_pruned"))


# --- the collector and the server -------------------------------------------------------------


@dataclass
class _Registration:
    pipeline: Pipeline
    labels: dict[str, str]
    loop: asyncio.AbstractEventLoop | None
    read_errors: int = 0


class _PipelineCollector:
    """prometheus_client collector: reads every registered pipeline's metrics() per scrape."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self._endpoint = endpoint

    def describe(self) -> list[Metric]:
        return []  # names vary with the graph; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        readings: list[tuple[Mapping[str, str], Mapping[str, Any]]] = []
        errors = _Families()
        for registration in self._endpoint._registered():
            base = {**registration.labels, "pipeline": registration.pipeline.name}
            try:
                readings.append((base, self._endpoint._read(registration)))
            except Exception:
                registration.read_errors += 1
            errors.add("lambdasource_metrics_read_errors_total", base, registration.read_errors)
        yield from metric_families(readings)
        yield from errors


class MetricsEndpoint:
    """``/metrics`` in the Prometheus text format for the registered pipelines (module
    docstring). ``port=0`` binds a free port: :attr:`port` is the bound one once started.
    Serves from a daemon thread; :meth:`stop` shuts it down, closes the socket and joins it."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, read_timeout: float = 5.0) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"MetricsEndpoint: port must be 0..65535, got {port}")
        self.host = host
        self.requested_port = port
        self.read_timeout = read_timeout
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_PipelineCollector(self))
        self.registry.register(ProcessCollector(registry=None))
        self._registrations: dict[int, _Registration] = {}
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # registrations ----------------------------------------------------------------------------

    def register(
        self,
        pipeline: Pipeline,
        labels: Mapping[str, str] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Serve ``pipeline``'s metrics under ``labels`` (plus ``pipeline``: its name). Every
        registration has the same label names and distinct values. ``loop`` (default: the
        running one, if any) is the event loop that runs the pipeline: its metrics are read
        there."""
        given = {str(k): str(v) for k, v in (labels or {}).items()}
        for key in given:
            if not _LABEL_NAME.match(key) or key.startswith("__") or key in _OWN_LABELS:
                raise ConfigError(
                    f"MetricsEndpoint.register: label {key!r} is not allowed (a Prometheus label "
                    f"name, not one of {sorted(_OWN_LABELS)})"
                )
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        with self._lock:
            for other in self._registrations.values():
                if other.pipeline is pipeline:
                    raise ConfigError(f"MetricsEndpoint: {pipeline.name!r} is registered already")
                if sorted(other.labels) != sorted(given):
                    raise ConfigError(
                        f"MetricsEndpoint.register: labels {sorted(given)} differ from "
                        f"{sorted(other.labels)} of the pipelines registered already"
                    )
                if other.labels == given and other.pipeline.name == pipeline.name:
                    raise ConfigError(
                        f"MetricsEndpoint.register: {pipeline.name!r} with labels {given} would "
                        "repeat the series of a pipeline registered already"
                    )
            self._registrations[id(pipeline)] = _Registration(pipeline, given, loop)

    def unregister(self, pipeline: Pipeline) -> None:
        """Stop serving ``pipeline`` (its series disappear from the next scrape)."""
        with self._lock:
            self._registrations.pop(id(pipeline), None)

    def _registered(self) -> list[_Registration]:
        with self._lock:
            return list(self._registrations.values())

    def _read(self, registration: _Registration) -> dict[str, Any]:
        """``pipeline.metrics()``, on the pipeline's loop when it runs elsewhere (docstring)."""
        pipeline, loop = registration.pipeline, registration.loop
        if loop is not None and loop.is_running() and not _running_on(loop):
            answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

            def read_on_loop() -> None:
                if answer.set_running_or_notify_cancel():
                    try:
                        answer.set_result(pipeline.metrics())
                    except Exception as exc:
                        answer.set_exception(exc)

            try:
                loop.call_soon_threadsafe(read_on_loop)
                return answer.result(timeout=self.read_timeout)
            except (RuntimeError, concurrent.futures.TimeoutError):
                answer.cancel()  # the loop closed or is busy: read from here
        for attempt in range(3):
            try:
                return pipeline.metrics()
            except RuntimeError:  # "changed size during iteration": read again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # serving ----------------------------------------------------------------------------------

    def start(self) -> MetricsEndpoint:
        """Bind and serve (idempotent while running)."""
        if self._server is None:
            try:
                server, thread = start_http_server(
                    self.requested_port, addr=self.host, registry=self.registry
                )
            except OSError as error:
                raise ConfigError(
                    f"metrics endpoint: cannot serve on {self.host}:{self.requested_port} "
                    f"({error.strerror or error}); choose another --metrics-port "
                    "(0: a free port) — a scaled-out worker i uses port + i"
                ) from error
            thread.name = f"lambdasource-metrics:{server.server_port}"
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving: shut the server down, close its socket, join its thread."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        if self._server is None:
            raise ConfigError("MetricsEndpoint: not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def text(self) -> str:
        """The exposition a scrape gets now (without HTTP)."""
        return generate_latest(self.registry).decode()

    def __enter__(self) -> MetricsEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# --- command line -------------------------------------------------------------------------------


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port PORT`` (and ``--metrics-host``) of ``lambdasource run``/``bootstrap``."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics while the job runs "
        "(0: a free port, printed)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics endpoint binds (127.0.0.1; 0.0.0.0 for every interface)",
    )


def endpoint_from_args(args: argparse.Namespace) -> MetricsEndpoint | None:
    """The endpoint ``--metrics-port`` asks for (not started), or None."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    return MetricsEndpoint(port, getattr(args, "metrics_host", "127.0.0.1"))


def job_labels() -> dict[str, str]:
    """The CLI's labels: this process as the worker, ``task="all"`` (a single-process job reads
    every partition)."""
    return {**default_labels(), "task": "all"}


@contextlib.contextmanager
def serving(endpoint: MetricsEndpoint | None, say: Callable[[str], Any]) -> Iterator[None]:
    """Serve ``endpoint`` (if any) for the block, telling its URL through ``say``."""
    if endpoint is None:
        yield
        return
    with endpoint:
        say(f"metrics: {endpoint.url}")
        yield
