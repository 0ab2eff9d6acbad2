"""Iceberg via pyiceberg's SqlCatalog on SQLite, with a ``file://`` or (moto) ``s3://`` warehouse.

``iceberg_catalog`` is parametrised-friendly: ``iceberg_catalog_props(tmp_path)`` gives the
property dict for a file warehouse; ``iceberg_s3_catalog_props`` for an S3 one. Both are also what
``ls.IcebergLake(..., catalog=props)`` accepts.
"""

from __future__ import annotations

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
