"""The every-record oracle of the fault suite, computed from the input events alone.

An exact run of the hourly job (:mod:`tests.faults.jobs`, ``--job hourly``) leaves, per
``(user_id, hour)`` with at least one input record, one store row holding the records' count,
distinct event ids, sum of event ids and sum of amounts. :func:`hourly_reference` computes those
rows with DuckDB SQL over the generated events (never from the job's counters or watermark);
:func:`compare_hourly` joins them with the store and explains every difference:

- ``lost`` records per group = expected count − distinct ids stored (a record that never reached
  the window);
- ``duplicated`` records per group = count stored − distinct ids stored (a record that reached it
  twice);

so one lost or duplicated record anywhere fails, even where a loss and a duplicate in the same
group leave the count unchanged. When a group lost or duplicated exactly one record, the sum of
ids names it (``event_id = |Δ id_sum|``) and its Kafka partition and offset are shown.
:func:`delivered_hourly` aggregates delivered raw records the same way, so a multiset check of
event ids (every id exactly once) reports in the same terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

HOUR_US = 3_600_000_000

_AGGREGATE_SQL = """
SELECT user_id,
       epoch_us(date_trunc('hour', event_time)) AS hour,
       count(*) AS n,
       count(DISTINCT event_id) AS ids,
       sum(event_id)::BIGINT AS id_sum,
       sum(amount) AS amount
FROM events
GROUP BY ALL
"""

_COMPARE_SQL = """
SELECT coalesce(r.user_id, g.user_id) AS user_id,
       coalesce(r.hour, g.hour) AS hour,
       r.n AS exp_n, r.id_sum AS exp_id_sum, r.amount AS exp_amount,
       g.n AS got_n, g.ids AS got_ids, g.id_sum AS got_id_sum, g.amount AS got_amount,
       g.rows AS got_rows
FROM reference r
FULL OUTER JOIN (
    SELECT user_id, hour, sum(n) AS n, sum(ids) AS ids, sum(id_sum)::BIGINT AS id_sum,
           sum(amount) AS amount, count(*) AS rows
    FROM got GROUP BY ALL
) g ON r.user_id = g.user_id AND r.hour = g.hour
WHERE r.n IS DISTINCT FROM g.n
   OR r.n IS DISTINCT FROM g.ids
   OR r.id_sum IS DISTINCT FROM g.id_sum
   OR abs(r.amount - g.amount) > 1e-9 * greatest(1.0, abs(r.amount))
   OR g.rows <> 1
