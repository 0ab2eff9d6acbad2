"""Broker outage (a TCP proxy drops every connection and refuses new ones), broker freeze (the
broker process stopped with SIGSTOP: connections stay open and answer nothing) and broker restart
(S3-backed Tansu stopped and started on the same port) under a live, checkpointed lambda job:
every record arrives exactly once, no watermark regresses, nothing is late.

Brokers: the proxied outage runs on Tansu in the default run and on Apache Kafka too with -m slow
(each broker advertises the proxy's port while listening on another); the freeze runs on both
brokers (-m slow). The restart runs on Tansu only: it needs the broker's data to survive a stop on
the same port, and ``ApacheKafkaService`` removes its log directory at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest

from lambdasource.embedded import EmbeddedBroker, free_port
from lambdasource.errors import StreamError
from tests.faults import jobs
from tests.faults.live import LiveJob, more_events, produce_later
from tests.faults.proxy import TcpProxy
from tests.services.apache_kafka import ApacheKafkaService, ApacheKafkaUnavailable
from tests.services.brokers import Broker, BrokerName, both_brokers, broker_params
from tests.services.s3 import S3Service

broker = both_brokers(default=())  # the freeze: both brokers, -m slow only

EVENTS = 6_000
PARTITIONS = 2


class ProxiedBroker:
    """A broker listening on its own port but advertising the proxy's, so that every client
    connection (bootstrap and partition leaders alike) goes through the proxy."""

    def __init__(self, kind: BrokerName) -> None:
        self.proxy = TcpProxy(free_port())
        self.broker: EmbeddedBroker | ApacheKafkaService
        if kind == "tansu":
            self.broker = EmbeddedBroker(
                port=self.proxy.target[1], advertised_port=self.proxy.port
            ).start()
            self.proxy.start()
        else:  # Apache Kafka checks that it is reachable at the advertised port before it is ready
            self.proxy.start()
            try:
                self.broker = ApacheKafkaService.start(
                    port=self.proxy.target[1], advertised_port=self.proxy.port
                )
            except BaseException:
                self.proxy.stop()
                raise

    @property
    def bootstrap(self) -> str:
        return self.proxy.address

    def stop(self) -> None:
        self.proxy.stop()
        self.broker.stop()

    def prepare_topic(self, topic: str) -> None:
        """jobs.prepare creates it."""

    def start_outage(self, seconds: float) -> None:
        self.proxy.outage(seconds)

    def end_outage(self) -> None:
        """The proxy ends its outage by itself."""

    def outage_figures(self) -> dict[str, int]:
        assert self.proxy.dropped > 0, "the outage dropped no connection"
        return {"dropped": self.proxy.dropped, "refused": self.proxy.refused}


@dataclass
class FrozenBroker:
    """A broker whose process is stopped (SIGSTOP) for the outage and continued (SIGCONT) after:
    its connections stay open and nothing answers — a hung broker, not a dead one."""

    broker: Broker
    freezes: int = 0  # outages in which the process was seen stopped
    _thaw: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def pid(self) -> int:
        return int(self.broker.service.process.pid)

    def prepare_topic(self, topic: str) -> None:
        """Created here: on Apache Kafka without time retention (tests/services/brokers.py)."""
        self.broker.create_topic(topic, PARTITIONS)

    def start_outage(self, seconds: float) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        stat = Path(f"/proc/{self.pid}/stat")
        for _ in range(100):  # the signal is delivered asynchronously: see it land
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
                self.freezes += 1
                break
            time.sleep(0.01)
        self._thaw = asyncio.get_running_loop().call_later(seconds, self.end_outage)

    def end_outage(self) -> None:
        """Continue the broker (idempotent; always called when the trial ends)."""
        if self._thaw is not None:
            self._thaw.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)

    def outage_figures(self) -> dict[str, int]:
        assert self.freezes > 0, "the broker process was never seen stopped"
        return {"freezes": self.freezes}


class Outage(Protocol):
    @property
    def bootstrap(self) -> str: ...

    def prepare_topic(self, topic: str) -> None: ...

    def start_outage(self, seconds: float) -> None: ...

    def end_outage(self) -> None: ...

    def outage_figures(self) -> dict[str, int]: ...


@pytest.fixture(params=broker_params(default=("tansu",)))
def proxied_broker(request: pytest.FixtureRequest) -> Iterator[ProxiedBroker]:
    try:
        broker = ProxiedBroker(request.param)
    except ApacheKafkaUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


async def outage_run(broker: Outage, root: Path, outage_s: float) -> dict[str, object]:
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(broker.prepare_topic, topic)
    ds = await jobs.prepare(
        broker.bootstrap, topic, str(root / "lake"), events=EVENTS, seed=3, archived=0.3
    )
    later = more_events(2_000, 2, seed=4, id_offset=10 * EVENTS)
    expected = np.concatenate(
        [ds.table.column("event_id").to_numpy(), later.column("event_id").to_numpy()]
    )
    job = LiveJob(
        ds.lake,
        topic,
        broker.bootstrap,
        (root / "ckpt").as_uri(),
        expected,
        consumer_options={"request_timeout_ms": 5000, "retry_backoff_ms": 200},
        throttle_s=0.03,
        fetch_bytes=16 * 1024,
    ).start()
    try:
        # the outage lands in the middle of the stream's catch-up
        await job.wait_for(
            lambda: job.source.metrics()["rows"]["stream"] >= 500, 60, "500 stream rows"
        )
        checkpoints_before = job.metrics()["checkpoints"]["count"]
        broker.start_outage(outage_s)
        at_outage = job.sink.rows
        assert at_outage < ds.table.num_rows, "the job caught up before the outage"
        await asyncio.sleep(outage_s + 0.2)
        outage_figures = broker.outage_figures()
        resumed = time.perf_counter()
        await produce_later(broker.bootstrap, topic, later, PARTITIONS, seed=4)
        caught_up = await job.wait_rows(len(expected), limit_s=60 + outage_s)
        await asyncio.sleep(1.0)  # let duplicates, if any, arrive
        report = job.sink.report()
        metrics = job.metrics()
    finally:
        broker.end_outage()
        await job.stop()
    assert report["duplicates"] == 0 and report["missing"] == 0, report
    assert report["unexpected"] == 0 and report["late"] == 0, report
    assert report["watermark_regressions"] == 0, report
    assert metrics["checkpoints"]["count"] > checkpoints_before, metrics["checkpoints"]
    figures = {
        "outage_s": outage_s,
        "rows_at_outage": at_outage,
        **outage_figures,
        "after_outage_catch_up_s": round(time.perf_counter() - resumed, 2),
        "caught_up_wait_s": round(caught_up, 2),
        "checkpoints": metrics["checkpoints"]["count"],
        "checkpoint_failed": metrics["checkpoints"]["failed"],
        **report,
    }
    print(f"FIGURES broker-outage: {figures}")
    return figures


@pytest.mark.kafka
async def test_broker_outage_10s(proxied_broker: ProxiedBroker, tmp_path: Path) -> None:
    await outage_run(proxied_broker, tmp_path, 10.0)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("outage_s", [20.0, 30.0])
async def test_broker_outage_long(
    proxied_broker: ProxiedBroker, tmp_path: Path, outage_s: float
) -> None:
    await outage_run(proxied_broker, tmp_path, outage_s)


@pytest.mark.timeout(300)
async def test_broker_freeze(broker: Broker, tmp_path: Path) -> None:
    """The broker hangs for 10 s (SIGSTOP) mid catch-up: requests time out instead of being
    refused; after it continues, every record arrives exactly once."""
    frozen = FrozenBroker(broker)
    try:
        await outage_run(frozen, tmp_path, 10.0)
    finally:
        frozen.end_outage()


def start_on_port(broker: EmbeddedBroker, attempts: int = 50) -> None:
    """(Re)start on the same port, retrying while the old socket is still in use."""
    for _ in range(attempts):
        try:
            broker.start(timeout=2)
            return
        except StreamError:
            time.sleep(0.2)
    raise AssertionError(f"broker did not restart on port {broker.port}")


@pytest.mark.kafka
@pytest.mark.s3
async def test_broker_restart_with_s3_storage(s3: S3Service, tmp_path: Path) -> None:
    bucket = s3.new_bucket("tansu")
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    broker = EmbeddedBroker(storage=f"s3://{bucket}/", env=env)
    await asyncio.to_thread(start_on_port, broker)
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        ds = await jobs.prepare(
            broker.bootstrap_servers,
            topic,
            str(tmp_path / "lake"),
            events=EVENTS,
            seed=8,
            archived=0.3,
        )
        later = more_events(2_000, 2, seed=9, id_offset=10 * EVENTS)
        expected = np.concatenate(
            [ds.table.column("event_id").to_numpy(), later.column("event_id").to_numpy()]
        )
        job = LiveJob(
            ds.lake,
            topic,
            broker.bootstrap_servers,
            (tmp_path / "ckpt").as_uri(),
            expected,
            consumer_options={"request_timeout_ms": 5000, "retry_backoff_ms": 200},
            throttle_s=0.03,
            fetch_bytes=16 * 1024,
        ).start()
        try:
            await job.wait_for(
                lambda: job.source.metrics()["rows"]["stream"] >= 500, 60, "500 stream rows"
            )
            at_stop = job.sink.rows
            assert at_stop < ds.table.num_rows, "the job caught up before the restart"
            stopped = time.perf_counter()
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(start_on_port, broker)
            down_s = time.perf_counter() - stopped
            await produce_later(broker.bootstrap_servers, topic, later, PARTITIONS, seed=9)
            caught_up = await job.wait_rows(len(expected), limit_s=90)
            await asyncio.sleep(1.0)
            report = job.sink.report()
            metrics = job.metrics()
        finally:
            await job.stop()
    finally:
        await asyncio.to_thread(broker.stop)
    assert report["duplicates"] == 0 and report["missing"] == 0, report
    assert report["unexpected"] == 0 and report["late"] == 0, report
    assert report["watermark_regressions"] == 0, report
    print(
        f"FIGURES broker-restart: rows_at_stop={at_stop} down_s={down_s:.2f} "
        f"caught_up_s={caught_up:.2f} "
        f"checkpoints={metrics['checkpoints']['count']} {report}"
    )
