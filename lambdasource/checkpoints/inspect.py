"""``lambdasource inspect --checkpoint URL``: what a checkpoint holds, and an operator's state as
Parquet for DuckDB.

The listing comes from the manifest (nodes, state bytes per node, source positions) and needs no
decoding of the state. ``--export NODE --to DIR`` decodes the checkpoint (plain data: nothing in
it runs code) and writes every table the node's state holds as one Parquet file: each Arrow
table or batch as it is, and each group of equal-length numpy arrays under one record or dict
as the columns of one table. Files are named after the path of the table in the state
(``engine.slices.parquet``).

Window state (``lambdasource/windows/state_tables.py`` documents its tables) is made joinable
on export: a table with a ``key_id`` column gets the key columns of the node's ``keys`` table
(named as the keys, or ``key.<name>`` when the table has a column of that name), and a
count_distinct table with ``value_code`` gets the ``value`` its dictionary maps it to (in the
``direct`` mode, integers, the value is ``value_code - 2**31``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import CheckpointError, ConfigError
from ..s3 import S3Config
from .format import decode, thaw
from .store import store_for


async def read_checkpoint(
    url: str, s3: S3Config | None = None, checkpoint_id: int | None = None, *, state: bool = False
) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """(id, manifest, decoded payload or None) of checkpoint ``checkpoint_id`` (default: the
    newest complete one) at ``url``; the state is read only when ``state`` is true."""
    store = store_for(url, s3)
    await store.open()
    try:
        ids = await store.complete_ids()
        if not ids:
            raise CheckpointError(f"no complete checkpoint at {url}")
        chosen = ids[-1] if checkpoint_id is None else checkpoint_id
        if chosen not in ids:
            raise CheckpointError(f"checkpoint {chosen} is not a complete one at {url}: {ids}")
        manifest = await store.read_manifest(chosen)
        raw = await store.read_data(chosen, manifest) if state else None
    finally:
        await store.close()
    payload = None if raw is None else decode(raw, where=store.where(chosen))
    return chosen, manifest, payload


def format_nodes(checkpoint_id: int, manifest: dict[str, Any]) -> str:
    """The nodes of a checkpoint with their state sizes, largest first."""
    sizes: dict[str, int] = manifest.get("state_bytes") or {}
    graph: dict[str, str] = manifest.get("graph") or {}
    out = [
        f"checkpoint {checkpoint_id} of pipeline {manifest.get('pipeline')!r} "
        f"(lineage {manifest.get('lineage')}, written {manifest.get('created_at')}, "
        f"format version {manifest.get('version')})"
    ]
    if not sizes:
        out.append("  (no state sizes: a checkpoint written before they were recorded)")
    width = max((len(name) for name in sizes), default=0)
    for name, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        out.append(f"  {name:<{width}}  {_bytes(size):>10}  {graph.get(name, '')}")
    return "\n".join(out)


def _bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def export_node(payload: dict[str, Any], node: str, directory: Path) -> list[Path]:
    """Write the tables of ``node``'s state under ``directory`` as Parquet; returns the files."""
    nodes: dict[str, Any] = payload["nodes"]
    if node not in nodes:
        raise ConfigError(
            f"inspect --export {node!r}: no such node; the checkpoint has {sorted(nodes)}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    tables: list[tuple[list[str], pa.Table]] = []
    _collect(thaw(nodes[node]), [], tables)
    tables = _joinable(tables)
    written = []
    for path, table in tables:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ".".join(path) or "state") + ".parquet"
        target = directory / name
        pq.write_table(table, target)
        written.append(target)
    return written


def _joinable(tables: list[tuple[list[str], pa.Table]]) -> list[tuple[list[str], pa.Table]]:
    """Key columns joined to tables with ``key_id``, values to tables with ``value_code``."""
    by_path = {tuple(path): table for path, table in tables}
    out = []
    for path, table in tables:
        keys = next(  # the nearest ``keys`` table beside the path or above it
            (
                by_path[(*path[:i], "keys")]
                for i in range(len(path) - 1, -1, -1)
                if (*path[:i], "keys") in by_path
            ),
            None,
        )
        if keys is not None and path[-1:] != ["keys"] and "key_id" in table.column_names:
            table = _with_keys(table, keys)
        values = by_path.get((*path[:-1], "values", "values"))
        if values is not None and "value_code" in table.column_names and values.num_rows:
            position = pc.index_in(table.column("value_code"), values.column("value_code"))
            table = table.append_column("value", values.column("value").take(position))
        elif "value_code" in table.column_names and _direct(by_path, path):
            codes = pc.subtract(table.column("value_code"), pa.scalar(1 << 31, pa.int64()))
            table = table.append_column("value", codes)
        out.append((path, table))
    return out


def _direct(by_path: dict[tuple[str, ...], pa.Table], path: list[str]) -> bool:
    values = by_path.get((*path[:-1], "values", "values"))
    return values is not None and values.num_rows == 0


def _with_keys(table: pa.Table, keys: pa.Table) -> pa.Table:
    names = [name for name in keys.column_names if name != "key_id"]
    taken = keys.select(names).take(table.column("key_id"))
    for name in names:
        label = name if name not in table.column_names else f"key.{name}"
        table = table.append_column(label, taken.column(name))
    return table


def _collect(value: Any, path: list[str], out: list[tuple[list[str], pa.Table]]) -> None:
    value = thaw(value)
    if isinstance(value, pa.Table):
        out.append((path, value))
        return
    if isinstance(value, pa.RecordBatch):
        out.append((path, pa.Table.from_batches([value])))
        return
    if isinstance(value, np.ndarray) and value.ndim >= 1:
        if value.ndim == 1:
            out.append((path, pa.table({"value": _column(value)})))
        else:
            matrix = value.reshape(len(value), -1)
            columns = {f"c{i}": _column(matrix[:, i]) for i in range(matrix.shape[1])}
            out.append((path, pa.table(columns)))
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        arrays = {
            str(key): item
            for key, item in value.items()
            if isinstance(item, np.ndarray) and item.ndim == 1
        }
        grouped = bool(arrays) and len({len(array) for array in arrays.values()}) == 1
        if grouped:  # equal-length columns of one record: one table
            out.append((path, pa.table({key: _column(a) for key, a in arrays.items()})))
        for key, item in value.items():
            if not (grouped and str(key) in arrays):
                _collect(item, [*path, str(key)], out)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _collect(item, [*path, str(index)], out)


def _column(array: np.ndarray) -> pa.Array:
    if array.dtype == object:
        try:
            return pa.array(array.tolist())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array([repr(item) for item in array.tolist()])
    return pa.array(array)
