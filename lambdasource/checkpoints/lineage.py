"""Lineages: which checkpoints at one URL belong to which history of a job.

Starting fresh (``run(restore=None)``) must not delete a job's recovery point, and restoring an
older checkpoint must not let the new run prune the checkpoints it branched away from. So the
checkpoints at a URL are grouped into *lineages*: a lineage is one line of runs, each resuming
where the previous one left off. A run either continues the newest lineage or starts a new one,
and it only ever prunes checkpoints of its own lineage.

Representation (all derived from one listing of the store):

- Checkpoint ids at a URL only grow: a run's first id is above every id present (complete,
  incomplete or marker), so a higher id is always a later write.
- A new lineage is recorded by a *marker*, ``chk-<id>/LINEAGE.json``, written before the run
  starts, at the first id the run will use; the lineage's id is that id. Its body says whether
  it starts from nothing (``"parent": null``) or branches from checkpoint ``parent`` (an older
  checkpoint restored explicitly).
- Checkpoint ``c`` belongs to the lineage of the highest marker ``<= c``; ids below the first
  marker form lineage 0 (a store whose first run started empty needs no marker, nor does one
  written before lineages existed).
- Markers are never pruned (only ``clear()`` deletes them), so membership never changes.
- The *newest* lineage is the one of the highest marker (lineage 0 when there is none but some
  complete checkpoint exists); only it is ever continued, so only it is ever pruned.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass

MARKER = "LINEAGE.json"
MARKER_FORMAT = "lambdasource-lineage"


@dataclass(frozen=True)
class Inventory:
    """One listing of a checkpoint store, read for lineages.

    ``dirs``: every id present → the object names it holds; ``complete``: ids with a manifest,
    ascending; ``markers``: ids holding a lineage marker, ascending.
    """

    dirs: Mapping[int, frozenset[str]]
    complete: list[int]
    markers: list[int]

    @staticmethod
    def of(dirs: Mapping[int, set[str]], manifest: str) -> Inventory:
        frozen = {i: frozenset(names) for i, names in dirs.items()}
        return Inventory(
            frozen,
            sorted(i for i, names in frozen.items() if manifest in names),
            sorted(i for i, names in frozen.items() if MARKER in names),
        )

    def next_id(self) -> int:
        """The first id a new run uses: above everything present."""
        return max(self.dirs, default=0) + 1

    def lineage_of(self, checkpoint_id: int) -> int:
        """The lineage ``checkpoint_id`` belongs to (or would belong to, if written now)."""
        k = bisect.bisect_right(self.markers, checkpoint_id)
        return self.markers[k - 1] if k else 0

    def newest_lineage(self) -> int | None:
        """The lineage a resuming run continues; None when the store holds no lineage at all."""
        if self.markers:
            return self.markers[-1]
        return 0 if self.complete else None

    def members(self, lineage: int) -> list[int]:
        """Complete checkpoints of ``lineage``, ascending."""
        return [i for i in self.complete if self.lineage_of(i) == lineage]

    def describe(self) -> str:
        """``lineage → complete ids`` for messages, e.g. ``0: [3, 4, 5]; 9: [12]``."""
        lineages: dict[int, list[int]] = {}
        for checkpoint_id in self.complete:
            lineages.setdefault(self.lineage_of(checkpoint_id), []).append(checkpoint_id)
        for marker in self.markers:
            lineages.setdefault(marker, [])
        return "; ".join(f"{k}: {v}" for k, v in sorted(lineages.items())) or "none"
