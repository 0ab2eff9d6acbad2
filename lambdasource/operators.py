"""Built-in stateless operators: filter, map and union (pass-through of several inputs).

User functions work on whole batches. When one raises and ``on_error="dead_letter"`` (the
default), the batch is bisected until the failing rows are isolated: they go to the dead letters
with the exception as reason, every other row is processed normally, so a bad record costs
O(log batch) extra calls and never the batch. ``on_error="raise"`` fails the run instead.

All three are stateless (``Operator.stateful = False``): checkpoints leave them out, so adding or
removing a filter or map in front of a window keeps the window's checkpointed state usable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from .errors import ConfigError, SchemaError
from .operator import Context, Operator

OnError = Literal["dead_letter", "raise"]
Predicate: TypeAlias = "pc.Expression | Callable[[pa.RecordBatch], Any]"


def check_on_error(value: str, where: str) -> OnError:
    if value not in ("dead_letter", "raise"):
        raise ConfigError(f"{where}: on_error must be 'dead_letter' or 'raise', got {value!r}")
    return value  # type: ignore[return-value]


def validate_expression(expr: pc.Expression, schema: pa.Schema | None, where: str) -> None:
    """Bind ``expr`` to ``schema`` now, so a bad column or type fails at build time."""
    if schema is None:
        return
    try:
        result = schema.empty_table().filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"{where}: invalid filter expression {expr}: {exc}") from exc
    del result


class _Guarded(Operator):
    """Runs a user function per batch, dead-lettering the rows that make it fail (stateless:
    ``failures`` is a metric, not state)."""

    stateful = False

    def __init__(self, on_error: OnError) -> None:
        super().__init__()
        self.on_error = on_error
        self.failures = 0

    def apply(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        raise NotImplementedError

    def on_batch(self, batch: pa.RecordBatch, ctx: Context) -> None:
        if self.on_error == "raise":
            for out in self.apply(batch):
                ctx.emit(out)
            return
        self._isolate(batch, 0, ctx)

    def _isolate(self, batch: pa.RecordBatch, offset: int, ctx: Context) -> None:
        try:
            outputs = self.apply(batch)
        except Exception as exc:
            if batch.num_rows <= 1:
                self.failures += batch.num_rows
                ctx.dead_letter(
                    batch, f"{type(exc).__name__}: {exc}", f"operator={ctx.name} row={offset}"
                )
                return
            half = batch.num_rows // 2
            self._isolate(batch.slice(0, half), offset, ctx)
            self._isolate(batch.slice(half), offset + half, ctx)
            return
        for out in outputs:
            ctx.emit(out)


class FilterOperator(_Guarded):
    """Keeps rows where the predicate (a pyarrow expression or batch → mask callable) is true."""

    def __init__(self, predicate: Predicate, on_error: OnError) -> None:
        super().__init__(on_error)
        self.predicate = predicate

    def apply(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if isinstance(self.predicate, pc.Expression):
            return [batch.filter(self.predicate)]
        mask = self.predicate(batch)
        if not isinstance(mask, pa.Array | pa.ChunkedArray):
            mask = pa.array(mask, type=pa.bool_())
        return [batch.filter(pc.fill_null(mask, False))]


class MapOperator(_Guarded):
    """Applies ``fn(batch) -> batch | table`` (row count may change)."""

    def __init__(
        self,
        fn: Callable[[pa.RecordBatch], pa.RecordBatch | pa.Table],
        schema: pa.Schema | None,
        on_error: OnError,
    ) -> None:
        super().__init__(on_error)
        self.fn = fn
        self.schema = schema

    def apply(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        out = self.fn(batch)
        if isinstance(out, pa.Table):
            batches = out.combine_chunks().to_batches()
        elif isinstance(out, pa.RecordBatch):
            batches = [out]
        else:
            raise TypeError(
                f"map function must return a RecordBatch or Table, got {type(out).__name__}"
            )
        if self.schema is not None:
            batches = [b.cast(self.schema) if b.schema != self.schema else b for b in batches]
        return batches


class UnionOperator(Operator):
    """Merges its inputs; batches pass through, watermarks are combined by the runtime."""

    stateful = False
