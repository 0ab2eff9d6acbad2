"""Apache Kafka 4.x (KRaft) from Maven Central jars: one broker per test session.

``apache_kafka`` yields an :class:`ApacheKafkaService` with the helper surface of the Tansu
``KafkaService`` (``bootstrap``, ``new_topic``, ``produce``/``aproduce``) plus what Tansu cannot
do: ``add_partitions`` (CreatePartitions) and ``delete_topic``. Unlike Tansu, Apache Kafka answers
``end_offsets`` and ``offsets_for_times`` correctly (tests/integration/test_apache_kafka_service.py).

How it runs (DESIGN §6 "Apache Kafka"):

* Jars: ``mvn -q -B dependency:copy-dependencies`` on ``apache_kafka_pom.xml`` into
  ``~/.cache/lambdasource/kafka-<version>-<pom hash>/jars`` (``$LAMBDASOURCE_CACHE_DIR`` overrides
  the root), once: a ``fcntl`` lock serialises parallel sessions, the copy lands in a temporary
  directory renamed into place, so a killed fetch never leaves a half cache.
* Storage: ``kafka.tools.StorageTool format --standalone`` on a log dir under a fresh temporary
  directory (removed at stop); one combined broker+controller (``kafka.Kafka``), PLAINTEXT and
  CONTROLLER listeners on free loopback ports, replication factors 1, one partition for the
  internal topics, ``group.initial.rebalance.delay.ms=0``, ``log.retention.ms=-1`` (no time
  retention: test records carry old timestamps), heap ``-Xmx512m``.
* Ready when a real metadata request (DescribeCluster through aiokafka's admin client) names this
  broker and a controller.
* Stop: SIGTERM to the broker's process group (it runs in its own session), SIGKILL after 15 s,
  then the temporary directory goes. Three layers make sure the JVM does not outlive pytest: the
  fixture's finalizer, an ``atexit`` handler, and a watchdog process that holds the read end of a
  pipe whose only writer is this Python process — when this process dies in any way (even
  SIGKILL) the pipe closes and the watchdog kills the broker's group and removes its directory.
* Missing ``java`` (17+) or ``mvn``, or a fetch that fails (Maven Central unreachable), raise
  :class:`ApacheKafkaUnavailable` with one line naming what is missing; the fixture turns that
  into a test failure (never a skip).

Measured on this machine (2 shared cores, Java 17.0.15, Kafka 4.1.1, Maven 3.8), on 2026-12-06:
fetch into an empty ``~/.m2`` 7.7 s (46 jars, 43 MB), with ``~/.m2`` already filled 5–7 s, from
the cache 0 s; ``StorageTool format`` 1.9 s (4.1 s with other sessions loading the machine);
broker start to the first successful metadata request 5.8 s (12.6 s loaded), so ≈ 8 s per
session (≈ 17 s loaded); RSS 310–330 MB idle, 350–365 MB after producing 100k 100-byte records
(≈ 3.3–5.7 s for them through ``produce``); stop (SIGTERM, exit 143) ≈ 1 s. Killing the
owning Python process with SIGKILL: the watchdog ended the broker and removed its directory
within 4 s. Right after ``new_topic`` the first produce can still log one retried
``NotLeaderForPartitionError`` (metadata names the leader a moment before it serves).

Weak: if the watchdog is SIGKILLed too (e.g. someone kills every process by name), only the
broker's own session remains and nothing ends it; a ``fork`` without ``exec`` (multiprocessing's
fork start method) inherits the pipe's write end, so the broker then also waits for that child;
the first run on a machine needs Maven Central (a cold fetch ≈ 8 s).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from .kafka import Producing
from .ports import free_port
from .watchdog import release, start_watchdog

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("apache_kafka_pom.xml")
HEAP = "-Xmx512m"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""

# Runs in its own session; blocks until every writer of its stdin is gone, then ends the broker.


class ApacheKafkaUnavailable(RuntimeError):
    """Java, Maven or the jars are missing; the message is one line saying which and how to fix."""


def cache_root() -> Path:
    """Where fetched jars are kept across runs (``$LAMBDASOURCE_CACHE_DIR`` or ``~/.cache``)."""
    explicit = os.environ.get("LAMBDASOURCE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "lambdasource"


def _java_major() -> int:
    java = shutil.which("java")
    if java is None:
        raise ApacheKafkaUnavailable(
            "the Apache Kafka test service needs Java 17+ (`java` not on PATH): "
            "apt-get install -y default-jre-headless (.ci/run does it)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if found is None:
        raise ApacheKafkaUnavailable(f"cannot tell the Java version from `java -version`: {out}")
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def fetch_jars(
    version: str = KAFKA_VERSION, mvn_args: Sequence[str] = (), cache: Path | None = None
) -> Path:
    """The directory holding Apache Kafka ``version``'s jars, fetched with Maven on first use.

    Invariant: a returned directory is complete (it only appears by an atomic rename after
    ``mvn`` succeeded); concurrent callers wait on a file lock instead of fetching twice.
    ``cache`` defaults to :func:`cache_root`; ``mvn_args`` are extra Maven arguments.
    """
    pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()[:8]
    root = cache or cache_root()
    final = root / f"kafka-{version}-{pom_hash}" / "jars"
    if final.is_dir():
        return final
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ApacheKafkaUnavailable(
            "the Apache Kafka test service needs Maven (`mvn` not on PATH) to fetch the broker's "
            "jars: apt-get install -y maven (.ci/run does it)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(root / f"kafka-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # another session fetched it while we waited
            return final
        staging = Path(tempfile.mkdtemp(prefix="jars-", dir=final.parent))
        try:
            done = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(POM),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}",
                    "-DincludeScope=runtime",
                    f"-Dkafka.version={version}",
                    *mvn_args,
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
                raise ApacheKafkaUnavailable(
                    f"could not fetch Apache Kafka {version}'s jars with Maven "
                    f"(is Maven Central reachable?): {_first_error(done.stdout + done.stderr)}"
                )
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _first_error(output: str) -> str:
    """Maven's first ``[ERROR]`` line (or the last line), squeezed onto one line."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("[ERROR]") and line != "[ERROR]"]
    picked = errors[0] if errors else (lines[-1] if lines else "mvn printed nothing")
    return re.sub(r"\s+", " ", picked)[:400]


