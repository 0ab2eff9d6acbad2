"""Where a shard starts and what a checkpoint holds: start parsing, the retained-range check, the
time lookup and the snapshot's plain-data form (sequence numbers as decimal strings).

A start is a :data:`PartitionStart`: ``("trim_horizon", 0)``, ``("latest", 0)``,
``("position", next sequence number)`` or ``("time", µs)``; KafkaStream's kinds ``"earliest"``
and ``"offset"`` (what the lambda source passes) mean the first and the third.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ...errors import ConfigError, StreamGapError
from ...timeutil import MS, to_micros
from .reader import ShardReader
from .shards import shard_number

log = logging.getLogger("lambdasource.kinesis")

PartitionStart = tuple[str, int]
"""``("trim_horizon"|"earliest", 0)``, ``("latest", 0)``, ``("position"|"offset", n)``, ``("time", µs)``."""

_KINDS = {"earliest": "trim_horizon", "offset": "position"}


def normal_start(start: PartitionStart) -> PartitionStart:
    """KafkaStream's start kinds in Kinesis' words."""
    kind, value = start
    return _KINDS.get(kind, kind), int(value)


def shard_key(key: Any) -> int:
    """A shard number, from a number or a ``shardId-…`` id."""
    return key if isinstance(key, int) else shard_number(str(key))


def parse_start(start: Any) -> Callable[[int], PartitionStart]:
    """The constructor's ``start`` as a function of the shard number."""
    if start in ("trim_horizon", "earliest", "latest"):
        kind = _KINDS.get(start, start)
        return lambda number: (kind, 0)
    if isinstance(start, dict):
        positions = {shard_key(k): int(v) for k, v in start.items()}
        return lambda n: ("position", positions[n]) if n in positions else ("trim_horizon", 0)
    if isinstance(start, datetime | int) and not isinstance(start, bool):
        micros = to_micros(start)
        return lambda number: ("time", micros)
    raise ConfigError(
        "KinesisStream: start must be 'trim_horizon' ('earliest'), 'latest', {shard: next "
        f"sequence number}}, a datetime or µs since the epoch, got {start!r}"
    )


def check_start(
    where: str, position: int, retained: tuple[int | None, int | None], *, allow_gaps: bool
) -> int | None:
    """Raise :class:`StreamGapError` when ``position`` lies outside the shard's retained range
    ``(first retained record, closed end)``: beyond a closed shard's end (the stream was
    recreated), or below the first retained record (trimmed before it was read — conservative on
    real Kinesis, whose sequence numbers are sparse). With ``allow_gaps``, the position to
    continue from instead of a trimmed one (None: ``position`` is fine)."""
    begin, end = retained
    if end is not None and position > end:
        raise StreamGapError(
            f"{where}: start sequence number {position} is beyond the closed shard's end "
            f"{end}: sequence numbers {end}..{position - 1} do not exist (was the stream "
            "deleted and recreated?); start it elsewhere (restore=None, or start='trim_horizon')"
        )
    if begin is None or position >= begin:
        return None
    if not allow_gaps:
        raise StreamGapError(
            f"{where}: sequence numbers {position}..{begin - 1} were trimmed (retention) "
            f"before they were read; the first retained record is {begin}; pass "
            "allow_gaps=True to continue from there"
        )
    log.warning("%s: sequence numbers %d..%d were trimmed before read", where, position, begin - 1)
    return begin


async def lookup_time(probe: ShardReader, micros: int, max_calls: int = 20) -> dict[str, Any]:
    """The first record that arrived at or after ``micros`` (AT_TIMESTAMP), checked: its arrival
    time is at or after the time (``verified``). ``offset`` None: no such record yet."""
    await probe.seek("time", micros)
    found = None
    for _ in range(max_calls):
        fetch = await probe.read()
        if fetch.records or fetch.ended or fetch.millis_behind_latest == 0:
            found = fetch.records[0] if fetch.records else None
            break
    return {
        "time_us": micros,
        "offset": None if found is None else found.offset,
        "arrival_ms": None if found is None else found.timestamp,
        "verified": found is None or found.timestamp >= micros // MS,
    }


def decode_snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A snapshot (sequence numbers as decimal strings or ints, keys as str or int) as ints."""
    raw = dict(state)

    def ints(name: str) -> dict[int, Any]:
        return {int(k): v for k, v in (raw.get(name) or {}).items()}

    return {
        "positions": {n: int(v) for n, v in ints("positions").items()},
        "held": ints("held"),
        "unread": {n: (str(v[0]), int(v[1])) for n, v in ints("unread").items()},
        "finished": {n: None if v is None else int(v) for n, v in ints("finished").items()},
        "carried": {n: None if v is None else int(v) for n, v in ints("carried").items()},
    }
