"""Behaviour every upsert sink shares, checked against each real store and a DuckDB SQL reference.

The reference (:func:`reference_state`) is independent of the sinks: per key, the event with the
greatest ``(version, arrival)`` over everything written, absent when that event is a deletion.
Stores: a DuckDB file, a PostgreSQL database of the session cluster, Iceberg on a SqlCatalog with
a ``file://`` warehouse and with a moto-S3 warehouse.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lambdasource as ls
from lambdasource.errors import ConfigError, SchemaError, SinkError
from lambdasource.sinks.upsert import UpsertSink

# --------------------------------------------------------------------------------- reference ---


def reference_state(batches: Sequence[pa.Table], keys: Sequence[str], version: str) -> pa.Table:
    """What an upsert store must hold after ``batches`` (DuckDB SQL, sorted by key)."""
    tables = []
    arrival = 0
    for t in batches:
        if "_deleted" not in t.column_names:
            t = t.append_column("_deleted", pa.array([False] * t.num_rows))
        t = t.append_column("__arrival", pa.array(range(arrival, arrival + t.num_rows), pa.int64()))
        arrival += t.num_rows
        tables.append(t)
    events = pa.concat_tables(tables)  # noqa: F841 (read by DuckDB)
    k = ", ".join(f'"{c}"' for c in keys)
    return duckdb.sql(
        f'SELECT * EXCLUDE ("_deleted", __arrival) FROM (SELECT * FROM events '
        f'QUALIFY row_number() OVER (PARTITION BY {k} ORDER BY "{version}" DESC, '
        f'__arrival DESC) = 1) WHERE NOT coalesce("_deleted", false) ORDER BY {k}'
    ).to_arrow_table()


def rows(table: pa.Table, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows as tuples (column order given), sorted — how stores are compared."""
    data = table.select(list(columns)).to_pylist()
    return sorted((tuple(r[c] for c in columns) for r in data), key=repr)


# ------------------------------------------------------------------------------------- stores ---


@dataclass
class Store:
    """A real store: ``sink(table, key, version, **kw)`` builds a sink, ``read(table)`` its rows."""

    name: str
    sink: Callable[..., UpsertSink]
    read: Callable[[str], pa.Table]


def duckdb_store(tmp_path: Path) -> Store:
    from lambdasource.sinks.duckdb import DuckDBUpsert

    path = tmp_path / "store.duckdb"

    def read(table: str) -> pa.Table:
        con = duckdb.connect(str(path), read_only=True)
        try:
            con.execute("SET TimeZone = 'UTC'")
            return con.sql(f'SELECT * FROM "{table}"').to_arrow_table()
        finally:
            con.close()

    return Store("duckdb", lambda *a, **kw: DuckDBUpsert(path, *a, **kw), read)


def postgres_store(dsn: str) -> Store:
    from lambdasource.sinks.postgres import PostgresUpsert

    def read(table: str) -> pa.Table:
        async def fetch() -> pa.Table:
            import asyncpg

            conn = await asyncpg.connect(dsn)
            try:
                records = await conn.fetch(f'SELECT * FROM "{table}"')
                if not records:
                    return pa.table({})
                return pa.Table.from_pylist([dict(r) for r in records])
            finally:
                await conn.close()

        return asyncio.run(fetch()) if not _in_loop() else _run_in_thread(fetch)

    return Store("postgres", lambda *a, **kw: PostgresUpsert(dsn, *a, **kw), read)


def iceberg_store(props: dict[str, str], name: str) -> Store:
    from lambdasource.sinks.iceberg import IcebergUpsert
    from tests.services.iceberg import load

    def read(table: str) -> pa.Table:
        return load(props).load_table(f"db.{table}").scan().to_arrow()

    return Store(name, lambda t, *a, **kw: IcebergUpsert(f"db.{t}", props, *a, **kw), read)


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_in_thread(fn: Callable[[], Any]) -> Any:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()


