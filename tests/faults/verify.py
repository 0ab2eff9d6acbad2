"""A verifying sink: counts duplicates, losses (against an expected id set), out-of-order
records per key, late records and watermark regressions, for raw-record pipelines under faults.

Rows are kept as numpy columns (ids, keys, times, arrival order) and checked vectorised in
:meth:`VerifyingSink.report`; watermarks are checked as they arrive. Use it as the sink of a
pipeline whose records carry a unique id column.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lambdasource.sinks.base import Sink


class VerifyingSink(Sink):
    """``expected``: every id that must arrive exactly once (None: only duplicates are checked).

    ``report()`` figures: ``rows``, ``distinct``, ``duplicates`` (rows beyond the first per id),
    ``missing`` / ``unexpected`` (against ``expected``), ``out_of_order`` (rows whose time is
    below an earlier row's of the same key: a figure, the input itself may be out of order),
    ``late`` (rows with time <= the watermark received before them), ``watermark_regressions``.
    """

    name = "verify"

    def __init__(
        self,
        expected: Iterable[int] | np.ndarray | None = None,
        *,
        id_column: str = "event_id",
        key_column: str = "user_id",
        time_column: str = "event_time",
    ) -> None:
        self.expected = None if expected is None else np.unique(np.asarray(list(expected)))
        self.id_column = id_column
        self.key_column = key_column
        self.time_column = time_column
        self._ids: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._times: list[np.ndarray] = []
        self.rows = 0
        self.late = 0
        self.watermark: int | None = None
        self.watermarks = 0
        self.watermark_regressions = 0
        self.flushes = 0

    async def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        times = pc.cast(batch.column(self.time_column), pa.int64()).to_numpy(zero_copy_only=False)
        self._ids.append(batch.column(self.id_column).to_numpy(zero_copy_only=False))
        self._keys.append(batch.column(self.key_column).to_numpy(zero_copy_only=False))
        self._times.append(times)
        self.rows += batch.num_rows
        if self.watermark is not None:
            self.late += int(np.count_nonzero(times <= self.watermark))

    async def on_watermark(self, watermark: int) -> None:
        self.watermarks += 1
        if self.watermark is not None and watermark < self.watermark:
            self.watermark_regressions += 1
        self.watermark = watermark if self.watermark is None else max(self.watermark, watermark)

    async def flush(self) -> None:
        self.flushes += 1

    def ids(self) -> np.ndarray:
        return np.concatenate(self._ids) if self._ids else np.empty(0, np.int64)

    def report(self) -> dict[str, Any]:
        ids = self.ids()
        distinct = np.unique(ids)
        out: dict[str, Any] = {
            "rows": len(ids),
            "distinct": len(distinct),
            "duplicates": int(len(ids) - len(distinct)),
            "late": self.late,
            "watermarks": self.watermarks,
            "watermark_regressions": self.watermark_regressions,
            "out_of_order": self._out_of_order(),
        }
        if self.expected is not None:
            out["missing"] = len(np.setdiff1d(self.expected, distinct, assume_unique=True))
            out["unexpected"] = len(np.setdiff1d(distinct, self.expected, assume_unique=True))
        return out

    def _out_of_order(self) -> int:
        """Rows whose time is below the running max of earlier rows of the same key."""
        if not self._keys:
            return 0
        keys = np.concatenate(self._keys)
        times = np.concatenate(self._times).astype(np.int64)
        order = np.argsort(keys, kind="stable")  # groups by key, arrival order within
        k, t = keys[order], times[order]
        _, rank = np.unique(k, return_inverse=True)
        span = int(t.max() - t.min()) + 1
        shifted = rank.astype(np.int64) * span + (t - t.min())  # groups ascending, disjoint
        running = np.maximum.accumulate(shifted)
        return int(np.count_nonzero(shifted < running))

    def metrics(self) -> dict[str, Any]:
        return self.report()
