"""Adversarial round 2: archived dead letters, lake edges, topic edges, sinks.

Every test here failed against the code when written; its docstring says what happened and what
a careful user expects. Oracles: event-id multisets and dead letters' (partition, offset). Fixed:
the Iceberg writer numbers commits past every snapshot the table ever carried, so a rolled-back
commit's sequence (and its dead-letter file) is never reused.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import lambdasource as ls
from tests.edges.test_archived_dead_letters import Logged, good_ids, positions, produce_mixed
from tests.integration.test_archiver import SCHEMA, TIME, archiver, rows
from tests.services.kafka import KafkaService


async def _cancel_after_flushes(task: asyncio.Task[Any], sink: Logged, flushes: int) -> None:
    try:
        for _ in range(1500):
            await asyncio.sleep(0.02)
            if task.done() or sum(1 for k, _ in sink.log if k == "flush") >= flushes:
                break
        assert not task.done(), "the first run ended before it could be cancelled"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.kafka
async def test_restore_of_a_snapshot_rolled_back_and_re_archived_keeps_dead_letters_once(
    kafka: KafkaService, tmp_path: Path, iceberg_catalog_props: dict[str, str]
) -> None:
    """An Iceberg lake archived in three commits; a checkpointed offsets-handoff job pins the
    newest snapshot and is cancelled; the operator rolls the table back to the first snapshot
    and the archiver re-archives (more bad messages arrived meanwhile) — reusing the commit
    sequences of the rolled-back snapshots, so their dead-letter files are replaced. The
    restored job still reads its pinned snapshot (the data is all there), but takes the
    archived dead letters of that snapshot's lineage from the *replaced* files: it emits bad
    messages beyond its pinned offsets, which its stream dead-letters again (duplicates), or
    refuses to restore. (Without the rollback the same restore is exact.) Expected: every bad message once, every good one once (the pinned
    snapshot's dead letters, as it was pinned)."""
    from lake.writer import IcebergLakeWriter

    topic = await asyncio.to_thread(kafka.new_topic, 2)
    writer = IcebergLakeWriter("db.rb", iceberg_catalog_props, TIME)
    good1, bad1, _ = await produce_mixed(kafka, topic, rows(600, seed=21), every=8)
    await archiver(kafka, topic, writer, commit_rows=100).run()
    assert len(writer.commits()) >= 2
    good2, bad2, _ = await produce_mixed(kafka, topic, rows(200, seed=22, first_id=40_000), every=6)
    url = (tmp_path / "ckpt").as_uri()

    def make(main: Logged, dead: Logged) -> ls.Pipeline:
        stream = ls.KafkaStream(
            topic, kafka.bootstrap, time_column=TIME, schema=SCHEMA, stop_at="latest"
        )
        source = ls.LambdaSource(
            ls.IcebergLake("db.rb", iceberg_catalog_props, TIME, batch_size=16),
            stream,
            handoff="offsets",
            out_of_orderness="1m",
            idle_timeout="300ms",
        )
        p = ls.Pipeline(checkpoints=ls.Checkpoints(url, interval="50ms", keep=100))
        src = p.source(source)

        def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
            import time

            time.sleep(0.01)
            return batch

        src.map(slow).sink(main)
        src.dead_letters().sink(dead)
        return p

    main1, dead1 = Logged(), Logged()
    await _cancel_after_flushes(asyncio.create_task(make(main1, dead1).run()), main1, 3)
    table = writer.table()
    first = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)[0]
    table.manage_snapshots().rollback_to_snapshot(first.snapshot_id).commit()
    good3, bad3, _ = await produce_mixed(kafka, topic, rows(100, seed=23, first_id=80_000), every=4)
    await archiver(kafka, topic, writer, commit_rows=100_000).run()
    main2, dead2 = Logged(), Logged()
    await asyncio.wait_for(make(main2, dead2).run(), 90)
    main_after = Counter(good_ids(main2.table())) if main2.batches else Counter()
    dead_after = Counter(positions(dead2.table())) if dead2.batches else Counter()
    good, bad = good1 + good2 + good3, bad1 + bad2 + bad3
    mains, deads = main1.prefixes(good_ids), dead1.prefixes(positions)
    assert any(
        m + main_after == good and d + dead_after == bad for m, d in zip(mains, deads, strict=False)
    ), (
        f"restored run: {sum(main_after.values())} good, {sum(dead_after.values())} dead "
        f"(dead letters beyond every prefix: {sorted((deads[-1] + dead_after - bad).elements())[:8]}; "
        f"missing: {sorted((bad - deads[-1] - dead_after).elements())[:8]}); "
        f"expected {sum(good.values())} / {sum(bad.values())}; prefixes "
        f"{[(sum(m.values()), sum(d.values())) for m, d in zip(mains, deads, strict=False)]}"
    )