STORES = [
    "duckdb",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("iceberg", marks=pytest.mark.iceberg),
    pytest.param("iceberg_s3", marks=[pytest.mark.iceberg, pytest.mark.s3]),
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    kind = request.param
    if kind == "duckdb":
        return duckdb_store(tmp_path)
    if kind == "postgres":
        return postgres_store(request.getfixturevalue("postgres").new_database())
    props = request.getfixturevalue(
        "iceberg_catalog_props" if kind == "iceberg" else "iceberg_s3_catalog_props"
    )
    from tests.services.iceberg import load

    load(props).create_namespace_if_not_exists("db")
    return iceberg_store(props, kind)


def new_table() -> str:
    return f"t_{uuid.uuid4().hex[:8]}"


async def write_all(
    sink: UpsertSink, batches: Sequence[pa.Table], flush_after: Sequence[bool] | None = None
) -> None:
    """Open, write every batch (flushing after those marked), flush and close."""
    sink.bind(batches[0].schema)
    await sink.open()
    try:
        for i, batch in enumerate(batches):
            for rb in batch.to_batches():
                await sink.write(rb)
            if flush_after is None or flush_after[i]:
                await sink.flush()
        await sink.flush()
    finally:
        await sink.close()


def batch(
    k: Sequence[int],
    v: Sequence[int],
    x: Sequence[str | None],
    deleted: Sequence[bool] | None = None,
) -> pa.Table:
    cols: dict[str, Any] = {
        "k": pa.array(k, pa.int64()),
        "v": pa.array(v, pa.int64()),
        "x": pa.array(x, pa.string()),
    }
    if deleted is not None:
        cols["_deleted"] = pa.array(deleted, pa.bool_())
    return pa.table(cols)


COLS = ["k", "v", "x"]


# --------------------------------------------------------------------------------------- tests ---


async def test_newest_version_per_key_within_and_across_batches(store: Store) -> None:
    table = new_table()
    batches = [
        batch([1, 2, 1, 3, 1], [1, 1, 3, 1, 2], ["a1", "b1", "a3", "c1", "a2"]),
        batch([2, 3, 4, 2], [0, 5, 1, 1], ["b0", "c5", "d1", "b1-later"]),
    ]
    sink = store.sink(table, key="k", version="v")
    await write_all(sink, batches)
    assert rows(store.read(table), COLS) == rows(reference_state(batches, ["k"], "v"), COLS)
    assert rows(store.read(table), COLS) == sorted(
        [(1, 3, "a3"), (2, 1, "b1-later"), (3, 5, "c5"), (4, 1, "d1")], key=repr
    )
    m = sink.metrics()
    assert m["rows_in"] == 9
    assert m["coalesced"] == 3  # a1, a2 and b0 lose within their batch
    assert m["conflicts_skipped"] == 0
    assert m["batches"] == 2


async def test_deletes_carry_versions_and_keep_tombstones(store: Store) -> None:
    table = new_table()
    batches = [
        batch([1, 2, 3], [1, 1, 1], ["a", "b", "c"]),
        batch([1, 2, 3], [2, 0, 5], [None, None, None], deleted=[True, True, True]),
        # an older row for deleted key 1 must not resurrect it; a newer one for 3 must
        batch([1, 3], [1, 6], ["a-old", "c6"], deleted=[False, False]),
    ]
    sink = store.sink(table, key="k", version="v")
    await write_all(sink, batches)
    got = rows(store.read(table), COLS)
    assert got == rows(reference_state(batches, ["k"], "v"), COLS)
    assert got == sorted([(2, 1, "b"), (3, 6, "c6")], key=repr)
    m = sink.metrics()
    assert m["deletes"] == 2
    assert m["conflicts_skipped"] == 2  # delete of 2 at v0, row 1 at v1
    assert "_deleted" not in store.read(table).column_names


async def test_replay_is_idempotent_and_older_replay_never_regresses(store: Store) -> None:
    table = new_table()
    old = batch([1, 2, 3], [1, 1, 1], ["a1", "b1", "c1"])
    new = batch([1, 2, 3], [5, 5, 5], ["a5", "b5", None], deleted=[False, False, True])
    await write_all(store.sink(table, key="k", version="v"), [old, new])
    first = rows(store.read(table), COLS)
    # replay everything, then only the older range, in separate runs (new sinks)
    await write_all(store.sink(table, key="k", version="v"), [old, new])
    assert rows(store.read(table), COLS) == first
    sink = store.sink(table, key="k", version="v")
    await write_all(sink, [old])
    assert rows(store.read(table), COLS) == first == sorted([(1, 5, "a5"), (2, 5, "b5")], key=repr)
    assert sink.metrics()["conflicts_skipped"] == 3
    assert sink.metrics()["rows_written"] == 0


async def test_out_of_order_versions_across_flushes(store: Store) -> None:
    table = new_table()
    batches = [batch([7], [v], [f"v{v}"]) for v in (3, 1, 4, 1, 5, 2, 5)]
    await write_all(store.sink(table, key="k", version="v"), batches)
    assert rows(store.read(table), COLS) == [(7, 5, "v5")]  # the later of the two v5 rows


async def test_composite_key_and_timestamp_version(store: Store) -> None:
    table = new_table()
    ts = pa.timestamp("us", tz="UTC")
    data = pa.table(
        {
            "user": pa.array([1, 1, 2, 1], pa.int64()),
            "page": pa.array(["/", "/a", "/", "/"]),
            "window_end": pa.array([10, 10, 20, 30], ts),
            "n": pa.array([1, 2, 3, 4], pa.int64()),
        }
    )
    sink = store.sink(table, key=["user", "page"])  # version defaults to window_end
    await write_all(sink, [data])
    assert sink.version == "window_end"
    got = rows(store.read(table), ["user", "page", "n"])
    assert got == sorted([(1, "/", 4), (1, "/a", 2), (2, "/", 3)], key=repr)


async def test_schema_mismatch_names_table_and_column(store: Store) -> None:
    table = new_table()
    await write_all(store.sink(table, key="k", version="v"), [batch([1], [1], ["a"])])
    wrong = pa.table({"k": pa.array([1], pa.int64()), "v": pa.array([2], pa.int64()), "x": [1.5]})
    with pytest.raises(SchemaError, match=rf"{table}.*x"):
        await write_all(store.sink(table, key="k", version="v"), [wrong])
    extra = batch([1], [2], ["b"]).append_column("y", pa.array([1], pa.int64()))
    with pytest.raises(SchemaError, match=rf"{table}.*'y'"):
        await write_all(store.sink(table, key="k", version="v"), [extra])


def test_version_required_for_raw_rows(tmp_path: Path) -> None:
    from lambdasource.sinks.duckdb import DuckDBUpsert

    sink = DuckDBUpsert(tmp_path / "x.duckdb", "t", key="k")
    with pytest.raises(ConfigError, match="version"):
        sink.bind(batch([1], [1], ["a"]).schema)
    with pytest.raises(SchemaError, match="nope"):
        DuckDBUpsert(tmp_path / "x.duckdb", "t", key="nope", version="v").bind(
            batch([1], [1], ["a"]).schema
        )


async def test_null_key_is_a_sink_error_naming_the_table(tmp_path: Path) -> None:
    from lambdasource.sinks.duckdb import DuckDBUpsert

    sink = DuckDBUpsert(tmp_path / "x.duckdb", "tbl", key="k", version="v")
    bad = pa.table({"k": pa.array([1, None], pa.int64()), "v": [1, 1], "x": ["a", "b"]})
    with pytest.raises(SinkError, match=r"tbl.*null 'k'"):
        await write_all(sink, [bad])


# ----------------------------------------------------------------------------- property test ---

_events = st.lists(
    st.tuples(
        st.integers(0, 6),  # key
        st.integers(0, 5),  # version
        st.sampled_from([False, False, False, True]),  # deleted (about 1/4)
        st.booleans(),  # flush after this event
    ),
    min_size=1,
    max_size=40,
)


def _property_batches(
    events: list[tuple[int, int, bool, bool]],
) -> tuple[list[pa.Table], list[bool]]:
    batches, flushes = [], []
    current: list[tuple[int, int, bool]] = []
    for i, (k, v, d, cut) in enumerate(events):
        current.append((k, v, d))
        if cut or i == len(events) - 1:
            batches.append(
                batch(
                    [e[0] for e in current],
                    [e[1] for e in current],
                    [None if e[2] else f"{e[0]}@{e[1]}#{i}" for e in current],
                    deleted=[e[2] for e in current],
                )
            )
            flushes.append(bool(i % 2))
            current = []
    return batches, flushes


def _check_property(store: Store, events: list[tuple[int, int, bool, bool]]) -> None:
    batches, flushes = _property_batches(events)
    table = new_table()
    asyncio.run(write_all(store.sink(table, key="k", version="v"), batches, flushes))
    got = store.read(table)
    expected = reference_state(batches, ["k"], "v")
    assert (rows(got, COLS) if got.num_rows else []) == rows(expected, COLS)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=_events)
