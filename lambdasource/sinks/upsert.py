"""What every upsert sink shares: buffering, flush policy, per-key coalescing, retries, metrics.

Semantics (DESIGN §3 "Upserts"), identical for DuckDB, PostgreSQL and Iceberg:

* Every row carries a **version** (``version=`` column; default ``window_end`` for window output,
  the time column for raw rows — the backfill passes it). Null keys or versions are rejected.
* A flush first **coalesces** the buffered rows per key: the newest version wins and, on equal
  versions, the row that arrived later wins (:func:`coalesce`, vectorised).
* The store then keeps, per key, the event with the greatest ``(version, arrival)``: an incoming
  row (or deletion) is applied when ``incoming.version >= stored.version`` and rejected (counted in
  ``conflicts_skipped``) otherwise. A row never overwrites a newer version.
* Rows with ``_deleted = true`` remove their key. A deletion carries a version too, so it is kept
  as a **tombstone** (key + version) in a companion table ``<table>__deleted``: an older row that
  arrives later (a replay of an older range) is rejected by the tombstone instead of resurrecting
  the key; a newer row removes the tombstone. So replays are idempotent and never regress, and the
  store equals "per key, the newest event by (version, arrival), absent when it is a deletion".
* ``_deleted`` itself is not stored.

Flushing: rows are buffered and written when ``batch_rows`` rows are buffered, when
``flush_interval`` has passed since the last flush (also while the input is quiet: the runtime
wakes the sink at ``idle_deadline()``), and always on ``flush()`` (awaited before a checkpoint
completes and at the end of a run), which makes every write durable. Transient errors
(connection loss, serialization failures, commit conflicts) are retried with exponential backoff;
permanent ones raise :class:`~lambdasource.errors.SinkError` naming the table and a key.
"""

from __future__ import annotations

import abc
import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, LambdaSourceError, SchemaError, SinkError
from ..timeutil import Duration, parse_duration
from .base import Sink

DELETED = "_deleted"
TOMBSTONE_SUFFIX = "__deleted"
DEFAULT_VERSION = "window_end"
MAX_BACKOFF = 5.0  # seconds: the longest pause between two attempts of one flush
_jitter = random.Random()  # retry jitter only (no test depends on its values)


class RetriableSinkError(SinkError):
    """A sink failure that retrying the same write may fix (connection loss, commit conflict)."""

    retriable = True


@dataclass
class ApplyResult:
    """What one flush did to the store."""

    written: int = 0  # rows inserted or updated
    skipped: int = 0  # rows and deletions rejected as older than the stored version
    deletes: int = 0  # deletions applied


def as_key_list(key: str | Sequence[str], where: str) -> list[str]:
    """``"a"`` or ``["a", "b"]`` → a non-empty list of column names."""
    keys = [key] if isinstance(key, str) else list(key)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f"{where}: key must name at least one column, got {key!r}")
    if DELETED in keys:
        raise ConfigError(f"{where}: {DELETED!r} cannot be a key column")
    return keys


def coalesce(table: pa.Table, keys: Sequence[str], version: str) -> pa.Table:
    """One row per key: the greatest ``version``; on equal versions the later row (vectorised).

    Rows keep their arrival order and every column (including ``_deleted`` when present); a table
    whose keys are already unique is returned as is.
    """
    n = table.num_rows
    if n <= 1:
        return table
    order = pc.sort_indices(table.column(version))  # stable: arrival order kept on ties
    key_type = table.schema.field(keys[0]).type
    if len(keys) == 1 and (
        pa.types.is_integer(key_type)
        or pa.types.is_timestamp(key_type)
        or pa.types.is_date(key_type)
    ):
        ranked = table.column(keys[0]).combine_chunks().take(order)
        if not pa.types.is_integer(key_type):
            ranked = ranked.cast(pa.int64())
        values = np.asarray(ranked.to_numpy(zero_copy_only=False))
        by_key = np.argsort(values, kind="stable")
        grouped = values[by_key]
        last = np.flatnonzero(np.append(grouped[1:] != grouped[:-1], True))
        if len(last) == n:
            return table
        chosen = np.asarray(order)[by_key[last]]
    else:
        positions = pa.array(np.arange(n, dtype=np.int64))
        ranked_keys = pa.table(
            {**{k: table.column(k).take(order) for k in keys}, "__ls_pos": positions}
        )
        top = ranked_keys.group_by(list(keys), use_threads=False).aggregate([("__ls_pos", "max")])
        if top.num_rows == n:
            return table
        chosen = np.asarray(order)[np.asarray(top.column("__ls_pos_max"))]
    chosen.sort()
    return table.take(pa.array(chosen))


