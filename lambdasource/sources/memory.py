"""``ls.MemorySource``: a Table or list of RecordBatches as a bounded source with exact watermarks."""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, SchemaError
from ..timeutil import Duration, check_time_type, normalize_time_array, parse_duration, to_micros
from .base import Source, SourceOutput


class MemorySource(Source):
    """Emit ``data`` in the given order, in batches of ``batch_size`` rows (None: as given).

    Watermark rule (exact, so tests can state expectations): after each batch, emit
    ``max time so far − out_of_orderness`` when that advances (no watermark before the end when
    ``out_of_orderness`` is None); at the end emit ``until − 1µs`` if ``until`` is given, else the
    max time seen. Rows with a null time go to the dead letters.
    """

    name = "memory"

    def __init__(
        self,
        data: pa.Table | pa.RecordBatch | list[pa.RecordBatch],
        time_column: str,
        batch_size: int | None = None,
        out_of_orderness: Duration | None = None,
        until: Any = None,
        *,
        name: str = "memory",
    ) -> None:
        if isinstance(data, pa.RecordBatch):
            data = [data]
        if isinstance(data, list):
            if not data:
                raise ConfigError(
                    "MemorySource: data is an empty list; pass a Table to give a schema"
                )
            table = pa.Table.from_batches(data)
            given = data
        elif isinstance(data, pa.Table):
            table = data
            given = data.to_batches()
        else:
            raise ConfigError(
                f"MemorySource: expected a pyarrow Table or RecordBatches, got {data!r}"
            )
        if time_column not in table.schema.names:
            raise SchemaError(
                f"MemorySource: time column {time_column!r} not in columns {table.schema.names}"
            )
        check_time_type(table.schema.field(time_column).type, column=time_column, where=name)
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"MemorySource: batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.time_column = time_column
        self._table = table
        self._given = given
        self.batch_size = batch_size
        self.out_of_orderness = (
            None
            if out_of_orderness is None
            else parse_duration(out_of_orderness, name="out_of_orderness")
        )
        self.until = None if until is None else to_micros(until)
        self._position = 0  # batches emitted
        self._max_seen: int | None = None  # max event time emitted (restored with the position)

    @property
    def schema(self) -> pa.Schema:
        return self._table.schema

    def _batches(self) -> list[pa.RecordBatch]:
        if self.batch_size is None:
            return list(self._given)
        table = self._table.combine_chunks()
        return [
            table.slice(i, self.batch_size).to_batches()[0]
            if table.num_rows
            else pa.RecordBatch.from_pylist([], schema=table.schema)
            for i in range(0, table.num_rows, self.batch_size)
        ]

    async def run(self, out: SourceOutput) -> None:
        max_seen = self._max_seen
        batches = self._batches()
        for index in range(self._position, len(batches)):
            batch = batches[index]
            await out.emit(batch, position=f"batch={index}")
            self._position = index + 1
            times = normalize_time_array(batch.column(self.time_column))
            if len(times) - times.null_count > 0:
                top = pc.max(times).cast(pa.int64()).as_py()
                max_seen = top if max_seen is None else max(max_seen, top)
                self._max_seen = max_seen
            if self.out_of_orderness is not None and max_seen is not None:
                await out.emit_watermark(max_seen - self.out_of_orderness)
            await asyncio.sleep(0)  # let downstream tasks run between batches
        if self.until is not None:
            await out.emit_watermark(self.until - 1)
        elif max_seen is not None:
            await out.emit_watermark(max_seen)

    def snapshot(self) -> tuple[int, int | None]:
        return (self._position, self._max_seen)

    def restore(self, state: tuple[int, int | None] | int) -> None:
        if isinstance(state, int):
            self._position, self._max_seen = state, None
        else:
            self._position, self._max_seen = int(state[0]), state[1]
