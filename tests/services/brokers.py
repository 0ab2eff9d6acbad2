"""One Kafka-facing suite, two brokers: the ``broker`` fixture runs a test on Apache Kafka 4 and
on Tansu.

``broker`` yields a :class:`Broker`: the helper surface both services share (``bootstrap``,
``new_topic``, ``produce``/``aproduce``) plus ``name`` (``"apache"`` or ``"tansu"``) and
``service`` (the broker's own service object, for what only one of them can do, e.g. Apache
Kafka's ``add_partitions``). Test ids end in ``[apache]`` / ``[tansu]``; each param carries the
broker's marker (``apache_kafka`` / ``kafka``), so ``-m "not apache_kafka"`` runs Tansu only.
A broker starts once per session, and only when a selected test asks for it.

Which brokers run where is chosen per test module::

    broker = both_brokers(default=("apache",))  # Apache Kafka in the default run; Tansu in -m slow

A broker outside ``default`` gets ``pytest.mark.slow``, so the default run (``-m "not slow"``)
runs the module on the ``default`` brokers and ``-m slow`` (or no ``-m``) adds the others.
Modules that do not assign their own ``broker`` get the plugin's: both brokers in the default run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import pytest

BrokerName = Literal["apache", "tansu"]
BROKERS: tuple[BrokerName, ...] = ("apache", "tansu")
MARKS = {"apache": pytest.mark.apache_kafka, "tansu": pytest.mark.kafka}
SERVICE_FIXTURES = {"apache": "apache_kafka", "tansu": "kafka"}


class BrokerService(Protocol):
    """What ``KafkaService`` (Tansu) and ``ApacheKafkaService`` both offer."""

    @property
    def bootstrap(self) -> str: ...

    def new_topic(self, partitions: int = 1, prefix: str = "t") -> str: ...

    def produce(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        partition: int | None = None,
        keys: Sequence[bytes | None] | None = None,
        timestamps_ms: Sequence[int | None] | None = None,
    ) -> list[tuple[int, int]]: ...

    async def aproduce(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        partition: int | None = None,
        keys: Sequence[bytes | None] | None = None,
        timestamps_ms: Sequence[int | None] | None = None,
    ) -> list[tuple[int, int]]: ...


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
        return str(self.service.new_topic(partitions, prefix))

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


def both_brokers(default: Sequence[BrokerName] = BROKERS) -> Callable[..., Broker]:
    """A ``broker`` fixture over both brokers, ``default`` ones in the default run (assign it to
    the name ``broker`` in a test module)."""

    @pytest.fixture(params=broker_params(default))
    def broker(request: pytest.FixtureRequest) -> Broker:
        name: BrokerName = request.param
        return Broker(name, request.getfixturevalue(SERVICE_FIXTURES[name]))

    return broker  # type: ignore[no-any-return]


broker = both_brokers()
