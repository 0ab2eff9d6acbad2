"""Deterministic synthetic clickstream: the dataset behind the demo, the tests and the benchmarks.

Everything is vectorised numpy (a few million events per second on one core). The output is a
pure function of the arguments: the same ``(events, days, users, seed, start, ...)`` give the same
rows, bit for bit, whether taken whole (:func:`generate_clickstream`) or in batches
(:func:`iter_clickstream`), and whatever the batch size.

Shape of the data (schema :data:`CLICKSTREAM_SCHEMA`):

- ``event_time`` — ``timestamp[us, UTC]`` in ``[start, start + days)``, with a diurnal profile
  (quiet nights, busy evenings). Rows come sorted by event time; ``jitter`` makes them bounded
  out of order instead: each row is moved back in time by at most ``jitter`` (never before
  ``start``), so every row's time is ``>= max(earlier times) - jitter``.
- ``event_id`` — ``int64``, ``0 … events-1`` in row order (unique; handy to check exactly-once).
- ``user_id`` — ``int64`` in ``[1, users]``; activity is Zipf-like (a few users are very active,
  most are not; exponent ``skew``). Which id is busiest is shuffled by the seed.
- ``session_id`` — ``int64 >= 0``, a hash of the user and a 30-minute bucket of its time.
- ``kind`` — ``string``: ``view``, ``click``, ``add_to_cart`` or ``purchase``.
- ``page`` — ``string``: ``/``, ``/search``, ``/product/N`` (Zipf popularity over ``pages``),
  ``/cart`` for ``add_to_cart``, ``/checkout`` for ``purchase``.
- ``device`` — ``string``: ``desktop``, ``mobile`` or ``tablet``, stable per user.
- ``amount`` — ``float64``: ``0.0`` except for purchases, where it is a positive price, a
  multiple of ``amount_quantum`` (default 0.25). A dyadic quantum keeps every float sum exact in
  any order of summation, so results of different engines can be compared for equality.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = [
    "CLICKSTREAM_SCHEMA",
    "DEFAULT_START",
    "KINDS",
    "generate_clickstream",
    "iter_clickstream",
]

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

KINDS: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
_KIND_WEIGHTS = np.array([0.70, 0.22, 0.06, 0.02])
_PURCHASE = 3
_ADD_TO_CART = 2
_DEVICES: tuple[str, ...] = ("desktop", "mobile", "tablet")

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_SESSION_BUCKET_US = 30 * 60 * 1_000_000

# Relative traffic per UTC hour of the day: low at night, a peak in the evening.
_HOURLY = np.array(
    [2, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 6, 7, 7, 6, 6, 6, 7, 8, 9, 9, 8, 6, 4], dtype=np.float64
)
_HOURLY_P = _HOURLY / _HOURLY.sum()

CLICKSTREAM_SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("page", pa.string(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
    ]
)

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


def _mix64(x: U64) -> U64:
    """splitmix64 finaliser: a fast, well-spread hash of uint64 values (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _to_micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _jitter_micros(jitter: timedelta | str | int | None) -> int:
    if jitter is None:
        return 0
    if isinstance(jitter, timedelta):
        return jitter // timedelta(microseconds=1)
    if isinstance(jitter, int) and not isinstance(jitter, bool):
        return jitter
    if isinstance(jitter, str):
        from lambdasource.timeutil import parse_duration

        return parse_duration(jitter, name="jitter")
    raise TypeError(f"jitter: expected a timedelta, a string like '5m' or int µs, got {jitter!r}")


def _zipf_cdf(n: int, exponent: float) -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


class _Plan:
    """Everything shared by all days of one dataset (drawn once from the root seed)."""

    def __init__(
        self,
        events: int,
        days: int,
        users: int,
        seed: int,
        start: datetime,
        jitter: timedelta | str | int | None,
        skew: float,
        pages: int,
        amount_quantum: float,
    ) -> None:
        if events < 0:
            raise ValueError(f"events must be >= 0, got {events}")
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        if users < 1:
            raise ValueError(f"users must be >= 1, got {users}")
        if pages < 1:
            raise ValueError(f"pages must be >= 1, got {pages}")
        if skew < 0:
            raise ValueError(f"skew must be >= 0, got {skew}")
        if amount_quantum <= 0:
            raise ValueError(f"amount_quantum must be > 0, got {amount_quantum}")
        self.days = days
        self.start_us = _to_micros(start)
        self.jitter_us = _jitter_micros(jitter)
        if self.jitter_us < 0:
            raise ValueError(f"jitter must not be negative, got {jitter!r}")
        self.amount_quantum = amount_quantum
        root = np.random.SeedSequence(seed)
        plan_seq, *day_seqs = root.spawn(days + 1)
        self.day_seqs = day_seqs
        rng = np.random.default_rng(plan_seq)
        self.per_day = rng.multinomial(events, np.full(days, 1.0 / days))
        self.user_cdf = _zipf_cdf(users, skew)
        self.user_ids = rng.permutation(users).astype(np.int64) + 1  # rank -> user id
        self.page_cdf = _zipf_cdf(pages, 1.0)
        # Page vocabulary: 0 "/", 1 "/search", 2 "/cart", 3 "/checkout", 4.. products.
        self.page_vocab = pa.array(
            ["/", "/search", "/cart", "/checkout"] + [f"/product/{i}" for i in range(pages)],
            pa.string(),
        )
        self.kind_vocab = pa.array(list(KINDS), pa.string())
        self.device_vocab = pa.array(list(_DEVICES), pa.string())

    def day(self, index: int, first_event_id: int) -> pa.RecordBatch:
        """All events of day ``index`` (sorted, then jittered), as one batch."""
        n = int(self.per_day[index])
        rng = np.random.default_rng(self.day_seqs[index])
        hour = rng.choice(24, size=n, p=_HOURLY_P).astype(np.int64)
        offset = rng.integers(0, _US_PER_HOUR, size=n, dtype=np.int64)
        times = np.sort(self.start_us + index * _US_PER_DAY + hour * _US_PER_HOUR + offset)

        rank = np.searchsorted(self.user_cdf, rng.random(n), side="right")
        rank = np.minimum(rank, len(self.user_cdf) - 1)
        user = self.user_ids[rank]

        kind = rng.choice(len(KINDS), size=n, p=_KIND_WEIGHTS).astype(np.int8)

        landing = rng.random(n)
        product = np.searchsorted(self.page_cdf, rng.random(n), side="right")
        product = np.minimum(product, len(self.page_cdf) - 1) + 4
        page = np.where(landing < 0.10, 0, np.where(landing < 0.20, 1, product))
        page = np.where(kind == _ADD_TO_CART, 2, page)
        page = np.where(kind == _PURCHASE, 3, page)

        prices = rng.lognormal(mean=3.4, sigma=0.9, size=n)
        q = self.amount_quantum
        prices = np.maximum(np.round(prices / q), 1.0) * q
        amount = np.where(kind == _PURCHASE, prices, 0.0)

        uid = user.astype(np.uint64)
        device = (_mix64(uid) % np.uint64(10)).astype(np.int64)
        device = np.where(device < 5, 1, np.where(device < 9, 0, 2))  # mobile 50%, desktop 40%

        # Drawn last, so the other columns do not depend on whether jitter is used.
        if self.jitter_us > 0:
            back = rng.integers(0, self.jitter_us + 1, size=n, dtype=np.int64)
            times = np.maximum(times - back, self.start_us)

        bucket = (times // _SESSION_BUCKET_US).astype(np.uint64)
        session = (_mix64((uid << np.uint64(32)) ^ bucket) >> np.uint64(1)).astype(np.int64)

        columns = [
            pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            pa.array(np.arange(first_event_id, first_event_id + n, dtype=np.int64)),
            pa.array(user, pa.int64()),
            pa.array(session, pa.int64()),
            self.kind_vocab.take(pa.array(kind)),
            self.page_vocab.take(pa.array(page.astype(np.int64))),
            self.device_vocab.take(pa.array(device.astype(np.int64))),
            pa.array(amount, pa.float64()),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=CLICKSTREAM_SCHEMA)

    def days_in_order(self) -> Iterator[pa.RecordBatch]:
        first = 0
        for index in range(self.days):
            batch = self.day(index, first)
            first += batch.num_rows
            yield batch


def iter_clickstream(
    events: int,
    days: int,
    users: int,
    seed: int = 0,
    start: datetime = DEFAULT_START,
    *,
    batch_size: int = 100_000,
    jitter: timedelta | str | int | None = None,
    skew: float = 1.0,
    pages: int = 1_000,
    amount_quantum: float = 0.25,
) -> Iterator[pa.RecordBatch]:
    """Yield the dataset of :func:`generate_clickstream` in batches of ``batch_size`` rows.

    Every batch but the last has exactly ``batch_size`` rows. Memory stays bounded by one day of
    events plus one batch, so this is the way to stream very large datasets. Concatenated, the
    batches equal ``generate_clickstream(...)`` with the same arguments.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plan = _Plan(events, days, users, seed, start, jitter, skew, pages, amount_quantum)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for day in plan.days_in_order():
        if day.num_rows == 0:
            continue
        pending.append(day)
        pending_rows += day.num_rows
        if pending_rows < batch_size:
            continue
        table = pa.Table.from_batches(pending).combine_chunks()
        full = (table.num_rows // batch_size) * batch_size
        for offset in range(0, full, batch_size):
            yield table.slice(offset, batch_size).to_batches()[0]
        rest = table.slice(full)
        pending = rest.to_batches() if rest.num_rows else []
        pending_rows = rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def generate_clickstream(
    events: int,
    days: int,
    users: int,
    seed: int = 0,
    start: datetime = DEFAULT_START,
    *,
    jitter: timedelta | str | int | None = None,
    skew: float = 1.0,
    pages: int = 1_000,
    amount_quantum: float = 0.25,
) -> pa.Table:
    """Return ``events`` synthetic clickstream events over ``days`` days from ``start``.

    ``users`` distinct user ids (Zipf-like activity with exponent ``skew``; 0 = uniform),
    ``seed`` makes it reproducible, ``jitter`` (a ``timedelta``, ``"90s"``-style string or int µs)
    makes the rows bounded out of order, ``pages`` is the number of product pages, and amounts
    are multiples of ``amount_quantum``. See the module docstring for the columns.
    """
    plan = _Plan(events, days, users, seed, start, jitter, skew, pages, amount_quantum)
    batches = [b for b in plan.days_in_order() if b.num_rows]
    if not batches:
        return CLICKSTREAM_SCHEMA.empty_table()
    return pa.Table.from_batches(batches, schema=CLICKSTREAM_SCHEMA)  # one chunk per day
