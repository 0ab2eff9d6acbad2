"""The window operator: keys → dense ids, a window engine, lateness and emission → Arrow batches.

Output columns: the key columns, ``window_start``, ``window_end`` (timestamp[us, UTC]), one column
per aggregate, and in ``changes``/``latest`` mode a boolean ``_deleted`` (aggregates null there).
Late records go, with the input's columns, to the ``late`` side output.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from ..keys import KeyIndex
from ..operator import Context, Operator
from ..timeutil import TIME_TYPE, micros_array
from .aggregates import Kernel, Rows
from .assigners import Session, Sliding, WindowSpec
from .bulk import (
    SliceAccumulator,
    bulk_unsupported,
    completed_state,
    pending_state,
    state_kernels,
)
from .engine import Emission, EmitMode, WindowEngine
from .session import SessionEngine
from .sliding import SlidingEngine
from .state_tables import KEY_ID


def output_schema(
    key_fields: list[pa.Field], aggregates: dict[str, Kernel], emit: EmitMode
) -> pa.Schema:
    fields = [
        *key_fields,
        pa.field("window_start", TIME_TYPE),
        pa.field("window_end", TIME_TYPE),
        *(pa.field(name, k.output_type) for name, k in aggregates.items()),
    ]
    if emit != "every":
        fields.append(pa.field("_deleted", pa.bool_()))
    return pa.schema(fields)


def make_engine(
    spec: WindowSpec, aggregates: dict[str, Kernel], emit: EmitMode, allowed_lateness: int
) -> WindowEngine:
    kernels, names = list(aggregates.values()), list(aggregates)
    if isinstance(spec, Session):
        return SessionEngine(kernels, emit, allowed_lateness, gap=spec.gap, names=names)
    assert isinstance(spec, Sliding)
    return SlidingEngine(
        kernels, emit, allowed_lateness, size=spec.size, slide=spec.slide, names=names
    )


class WindowOperator(Operator):
    """Keyed event-time windows over Arrow batches (see module docstring for the output).

    Snapshots share the engine's never-mutated tables (``snapshot_immutable``) and record the
    aggregate input types, so a restored operator can finish windows before any new batch arrives
    even when the input schema was not known at build time.
    """

    snapshot_immutable = True

    def __init__(
        self,
        spec: WindowSpec,
        aggregates: dict[str, Kernel],
        *,
        emit: EmitMode,
        allowed_lateness: int,
        keys: tuple[str, ...],
        time_column: str,
        flush: str | None,
        schema: pa.Schema | None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.aggregates = aggregates
        self.emit = emit
        self.allowed_lateness = allowed_lateness
        self.keys = keys
        self.time_column = time_column
        self.flush = flush
        self.output_schema = schema
        self.index = KeyIndex(keys)
        self.engine = make_engine(spec, aggregates, emit, allowed_lateness)
        self._columns = sorted({c for k in aggregates.values() for c in k.input_columns})
        self._seq = 0
        self._bound = schema is not None
        self._input_types: dict[str, pa.DataType] | None = None
        self._bulk: SliceAccumulator | None = None
        self._bulk_watermark: int | None = None
        self._in_pass = False  # between start_bulk and the end of the pass's input
        self.bulk_report: dict[str, Any] | None = None

    # bulk mode (state bootstrap) ------------------------------------------------------------

    def bulk_unsupported(self) -> str | None:
        """Why this window cannot take the state bootstrap's bulk mode (None: it can)."""
        return bulk_unsupported(self.engine, self.aggregates)

    def start_bulk(self) -> None:
        """Aggregate the coming batches per (key, slice) without completing any window; the
        end of the input builds the engine's state from them and completes every window up to
        the last watermark at once (``windows/bulk.py``); the end of the input is not the end
        of the job (no end-of-run flush).

        Exact while no record arrives late: a batch holding a record that the watermark in
        force would make late (all or some of its windows closed — a map that moves times
        back, say) ends bulk mode there: the state is built as of that watermark and that
        batch and the rest go through the engine one by one, as in a replay."""
        assert isinstance(self.engine, SlidingEngine) and self.bulk_unsupported() is None
        names, kernels = state_kernels(self.engine)
        width = math.gcd(self.engine.size, self.engine.slide)  # the engine's slice width
        self._bulk = SliceAccumulator(names, kernels, width)
        self._in_pass = True

    def _at_risk(self, times: np.ndarray) -> bool:
        """Whether a record at ``times`` would miss a window it belongs to: its first window
        ends before the first one the watermark in force still accepts."""
        watermark = self._bulk_watermark
        if watermark is None or not len(times):
            return False
        assert self._bulk is not None and isinstance(self.engine, SlidingEngine)
        slide, width = self.engine.slide, self._bulk.slice_width
        accepting_from = -(-(watermark + 2 - self.allowed_lateness) // slide) * slide
        first_slice = int(times.min()) // width * width
        return -(-(first_slice + width) // slide) * slide < accepting_from

    def _finish_bulk(self, ctx: Context, *, switched: bool = False) -> None:
        accumulator, self._bulk = self._bulk, None
        assert accumulator is not None
        names, kernels = accumulator.names, accumulator.kernels
        slices = accumulator.result()
        self.bulk_report = {"rows": accumulator.rows, "slices": len(slices[0])}
        if switched:
            self.bulk_report["replayed_from"] = self._bulk_watermark
        watermark = self._bulk_watermark
        if watermark is not None and self.emit == "latest":  # built directly: the newest values
            state, emission = completed_state(
                self.engine, names, kernels, slices, len(self.index), watermark
            )
            self.engine.restore(state)
            self._emit(emission, ctx)
        else:  # every window completed by the engine: the changelog
            self.engine.restore(pending_state(self.engine, names, kernels, slices, len(self.index)))
            if watermark is not None:
                self._emit(self.engine.advance(watermark), ctx)
        if watermark is not None:
            ctx.emit_watermark(watermark)
        self.bulk_report["state_rows"] = self.engine.state_rows()

    def on_batch(self, batch: pa.RecordBatch, ctx: Context) -> None:
        if batch.num_rows == 0:
            return
        if not self._bound:
            self._bind(batch.schema)
        ids = self.index.ids(batch)
        n = batch.num_rows
        rows = Rows(
            {c: batch.column(c) for c in self._columns},
            micros_array(batch.column(self.time_column)),
            np.arange(self._seq, self._seq + n, dtype=np.int64),
        )
        self._seq += n
        if self._bulk is not None:
            if not self._at_risk(rows.times):
                self._bulk.add(ids, rows)
                return
            self._finish_bulk(ctx, switched=True)  # a record would be late: replay from here
        result = self.engine.add(ids, rows, ctx.watermark)
        if result.late.any():
            ctx.side_output("late", batch.filter(pa.array(result.late)))
        self._emit(result.emission, ctx)

    def _bind(self, schema: pa.Schema) -> None:
        for name, kernel in self.aggregates.items():
            kernel.bind(schema, f"window aggregate {name!r}")
        self._input_types = {c: schema.field(c).type for c in self._columns if c in schema.names}
        self._bound = True

    def on_watermark(self, watermark: int, ctx: Context) -> None:
        if self._bulk is not None:  # completed at the end, all at once
            if self._bulk_watermark is None or watermark > self._bulk_watermark:
                self._bulk_watermark = watermark
            return
        self._emit(self.engine.advance(watermark), ctx)
        ctx.emit_watermark(watermark)

    def on_end(self, ctx: Context) -> None:
        if self._in_pass:
            self._in_pass = False
            if self._bulk is not None:
                self._finish_bulk(ctx)
            return  # the input goes on after the bootstrap: no end-of-run flush
        flush = self.flush or getattr(ctx._node.runtime, "flush", "watermark")
        if flush == "all":
            self._emit(self.engine.flush_all(), ctx)

    def _emit(self, emission: Emission | None, ctx: Context) -> None:
        if emission is None or len(emission) == 0:
            return
        columns: list[pa.Array] = [*self.index.columns_for(emission.key_ids)]
        columns.append(pa.array(emission.starts, type=pa.int64()).cast(TIME_TYPE))
        columns.append(pa.array(emission.ends, type=pa.int64()).cast(TIME_TYPE))
        columns.extend(emission.results)
        if self.emit != "every":
            columns.append(pa.array(emission.deleted, type=pa.bool_()))
        names = [*self.keys, "window_start", "window_end", *self.aggregates]
        if self.emit != "every":
            names.append("_deleted")
        batch = pa.RecordBatch.from_arrays(columns, names=names)
        if self.output_schema is not None and batch.schema != self.output_schema:
            batch = batch.cast(self.output_schema)
        ctx.emit(batch)

    def snapshot(self) -> Any:
        """``keys`` (the key columns, row ``i`` = key id ``i``, plus ``key_id``), ``engine``
        (the engine's tables, ``state_tables``), the arrival counter and the input types."""
        return {
            "keys": self._keys_table(),
            "engine": self.engine.snapshot(),
            "seq": self._seq,
            "input_types": None if self._input_types is None else dict(self._input_types),
        }

    def _keys_table(self) -> pa.Table | None:
        keys = self.index.snapshot()
        if keys is None or KEY_ID in keys.column_names:
            return keys
        return keys.append_column(KEY_ID, pa.array(np.arange(keys.num_rows, dtype=np.int64)))

    def restore(self, state: Any) -> None:
        types = state.get("input_types")
        if not self._bound and types is not None:
            self._bind(pa.schema(list(types.items())))
        keys = state["keys"]
        if keys is not None and KEY_ID in keys.column_names and KEY_ID not in self.keys:
            keys = keys.drop_columns([KEY_ID])
        self.index.restore(keys)
        self.engine.restore(state["engine"])
        self._seq = state["seq"]

    def describe(self) -> str:
        aggregates = ", ".join(f"{name}={kernel!r}" for name, kernel in self.aggregates.items())
        return (
            f"WindowOperator({self.spec!r}, emit={self.emit}, "
            f"allowed_lateness={self.allowed_lateness}, time_column={self.time_column}, "
            f"aggregates=[{aggregates}])"
        )

    def state_size(self) -> tuple[int, int]:
        rows = self.engine.state_rows()
        per_row = 8 * (3 + sum(2 for _ in self.aggregates))  # key id, slice, count + partials
        return rows, rows * per_row
