"""The synthetic clickstream generator: deterministic, right shape, right ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lake.generator import (
    CLICKSTREAM_SCHEMA,
    DEFAULT_START,
    KINDS,
    generate_clickstream,
    iter_clickstream,
)
from lambdasource.errors import ConfigError

US_PER_DAY = 86_400_000_000


def micros(table: pa.Table) -> np.ndarray:
    return table.column("event_time").cast(pa.int64()).to_numpy()


def start_us(start: datetime = DEFAULT_START) -> int:
    return (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_same_seed_same_rows() -> None:
    a = generate_clickstream(5_000, days=3, users=50, seed=7)
    b = generate_clickstream(5_000, days=3, users=50, seed=7)
    assert a.equals(b)


def test_different_seed_different_rows() -> None:
    a = generate_clickstream(5_000, days=3, users=50, seed=1)
    b = generate_clickstream(5_000, days=3, users=50, seed=2)
    assert not a.equals(b)


def test_schema_and_row_count() -> None:
    table = generate_clickstream(12_345, days=4, users=100, seed=3)
    assert table.schema == CLICKSTREAM_SCHEMA
    assert table.num_rows == 12_345
    assert table.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert all(table.column(name).null_count == 0 for name in table.schema.names)


def test_ranges() -> None:
    days, users = 5, 200
    table = generate_clickstream(20_000, days=days, users=users, seed=4)
    t = micros(table)
    assert t.min() >= start_us()
    assert t.max() < start_us() + days * US_PER_DAY
    user = table.column("user_id").to_numpy()
    assert user.min() >= 1
    assert user.max() <= users
    assert table.column("session_id").to_numpy().min() >= 0
    assert set(pc.unique(table.column("kind")).to_pylist()) == set(KINDS)
    assert table.column("event_id").to_pylist() == list(range(20_000))
    pages = pc.unique(table.column("page")).to_pylist()
    assert all(
        p in ("/", "/search", "/cart", "/checkout") or p.startswith("/product/") for p in pages
    )


def test_sorted_by_event_time_without_jitter() -> None:
    t = micros(generate_clickstream(10_000, days=2, users=10, seed=5))
    assert np.all(np.diff(t) >= 0)


def test_every_day_gets_events() -> None:
    days = 7
    t = micros(generate_clickstream(7_000, days=days, users=10, seed=6))
    per_day = np.bincount((t - start_us()) // US_PER_DAY, minlength=days)
    assert len(per_day) == days
    assert per_day.min() > 700


def test_amounts_only_for_purchases_and_quantised() -> None:
    table = generate_clickstream(50_000, days=2, users=100, seed=8)
    amount = table.column("amount").to_numpy()
    purchase = pc.equal(table.column("kind"), "purchase").to_numpy(zero_copy_only=False)
    assert purchase.any()
    assert np.all(amount[~purchase] == 0.0)
    assert np.all(amount[purchase] > 0.0)
    assert np.all(np.mod(amount, 0.25) == 0.0)
    pages = np.array(table.column("page").to_pylist())
    assert np.all(pages[purchase] == "/checkout")


def test_activity_is_skewed() -> None:
    table = generate_clickstream(100_000, days=2, users=1_000, seed=9)
    counts = np.sort(np.bincount(table.column("user_id").to_numpy()))[::-1]
    # Zipf-like: the busiest user has far more events than the median active user.
    assert counts[0] > 20 * np.median(counts[counts > 0])


def test_uniform_when_skew_is_zero() -> None:
    table = generate_clickstream(100_000, days=1, users=10, seed=9, skew=0.0)
    counts = np.bincount(table.column("user_id").to_numpy())[1:]
    assert counts.min() > 9_000
    assert counts.max() < 11_000


def test_device_is_stable_per_user() -> None:
    table = generate_clickstream(20_000, days=1, users=100, seed=10)
    per_user = table.group_by("user_id").aggregate([("device", "count_distinct")])
    assert pc.max(per_user.column("device_count_distinct")).as_py() == 1


def test_session_is_per_user_and_half_hour() -> None:
    table = generate_clickstream(20_000, days=1, users=30, seed=11)
    per_session = table.group_by("session_id").aggregate([("user_id", "count_distinct")])
    assert pc.max(per_session.column("user_id_count_distinct")).as_py() == 1


@pytest.mark.parametrize("jitter", [timedelta(minutes=5), "5m", 300_000_000])
def test_jitter_is_bounded_out_of_orderness(jitter: timedelta | str | int) -> None:
    bound = 300_000_000
    sorted_table = generate_clickstream(30_000, days=2, users=20, seed=12)
    table = generate_clickstream(30_000, days=2, users=20, seed=12, jitter=jitter)
    t = micros(table)
    assert np.any(np.diff(t) < 0), "jitter should produce out-of-order rows"
    running_max = np.maximum.accumulate(t)
    assert np.all(t >= running_max - bound)
    assert t.min() >= start_us()
    # Only times move: every other column is the same as without jitter.
    assert table.drop_columns(["event_time", "session_id"]).equals(
        sorted_table.drop_columns(["event_time", "session_id"])
    )
    shift = micros(sorted_table) - t
    assert shift.min() >= 0
    assert shift.max() <= bound


@pytest.mark.parametrize("batch_size", [1_000, 4_096, 7_777, 100_000])
def test_batches_concatenate_to_the_table(batch_size: int) -> None:
    table = generate_clickstream(25_000, days=3, users=40, seed=13, jitter="1m")
    batches = list(iter_clickstream(25_000, 3, 40, seed=13, jitter="1m", batch_size=batch_size))
    assert all(b.num_rows == batch_size for b in batches[:-1])
    assert 0 < batches[-1].num_rows <= batch_size
    assert pa.Table.from_batches(batches).equals(table)


def test_custom_start_and_naive_start_is_utc() -> None:
    aware = generate_clickstream(1_000, days=1, users=5, start=datetime(2025, 6, 1, tzinfo=UTC))
    naive = generate_clickstream(1_000, days=1, users=5, start=datetime(2025, 6, 1))
    assert aware.equals(naive)
    assert micros(aware).min() >= start_us(datetime(2025, 6, 1, tzinfo=UTC))


def test_zero_events() -> None:
    table = generate_clickstream(0, days=2, users=5)
    assert table.num_rows == 0
    assert table.schema == CLICKSTREAM_SCHEMA
    assert list(iter_clickstream(0, 2, 5)) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": -1}, "events"),
        ({"days": 0}, "days"),
        ({"users": 0}, "users"),
        ({"jitter": "soon"}, "jitter"),
        ({"skew": -1.0}, "skew"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"events": 10, "days": 1, "users": 1} | kwargs
    with pytest.raises((ValueError, ConfigError), match=message):
        generate_clickstream(**args)  # type: ignore[arg-type]
