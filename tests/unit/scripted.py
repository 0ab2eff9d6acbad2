"""A source that plays a script of batches, watermarks and awaitables (for runtime tests)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa

import lambdasource as ls

SCHEMA = pa.schema([("ts", pa.timestamp("us", tz="UTC")), ("k", pa.int64()), ("x", pa.int64())])


def batch(*rows: tuple[int, int, int]) -> pa.RecordBatch:
    """Rows of (ts µs, k, x)."""
    ts, k, x = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
    return pa.RecordBatch.from_arrays(
        [
            pa.array(ts, pa.int64()).cast(SCHEMA.field("ts").type),
            pa.array(k, pa.int64()),
            pa.array(x, pa.int64()),
        ],
        schema=SCHEMA,
    )


class Scripted(ls.Source):
    def __init__(self, name: str, steps: list[Any], *, schema: pa.Schema = SCHEMA) -> None:
        self.name = name
        self.time_column = "ts"
        self.steps = steps
        self._schema = schema
        self.emitted = 0

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    async def run(self, out: ls.SourceOutput) -> None:
        for step in self.steps:
            if isinstance(step, pa.RecordBatch):
                await out.emit(step)
                self.emitted += 1
            elif isinstance(step, ls.Watermark):
                await out.emit_watermark(step.time, step.idle)
            else:
                fn: Callable[[], Awaitable[None]] = step
                await fn()
