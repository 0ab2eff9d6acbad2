"""A lake read by one scale-out task: only the records of Kafka partition ``p`` of ``N``.

:meth:`LakeSource.for_partition` gives a copy of a lake source that reads partition ``p``'s part
of the lake. Which records those are, file by file:

- **Split files** — the ``lake`` archiver writes each commit's rows per Kafka partition, the
  partition in the file name: ``part-<sequence:020d>-p<partition>-<uuid>.parquet`` (Parquet
  lakes, same hour directories as before) or the identity partition field ``_kafka_partition``
  (Iceberg tables, a hidden column the lake source does not emit). A task lists only its own
  partition's files; the rows in them are the records that arrived on ``p`` and are read as
  they are (a null key included: it arrived on ``p``, as in the stream). A non-null key that the
  partitioner maps elsewhere is :class:`~lambdasource.errors.MisplacedKeyError` naming the file:
  the producer did not partition by this key, so the stream would fail on it too.
- **Other files** (lakes not written by the archiver, or archived before the split) — every file
  is read and the rows whose key maps to another partition are dropped (counted:
  ``metrics()["kafka_partition"]["rows_other_partitions"]``). A null key belongs to no partition
  (Kafka's default partitioner spreads keyless records): those rows are counted in every task and
  dead-lettered once, by the task of partition 0, with the reason (DESIGN "Bad input").

Read amplification: N tasks over a lake without split files each read the whole lake (N × the
bytes, N × the decode); ``benchmarks/partition_reads.py`` measures it.

Invariants: the union over ``p`` of the rows kept is every row of the lake with a non-null key
exactly once (split files: every row of the lake); the watermarks of a restricted lake are those
of the whole lake (hour partitions complete as before; an hour without a file of ``p`` is kept as
an empty partition, never reported missing); the recorded offsets are those of ``p`` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import ConfigError, MisplacedKeyError
from ...partitioning import NULL_KEY, KeyPartitioner

KAFKA_PARTITION_COLUMN = "_kafka_partition"
"""The archiver's Iceberg column (identity partition field) holding each row's Kafka partition."""

_SPLIT_NAME = re.compile(r"(?:^|/)part-\d{20}-p(\d+)-[0-9a-f]{32}\.parquet$")


def split_file_name(sequence: int, partition: int, unique: str) -> str:
    """The name of an archiver file holding only Kafka partition ``partition``'s rows."""
    return f"part-{sequence:020d}-p{partition}-{unique}.parquet"


def file_kafka_partition(path: str) -> int | None:
    """The Kafka partition a split file's name carries (None: not a split file)."""
    match = _SPLIT_NAME.search(path)
    return None if match is None else int(match.group(1))


def make_partitioner(
    partition: int, partitions: int, key: list[str] | str, partitioner: KeyPartitioner | None
) -> KeyPartitioner:
    """The partitioner of ``for_partition`` (checked against its arguments)."""
    if partitions < 1 or not 0 <= partition < partitions:
        raise ConfigError(
            f"for_partition: partition must be in [0, {partitions}), got {partition} "
            f"(partitions={partitions})"
        )
    keys = [key] if isinstance(key, str) else list(key)
    if partitioner is None:
        return KeyPartitioner(keys, partitions)
    if partitioner.partitions != partitions or list(partitioner.key) != keys:
        raise ConfigError(
            f"for_partition: the partitioner ({partitioner.describe()}) disagrees with "
            f"key={','.join(keys)} partitions={partitions}"
        )
    return partitioner


@dataclass
class PartitionCounts:
    """What a restricted lake left out (plain data, reported in ``metrics()``)."""

    rows_other_partitions: int = 0  # rows of unsplit files whose key maps elsewhere
    null_key_rows: int = 0  # rows of unsplit files with a null key (dead letters in task 0)
    files_other_partitions: int = 0  # split files of other partitions, never read
    split_files: int = 0  # split files of this partition (read without filtering)
    filtered_files: int = 0  # unsplit files read and filtered by key


@dataclass
class PartitionFilter:
    """Partition ``partition``'s rows of a lake (see the module docstring)."""

    partition: int
    partitioner: KeyPartitioner
    counts: PartitionCounts = field(default_factory=PartitionCounts)

    @property
    def partitions(self) -> int:
        return self.partitioner.partitions

    @property
    def key(self) -> list[str]:
        return list(self.partitioner.key)

    def wants(self, tag: int | None) -> bool:
        """Whether a file tagged with Kafka partition ``tag`` (None: untagged) is read."""
        return tag is None or tag == self.partition

    def null_reason(self) -> str:
        return (
            f"null key {','.join(self.key)}: the record belongs to no Kafka partition (the "
            "default partitioner spreads keyless records), so no task owns it; dead-lettered "
            "by the task of partition 0"
        )

    def apply(
        self, table: pa.Table, tag: int | None, where: str
    ) -> tuple[pa.Table, pa.Table | None, int, int]:
        """``(rows kept, null-key rows to dead-letter, rows of other partitions, null-key
        rows)`` of a decoded table from a file tagged ``tag``."""
        if table.num_rows == 0:
            return table, None, 0, 0
        self.partitioner.check_schema(table.schema, where)
        owners = self.partitioner.partitions_of(table)
        if tag is not None:
            wrong = np.flatnonzero((owners != NULL_KEY) & (owners != tag))
            if len(wrong):
                row = int(wrong[0])
                value = [table.column(c)[row].as_py() for c in self.key]
                raise MisplacedKeyError(
                    f"{where} row={row}: key {','.join(self.key)}={_show(value)} belongs to "
                    f"partition {int(owners[row])} of {self.partitions} by Kafka's default "
                    f"partitioner, but the archiver took it from partition {tag} "
                    f"({len(wrong)} such row(s) in this row group): the topic is not "
                    "partitioned by this key (check key= and the serializer)"
                )
            return table, None, 0, 0
        mine = owners == self.partition
        nulls = owners == NULL_KEY
        other = int(len(owners) - np.count_nonzero(mine) - np.count_nonzero(nulls))
        null_count = int(np.count_nonzero(nulls))
        dead = table.filter(pa.array(nulls)) if null_count and self.partition == 0 else None
        if other or null_count:
            table = table.filter(pa.array(mine))
        return table, dead, other, null_count

    def as_dict(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "partition": self.partition,
            "partitions": self.partitions,
            "key": self.key,
            "rows_other_partitions": counts.rows_other_partitions,
            "null_key_rows": counts.null_key_rows,
            "files_other_partitions": counts.files_other_partitions,
            "split_files": counts.split_files,
            "filtered_files": counts.filtered_files,
        }


def _show(values: list[Any]) -> str:
    return repr(values[0]) if len(values) == 1 else repr(tuple(values))
