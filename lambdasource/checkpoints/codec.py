"""Checkpoint state as plain data: a JSON tree whose large leaves are binary buffers.

Nothing here runs code when a checkpoint is read (no pickle): decoding builds only the types
listed below, and the classes registered with :func:`state_type` (lambdasource's own state
records, rebuilt field by field). A checkpoint location that others can write cannot take over
the job; at worst its state fails to decode (:class:`~lambdasource.errors.CheckpointError`).

The tree, as JSON (every JSON object is a tagged node ``{"$": kind, …}``)::

    None, bool, int, str, finite float   → themselves; a list → a JSON array
    other float (nan, ±inf)              → {"$": "float", "v": "nan" | "inf" | "-inf"}
    tuple / set / frozenset              → {"$": "tuple" | "set" | "frozenset", "v": [...]}
    dict with str keys                   → {"$": "map", "v": {key: value}}
    any other dict                       → {"$": "dict", "v": [[key, value], ...]}
    bytes                                → {"$": "bytes", "buf": i}            raw bytes
    numpy array (bool, number, datetime) → {"$": "ndarray", "dtype": "<i8", "shape": [...], "buf": i}
    numpy object array                   → {"$": "objects", "shape": [...], "buf": i}  (as Arrow)
                                           or {…, "v": [values]} when Arrow cannot hold them
    numpy scalar                         → {"$": "npscalar", "dtype": "<i8", "v": value}
    pyarrow RecordBatch / Table          → {"$": "batch" | "table", "buf": i}  Arrow IPC stream
    pyarrow Array / ChunkedArray         → {"$": "array" | "chunked", "buf": i}  one column "v"
    pyarrow Schema / DataType            → {"$": "schema" | "dtype", "buf": i}  IPC schema
    a registered record                  → {"$": "record", "type": name, "v": {field: value}}
    a registered custom type             → {"$": "custom", "type": name, "v": dumped state}

Buffers are kept as they are (numpy data zero-copy) and decoded as views of the read buffer:
restored numpy arrays are writable when that buffer is a ``bytearray``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from ..errors import CheckpointError

_RECORDS: dict[str, type[Any]] = {}  # name → dataclass rebuilt field by field
_NAMES: dict[type[Any], str] = {}
_CUSTOM: dict[str, tuple[type[Any], Callable[[Any], Any], Callable[[Any], Any]]] = {}
_CUSTOM_NAMES: dict[type[Any], str] = {}
_NUMERIC_KINDS = frozenset("biufcmM")  # bool, ints, floats, complex, timedelta64, datetime64
_ARROW_EXACT = frozenset({str, bytes, int, float, bool})  # object arrays Arrow holds exactly
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

T = TypeVar("T")


def state_type(name: str) -> Callable[[type[T]], type[T]]:
    """Register a dataclass as a state record stored under ``name`` (stable across renames of
    the class: change the class, keep the name, or old checkpoints stop decoding)."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"state_type({name!r}): {cls!r} is not a dataclass")
        if _RECORDS.get(name, cls) is not cls:
            raise TypeError(f"state_type({name!r}) is already {_RECORDS[name]!r}")
        _RECORDS[name] = cls
        _NAMES[cls] = name
        return cls

    return register


def custom_state_type(
    name: str, cls: type[T], dump: Callable[[T], Any], load: Callable[[Any], T]
) -> None:
    """Register a class that is not a dataclass: ``dump(obj)`` gives plain state (encoded like
    any state), ``load(state)`` builds the object again (e.g. an index rebuilt from its arrays)."""
    if _CUSTOM.get(name, (cls,))[0] is not cls or name in _RECORDS:
        raise TypeError(f"custom_state_type({name!r}) is already registered")
    _CUSTOM[name] = (cls, dump, load)
    _CUSTOM_NAMES[cls] = name


