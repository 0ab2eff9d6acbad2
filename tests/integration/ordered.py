"""What the operator or sink right after a source saw, in order — the oracle of the attack tests.

``EventLog`` keeps batches and watermarks as they arrived; ``ids()`` is the multiset of event
ids delivered, ``late()`` every row at or before a watermark delivered earlier. ``Recorder`` (a
pass-through operator) and ``OrderedSink`` (a CollectSink) share it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import lambdasource as ls

TIME = "event_time"
SCHEMA = pa.schema(
    [
        pa.field(TIME, pa.timestamp("us", tz="UTC")),
        pa.field("event_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("amount", pa.float64()),
    ]
)


class EventLog:
    """Batches and watermarks in arrival order; ``to_us`` turns an integer time column's values
    into µs (1000 for epoch milliseconds)."""

    to_us = 1

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def ids(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for kind, payload in self.events:
            if kind == "batch":
                out.update(payload.column("event_id").to_pylist())
        return out

    def last_watermark(self) -> int | None:
        marks = [payload for kind, payload in self.events if kind == "wm"]
        return marks[-1] if marks else None

    def micros(self, batch: pa.RecordBatch) -> np.ndarray:
        column = batch.column(TIME)
        if pa.types.is_timestamp(column.type):
            return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy()
        return pc.cast(column, pa.int64()).to_numpy() * self.to_us

    def late(self) -> list[tuple[int, int, int]]:
        """(event_id, time µs, watermark) of every row at or before an earlier watermark."""
        last: int | None = None
        bad: list[tuple[int, int, int]] = []
        for kind, payload in self.events:
            if kind == "wm":
                last = payload if last is None else max(last, payload)
            elif last is not None:
                times = self.micros(payload)
                ids = payload.column("event_id").to_numpy()
                bad += [(int(ids[i]), int(times[i]), last) for i in np.flatnonzero(times <= last)]
        return bad

    def worst_lead(self) -> int:
        """Largest lead of a batch's newest row over the watermark in force (batches before the
        first watermark measured against it)."""
        worst = -(2**62)
        pending: list[pa.RecordBatch] = []
        mark: int | None = None
        for kind, payload in self.events:
            if kind == "wm":
                mark = payload
                for batch in pending:
                    worst = max(worst, int(self.micros(batch).max()) - mark)
                pending = []
            elif mark is None:
                pending.append(payload)
            else:
                worst = max(worst, int(self.micros(payload).max()) - mark)
        return worst


class Recorder(EventLog, ls.Operator):
    """Pass-through that logs batches and watermarks in the order this operator sees them."""

    def __init__(self) -> None:
        ls.Operator.__init__(self)
        EventLog.__init__(self)

    def on_batch(self, batch: pa.RecordBatch, ctx: Any) -> None:
        if batch.num_rows:
            self.events.append(("batch", batch))
        ctx.emit(batch)

    def on_watermark(self, watermark: int, ctx: Any) -> None:
        self.events.append(("wm", watermark))
        ctx.emit_watermark(watermark)


class OrderedSink(EventLog, ls.CollectSink):
    """CollectSink that also logs batches and watermarks in the order it saw them."""

    def __init__(self, to_us: int = 1) -> None:
        ls.CollectSink.__init__(self)
        EventLog.__init__(self)
        self.to_us = to_us

    async def write(self, batch: pa.RecordBatch) -> None:
        await ls.CollectSink.write(self, batch)
        if batch.num_rows:
            self.events.append(("batch", batch))

    async def on_watermark(self, watermark: int) -> None:
        await ls.CollectSink.on_watermark(self, watermark)
        self.events.append(("wm", watermark))
