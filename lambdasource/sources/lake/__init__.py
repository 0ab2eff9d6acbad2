"""The lake as a stream: Parquet and Iceberg lakes read in event-time order with watermarks.

Modules: :mod:`.parquet` (``ParquetLake``), :mod:`.iceberg` (``IcebergLake``), :mod:`.reader`
(the shared ordered-prefetch / watermark core), :mod:`.storage` (local + S3 via aiobotocore),
:mod:`.layout` (partition directories), :mod:`.schema` (unification), :mod:`.commits` (commit
records of the archiver), :mod:`.inspect` (``lambdasource inspect``).
"""

from .commits import CommitRecord, merge_offsets
from .iceberg import IcebergLake
from .inspect import LakeReport, format_report, inspect_iceberg, inspect_parquet
from .parquet import ParquetLake

__all__ = [
    "CommitRecord",
    "IcebergLake",
    "LakeReport",
    "ParquetLake",
    "format_report",
    "inspect_iceberg",
    "inspect_parquet",
    "merge_offsets",
]
