"""IcebergUpsert specifics: lineage in snapshot summaries, composite keys rewrite only their slice."""

from __future__ import annotations

from typing import Any

import pytest

from lambdasource.sinks.iceberg import IcebergUpsert
from tests.integration.test_sinks_common import COLS, batch, rows
from tests.services.iceberg import load

pytestmark = pytest.mark.iceberg


async def test_lineage_in_snapshot_properties(iceberg_catalog_props: dict[str, str]) -> None:
    sink = IcebergUpsert(
        "db.lin", iceberg_catalog_props, key="k", version="v", lineage={"source": "file=a row=3"}
    )
    sink.bind(batch([1], [1], ["a"]).schema)
    await sink.open()
    for rb in batch([1, 2], [1, 1], ["a", "b"]).to_batches():
        await sink.write(rb)
    await sink.on_watermark(123_456)
    await sink.flush()
    await sink.close()
    table = load(iceberg_catalog_props).load_table("db.lin")
    summary = table.current_snapshot().summary
    assert summary["lambdasource.watermark"] == "123456"
    assert summary["source"] == "file=a row=3"
    assert rows(table.scan().to_arrow(), COLS) == [(1, 1, "a"), (2, 1, "b")]


async def test_existing_schema_mismatch(iceberg_catalog_props: dict[str, str]) -> None:
    from lambdasource.errors import SchemaError

    first: Any = IcebergUpsert("db.m", iceberg_catalog_props, key="k", version="v")
    first.bind(batch([1], [1], ["a"]).schema)
    await first.open()
    for rb in batch([1], [1], ["a"]).to_batches():
        await first.write(rb)
    await first.flush()
    import pyarrow as pa

    bad = pa.table({"k": [1], "v": [2], "x": [2.5]})
    sink = IcebergUpsert("db.m", iceberg_catalog_props, key="k", version="v")
    sink.bind(bad.schema)
    await sink.open()
    for rb in bad.to_batches():
        await sink.write(rb)
    with pytest.raises(SchemaError, match=r"table=db\.m column='x'"):
        await sink.flush()


async def test_sparse_updates_rewrite_only_their_keys(
    iceberg_catalog_props: dict[str, str],
) -> None:
    import pyarrow as pa

    from tests.integration.test_sinks_common import reference_state, write_all

    ks = list(range(1, 11))
    first = batch(ks, [1] * 10, [f"r{k}" for k in ks])
    sparse = batch([2, 9, 5], [2, 2, 0], ["u2", "u9", "old5"])  # 5 is older: rejected
    await write_all(IcebergUpsert("db.s", iceberg_catalog_props, "k", "v"), [first, sparse])
    got = load(iceberg_catalog_props).load_table("db.s").scan().to_arrow()
    assert rows(got, COLS) == rows(reference_state([first, sparse], ["k"], "v"), COLS)
    composite = pa.table(
        {"a": [1, 1, 2, 2], "b": ["x", "y", "x", "y"], "v": [1, 1, 1, 1], "n": [1, 2, 3, 4]}
    )
    update = pa.table({"a": [1, 2], "b": ["x", "y"], "v": [2, 2], "n": [10, 40]})
    await write_all(
        IcebergUpsert("db.c", iceberg_catalog_props, ["a", "b"], "v"), [composite, update]
    )
    got = load(iceberg_catalog_props).load_table("db.c").scan().to_arrow()
    assert rows(got, ["a", "b", "n"]) == [(1, "x", 10), (1, "y", 2), (2, "x", 3), (2, "y", 40)]
