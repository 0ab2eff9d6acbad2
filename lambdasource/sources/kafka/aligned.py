"""What a stream of splits does for watermark alignment (DESIGN §3): report each split's
watermark to the group and release the rows it held back once the bound covers them.

Shared by :class:`~.stream.KafkaStream` (splits are partitions) and
:class:`~lambdasource.sources.kinesis.stream.KinesisStream` (shards). Invariant: a held row leaves
only when its time is within the group's release bound, and the split's watermark (capped below
its earliest held row) rises only after the rows are out.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..alignment import AlignmentGroup
from ..base import SourceOutput
from .emit import DriveHooks
from .split import PartitionSplit


class AlignedSplits:
    """Mixin of a split stream; it provides ``_where`` and ``_progress`` and may override
    :meth:`_after_release` (what a split does once its held rows were considered)."""

    offsets_word = "offsets"  # how a released batch's position names its range

    def _where(self, partition: int | None = None, offset: int | None = None) -> str:
        raise NotImplementedError

    async def _progress(self, out: SourceOutput, hooks: DriveHooks) -> None:
        raise NotImplementedError

    def _after_release(self, split: PartitionSplit) -> None:
        """A split's held rows that the bound covers are out (more may stay held)."""

    def _report(self, split: PartitionSplit, hooks: DriveHooks) -> None:
        if hooks.aligner is not None:
            hooks.aligner.report(
                f"{hooks.split_prefix}:{split.key}",
                split.watermark,
                idle=split.idle,
                finished=split.finished,
            )

    async def _release_held(
        self,
        live: Sequence[PartitionSplit],
        out: SourceOutput,
        hooks: DriveHooks,
        aligner: AlignmentGroup,
    ) -> bool:
        """Emit the held rows the alignment bound now covers (True if any), step after step while
        each release moves the bound on (sparse rows leave at once, not one per fetch round)."""
        released = False
        for split in live:
            while split.held is not None:
                due = split.due(aligner.release_bound(split.out_of_orderness))
                if not due:
                    break
                released = True
                batch, offsets = split.taken(due)
                await out.emit(
                    batch,
                    position=f"{self._where(split.partition)} {self.offsets_word}="
                    f"{offsets.min()}-{offsets.max()} (held by alignment)",
                )
                split.released(due)  # only now may its watermark rise
                self._report(split, hooks)
                await self._progress(out, hooks)  # the next split's bound follows at once
            self._after_release(split)
            self._report(split, hooks)
        return released