class Encoder:
    """Turns a state tree into (JSON-able tree, buffers); see the module docstring."""

    def __init__(self) -> None:
        self.buffers: list[memoryview | bytes] = []

    def _buffer(self, data: memoryview | bytes) -> int:
        self.buffers.append(data)
        return len(self.buffers) - 1

    def _ipc(self, batch_or_table: pa.RecordBatch | pa.Table) -> int:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch_or_table.schema) as writer:
            writer.write(batch_or_table)
        return self._buffer(memoryview(sink.getvalue()))

    def encode(self, value: Any, path: str = "state") -> Any:
        if isinstance(value, np.generic):  # before float: numpy's float64 is a float subclass
            if value.dtype.kind not in _NUMERIC_KINDS:
                raise self._unsupported(value, path)
            return {"$": "npscalar", "dtype": value.dtype.str, "v": self._scalar_bits(value)}
        if value is None or isinstance(value, (bool, int, str)):
            if isinstance(value, int) and not isinstance(value, bool) and type(value) is not int:
                return int(value)  # an IntEnum or other int subclass: its value
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return float(value)
            return {"$": "float", "v": "nan" if math.isnan(value) else str(value)}
        if isinstance(value, list):
            return [self.encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {
                "$": "tuple",
                "v": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)],
            }
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {
                    "$": "map",
                    "v": {k: self.encode(v, f"{path}[{k!r}]") for k, v in value.items()},
                }
            return {
                "$": "dict",
                "v": [
                    [self.encode(k, f"{path}<key>"), self.encode(v, f"{path}[{k!r}]")]
                    for k, v in value.items()
                ],
            }
        if isinstance(value, (set, frozenset)):
            kind = "set" if isinstance(value, set) else "frozenset"
            return {"$": kind, "v": [self.encode(v, f"{path}<item>") for v in value]}
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {"$": "bytes", "buf": self._buffer(bytes(value))}
        if isinstance(value, np.ndarray):
            return self._ndarray(value, path)
        if isinstance(value, pa.RecordBatch):
            return {"$": "batch", "buf": self._ipc(value)}
        if isinstance(value, pa.Table):
            return {"$": "table", "buf": self._ipc(value)}
        if isinstance(value, pa.Array):
            return {"$": "array", "buf": self._ipc(pa.record_batch([value], names=["v"]))}
        if isinstance(value, pa.ChunkedArray):
            return {"$": "chunked", "buf": self._ipc(pa.table([value], names=["v"]))}
        if isinstance(value, pa.Schema):
            return {"$": "schema", "buf": self._buffer(memoryview(value.serialize()))}
        if isinstance(value, pa.DataType):
            schema = pa.schema([pa.field("v", value)])
            return {"$": "dtype", "buf": self._buffer(memoryview(schema.serialize()))}
        name = _NAMES.get(type(value))
        if name is not None:
            return {
                "$": "record",
                "type": name,
                "v": {
                    f.name: self.encode(getattr(value, f.name), f"{path}.{f.name}")
                    for f in dataclasses.fields(value)
                },
            }
        name = _CUSTOM_NAMES.get(type(value))
        if name is not None:
            dumped = _CUSTOM[name][1](value)
            return {"$": "custom", "type": name, "v": self.encode(dumped, f"{path}<{name}>")}
        raise self._unsupported(value, path)

    @staticmethod
    def _scalar_bits(value: np.generic) -> Any:
        if value.dtype.kind in "mM":
            return int(value.view(np.int64))
        if value.dtype.kind == "c":
            return [float(value.real), float(value.imag)]
        item = value.item()
        if isinstance(item, float) and not math.isfinite(item):
            return "nan" if math.isnan(item) else str(item)
        return item

    def _ndarray(self, array: np.ndarray, path: str) -> dict[str, Any]:
        shape = list(array.shape)
        if array.dtype.kind in _NUMERIC_KINDS:
            data = np.ascontiguousarray(array)
            # bytes of any numeric dtype (datetime64 has no buffer format: view it as bytes)
            buffer = data.reshape(-1).view(np.uint8).data if data.size else b""
            return {
                "$": "ndarray",
                "dtype": data.dtype.str,
                "shape": shape,
                "buf": self._buffer(buffer),
            }
        if array.dtype == object:
            items = array.ravel().tolist()
            kinds = set(map(type, items)) - {type(None)}
            try:  # as one Arrow column when that round-trips exactly: one plain type
                if len(kinds) > 1 or not kinds <= _ARROW_EXACT:
                    raise pa.ArrowTypeError("not one plain type")
                values = pa.array(items)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                # several types (1 and 1.5 would become 1.0 and 1.5), or types Arrow has no
                # exact column for (sets, Decimals of several scales): value by value
                encoded = [self.encode(item, f"{path}[{i}]") for i, item in enumerate(items)]
                return {"$": "objects", "shape": shape, "v": encoded}
            buf = self._ipc(pa.record_batch([values], names=["v"]))
            return {"$": "objects", "shape": shape, "buf": buf}
        if array.dtype.kind in "US":  # fixed-width text: its Arrow form, restored as it was
            values = pa.array(array.ravel().tolist())
            buf = self._ipc(pa.record_batch([values], names=["v"]))
            return {"$": "text", "dtype": array.dtype.str, "shape": shape, "buf": buf}
        raise self._unsupported(array, path)

    @staticmethod
    def _unsupported(value: Any, path: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint: {path} holds a {type(value).__module__}.{type(value).__qualname__}"
            f"{f' of dtype {value.dtype}' if isinstance(value, np.ndarray) else ''}, which a "
            "checkpoint cannot store: state must be plain data (None, bool, int, float, str, "
            "bytes, list, tuple, dict, set), numpy arrays of numbers, or Arrow tables, arrays, "
            "schemas"
        )


