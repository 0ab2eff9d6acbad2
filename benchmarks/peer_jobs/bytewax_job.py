"""The sliding-window job on Bytewax (``fold_window`` with a ``SlidingWindower``), run by the
Bytewax venv's Python.

Reads ``user_id,event_time_us,amount`` CSV (sorted by event time), writes one CSV row per
(user, window) holding at least one record: ``user_id,window_start_us,window_end_us,clicks,
revenue``. Windows are aligned to the epoch. The event clock's "system time" is frozen, so the
watermark is exactly the largest event time seen (never pushed ahead by wall-clock time: sorted
input has no late records, as in the other engines). One worker (``run_main``). Prints one JSON
line last: ``{"startup_s": …, "job_s": …, "late": …}``.

Standalone: imports nothing from this repository (it runs in a separate venv).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True, help="output CSV file")
    parser.add_argument("--size-us", type=int, required=True)
    parser.add_argument("--slide-us", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1000, help="CSV lines per source batch")
    parser.add_argument(
        "--ordered",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold_window(ordered=...): buffer items until the watermark (Bytewax's default)",
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    import bytewax.operators as op  # type: ignore[import-not-found, unused-ignore]
    import bytewax.operators.windowing as win  # type: ignore[import-not-found, unused-ignore]
    from bytewax.connectors.files import CSVSource  # type: ignore[import-not-found, unused-ignore]
    from bytewax.dataflow import Dataflow  # type: ignore[import-not-found, unused-ignore]
    from bytewax.testing import TestingSink, run_main  # type: ignore[import-not-found, unused-ignore]

    size = timedelta(microseconds=args.size_us)
    slide = timedelta(microseconds=args.slide_us)

    def parse(row: dict[str, str]) -> tuple[int, datetime, float]:
        return (
            int(row["user_id"]),
            EPOCH + timedelta(microseconds=int(row["event_time_us"])),
            float(row["amount"]),
        )

    def fold(acc: tuple[int, float], event: tuple[int, datetime, float]) -> tuple[int, float]:
        return acc[0] + 1, acc[1] + event[2]

    def merge(a: tuple[int, float], b: tuple[int, float]) -> tuple[int, float]:
        return a[0] + b[0], a[1] + b[1]

    frozen = datetime.now(UTC)
    flow = Dataflow("peers_sliding")
    rows = op.input("read", flow, CSVSource(args.input, batch_size=args.batch_size))
    events = op.map("parse", rows, parse)
    keyed = op.key_on("key", events, lambda e: str(e[0]))
    clock = win.EventClock(
        ts_getter=lambda e: e[1],
        wait_for_system_duration=timedelta(0),
        now_getter=lambda: frozen,
        # Historical event times are all "due" in system time: without this every activation
        # would wake every key that holds an open window (cost ~ keys per batch). Windows close
        # on the key's next item or at EOF instead.
        to_system_utc=lambda _ts: None,
    )
    windower = win.SlidingWindower(length=size, offset=slide, align_to=EPOCH)
    out = win.fold_window(
        "window", keyed, clock, windower, lambda: (0, 0.0), fold, merge, ordered=args.ordered
    )
    results: list[tuple[str, tuple[int, tuple[int, float]]]] = []
    late: list[Any] = []
    op.output("out", out.down, TestingSink(results))
    op.output("late", out.late, TestingSink(late))
    t1 = time.perf_counter()
    run_main(flow)
    t2 = time.perf_counter()

    with open(args.output, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "window_start_us", "window_end_us", "clicks", "revenue"])
        for key, (window_id, (clicks, revenue)) in results:
            start = window_id * args.slide_us
            writer.writerow([key, start, start + args.size_us, clicks, repr(revenue)])
    print(json.dumps({"startup_s": t1 - t0, "job_s": t2 - t1, "late": len(late)}), flush=True)


if __name__ == "__main__":
    main()
