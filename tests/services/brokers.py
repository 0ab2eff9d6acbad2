"""One Kafka-facing suite, two brokers: the ``broker`` fixture runs a test on Apache Kafka 4 and
on Tansu.

``broker`` yields a :class:`Broker`: the helper surface both services share (``bootstrap``,
``new_topic``, ``produce``/``aproduce``) plus ``name`` (``"apache"`` or ``"tansu"``) and
``service`` (the broker's own service object, for what only one of them can do, e.g. Apache
Kafka's ``add_partitions``). Test ids carry ``apache`` / ``tansu`` (``test_x[apache]``); each
param carries the broker's marker (``apache_kafka`` / ``kafka``), so ``-m "not apache_kafka"``
runs Tansu only.
A broker starts once per session, and only when a selected test asks for it.

Which brokers run where is chosen per test module::

    broker = both_brokers(default=("apache",))  # Apache Kafka in the default run; Tansu in -m slow

A broker outside ``default`` gets ``pytest.mark.slow``, so the default run (``-m "not slow"``)
runs the module on the ``default`` brokers and ``-m slow`` (or no ``-m``) adds the others.
Modules that do not assign their own ``broker`` get the plugin's: both brokers in the default run.
A module-scoped fixture takes ``params=broker_params(...)`` and builds its broker with
:func:`session_broker` (tests/faults/test_kill_restart.py).

Topics made through :class:`Broker` keep their records forever on Apache Kafka
(``retention.ms=-1``): the tests produce records with historical timestamps, which the broker's
default 7-day time retention deletes at its next check (30 s after it started, then every 5 min),
whole partitions at once. Tansu has no retention.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from lambdasource.embedded import create_topic

BrokerName = Literal["apache", "tansu"]
BROKERS: tuple[BrokerName, ...] = ("apache", "tansu")
MARKS = {"apache": pytest.mark.apache_kafka, "tansu": pytest.mark.kafka}
SERVICE_FIXTURES = {"apache": "apache_kafka", "tansu": "kafka"}
SESSION_FIXTURES = {"apache": "apache_kafka_broker", "tansu": "kafka_broker"}
KEEP_FOREVER = {"retention.ms": "-1"}  # Apache Kafka topic config: no time retention


@dataclass
class Broker:
    """A running broker of either kind, named; delegates to its service."""

    name: BrokerName
    service: Any  # KafkaService | ApacheKafkaService

    @property
    def bootstrap(self) -> str:
        return str(self.service.bootstrap)

    @property
    def is_apache(self) -> bool:
        return self.name == "apache"

    def new_topic(self, partitions: int = 1, prefix: str = "t") -> str:
        """A uniquely named topic, created and ready (never deleted by time retention)."""
        if self.is_apache:
            return str(self.service.new_topic(partitions, prefix, config=KEEP_FOREVER))
        return str(self.service.new_topic(partitions, prefix))

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` (for code that names its own topics; creating it again is a no-op
        there, as aiokafka's admin returns the error instead of raising)."""
        if self.is_apache:
            asyncio.run(self.service.acreate_topic(name, partitions, KEEP_FOREVER))
        else:
            asyncio.run(create_topic(self.bootstrap, name, partitions))

    def produce(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        partition: int | None = None,
        keys: Sequence[bytes | None] | None = None,
        timestamps_ms: Sequence[int | None] | None = None,
    ) -> list[tuple[int, int]]:
        """Produce synchronously; (partition, offset) per record, in order."""
        got: list[tuple[int, int]] = self.service.produce(
            topic, values, partition=partition, keys=keys, timestamps_ms=timestamps_ms
        )
        return got

    async def aproduce(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        partition: int | None = None,
        keys: Sequence[bytes | None] | None = None,
        timestamps_ms: Sequence[int | None] | None = None,
    ) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = await self.service.aproduce(
            topic, values, partition=partition, keys=keys, timestamps_ms=timestamps_ms
        )
        return got


def broker_params(default: Sequence[BrokerName] = BROKERS) -> list[Any]:
    """``pytest.param`` per broker with its marker; brokers not in ``default`` are also slow."""
    unknown = set(default) - set(BROKERS)
    if unknown:
        raise ValueError(f"unknown broker(s) {sorted(unknown)}; known: {BROKERS}")
    return [
        pytest.param(
            name,
            id=name,
            marks=[MARKS[name]] if name in default else [MARKS[name], pytest.mark.slow],
        )
        for name in BROKERS
    ]


def session_broker(request: pytest.FixtureRequest) -> Broker:
    """The session's broker named by ``request.param`` (for module- or session-scoped fixtures
    parametrised with :func:`broker_params`)."""
    name: BrokerName = request.param
    return Broker(name, request.getfixturevalue(SESSION_FIXTURES[name]))


def both_brokers(default: Sequence[BrokerName] = BROKERS) -> Callable[..., Broker]:
    """A ``broker`` fixture over both brokers, ``default`` ones in the default run (assign it to
    the name ``broker`` in a test module)."""

    @pytest.fixture(params=broker_params(default))
    def broker(request: pytest.FixtureRequest) -> Broker:
        name: BrokerName = request.param
        return Broker(name, request.getfixturevalue(SERVICE_FIXTURES[name]))

    return broker  # type: ignore[no-any-return]


broker = both_brokers()
