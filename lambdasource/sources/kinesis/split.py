"""One Kinesis shard as a split: Kafka's :class:`~..kafka.split.PartitionSplit` (partition = shard
number, offsets = sequence numbers as Python ints; held offsets are an int64 array, or dtype=object
once a sequence number exceeds 2**63-1) with Kinesis' notion of caught up.

Caught up: the last GetRecords answer for the shard was empty and reported ``MillisBehindLatest``
0 (Kinesis has no highwater offset; a non-empty answer may report 0 with more records to read —
the value has millisecond resolution). Idle, as for Kafka: caught up,
confirmed by an answer within ``confirm_window``, quiet for ``idle_timeout``, not paused.

Lifecycle: ``ended`` once its reader read the closed shard to its end (or a bounded read reached
its stop) and no held row is left; ``finished`` (out of the watermark minimum) only once every
child shard of it has a split — a merge's child starts after both parents ended, and until then
the parent that ended first keeps holding the watermark at its own, so the keys it hands over
are not late when the child starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kafka.split import PartitionSplit

INT64_MAX = 2**63 - 1


def offsets_array(sequences: list[int]) -> np.ndarray:
    """Sequence numbers as an array: int64 when they fit, else dtype=object (Python ints)."""
    if sequences and (max(sequences) > INT64_MAX or min(sequences) < -INT64_MAX):
        return np.array(sequences, dtype=object)
    return np.array(sequences, dtype=np.int64)


@dataclass
class ShardSplit(PartitionSplit):
    """Mutable state of one shard (see module docstring); owned by the stream's drive loop."""

    shard_id: str = ""
    millis_behind_latest: int | None = None
    at_tip: bool = False  # the last answer was empty, 0 ms behind
    ended: bool = False
    stop_reached: bool = False  # bounded: everything before the stop was read
    carried: int | None = None  # the watermark carried over from its parents (a floor)

    @property
    def key(self) -> str:
        return f"partition={self.partition}"

    @property
    def caught_up(self) -> bool:
        return self.at_tip

    @property
    def lag(self) -> int | None:
        return self.millis_behind_latest

    def metrics(self) -> dict[str, Any]:
        values = super().metrics()
        values.update(
            {
                "shard_id": self.shard_id,
                "position": None if self.position is None else str(self.position),
                "start": None if self.start is None else str(self.start),
                "millis_behind_latest": self.millis_behind_latest,
                "ended": self.ended,
                "carried_watermark": self.carried,
            }
        )
        values.pop("highwater", None)
        values.pop("lag", None)
        return values
