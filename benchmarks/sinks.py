"""Sink benchmark: rows/s of each upsert sink against that store's native bulk path, same run.

For each store the same Arrow table (synthetic clickstream, key ``event_id`` — every row a new key —
version ``event_time``) is written in batches of ``--batch-rows``:

- **native insert** — DuckDB ``INSERT INTO … SELECT * FROM arrow`` into a table with the same
  primary key; PostgreSQL ``COPY`` (CSV written by pyarrow) into a table with the same primary key;
  pyiceberg ``table.append``;
- **upsert insert** — our sink on an empty table (all rows new): the target is ≥ 0.7× native;
- **upsert update** — our sink again over the same keys with newer versions (every row rewritten):
  the update-heavy case, reported against the same native insert figure.

PostgreSQL is started by the benchmark itself (Debian ``postgresql``: initdb/pg_ctl as the
``postgres`` user, fsync off, like the test fixture); it is skipped when not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import io
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from lake.generator import generate_clickstream
from lambdasource.sinks.upsert import UpsertSink

from .common import Report, markdown_table

console = Console(highlight=False)
KEY = "event_id"
VERSION = "event_time"
DAY_US = 86_400_000_000

COLUMNS = [
    ("store", "store"),
    ("case", "case"),
    ("rows", "rows"),
    ("seconds", "s"),
    ("rows_per_s", "rows/s"),
    ("ratio", "× native insert"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=500_000, help="rows (default 500k)")
    parser.add_argument("--batch-rows", type=int, default=100_000, help="rows per write")
    parser.add_argument("--iceberg-rows", type=int, default=200_000, help="rows for Iceberg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; best is reported")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--no-iceberg", action="store_true", help="skip Iceberg")


def _batches(table: pa.Table, size: int) -> list[pa.RecordBatch]:
    return table.combine_chunks().to_batches(max_chunksize=size)


async def _drive(sink: UpsertSink, batches: list[pa.RecordBatch]) -> float:
    sink.bind(batches[0].schema)
    await sink.open()
    started = time.perf_counter()
    try:
        for b in batches:
            await sink.write(b)
        await sink.flush()
        return time.perf_counter() - started
    finally:
        await sink.close()


def _newer(table: pa.Table) -> pa.Table:
    shifted = pc.add(table.column(VERSION), pa.scalar(DAY_US, pa.duration("us")))
    return table.set_column(table.schema.get_field_index(VERSION), VERSION, shifted)


def _rows(store: str, case: str, n: int, seconds: float, native: float | None) -> dict[str, Any]:
    rate = n / seconds if seconds > 0 else 0.0
    return {
        "store": store,
        "case": case,
        "rows": n,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rate),
        "ratio": round(rate / native, 2) if native else None,
    }


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# --- DuckDB ------------------------------------------------------------------------------------


def bench_duckdb(
    table: pa.Table, batch_rows: int, root: Path, repeat: int = 1
) -> list[dict[str, Any]]:
    import duckdb

    from lambdasource.sinks.duckdb import DuckDBUpsert

    batches = _batches(table, batch_rows)
    newer = _batches(_newer(table), batch_rows)
    t_native = t_ins = t_upd = float("inf")
    for i in range(repeat):
        con = duckdb.connect(str(root / f"native{i}.duckdb"))
        con.execute("SET TimeZone = 'UTC'")
        con.register("first", pa.Table.from_batches(batches[:1]))
        con.execute("CREATE TABLE native AS SELECT * FROM first LIMIT 0")
        con.execute(f'ALTER TABLE native ADD PRIMARY KEY ("{KEY}")')
        con.unregister("first")

        def native(con: Any = con) -> None:
            for b in batches:
                con.register("b", b)
                con.execute("INSERT INTO native SELECT * FROM b")
                con.unregister("b")

        t_native = min(t_native, _timed(native))
        con.close()
        path = root / f"ours{i}.duckdb"
        sink = DuckDBUpsert(path, "t", KEY, VERSION, batch_rows=batch_rows)
        t_ins = min(t_ins, asyncio.run(_drive(sink, batches)))
        sink = DuckDBUpsert(path, "t", KEY, VERSION, batch_rows=batch_rows)
        t_upd = min(t_upd, asyncio.run(_drive(sink, newer)))
    rate = table.num_rows / t_native
    n = table.num_rows
    return [
        _rows("duckdb", "native insert (INSERT from Arrow)", n, t_native, rate),
        _rows("duckdb", "DuckDBUpsert insert", n, t_ins, rate),
        _rows("duckdb", "DuckDBUpsert update (newer versions)", n, t_upd, rate),
    ]


# --- PostgreSQL --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_cluster() -> Iterator[str | None]:
    """A throwaway PostgreSQL cluster (DSN), or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        yield None
        return
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="ls-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts]
    subprocess.run(
        _as_postgres([*start, "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


async def _pg_native(dsn: str, batches: list[pa.RecordBatch], name: str) -> float:
    import asyncpg
    import pyarrow.csv as pacsv

    from lambdasource.sinks.postgres import pg_type

    conn = await asyncpg.connect(dsn)
    try:
        schema = batches[0].schema
        cols = ", ".join(f'"{f.name}" {pg_type(f.type, f.name, name)}' for f in schema)
        await conn.execute(f'CREATE TABLE {name} ({cols}, PRIMARY KEY ("{KEY}"))')
        started = time.perf_counter()
        for b in batches:
            buf = io.BytesIO()
            pacsv.write_csv(
                b, buf, pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
            )
            buf.seek(0)
            await conn.copy_to_table(name, source=buf, format="csv", columns=schema.names)
        return time.perf_counter() - started
    finally:
        await conn.close()


def bench_postgres(
    table: pa.Table, batch_rows: int, dsn: str, repeat: int = 1
) -> list[dict[str, Any]]:
    from lambdasource.sinks.postgres import PostgresUpsert

    batches = _batches(table, batch_rows)
    newer = _batches(_newer(table), batch_rows)
    t_native = t_ins = t_upd = float("inf")
    for i in range(repeat):
        t_native = min(t_native, asyncio.run(_pg_native(dsn, batches, f"native{i}")))
        sink = PostgresUpsert(dsn, f"t{i}", KEY, VERSION, batch_rows=batch_rows)
        t_ins = min(t_ins, asyncio.run(_drive(sink, batches)))
        sink = PostgresUpsert(dsn, f"t{i}", KEY, VERSION, batch_rows=batch_rows)
        t_upd = min(t_upd, asyncio.run(_drive(sink, newer)))
    rate = table.num_rows / t_native
    n = table.num_rows
    return [
        _rows("postgres", "native insert (COPY)", n, t_native, rate),
        _rows("postgres", "PostgresUpsert insert", n, t_ins, rate),
        _rows("postgres", "PostgresUpsert update (newer versions)", n, t_upd, rate),
    ]


# --- Iceberg -----------------------------------------------------------------------------------


def bench_iceberg(
    table: pa.Table, batch_rows: int, root: Path, repeat: int = 1
) -> list[dict[str, Any]]:
    from lambdasource.sinks.iceberg import IcebergUpsert, load_catalog

    warehouse = root / "warehouse"
    warehouse.mkdir()
    props = {
        "name": "bench",
        "type": "sql",
        "uri": f"sqlite:///{root / 'catalog.db'}",
        "warehouse": warehouse.as_uri(),
    }
    catalog = load_catalog(props)
    catalog.create_namespace_if_not_exists("db")
    batches = _batches(table, batch_rows)
    newer = _batches(_newer(table), batch_rows)
    t_native = t_ins = t_upd = float("inf")
    for i in range(repeat):
        native_table = catalog.create_table(f"db.native{i}", schema=table.schema)

        def native(target: Any = native_table) -> None:
            for b in batches:
                target.append(pa.Table.from_batches([b]))

        t_native = min(t_native, _timed(native))
        sink = IcebergUpsert(f"db.t{i}", props, KEY, VERSION, batch_rows=batch_rows)
        t_ins = min(t_ins, asyncio.run(_drive(sink, batches)))
        sink = IcebergUpsert(f"db.t{i}", props, KEY, VERSION, batch_rows=batch_rows)
        t_upd = min(t_upd, asyncio.run(_drive(sink, newer)))
    rate = table.num_rows / t_native
    n = table.num_rows
    return [
        _rows("iceberg", "native insert (pyiceberg append)", n, t_native, rate),
        _rows("iceberg", "IcebergUpsert insert", n, t_ins, rate),
        _rows("iceberg", "IcebergUpsert update (newer versions)", n, t_upd, rate),
    ]


# --- runner ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Report:
    parameters = {
        "rows": args.rows,
        "iceberg_rows": args.iceberg_rows,
        "batch_rows": args.batch_rows,
        "seed": args.seed,
        "repeat": args.repeat,
        "key": KEY,
        "version": VERSION,
    }
    report = Report("sinks", parameters)
    table = generate_clickstream(args.rows, days=7, users=10_000, seed=args.seed)
    console.print(f"[bold]sinks benchmark[/]: {args.rows:,} rows, batches of {args.batch_rows:,}")
    with tempfile.TemporaryDirectory(prefix="ls-bench-sinks-") as tmp:
        root = Path(tmp)
        console.print("  duckdb …")
        (root / "duck").mkdir()
        report.rows.extend(bench_duckdb(table, args.batch_rows, root / "duck", args.repeat))
        if not args.no_postgres:
            console.print("  postgres …")
            with postgres_cluster() as dsn:
                if dsn is None:
                    report.notes.append("PostgreSQL not installed: skipped")
                else:
                    report.rows.extend(bench_postgres(table, args.batch_rows, dsn, args.repeat))
        if not args.no_iceberg:
            console.print("  iceberg …")
            (root / "ice").mkdir()
            small = table.slice(0, args.iceberg_rows)
            report.rows.extend(bench_iceberg(small, args.batch_rows, root / "ice", args.repeat))
    report.notes.append(
        "insert = every row a new key into an empty table; update = the same keys again with "
        "versions one day newer (every row rewritten); ratios are against the native insert path "
        "of the same store, measured in the same run (target for inserts: >= 0.7); each figure "
        "is the best of --repeat runs (the machine is shared, single runs are noisy)"
    )
    return report


def summary(report: Report) -> str:
    lines = [markdown_table(report.rows, COLUMNS)]
    lines.extend(f"Note: {note}" for note in report.notes)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    report = run(parser.parse_args())
    print(summary(report))
    print(f"results: {report.save()}")


if __name__ == "__main__":
    main()
