"""A run's outcome as the CLI judges it: input that went entirely to dead letters is a failure.

:class:`DeadLetterLog` watches the dead-letter outputs of a job's nodes (source, filter, select)
through small counting sinks — stateless, so checkpoints are unaffected — and keeps the first
dead letter's reason and position. :func:`all_dead_lettered` says whether every input record of a
finished run went to dead letters (records in > 0, none left the main flow).
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from ..pipeline import Stream
from ..sinks.base import Sink

log = logging.getLogger("lambdasource")


class DeadLetterLog:
    """Counts the dead letters of the streams it watches; keeps the first one's reason."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def watch(self, stream: Stream) -> None:
        """Count ``stream``'s dead letters (its node's failed records) from now on."""
        stream.dead_letters().sink(_DeadLetterCounter(self))

    def record(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.count += batch.num_rows
        if self.first is None:
            reason = batch.column("_error")[0].as_py()
            position = batch.column("_position")[0].as_py()
            self.first = f"{reason} at {position}" if position else str(reason)
            log.warning("dead letter (further ones are only counted): %s", self.first)


class _DeadLetterCounter(Sink):
    name = "dead_letters"

    def __init__(self, into: DeadLetterLog) -> None:
        self.into = into

    async def write(self, batch: pa.RecordBatch) -> None:
        self.into.record(batch)


def input_records(metrics: dict[str, Any]) -> int:
    """Records the sources read: emitted plus dead-lettered at the source."""
    return sum(
        int(s.get("records_out") or 0) + int(s.get("dead_letters") or 0)
        for s in (metrics.get("sources") or {}).values()
    )


def all_dead_lettered(metrics: dict[str, Any]) -> bool:
    """Whether a run read records and every one of them went to dead letters."""
    records = input_records(metrics)
    return records > 0 and int(metrics.get("dead_letters") or 0) >= records


def all_dead_lettered_message(metrics: dict[str, Any], first: str | None) -> str:
    """One line for the CLI: the count and the first reason."""
    return (
        f"all {input_records(metrics):,} input records went to dead letters, nothing was "
        f"written (first: {first or 'reason not recorded'})"
    )
