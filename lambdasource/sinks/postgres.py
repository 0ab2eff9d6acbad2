"""``ls.PostgresUpsert``: keyed upserts into PostgreSQL through asyncpg (semantics in :mod:`.upsert`).

One flush is one transaction: the coalesced rows are written as CSV (pyarrow, vectorised) and
``COPY``-ed into a temporary staging table, then applied with
``INSERT … ON CONFLICT (key) DO UPDATE … WHERE excluded.version >= target.version``. When the batch
has no deletions and the tombstone table ``<table>__deleted`` is empty this is one statement;
otherwise a decision table marks rows older than the stored row or tombstone first. Connection
loss, serialization failures and deadlocks are retried (reconnecting) with bounded, jittered
backoff; when they persist past ``retries`` the flush fails with a SinkError naming the table and
the attempts.

Several writers (one sink per task, each its own connection) may write one table at once:

* every write transaction first takes a transaction-level advisory lock on the table
  (:func:`table_lock_key`): *shared* for a flush without deletions, *exclusive* for a flush with
  deletions (and for creating the tables). Upserts of any keys run concurrently — the version
  guard in ``ON CONFLICT … WHERE`` is evaluated on the newest committed row, so two writers of
  one key keep the newer version — while a deletion never races an insert of the key it
  deletes (without the lock, an insert that did not yet see the tombstone resurrects the key:
  write skew across the table and its tombstone table);
* rows are applied in key order, so writers of overlapping keys lock rows in one order;
* staging and decision tables are ``TEMP … ON COMMIT DROP``: private to the connection, so
  their names cannot collide across writers.

PostgreSQL cannot store the NUL character (``\\x00``) in text. By default (``nul_bytes="error"``)
a flush holding one is refused before anything of it is written, with a :class:`SinkError` naming
the table, each offending column and the keys of its rows; ``nul_bytes="strip"`` removes NUL
characters from every text column (keys included, before coalescing) and counts the values it
changed in ``metrics()["nul_bytes_stripped"]``.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import ConfigError, SchemaError, SinkError
from ..timeutil import Duration, parse_duration
from .duckdb import quote, quote_column
from .upsert import DELETED, TOMBSTONE_SUFFIX, ApplyResult, RetriableSinkError, UpsertSink
from .urls import redact_url


def pg_type(dtype: pa.DataType, column: str, table: str) -> str:
    """The PostgreSQL type (as ``format_type`` names it) for an Arrow type."""
    if pa.types.is_dictionary(dtype):
        return pg_type(dtype.value_type, column, table)
    simple = [
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_int8, "smallint"),
        (pa.types.is_int16, "smallint"),
        (pa.types.is_uint8, "smallint"),
        (pa.types.is_int32, "integer"),
        (pa.types.is_uint16, "integer"),
        (pa.types.is_int64, "bigint"),
        (pa.types.is_uint32, "bigint"),
        (pa.types.is_uint64, "numeric"),
        (pa.types.is_float16, "real"),
        (pa.types.is_float32, "real"),
        (pa.types.is_float64, "double precision"),
        (pa.types.is_string, "text"),
        (pa.types.is_large_string, "text"),
        (pa.types.is_date, "date"),
    ]
    for test, name in simple:
        if test(dtype):
            return name
    if pa.types.is_timestamp(dtype):
        return "timestamp with time zone" if dtype.tz else "timestamp without time zone"
    if pa.types.is_decimal(dtype):
        return f"numeric({dtype.precision},{dtype.scale})"
    raise SchemaError(
        f"PostgresUpsert: table={table} column={column!r} has type {dtype}, which the sink "
        "cannot store (supported: integers, floats, booleans, strings, dates, timestamps, decimals)"
    )


NUL = "\x00"
NUL_BYTE_MODES = ("error", "strip")
_SHOWN_KEYS = 5  # offending keys named per column in a NUL-byte error


def _is_text(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        return _is_text(dtype.value_type)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _text_values(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _is_transient_pg(exc: BaseException) -> bool:
    import asyncpg

    transient = (
        asyncpg.exceptions.SerializationError,
        asyncpg.exceptions.DeadlockDetectedError,
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.TooManyConnectionsError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.InternalClientError,  # a connection broken mid-protocol
        RetriableSinkError,
        ConnectionError,
        OSError,
        TimeoutError,
    )
    return isinstance(exc, transient)


def table_lock_key(table: str) -> str:
    """The text whose ``hashtextextended`` is the advisory-lock key of ``table``'s writers."""
    return f"lambdasource-upsert:{table}"


