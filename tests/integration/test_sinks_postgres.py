"""PostgresUpsert specifics: reconnect-and-retry after connection loss, permanent errors named."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from lambdasource.errors import SchemaError, SinkError
from lambdasource.sinks.postgres import PostgresUpsert
from tests.integration.test_sinks_common import COLS, batch, postgres_store, rows

pytestmark = pytest.mark.postgres


async def test_connection_loss_is_retried(postgres: Any) -> None:
    dsn = postgres.new_database()
    sink = PostgresUpsert(dsn, "t", key="k", version="v")
    sink.backoff = 0.01
    sink.bind(batch([1], [1], ["a"]).schema)
    await sink.open()
    try:
        for rb in batch([1, 2], [1, 1], ["a", "b"]).to_batches():
            await sink.write(rb)
        await sink.flush()
        admin = await asyncpg.connect(dsn)
        try:  # kill the sink's backend: its next flush fails, reconnects and retries
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        for rb in batch([2, 3], [2, 1], ["b2", "c"]).to_batches():
            await sink.write(rb)
        await sink.flush()
    finally:
        await sink.close()
    assert sink.metrics()["retries"] >= 1
    assert rows(postgres_store(dsn).read("t"), COLS) == [(1, 1, "a"), (2, 2, "b2"), (3, 1, "c")]


async def test_permanent_error_names_table_and_key(postgres: Any) -> None:
    dsn = postgres.new_database()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE checked (k bigint PRIMARY KEY, v bigint, x text CHECK (x <> 'bad'))"
        )
    finally:
        await conn.close()
    sink = PostgresUpsert(dsn, "checked", key="k", version="v", retries=2)
    sink.bind(batch([1], [1], ["a"]).schema)
    await sink.open()
    try:
        for rb in batch([7, 8], [1, 1], ["bad", "ok"]).to_batches():
            await sink.write(rb)
        with pytest.raises(SinkError, match=r"table=checked.*first key k=7.*CheckViolation"):
            await sink.flush()
        assert sink.metrics()["retries"] == 0  # a constraint violation is not retried
    finally:
        await sink.close()


async def test_existing_table_without_key_constraint_is_rejected(postgres: Any) -> None:
    dsn = postgres.new_database()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE nokey (k bigint, v bigint, x text)")
    finally:
        await conn.close()
    sink = PostgresUpsert(dsn, "nokey", key="k", version="v")
    sink.bind(batch([1], [1], ["a"]).schema)
    await sink.open()
    try:
        for rb in batch([1], [1], ["a"]).to_batches():
            await sink.write(rb)
        with pytest.raises(SchemaError, match=r"table=nokey has no primary key"):
            await sink.flush()
    finally:
        await sink.close()