def test_property_duckdb_equals_reference(tmp_path: Path, events: list[Any]) -> None:
    _check_property(duckdb_store(tmp_path / uuid.uuid4().hex), events)


@pytest.mark.postgres
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=_events)
def test_property_postgres_equals_reference(postgres: Any, events: list[Any]) -> None:
    _check_property(postgres_store(postgres.dsn()), events)


@pytest.mark.iceberg
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=_events)
def test_property_iceberg_equals_reference(tmp_path: Path, events: list[Any]) -> None:
    from tests.services.iceberg import file_catalog_props, load

    props = file_catalog_props(tmp_path / uuid.uuid4().hex)
    load(props).create_namespace_if_not_exists("db")
    _check_property(iceberg_store(props, "iceberg"), events)


async def test_history_table_version_in_key(store: Store) -> None:
    """``emit="every"``/``changes`` output: key (k, window_end), version window_end."""
    table = new_table()
    ts = pa.timestamp("us", tz="UTC")

    def rows_of(k: list[int], end: list[int], n: list[int], deleted: list[bool]) -> pa.Table:
        return pa.table(
            {
                "k": pa.array(k, pa.int64()),
                "window_end": pa.array(end, ts),
                "n": pa.array(n, pa.int64()),
                "_deleted": deleted,
            }
        )

    batches = [
        rows_of([1, 1, 2], [10, 20, 10], [1, 2, 3], [False, False, False]),
        rows_of([1, 2], [20, 10], [5, 0], [False, True]),  # correction and a deletion
    ]
    await write_all(store.sink(table, key=["k", "window_end"]), batches)
    got = store.read(table)
    assert rows(got, ["k", "n"]) == rows(
        reference_state(batches, ["k", "window_end"], "window_end"), ["k", "n"]
    )
    assert rows(got, ["k", "n"]) == [(1, 1), (1, 5)]


async def test_quiet_input_still_flushes_on_time(tmp_path: Path) -> None:
    """A buffered row reaches the store within flush_interval even when nothing else arrives."""
    from lambdasource.operator import Operator

    class Gate(Operator):
        """Passes batches through; the source below then stays quiet (no End) for a while."""

    class Quiet(ls.Source):
        time_column = "t"
        bounded = False

        async def run(self, out: ls.SourceOutput) -> None:
            batch = pa.RecordBatch.from_pydict(
                {"k": [1], "t": pa.array([1_000_000], pa.timestamp("us", tz="UTC"))}
            )
            await out.emit(batch)
            await asyncio.sleep(3600)

    path = tmp_path / "quiet.duckdb"
    p = ls.Pipeline()
    p.source(Quiet()).process(Gate()).sink(
        ls.DuckDBUpsert(str(path), "q", key=["k"], version="t", flush_interval="200ms")
    )
    task = asyncio.create_task(p.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            rows = next(iter(p.metrics()["sinks"].values())).get("rows_written", 0)
            if rows:
                break
        assert rows == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    con = duckdb.connect(str(path))
    assert con.sql("SELECT k FROM q").fetchall() == [(1,)]
    con.close()
