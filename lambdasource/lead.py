"""``ls.LeadMeter``: how far records run ahead of the watermark, measured where a user sees it.

A stateless pass-through operator. For each batch it records the lead of the batch's newest
record over the watermark in force at this operator (the last one it received); batches that
arrive before the first watermark are measured against that first watermark when it comes.
Put it right after a source to check alignment's bound (DESIGN §3: no record leaves the lambda
source more than ``max_drift`` + out_of_orderness ahead of the global watermark) — it measures
the output, not the source's own counters.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .operator import Context, Operator


class LeadMeter(Operator):
    """Pass-through; ``max_lead_us`` is the largest lead seen (None before any measurement);
    ``batches_beyond`` counts the batches whose lead exceeded ``bound_us`` (when given)."""

    stateful = False

    def __init__(self, time_column: str, bound_us: int | None = None) -> None:
        super().__init__()
        self.time_column = time_column
        self.bound_us = bound_us
        self.max_lead_us: int | None = None
        self.batches_beyond = 0
        self.batches = 0
        self._watermark: int | None = None
        self._pending: list[int] = []  # newest times of batches before the first watermark

    def on_batch(self, batch: pa.RecordBatch, ctx: Context) -> None:
        if batch.num_rows:
            newest = pc.max(batch.column(self.time_column))
            if newest.is_valid:
                micros = int(newest.cast(pa.int64()).as_py())
                if self._watermark is None:
                    self._pending.append(micros)
                else:
                    self._measure(micros)
        ctx.emit(batch)

    def on_watermark(self, watermark: int, ctx: Context) -> None:
        self._watermark = watermark
        pending, self._pending = self._pending, []
        for micros in pending:
            self._measure(micros)
        super().on_watermark(watermark, ctx)

    def _measure(self, newest: int) -> None:
        assert self._watermark is not None
        lead = newest - self._watermark
        self.batches += 1
        if self.max_lead_us is None or lead > self.max_lead_us:
            self.max_lead_us = lead
        if self.bound_us is not None and lead > self.bound_us:
            self.batches_beyond += 1

    def metrics(self) -> dict[str, Any]:
        return {
            "max_lead_us": self.max_lead_us,
            "bound_us": self.bound_us,
            "batches": self.batches,
            "batches_beyond_bound": self.batches_beyond,
        }