ORDER BY 2, 1
"""


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def hourly_reference(events: pa.Table) -> pa.Table:
    """``user_id, hour (µs), n, ids, id_sum, amount`` per (user, hour) of the input ``events``
    (columns ``event_time, event_id, user_id, amount``), by DuckDB SQL."""
    con = _connect()
    con.register("events", events.select(["event_time", "event_id", "user_id", "amount"]))
    return con.sql(_AGGREGATE_SQL).to_arrow_table()


def delivered_hourly(records: pa.Table) -> pa.Table:
    """Delivered raw records aggregated like a store row per (user, hour) (duplicates kept)."""
    return hourly_reference(records)


def format_hour(hour_us: int) -> str:
    return datetime.fromtimestamp(hour_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M")


@dataclass
class GroupDiff:
    """One (user, hour) whose store row differs from the reference."""

    user_id: int
    hour: int
    expected: int  # records in the input
    got: int | None  # records counted by the store row (None: no row)
    lost: int
    duplicated: int
    rows: int  # store rows for this (user, hour): exactly 1 in an exact run
    detail: str = ""

    def describe(self, side: str | None) -> str:
        got = "no row" if self.got is None else f"n={self.got}"
        what = []
        if self.lost:
            what.append(f"{self.lost} lost")
        if self.duplicated:
            what.append(f"{self.duplicated} duplicated")
        if not what:
            what.append("values differ")
        if self.rows > 1:
            what.append(f"{self.rows} store rows")
        return (
            f"user_id={self.user_id} hour={format_hour(self.hour)}"
            + (f" [{side}]" if side else "")
            + f": expected n={self.expected}, {got} ({', '.join(what)}){self.detail}"
        )


@dataclass
class HourlyCheck:
    """The comparison of a store (or delivered records) with the reference."""

    expected_records: int
    expected_groups: int
    store_records: int
    store_groups: int
    lost: int
    duplicated: int
    diffs: list[GroupDiff] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    cutoff: int | None = None  # hours before it: the lake's part of the input

    @property
    def ok(self) -> bool:
        return not self.diffs and not self.malformed

    def side(self, hour: int) -> str | None:
        if self.cutoff is None:
            return None
        return "lake" if hour < self.cutoff else "stream"

    def totals(self) -> str:
        return (
            f"expected {self.expected_records} records in {self.expected_groups} (user, hour) "
            f"groups; the store counts {self.store_records} in {self.store_groups} groups: "
            f"{self.lost} lost, {self.duplicated} duplicated, {len(self.diffs)} groups differ"
        )

    def summary(self) -> dict[str, Any]:
        """Plain figures (for reports): totals and where the differing groups are."""
        sides: dict[str, int] = {}
        for d in self.diffs:
            s = self.side(d.hour) or "all"
            sides[s] = sides.get(s, 0) + 1
        return {
            "lost": self.lost,
            "duplicated": self.duplicated,
            "groups_differing": len(self.diffs),
            "groups_by_side": sides,
            "malformed": len(self.malformed),
        }

    def message(self, label: str, limit: int = 10) -> str:
        lines = [f"{label}: the store differs from the input's SQL reference", self.totals()]
        lines += [f"  {d.describe(self.side(d.hour))}" for d in self.diffs[:limit]]
        if len(self.diffs) > limit:
            lines.append(f"  ... {len(self.diffs) - limit} more groups")
        lines += [f"  malformed: {m}" for m in self.malformed[:limit]]
        return "\n".join(lines)


def _locate(positions: pa.Table | None, event_id: int) -> str:
    if positions is None:
        return ""
    con = _connect()
    con.register("positions", positions)
    row = con.execute(
        'SELECT partition, "offset" FROM positions WHERE event_id = ?', [event_id]
    ).fetchone()
    return "" if row is None else f" (partition={row[0]} offset={row[1]})"


def compare_hourly(
    store: pa.Table,
    events: pa.Table,
    *,
    cutoff: int | None = None,
    positions: pa.Table | None = None,
) -> HourlyCheck:
    """Compare a normalized hourly store (``user_id, window_start, window_end, n, ids, id_sum,
    amount``) with the reference of ``events``. ``cutoff`` labels groups lake/stream;
    ``positions`` (``event_id, partition, offset``) locates a single lost/duplicated record."""
    reference = hourly_reference(events)
    con = _connect()
    con.register("reference", reference)
    con.register("store", store)
    con.execute(
        "CREATE TEMP VIEW got AS SELECT user_id, epoch_us(window_start) AS hour, "
        "epoch_us(window_end) AS hour_end, n, ids, id_sum, amount FROM store"
    )
    malformed = [
        f"user_id={u} window_start={format_hour(h)} window_end={e}: not a 1h window"
        for u, h, e in con.execute(
            f"SELECT user_id, hour, hour_end FROM got WHERE hour_end - hour <> {HOUR_US} "
            f"OR hour % {HOUR_US} <> 0 ORDER BY 2, 1"
        ).fetchall()
    ]
    diffs: list[GroupDiff] = []
    lost_total = dup_total = 0
    for row in con.execute(_COMPARE_SQL).fetchall():
        (
            user,
            hour,
            exp_n,
            exp_ids,
            _exp_amount,
            got_n,
            got_ids,
            got_ids_sum,
            _got_amount,
            rows,
        ) = row
        exp_n = int(exp_n or 0)
        got_ids_n = int(got_ids or 0)
        lost = max(0, exp_n - got_ids_n)
        duplicated = max(0, int(got_n or 0) - got_ids_n)
        detail = ""
        if got_n is not None and exp_ids is not None and lost + duplicated == 1:
            event_id = abs(int(exp_ids) - int(got_ids_sum))
            detail = f"; event_id={event_id}{_locate(positions, event_id)}"
        diffs.append(
            GroupDiff(
                user_id=int(user),
                hour=int(hour),
                expected=exp_n,
                got=None if got_n is None else int(got_n),
                lost=lost,
                duplicated=duplicated,
                rows=int(rows or 0),
                detail=detail,
            )
        )
        lost_total += lost
        dup_total += duplicated
    total = con.execute("SELECT coalesce(sum(n), 0) FROM got").fetchone()
    store_records = int(total[0]) if total else 0
    return HourlyCheck(
        expected_records=events.num_rows,
        expected_groups=reference.num_rows,
        store_records=store_records,
        store_groups=store.num_rows,
        lost=lost_total,
        duplicated=dup_total,
        diffs=diffs,
        malformed=malformed,
        cutoff=cutoff,
    )


def compare_delivered(
    ids: Any, events: pa.Table, *, positions: pa.Table | None = None
) -> tuple[HourlyCheck, dict[str, Any]]:
    """The multiset check of the event ids a job delivered (``ids``, an int64 array with one
    entry per delivered record) against the input ``events``: every id exactly once. Returns
    the per-(user, hour) view (:func:`compare_hourly` of the delivered records aggregated like
    the store) and the id figures (``duplicated_records`` / ``missing_records`` /
    ``unexpected_records``, the first ids located)."""
    con = _connect()
    con.register("delivered", pa.table({"event_id": pa.array(ids, pa.int64())}))
    con.register("events", events.select(["event_time", "event_id", "user_id", "amount"]))
    dup = con.execute(
        "SELECT event_id, count(*) - 1 AS extra FROM delivered GROUP BY 1 HAVING count(*) > 1 "
        "ORDER BY 1"
    ).fetchall()
    missing = [
        r[0]
        for r in con.execute(
            "SELECT event_id FROM events EXCEPT SELECT event_id FROM delivered ORDER BY 1"
        ).fetchall()
    ]
    unexpected = con.execute(
        "SELECT count(*) FROM delivered WHERE event_id NOT IN (SELECT event_id FROM events)"
    ).fetchall()[0][0]
    # the delivered records, with multiplicity, as the input rows they are
    records = con.sql(
        "SELECT e.event_time, e.event_id, e.user_id, e.amount "
        "FROM delivered d JOIN events e USING (event_id)"
    ).to_arrow_table()
    store = _as_store(delivered_hourly(records))
    check = compare_hourly(store, events, positions=positions)
    figures = {
        "delivered": len(ids),
        "expected": events.num_rows,
        "duplicated_records": sum(int(e) for _, e in dup),
        "duplicated_ids": [f"{i}{_locate(positions, int(i))}" for i, _ in dup[:10]],
        "missing_records": len(missing),
        "missing_ids": [f"{i}{_locate(positions, int(i))}" for i in missing[:10]],
        "unexpected_records": int(unexpected),
    }
    return check, figures


def _as_store(aggregated: pa.Table) -> pa.Table:
    """Aggregated delivered records in the store's shape (one row per (user, hour))."""
    con = _connect()
    con.register("agg", aggregated)
    return con.sql(
        "SELECT user_id, make_timestamp(hour)::TIMESTAMPTZ AS window_start, "
        f"make_timestamp(hour + {HOUR_US})::TIMESTAMPTZ AS window_end, n, "
        # distinct ids are not summable from rows: a duplicated id counts once in ``ids``
        "ids, id_sum, amount FROM agg"
    ).to_arrow_table()
