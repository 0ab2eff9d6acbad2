"""Lake scan throughput: ``ParquetLake`` / ``IcebergLake`` (ordered, watermarked) vs pyarrow/pyiceberg.

Same files, same run, same process. Cases:

- ``local``   — ParquetLake over a local hive lake vs ``pyarrow.dataset(...).to_table()``;
- ``s3``      — the same lake uploaded to a moto server started here (ThreadedMotoServer) vs
  ``pyarrow.dataset`` over ``S3FileSystem``; ``s3-process`` — the same with moto in a separate
  process (an in-process moto shares the GIL with the client under test, which taxes the
  Python aiobotocore client much more than pyarrow's C++ one);
- ``iceberg`` — IcebergLake over an ``hours(ts)`` table (SqlCatalog, file warehouse) vs
  pyiceberg's ``table.scan().to_arrow()``.

Our side emits into a counting ``SourceOutput`` (every batch and watermark goes through the
ordering/watermark code; no operator graph behind it). Timings are best-of ``--repeat``,
alternating ours/baseline; the ratio is baseline time / our time (≥ 1 means we are faster; the
target is ≥ 0.8). Run: ``python -m benchmarks.lake`` or, once registered, ``python -m benchmarks
lake``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .common import Report, markdown_table

HOUR_US = 3_600_000_000


class CountingOutput:
    """A SourceOutput that counts rows and watermarks (and checks watermarks are monotone)."""

    def __init__(self) -> None:
        self.rows = 0
        self.watermarks = 0
        self.last: int | None = None

    async def emit(self, batch: pa.RecordBatch, position: str | None = None) -> None:
        self.rows += batch.num_rows

    async def emit_watermark(self, time: int, idle: bool = False) -> None:
        assert self.last is None or time > self.last
        self.last = time
        self.watermarks += 1

    async def dead_letter(self, batch: pa.RecordBatch, reason: str, position: str | None) -> None:
        raise AssertionError(f"unexpected dead letter: {reason} at {position}")

    async def barrier_point(self) -> None:
        return None


def write_lake(root: Path, table: pa.Table, row_group_size: int) -> int:
    """Hour partitions ``dt=/hour=``, one sorted file each; returns the number of files."""
    times = table.column("event_time").cast(pa.int64()).to_numpy()
    hours = times - times % HOUR_US
    bounds = np.flatnonzero(np.diff(hours)) + 1  # table is sorted by time
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(hours)]])
    for a, b in zip(starts, ends, strict=True):
        part = table.slice(int(a), int(b - a))
        moment = time.gmtime(int(hours[a]) // 1_000_000)
        d = root / time.strftime("dt=%Y-%m-%d/hour=%H", moment)
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, d / "part-0.parquet", row_group_size=row_group_size)
    return len(starts)


def _best(
    ours: Callable[[], int], baseline: Callable[[], int], repeat: int
) -> tuple[float, float, int, int]:
    t_ours: list[float] = []
    t_base: list[float] = []
    rows_ours = rows_base = 0
    for _ in range(repeat):
        start = time.perf_counter()
        rows_base = baseline()
        t_base.append(time.perf_counter() - start)
        start = time.perf_counter()
        rows_ours = ours()
        t_ours.append(time.perf_counter() - start)
    return min(t_ours), min(t_base), rows_ours, rows_base


def _row(case: str, baseline: str, times: tuple[float, float, int, int]) -> dict[str, Any]:
    t_ours, t_base, rows_ours, rows_base = times
    return {
        "case": case,
        "baseline": baseline,
        "rows": rows_ours,
        "rows_match": rows_ours == rows_base,
        "ours_s": round(t_ours, 3),
        "baseline_s": round(t_base, 3),
        "ours_rows_per_s": rows_ours / t_ours,
        "baseline_rows_per_s": rows_base / t_base,
        "ratio": t_base / t_ours,
    }


def _run_source(source: Any) -> int:
    out = CountingOutput()
    asyncio.run(source.run(out))
    return out.rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=2_000_000, help="events (default 2M)")
    parser.add_argument("--days", type=int, default=2, help="days of event time (default 2)")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--row-group-size", type=int, default=65_536)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs each; best is reported")
    parser.add_argument("--prefetch", type=int, default=4, help="partitions in flight (4)")
    parser.add_argument(
        "--s3-prefetch",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[16],
        help="extra prefetch values measured over S3 (default 16)",
    )
    parser.add_argument(
        "--cases",
        default="local,s3,s3-process,iceberg",
        help="comma-separated subset of local,s3,s3-process,iceberg (default all)",
    )


def run(args: argparse.Namespace) -> Report:
    from lake.generator import generate_clickstream
    from lambdasource.sources.lake.parquet import ParquetLake

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    report = Report(
        "lake",
        {
            "events": args.events,
            "days": args.days,
            "users": args.users,
            "seed": args.seed,
            "row_group_size": args.row_group_size,
            "repeat": args.repeat,
            "prefetch": args.prefetch,
            "s3_prefetch": args.s3_prefetch,
            "cases": cases,
        },
    )
    table = generate_clickstream(args.events, args.days, args.users, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="lambdasource-bench-lake-"))
    try:
        root = tmp / "lake"
        files = write_lake(root, table, args.row_group_size)
        report.extra["files"] = files
        report.extra["lake_bytes"] = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        if "local" in cases:
            times = _best(
                lambda: _run_source(ParquetLake(root, "event_time", prefetch=args.prefetch)),
                lambda: ds.dataset(str(root), format="parquet").to_table().num_rows,
                args.repeat,
            )
            report.rows.append(_row("local", "pyarrow.dataset", times))
        if "s3" in cases:
            report.rows.extend(_s3_case(root, args, "threaded"))
        if "s3-process" in cases:
            report.rows.extend(_s3_case(root, args, "process"))
        if "iceberg" in cases:
            report.rows.append(_iceberg_case(tmp, table, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for row in report.rows:
        if not row["rows_match"]:
            report.notes.append(f"ROW COUNTS DIFFER in case {row['case']}")
    report.notes.append(
        "ratio = baseline time / lambdasource time (≥ 0.8 is the target); ours orders "
        "partitions and emits partition and row-group watermarks"
    )
    return report


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"moto server did not start on port {port}")


def _s3_case(root: Path, args: argparse.Namespace, mode: str) -> list[dict[str, Any]]:
    """``mode="threaded"``: ThreadedMotoServer in this process (it competes with the client for
    the GIL, which penalises a Python client more than pyarrow's C++ one); ``"process"``: the
    same moto server as a separate process."""
    import socket
    import subprocess

    import botocore.session
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    from lambdasource.s3 import S3Config
    from lambdasource.sources.lake.parquet import ParquetLake

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server: Any
    if mode == "threaded":
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stop: Callable[[], None] = server.stop
    else:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stop() -> None:
            server.terminate()
            server.wait(timeout=10)

    _wait_for_port(port)
    label = "moto, in-process" if mode == "threaded" else "moto, separate process"
    try:
        endpoint = f"http://127.0.0.1:{port}"
        cfg = S3Config(
            endpoint_url=endpoint, region="us-east-1", access_key_id="x", secret_access_key="x"
        )
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        client.create_bucket(Bucket="bench")
        for path in sorted(root.rglob("*.parquet")):
            key = f"lake/{path.relative_to(root).as_posix()}"
            client.put_object(Bucket="bench", Key=key, Body=path.read_bytes())
        s3fs = fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            access_key="x",
            secret_key="x",
        )
        rows = []
        for prefetch in sorted({args.prefetch, *args.s3_prefetch}):
            times = _best(
                lambda p=prefetch: _run_source(  # type: ignore[misc]
                    ParquetLake("s3://bench/lake", "event_time", s3=cfg, prefetch=p)
                ),
                lambda: (
                    ds.dataset("bench/lake", format="parquet", filesystem=s3fs).to_table().num_rows
                ),
                args.repeat,
            )
            rows.append(
                _row(f"s3 ({label}), prefetch={prefetch}", "pyarrow.dataset + S3FileSystem", times)
            )
        return rows
    finally:
        stop()


def _iceberg_case(tmp: Path, table: pa.Table, args: argparse.Namespace) -> dict[str, Any]:
    from pyiceberg.catalog import load_catalog
    from pyiceberg.transforms import HourTransform

    from lambdasource.sources.lake.iceberg import IcebergLake

    warehouse = tmp / "warehouse"
    warehouse.mkdir()
    props = {
        "type": "sql",
        "uri": f"sqlite:///{tmp / 'catalog.db'}",
        "warehouse": warehouse.as_uri(),
    }
    catalog = load_catalog("bench", **props)
    catalog.create_namespace("db")
    ice = catalog.create_table(
        "db.clicks",
        schema=table.schema,
        properties={"write.parquet.row-group-limit": str(args.row_group_size)},
    )
    with ice.update_spec() as update:
        update.add_field("event_time", HourTransform(), "ts_hour")
    ice.append(table)
    times = _best(
        lambda: _run_source(
            IcebergLake(
                "db.clicks", {"name": "bench", **props}, "event_time", prefetch=args.prefetch
            )
        ),
        lambda: catalog.load_table("db.clicks").scan().to_arrow().num_rows,
        args.repeat,
    )
    return _row("iceberg (file)", "pyiceberg scan().to_arrow()", times)


COLUMNS = [
    ("case", "case"),
    ("baseline", "baseline"),
    ("rows", "rows"),
    ("ours_rows_per_s", "lambdasource rows/s"),
    ("baseline_rows_per_s", "baseline rows/s"),
    ("ratio", "ratio (≥0.8)"),
    ("rows_match", "rows match"),
]


def summary(report: Report) -> str:
    lines = [markdown_table(report.rows, COLUMNS)]
    lines.append(
        f"\nLake: {report.extra.get('files')} hour files, "
        f"{report.extra.get('lake_bytes', 0) / 2**20:.1f} MiB."
    )
    lines.extend(f"Note: {note}" for note in report.notes)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lake", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run(args)
    path = report.save(args.out) if args.out else report.save()
    print(summary(report))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
