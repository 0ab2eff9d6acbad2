"""``ls.IcebergUpsert``: keyed upserts into an Iceberg table via pyiceberg (semantics in :mod:`.upsert`).

pyiceberg's own ``table.upsert`` does not guard versions, so a flush does it here, copy-on-write:

1. probe the stored keys and versions (and tombstones) of the incoming keys: a scan of the key and
   version columns only, filtered by each key column's min..max range (file statistics prune the
   rest), then an exact semi-join in Arrow;
2. decide in Arrow which incoming rows/deletions are not older than what is stored;
3. one transaction (one catalog commit): ``delete`` exactly the stored rows being replaced
   (``In(key, …)``; for a composite key an ``Or`` of ``And``s) and ``append`` the winning rows.
   With only new keys this is a plain append. Tombstones (``<identifier>__deleted``, created on the
   first deletion) are written first, so a crash between the two commits leaves a state a replay
   repairs.

Each commit records lineage in the snapshot summary: ``lambdasource.watermark`` (µs) and whatever
``lineage()`` returns (e.g. source positions). Every pyiceberg call runs in a thread.

Several writers (one sink per task) commit optimistically to one table. A commit is valid only on
the snapshot its decision read, so pyiceberg's own retry (which rebases the commit on a newer
snapshot: a key another writer added meanwhile would be stored twice) is turned off for the
sink's commits (:func:`without_rebase`). A conflict (``CommitFailedException``, or
``ValidationException`` from pyiceberg's checks) is retried here from scratch — load the table,
probe, decide, commit — up to ``retries`` times with capped, jittered backoff; then a SinkError
names the table and the attempts. Exact for disjoint keys (tasks) and for overlapping writers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, SchemaError, SinkError
from ..timeutil import Duration
from .upsert import DELETED, TOMBSTONE_SUFFIX, ApplyResult, RetriableSinkError, UpsertSink
from .urls import redact_url

Lineage = Mapping[str, str] | Callable[[], Mapping[str, str]] | None
CREATE_ATTEMPTS = 3  # creating a table that concurrent writers create too


def load_catalog(catalog: Any) -> Any:
    """A pyiceberg Catalog, or a dict of its properties with an optional ``name``."""
    if isinstance(catalog, Mapping):
        from pyiceberg.catalog import load_catalog as _load

        props = {k: str(v) for k, v in catalog.items()}
        name = props.pop("name", "default")
        return _load(name, **props)
    if catalog is None:
        raise ConfigError("IcebergUpsert: catalog is required (a Catalog or a property dict)")
    return catalog


def _normal(dtype: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(dtype):
        return pa.string()
    if pa.types.is_large_binary(dtype):
        return pa.binary()
    if pa.types.is_dictionary(dtype):
        return _normal(dtype.value_type)
    if pa.types.is_timestamp(dtype):
        return pa.timestamp("us", tz="UTC" if dtype.tz else None)
    return dtype


class IcebergUpsert(UpsertSink):
    """Upsert into the Iceberg table ``identifier`` (``"db.table"``) of ``catalog``.

    The table is created from the stream's schema (unpartitioned) when absent; an existing table
    must have every stream column with a matching type.
    """

    kind = "iceberg"

    def __init__(
        self,
        identifier: str,
        catalog: Any,
        key: str | Sequence[str],
        version: str | None = None,
        *,
        lineage: Lineage = None,
        batch_rows: int = 100_000,
        flush_interval: Duration = "5s",
        retries: int = 8,
        name: str | None = None,
    ) -> None:
        if "." not in identifier:
            raise ConfigError(
                f"IcebergUpsert: identifier must be 'namespace.table', got {identifier!r}"
            )
        super().__init__(
            table=identifier,
            key=key,
            version=version,
            batch_rows=batch_rows,
            flush_interval=flush_interval,
            retries=retries,
            name=name,
        )
        self.identifier = identifier
        self._catalog_arg = catalog
        self._catalog: Any = None
        self.lineage = lineage
        self._checked = False

    def _fresh_for_task(self, task_id: str) -> None:
        super()._fresh_for_task(task_id)
        self._checked = False
        if isinstance(self._catalog_arg, Mapping):
            self._catalog = None  # each task loads its own (a user's Catalog object is shared)

    async def open(self) -> None:
        """Load the catalog; a failure (unreachable, misconfigured) is a one-line SinkError
        naming the catalog (its ``uri``, secrets hidden) and the cause."""
        if self._catalog is not None:
            return
        try:
            self._catalog = await asyncio.to_thread(load_catalog, self._catalog_arg)
        except ConfigError:
            raise
        except Exception as exc:
            transient = isinstance(exc, ConnectionError | TimeoutError | OSError)
            error = RetriableSinkError if transient else SinkError
            raise error(
                f"sink={self.name} table={self.identifier}: cannot load the Iceberg catalog "
                f"{self._catalog_label()}: {type(exc).__name__}: {' '.join(str(exc).split())}"
            ) from exc

    def _catalog_label(self) -> str:
        arg = self._catalog_arg
        if not isinstance(arg, Mapping):
            return repr(getattr(arg, "name", type(arg).__name__))
        label = f"name={str(arg.get('name', 'default'))!r}"
        if "type" in arg:
            label += f" type={arg['type']}"
        if "uri" in arg:
            label += f" uri={redact_url(str(arg['uri']))}"
        return label

    def _is_transient(self, exc: BaseException) -> bool:
        """Commit conflicts are retried: ``CommitFailedException`` (the table moved on after
        pyiceberg's own rebased attempts) and ``ValidationException`` (a concurrent commit
        added rows our delete filter matches); the retry loads the table again and decides
        again on the fresh snapshot."""
        from pyiceberg.exceptions import CommitFailedException, ValidationException

        return isinstance(
            exc,
            CommitFailedException
            | ValidationException
            | RetriableSinkError
            | ConnectionError
            | TimeoutError,
        )

    async def _apply(self, table: pa.Table) -> ApplyResult:
        await self.open()
        props = {"lambdasource.sink": self.name, "lambdasource.rows": str(table.num_rows)}
        if self.watermark is not None:
            props["lambdasource.watermark"] = str(self.watermark)
        extra = self.lineage() if callable(self.lineage) else self.lineage
        if extra:
            props.update({str(k): str(v) for k, v in extra.items()})
        return await asyncio.to_thread(self._apply_sync, table, props)

    # blocking part --------------------------------------------------------------------------------

    def _load_or_create(self, identifier: str, schema: pa.Schema, create: bool) -> Any:
        """The table (None when absent and not ``create``), created with its namespace when
        absent. Writers starting at once race to create them; a catalog may report the loser's
        create as a database error (pyiceberg's SQL catalog on SQLite: an IntegrityError for
        the namespace), so a failed create is tried again after loading again."""
        from pyiceberg.exceptions import NoSuchTableError

        namespace = identifier.rsplit(".", 1)[0]
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return self._catalog.load_table(identifier)
            except NoSuchTableError:
                if not create:
                    return None
            try:
                self._catalog.create_namespace_if_not_exists(namespace)
                return self._catalog.create_table_if_not_exists(identifier, schema=schema)
            except Exception:
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _check(self, tbl: Any, schema: pa.Schema) -> None:
        have = {f.name: f.type for f in tbl.schema().as_arrow()}
        for field in schema:
            if field.name not in have:
                raise SchemaError(
                    f"IcebergUpsert: table={self.identifier} has no column {field.name!r} "
                    f"(the stream has it, type {field.type}); table columns: {list(have)}"
                )
            if _normal(have[field.name]) != _normal(field.type):
                raise SchemaError(
                    f"IcebergUpsert: table={self.identifier} column={field.name!r} has type "
                    f"{have[field.name]}, the stream has {field.type}"
                )

    def _probe_filter(self, incoming: pa.Table) -> Any:
        """A cheap superset filter of the incoming keys: a min..max range per key column."""
        from pyiceberg import expressions as ex

        parts = []
        for k in self.keys:
            bounds = pc.min_max(incoming.column(k))
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            ge: Any = ex.GreaterThanOrEqual
            le: Any = ex.LessThanOrEqual
            parts.append(ex.And(ge(k, lo), le(k, hi)))
        return functools.reduce(ex.And, parts) if len(parts) > 1 else parts[0]

    def _exact_filter(self, keys: pa.Table) -> Any:
        """Exactly the rows whose key is in ``keys`` (distinct key tuples)."""
        from pyiceberg import expressions as ex

        in_: Any = ex.In  # typed as a pydantic model; called as In(term, values)
        if len(self.keys) == 1:
            return in_(self.keys[0], set(keys.column(self.keys[0]).to_pylist()))
        eq: Any = ex.EqualTo
        tuples = [
            functools.reduce(ex.And, [eq(k, row[k]) for k in self.keys]) for row in keys.to_pylist()
        ]
        return functools.reduce(ex.Or, tuples)

    def _stored(
        self, tbl: Any, probe: Any, incoming: pa.Table, columns: list[str]
    ) -> tuple[pa.Table, int]:
        """Stored ``columns`` of the incoming keys (probe by range, then an exact semi-join),
        and how many stored rows the probe range holds in all."""
        if tbl.current_snapshot() is None:
            empty = pa.table({c: pa.array([], incoming.schema.field(c).type) for c in columns})
            return empty, 0
        found = tbl.scan(row_filter=probe, selected_fields=tuple(columns)).to_arrow()
        found = found.select(columns).cast(pa.schema([incoming.schema.field(c) for c in columns]))
        if found.num_rows == 0:
            return found, 0
        return found.join(incoming.select(self.keys), self.keys, join_type="left semi"), len(found)

    def _delete_filter(self, probe: Any, replaced: pa.Table, in_range: int) -> Any:
        """The filter deleting exactly ``replaced``: the probe range itself when every stored row
        in it is replaced (cheap to evaluate), else the keys listed."""
        if replaced.num_rows == 0:
            return None
        if replaced.num_rows == in_range:
            return probe
        return self._exact_filter(replaced.select(self.keys))

    def _apply_sync(self, incoming: pa.Table, props: dict[str, str]) -> ApplyResult:
        assert self.version is not None
        v = self.version
        cols = self.stored_columns
        data_schema = pa.schema([f for f in incoming.schema if f.name != DELETED])
        tbl = self._load_or_create(self.identifier, data_schema, create=True)
        if not self._checked:
            self._check(tbl, data_schema)
            self._checked = True
        tomb_cols = list(dict.fromkeys([*self.keys, v]))
        tomb_schema = pa.schema([incoming.schema.field(c) for c in tomb_cols])
        any_deletes = bool(pc.any(incoming.column(DELETED)).as_py())
        tomb = self._load_or_create(self.identifier + TOMBSTONE_SUFFIX, tomb_schema, any_deletes)

        probe = self._probe_filter(incoming)
        stored, stored_in_range = self._stored(tbl, probe, incoming, tomb_cols)
        tombs, tombs_in_range = (
            self._stored(tomb, probe, incoming, tomb_cols) if tomb is not None else (None, 0)
        )

        # decide: stale when the stored row or tombstone has a greater version
        numbered = incoming.select([*self.keys, v]).append_column(
            "__ls_i", pa.array(range(incoming.num_rows), pa.int64())
        )
        stale = pa.array([False] * incoming.num_rows)
        for other in (stored, tombs):
            if other is None or other.num_rows == 0:
                continue
            side = other.rename_columns(
                [*self.keys, "__ls_old"] if v not in self.keys else self.keys
            )
            if v in self.keys:
                continue  # the version is part of the key: a key is never older than itself
            joined = numbered.join(side, self.keys, join_type="inner")
            older = joined.filter(pc.greater(joined.column("__ls_old"), joined.column(v)))
            stale = pc.or_(stale, pc.is_in(numbered.column("__ls_i"), older.column("__ls_i")))
        fresh = incoming.filter(pc.invert(stale))
        n_stale = incoming.num_rows - fresh.num_rows
        if fresh.num_rows == 0:
            return ApplyResult(skipped=n_stale)
        upserts = fresh.filter(pc.invert(fresh.column(DELETED)))
        deletes = fresh.filter(fresh.column(DELETED))
        fresh_keys = fresh.select(self.keys)

        # tombstones first (a crash between the commits leaves a state a replay repairs)
        if tomb is not None:
            dropped = None
            if tombs is not None and tombs.num_rows:
                drop = tombs.join(fresh_keys, self.keys, join_type="left semi")
                dropped = self._delete_filter(probe, drop, tombs_in_range)
            _rewrite(tomb, dropped, deletes.select(tomb_cols).cast(tomb.schema().as_arrow()), props)
        replaced = stored.join(fresh_keys, self.keys, join_type="left semi")
        _rewrite(
            tbl,
            self._delete_filter(probe, replaced, stored_in_range),
            upserts.select(cols).cast(tbl.schema().as_arrow()),
            props,
        )
        return ApplyResult(written=upserts.num_rows, skipped=n_stale, deletes=deletes.num_rows)


def without_rebase(tbl: Any) -> Any:
    """``tbl`` as a handle whose commits pyiceberg does not retry by itself.

    pyiceberg retries a conflicting commit by rebasing it on the new snapshot (table property
    ``commit.retry.num-retries``, default 4). The upsert's decision — which rows are new, which
    stored rows they replace — holds only for the snapshot it was made on: a rebased append of a
    key another writer added meanwhile stores the key twice. So the commit fails on any conflict
    and the sink's retry decides again on the fresh table. The property is overridden in this
    handle's in-memory metadata only (read at commit time); the table itself is not changed."""
    from pyiceberg.table import Table, TableProperties

    properties = {**tbl.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    metadata = tbl.metadata.model_copy(update={"properties": properties})
    return Table(tbl.name(), metadata, tbl.metadata_location, tbl.io, tbl.catalog, tbl.config)


def _rewrite(tbl: Any, delete: Any, rows: pa.Table, props: dict[str, str]) -> None:
    """One atomic commit: delete the rows ``delete`` selects (if any), append ``rows``; a
    concurrent commit in between fails it (:func:`without_rebase`)."""
    if delete is None and rows.num_rows == 0:
        return
    with without_rebase(tbl).transaction() as tx:
        if delete is not None:
            tx.delete(delete, snapshot_properties=props)
        if rows.num_rows:
            tx.append(rows, snapshot_properties=props)