async def lock_table(conn: Any, table: str, *, exclusive: bool) -> None:
    """Take ``table``'s writer lock until the end of the open transaction (see the module doc)."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.execute(f"SELECT {function}(hashtextextended($1, 0))", table_lock_key(table))


def _to_csv(table: pa.Table) -> bytes:
    casts = []
    for field in table.schema:
        if pa.types.is_dictionary(field.type):
            casts.append(pa.field(field.name, field.type.value_type))
        else:
            casts.append(field)
    table = table.cast(pa.schema(casts))
    sink = io.BytesIO()
    pacsv.write_csv(
        table, sink, pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    )
    return sink.getvalue()


class PostgresUpsert(UpsertSink):
    """Upsert into ``table`` of the PostgreSQL database at ``dsn`` (``postgresql://…``).

    The table (and ``<table>__deleted``) is created from the stream's schema with
    ``PRIMARY KEY (key)`` when absent; an existing table must have every stream column with the
    matching type and a primary key or unique index on exactly the key columns.
    """

    kind = "postgres"

    def __init__(
        self,
        dsn: str,
        table: str,
        key: str | Sequence[str],
        version: str | None = None,
        *,
        batch_rows: int = 100_000,
        flush_interval: Duration = "1s",
        retries: int = 5,
        nul_bytes: Literal["error", "strip"] = "error",
        connect_timeout: Duration = "30s",
        name: str | None = None,
    ) -> None:
        if nul_bytes not in NUL_BYTE_MODES:
            raise ConfigError(
                f"PostgresUpsert: nul_bytes must be one of {NUL_BYTE_MODES}, got {nul_bytes!r}"
            )
        super().__init__(
            table=table,
            key=key,
            version=version,
            batch_rows=batch_rows,
            flush_interval=flush_interval,
            retries=retries,
            name=name,
        )
        self.dsn = dsn
        self.connect_timeout = parse_duration(connect_timeout, name="connect_timeout") / 1e6
        self.nul_bytes = nul_bytes
        self._nul_stripped = 0
        self._conn: Any = None
        self._ready = False

    def _fresh_for_task(self, task_id: str) -> None:
        super()._fresh_for_task(task_id)
        self._nul_stripped = 0
        self._conn = None
        self._ready = False

    async def open(self) -> None:
        """Connect (within ``connect_timeout``); a failure is a one-line SinkError naming the
        server and database (password hidden) and the cause, retriable when it may pass."""
        import asyncpg

        if self._conn is not None:
            return
        try:
            self._conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                cause = f"no connection within connect_timeout={self.connect_timeout:g}s"
            elif isinstance(exc, OSError) and exc.errno:
                cause = f"{type(exc).__name__}: {os.strerror(exc.errno)}"
            else:
                cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            error = RetriableSinkError if _is_transient_pg(exc) else SinkError
            raise error(
                f"sink={self.name} table={self.table}: cannot connect to PostgreSQL at "
                f"{redact_url(self.dsn)}: {cause}"
            ) from exc

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except (OSError, TimeoutError):
                conn.terminate()

    async def _reset(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.terminate()
        self._ready = False

    def _is_transient(self, exc: BaseException) -> bool:
        lost = self._conn is not None and self._conn.is_closed()
        return lost or _is_transient_pg(exc)

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "nul_bytes_stripped": self._nul_stripped}

    # NUL bytes ------------------------------------------------------------------------------------

    def _prepare(self, table: pa.Table) -> pa.Table:
        return super()._prepare(self._without_nul_bytes(table))

    def _without_nul_bytes(self, table: pa.Table) -> pa.Table:
        """``table`` unchanged when no text value holds a NUL; else NULs stripped (counted) or a
        :class:`SinkError` naming every offending column and the keys of its rows."""
        offending: list[tuple[str, pa.Array]] = []
        for index, field in enumerate(table.schema):
            if not _is_text(field.type):
                continue
            values = _text_values(table.column(index))
            has_nul = pc.fill_null(pc.match_substring(values, NUL), False)
            if not pc.any(has_nul).as_py():
                continue
            if self.nul_bytes == "strip":
                self._nul_stripped += int(pc.sum(has_nul.cast(pa.int64())).as_py())
                stripped = pc.replace_substring(values, NUL, "")
                table = table.set_column(index, pa.field(field.name, stripped.type), stripped)
            else:
                offending.append((field.name, pc.indices_nonzero(has_nul.combine_chunks())))
        if offending:
            where = "; ".join(self._nul_rows(table, column, rows) for column, rows in offending)
            raise SinkError(
                f"sink={self.name} table={self.table}: text holding a NUL byte (\\x00), which "
                f"PostgreSQL cannot store: {where}; nothing of this flush was written "
                "(nul_bytes='strip' removes NUL bytes)"
            )
        return table

    def _nul_rows(self, table: pa.Table, column: str, rows: pa.Array) -> str:
        keys = table.select(self.keys).take(rows[:_SHOWN_KEYS]).to_pylist()
        named = ", ".join(" ".join(f"{k}={row[k]!r}" for k in self.keys) for row in keys)
        more = f", and {len(rows) - _SHOWN_KEYS} more" if len(rows) > _SHOWN_KEYS else ""
        return f"column={column!r} in {len(rows)} row(s), key {named}{more}"

    # schema ---------------------------------------------------------------------------------------

    async def _ensure_table(self, conn: Any) -> None:
        """Create or check the table and its tombstone table, holding the writers' lock
        exclusively (writers starting at once would race in CREATE TABLE IF NOT EXISTS)."""
        async with conn.transaction():
            await lock_table(conn, self.table, exclusive=True)
            await self._ensure_table_locked(conn)

    async def _ensure_table_locked(self, conn: Any) -> None:
        assert self.schema is not None and self.version is not None
        types = {
            f.name: pg_type(f.type, f.name, self.table) for f in self.schema if f.name != DELETED
        }
        keys = ", ".join(quote_column(k) for k in self.keys)
        existing = await conn.fetch(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type "
            "FROM pg_attribute a WHERE a.attrelid = to_regclass($1) "
            "AND a.attnum > 0 AND NOT a.attisdropped",
            quote(self.table),
        )
        if not existing:
            cols = ", ".join(f"{quote_column(c)} {t}" for c, t in types.items())
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {quote(self.table)} ({cols}, PRIMARY KEY ({keys}))"
            )
        else:
            have = {row["attname"]: row["type"] for row in existing}
            for column, dtype in types.items():
                if column not in have:
                    raise SchemaError(
                        f"PostgresUpsert: table={self.table} has no column {column!r} "
                        f"(the stream has it, type {dtype}); table columns: {list(have)}"
                    )
                if have[column] != dtype:
                    raise SchemaError(
                        f"PostgresUpsert: table={self.table} column={column!r} has type "
                        f"{have[column]}, the stream has {dtype}"
                    )
            unique = await conn.fetch(
                "SELECT array_agg(a.attname::text ORDER BY a.attname) AS cols FROM pg_index i "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indrelid = to_regclass($1) AND i.indisunique GROUP BY i.indexrelid",
                quote(self.table),
            )
            if not any(sorted(row["cols"]) == sorted(self.keys) for row in unique):
                raise SchemaError(
                    f"PostgresUpsert: table={self.table} has no primary key or unique index on "
                    f"the key {self.keys} (found {[list(row['cols']) for row in unique]})"
                )
        tomb_cols = list(dict.fromkeys([*self.keys, self.version]))
        tomb_def = ", ".join(f"{quote_column(c)} {types[c]}" for c in tomb_cols)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quote(self.table + TOMBSTONE_SUFFIX)} "
            f"({tomb_def}, PRIMARY KEY ({keys}))"
        )

    # writing --------------------------------------------------------------------------------------

    async def _apply(self, table: pa.Table) -> ApplyResult:
        await self.open()
        conn = self._conn
        if not self._ready:
            await self._ensure_table(conn)
            self._ready = True
        assert self.schema is not None and self.version is not None
        cols = self.stored_columns
        table = table.take(pc.sort_indices(table, [(k, "ascending") for k in self.keys]))
        n_deleted = int(pc.sum(table.column(DELETED).cast(pa.int64())).as_py() or 0)
        copied = [*cols, DELETED] if n_deleted else cols  # stage: _deleted defaults to false
        data = await asyncio.to_thread(_to_csv, table.select(copied))
        types = {f.name: pg_type(f.type, f.name, self.table) for f in self.schema}
        stage_cols = ", ".join(f"{quote_column(c)} {types[c]}" for c in cols)
        target, tomb = quote(self.table), quote(self.table + TOMBSTONE_SUFFIX)
        if not n_deleted and len(self.keys) == 1:
            written = await self._copy_new_keys(conn, table, data, target, tomb)
            if written is not None:
                return ApplyResult(written=written)
        async with conn.transaction():
            await lock_table(conn, self.table, exclusive=n_deleted > 0)
            await conn.execute(
                f"CREATE TEMP TABLE __ls_stage ({stage_cols}, "
                f"{quote_column(DELETED)} boolean NOT NULL DEFAULT false) ON COMMIT DROP"
            )
            await conn.copy_to_table(
                "__ls_stage", source=io.BytesIO(data), format="csv", columns=copied
            )
            any_tomb = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {tomb})")
            if not n_deleted and not any_tomb:
                written = await self._insert(conn, "__ls_stage", "true")
                return ApplyResult(written=written, skipped=table.num_rows - written)
            return await self._general(conn, target, tomb)

    async def _copy_new_keys(
        self, conn: Any, table: pa.Table, data: bytes, target: str, tomb: str
    ) -> int | None:
        """Fast path for batches of only new keys: ``COPY`` straight into the table.

        Taken when no stored row or tombstone has any of the batch's keys (one indexed probe);
        returns None (use the staging path) otherwise. A concurrent writer that inserts one of the
        keys in between makes the COPY fail on the primary key: the transaction rolls back and
        the staging path (with its version guard) runs instead.
        """
        import asyncpg

        assert self.schema is not None
        key = self.keys[0]
        array_type = pg_type(self.schema.field(key).type, key, self.table) + "[]"
        values = table.column(key).to_pylist()
        k = quote_column(key)
        try:
            async with conn.transaction():
                await lock_table(conn, self.table, exclusive=False)
                clash = await conn.fetchval(
                    f"SELECT EXISTS (SELECT 1 FROM {target} WHERE {k} = ANY($1::{array_type})) "
                    f"OR EXISTS (SELECT 1 FROM {tomb} WHERE {k} = ANY($1::{array_type}))",
                    values,
                )
                if clash:
                    return None
                await conn.copy_to_table(
                    self.table if "." not in self.table else self.table.rsplit(".", 1)[1],
                    schema_name=None if "." not in self.table else self.table.rsplit(".", 1)[0],
                    source=io.BytesIO(data),
                    format="csv",
                    columns=self.stored_columns,
                )
        except asyncpg.exceptions.UniqueViolationError:
            return None
        return table.num_rows

    def _conflict_action(self) -> str:
        assert self.version is not None
        non_keys = [c for c in self.stored_columns if c not in self.keys]
        if not non_keys:
            return "DO NOTHING"
        sets = ", ".join(f"{quote_column(c)} = excluded.{quote_column(c)}" for c in non_keys)
        if self.version in self.keys:
            return f"DO UPDATE SET {sets}"
        v = quote_column(self.version)
        return f"DO UPDATE SET {sets} WHERE excluded.{v} >= {quote(self.table)}.{v}"

    async def _insert(self, conn: Any, source: str, where: str) -> int:
        col_list = ", ".join(quote_column(c) for c in self.stored_columns)
        keys = ", ".join(quote_column(k) for k in self.keys)
        status = await conn.execute(
            f"INSERT INTO {quote(self.table)} ({col_list}) SELECT {col_list} FROM {source} "
            f"WHERE {where} ORDER BY {keys} ON CONFLICT ({keys}) {self._conflict_action()}"
        )
        return int(status.split()[-1])

    async def _general(self, conn: Any, target: str, tomb: str) -> ApplyResult:
        assert self.version is not None
        v = quote_column(self.version)
        deleted = quote_column(DELETED)
        on_t = " AND ".join(f"t.{quote_column(k)} = i.{quote_column(k)}" for k in self.keys)
        on_d = " AND ".join(f"d.{quote_column(k)} = i.{quote_column(k)}" for k in self.keys)
        keys = ", ".join(quote_column(k) for k in self.keys)
        await conn.execute(
            "CREATE TEMP TABLE __ls_decided ON COMMIT DROP AS SELECT i.*, "
            f"coalesce(t.{v} > i.{v}, false) OR coalesce(d.{v} > i.{v}, false) AS __ls_stale "
            f"FROM __ls_stage i LEFT JOIN {target} t ON {on_t} LEFT JOIN {tomb} d ON {on_d}"
        )
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE __ls_stale) AS stale, "
            f"count(*) FILTER (WHERE NOT __ls_stale AND NOT {deleted}) AS upserts, "
            f"count(*) FILTER (WHERE NOT __ls_stale AND {deleted}) AS deletes FROM __ls_decided"
        )
        stale, upserts, deletes = int(row["stale"]), int(row["upserts"]), int(row["deletes"])
        if upserts:
            written = await self._insert(conn, "__ls_decided", f"NOT __ls_stale AND NOT {deleted}")
            stale += upserts - written  # a concurrent writer stored a newer version meanwhile
            upserts = written
            await conn.execute(
                f"DELETE FROM {tomb} d USING __ls_decided i WHERE {on_d} "
                f"AND NOT i.__ls_stale AND NOT i.{deleted} AND d.{v} <= i.{v}"
            )
        if deletes:
            await conn.execute(
                f"DELETE FROM {target} t USING __ls_decided i WHERE {on_t} "
                f"AND NOT i.__ls_stale AND i.{deleted} AND t.{v} <= i.{v}"
            )
            tomb_cols = keys if self.version in self.keys else f"{keys}, {v}"
            action = (
                "DO NOTHING"
                if self.version in self.keys
                else f"DO UPDATE SET {v} = excluded.{v} WHERE excluded.{v} >= {tomb}.{v}"
            )
            await conn.execute(
                f"INSERT INTO {tomb} ({tomb_cols}) SELECT {tomb_cols} FROM __ls_decided "
                f"WHERE NOT __ls_stale AND {deleted} ON CONFLICT ({keys}) {action}"
            )
        return ApplyResult(written=upserts, skipped=stale, deletes=deletes)