def deleted_mask(table: pa.Table) -> pa.Array:
    """The ``_deleted`` column as a non-null boolean array (all false when absent)."""
    if DELETED not in table.column_names:
        return pa.array(np.zeros(table.num_rows, dtype=bool))
    col = table.column(DELETED).combine_chunks()
    if not pa.types.is_boolean(col.type):
        raise SchemaError(f"column {DELETED!r} must be boolean, got {col.type}")
    return pc.fill_null(col, False)


def first_key(table: pa.Table, keys: Sequence[str]) -> str:
    """``"user_id=42"`` for the first row of ``table`` (messages name a key)."""
    if table.num_rows == 0:
        return "-"
    return " ".join(f"{k}={table.column(k)[0].as_py()!r}" for k in keys)


def _is_transient_default(exc: BaseException) -> bool:
    if isinstance(exc, LambdaSourceError):
        return exc.retriable
    return isinstance(exc, ConnectionError | TimeoutError)


class BufferedSink(Sink):
    """Buffers batches and writes them in flushes of up to ``batch_rows`` rows (subclass API:
    :meth:`_apply` writes one prepared table; :meth:`_is_transient` / :meth:`_reset` classify and
    recover from errors; :meth:`_prepare` turns the buffer into what ``_apply`` takes)."""

    kind = "sink"

    def __init__(
        self,
        *,
        target: str,
        batch_rows: int = 100_000,
        flush_interval: Duration = "1s",
        retries: int = 5,
        backoff: float = 0.1,
        name: str | None = None,
    ) -> None:
        if batch_rows < 1:
            raise ConfigError(f"{type(self).__name__}: batch_rows must be >= 1, got {batch_rows}")
        if retries < 0:
            raise ConfigError(f"{type(self).__name__}: retries must be >= 0, got {retries}")
        self.name = name or self.kind
        self.target = target
        self.batch_rows = batch_rows
        self.flush_interval = parse_duration(flush_interval, name="flush_interval") / 1e6
        self.retries = retries
        self.backoff = backoff
        self._fresh_runtime()

    def _fresh_runtime(self) -> None:
        """The buffer and counters of a new instance (also of each ``for_task`` copy)."""
        self.watermark: int | None = None
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._last_flush = time.monotonic()
        self._rows_in = 0
        self._rows_written = 0
        self._skipped = 0
        self._deletes = 0
        self._coalesced = 0
        self._batches = 0
        self._retried = 0
        self._latencies: list[float] = []

    def _fresh_for_task(self, task_id: str) -> None:
        self._fresh_runtime()

    # subclass API ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _apply(self, table: pa.Table) -> ApplyResult:
        """Write one prepared table durably (one transaction / commit where the store has them)."""

    def _prepare(self, table: pa.Table) -> pa.Table:
        return table

    def _is_transient(self, exc: BaseException) -> bool:
        return _is_transient_default(exc)

    async def _reset(self) -> None:
        """Recover after a transient error (e.g. reconnect) before the retry."""

    def _describe(self, table: pa.Table) -> str:
        return f"{table.num_rows} rows"

    # Sink -----------------------------------------------------------------------------------------

    async def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._buffer.append(batch)
        self._buffered += batch.num_rows
        self._rows_in += batch.num_rows
        if self._buffered >= self.batch_rows or self._due():
            await self._flush_buffer()

    async def on_watermark(self, watermark: int) -> None:
        self.watermark = watermark
        if self._buffered and self._due():
            await self._flush_buffer()

    async def flush(self) -> None:
        await self._flush_buffer()

    def idle_deadline(self) -> float | None:
        # asyncio's loop.time() is time.monotonic() (the clock _last_flush uses)
        return self._last_flush + self.flush_interval if self._buffered else None

    async def on_idle(self) -> None:
        if self._buffered and self._due():
            await self._flush_buffer()

    def _due(self) -> bool:
        return time.monotonic() - self._last_flush >= self.flush_interval

    async def _flush_buffer(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        try:
            table = pa.Table.from_batches(self._buffer)
        except pa.ArrowInvalid as exc:
            raise SchemaError(
                f"sink={self.name} table={self.target}: batches of different schemas: {exc}"
            ) from exc
        prepared = self._prepare(table)
        started = time.perf_counter()
        result = await self._with_retries(prepared)
        self._latencies.append(time.perf_counter() - started)
        self._buffer.clear()
        self._buffered = 0
        self._batches += 1
        self._rows_written += result.written
        self._skipped += result.skipped
        self._deletes += result.deletes

    def _retry_pause(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (0-based): exponential from ``backoff``, capped at
        :data:`MAX_BACKOFF`, with ±50 % jitter so writers that conflicted do not retry in step."""
        return min(self.backoff * 2**attempt, MAX_BACKOFF) * (0.5 + _jitter.random())

    async def _with_retries(self, table: pa.Table) -> ApplyResult:
        """``_apply`` with up to ``retries`` retries of transient errors (after ``_reset``); a
        permanent error, or a transient one after the last retry, is a SinkError naming the
        sink, the table, the attempts and a key (schema and config errors pass unchanged)."""
        attempt = 0
        while True:
            try:
                return await self._apply(table)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._is_transient(exc) and attempt < self.retries:
                    self._retried += 1
                    await asyncio.sleep(self._retry_pause(attempt))
                    attempt += 1
                    await self._reset()
                    continue
                if isinstance(exc, SchemaError | ConfigError):
                    raise
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise SinkError(
                    f"sink={self.name} table={self.target}: writing {self._describe(table)} "
                    f"failed{tries}: {type(exc).__name__}: {exc}"
                ) from exc

    def metrics(self) -> dict[str, Any]:
        lat = self._latencies
        return {
            "table": self.target,
            "rows_in": self._rows_in,
            "rows_written": self._rows_written,
            "conflicts_skipped": self._skipped,
            "coalesced": self._coalesced,
            "deletes": self._deletes,
            "batches": self._batches,
            "retries": self._retried,
            "buffered_rows": self._buffered,
            "flush_latency_mean_s": (sum(lat) / len(lat)) if lat else None,
            "flush_latency_max_s": max(lat) if lat else None,
        }


class UpsertSink(BufferedSink):
    """Base of the keyed upsert sinks (semantics in the module docstring)."""

    def __init__(
        self,
        *,
        table: str,
        key: str | Sequence[str],
        version: str | None = None,
        batch_rows: int = 100_000,
        flush_interval: Duration = "1s",
        retries: int = 5,
        backoff: float = 0.1,
        name: str | None = None,
    ) -> None:
        if not table or not isinstance(table, str):
            raise ConfigError(f"{type(self).__name__}: table must be a non-empty string")
        super().__init__(
            target=table,
            batch_rows=batch_rows,
            flush_interval=flush_interval,
            retries=retries,
            backoff=backoff,
            name=name,
        )
        self.table = table
        self.keys = as_key_list(key, type(self).__name__)
        self.version = version
        self.schema: pa.Schema | None = None

    def _where(self) -> str:
        return f"{type(self).__name__}(table={self.table})"

    def bind(self, schema: pa.Schema | None) -> None:
        if schema is not None:
            self._check_schema(schema)

    def _check_schema(self, schema: pa.Schema) -> None:
        """Resolve the version column and check keys and version exist (ConfigError otherwise)."""
        for k in self.keys:
            if k not in schema.names:
                raise SchemaError(
                    f"{self._where()}: key column {k!r} is not in the stream's columns {schema.names}"
                )
        if self.version is None:
            if DEFAULT_VERSION not in schema.names:
                raise ConfigError(
                    f"{self._where()}: cannot determine the version column; pass version=... "
                    f"(the default {DEFAULT_VERSION!r} exists only for window output; use the "
                    "time column for raw rows)"
                )
            self.version = DEFAULT_VERSION
        if self.version not in schema.names:
            raise SchemaError(
                f"{self._where()}: version column {self.version!r} is not in the stream's "
                f"columns {schema.names}"
            )
        if self.version == DELETED:
            raise ConfigError(f"{self._where()}: version cannot be {DELETED!r}")
        self.schema = schema

    @property
    def stored_columns(self) -> list[str]:
        assert self.schema is not None
        return [n for n in self.schema.names if n != DELETED]

    def _prepare(self, table: pa.Table) -> pa.Table:
        if self.schema is None or self.version is None:
            self._check_schema(table.schema)
        assert self.version is not None
        for column in [*self.keys, self.version]:
            if column not in table.column_names:
                raise SchemaError(f"{self._where()}: column {column!r} missing from a batch")
            nulls = table.column(column).null_count
            if nulls:
                raise SinkError(
                    f"{self._where()}: {nulls} rows have a null {column!r} "
                    "(key and version columns must not be null)"
                )
        mask = deleted_mask(table)
        if DELETED in table.column_names:
            table = table.set_column(table.schema.get_field_index(DELETED), DELETED, mask)
        else:
            table = table.append_column(DELETED, mask)
        coalesced = coalesce(table, self.keys, self.version)
        self._coalesced += table.num_rows - coalesced.num_rows
        return coalesced

    def _describe(self, table: pa.Table) -> str:
        return f"{table.num_rows} rows (first key {first_key(table, self.keys)})"
