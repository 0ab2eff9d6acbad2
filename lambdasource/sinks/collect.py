"""``ls.CollectSink``: keeps every row it receives, in order (tests and notebooks)."""

from __future__ import annotations

import pyarrow as pa

from .base import Sink


class CollectSink(Sink):
    """Keeps batches in memory; ``table()`` returns them as one table, in arrival order.

    ``watermarks`` lists every watermark received, in order; ``batches`` the raw batches.
    """

    name = "collect"
    single_writer = True  # rows stay in the process that received them

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.watermarks: list[int] = []
        self.schema: pa.Schema | None = None

    def _fresh_for_task(self, task_id: str) -> None:
        self.batches = []
        self.watermarks = []

    def bind(self, schema: pa.Schema | None) -> None:
        self.schema = schema

    async def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.batches.append(batch)

    async def on_watermark(self, watermark: int) -> None:
        self.watermarks.append(watermark)

    def table(self) -> pa.Table:
        """Every row received, in order (an empty table with the input schema when none came)."""
        if self.batches:
            return pa.Table.from_batches(self.batches).combine_chunks()
        if self.schema is not None:
            return self.schema.empty_table()
        return pa.table({})

    def __len__(self) -> int:
        return sum(b.num_rows for b in self.batches)
