"""An independent reference of window semantics, computed with DuckDB SQL.

This module states, as plainly as possible, what a window operator fed by
``ls.MemorySource(data, time_column, batch_size, out_of_orderness, until)`` must output (DESIGN §3).
It shares no code with the engine (``lambdasource.windows``): times, keys, lateness and aggregates
are re-derived here, and every aggregate is computed by DuckDB over an Arrow table. Tests compare the
engine against it, benchmarks use it to check results, and ``lambdasource demo`` prints
"verified: N keys match" with it.

The model (all times int64 µs since the epoch, UTC):

* **Feed.** Rows arrive in the given order, in batches of ``batch_size`` rows (``None``: the given
  record batches). After each batch the watermark becomes ``max time so far − out_of_orderness``
  when that advances (never before the end when ``out_of_orderness`` is None); at the end it becomes
  ``until − 1`` if ``until`` is given, else the max time seen, again only if that advances. Each
  advance is a **step** (:class:`WatermarkStep`).
* **Windows.** Sliding windows ``[end − size, end)`` with ``end`` a multiple of ``slide``
  (tumbling: ``slide == size``). A window completes when the watermark ``W >= end − 1``.
* **Lateness.** A record is judged against the watermark in force when its batch arrives: a window
  with end ``e`` accepts it while ``W < e − 1 + allowed_lateness`` (always, before the first
  watermark). With ``allowed_lateness > 0`` a record joins only the windows that still accept it;
  a record accepted by no window is *late*: excluded from every aggregate and returned by
  :meth:`WindowReference.late`.
* **Sessions.** A record at ``t`` opens ``[t, t + gap)``; overlapping windows of a key merge. A
  batch's records of a key are merged with the key's live sessions first (connected components,
  independent of the order within the batch); a component without a live session whose
  ``end − 1 + allowed_lateness <= W`` is late as a whole. A session is *purged* (forgotten, never
  merged again; a later record overlapping it starts a new session) once
  ``W >= end − 1 + allowed_lateness``. Which records end in which session is decided by a small
  sequential simulation over batches; the aggregates are SQL.
* **Emission modes.** ``every``: one row per (key, window) holding at least one record, with its
  value. ``changes``: per key, one row per window end whose value differs (null-aware) from the
  value at the previous window end ``end − slide``; a window that becomes empty yields one
  deletion row (aggregates null, ``_deleted`` true); the first non-empty window is a change.
  ``latest``: at each watermark step, for each key whose newest completed window
  (``end = floor((W + 1) / slide) · slide``) differs from its value at the previous step, one row
  (deletion row when empty); the column ``_step`` gives the step index. Sessions do not tile
  time, so for them ``changes`` is the changelog of the *set* of completed sessions (a store
  keyed by (key, window_end) holds exactly the completed sessions) and ``latest`` holds each
  key's newest completed session (a new session is a change even with an equal value).
* **Views and the end of the run.** Every output can be asked for *as of* step ``j`` (records of
  the batches up to the step, windows completed by its watermark) or at the end of the run: every
  batch (corrections may follow the last advance) and the final watermark, or with
  ``flush_all`` (``run(flush="all")``) every window holding data. With corrections
  (``allowed_lateness > 0``) a view is what an upsert store built from the output holds.

Aggregates are given as ``{output name: (function, column or None)}`` with the functions
``count`` (``column`` None: records, else non-null values), ``sum``, ``mean``, ``min``, ``max``
(non-null values; null when none), ``first``/``last`` (value of the earliest/latest record by event
time, ties broken by arrival order; a null value counts), and ``count_distinct`` (non-null values).

Two entry points: :func:`expected_windows` (general, small data: it expands each record into the
windows it belongs to) and :func:`sliding_changelog` (``changes`` output of count/sum/mean over
large data without that expansion: per (key, slice) partials and +/− deltas at the window ends where
a slice enters and leaves the window, running sums per key).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "AggregateSpec",
    "WatermarkStep",
    "WindowReference",
    "expected_windows",
    "late_records",
    "session_windows",
    "sliding_changelog",
    "sliding_changelog_query",
    "times_us",
    "watermark_steps",
]

EmitMode = Literal["every", "changes", "latest"]
AggregateSpec = tuple[str, str | None]
"""``(function, input column or None)``, e.g. ``("sum", "amount")`` or ``("count", None)``."""

AGGREGATE_FUNCTIONS: tuple[str, ...] = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "first",
    "last",
    "count_distinct",
)
TIME_TYPE = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_WATERMARK = -(1 << 62)  # "no watermark yet": completes no window
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
_DURATION_US = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "min": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 604_800_000_000,
}


# ----------------------------------------------------------------------------------- inputs ---


def _duration_us(value: timedelta | str | int) -> int:
    """A duration as whole µs: ``timedelta``, int µs, or a string like ``"5m"``/``"200ms"``."""
    if isinstance(value, timedelta):
        return value // timedelta(microseconds=1)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        number = text.rstrip("abcdefghijklmnopqrstuvwxyzµ")
        unit = text[len(number) :].strip()
        if unit in _DURATION_US and number.strip():
            return round(float(number) * _DURATION_US[unit])
    raise ValueError(f"not a duration: {value!r}")


def _time_us(value: datetime | int | str) -> int:
    """A point in time as µs since the epoch (int: already µs; naive datetimes are UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // timedelta(microseconds=1)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"not a point in time: {value!r}")


def times_us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Event times as int64 µs: timestamps of any unit (naive = UTC) or int64 epoch milliseconds."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError("the reference does not model null event times (they are dead letters)")
    dtype = column.type
    if pa.types.is_int64(dtype):
        return np.asarray(column.to_numpy(), dtype=np.int64) * 1_000
    if pa.types.is_timestamp(dtype):
        raw = np.asarray(column.cast(pa.int64()).to_numpy(), dtype=np.int64)
        if dtype.unit == "ns":
            return np.floor_divide(raw, 1_000)
        return raw * _UNIT_US[dtype.unit]
    raise TypeError(f"event time must be a timestamp or int64 epoch ms, got {dtype}")


def _window_params(window: Any) -> tuple[str, int, int]:
    """``("sliding", size, slide)`` or ``("session", gap, 0)`` from an ``ls.Sliding/Tumbling/Session``."""
    gap = getattr(window, "gap", None)
    if gap is not None:
        return "session", int(gap), 0
    size, slide = int(window.size), int(window.slide)
    if not 0 < slide <= size:
        raise ValueError(f"bad sliding window size={size} slide={slide}")
    return "sliding", size, slide


@dataclass(frozen=True, slots=True)
class WatermarkStep:
    """One advance of the watermark, as the source emits it.

    ``after_batch`` is the index of the batch the watermark follows (the last batch for the end
    watermark; -1 when there were no batches). ``watermark`` is None only for the extra "flush all"
    step (watermark +infinity).
    """

    index: int
    watermark: int | None
    after_batch: int


def _batches(data: pa.Table | Sequence[pa.RecordBatch], batch_size: int | None) -> list[pa.Table]:
    """The batches ``ls.MemorySource`` emits, in order (possibly empty ones when given so)."""
    if isinstance(data, pa.Table):
        table = data
        given = [pa.Table.from_batches([b]) for b in data.to_batches()]
    else:
        if not data:
            raise ValueError("data is an empty list of batches")
        table = pa.Table.from_batches(list(data))
        given = [pa.Table.from_batches([b]) for b in data]
    if batch_size is None:
        return given
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    table = table.combine_chunks()
    return [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]


def _steps(
    batch_times: list[np.ndarray], out_of_orderness: int | None, until: int | None
) -> list[WatermarkStep]:
    steps: list[WatermarkStep] = []
    current: int | None = None
    max_seen: int | None = None

    def advance(candidate: int, after: int) -> None:
        nonlocal current
        if current is None or candidate > current:
            current = candidate
            steps.append(WatermarkStep(len(steps), candidate, after))

    for i, times in enumerate(batch_times):
        if len(times):
            top = int(times.max())
            max_seen = top if max_seen is None else max(max_seen, top)
        if out_of_orderness is not None and max_seen is not None:
            advance(max_seen - out_of_orderness, i)
    last = len(batch_times) - 1
    if until is not None:
        advance(until - 1, last)
    elif max_seen is not None:
        advance(max_seen, last)
    return steps


# -------------------------------------------------------------------------------- reference ---


@dataclass(frozen=True, slots=True)
class _Session:
    """A session of one key: ``[start, end)`` and the arrival numbers of its records."""

    start: int
    end: int
    members: tuple[int, ...]


def _fetch(con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
    """Run ``query`` and return the whole result as an Arrow table (duckdb 1.x and 2.x)."""
    rel = con.sql(query)
    fetch = getattr(rel, "to_arrow_table", None)
    result = fetch() if fetch is not None else rel.arrow()
    return result.read_all() if isinstance(result, pa.RecordBatchReader) else result


_DATABASE: duckdb.DuckDBPyConnection | None = None


def _cursor() -> duckdb.DuckDBPyConnection:
    """A fresh connection to one shared in-memory database (connecting anew costs ~20 ms).

    Registered tables and temp tables are private to a connection; they go with it.
    """
    global _DATABASE
    if _DATABASE is None:
        _DATABASE = duckdb.connect()
    return _DATABASE.cursor()


def _q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _aggregate_sql(function: str, column: str | None) -> str:
    """The SQL aggregate of ``function`` over the column expression ``column``; ``first`` and
    ``last`` order by the columns ``__t`` (event time) and ``__seq`` (arrival)."""
    c = column or ""
    return {
        "count": f"count({c})" if c else "count(*)",
        "sum": f"sum({c})",
        "mean": f"sum({c})::DOUBLE / count({c})",
        "min": f"min({c})",
        "max": f"max({c})",
        "first": f"first({c} ORDER BY __t, __seq)",
        "last": f"last({c} ORDER BY __t, __seq)",
        "count_distinct": f"count(DISTINCT {c})",
    }[function]


def _result_type(function: str, dtype: pa.DataType | None) -> pa.DataType:
    """The output type of ``function`` over a column of type ``dtype`` (None: no column)."""
    if function in ("count", "count_distinct"):
        return pa.int64()
    if function == "mean":
        return pa.float64()
    assert dtype is not None, f"{function} needs a column"
    if function == "sum":
        floating = pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)
        return pa.float64() if floating else pa.int64()
    return dtype


def _shape(
    out: pa.Table, data: pa.Table, keys: Sequence[str], aggregates: Mapping[str, AggregateSpec]
) -> pa.Table:
    """Typed output columns (keys as given, µs → timestamp[us, UTC], aggregate types)."""
    result: dict[str, pa.Array] = {k: out.column(k).cast(data.schema.field(k).type) for k in keys}
    for col in ("window_start", "window_end"):
        result[col] = out.column(col).cast(pa.int64()).cast(TIME_TYPE)
    for name, (function, column) in aggregates.items():
        dtype = None if column is None else data.schema.field(column).type
        result[name] = out.column(name).cast(_result_type(function, dtype))
    if "_deleted" in out.column_names:
        result["_deleted"] = out.column("_deleted")
    return pa.table(result).combine_chunks()


class WindowReference:
    """What a window operator over ``ls.MemorySource(data, ...)`` must output, per emission mode.

    Build it once per scenario; every method runs DuckDB queries over the prepared records:
    :meth:`every`, :meth:`changes`, :meth:`latest` (rows), :meth:`late` (late records),
    :attr:`steps` (the watermark steps), :meth:`sessions` (every session, complete or not).
    ``as_of_step=j`` asks for the output (or store content) as it must be right after step ``j``
    (records of batches up to ``steps[j].after_batch``, windows completed by
    ``steps[j].watermark``); the default is the end of the run, and ``flush_all=True`` models
    ``run(flush="all")`` (every window holding data completes). The ``*_by_step`` variants return
    every view at once, with a ``_step`` column (``len(steps)``: the end of the run).

    Example::

        ref = WindowReference(table, time_column="ts", keys="user", window=ls.Sliding("1h", "10m"),
                              aggregates={"n": ("count", None), "total": ("sum", "amount")},
                              batch_size=1000, out_of_orderness="5m")
        ref.changes()   # the changelog ls's emit="changes" must produce
        ref.late()      # the records w.late() must produce
    """

    def __init__(
        self,
        data: pa.Table | Sequence[pa.RecordBatch],
        *,
        time_column: str,
        keys: str | Sequence[str],
        window: Any,
        aggregates: Mapping[str, AggregateSpec],
        allowed_lateness: timedelta | str | int = 0,
        batch_size: int | None = None,
        out_of_orderness: timedelta | str | int | None = None,
        until: datetime | int | str | None = None,
    ) -> None:
        self.keys: tuple[str, ...] = (keys,) if isinstance(keys, str) else tuple(keys)
        if not self.keys:
            raise ValueError("at least one key column is needed")
        self.kind, param, self.slide = _window_params(window)
        self.size = param if self.kind == "sliding" else 0
        self.gap = param if self.kind == "session" else 0
        self.allowed_lateness = _duration_us(allowed_lateness)
        self.aggregates = dict(aggregates)
        for name, (function, column) in self.aggregates.items():
            if function not in AGGREGATE_FUNCTIONS:
                raise ValueError(f"aggregate {name!r}: unknown function {function!r}")
            if column is None and function != "count":
                raise ValueError(f"aggregate {name!r}: {function} needs a column")
        ooo = None if out_of_orderness is None else _duration_us(out_of_orderness)
        self.until = None if until is None else _time_us(until)

        batches = _batches(data, batch_size)
        self.n_batches = len(batches)
        self.schema: pa.Schema = (
            data.schema if isinstance(data, pa.Table) else pa.Table.from_batches(list(data)).schema
        )
        times = [times_us(b.column(time_column)) for b in batches]
        self.steps: list[WatermarkStep] = _steps(times, ooo, self.until)
        self.records: pa.Table = (
            pa.concat_tables(batches) if batches else self.schema.empty_table()
        ).combine_chunks()
        n = self.records.num_rows
        t = np.concatenate(times) if times else np.zeros(0, np.int64)
        batch = (
            np.concatenate([np.full(len(x), i, dtype=np.int64) for i, x in enumerate(times)])
            if times
            else np.zeros(0, np.int64)
        )
        # the watermark in force when each batch arrives: the last step after an earlier batch
        w_at_batch: list[int | None] = []
        for i in range(len(batches)):
            before = [s.watermark for s in self.steps if s.after_batch < i]
            w_at_batch.append(before[-1] if before else None)
        w = pa.array([w_at_batch[b] for b in batch.tolist()], type=pa.int64())

        # dense key ids by first appearance; key values come back from the first row of each key
        key_lists = [self.records.column(k).to_pylist() for k in self.keys] if n else []
        ids: dict[tuple[Any, ...], int] = {}
        first_row: list[int] = []
        kid = np.zeros(n, dtype=np.int64)
        for i, key in enumerate(zip(*key_lists, strict=True)):
            # floats: 0.0 == -0.0 but are kept apart as Arrow values; keys here are ints/strings
            if key not in ids:
                ids[key] = len(ids)
                first_row.append(i)
            kid[i] = ids[key]
        self.key_table: pa.Table = self.records.select(list(self.keys)).take(
            pa.array(first_row, type=pa.int64())
        )

        self._columns = sorted({c for _, c in self.aggregates.values() if c is not None})
        cols: dict[str, Any] = {
            "__seq": pa.array(np.arange(n, dtype=np.int64)),
            "__batch": pa.array(batch),
            "__t": pa.array(t, type=pa.int64()),
            "__w": w,
            "__kid": pa.array(kid),
        }
        for i, c in enumerate(self._columns):
            cols[f"__c{i}"] = self.records.column(c)
        self._recs = pa.table(cols)
        self._con = _cursor()
        self._con.register("recs", self._recs)
        if self.kind == "sliding":
            self._prepare_sliding(t)
        else:
            self._prepare_sessions(t, kid, batch)

    # ----------------------------------------------------------------------------- views ---

    @property
    def final_watermark(self) -> int | None:
        """The watermark at the end of the run (None when no watermark was ever emitted)."""
        return self.steps[-1].watermark if self.steps else None

    @property
    def end_step(self) -> WatermarkStep | None:
        """The end of the run: every batch, the final watermark (None: no watermark ever).

        This is the last step, or — when batches arrived after the last advance (their records
        can only be late or corrections) — a pseudo-step ``len(steps)`` with the same watermark.
        """
        if not self.steps:
            return None
        last = self.steps[-1]
        if last.after_batch == self.n_batches - 1:
            return last
        return WatermarkStep(len(self.steps), last.watermark, self.n_batches - 1)

    @property
    def flush_step(self) -> WatermarkStep:
        """The step ``run(flush="all")`` adds after the last one: watermark +infinity."""
        return WatermarkStep(len(self.steps), None, self.n_batches - 1)

    def _final_view(self, flush_all: bool) -> WatermarkStep:
        """The end of the run as view ``len(steps)`` (nothing completes without a watermark)."""
        if flush_all:
            return self.flush_step
        watermark = self.final_watermark
        return WatermarkStep(
            len(self.steps), _NO_WATERMARK if watermark is None else watermark, self.n_batches - 1
        )

    def _view(self, as_of_step: int | None, flush_all: bool) -> WatermarkStep:
        if flush_all and as_of_step is not None:
            raise ValueError("as_of_step and flush_all exclude each other")
        return self._final_view(flush_all) if as_of_step is None else self.steps[as_of_step]

    def _all_views(self, flush_all: bool) -> list[WatermarkStep]:
        """Every step, then the end of the run (or the flush) as view ``len(steps)``."""
        return [*self.steps, self._final_view(flush_all)]

    def _views_sql(self, views: Sequence[WatermarkStep]) -> str:
        """``(__view, __w, __b, __newest)``: view index, watermark (NULL: +infinity), last
        batch, and the newest completed sliding window end (``latest``)."""
        rows = []
        for v in views:
            if v.watermark is None:
                w, newest = "NULL::BIGINT", self._flush_end() if self.kind == "sliding" else "NULL"
            else:
                w = str(v.watermark)
                newest = (
                    str((v.watermark + 1) // self.slide * self.slide)
                    if self.kind == "sliding"
                    else "NULL"
                )
            rows.append(f"({v.index}, {w}, {v.after_batch}, {newest}::BIGINT)")
        return f"SELECT * FROM (VALUES {', '.join(rows)}) AS views(__view, __w, __b, __newest)"

    # ---------------------------------------------------------------------------- helpers ---

    def _agg_sql(self) -> list[str]:
        """One SQL aggregate expression per output column (over the ``recs`` columns)."""
        return [
            _aggregate_sql(f, None if c is None else f"__c{self._columns.index(c)}")
            for f, c in self.aggregates.values()
        ]

    def _output_type(self, function: str, column: str | None) -> pa.DataType:
        return _result_type(function, None if column is None else self.schema.field(column).type)

    def _names(self) -> list[str]:
        return [f"__a{i}" for i in range(len(self.aggregates))]

    def _each(self, template: str) -> str:
        """``template`` (with ``{n}``) for every aggregate column, each preceded by a comma."""
        return "".join(", " + template.format(n=n) for n in self._names())

    def _any_differs(self, a: str, b: str, *, bounds: bool = False) -> str:
        """SQL: the aggregates (and with ``bounds`` the window bounds) of ``a`` and ``b`` differ,
        null-aware; ``a``/``b`` are templates like ``"v.{n}"`` / ``"__p{n}"``."""
        names = ["__start", "__end", *self._names()] if bounds else self._names()
        terms = [f"{a.format(n=n)} IS DISTINCT FROM {b.format(n=n)}" for n in names]
        return "(" + " OR ".join(terms or ["false"]) + ")"

    def _finish(self, rel: pa.Table, *, deleted: bool, step: bool) -> pa.Table:
        """Turn ``(__view, __kid, __start, __end, __a*, [__deleted])`` rows into output rows
        (``_step`` from ``__view`` when ``step``)."""
        kid = rel.column("__kid")
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        keys = self.key_table.take(kid) if len(rel) else self.key_table.slice(0, 0)
        for k in self.keys:
            columns[k] = keys.column(k)
        columns["window_start"] = rel.column("__start").cast(pa.int64()).cast(TIME_TYPE)
        columns["window_end"] = rel.column("__end").cast(pa.int64()).cast(TIME_TYPE)
        for i, (name, (function, column)) in enumerate(self.aggregates.items()):
            columns[name] = rel.column(f"__a{i}").cast(self._output_type(function, column))
        if deleted:
            columns["_deleted"] = rel.column("__deleted").cast(pa.bool_())
        if step:
            columns["_step"] = rel.column("__view").cast(pa.int64())
        return pa.table(
            {
                k: (v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v)
                for k, v in columns.items()
            }
        )

    def _sql(self, query: str) -> pa.Table:
        return _fetch(self._con, query)

    # ------------------------------------------------------------------------ sliding model ---

    def _prepare_sliding(self, t: np.ndarray) -> None:
        """``pairs``: one row per (record, window end) the record joins."""
        size, slide, lateness = self.size, self.slide, self.allowed_lateness
        # the windows holding t: ends e, multiples of slide, with e - size <= t < e
        first_end = (np.floor_divide(t, slide) + 1) * slide
        last_end = np.floor_divide(t + size, slide) * slide
        ends = pa.table({"__first_end": first_end, "__last_end": last_end})
        self._con.register("record_ends", ends)
        # a window with end e accepts a record while the watermark at its arrival W < e - 1 + L
        self._con.execute(
            f"""
            CREATE TEMP TABLE pairs AS
            WITH expanded AS (
                SELECT r.*, unnest(generate_series(e.__first_end, e.__last_end, {slide})) AS __end
                FROM recs r POSITIONAL JOIN record_ends e
            )
            SELECT * FROM expanded
            WHERE __w IS NULL OR __w < __end - 1 + {lateness}
            """
        )

    def _flush_end(self) -> str:
        """The end of the (empty) window a flush reports in ``latest`` deletion rows: the first
        window after the last one holding the newest accepted record (NULL: no records)."""
        ((top,),) = self._con.sql("SELECT max(__t) FROM pairs").fetchall()
        if top is None:
            return "NULL"
        return str((int(top) + self.size) // self.slide * self.slide + self.slide)

    def _values_sql(self, views: Sequence[WatermarkStep], *, complete_only: bool = True) -> str:
        """Window values per view: ``(__view, __w, __newest, __kid, __start, __end, __n, __a*)``
        over the records of the view's batches; only windows the view's watermark completed
        (sessions: all when not ``complete_only``)."""
        aggs = "".join(f", {e} AS __a{i}" for i, e in enumerate(self._agg_sql()))
        if self.kind == "sliding":
            return f"""
                SELECT s.__view, s.__w, s.__newest, p.__kid, p.__end - {self.size} AS __start,
                       p.__end, count(*) AS __n{aggs}
                FROM pairs p JOIN ({self._views_sql(views)}) s
                  ON p.__batch <= s.__b AND (s.__w IS NULL OR p.__end - 1 <= s.__w)
                GROUP BY s.__view, s.__w, s.__newest, p.__kid, p.__end
            """
        complete = "true" if not complete_only else "(s.__w IS NULL OR m.__end - 1 <= s.__w)"
        return f"""
            SELECT s.__view, s.__w, s.__newest, m.__kid, m.__start, m.__end, count(*) AS __n{aggs}
            FROM session_members m JOIN recs r USING (__seq)
                 JOIN ({self._views_sql(views)}) s ON m.__step = s.__view AND {complete}
            GROUP BY s.__view, s.__w, s.__newest, m.__sid, m.__kid, m.__start, m.__end
        """

    # ------------------------------------------------------------------------- public API ---

    def late(self) -> pa.Table:
        """The late records (accepted by no window), with the input's columns, in arrival order."""
        accepted = "pairs" if self.kind == "sliding" else "members"
        query = f"SELECT __seq FROM recs WHERE __seq NOT IN (SELECT __seq FROM {accepted})"
        seqs = sorted(r[0] for r in self._con.sql(query).fetchall())
        return self.records.take(pa.array(seqs, type=pa.int64()))

    def every(self, *, as_of_step: int | None = None, flush_all: bool = False) -> pa.Table:
        """``every`` rows: one per (key, completed window) holding a record, with its value
        (right after step ``as_of_step``; default: the end of the run)."""
        return self._every([self._view(as_of_step, flush_all)], step=False)

    def every_by_step(self, *, flush_all: bool = False) -> pa.Table:
        """:meth:`every` right after each step ``j`` (rows with ``_step == j``), and at the end
        of the run (``_step == len(steps)``)."""
        return self._every(self._all_views(flush_all), step=True)

    def _every(self, views: list[WatermarkStep], *, step: bool) -> pa.Table:
        query = f"""
            SELECT __view, __kid, __start, __end{self._each("{n}")}
            FROM ({self._values_sql(views)})
            ORDER BY __view, __end, __kid, __start
        """
        return self._finish(self._sql(query), deleted=False, step=step)

    def changes(self, *, as_of_step: int | None = None, flush_all: bool = False) -> pa.Table:
        """The exact ``changes`` changelog (per key, in window-end order)."""
        return self._changes([self._view(as_of_step, flush_all)], step=False)

    def changes_by_step(self, *, flush_all: bool = False) -> pa.Table:
        """:meth:`changes` right after each step and at the end (see :meth:`every_by_step`)."""
        return self._changes(self._all_views(flush_all), step=True)

    def _changes(self, views: list[WatermarkStep], *, step: bool) -> pa.Table:
        if self.kind == "session":
            # sessions do not tile time, so there is no "previous window end" to compare with:
            # the changelog is that of the *set* of completed sessions, for a store keyed by
            # (key, window_end); this view lists each completed session once (a session a
            # correction moved was removed from such a store by a deletion row)
            rows = self._every(views, step=step)
            return _with_deleted(rows)
        slide = self.slide
        # a window differing from the one ending a slide earlier (or following an empty one) is a
        # change; the (empty) window after a non-empty one is a deletion, once it completed
        query = f"""
            WITH v AS ({self._values_sql(views)})
            SELECT v.__view, v.__kid, v.__start, v.__end{self._each("v.{n}")},
                   false AS __deleted
            FROM v LEFT JOIN v AS p
              ON p.__view = v.__view AND p.__kid = v.__kid AND p.__end = v.__end - {slide}
            WHERE p.__end IS NULL OR {self._any_differs("v.{n}", "p.{n}")}
            UNION ALL
            SELECT v.__view, v.__kid, v.__start + {slide}, v.__end + {slide}
                   {self._each("NULL AS {n}")}, true
            FROM v LEFT JOIN v AS nx
              ON nx.__view = v.__view AND nx.__kid = v.__kid AND nx.__end = v.__end + {slide}
            WHERE nx.__end IS NULL AND (v.__w IS NULL OR v.__end + {slide} - 1 <= v.__w)
            ORDER BY 1, 4, 2
        """
        return self._finish(self._sql(query), deleted=True, step=step)

    def latest(self, *, flush_all: bool = False) -> pa.Table:
        """``latest`` rows, each with ``_step``: the index of the watermark step that emits it.

        At step ``j`` the newest completed window of every key is ``end = floor((W+1)/slide)·slide``
        (sessions: the key's completed session with the greatest end); its value counts the
        records of batches up to the step. A key's row is emitted when that value differs from the
        key's value at the previous step (initially: empty); an empty value gives a deletion row
        (bounds: that newest window; sessions never become empty; a new session is a change even
        with an equal value). Step ``len(steps)`` is the end of the run: corrections in batches
        after the last advance (see :attr:`end_step`), or the flush with ``flush_all``, which
        completes everything: the newest sliding window is then empty for every key (deletion
        rows name the first window after the last one holding the newest accepted record); a
        key's newest session is its last.
        """
        views = self._all_views(flush_all)
        if self.kind == "session":
            newest = f"""
                SELECT * FROM ({self._values_sql(views)})
                QUALIFY row_number() OVER (PARTITION BY __view, __kid ORDER BY __end DESC) = 1
            """
        else:
            newest = f"SELECT * FROM ({self._values_sql(views)}) WHERE __end = __newest"
        changed = self._any_differs("{n}", "__p{n}", bounds=self.kind == "session")
        query = f"""
            WITH vals AS ({newest}),
            grid AS (
                SELECT s.__view, s.__newest, k.__kid
                FROM ({self._views_sql(views)}) s CROSS JOIN (SELECT DISTINCT __kid FROM vals) k
            ),
            seq AS (
                SELECT g.__view, g.__kid, g.__newest, v.__start, v.__end, v.__n
                       {self._each("v.{n}")},
                       lag(v.__n) OVER w AS __pn, lag(v.__start) OVER w AS __p__start,
                       lag(v.__end) OVER w AS __p__end
                       {self._each("lag(v.{n}) OVER w AS __p{n}")}
                FROM grid g LEFT JOIN vals v ON v.__view = g.__view AND v.__kid = g.__kid
                WINDOW w AS (PARTITION BY g.__kid ORDER BY g.__view)
            )
            SELECT __view, __kid,
                   CASE WHEN __n IS NULL THEN __newest - {self.size} ELSE __start END AS __start,
                   CASE WHEN __n IS NULL THEN __newest ELSE __end END AS __end
                   {self._each("{n}")}, __n IS NULL AS __deleted
            FROM seq
            WHERE (__n IS NULL) IS DISTINCT FROM (__pn IS NULL)
               OR (__n IS NOT NULL AND {changed})
            ORDER BY __view, __kid
        """
        return self._finish(self._sql(query), deleted=True, step=True)

    # ------------------------------------------------------------------------ session model ---

    def _prepare_sessions(self, t: np.ndarray, kid: np.ndarray, batch: np.ndarray) -> None:
        """Simulate which records join which session, batch by batch.

        Registers ``session_members(__step, __sid, __seq, __kid, __start, __end)``: for every step
        (and the flush-all step ``len(steps)``), the sessions that exist right after it (live and
        purged) and their member records; ``members`` is the final view (every accepted record).
        """
        gap, lateness = self.gap, self.allowed_lateness
        live: dict[int, list[_Session]] = {}  # per key, disjoint, not yet purged
        purged: list[tuple[int, _Session]] = []
        views: dict[int, list[tuple[int, _Session]]] = {}
        steps_after: dict[int, list[WatermarkStep]] = {}
        for step in self.steps:
            steps_after.setdefault(step.after_batch, []).append(step)
        rows_of_batch: dict[int, list[int]] = {}
        for i, b in enumerate(batch.tolist()):
            rows_of_batch.setdefault(b, []).append(i)
        watermark: int | None = None

        def view() -> list[tuple[int, _Session]]:
            return purged + [(k, x) for k, xs in live.items() for x in xs]

        for b in range(-1, self.n_batches):  # -1: steps before any batch (when none were given)
            by_key: dict[int, list[int]] = {}
            for i in rows_of_batch.get(b, []):
                by_key.setdefault(int(kid[i]), []).append(i)
            for k, new_rows in by_key.items():
                # merge first: the key's live sessions and the batch's records, islands by gap
                items = [(x, False) for x in live.get(k, [])]
                items += [(_Session(int(t[i]), int(t[i]) + gap, (i,)), True) for i in new_rows]
                items.sort(key=lambda item: (item[0].start, item[0].end))
                islands: list[tuple[_Session, bool]] = []
                for x, only_new in items:
                    if islands and x.start < islands[-1][0].end:
                        y, y_new = islands[-1]
                        merged = _Session(y.start, max(y.end, x.end), y.members + x.members)
                        islands[-1] = (merged, y_new and only_new)
                    else:
                        islands.append((x, only_new))
                # then judge lateness: a session past its lateness takes no records (they are late)
                kept = []
                for x, only_new in islands:
                    if watermark is not None and watermark >= x.end - 1 + lateness:
                        assert only_new, "a live session past its lateness was not purged"
                        continue
                    kept.append(x)
                live[k] = kept
            for step in steps_after.get(b, []):
                assert step.watermark is not None
                watermark = step.watermark
                views[step.index] = view()
                for k, xs in live.items():  # purge: no record can join these any more
                    purged.extend((k, x) for x in xs if watermark >= x.end - 1 + lateness)
                    live[k] = [x for x in xs if watermark < x.end - 1 + lateness]
        views[len(self.steps)] = view()  # flush all: every session
        columns: dict[str, list[int]] = {
            "__step": [],
            "__sid": [],
            "__seq": [],
            "__kid": [],
            "__start": [],
            "__end": [],
        }
        sid = 0
        for index, sessions in views.items():
            for k, x in sessions:
                for i in x.members:
                    for name, value in zip(
                        columns, (index, sid, i, k, x.start, x.end), strict=True
                    ):
                        columns[name].append(value)
                sid += 1
        table = pa.table({k: pa.array(v, type=pa.int64()) for k, v in columns.items()})
        self._con.register("session_members", table)
        self._con.execute(
            "CREATE TEMP TABLE members AS SELECT * FROM session_members "
            f"WHERE __step = {len(self.steps)}"
        )

    def sessions(self, *, as_of_step: int | None = None) -> pa.Table:
        """Every session, complete or not, right after step ``as_of_step`` (default: the end of
        the run), with its current value; columns as in :meth:`every`."""
        return self._sessions([self._view(as_of_step, False)], step=False)

    def sessions_by_step(self) -> pa.Table:
        """:meth:`sessions` right after each step and at the end (``_step``)."""
        return self._sessions(self._all_views(False), step=True)

    def _sessions(self, views: list[WatermarkStep], *, step: bool) -> pa.Table:
        if self.kind != "session":
            raise ValueError("sessions() needs a Session window")
        query = f"""
            SELECT __view, __kid, __start, __end{self._each("{n}")}
            FROM ({self._values_sql(views, complete_only=False)})
            ORDER BY __view, __end, __kid, __start
        """
        return self._finish(self._sql(query), deleted=False, step=step)


def _with_deleted(rows: pa.Table) -> pa.Table:
    """``rows`` with a ``_deleted`` column of false, before ``_step`` if there is one."""
    index = rows.schema.get_field_index("_step")
    column = pa.array([False] * len(rows), pa.bool_())
    if index < 0:
        return rows.append_column("_deleted", column)
    return rows.add_column(index, "_deleted", column)


# ------------------------------------------------------------------------------ functions ---


def watermark_steps(
    data: pa.Table | Sequence[pa.RecordBatch],
    *,
    time_column: str,
    batch_size: int | None = None,
    out_of_orderness: timedelta | str | int | None = None,
    until: datetime | int | str | None = None,
) -> list[WatermarkStep]:
    """The watermarks ``ls.MemorySource`` emits for these arguments, in order."""
    batches = _batches(data, batch_size)
    times = [times_us(b.column(time_column)) for b in batches]
    ooo = None if out_of_orderness is None else _duration_us(out_of_orderness)
    return _steps(times, ooo, None if until is None else _time_us(until))


def expected_windows(
    data: pa.Table | Sequence[pa.RecordBatch],
    *,
    time_column: str,
    keys: str | Sequence[str],
    window: Any,
    aggregates: Mapping[str, AggregateSpec],
    emit: EmitMode,
    allowed_lateness: timedelta | str | int = 0,
    batch_size: int | None = None,
    out_of_orderness: timedelta | str | int | None = None,
    until: datetime | int | str | None = None,
    flush_all: bool = False,
) -> pa.Table:
    """The rows a window operator must output at the end of the run, for one emission mode.

    Columns: the key columns, ``window_start``, ``window_end`` (timestamp[us, UTC]), one column
    per aggregate, plus ``_deleted`` in ``changes``/``latest`` and ``_step`` in ``latest``.
    See :class:`WindowReference` for the model and the per-step variants.
    """
    ref = WindowReference(
        data,
        time_column=time_column,
        keys=keys,
        window=window,
        aggregates=aggregates,
        allowed_lateness=allowed_lateness,
        batch_size=batch_size,
        out_of_orderness=out_of_orderness,
        until=until,
    )
    if emit == "every":
        return ref.every(flush_all=flush_all)
    if emit == "changes":
        return ref.changes(flush_all=flush_all)
    if emit == "latest":
        return ref.latest(flush_all=flush_all)
    raise ValueError(f"emit must be every, changes or latest, got {emit!r}")


def late_records(
    data: pa.Table | Sequence[pa.RecordBatch],
    *,
    time_column: str,
    keys: str | Sequence[str],
    window: Any,
    allowed_lateness: timedelta | str | int = 0,
    batch_size: int | None = None,
    out_of_orderness: timedelta | str | int | None = None,
    until: datetime | int | str | None = None,
) -> pa.Table:
    """The records the operator must send to its late side output, in arrival order."""
    return WindowReference(
        data,
        time_column=time_column,
        keys=keys,
        window=window,
        aggregates={},
        allowed_lateness=allowed_lateness,
        batch_size=batch_size,
        out_of_orderness=out_of_orderness,
        until=until,
    ).late()


# -------------------------------------------------------------------- sliding fast path ---


def sliding_changelog_query(
    relation: str,
    *,
    time_us: str,
    keys: Sequence[str],
    size: int,
    slide: int,
    aggregates: Mapping[str, AggregateSpec],
    watermark: int | None,
) -> str:
    """SQL for the ``changes`` changelog of count/sum/mean sliding windows over ``relation``.

    ``time_us`` is an SQL expression giving event time in int64 µs; every record counts (no
    lateness: the model of a source that emits one watermark at the end). ``watermark`` is the
    final watermark (windows with ``end - 1 <= watermark`` complete; None = all, as flush all).

    Records are aggregated per (key, slice) with slices of width ``g = gcd(size, slide)``. A slice
    ``[s, s + g)`` is in the windows with ends ``e`` in ``[s + g, s + size]``: it *enters* at the
    first multiple of ``slide`` ``>= s + g`` and *leaves* at the first multiple ``> s + size``. Its
    partials are added at the entry end and subtracted at the exit end; a running sum per key
    over these ends gives the window value, constant between them, and a row is kept where it
    changes (deletion row where the record count drops to zero). Output columns: the keys,
    ``window_start``, ``window_end`` (int64 µs), the aggregates, ``_deleted``.
    """
    g = math.gcd(size, slide)
    key_list = ", ".join(_q(k) for k in keys)
    partials = ["count(*) AS __n"]
    outputs = []
    for i, (name, (function, column)) in enumerate(aggregates.items()):
        if function not in ("count", "sum", "mean"):
            raise ValueError(f"the fast path handles count/sum/mean, not {function} ({name!r})")
        if column is None:
            partials.append(f"count(*) AS __v{i}, count(*) AS __nn{i}")
        else:
            c = _q(column)
            partials.append(f"coalesce(sum({c}), 0) AS __v{i}, count({c}) AS __nn{i}")
        if function == "count":
            outputs.append(f"CASE WHEN __n > 0 THEN __nn{i} END AS {_q(name)}")
        elif function == "sum":
            outputs.append(f"CASE WHEN __nn{i} > 0 THEN __v{i} END AS {_q(name)}")
        else:
            outputs.append(f"CASE WHEN __nn{i} > 0 THEN __v{i}::DOUBLE / __nn{i} END AS {_q(name)}")
    sums = [
        "__n",
        *(f"__v{i}" for i in range(len(aggregates))),
        *(f"__nn{i}" for i in range(len(aggregates))),
    ]
    names = [_q(name) for name in aggregates]
    changed = " OR ".join(
        [
            "(__n > 0) IS DISTINCT FROM lag(__n > 0, 1, false) OVER w",
            *(f"{n} IS DISTINCT FROM lag({n}) OVER w" for n in names),
        ]
    )
    done = "" if watermark is None else f"WHERE __end - 1 <= {watermark}"

    def floor_div(x: str, d: int) -> str:  # exact floor division, negative numbers included
        return f"((({x}) - ((({x}) % {d}) + {d}) % {d}) // {d})"

    return f"""
        WITH slices AS (
            SELECT {key_list}, {floor_div(time_us, g)} * {g} AS __slice, {", ".join(partials)}
            FROM {relation}
            GROUP BY ALL
        ),
        deltas AS (  -- enters at the first end >= slice + g, leaves at the first end > slice + size
            SELECT {key_list}, {floor_div(f"__slice + {g} + {slide - 1}", slide)} * {slide} AS __end,
                   {", ".join(sums)}
            FROM slices
            UNION ALL
            SELECT {key_list}, ({floor_div(f"__slice + {size}", slide)} + 1) * {slide},
                   {", ".join(f"-{c}" for c in sums)}
            FROM slices
        ),
        net AS (
            SELECT {key_list}, __end, {", ".join(f"sum({c}) AS {c}" for c in sums)}
            FROM deltas
            GROUP BY ALL
        ),
        running AS (
            SELECT {key_list}, __end,
                   {", ".join(f"sum({c}) OVER w AS {c}" for c in sums)}
            FROM net
            WINDOW w AS (PARTITION BY {key_list} ORDER BY __end ROWS UNBOUNDED PRECEDING)
        ),
        valued AS (
            SELECT {key_list}, __end, __n, {", ".join(outputs)} FROM running
        ),
        changed AS (
            SELECT * FROM valued
            WINDOW w AS (PARTITION BY {key_list} ORDER BY __end)
            QUALIFY {changed}
        )
        SELECT {key_list}, __end - {size} AS window_start, __end AS window_end,
               {", ".join(names)}, __n = 0 AS _deleted
        FROM changed {done}
        ORDER BY window_end, {key_list}
    """


def sliding_changelog(
    data: pa.Table,
    *,
    time_column: str,
    keys: str | Sequence[str],
    window: Any,
    aggregates: Mapping[str, AggregateSpec],
    until: datetime | int | str | None = None,
    flush_all: bool = False,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """The ``changes`` output of a sliding window of count/sum/mean, for large data.

    Models ``ls.MemorySource(data, time_column, until=until)`` with no out-of-orderness watermark
    (so no record is late): the same rows as ``expected_windows(..., emit="changes")`` in that
    setting, computed without expanding records into windows (see
    :func:`sliding_changelog_query`). Float sums are running sums: exact for integral values,
    otherwise equal to a direct sum up to rounding.
    """
    kind, size, slide = _window_params(window)
    if kind != "sliding":
        raise ValueError("sliding_changelog needs ls.Sliding or ls.Tumbling")
    key_cols = [keys] if isinstance(keys, str) else list(keys)
    times = times_us(data.column(time_column))
    watermark = _end_watermark(times, until, flush_all)
    columns = sorted({c for _, c in aggregates.values() if c is not None} - set(key_cols))
    prepared = data.select([*key_cols, *columns])
    prepared = prepared.append_column("__t", pa.array(times, type=pa.int64()))
    con = connection or _cursor()
    con.register("__sliding_input", prepared)
    try:
        query = sliding_changelog_query(
            "__sliding_input",
            time_us="__t",
            keys=key_cols,
            size=size,
            slide=slide,
            aggregates=aggregates,
            watermark=watermark,
        )
        out = _fetch(con, query)
    finally:
        con.unregister("__sliding_input")
    return _shape(out, data, key_cols, aggregates)


def _end_watermark(
    times: np.ndarray, until: datetime | int | str | None, flush_all: bool
) -> int | None:
    """The final watermark of a source with no out-of-orderness watermarks (None: flush all)."""
    if flush_all:
        return None
    if until is not None:
        return _time_us(until) - 1
    return int(times.max()) if len(times) else _NO_WATERMARK


def session_windows(
    data: pa.Table,
    *,
    time_column: str,
    keys: str | Sequence[str],
    window: Any,
    aggregates: Mapping[str, AggregateSpec],
    until: datetime | int | str | None = None,
    flush_all: bool = False,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """The ``every`` output of session windows, for large data, by gaps-and-islands SQL.

    Models ``ls.MemorySource(data, time_column, until=until)`` with no out-of-orderness watermark
    (so no record is late and no session is purged early): per key, records sorted by time start
    a new session when they are ``gap`` or more after the previous one; a session is
    ``[first, last + gap)``, reported when complete (``end - 1 <= until - 1``, or the max time;
    every session with ``flush_all``). Any aggregate function; ``first``/``last`` break time ties by
    row order.
    """
    kind, gap, _ = _window_params(window)
    if kind != "session":
        raise ValueError("session_windows needs ls.Session")
    key_cols = [keys] if isinstance(keys, str) else list(keys)
    times = times_us(data.column(time_column))
    watermark = _end_watermark(times, until, flush_all)
    columns = sorted({c for _, c in aggregates.values() if c is not None} - set(key_cols))
    prepared = data.select([*key_cols, *columns])
    prepared = prepared.append_column("__t", pa.array(times, type=pa.int64()))
    prepared = prepared.append_column("__seq", pa.array(np.arange(len(times), dtype=np.int64)))
    key_list = ", ".join(_q(k) for k in key_cols)
    aggs = "".join(
        f", {_aggregate_sql(f, None if c is None else _q(c))} AS {_q(name)}"
        for name, (f, c) in aggregates.items()
    )
    done = "" if watermark is None else f"HAVING max(__t) + {gap} - 1 <= {watermark}"
    query = f"""
        WITH flagged AS (
            SELECT *, CASE WHEN __t - lag(__t) OVER w < {gap} THEN 0 ELSE 1 END AS __new
            FROM __session_input
            WINDOW w AS (PARTITION BY {key_list} ORDER BY __t, __seq)
        ),
        islands AS (
            SELECT *, sum(__new) OVER (
                PARTITION BY {key_list} ORDER BY __t, __seq ROWS UNBOUNDED PRECEDING
            ) AS __island
            FROM flagged
        )
        SELECT {key_list}, min(__t) AS window_start, max(__t) + {gap} AS window_end{aggs}
        FROM islands
        GROUP BY {key_list}, __island
        {done}
        ORDER BY window_end, {key_list}
    """
    con = connection or _cursor()
    con.register("__session_input", prepared)
    try:
        out = _fetch(con, query)
    finally:
        con.unregister("__session_input")
    return _shape(out, data, key_cols, aggregates)


def upsert_state(changelog: pa.Table, keys: str | Sequence[str]) -> pa.Table:
    """What an upsert store keyed by ``keys`` holds after applying ``changelog`` in row order:
    each key's last row, without keys whose last row is a deletion (``_deleted``); sorted by key,
    ``_deleted`` dropped."""
    key_list = [keys] if isinstance(keys, str) else list(keys)
    columns = [c for c in changelog.column_names if c != "_deleted"]
    if changelog.num_rows == 0:
        return changelog.select(columns)
    indexed = changelog.append_column("__row", pa.array(np.arange(changelog.num_rows)))
    last = indexed.group_by(key_list).aggregate([("__row", "max")]).column("__row_max")
    rows = indexed.take(last)
    if "_deleted" in rows.column_names:
        rows = rows.filter(pc.invert(rows.column("_deleted")))
    return rows.select(columns).sort_by([(k, "ascending") for k in key_list])
