"""A worker's membership of the job's Kafka consumer group: Kafka decides who owns which partition.

:class:`GroupMembership` is an aiokafka consumer with ``group_id`` subscribed to the job's topic
with a rebalance listener. It never consumes data: every assigned partition is paused as soon as
it is assigned (positions start at the end, ``auto_offset_reset="latest"``, fetches are capped
at a few KB, and anything fetched before the pause is dropped), no offset is ever committed, and
the tasks read their partitions with their own consumers (``KafkaStream(partitions=[p])``).

How aiokafka 0.14 drives the group (``consumer/group_coordinator.py``): a background
*coordination routine* joins the group and rejoins when a rebalance is needed; a *heartbeat
routine* heartbeats every ``heartbeat_interval`` and is stopped only after the revoke callback,
so the member stays alive while its tasks checkpoint. A member that stops calling
``getmany`` for ``max_poll_interval`` (measured by ``fetcher_idle_time``, which is zero while a
``getmany`` is waiting) leaves the group; :meth:`GroupMembership.run` therefore keeps a
``getmany`` outstanding at all times.

Eager rebalancing, one owner per partition. aiokafka implements only the eager protocol (no
cooperative-sticky assignor), and ``_on_join_prepare`` *awaits* ``on_partitions_revoked(all
partitions)`` before it sends the JoinGroup request. The new assignment is computed by the
group leader only after every member has rejoined (or was expelled after ``rebalance_timeout``
/ ``session_timeout``), so a partition's old task has stopped — checkpointed — before any
member is given that partition: two running tasks never own one partition, provided a revoke
ends within ``rebalance_timeout`` (the tasks' ``stop_timeout`` is kept below it). The price of
eager rebalancing: every rebalance stops *all* tasks of every worker with a checkpoint and
starts the new assignment from those checkpoints, also the partitions that stay put.

A member that dies (kill -9) stops heartbeating; after ``session_timeout`` the broker expels it
and rebalances, and the survivors restore its partitions from their checkpoints. A member that
leaves cleanly (``stop()``) sends LeaveGroup: the rebalance starts at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from ..errors import ConfigError, ScaleOutError
from ..kafka_security import KafkaSecurity
from ..timeutil import Duration, parse_duration

log = logging.getLogger("lambdasource.scaleout")

_REJOINED = (IllegalGenerationError, RebalanceInProgressError, UnknownMemberIdError)
"""Errors that only mean the member must rejoin (aiokafka does)."""

PartitionsCallback = Callable[[set[int]], Awaitable[None]]


def _ms(value: Duration, name: str) -> int:
    micros = parse_duration(value, name=name)
    if micros <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return max(1, micros // 1000)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: GroupMembership) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._assigned(assigned)


class GroupMembership:
    """Membership of ``group`` for ``topic`` (see the module docstring).

    ``on_revoked(partitions)`` is awaited before the member rejoins: when it returns, the
    worker must have stopped every task of those partitions. ``on_assigned(partitions)`` is
    awaited before heartbeats resume, so it must only schedule work. Timing:
    ``session_timeout`` (a dead member's partitions move after it), ``heartbeat_interval``
    (at most a third of it), ``rebalance_timeout`` (how long the broker waits for members to
    rejoin: longer than a revoke takes).
    """

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        group: str,
        on_revoked: PartitionsCallback,
        on_assigned: PartitionsCallback,
        *,
        security: KafkaSecurity | None = None,
        session_timeout: Duration = "10s",
        heartbeat_interval: Duration = "1s",
        rebalance_timeout: Duration = "60s",
        client_id: str | None = None,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        if not group:
            raise ConfigError("GroupMembership: group must be a non-empty string")
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.group = group
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned
        self.security = security
        self.session_timeout_ms = _ms(session_timeout, "session_timeout")
        self.heartbeat_interval_ms = _ms(heartbeat_interval, "heartbeat_interval")
        self.rebalance_timeout_ms = _ms(rebalance_timeout, "rebalance_timeout")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ConfigError(
                f"GroupMembership: heartbeat_interval ({self.heartbeat_interval_ms} ms) must be at "
                f"most a third of session_timeout ({self.session_timeout_ms} ms)"
            )
        self.client_id = client_id
        self.consumer_options = dict(consumer_options or {})
        self.assigned: set[int] = set()
        self.rebalances = 0
        self.retried = 0
        self.partitions: int | None = None
        self._consumer: AIOKafkaConsumer | None = None

    def _new_consumer(self) -> AIOKafkaConsumer:
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "latest",
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "rebalance_timeout_ms": self.rebalance_timeout_ms,
            "max_poll_interval_ms": max(self.rebalance_timeout_ms, 300_000),
            "partition_assignment_strategy": (RoundRobinPartitionAssignor,),
            "max_partition_fetch_bytes": 1024,
            "fetch_max_bytes": 16 * 1024,
            "fetch_max_wait_ms": 500,
        }
        if self.client_id is not None:
            options["client_id"] = self.client_id
        if self.security is not None:
            options.update(self.security.client_options())
        options.update(self.consumer_options)
        return AIOKafkaConsumer(**options)

    async def start(self) -> None:
        """Connect and subscribe (the join itself happens in :meth:`run`'s first ``getmany``)."""
        consumer = self._new_consumer()
        try:
            await consumer.start()
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise ScaleOutError(
                    f"group {self.group}: topic {self.topic!r} does not exist on "
                    f"{self.bootstrap_servers} (or has no partitions)"
                )
            self.partitions = len(partitions)
            consumer.subscribe([self.topic], listener=_Listener(self))
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def run(self) -> None:
        """Keep the membership alive until cancelled: one ``getmany`` always outstanding (the
        group's poll interval), records fetched before a pause dropped. Errors the group
        coordinator reports (authorisation, an unknown topic) are raised as ScaleOutError."""
        consumer = self._consumer
        if consumer is None:
            raise ScaleOutError("GroupMembership.run: call start() first")
        while True:
            try:
                fetched = await consumer.getmany(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                if not exc.retriable and not isinstance(exc, _REJOINED):
                    raise ScaleOutError(
                        f"group {self.group} on topic {self.topic}: {exc!r}"
                    ) from exc
                # the coordinator moved, a request timed out, a rebalance began: aiokafka
                # retries and rejoins by itself
                self.retried += 1
                log.info("group %s: %r (retried)", self.group, exc)
                continue
            except Exception as exc:
                raise ScaleOutError(f"group {self.group} on topic {self.topic}: {exc!r}") from exc
            if fetched:
                consumer.pause(*fetched)

    async def stop(self) -> None:
        """Leave the group (LeaveGroup: the others rebalance at once) and close.

        aiokafka calls ``on_partitions_revoked`` only on a rejoin, not when leaving: the caller
        stops its tasks first."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == self.topic}
        log.info("group %s: partitions %s revoked", self.group, sorted(partitions))
        self.assigned = set()
        await self._on_revoked(partitions)

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is not None and assigned:
            consumer.pause(*assigned)  # the tasks read the data, never this consumer
        partitions = {tp.partition for tp in assigned if tp.topic == self.topic}
        self.assigned = partitions
        self.rebalances += 1
        log.info("group %s: partitions %s assigned", self.group, sorted(partitions))
        await self._on_assigned(partitions)

    def metrics(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "topic": self.topic,
            "partitions": self.partitions,
            "assigned": sorted(self.assigned),
            "rebalances": self.rebalances,
            "retried_errors": self.retried,
        }
