"""What :class:`~lambdasource.LambdaSource` needs of a stream: :class:`HandoffStream`.

Both :class:`~lambdasource.KafkaStream` and :class:`~lambdasource.KinesisStream` provide it, in
one integer model (issue 16): a *partition* is a Kafka partition or a Kinesis shard number, an
*offset* a Kafka offset or a Kinesis sequence number (a Python int of any size), a *position*
the next one to read. ``kind`` tells them apart where the handoff differs ("kafka" | "kinesis");
``topic`` is the topic or stream name.

Invariants the handoff relies on: after :meth:`HandoffStream.open`, ``splits`` holds one split
per partition the stream will read (``start``: its first position, or None before a record was
seen), ``ranges[p] = (begin, end)`` where ``begin`` is the first retained offset (None: a
Kinesis shard holding no record) and ``end`` the end (Kafka: the next offset; Kinesis: a closed
shard's last sequence number + 1; None: open / unknown), and ``seek(p, offset)`` moves a split
before :meth:`HandoffStream.drive` runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from .base import SourceOutput
from .kafka.emit import DriveHooks
from .kafka.stream import PartitionStart

STREAM_KINDS = ("kafka", "kinesis")


def stream_kind(stream: object) -> str:
    """``"kafka"`` or ``"kinesis"`` (a stream without ``kind`` is a Kafka stream)."""
    return str(getattr(stream, "kind", "kafka"))


@runtime_checkable
class HandoffStream(Protocol):
    """The stream side of a lambda source (module docstring)."""

    @property
    def topic(self) -> str: ...

    @property
    def time_column(self) -> str: ...

    @property
    def bounded(self) -> bool: ...

    @property
    def splits(self) -> Mapping[int, Any]: ...

    @property
    def ranges(self) -> Mapping[int, tuple[int | None, int | None]]: ...

    @property
    def lookups(self) -> Mapping[int, dict[str, Any]]: ...

    @property
    def schema(self) -> pa.Schema | None: ...

    @property
    def partitions(self) -> Sequence[int] | None: ...

    async def open(
        self,
        *,
        starts: dict[int, PartitionStart] | None = None,
        default_start: PartitionStart | None = None,
        floor: int | None = None,
        out_of_orderness: int | None = None,
        idle_timeout: float | None = None,
        check_offsets: bool = True,
    ) -> None: ...

    def seek(self, partition: int, offset: int) -> None: ...

    async def drive(self, out: SourceOutput, hooks: DriveHooks | None = None) -> None: ...

    async def close(self) -> None: ...

    def final_watermark(self) -> int | None: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...

    async def on_checkpoint_complete(self, checkpoint_id: int) -> None: ...

    def metrics(self) -> dict[str, Any]: ...

    def for_partitions(self, partitions: Sequence[int]) -> Any: ...
