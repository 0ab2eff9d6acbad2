"""What flows on the edges of the operator graph besides Arrow ``RecordBatch``es.

Invariants: on any edge, watermarks never go backwards; ``End`` is the last message on an edge;
a ``Barrier`` with id ``n`` follows every message that belongs before checkpoint ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Watermark:
    """No further record with event time ``<= time`` (µs, UTC) is expected on this edge.

    ``idle=True`` marks the input idle (caught up and quiet, never merely paused): it then stops
    holding back the minimum of a multi-input operator until it sends a non-idle watermark again.
    """

    time: int
    idle: bool = False


@dataclass(frozen=True, slots=True)
class Barrier:
    """Checkpoint barrier ``checkpoint_id``; operators snapshot when all inputs delivered it."""

    checkpoint_id: int


@dataclass(frozen=True, slots=True)
class End:
    """The edge is finished (a bounded input reached its end); nothing follows."""


Message = pa.RecordBatch | Watermark | Barrier | End