class Decoder:
    """The inverse of :class:`Encoder`: builds only plain data, arrays and registered records."""

    def __init__(self, buffers: list[memoryview], where: str) -> None:
        self.buffers = buffers
        self.where = where

    def _fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: state cannot be decoded: {what}")

    def _buffer(self, node: dict[str, Any]) -> memoryview:
        index = node.get("buf")
        if not isinstance(index, int) or not 0 <= index < len(self.buffers):
            raise self._fail(f"a {node.get('$')!r} node names buffer {index!r}")
        return self.buffers[index]

    def _ipc(self, node: dict[str, Any]) -> pa.Table:
        try:
            reader = pa.ipc.open_stream(pa.py_buffer(self._buffer(node)))
            return reader.read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise self._fail(f"an Arrow IPC buffer is invalid: {exc}") from exc

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(item) for item in node]
        if not isinstance(node, dict):
            raise self._fail(f"unexpected JSON value {node!r}")
        kind = node.get("$")
        value: Any = node.get("v")
        if kind == "map":
            return {key: self.decode(item) for key, item in value.items()}
        if kind == "dict":
            return {_hashable(self.decode(k)): self.decode(v) for k, v in value}
        if kind == "tuple":
            return tuple(self.decode(item) for item in value)
        if kind == "set":
            return {_hashable(self.decode(item)) for item in value}
        if kind == "frozenset":
            return frozenset(_hashable(self.decode(item)) for item in value)
        if kind == "float":
            if value not in _SPECIAL_FLOATS:
                raise self._fail(f"float {value!r}")
            return _SPECIAL_FLOATS[value]
        if kind == "bytes":
            return bytes(self._buffer(node))
        if kind == "ndarray":
            return self._ndarray(node)
        if kind in ("objects", "text"):
            column = (
                [self.decode(item) for item in value]
                if kind == "objects" and "buf" not in node
                else self._ipc(node).column("v").to_pylist()
            )
            dtype = np.dtype(object) if kind == "objects" else self._dtype(node, "US")
            array = np.empty(len(column), dtype=object)
            array[:] = column
            return array.astype(dtype).reshape(node["shape"])
        if kind == "npscalar":
            dtype = self._dtype(node, _NUMERIC_KINDS)
            if dtype.kind in "mM":
                return np.array(value, dtype=np.int64).view(dtype)[()]
            if dtype.kind == "c":
                return dtype.type(complex(value[0], value[1]))
            return dtype.type(
                _SPECIAL_FLOATS.get(value, value) if isinstance(value, str) else value
            )
        if kind == "batch":
            table = self._ipc(node)
            batches = table.combine_chunks().to_batches()
            return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
        if kind == "table":
            return self._ipc(node)
        if kind == "array":
            return self._ipc(node).column("v").combine_chunks()
        if kind == "chunked":
            return self._ipc(node).column("v")
        if kind in ("schema", "dtype"):
            try:
                schema = pa.ipc.read_schema(pa.py_buffer(self._buffer(node)))
            except (pa.ArrowInvalid, OSError) as exc:
                raise self._fail(f"an Arrow schema buffer is invalid: {exc}") from exc
            return schema if kind == "schema" else schema.field("v").type
        if kind == "record":
            cls = _RECORDS.get(node.get("type", ""))
            if cls is None:
                raise self._fail(f"unknown state record type {node.get('type')!r}")
            fields = {f.name for f in dataclasses.fields(cls)}
            if set(value) != fields:
                raise self._fail(
                    f"record {node['type']!r} has fields {sorted(value)}, expected {sorted(fields)}"
                )
            return cls(**{key: self.decode(item) for key, item in value.items()})
        if kind == "custom":
            custom = _CUSTOM.get(node.get("type", ""))
            if custom is None:
                raise self._fail(f"unknown state type {node.get('type')!r}")
            return custom[2](self.decode(value))
        raise self._fail(f"unknown node kind {kind!r}")

    def _dtype(self, node: dict[str, Any], kinds: frozenset[str] | str) -> np.dtype[Any]:
        try:
            dtype = np.dtype(node["dtype"])
        except (TypeError, KeyError, ValueError) as exc:
            raise self._fail(f"dtype {node.get('dtype')!r}") from exc
        if dtype.kind not in kinds:
            raise self._fail(f"dtype {dtype} is not plain data")
        return dtype

    def _ndarray(self, node: dict[str, Any]) -> np.ndarray:
        dtype = self._dtype(node, _NUMERIC_KINDS)
        shape = node.get("shape")
        buffer = self._buffer(node)
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise self._fail(f"array shape {shape!r}")
        if buffer.nbytes != math.prod(shape) * dtype.itemsize:
            raise self._fail(f"array of {shape} {dtype} has {buffer.nbytes} bytes")
        if not buffer.nbytes:
            return np.empty(shape, dtype=dtype)
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def readable(value: Any) -> Any:
    """``value`` as plain JSON for people (a manifest, ``inspect``): tuples and sets as lists,
    keys as text, records as objects, arrays and tables as a summary of their size."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return readable(value.item())
    if isinstance(value, dict):
        return {str(key): readable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [readable(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: readable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (pa.RecordBatch, pa.Table)):
        return f"<{value.num_rows} rows: {', '.join(value.schema.names)}>"
    if isinstance(value, (np.ndarray, pa.Array, pa.ChunkedArray)):
        return f"<{len(value)} values>"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


def _hashable(value: Any) -> Any:
    """Decoded keys of dicts and sets: lists (JSON arrays) cannot be keys; tuples are encoded as
    tuples, so a list here means corrupt input."""
    if isinstance(value, (list, dict, set)):
        raise CheckpointError(f"state cannot be decoded: unhashable key {value!r}")
    return value


def to_json(tree: Any) -> bytes:
    return json.dumps(tree, separators=(",", ":"), allow_nan=False).encode()


def from_json(data: bytes | memoryview, where: str) -> Any:
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: state tree is not valid JSON: {exc}") from exc
