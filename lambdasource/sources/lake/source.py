"""What every lake source shares: reading options, the decoder, the ordered reader, positions.

``ParquetLake`` and ``IcebergLake`` differ only in how they *plan* (list a directory vs scan an
Iceberg table) and where files live; once partitions are planned, both hand them to one
:class:`~.reader.LakeReader` through :meth:`LakeSource._load_files` and :meth:`_new_reader`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...errors import ConfigError, LakeReadError
from ...s3 import S3Config
from ...timeutil import TIME_TYPE, Duration, parse_duration
from ..base import Source
from .reader import (
    BATCH_ROWS,
    Chunk,
    Decoder,
    LakeFile,
    LakeMetrics,
    LakePartition,
    LakeReader,
    Position,
    load_file,
    quarantine_or_raise,
    time_bound,
)
from .storage import Storage


def declared_schema(
    schema: pa.Schema | None, columns: list[str] | None, time_column: str
) -> pa.Schema | None:
    """The declared schema restricted to ``columns`` with the time column as ``TIME_TYPE``."""
    if schema is None:
        return None
    if time_column not in schema.names:
        raise ConfigError(f"declared schema has no time column {time_column!r}")
    if columns is not None:
        keep = set(columns) | {time_column}
        schema = pa.schema([f for f in schema if f.name in keep], metadata=schema.metadata)
    index = schema.get_field_index(time_column)
    return schema.set(index, pa.field(time_column, TIME_TYPE, schema.field(index).nullable))


class LakeSource(Source):
    """Base of the lake sources: bounded, read in partition order with the watermark rules of
    :mod:`.reader`; ``snapshot()`` is the reader's :class:`~.reader.Position`."""

    bounded = True

    def __init__(
        self,
        *,
        name: str,
        time_column: str,
        start: Any,
        until: Any,
        s3: S3Config | None,
        out_of_orderness: Duration | None,
        columns: list[str] | None,
        filter: pc.Expression | None,
        schema: pa.Schema | None,
        prefetch: int,
        max_bytes_in_flight: int,
        on_corrupt: Literal["raise", "quarantine"],
        batch_size: int = BATCH_ROWS,
    ) -> None:
        if on_corrupt not in ("raise", "quarantine"):
            raise ConfigError(f"on_corrupt must be 'raise' or 'quarantine', got {on_corrupt!r}")
        if prefetch < 1:
            raise ConfigError(f"prefetch must be >= 1, got {prefetch}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.time_column = time_column
        self.start = time_bound(start)
        self.until = time_bound(until)
        if self.start is not None and self.until is not None and self.until <= self.start:
            raise ConfigError(f"lake={name}: until must be after start")
        self.s3 = s3
        self.out_of_orderness = (
            None
            if out_of_orderness is None
            else parse_duration(out_of_orderness, name="out_of_orderness")
        )
        self.columns = None if columns is None else list(columns)
        self.filter = filter
        self.declared = declared_schema(schema, self.columns, time_column)
        self.prefetch = prefetch
        self.max_bytes_in_flight = max_bytes_in_flight
        self.on_corrupt = on_corrupt
        self.batch_size = batch_size
        self._metrics = LakeMetrics()
        self._reader: LakeReader | None = None
        self._restored: Position | None = None

    @property
    def schema(self) -> pa.Schema | None:
        return self.declared

    def metrics(self) -> dict[str, Any]:
        return self._metrics.as_dict()

    def snapshot(self) -> dict[str, Any] | None:
        if self._reader is not None and self._reader.position is not None:
            return self._reader.position.to_dict()
        return None if self._restored is None else self._restored.to_dict()

    def restore(self, state: Any) -> None:
        self._restored = None if state is None else Position.from_dict(state)

    # reading ------------------------------------------------------------------------------------

    def _decoder(self, trust: bool) -> Decoder:
        return Decoder(
            time_column=self.time_column,
            start=self.start,
            until=self.until,
            columns=self.columns,
            filter=self.filter,
            schema=self.declared,
            trust_layout=trust,
        )

    def _new_reader(self, metrics: LakeMetrics, trust: bool) -> LakeReader:
        """The ordered reader of this run, resuming at the restored position if any."""
        reader = LakeReader(
            name=self.name,
            time_column=self.time_column,
            event_time_partitioned=trust,
            out_of_orderness=self.out_of_orderness,
            start=self.start,
            prefetch=self.prefetch,
            max_bytes_in_flight=self.max_bytes_in_flight,
            metrics=metrics,
            batch_rows=self.batch_size,
        )
        reader.restored = self._restored
        self._reader = reader
        return reader

    async def _load_files(
        self,
        files: list[LakeFile],
        partition: LakePartition,
        decoder: Decoder,
        metrics: LakeMetrics,
        storage_of: Callable[[LakeFile], Storage],
        plan: Callable[[LakeFile, pq.FileMetaData], None],
    ) -> list[Chunk]:
        """Load a partition's files concurrently; corrupt ones raise or are quarantined."""

        async def one(f: LakeFile) -> list[Chunk]:
            storage = storage_of(f)
            try:
                return await load_file(storage, f, partition, decoder, metrics, plan=plan)
            except LakeReadError as exc:
                quarantine_or_raise(
                    exc, storage.url(f.path), self.on_corrupt, metrics, name=self.name
                )
                return []

        results = await asyncio.gather(*(one(f) for f in files))
        return [c for chunks in results for c in chunks]
