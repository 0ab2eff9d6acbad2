"""``ls.DuckDBUpsert``: keyed upserts into a DuckDB file (semantics in :mod:`.upsert`).

One flush is one transaction: the coalesced rows are registered as an Arrow view, rows older than
the stored row or tombstone are counted and left out, the rest go through
``INSERT … ON CONFLICT (key) DO UPDATE … WHERE excluded.version >= target.version``; deletions
remove the row and leave a tombstone in ``<table>__deleted``. All DuckDB calls run in a thread.

Single writer: a DuckDB file takes one writing process at a time (``single_writer = True``), so a
job run as several workers refuses it before it starts (:func:`.base.require_multi_writer`).
Within one process, the sinks of several tasks (``for_task`` copies) writing one file take turns:
connecting, each flush's transaction and closing hold the file's lock (:func:`file_lock`).
DuckDB's optimistic concurrency would otherwise fail concurrent upserts of one key from two
connections with a primary-key ConstraintException instead of applying the version guard, and a
connect racing another connection's work sometimes left it without Python's Arrow scan
(``python_arrow_scan does not exist``).
``close`` always releases the file, also when the run was cancelled during a flush: the flush
still running in its thread is interrupted and awaited, then the connection is closed, so the
process can open the file again (read-only or not) right after.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SchemaError, SinkError
from ..timeutil import Duration
from .upsert import DELETED, TOMBSTONE_SUFFIX, ApplyResult, RetriableSinkError, UpsertSink

OPTIMISTIC_PAUSE = 16  # flushes without the plain-INSERT attempt after a key conflict
INTERRUPT_EVERY = 0.05  # seconds between interrupts of a flush that ``close`` waits for


def quote(name: str) -> str:
    """A SQL identifier, quoted (``a.b`` is schema ``a``, table ``b``)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def quote_column(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def unwritable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be a writable database file (None when it looks fine).

    Checks without side effects: the path itself, and the nearest existing ancestor of its
    directory (which is created later when missing)."""
    if path.is_dir():
        return "the path is a directory, not a database file"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(ancestor)!r} is not a directory (it is a file)"
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return "the file is not writable (permission denied)"
    elif not os.access(ancestor, os.W_OK | os.X_OK):
        return f"the directory {str(ancestor)!r} is not writable (permission denied)"
    return None


_file_locks: dict[str, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def file_lock(path: str) -> threading.Lock:
    """The lock this process's writers of the database file ``path`` hold while flushing."""
    key = path if path == ":memory:" else os.path.realpath(path)
    with _file_locks_guard:
        return _file_locks.setdefault(key, threading.Lock())


def _close_result(connecting: asyncio.Future[Any]) -> None:
    """Close the connection a cancelled ``open`` still made (nothing holds it)."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close()


class DuckDBUpsert(UpsertSink):
    """Upsert into ``table`` of the DuckDB database at ``path`` (created when absent).

    ``key`` names the primary key column(s), ``version`` the column that orders versions (default
    ``window_end`` for window output). The table is created from the stream's schema with
    ``PRIMARY KEY (key)``; an existing table must have every stream column with the same type.
    """

    kind = "duckdb"
    single_writer = True

    def __init__(
        self,
        path: str | Path,
        table: str,
        key: str | Sequence[str],
        version: str | None = None,
        *,
        batch_rows: int = 100_000,
        flush_interval: Duration = "1s",
        retries: int = 5,
        name: str | None = None,
    ) -> None:
        super().__init__(
            table=table,
            key=key,
            version=version,
            batch_rows=batch_rows,
            flush_interval=flush_interval,
            retries=retries,
            name=name,
        )
        self.path = str(path)
        self._con: Any = None
        self._ready = False
        self._flushes = 0
        self._optimistic_after = 0  # flush number from which a plain INSERT is tried first
        self._using = threading.Lock()  # held by the thread using the connection

    def _fresh_for_task(self, task_id: str) -> None:
        super()._fresh_for_task(task_id)
        self._con = None
        self._ready = False
        self._flushes = 0
        self._optimistic_after = 0
        self._using = threading.Lock()

    async def open(self) -> None:
        """Open (create) the database file; missing parent directories are created.

        A path that cannot be a writable database (a directory, under a file, in a directory this
        process cannot write, not a DuckDB file, locked by another process) raises a one-line
        :class:`SinkError` naming the path and the cause, before the sink takes any record.
        """
        if self._con is None:
            connecting = asyncio.ensure_future(asyncio.to_thread(self._connect))
            try:
                self._con = await asyncio.shield(connecting)
            except asyncio.CancelledError:
                connecting.add_done_callback(_close_result)  # the thread still connects
                raise

    def _cannot_open(self, problem: str) -> SinkError:
        return SinkError(
            f"sink={self.name} table={self.table} path={self.path!r}: cannot open the DuckDB "
            f"database: {' '.join(problem.split())}"
        )

    def _connect(self) -> Any:
        if self.path != ":memory:":
            problem = unwritable_reason(Path(self.path))
            if problem is not None:
                raise self._cannot_open(problem)
            parent = Path(self.path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._cannot_open(
                    f"cannot create the directory {str(parent)!r}: {exc.strerror or exc}"
                ) from exc
        try:
            with file_lock(self.path):  # connects racing in one process can break DuckDB
                con = duckdb.connect(self.path)
        except (OSError, duckdb.Error) as exc:
            text = str(exc)
            if "permission denied" in text.lower():
                text = f"not writable (permission denied): {text}"
            raise self._cannot_open(text) from exc
        try:
            con.execute("SET TimeZone = 'UTC'")
        except BaseException:
            con.close()
            raise
        return con

    async def close(self) -> None:
        """Close the connection; a flush still running in its thread (the run was cancelled
        mid-flush) is interrupted — its transaction rolls back — and awaited first."""
        if self._con is not None:
            con, self._con = self._con, None
            closing = asyncio.ensure_future(asyncio.to_thread(self._close_when_idle, con))
            await asyncio.shield(closing)  # cancelled or not, the thread closes the file

    def _close_when_idle(self, con: Any) -> None:
        # Wait for the file's turn; while this sink's own flush holds it, interrupt that flush
        # (the one call DuckDB takes from another thread on a busy connection) — repeatedly: an
        # interrupt between two of its statements stops nothing.
        lock = file_lock(self.path)
        while not lock.acquire(timeout=INTERRUPT_EVERY):
            if self._using.locked():
                con.interrupt()
        try:
            with self._using:  # free: a flush takes the file's lock first
                con.close()  # an open transaction of the interrupted flush is rolled back
        finally:
            lock.release()

    async def _apply(self, table: pa.Table) -> ApplyResult:
        if self._con is None:
            await self.open()
        return await asyncio.to_thread(self._apply_locked, table)

    def _apply_locked(self, table: pa.Table) -> ApplyResult:
        with file_lock(self.path), self._using:
            if self._con is None:  # closed while this call waited for its turn
                raise SinkError(f"sink={self.name} table={self.table}: the sink was closed")
            return self._apply_sync(table)

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, duckdb.TransactionException | RetriableSinkError)

    # blocking part --------------------------------------------------------------------------------

    def _ensure_table(self, con: Any) -> None:
        """Create the table and its tombstone table, or validate the existing table's columns."""
        target, tomb = quote(self.table), quote(self.table + TOMBSTONE_SUFFIX)
        assert self.version is not None
        incoming = {
            row[0]: row[1]
            for row in con.execute(
                f'DESCRIBE SELECT * EXCLUDE ("{DELETED}") FROM __ls_in'
            ).fetchall()
        }
        existing = self._describe_table(con, self.table)
        keys = ", ".join(quote_column(k) for k in self.keys)
        if existing is None:
            cols = ", ".join(f"{quote_column(c)} {t}" for c, t in incoming.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS {target} ({cols}, PRIMARY KEY ({keys}))")
        else:
            for column, dtype in incoming.items():
                if column not in existing:
                    raise SchemaError(
                        f"DuckDBUpsert: table={self.table} has no column {column!r} "
                        f"(the stream has it, type {dtype}); table columns: {list(existing)}"
                    )
                if existing[column] != dtype:
                    raise SchemaError(
                        f"DuckDBUpsert: table={self.table} column={column!r} has type "
                        f"{existing[column]}, the stream has {dtype}"
                    )
            pk = con.execute(
                "SELECT constraint_column_names FROM duckdb_constraints() "
                "WHERE table_name = ? AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
                [self.table.split(".")[-1]],
            ).fetchall()
            if not any(sorted(row[0]) == sorted(self.keys) for row in pk):
                raise SchemaError(
                    f"DuckDBUpsert: table={self.table} has no primary key or unique constraint "
                    f"on the key {self.keys} (found {[row[0] for row in pk]})"
                )
        tomb_cols = ", ".join(
            f"{quote_column(c)} {incoming[c]}" for c in [*self.keys, self.version] if c in incoming
        )
        if self.version in self.keys:
            tomb_cols = ", ".join(f"{quote_column(c)} {incoming[c]}" for c in self.keys)
        con.execute(f"CREATE TABLE IF NOT EXISTS {tomb} ({tomb_cols}, PRIMARY KEY ({keys}))")

    @staticmethod
    def _describe_table(con: Any, table: str) -> dict[str, str] | None:
        try:
            rows = con.execute(f"DESCRIBE {quote(table)}").fetchall()
        except duckdb.CatalogException:
            return None
        return {row[0]: row[1] for row in rows}

    def _apply_sync(self, table: pa.Table) -> ApplyResult:
        con = self._con
        assert self.version is not None
        con.register("__ls_in", table)
        try:
            if not self._ready:
                self._ensure_table(con)
                self._ready = True
            con.execute("BEGIN TRANSACTION")
            try:
                has_deletes = bool(pc.any(table.column(DELETED)).as_py())
                result = self._statements(con, table.num_rows, has_deletes)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return result
        finally:
            con.unregister("__ls_in")

    def _statements(self, con: Any, n_rows: int, has_deletes: bool) -> ApplyResult:
        assert self.version is not None
        target, tomb = quote(self.table), quote(self.table + TOMBSTONE_SUFFIX)
        v = quote_column(self.version)
        deleted = quote_column(DELETED)
        cols = self.stored_columns
        col_list = ", ".join(quote_column(c) for c in cols)
        on_t = " AND ".join(f"t.{quote_column(k)} = i.{quote_column(k)}" for k in self.keys)
        on_d = " AND ".join(f"d.{quote_column(k)} = i.{quote_column(k)}" for k in self.keys)
        keys = ", ".join(quote_column(k) for k in self.keys)
        non_keys = [c for c in cols if c not in self.keys]
        if non_keys:
            sets = ", ".join(f"{quote_column(c)} = excluded.{quote_column(c)}" for c in non_keys)
            action = (
                f"DO UPDATE SET {sets} WHERE excluded.{v} >= {target.split('.')[-1]}.{v}"
                if self.version not in self.keys
                else f"DO UPDATE SET {sets}"
            )
        else:
            action = "DO NOTHING"
        if (
            not has_deletes
            and not con.execute(f"SELECT EXISTS (SELECT 1 FROM {tomb})").fetchone()[0]
        ):
            # fast paths: no deletions anywhere. First an optimistic plain INSERT (every key
            # new); a key conflict undoes it and pauses the attempt for a few flushes
            # (update-heavy input). Otherwise the guard in ON CONFLICT decides; the count it
            # returns excludes the rows it rejected.
            self._flushes += 1
            if self._flushes >= self._optimistic_after:
                try:
                    con.execute(f"INSERT INTO {target} ({col_list}) SELECT {col_list} FROM __ls_in")
                    return ApplyResult(written=n_rows)
                except duckdb.ConstraintException:
                    con.execute("ROLLBACK")
                    con.execute("BEGIN TRANSACTION")
                    self._optimistic_after = self._flushes + OPTIMISTIC_PAUSE
            (written,) = con.execute(
                f"INSERT INTO {target} ({col_list}) SELECT {col_list} FROM __ls_in "
                f"ON CONFLICT ({keys}) {action}"
            ).fetchone()
            return ApplyResult(written=int(written), skipped=n_rows - int(written))
        # Decide once: a row/deletion is stale when the stored row or tombstone is newer.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE __ls_decided AS SELECT i.*, "
            f"coalesce(t.{v} > i.{v}, false) OR coalesce(d.{v} > i.{v}, false) AS __ls_stale "
            f"FROM __ls_in i LEFT JOIN {target} t ON {on_t} LEFT JOIN {tomb} d ON {on_d}"
        )
        counts = con.execute(
            "SELECT count(*) FILTER (WHERE __ls_stale), "
            f"count(*) FILTER (WHERE NOT __ls_stale AND NOT {deleted}), "
            f"count(*) FILTER (WHERE NOT __ls_stale AND {deleted}) FROM __ls_decided"
        ).fetchone()
        stale, upserts, deletes = (int(x) for x in counts)
        if upserts:
            con.execute(
                f"INSERT INTO {target} ({col_list}) SELECT {col_list} FROM __ls_decided "
                f"WHERE NOT __ls_stale AND NOT {deleted} ON CONFLICT ({keys}) {action}"
            )
            con.execute(
                f"DELETE FROM {tomb} AS d USING __ls_decided i WHERE {on_d} "
                f"AND NOT i.__ls_stale AND NOT i.{deleted}"
            )
        if deletes:
            con.execute(
                f"DELETE FROM {target} AS t USING __ls_decided i WHERE {on_t} "
                f"AND NOT i.__ls_stale AND i.{deleted}"
            )
            tomb_cols = keys if self.version in self.keys else f"{keys}, {v}"
            tomb_action = (
                "DO NOTHING" if self.version in self.keys else f"DO UPDATE SET {v} = excluded.{v}"
            )
            con.execute(
                f"INSERT INTO {tomb} ({tomb_cols}) SELECT {tomb_cols} FROM __ls_decided "
                f"WHERE NOT __ls_stale AND {deleted} ON CONFLICT ({keys}) {tomb_action}"
            )
        con.execute("DROP TABLE __ls_decided")
        return ApplyResult(written=upserts, skipped=stale, deletes=deletes)
