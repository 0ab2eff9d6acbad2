"""Iceberg via pyiceberg's SqlCatalog on SQLite, with a ``file://`` or (moto) ``s3://`` warehouse.

``iceberg_catalog`` is parametrised-friendly: ``iceberg_catalog_props(tmp_path)`` gives the
property dict for a file warehouse; ``iceberg_s3_catalog_props`` for an S3 one. Both are also what
``ls.IcebergLake(..., catalog=props)`` accepts.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from .s3 import S3Service


def file_catalog_props(root: Path, name: str = "test") -> dict[str, str]:
    warehouse = root / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    return {
        "name": name,
        "type": "sql",
        "uri": f"sqlite:///{root / 'catalog.db'}",
        "warehouse": warehouse.as_uri(),
    }


def s3_catalog_props(root: Path, s3: S3Service, name: str = "test") -> dict[str, str]:
    bucket = s3.new_bucket("warehouse")
    return {
        "name": name,
        "type": "sql",
        "uri": f"sqlite:///{root / 'catalog.db'}",
        "warehouse": f"s3://{bucket}/wh",
        **s3.pyiceberg_properties(),
    }


def commit_position_deletes(table: Any, target: Any, positions: list[int]) -> str:
    """Make ``table`` a merge-on-read table: write a positional-delete Parquet file removing rows
    ``positions`` of data file ``target`` (a pyiceberg ``DataFile``) and commit it in a delete
    manifest (``content=deletes``) of a new snapshot. Returns the delete file's location.

    pyiceberg (0.12) only writes copy-on-write deletes, so this goes through its lower-level
    snapshot producer: a fast append whose manifest writer declares ``deletes`` content, carrying
    one ``POSITION_DELETES`` file whose ``file_path`` bounds name ``target`` (so planning attaches
    it to exactly that file). pyiceberg's own scan applies it, which shows it is a real one.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyiceberg.manifest import (
        DataFile,
        DataFileContent,
        FileFormat,
        ManifestContent,
        ManifestWriterV2,
    )
    from pyiceberg.table.snapshots import Operation
    from pyiceberg.table.update.snapshot import _FastAppendFiles

    path_field_id = 2147483546  # the reserved ``file_path`` field of positional deletes

    class DeleteManifestWriter(ManifestWriterV2):
        def content(self) -> ManifestContent:
            return ManifestContent.DELETES

        @property
        def _meta(self) -> dict[str, str]:
            return {**super()._meta, "content": "deletes"}

    class AppendDeletes(_FastAppendFiles):
        def new_manifest_writer(self, spec: Any) -> Any:
            return DeleteManifestWriter(
                spec,
                self.schema(),
                self.new_manifest_output(),
                self._snapshot_id,
                self._compression,
            )

    if table.format_version < 2:
        raise ValueError("positional deletes need an Iceberg v2 table")
    location = target.file_path.rsplit("/", 1)[0] + f"/pos-deletes-{uuid.uuid4().hex}.parquet"
    rows = pa.table(
        {
            "file_path": pa.array([target.file_path] * len(positions), pa.string()),
            "pos": pa.array(sorted(positions), pa.int64()),
        }
    )
    with table.io.new_output(location).create(overwrite=False) as out:
        pq.write_table(rows, out)
    path = target.file_path.encode()
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=location,
        file_format=FileFormat.PARQUET,
        partition=target.partition,
        record_count=len(positions),
        file_size_in_bytes=len(table.io.new_input(location)),
        lower_bounds={path_field_id: path},
        upper_bounds={path_field_id: path},
    )
    delete_file.spec_id = target.spec_id
    with table.transaction() as tx:
        producer = AppendDeletes(operation=Operation.DELETE, transaction=tx, io=table.io)
        producer.append_data_file(delete_file)
        producer.commit()
    return location


def load(props: dict[str, str]) -> Any:
    from pyiceberg.catalog import load_catalog

    props = dict(props)
    name = props.pop("name", "default")
    return load_catalog(name, **props)


@pytest.fixture
def iceberg_catalog_props(tmp_path: Path) -> dict[str, str]:
    return file_catalog_props(tmp_path)


@pytest.fixture
def iceberg_s3_catalog_props(tmp_path: Path, s3: S3Service) -> dict[str, str]:
    return s3_catalog_props(tmp_path, s3)


@pytest.fixture
def iceberg_catalog(iceberg_catalog_props: dict[str, str]) -> Any:
    catalog = load(iceberg_catalog_props)
    catalog.create_namespace_if_not_exists("db")
    return catalog
