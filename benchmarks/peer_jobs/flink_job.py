"""The sliding-window job on PyFlink (Table API SQL, ``HOP`` window), run by the Flink venv's Python.

Reads ``user_id,event_time,amount`` CSV (event time ``YYYY-MM-DD HH:MM:SS.mmm``, UTC, sorted by
time), writes one CSV row per (user, window) holding at least one record:
``user_id,window_start,window_end,clicks,revenue``. Pure SQL: no Python UDF, so the job runs in
the JVM only. Prints one JSON line last: ``{"startup_s": …, "job_s": …}`` — ``startup_s`` is the
JVM gateway + environment set-up, ``job_s`` the job from submission to completion.

Standalone: imports nothing from this repository (it runs in a separate venv).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

US_UNITS = (
    ("DAY", 86_400_000_000),
    ("HOUR", 3_600_000_000),
    ("MINUTE", 60_000_000),
    ("SECOND", 1_000_000),
)


def interval(us: int) -> str:
    """A Flink SQL interval literal for ``us`` microseconds (whole seconds at least)."""
    for unit, width in US_UNITS:
        if us % width == 0:
            count = us // width
            precision = f"({len(str(count))})" if count >= 100 else ""
            return f"INTERVAL '{count}' {unit}{precision}"
    raise ValueError(f"window durations must be whole seconds for Flink SQL, got {us} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--size-us", type=int, required=True)
    parser.add_argument("--slide-us", type=int, required=True)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--mode", choices=["streaming", "batch"], default="streaming")
    parser.add_argument(
        "--checkpoint-interval",
        default="5 s",
        help="streaming mode: the file sink commits on checkpoints, the last one after end of "
        "input, so the job ends up to one interval after its last record",
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    from pyflink.table import (  # type: ignore[import-not-found, unused-ignore]
        EnvironmentSettings,
        TableEnvironment,
    )

    settings = (
        EnvironmentSettings.in_streaming_mode()
        if args.mode == "streaming"
        else EnvironmentSettings.in_batch_mode()
    )
    env = TableEnvironment.create(settings)
    conf = env.get_config()
    conf.set("parallelism.default", str(args.parallelism))
    conf.set("table.local-time-zone", "UTC")
    conf.set("python.executable", sys.executable)
    # The streaming file sink commits its files on checkpoints (the final one after end of input).
    conf.set("execution.checkpointing.interval", args.checkpoint_interval)
    watermark = ", WATERMARK FOR event_time AS event_time - INTERVAL '1' SECOND"
    env.execute_sql(
        f"""
        CREATE TABLE events (
            user_id BIGINT,
            event_time TIMESTAMP(3),
            amount DOUBLE
            {watermark if args.mode == "streaming" else ""}
        ) WITH ('connector' = 'filesystem', 'path' = '{args.input}', 'format' = 'csv')
        """
    )
    env.execute_sql(
        f"""
        CREATE TABLE results (
            user_id BIGINT,
            window_start TIMESTAMP(3),
            window_end TIMESTAMP(3),
            clicks BIGINT,
            revenue DOUBLE
        ) WITH ('connector' = 'filesystem', 'path' = '{args.output}', 'format' = 'csv')
        """
    )
    t1 = time.perf_counter()
    result = env.execute_sql(
        f"""
        INSERT INTO results
        SELECT user_id, window_start, window_end, COUNT(*) AS clicks, SUM(amount) AS revenue
        FROM TABLE(HOP(TABLE events, DESCRIPTOR(event_time),
                       {interval(args.slide_us)}, {interval(args.size_us)}))
        GROUP BY user_id, window_start, window_end
        """
    )
    result.wait()
    t2 = time.perf_counter()
    print(json.dumps({"startup_s": t1 - t0, "job_s": t2 - t1}), flush=True)


if __name__ == "__main__":
    main()
