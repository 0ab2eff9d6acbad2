"""``ls.ParquetSink``: append rows as hour-partitioned Parquet (``dt=YYYY-MM-DD/hour=HH/``).

Each flush writes one file per hour it holds, named ``part-<flush time>-<uuid>.parquet`` so files
never collide (several writers, restarts). Rows are appended as they come: no keys, no coalescing;
a replay appends again (use an upsert sink for idempotence). Local paths, ``file://`` and
``s3://bucket/prefix`` (with ``s3=ls.S3Config(...)``) are accepted; writes run in a thread.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SchemaError
from ..s3 import S3Config, split_s3_url
from ..timeutil import HOUR, Duration, micros_array, normalize_time_array
from .upsert import ApplyResult, BufferedSink


class ParquetSink(BufferedSink):
    """Append to hour partitions of ``time_column`` under ``path``."""

    kind = "parquet"
    single_writer = False  # file names never collide: any number of writers may append
    files_written: list[str]

    def _fresh_for_task(self, task_id: str) -> None:
        super()._fresh_for_task(task_id)
        self.files_written = []

    def __init__(
        self,
        path: str | Path,
        time_column: str,
        s3: S3Config | None = None,
        *,
        batch_rows: int = 250_000,
        flush_interval: Duration = "10s",
        compression: str = "zstd",
        name: str | None = None,
    ) -> None:
        super().__init__(
            target=str(path), batch_rows=batch_rows, flush_interval=flush_interval, name=name
        )
        self.time_column = time_column
        self.compression = compression
        self.files_written = []
        text = str(path)
        if text.startswith(("s3://", "s3a://")):
            bucket, prefix = split_s3_url(text)
            self._fs: Any = (s3 or S3Config()).pyarrow_filesystem()
            self._root = f"{bucket}/{prefix}".rstrip("/")
        else:
            from pyarrow import fs

            local = urlparse(text).path if text.startswith("file://") else text
            self._fs = fs.LocalFileSystem()
            self._root = str(Path(local).absolute())

    def bind(self, schema: pa.Schema | None) -> None:
        if schema is not None and self.time_column not in schema.names:
            raise SchemaError(
                f"ParquetSink(path={self.target}): time column {self.time_column!r} not in "
                f"{schema.names}"
            )

    async def _apply(self, table: pa.Table) -> ApplyResult:
        return await asyncio.to_thread(self._write_sync, table)

    def _write_sync(self, table: pa.Table) -> ApplyResult:
        if self.time_column not in table.column_names:
            raise SchemaError(f"ParquetSink: time column {self.time_column!r} missing from a batch")
        times = normalize_time_array(table.column(self.time_column))
        if times.null_count:
            raise SchemaError(
                f"ParquetSink(path={self.target}): {times.null_count} rows have a null "
                f"{self.time_column!r}"
            )
        micros = micros_array(times)
        order = np.argsort(micros, kind="stable")  # files sorted by event time, as the lake's
        hours = micros // HOUR
        hours_sorted = hours[order]
        table = table.take(pa.array(order))
        bounds = np.flatnonzero(np.diff(hours_sorted)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(hours_sorted)]])
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            hour = datetime.fromtimestamp(int(hours_sorted[start]) * 3600, tz=UTC)
            directory = f"{self._root}/dt={hour:%Y-%m-%d}/hour={hour:%H}"
            self._fs.create_dir(directory, recursive=True)
            path = f"{directory}/part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
            pq.write_table(
                table.slice(start, end - start),
                path,
                filesystem=self._fs,
                compression=self.compression,
            )
            self.files_written.append(path)
        return ApplyResult(written=table.num_rows)

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "files_written": len(self.files_written)}
