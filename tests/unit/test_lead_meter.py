"""ls.LeadMeter measures each batch's newest row against the watermark in force at it."""

from __future__ import annotations

import pyarrow as pa

import lambdasource as ls


def table(times: list[int]) -> pa.Table:
    return pa.table({"t": pa.array(times, pa.timestamp("us", tz="UTC")), "v": range(len(times))})


async def test_lead_is_measured_against_the_watermark_in_force() -> None:
    # batches of 2 rows, watermark = max so far − 10 after each: [0, 100] before any watermark
    # (measured against the first, 90), then [5, 300] against 90, then [310, 320] against 290
    data = table([0, 100, 5, 300, 310, 320])
    meter = ls.LeadMeter("t", bound_us=150)
    p = ls.Pipeline()
    sink = ls.CollectSink()
    p.source(ls.MemorySource(data, time_column="t", batch_size=2, out_of_orderness=10)).process(
        meter, name="lead"
    ).sink(sink)
    await p.run()
    assert sink.table().num_rows == 6  # a pass-through
    assert meter.max_lead_us == 300 - 90
    assert meter.batches == 3 and meter.batches_beyond == 1
