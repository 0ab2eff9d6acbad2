"""The contract between the window operator and a window algorithm (sliding slices, sessions).

The operator owns keys, batches and messages; an engine sees only dense integer key ids, event
times, arrival numbers and aggregate input columns, and answers with :class:`Emission`s.

Emission modes (DESIGN §3, exact):

- ``every``   – one row per (key, window) that holds at least one record, when it completes;
- ``changes`` – one row per (key, window end) whose aggregates differ from that key's previous
  completed window end; a key whose window becomes empty yields one deletion row;
- ``latest``  – when the watermark advances, one row per changed key holding only its newest
  completed window (deletion row when it became empty).

Lateness: with ``allowed_lateness`` L a window with end e accepts records while the watermark
W < e - 1 + L. A record accepted by none of its windows is *late*: the engine reports it in
``AddResult.late`` and does not aggregate it. A record accepted by an already-completed window
updates it and the engine emits corrections at once (``every``: the updated rows; ``changes`` /
``latest``: rows that make an upsert store keyed by (key, window end) resp. key reconstruct the
corrected history / newest value).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from .aggregates import Kernel, Rows

EmitMode = Literal["every", "changes", "latest"]
EMIT_MODES: tuple[str, ...] = ("every", "changes", "latest")


@dataclass(frozen=True, slots=True)
class Emission:
    """Output rows of an engine, column-wise and in emission order.

    ``results[i]`` is the result array of kernel ``i`` (null where ``deleted``); ``starts``/``ends``
    are window bounds in µs. Rows of one key appear in increasing window-end order.
    """

    key_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    deleted: np.ndarray
    results: list[pa.Array]

    def __len__(self) -> int:
        return len(self.key_ids)

    @staticmethod
    def concat(parts: list[Emission]) -> Emission | None:
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return Emission(
            np.concatenate([p.key_ids for p in parts]),
            np.concatenate([p.starts for p in parts]),
            np.concatenate([p.ends for p in parts]),
            np.concatenate([p.deleted for p in parts]),
            [pa.concat_arrays([p.results[i] for p in parts]) for i in range(len(parts[0].results))],
        )


@dataclass(frozen=True, slots=True)
class AddResult:
    """What ``WindowEngine.add`` did: which input rows were late, and any corrections emitted."""

    late: np.ndarray
    emission: Emission | None


class WindowEngine(abc.ABC):
    """Keyed window state for one window operator.

    Calls arrive in stream order: ``add`` for data, ``advance`` when the input watermark advances
    (strictly increasing values), ``flush_all`` at the end of a run with ``flush="all"``.
    Implementations must be vectorised (no per-record Python) and keep state O(keys × slices).
    """

    def __init__(
        self,
        kernels: list[Kernel],
        emit: EmitMode,
        allowed_lateness: int,
        names: Sequence[str] | None = None,
    ) -> None:
        self.kernels = kernels
        self.emit = emit
        self.allowed_lateness = allowed_lateness
        self.names = list(names) if names is not None else [f"agg{i}" for i in range(len(kernels))]
        """Aggregate names: the state tables' partial columns are ``<name>.<part>``."""
        if len(self.names) != len(kernels) or len(set(self.names)) != len(self.names):
            raise ConfigError(f"window engine: need one distinct name per kernel, got {names}")

    @abc.abstractmethod
    def add(self, key_ids: np.ndarray, rows: Rows, watermark: int | None) -> AddResult:
        """Aggregate rows (``watermark`` = current input watermark, None before the first)."""

    @abc.abstractmethod
    def advance(self, watermark: int) -> Emission | None:
        """Complete every window with ``end - 1 <= watermark`` and emit per the mode."""

    @abc.abstractmethod
    def flush_all(self) -> Emission | None:
        """Complete every window that holds data, as if the watermark reached +infinity."""

    @abc.abstractmethod
    def state_rows(self) -> int:
        """Number of partial-aggregate rows held (for metrics: O(keys × slices))."""

    @abc.abstractmethod
    def snapshot(self) -> Any:
        """The state as Arrow tables of a documented schema (``state_tables``); immutable: the
        runtime stores it without copying while the engine goes on."""

    @abc.abstractmethod
    def restore(self, state: Any) -> None:
        """Replace the state with one returned by ``snapshot``."""