def _cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64 without padding (as ``random-uuid``),
    never starting with ``-`` (Kafka's ``Uuid.randomUuid`` rule: StorageTool's argument parser
    would take it for an option — 1 start in 64 failed with a usage message)."""
    while (text := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode())[0] == "-":
        pass
    return text


def _properties(values: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


@dataclass
class ApacheKafkaService(Producing):
    """A running Apache Kafka broker (KRaft, combined roles) plus test helpers."""

    produce_options: ClassVar[dict[str, Any]] = {"acks": "all"}

    port: int
    controller_port: int
    root: Path
    process: subprocess.Popen[bytes]
    watchdog: subprocess.Popen[bytes]
    version: str
    topics: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    advertised_port: int | None = None  # a proxy's port named in metadata (None: ``port``)
    host: str = "127.0.0.1"  # the PLAINTEXT listener's address

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.root / "broker.log"

    @classmethod
    def start(
        cls,
        version: str = KAFKA_VERSION,
        overrides: Mapping[str, str] | None = None,
        *,
        listeners: Mapping[str, tuple[str, int]] | None = None,
        format_args: Sequence[str] = (),
        port: int | None = None,
        advertised_port: int | None = None,
        host: str = "127.0.0.1",
    ) -> ApacheKafkaService:
        """Fetch (once), format and start a broker; return when a metadata request succeeds.

        ``overrides`` are extra ``server.properties`` entries (e.g. ``log.cleaner.backoff.ms``);
        ``listeners`` adds named listeners ``{name: (security protocol, port)}`` next to
        PLAINTEXT (their ``listener.name.<name>.*`` settings go in ``overrides``);
        ``format_args`` go to ``StorageTool format`` (e.g. ``--add-scram`` to create SASL users);
        ``port`` fixes the PLAINTEXT port (default: a free one); ``advertised_port`` is the port
        the broker names in metadata (a proxy's, forwarding to ``port``, started before the
        broker), so that every client connection goes through the proxy; ``host`` is the address
        the PLAINTEXT listener binds and names (e.g. a bridge address that clients in other
        network namespaces reach; the controller stays on loopback).
        """
        major = _java_major()
        if major < 17:
            raise ApacheKafkaUnavailable(
                f"Apache Kafka {version} needs Java 17+, `java` is {major}: "
                "apt-get install -y default-jre-headless"
            )
        begun = time.monotonic()
        jars = fetch_jars(version)
        classpath = f"{jars}/*"
        port, controller_port = port or free_port(), free_port()
        while controller_port == port:
            controller_port = free_port()
        extra = "".join(f",{n}://{host}:{p}" for n, (_, p) in (listeners or {}).items())
        protocols = "".join(f",{n}:{kind}" for n, (kind, _) in (listeners or {}).items())
        root = Path(tempfile.mkdtemp(prefix="ls-apache-kafka-"))
        try:
            props = {
                "process.roles": "broker,controller",
                "node.id": "1",
                "listeners": f"PLAINTEXT://{host}:{port}{extra}"
                f",CONTROLLER://127.0.0.1:{controller_port}",
                "advertised.listeners": f"PLAINTEXT://{host}:{advertised_port or port}{extra}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": f"PLAINTEXT:PLAINTEXT{protocols}"
                ",CONTROLLER:PLAINTEXT",
                "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
                "log.dirs": str(root / "data"),
                "num.partitions": "1",
                "num.network.threads": "2",
                "num.io.threads": "4",
                "offsets.topic.replication.factor": "1",
                "offsets.topic.num.partitions": "1",
                "transaction.state.log.replication.factor": "1",
                "transaction.state.log.min.isr": "1",
                "transaction.state.log.num.partitions": "1",
                "share.coordinator.state.topic.replication.factor": "1",
                "share.coordinator.state.topic.min.isr": "1",
                "share.coordinator.state.topic.num.partitions": "1",
                "group.initial.rebalance.delay.ms": "0",
                # tests produce records stamped in the past (2026-01 …): time retention by record
                # timestamp would delete them at its first check (~30 s after start, then every
                # 5 min), whole partitions at once; tests that want retention set it per topic
                "log.retention.ms": "-1",
                **(overrides or {}),
            }
            config = root / "server.properties"
            config.write_text(_properties(props))
            (root / "log4j2.properties").write_text(_LOG4J2)
            java_opts = [f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}"]
            fmt = subprocess.run(
                [
                    "java",
                    "-Xmx256m",
                    *java_opts,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "--cluster-id",
                    _cluster_id(),
                    "--config",
                    str(config),
                    *format_args,
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            formatted = time.monotonic()
            if fmt.returncode != 0:
                raise RuntimeError(
                    f"kafka StorageTool format failed ({fmt.returncode}): "
                    f"{(fmt.stdout + fmt.stderr).strip()[-2000:]}"
                )
            with open(root / "broker.log", "wb") as log:
                process = subprocess.Popen(
                    [
                        "java",
                        HEAP,
                        "-XX:+ExitOnOutOfMemoryError",
                        "-Djava.awt.headless=true",
                        *java_opts,
                        "-cp",
                        classpath,
                        "kafka.Kafka",
                        str(config),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killpg ends it whole
                )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        watchdog = start_watchdog(process.pid, root, grace=STOP_GRACE_S, group=True)
        service = cls(
            port,
            controller_port,
            root,
            process,
            watchdog,
            version,
            advertised_port=advertised_port,
            host=host,
        )
        service.timings = {"format_s": round(formatted - begun, 2)}
        atexit.register(service.stop)
        try:
            service._wait_ready()
            service.timings["ready_s"] = round(time.monotonic() - formatted, 2)
        except BaseException:
            service.stop()
            raise
        return service

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Apache Kafka exited with {self.process.returncode} while starting; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                # TCP first: aiokafka logs every refused connection of a metadata attempt
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                asyncio.run(asyncio.wait_for(self._describe_cluster(), 5))
                return
            except Exception as exc:
                last = exc
                time.sleep(0.2)
        raise TimeoutError(
            f"Apache Kafka on {self.bootstrap} answered no metadata request within "
            f"{START_TIMEOUT_S}s (last: {last!r}); log tail:\n{self.log_tail()}"
        )

    async def _describe_cluster(self) -> None:
        async with self._admin() as admin:
            cluster = await admin.describe_cluster()
        brokers = cluster.get("brokers") or []
        if (
            not any(b.get("port") == (self.advertised_port or self.port) for b in brokers)
            or cluster.get("controller_id", -1) < 0
        ):
            raise RuntimeError(f"metadata names no ready broker/controller yet: {cluster}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate the broker's group (SIGKILL after a grace period); remove its files. Idempotent."""
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        release(self.watchdog)  # the broker is gone: the watchdog just removes the dir
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- admin helpers -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[Any]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            yield admin
        finally:
            await admin.close()

    async def _partitions_with_leaders(self, admin: Any, topic: str) -> int | None:
        """Partitions of ``topic`` that have a leader, or None when the topic is unknown."""
        (described,) = await admin.describe_topics([topic])
        if described["error_code"] == 3:  # UNKNOWN_TOPIC_OR_PARTITION
            return None
        return sum(1 for p in described["partitions"] if p["leader"] >= 0)

    async def _await_partitions(self, admin: Any, topic: str, want: int | None) -> None:
        deadline = time.monotonic() + 30
        while (got := await self._partitions_with_leaders(admin, topic)) != want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: metadata shows {got} partitions, want {want}")
            await asyncio.sleep(0.05)

    @staticmethod
    def _check(response: Any, what: str) -> None:
        errors = getattr(response, "topic_errors", None) or getattr(
            response, "topic_error_codes", []
        )
        for error in errors:
            if error[1] != 0:
                raise RuntimeError(f"{what}: broker answered error {tuple(error)}")

    async def acreate_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> None:
        """Create ``name`` and wait until every partition has a leader."""
        from aiokafka.admin import NewTopic

        async with self._admin() as admin:
            response = await admin.create_topics(
                [NewTopic(name, partitions, 1, topic_configs=dict(config or {}))]
            )
            self._check(response, f"create topic {name}")
            await self._await_partitions(admin, name, partitions)

    def new_topic(
        self, partitions: int = 1, prefix: str = "t", config: Mapping[str, str] | None = None
    ) -> str:
        """Create a uniquely named topic (``config``: topic configs) and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        asyncio.run(self.acreate_topic(name, partitions, config))
        self.topics.append(name)
        return name

    async def aadd_partitions(self, topic: str, total: int) -> None:
        """Grow ``topic`` to ``total`` partitions (CreatePartitions) and wait for their leaders."""
        from aiokafka.admin import NewPartitions

        async with self._admin() as admin:
            response = await admin.create_partitions({topic: NewPartitions(total)})
            self._check(response, f"add partitions to {topic}")
            await self._await_partitions(admin, topic, total)

    def add_partitions(self, topic: str, total: int) -> None:
        asyncio.run(self.aadd_partitions(topic, total))

    async def adelete_topic(self, topic: str) -> None:
        """Delete ``topic`` and wait until metadata no longer knows it."""
        async with self._admin() as admin:
            response = await admin.delete_topics([topic])
            self._check(response, f"delete topic {topic}")
            await self._await_partitions(admin, topic, None)
        if topic in self.topics:
            self.topics.remove(topic)

    def delete_topic(self, topic: str) -> None:
        asyncio.run(self.adelete_topic(topic))


@pytest.fixture(scope="session")
def apache_kafka_broker() -> Iterator[ApacheKafkaService]:
    missing: str | None = None
    try:
        service = ApacheKafkaService.start()
    except ApacheKafkaUnavailable as exc:
        missing = str(exc)
    if missing is not None:  # outside the except: the one line, no exception chain
        pytest.fail(missing, pytrace=False)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def apache_kafka(apache_kafka_broker: ApacheKafkaService) -> ApacheKafkaService:
    """The session's Apache Kafka broker; tests isolate themselves with ``new_topic()``."""
    if apache_kafka_broker.process.poll() is not None:
        raise RuntimeError(
            f"Apache Kafka exited with {apache_kafka_broker.process.returncode}; "
            f"log tail:\n{apache_kafka_broker.log_tail()}"
        )
    return apache_kafka_broker
