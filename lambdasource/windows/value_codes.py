"""Int64 codes for the values of a ``count_distinct`` column: :class:`ValueCodes`.

A :class:`~.distinct.PairPresence` tracker packs (key id, value) pairs into one int64 as
``key << CODE_BITS | code``; the codes come from here: equal values get equal codes, codes stay
below ``2**CODE_BITS`` and are renumbered (monotonically) only when the tracker reclaims the codes
of values it no longer holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StateError

__all__ = ["CODE_BITS", "CODE_MASK", "DIRECT_OFFSET", "ValueCodes"]

CODE_BITS = 32
CODE_MASK = (1 << CODE_BITS) - 1
DIRECT_OFFSET = 1 << 31  # ints in [-2**31, 2**31) are their own value code (+ 2**31)
EMPTY = np.zeros(0, dtype=np.int64)


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _hashable(x)) for k, x in v.items())
    return v


class ValueCodes:
    """Int64 codes ``< 2**32`` for the non-null values of one column.

    Invariant: equal values have equal codes and different values different codes (floats: ``-0.0``
    is ``0.0``, every NaN one value); a code changes only by :meth:`compact`, which renumbers the
    surviving codes monotonically. Modes:

    - ``"direct"``: integers (and temporals, booleans) within ``[-2**31, 2**31)`` are their own code
      (``value + 2**31``): no dictionary at all; a value outside needs :meth:`compact` first
      (:meth:`encode` answers None), which turns the mode into ``"int"``;
    - ``"int"`` / ``"float"`` (canonical IEEE bits): a sorted int64 array of the values (numpy),
      dense codes ``0 … len - 1``;
    - ``"object"``: one dict probe per distinct value of a batch.
    """

    def __init__(self) -> None:
        self.mode: str | None = None  # "direct", "int", "float", "object"
        self._sorted = EMPTY  # "int"/"float": sorted int64 representations …
        self._codes = EMPTY  # … and their codes
        self._dict: dict[Any, int] = {}  # "object": value -> code
        self._count = 0

    def __len__(self) -> int:
        """Dictionary entries (0 in direct mode, which holds none)."""
        return self._count

    @staticmethod
    def _mode_of(dtype: pa.DataType) -> str:
        if pa.types.is_integer(dtype) or pa.types.is_boolean(dtype):
            return "int"
        if pa.types.is_temporal(dtype) and dtype.bit_width in (32, 64):
            return "int"
        if pa.types.is_floating(dtype):
            return "float"
        return "object"

    @staticmethod
    def _as_int64(arr: pa.Array, mode: str) -> np.ndarray:
        if mode == "float":
            v = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64) + 0.0  # -0 → 0
            v[np.isnan(v)] = np.nan
            return v.view(np.int64)
        if pa.types.is_temporal(arr.type):
            arr = arr.view(pa.int32() if arr.type.bit_width == 32 else pa.int64())
        v = np.asarray(arr.to_numpy(zero_copy_only=False))
        return v.view(np.int64) if v.dtype == np.uint64 else v.astype(np.int64)

    def encode(self, arr: pa.Array) -> np.ndarray | None:
        """Codes of the values of ``arr`` (no nulls), assigning new codes to new values; None when
        direct mode must be left first (:meth:`compact`)."""
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        mode = self._mode_of(arr.type)
        if self.mode in (None, "direct"):
            if mode == "int":
                x = self._as_int64(arr, mode)
                if not len(x) or (int(x.min()) >= -DIRECT_OFFSET and int(x.max()) < DIRECT_OFFSET):
                    self.mode = "direct"
                    return x + DIRECT_OFFSET
            if self.mode == "direct":
                return None
            self.mode = mode
        elif mode != self.mode and self.mode != "object":
            self._to_objects()
        if self.mode == "object":
            codes = self._encode_objects(arr)
        else:
            codes = self._encode_ints(self._as_int64(arr, mode))
        if self._count > CODE_MASK:
            raise StateError(f"count_distinct: more than {CODE_MASK} distinct values held")
        return codes

    def _encode_ints(self, x: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(x, return_inverse=True)
        pos = np.searchsorted(self._sorted, uniq)
        found = np.zeros(len(uniq), dtype=bool)
        inside = pos < len(self._sorted)
        found[inside] = self._sorted[pos[inside]] == uniq[inside]
        codes = np.empty(len(uniq), dtype=np.int64)
        codes[found] = self._codes[pos[found]]
        new = np.flatnonzero(~found)
        if len(new):
            codes[new] = np.arange(self._count, self._count + len(new), dtype=np.int64)
            self._count += len(new)
            self._sorted = np.insert(self._sorted, pos[new], uniq[new])
            self._codes = np.insert(self._codes, pos[new], codes[new])
        return codes[inverse.reshape(-1)]

    def _encode_objects(self, arr: pa.Array) -> np.ndarray:
        table = self._dict
        try:
            encoded = pc.dictionary_encode(arr)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):  # nested types: per row
            values = [_hashable(v) for v in arr.to_pylist()]
            indices = None
        else:
            values = encoded.dictionary.to_pylist()
            indices = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        codes = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):  # once per distinct value of the batch
            code = table.get(v)
            if code is None:
                code = table[v] = self._count
                self._count += 1
            codes[i] = code
        return codes if indices is None else codes[indices]

    def _to_objects(self) -> None:
        """A column of another kind showed up: continue with a dict of Python values."""
        raw = self._sorted.view(np.float64) if self.mode == "float" else self._sorted
        self._dict = dict(zip(raw.tolist(), self._codes.tolist(), strict=True))
        self._sorted = self._codes = EMPTY
        self.mode = "object"

    def compact(self, live: np.ndarray) -> None:
        """Keep the codes in ``live`` (sorted, unique), renumbered to their ranks ``0 … n-1``
        (monotone); direct mode becomes ``"int"``."""
        if self.mode == "direct":
            self.mode, self._sorted = "int", live - DIRECT_OFFSET
            self._codes = np.arange(len(live), dtype=np.int64)
        elif self.mode == "object":
            rank = {c: i for i, c in enumerate(live.tolist())}
            self._dict = {v: rank[c] for v, c in self._dict.items() if c in rank}
        else:
            keep = np.flatnonzero(np.isin(self._codes, live))
            self._sorted = self._sorted[keep]
            self._codes = np.searchsorted(live, self._codes[keep])
        self._count = len(live)

    def snapshot(self) -> dict[str, Any]:
        """``{"mode", "size", "values"}``: ``values`` a table (``value_code``, ``value``;
        floats as float64), or, for values Arrow cannot give back as they are (tuples of nested
        values), ``{"value_code": array, "value": list}``."""
        out: dict[str, Any] = {"mode": self.mode, "size": self._count}
        codes, values = self._codes, self._sorted
        if self.mode == "float":
            values = values.view(np.float64)
        if self.mode == "object":
            codes = np.fromiter(self._dict.values(), dtype=np.int64, count=len(self._dict))
            items = list(self._dict)
            if any(isinstance(item, tuple) for item in items):
                out["values"] = {"value_code": codes, "value": items}
                return out
            try:
                values = pa.array(items)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                out["values"] = {"value_code": codes, "value": items}
                return out
        out["values"] = pa.table({"value_code": pa.array(codes, pa.int64()), "value": values})
        return out

    def restore(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.mode, self._count = state["mode"], int(state["size"])
        values = state["values"]
        if isinstance(values, dict):
            codes, items = np.asarray(values["value_code"]), list(values["value"])
        else:
            codes = np.asarray(values.column("value_code").to_numpy(), dtype=np.int64)
            column = values.column("value")
            if self.mode == "object":
                items = column.to_pylist()
            else:  # int / float: the sorted values (floats by their bits) and their codes
                items = []
                raw: np.ndarray = np.asarray(column.to_numpy())
                self._sorted = raw.view(np.int64) if self.mode == "float" else raw.astype(np.int64)
                self._codes = codes
        if self.mode == "object":
            self._dict = dict(zip(items, codes.tolist(), strict=True))
