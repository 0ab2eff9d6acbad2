"""Small numpy helpers shared by the window engines (int64 index arithmetic, no Python loops)."""

from __future__ import annotations

import numpy as np

__all__ = ["ranges"]

_EMPTY = np.zeros(0, dtype=np.int64)


def ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[i], hi[i])`` (empty ranges where ``hi <= lo``), int64."""
    lens = np.maximum(hi - lo, 0)
    total = int(lens.sum())
    if total == 0:
        return _EMPTY
    starts = np.cumsum(lens) - lens
    return np.repeat(lo - starts, lens) + np.arange(total, dtype=np.int64)
