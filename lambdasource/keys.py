"""Dense, stable integer ids for key values, assigned batch-at-a-time.

Invariant: the id of a key value never changes during a run; ids are ``0..len(index)-1`` in order of
first appearance. A null is a key value like any other (as SQL ``GROUP BY`` treats it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import SchemaError


def _int_like(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_temporal(dtype) or pa.types.is_boolean(dtype)


class _SortedInts:
    """Integer keys: ids by a dense lookup table while the values span a compact range, else by
    binary search in a sorted array of values (numpy either way, never per row).

    Invariant: exactly one representation is live; ``lut[v - base]`` is the id of ``v`` or -1
    (table mode, ``values is None``), or ``ids[i]`` is the id of ``values[i]`` (sorted mode).
    """

    _MIN_SPAN = 1 << 20  # a table this small is always fine; beyond, at most _SPARSITY× the keys
    _SPARSITY = 4

    def __init__(self) -> None:
        self.lut: np.ndarray | None = np.zeros(0, dtype=np.int64)
        self.base = 0
        self.values: np.ndarray | None = None
        self.ids = np.zeros(0, dtype=np.int64)

    def lookup(self, keys: np.ndarray, next_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids of ``keys``, positions in ``keys`` of first occurrences of new keys)."""
        if self.lut is not None and len(keys):
            found = self._lookup_table(keys, next_id)
            if found is not None:
                return found
            self._to_sorted()
        return self._lookup_sorted(keys, next_id)

    def _lookup_table(self, keys: np.ndarray, next_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Table lookup, growing the table; None when the range would be too sparse."""
        lut = self.lut
        assert lut is not None
        kmin, kmax = int(keys.min()), int(keys.max())
        lo = min(kmin, self.base) if len(lut) else kmin
        hi = max(kmax, self.base + len(lut) - 1) if len(lut) else kmax
        span = hi - lo + 1
        if span > max(self._MIN_SPAN, self._SPARSITY * (next_id + len(keys))):
            return None
        if lo != self.base or span != len(lut):
            grown = np.full(span, -1, dtype=np.int64)
            grown[self.base - lo : self.base - lo + len(lut)] = lut
            self.lut, self.base, lut = grown, lo, grown
        off = keys - lo
        ids = lut[off]
        missing = np.flatnonzero(ids < 0)
        if not len(missing):
            return ids, missing
        uniq, first = np.unique(off[missing], return_index=True)
        order = np.argsort(first, kind="stable")  # ids in order of first appearance
        lut[uniq[order]] = np.arange(next_id, next_id + len(uniq), dtype=np.int64)
        ids[missing] = lut[off[missing]]
        return ids, missing[first[order]]

    def _to_sorted(self) -> None:
        assert self.lut is not None
        pos = np.flatnonzero(self.lut >= 0)
        self.values, self.ids = pos + self.base, self.lut[pos]
        self.lut = None

    def _lookup_sorted(self, keys: np.ndarray, next_id: int) -> tuple[np.ndarray, np.ndarray]:
        if self.values is None:
            self._to_sorted()
        assert self.values is not None
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        pos = np.searchsorted(self.values, uniq)
        found = np.zeros(len(uniq), dtype=bool)
        inside = pos < len(self.values)
        found[inside] = self.values[pos[inside]] == uniq[inside]
        uniq_ids = np.empty(len(uniq), dtype=np.int64)
        uniq_ids[found] = self.ids[pos[found]]
        new = np.flatnonzero(~found)  # ascending, so uniq[new] is sorted
        if len(new):
            by_appearance = new[np.argsort(first[new], kind="stable")]
            uniq_ids[by_appearance] = np.arange(next_id, next_id + len(new), dtype=np.int64)
            self.values = np.insert(self.values, pos[new], uniq[new])
            self.ids = np.insert(self.ids, pos[new], uniq_ids[new])
            new = by_appearance
        return uniq_ids[inverse.reshape(-1)], first[new]


class KeyIndex:
    """Maps the key columns of batches to dense ids and ids back to key columns."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        if not columns:
            raise SchemaError("KeyIndex needs at least one key column")
        self.columns = columns
        self._ints: _SortedInts | None = None
        self._dict: dict[Any, int] = {}
        self._chunks: list[pa.Table] = []
        self._table: pa.Table | None = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def ids(self, batch: pa.RecordBatch) -> np.ndarray:
        """Ids (int64) of every row's key; new keys get the next ids."""
        if batch.num_rows == 0:
            return np.zeros(0, dtype=np.int64)
        cols = [batch.column(c) for c in self.columns]
        if (
            len(cols) == 1
            and _int_like(cols[0].type)
            and cols[0].null_count == 0
            and not self._dict
        ):
            if self._ints is None:
                self._ints = _SortedInts()
            raw = cols[0].cast(pa.int64()) if not pa.types.is_int64(cols[0].type) else cols[0]
            ids, new_rows = self._ints.lookup(
                np.asarray(raw.to_numpy(zero_copy_only=False)), self._size
            )
        else:
            if self._ints is not None:  # a null or odd value showed up: move to the general index
                self._migrate_ints()
            ids, new_rows = self._lookup_general(cols)
        if len(new_rows):
            self._chunks.append(
                pa.Table.from_batches([batch.select(list(self.columns))]).take(new_rows)
            )
            self._size += len(new_rows)
            self._table = None
        return ids

    def _migrate_ints(self) -> None:
        assert self._ints is not None
        table = self.key_table()
        values = table.column(0).to_pylist()
        self._dict = {(v,): i for i, v in enumerate(values)}
        self._ints = None

    def _lookup_general(self, cols: list[pa.Array]) -> tuple[np.ndarray, np.ndarray]:
        """Dictionary-encode each column, combine the codes into one int64 (mixed radix), and
        probe the dict once per distinct key of the batch, never per row."""
        code = np.zeros(len(cols[0]), dtype=np.int64)
        dictionaries = []
        for col in cols:
            encoded = pc.dictionary_encode(col, null_encoding="encode")
            dictionary = encoded.dictionary.to_pylist()
            dictionaries.append(dictionary)
            code = code * len(dictionary) + np.asarray(
                encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64
            )
        uniq, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        uniq_ids = np.empty(len(uniq), dtype=np.int64)
        missing: list[int] = []
        keys: list[tuple[Any, ...]] = []
        for j, combined in enumerate(uniq.tolist()):
            parts = []
            for dictionary in reversed(dictionaries):
                combined, index = divmod(combined, len(dictionary))
                parts.append(dictionary[index])
            key = tuple(reversed(parts))
            keys.append(key)
            found = self._dict.get(key)
            if found is None:
                missing.append(j)
            else:
                uniq_ids[j] = found
        new = np.asarray(missing, dtype=np.int64)
        new = new[np.argsort(first[new], kind="stable")]  # ids in order of first appearance
        for offset, j in enumerate(new.tolist()):
            self._dict[keys[j]] = uniq_ids[j] = self._size + offset
        return uniq_ids[inverse.reshape(-1)], first[new]

    def key_table(self) -> pa.Table:
        """All key values, row ``i`` = key id ``i``."""
        if self._table is None:
            if not self._chunks:
                raise SchemaError("no keys seen yet")
            self._table = pa.concat_tables(self._chunks).combine_chunks()
            self._chunks = [self._table]
        return self._table

    def columns_for(self, ids: np.ndarray) -> list[pa.Array]:
        """Key columns (one array per key column) for the given ids."""
        table = self.key_table().take(pa.array(ids, type=pa.int64()))
        return [table.column(i).combine_chunks() for i in range(table.num_columns)]

    def snapshot(self) -> pa.Table | None:
        return self.key_table() if self._size else None

    def restore(self, table: pa.Table | None) -> None:
        self.__init__(self.columns)  # type: ignore[misc]
        if table is not None and table.num_rows:
            for batch in table.to_batches():
                self.ids(batch)
