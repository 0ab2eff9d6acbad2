"""Unifying a lake file's columns to one declared schema.

Rules: a declared column missing from the file becomes all-null (the field must then be nullable
or the file is rejected); a column of another type is converted only by a *safe* cast — widening
within integers or floats, integer → float, any timestamp unit/zone, string/binary ↔ their large
variants, dictionary → its value type, null → anything; columns the schema does not declare are
dropped. Anything else raises :class:`SchemaError` naming the column and the file.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.types as pt

from ...errors import SchemaError

_INT_BITS = {pa.int8(): 8, pa.int16(): 16, pa.int32(): 32, pa.int64(): 64}
_UINT_BITS = {pa.uint8(): 8, pa.uint16(): 16, pa.uint32(): 32, pa.uint64(): 64}
_FLOAT_BITS = {pa.float16(): 16, pa.float32(): 32, pa.float64(): 64}


def safe_cast_allowed(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether ``source`` values convert to ``target`` without loss of meaning."""
    if source == target or pt.is_null(source):
        return True
    if pt.is_dictionary(source):
        return safe_cast_allowed(source.value_type, target)
    if source in _INT_BITS and target in _INT_BITS:
        return _INT_BITS[target] >= _INT_BITS[source]
    if source in _UINT_BITS and target in _UINT_BITS:
        return _UINT_BITS[target] >= _UINT_BITS[source]
    if source in _UINT_BITS and target in _INT_BITS:
        return _INT_BITS[target] > _UINT_BITS[source]
    if source in _FLOAT_BITS and target in _FLOAT_BITS:
        return _FLOAT_BITS[target] >= _FLOAT_BITS[source]
    if (source in _INT_BITS or source in _UINT_BITS) and target in _FLOAT_BITS:
        return True
    if pt.is_timestamp(source) and pt.is_timestamp(target):
        return True
    if (pt.is_string(source) or pt.is_large_string(source)) and (
        pt.is_string(target) or pt.is_large_string(target)
    ):
        return True
    return (pt.is_binary(source) or pt.is_large_binary(source)) and (
        pt.is_binary(target) or pt.is_large_binary(target)
    )


def unify(table: pa.Table, target: pa.Schema, *, where: str) -> pa.Table:
    """``table`` with exactly ``target``'s columns, in its order (see module rules)."""
    if table.schema.equals(target):
        return table
    columns: list[pa.ChunkedArray | pa.Array] = []
    for field in target:
        index = table.schema.get_field_index(field.name)
        if index < 0:
            if not field.nullable:
                raise SchemaError(
                    f"column {field.name!r} ({field.type}) is missing and not nullable {where}"
                )
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(index)
        if column.type != field.type:
            if not safe_cast_allowed(column.type, field.type):
                raise SchemaError(
                    f"column {field.name!r} has type {column.type}, declared {field.type}: "
                    f"no safe cast {where}"
                )
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"column {field.name!r}: cannot cast {column.type} to {field.type} "
                    f"{where}: {exc}"
                ) from exc
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=target)


def _common_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type both ``a`` and ``b`` convert to safely (the wider one), None when neither does.

    Timestamps take the finer unit (and UTC when either has a zone: naive means UTC); string and
    binary take their large variant when either is large — both directions are "safe" for them,
    so the wider is chosen explicitly rather than by order.
    """
    if a == b:
        return a
    if pt.is_timestamp(a) and pt.is_timestamp(b):
        order = ["s", "ms", "us", "ns"]
        unit = max(a.unit, b.unit, key=order.index)
        return pa.timestamp(unit, tz="UTC" if (a.tz or b.tz) else None)
    if {a, b} <= {pa.string(), pa.large_string()} or {a, b} <= {pa.binary(), pa.large_binary()}:
        return pa.large_string() if pt.is_string(a) or pt.is_large_string(a) else pa.large_binary()
    if safe_cast_allowed(a, b):
        return b
    if safe_cast_allowed(b, a):
        return a
    return None


def union_schema(schemas: list[tuple[str, pa.Schema]]) -> pa.Schema | None:
    """One schema for every ``(where, schema)`` of a lake's files, in order of first appearance.

    Invariants: every file's columns convert to it by :func:`unify`'s safe casts (types widen
    where safe); a column some file lacks is nullable (its rows read as null there); two types
    with no safe cast either way raise :class:`SchemaError` naming the column and both files.
    None when there are no files.
    """
    if not schemas:
        return None
    fields: dict[str, pa.Field] = {}
    origin: dict[str, str] = {}  # the file that set the column's current type
    seen: dict[str, int] = {}
    for where, schema in schemas:
        for f in schema:
            seen[f.name] = seen.get(f.name, 0) + 1
            known = fields.get(f.name)
            if known is None:
                fields[f.name], origin[f.name] = f, where
                continue
            common = _common_type(known.type, f.type)
            if common is None:
                raise SchemaError(
                    f"column {f.name!r} has type {known.type} in file={origin[f.name]} and "
                    f"{f.type} in file={where}: no safe cast either way; declare schema= (and "
                    "rewrite the files that do not fit it)"
                )
            if common != known.type:
                origin[f.name] = where
            fields[f.name] = pa.field(f.name, common, known.nullable or f.nullable)
    n = len(schemas)
    return pa.schema(
        [f if seen[name] == n else f.with_nullable(True) for name, f in fields.items()]
    )
