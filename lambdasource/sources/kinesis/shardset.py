"""The shards a :class:`~.stream.KinesisStream` reads: their splits and readers, the lineage that
orders them, the shards that ended (with the watermark each ended at) and the starts of shards
not ready yet; and the checkpoint of all of it.

Invariants:

- a shard gets a split only when :meth:`ShardLineage.ready` says so (every listed parent ended);
- its floor is the watermark its parents ended at (the minimum over them; the stream's last
  emitted one when no parent was read), raised to the caller's floor — so a child's watermark
  never goes below what the stream already emitted, and a key's records handed from parent to
  child are judged against the parent's progress;
- an ended split stays in the watermark minimum (not ``finished``) until every child of it in
  scope has a split: the first parent of a merge to end holds the stream back at its watermark
  until the second ended and the child started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..kafka.split import combined_watermark, held_times
from ..kafka.stream import _from_ipc, _to_ipc
from .reader import ShardReader
from .shards import Shard, ShardLineage
from .split import ShardSplit, offsets_array
from .starts import PartitionStart, decode_snapshot, normal_start

Register = Callable[[ShardSplit], None]
"""Called for a split that started or finished (the stream reports it to alignment)."""


class ShardSet:
    """Splits, readers, lineage and ended shards of one stream (see module docstring)."""

    def __init__(
        self,
        stream: str,
        time_column: str,
        start: Callable[[int], PartitionStart],
        new_reader: Callable[[Shard], ShardReader],
        in_scope: Callable[[int], bool],
    ) -> None:
        self.stream = stream
        self.time_column = time_column
        self.start = start
        self.new_reader = new_reader
        self.in_scope = in_scope
        self.splits: dict[int, ShardSplit] = {}
        self.readers: dict[int, ShardReader] = {}
        self.lineage = ShardLineage()
        self.plan: dict[int, PartitionStart] = {}  # starts of shards without a split yet
        self.started: dict[int, PartitionStart] = {}  # how each split was started
        self.ended: dict[int, int | None] = {}  # shard → the watermark it ended with
        # of them, shards a bounded run stopped (stop_at), not read to a closed shard's end: a
        # checkpoint must not call them finished, or a later run would never read them again
        self.stopped: set[int] = set()
        self.sentinels: dict[int, ShardReader] = {}  # bounded: a LATEST reader per open shard
        self.bounded = False
        self.split_options: dict[str, Any] = {}
        self.floor: int | None = None
        self.emitted: int | None = None  # the last combined watermark the stream emitted
        self.holding: dict[int, int | None] = {}  # restored ended shards: the watermark they hold
        self.restored: dict[str, Any] | None = None
        self.restored_raw: dict[str, Any] | None = None

    def plan_starts(
        self,
        listed: list[Shard],
        starts: dict[int, PartitionStart],
        default_start: PartitionStart | None,
    ) -> None:
        """Each shard's start, in order of precedence: the restored snapshot (a shard it does not
        name was added since: from its beginning), ``starts``, ``default_start``, the
        constructor's; a closed shard started at LATEST has ended."""
        restored = self.restored or {}
        positions: dict[int, int] = restored.get("positions", {})
        unread: dict[int, PartitionStart] = restored.get("unread", {})
        finished: dict[int, int | None] = restored.get("finished", {})
        self.ended = {}
        self.holding = {}
        for number, mark in finished.items():
            children = [c.number for c in self.lineage.children(number) if self.in_scope(c.number)]
            if number in positions and any(c not in finished for c in children):
                # ended before the checkpoint while a child had not started: its split comes
                # back (it ends at once) and holds the watermark at ``mark`` until the children
                # start, as it did before the checkpoint — else the other parent of a merge
                # could lift the watermark past it and the child's records would be late
                self.holding[number] = mark
            else:
                self.ended[number] = mark
        for shard in listed:
            number = shard.number
            if not self.in_scope(number) or number in self.ended:
                continue
            if number in positions:
                plan: PartitionStart = ("position", positions[number])
            elif number in unread:
                plan = unread[number]
            elif self.restored is not None:  # added since the checkpoint: none of it was read
                plan = ("trim_horizon", 0)
            elif number in starts:
                plan = normal_start(starts[number])
            elif default_start is not None:
                plan = normal_start(default_start)
            else:
                plan = self.start(number)
            if plan[0] == "latest" and shard.closed:
                self.ended[number] = None  # closed: nothing will arrive on it
                continue
            self.plan[number] = plan

    def _carried(self, shard: Shard) -> int | None:
        from_parents = [m for p in shard.parent_numbers if (m := self.ended.get(p)) is not None]
        carried = min(from_parents) if from_parents else self.emitted if shard.parent_ids else None
        restored = (self.restored or {}).get("carried", {}).get(shard.number)
        if restored is not None:
            carried = restored if carried is None else max(restored, carried)
        return carried

    async def start_split(self, shard: Shard) -> ShardSplit:
        """Create and position the split of a ready shard (restored held rows included)."""
        number = shard.number
        # a shard listed after the stream opened (a reshard's child) is read from its beginning
        kind, value = self.plan.pop(number) if number in self.plan else ("trim_horizon", 0)
        carried = self._carried(shard)
        floors = [f for f in (self.floor, carried, self.holding.pop(number, None)) if f is not None]
        split = ShardSplit(
            self.stream,
            number,
            floor=max(floors) if floors else None,
            shard_id=shard.shard_id,
            carried=carried,
            **self.split_options,
        )
        reader = self.new_reader(shard)
        if kind == "position":
            reader.reposition(value)
            split.start = split.position = value
        else:
            await reader.seek(kind, value)
        self.started[number] = (kind, value)
        self.splits[number] = split
        self.readers[number] = reader
        held = ((self.restored or {}).get("held") or {}).get(number)
        if held is not None:
            batch = _from_ipc(held["rows"])
            if batch.num_rows:
                times = held_times(batch, self.time_column)
                split.hold(batch, offsets_array([int(o) for o in held["offsets"]]), times)
                split.max_seen = int(times.max())
        self.check_ended(split)
        return split

    def check_ended(self, split: ShardSplit) -> None:
        """Mark a split ended once its reader is done (or its bounded stop reached) and no held
        row is left; remember the watermark it ended at for its children."""
        reader = self.readers[split.partition]
        if not split.ended and (reader.ended or split.stop_reached) and split.held is None:
            split.ended = True
            self.ended[split.partition] = split.watermark
            if not reader.ended:
                self.stopped.add(split.partition)

    async def advance(self, register: Register | None) -> None:
        """Start every ready shard in scope; an ended split becomes finished once each of its
        children in scope has a split (repeated: a child may end at once)."""
        changed = True
        while changed:
            changed = False
            for shard in self.lineage.ready(set(self.ended)):
                if not self.in_scope(shard.number) or shard.number in self.splits:
                    continue
                changed = True
                if self.bounded and shard.number not in self.sentinels and not shard.closed:
                    self.ended[shard.number] = None  # appeared after a bounded stream opened
                    self.stopped.add(shard.number)
                    continue
                split = await self.start_split(shard)
                if register is not None:
                    register(split)
            for split in self.splits.values():
                if split.ended and not split.finished:
                    children = self.lineage.children(split.partition)
                    if all(
                        c.number in self.splits or c.number in self.ended
                        for c in children
                        if self.in_scope(c.number)
                    ):
                        split.finished = changed = True
                        if register is not None:
                            register(split)

    def combined_watermark(self) -> tuple[int | None, bool]:
        """(minimum over live non-idle shards, all idle?) — KafkaStream's rule."""
        return combined_watermark(self.splits.values())

    def final_watermark(self) -> int | None:
        """End of a bounded read: the maximum event time read (or the floor)."""
        known = [m for s in self.splits.values() if (m := s.max_seen) is not None]
        floors = [s.floor for s in self.splits.values() if s.floor is not None]
        values = known + floors
        return max(values) if values else None

    def snapshot(self) -> dict[str, Any]:
        """Positions (decimal strings), held rows with their sequence numbers, the seeks of
        splits that read nothing yet and the starts of shards not ready yet, ended shards with
        their watermarks, carried floors."""
        if not self.splits and self.restored_raw is not None:
            return dict(self.restored_raw)
        positions = {n: str(s.position) for n, s in self.splits.items() if s.position is not None}
        unread = {n: list(self.started[n]) for n, s in self.splits.items() if s.position is None}
        for number, (kind, value) in self.plan.items():
            if kind == "position":
                positions[number] = str(value)
            else:
                unread[number] = [kind, value]
        return {
            "positions": positions,
            "held": {
                n: {"rows": _to_ipc(s.held), "offsets": [str(o) for o in s.held_offsets]}
                for n, s in self.splits.items()
                if s.held is not None and s.held_offsets is not None
            },
            "unread": unread,
            "finished": {n: mark for n, mark in self.ended.items() if n not in self.stopped},
            "carried": {n: s.carried for n, s in self.splits.items() if s.carried is not None},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`snapshot` (sequence numbers as strings or ints)."""
        self.restored = decode_snapshot(state)
        self.restored_raw = dict(state)
