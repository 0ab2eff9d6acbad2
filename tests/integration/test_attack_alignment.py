"""Attack: watermark alignment under sparse and skewed stream data.

A dense 10-hour lake; a 3-partition topic after it: partition 0 sparse (one record every ~3 h
over 4 days, so one fetch spans days), partition 1 dense (6 hours), partition 2 empty. Both
handoffs, ``max_drift`` "0s" and "10m", whole-topic fetches. Measured at the operator right after
the source by a pass-through :class:`ls.Operator` of our own (each batch's max time minus the last
watermark it received; batches before the first watermark against that first watermark).

Oracle: every generated event id exactly once; no row at or before a watermark already seen;
no lead beyond ``max_drift + out_of_orderness``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import lambdasource as ls
from lake.generator import generate_clickstream
from lake.writer import ParquetLakeWriter
from lambdasource.timeutil import HOUR, MINUTE
from tests.integration.ordered import SCHEMA, TIME, Recorder
from tests.services.brokers import Broker, both_brokers

broker = both_brokers(default=("apache",))


def shift(table: pa.Table, start: int, span: int, id_base: int) -> pa.Table:
    """Rescale ``table``'s times into [start, start + span) keeping order; ids from id_base."""
    t = pc.cast(table.column(TIME), pa.int64()).to_numpy()
    lo, hi = int(t.min()), int(t.max()) + 1
    new = start + ((t - lo).astype(np.float64) * span / (hi - lo)).astype(np.int64)
    out = table.set_column(0, TIME, pa.array(new, pa.timestamp("us", tz="UTC")))
    ids = pa.array(np.arange(id_base, id_base + table.num_rows), pa.int64())
    return out.set_column(1, "event_id", ids).sort_by(TIME)


def data() -> tuple[pa.Table, dict[int, pa.Table], int]:
    base = generate_clickstream(4000, 1, 30, seed=12, jitter="0s").select(SCHEMA.names)
    base = base.cast(SCHEMA)
    t0 = 1_767_225_600_000_000
    lake = shift(base.slice(0, 2000), t0, 10 * HOUR, 0)
    end = t0 + 10 * HOUR
    sparse = shift(base.slice(2000, 32), end + 5 * MINUTE, 4 * 24 * HOUR, 100_000)
    dense = shift(base.slice(2032, 1968), end, 6 * HOUR, 200_000)
    return lake, {0: sparse, 1: dense, 2: sparse.slice(0, 0)}, end


def jsons(rows: pa.Table) -> tuple[list[bytes], list[int]]:
    vals = [orjson.dumps({**r, TIME: r[TIME].isoformat()}) for r in rows.to_pylist()]
    return vals, (pc.cast(rows.column(TIME), pa.int64()).to_numpy() // 1000).tolist()


@pytest.mark.parametrize("handoff", ["timestamp", "offsets"])
@pytest.mark.parametrize("drift", ["0s", "10m"])
async def test_sparse_and_skewed_partitions_stay_within_the_bound(
    broker: Broker, tmp_path: Path, handoff: str, drift: str
) -> None:
    lake_rows, parts, end = data()
    topic = await asyncio.to_thread(broker.new_topic, 3)
    for p, rows in parts.items():
        if rows.num_rows:
            vals, stamps = jsons(rows)
            await broker.aproduce(topic, vals, partition=p, timestamps_ms=stamps)
    ParquetLakeWriter(tmp_path / "lake", TIME, row_group_rows=100).write(
        lake_rows, offsets={0: 0, 1: 0, 2: 0}, topic=topic
    )
    ooo = 2 * MINUTE
    source = ls.LambdaSource(
        ls.ParquetLake(tmp_path / "lake", TIME, schema=SCHEMA, batch_size=200),
        ls.KafkaStream(
            topic,
            broker.bootstrap,
            time_column=TIME,
            schema=SCHEMA,
            stop_at="latest",
            max_batch_records=5000,
        ),
        handoff=handoff,
        cutoff=end if handoff == "timestamp" else None,
        out_of_orderness="2m",
        idle_timeout="300ms",
        alignment=ls.Alignment(max_drift=drift),
    )
    rec = Recorder()
    p = ls.Pipeline()
    p.source(source).process(rec).sink(ls.CollectSink())
    await asyncio.wait_for(p.run(), 120)
    expected = Counter(lake_rows.column("event_id").to_pylist())
    for rows in parts.values():
        expected.update(rows.column("event_id").to_pylist())
    got = rec.ids()
    assert got == expected, (
        f"missing {sorted((expected - got).elements())[:10]}, "
        f"duplicated {sorted((got - expected).elements())[:10]}"
    )
    late = rec.late()
    assert not late, f"{len(late)} late rows, first {late[:3]}"
    bound = {"0s": 0, "10m": 10 * MINUTE}[drift] + ooo
    assert rec.worst_lead() <= bound, (rec.worst_lead(), bound)
