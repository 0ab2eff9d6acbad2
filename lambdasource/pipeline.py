"""The pipeline builder: ``Pipeline.source(...)`` returns a :class:`Stream`; chain operators on it.

Building checks everything it can before anything runs: unknown columns, a time column that is
not a timestamp, windows on unkeyed streams, bad durations, unions of different schemas. Schemas
propagate through the graph; where one is unknown (a ``map`` without ``schema=``, a custom
operator without ``output_schema``), the same checks happen on the first batch instead.

Names. Every node has a name (metrics, error messages); a checkpoint stores each *stateful* node's
state (sources, windows, custom operators) under its name, so names must not move when the graph
is edited. A ``name=`` is used as given and must be unique in the pipeline. Without one, a node is
named after its kind (``"window"``, the source's name, the operator's class name); stateless steps
(filter, map, union) are not in checkpoints at all, so adding or removing them never orphans
state. When generated names collide, stateless nodes and sinks get counters (``"filter#2"``), and
so do stateful nodes of a pipeline without checkpoints; with checkpoints, colliding stateful
nodes are a ``ConfigError`` asking for ``name=`` (a counter would depend on build order).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from . import state_bootstrap
from .checkpoints import Checkpoints
from .checkpoints.coordinator import CheckpointCoordinator
from .errors import ConfigError, SchemaError, close_after
from .messages import Message
from .operator import Operator
from .operators import (
    FilterOperator,
    MapOperator,
    Predicate,
    UnionOperator,
    check_on_error,
    validate_expression,
)
from .runtime import Edge, Inbox, Mailbox, OperatorNode, Runtime, Segment, SinkNode, SourceNode
from .sinks.base import Sink
from .sources.base import Source
from .state_bootstrap import BOOTSTRAP_MODES, BootstrapReport
from .timeutil import TIME_TYPE, Duration, check_time_type, parse_duration
from .windows.aggregates import Aggregate, Kernel, as_kernel
from .windows.assigners import Session, Sliding
from .windows.engine import EMIT_MODES, EmitMode
from .windows.operator import WindowOperator, output_schema

FLUSH_MODES = ("watermark", "all")
log = logging.getLogger("lambdasource.pipeline")


@dataclass(eq=False)
class _Spec:
    """A node of the graph as built (the runtime creates live nodes from it)."""

    kind: str  # "source" | "operator" | "sink"
    name: str  # final once the pipeline is built (generated names are resolved then)
    inputs: list[tuple[_Spec, str]] = field(default_factory=list)
    source: Source | None = None
    sink: Sink | None = None
    make: Callable[[], Operator] | None = None
    keys: tuple[str, ...] = ()
    named: bool = False  # the user gave name=
    stateful: bool = False  # has state a checkpoint keeps (sources, windows, custom operators)
    hint: str = ""  # where to pass name= (for the error asking for one)
    base: str = ""  # the generated name before collisions are resolved ("" when named)


class Pipeline:
    """A dataflow graph and its run. ``run()`` once; ``metrics()`` during and after the run.

    ``flush`` sets what a bounded run does at its end: ``"watermark"`` (default, DESIGN §3: only
    windows the final watermark completed are emitted) or ``"all"`` (every window with data).
    ``queue_size`` bounds each async boundary's queue (messages, i.e. batches).
    ``checkpoints`` (an ``ls.Checkpoints``) enables periodic checkpoints; ``run()`` then resumes
    from the newest complete one at its URL (see :meth:`run`).
    """

    def __init__(
        self,
        checkpoints: Checkpoints | None = None,
        *,
        flush: str = "watermark",
        queue_size: int = 8,
        name: str = "pipeline",
    ) -> None:
        if flush not in FLUSH_MODES:
            raise ConfigError(f"Pipeline: flush must be one of {FLUSH_MODES}, got {flush!r}")
        if checkpoints is not None and not isinstance(checkpoints, Checkpoints):
            raise ConfigError(
                f"Pipeline(checkpoints=...): expected ls.Checkpoints(url, interval), got "
                f"{checkpoints!r}"
            )
        if queue_size < 1:
            raise ConfigError(f"Pipeline: queue_size must be >= 1, got {queue_size}")
        self.checkpoints = checkpoints
        self.flush = flush
        self.queue_size = queue_size
        self.name = name
        self._specs: list[_Spec] = []
        self._names: set[str] = set()  # explicit names
        self._runtime: Runtime | None = None
        self.bootstrap: BootstrapReport | None = None
        """How the run bootstrapped (``run(bootstrap=...)``); None before it runs."""

    # building -----------------------------------------------------------------------------------

    def _name(self, name: str | None, base: str) -> tuple[str, bool]:
        """``(name, explicit)``: an explicit name is checked for uniqueness now; a generated one
        is provisional (``base``) until :meth:`_resolve_names`."""
        if name is None:
            return base, False
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty string, got {name!r}")
        if name in self._names:
            raise ConfigError(
                f"name={name!r} is used twice; names identify state in checkpoints and metrics, "
                "so each must be unique in the pipeline"
            )
        self._names.add(name)
        return name, True

    def _resolve_names(self) -> None:
        """Give every node without ``name=`` its final name (see the module docstring)."""
        groups: dict[str, list[_Spec]] = {}
        for spec in self._specs:
            if not spec.named:
                spec.name = spec.base
                groups.setdefault(spec.base, []).append(spec)
        taken = set(self._names)
        for base, group in groups.items():
            if len(group) == 1 and base not in taken:
                taken.add(base)
                continue
            stateful = [spec for spec in group if spec.stateful]
            if self.checkpoints is not None and stateful:
                raise ConfigError(self._ambiguous(base, stateful, base in self._names))
            n = 1
            for spec in group:
                name = base
                while name in taken:
                    n += 1
                    name = f"{base}#{n}"
                spec.name = name
                taken.add(name)

    def _ambiguous(self, base: str, specs: list[_Spec], explicit: bool) -> str:
        where = "; ".join(
            f"{spec.kind} {base!r} after {self._upstream(spec)}"
            + (f" keys={list(spec.keys)}" if spec.keys else "")
            for spec in specs
        )
        clash = "an explicitly named node" if explicit else "each other"
        return (
            f"{self.name}: stateful nodes without name= would be named {base!r} like {clash} "
            f"({where}). Checkpoints keep state by name, so give each one a stable name=, e.g. "
            f"{specs[0].hint}"
        )

    def _upstream(self, spec: _Spec) -> str:
        """The sources feeding ``spec`` (for messages)."""
        sources: list[str] = []
        stack, seen = [spec], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.kind == "source" and node is not spec:
                sources.append(node.name)
            stack.extend(up for up, _ in node.inputs)
        return "source " + "+".join(sorted(sources)) if sources else "no source"

    def _add(self, spec: _Spec) -> _Spec:
        if self._runtime is not None:
            raise ConfigError(f"{self.name}: the pipeline already ran; build a new Pipeline")
        if not spec.named:
            spec.base = spec.name
        self._specs.append(spec)
        return spec

    def source(self, source: Source, *, name: str | None = None) -> Stream:
        """Add a source; returns its stream."""
        if not isinstance(source, Source):
            raise ConfigError(
                f"Pipeline.source: expected a source (e.g. ls.MemorySource), got {source!r}"
            )
        if any(s.source is source for s in self._specs):
            raise ConfigError(f"Pipeline.source: source {source.name!r} was already added")
        schema = source.schema
        if schema is not None:
            if source.time_column not in schema.names:
                raise SchemaError(
                    f"source={source.name}: time column {source.time_column!r} not in {schema.names}"
                )
            check_time_type(
                schema.field(source.time_column).type,
                column=source.time_column,
                where=f"source={source.name}",
            )
            schema = schema.set(
                schema.get_field_index(source.time_column), pa.field(source.time_column, TIME_TYPE)
            )
        spec_name, named = self._name(name, source.name)
        spec = self._add(
            _Spec(
                "source",
                spec_name,
                source=source,
                named=named,
                stateful=True,
                hint=f".source({type(source).__name__}(...), name='...')",
            )
        )
        return Stream(self, spec, "main", schema, source.time_column, ())

    # running ------------------------------------------------------------------------------------

    def _graph(self, live: dict[int, Any]) -> dict[str, str]:
        """What a checkpoint's state depends on, per stateful node (sources and stateful
        operators): the operator's configuration and keys, not its position, so inserting a
        stateless step in front of a window keeps the window's state usable."""
        graph: dict[str, str] = {}
        for spec in self._specs:
            node = live[id(spec)]
            if spec.kind == "source":
                graph[spec.name] = f"source {type(node.source).__qualname__}"
            elif spec.kind == "operator" and node.op.stateful:
                graph[spec.name] = f"{node.op.describe()} keys={list(spec.keys)}"
        return graph

    def _build(self, flush: str) -> Runtime:
        runtime = Runtime(flush)
        sinks = [s for s in self._specs if s.kind == "sink"]
        if not sinks:
            raise ConfigError(f"{self.name}: nothing to run; add a sink with .sink(...)")
        for spec in self._specs:
            if spec.kind == "operator" and spec.make is None:
                raise ConfigError(f"operator={spec.name}: .window(...) needs .aggregate(...)")
        self._resolve_names()
        consumers: dict[int, int] = {}
        for spec in self._specs:
            consumers[id(spec)] = 0
        for spec in self._specs:
            for up, _ in spec.inputs:
                consumers[id(up)] += 1

        live: dict[int, Any] = {}
        mailboxes: dict[int, Inbox] = {}
        for spec in self._specs:
            if spec.kind == "source":
                assert spec.source is not None
                node: Any = SourceNode(spec.name, spec.source, runtime)
                runtime.sources.append(node)
            elif spec.kind == "operator":
                assert spec.make is not None
                op = spec.make()
                op.name = spec.name
                node = OperatorNode(spec.name, op, len(spec.inputs), spec.keys, runtime)
                runtime.operators.append(node)
            else:
                assert spec.sink is not None
                box: asyncio.Queue[tuple[int, Message]] = asyncio.Queue(self.queue_size)
                mailboxes[id(spec)] = box
                runtime.queues[spec.name] = box
                node = SinkNode(spec.name, spec.sink, box, runtime)
                runtime.sinks.append(node)
            live[id(spec)] = node

        heads: list[OperatorNode] = []
        for spec in self._specs:
            node = live[id(spec)]
            queued = (
                spec.kind == "sink"
                or len(spec.inputs) > 1
                or any(up.kind == "source" for up, _ in spec.inputs)
            )
            if spec.kind == "operator" and queued:
                # one lane per input: barrier alignment pauses single inputs (see Mailbox)
                lanes = Mailbox(len(spec.inputs), self.queue_size)
                mailboxes[id(spec)] = lanes
                runtime.queues[spec.name] = lanes
                heads.append(node)
            for index, (up, port) in enumerate(spec.inputs):
                edge = Edge(node, index, mailboxes[id(spec)] if queued else None)
                live[id(up)].port(port).append(edge)

        for head in heads:
            mailbox = mailboxes[id(next(s for s in self._specs if live[id(s)] is head))]
            assert isinstance(mailbox, Mailbox)
            segment = Segment(head, mailbox)
            stack = [head]
            while stack:
                node = stack.pop()
                node.segment = segment
                segment.nodes.append(node)
                for edges in node.outputs.values():
                    stack.extend(e.target for e in edges if e.queue is None)
            runtime.segments.append(segment)
        if self.checkpoints is not None:
            coordinator = CheckpointCoordinator(self.checkpoints, self._graph(live), self.name)
            coordinator.runtime = runtime
            runtime.coordinator = coordinator
        return runtime

    async def run(
        self,
        *,
        flush: str | None = None,
        restore: Literal["latest"] | int | None = "latest",
        bootstrap: Literal["replay", "state"] = "replay",
    ) -> None:
        """Run until every sink has seen the end (bounded) or until cancelled (unbounded).

        ``bootstrap="state"`` builds the windows' state from the lake in one columnar pass
        instead of replaying it record by record, then continues on the stream from that state
        (``lambdasource.state_bootstrap``; same store as a replay). It applies when the run
        does not resume from a checkpoint and the graph allows it (one lambda source or lake,
        filters, maps, windows with built-in aggregates); otherwise the run replays and says
        why in a warning and ``metrics()["bootstrap"]``.

        With checkpoints: ``restore="latest"`` (default) resumes from the newest complete
        checkpoint of the newest lineage at the URL when there is one (``IncompatibleStateError``
        when it was taken by a different graph); an int restores that checkpoint id (branching a
        new lineage unless it is the newest); ``None`` starts fresh in a new lineage. Nothing is
        deleted: earlier checkpoints stay restorable by id, a later ``restore="latest"`` resumes
        the new lineage, and pruning (``Checkpoints(keep=...)``) only touches the lineage being
        written. To delete checkpoints, call ``await checkpoints.clear()`` explicitly. Without
        checkpoints ``restore`` is ignored.
        """
        if self._runtime is not None:
            raise ConfigError(f"{self.name}: a Pipeline runs once; build a new one to run again")
        mode = flush or self.flush
        if mode not in FLUSH_MODES:
            raise ConfigError(f"run: flush must be one of {FLUSH_MODES}, got {mode!r}")
        if restore is not None and restore != "latest" and not isinstance(restore, int):
            raise ConfigError(
                f"run: restore must be 'latest', a checkpoint id or None, got {restore!r}"
            )
        if bootstrap not in BOOTSTRAP_MODES:
            raise ConfigError(f"run: bootstrap must be one of {BOOTSTRAP_MODES}, got {bootstrap!r}")
        runtime = self._build(mode)
        self._runtime = runtime
        self.bootstrap = BootstrapReport(mode="replay", requested=bootstrap)
        coordinator = runtime.coordinator
        found = None
        if coordinator is not None:
            try:
                found = await coordinator.prepare(None if restore is None else restore)
                runtime.first_checkpoint_id(coordinator.next_id)
            except BaseException as error:
                runtime.status = "failed"
                await close_after("closing the checkpoint store", coordinator.store.close(), error)
                raise
        try:
            if found is None and bootstrap == "state":
                found = await self._bootstrap_from_state(mode, runtime)
            elif found is not None and bootstrap == "state":
                self.bootstrap.reason = f"resumed from checkpoint {found[0]}"
            if found is not None:
                runtime.restore(*found)
        except BaseException as error:
            runtime.status = "failed"
            if coordinator is not None:
                await close_after("closing the checkpoint store", coordinator.store.close(), error)
            raise
        await runtime.run()

    async def _bootstrap_from_state(
        self, mode: str, runtime: Runtime
    ) -> tuple[int, dict[str, Any]] | None:
        """The state bootstrap's pass (``state_bootstrap``) on a runtime of its own; returns the
        first checkpoint for ``runtime`` to restore, or None (the run replays: why is logged)."""
        report = self.bootstrap
        assert report is not None
        first = self._build(mode)
        first.coordinator = None  # the pass takes no periodic checkpoints: it is one unit
        reason = state_bootstrap.blocker(first)
        if reason is not None:
            report.reason = reason
            log.warning("bootstrap='state' is not possible (%s): replaying the lake", reason)
            return None
        report.mode = "state"
        self._runtime = first
        try:
            states = await state_bootstrap.run_pass(first, report)
        finally:
            self._runtime = runtime
        runtime.carry_counters(first)
        coordinator = runtime.coordinator
        if coordinator is None:
            return 0, states
        sources = {source.name for source in runtime.sources}
        checkpoint_id = await coordinator.write_initial(states, sources)
        runtime.first_checkpoint_id(coordinator.next_id)
        report.checkpoint_id = checkpoint_id
        return checkpoint_id, states

    def run_sync(
        self,
        *,
        flush: str | None = None,
        restore: Literal["latest"] | int | None = "latest",
        bootstrap: Literal["replay", "state"] = "replay",
    ) -> None:
        """``asyncio.run(self.run())`` for scripts."""
        asyncio.run(self.run(flush=flush, restore=restore, bootstrap=bootstrap))

    def trigger_checkpoint(self) -> int:
        """Ask every running source to inject a barrier now; returns the checkpoint id."""
        if self._runtime is None or self._runtime.status != "running":
            raise ConfigError(f"{self.name}: trigger_checkpoint needs a running pipeline")
        return self._runtime.request_checkpoint()

    async def write_final_checkpoint(self) -> int | None:
        """After ``run()`` returned normally: checkpoint the final state of every node (the
        positions at the end, the windows as flushed) and return its id; None without
        checkpoints or when the run did not finish (scale-out tasks use it: a partition's next
        owner then resumes at its end)."""
        runtime = self._runtime
        if runtime is None or runtime.coordinator is None:
            return None
        return await runtime.coordinator.write_final()

    @property
    def snapshots(self) -> dict[int, dict[str, Any]]:
        """Snapshots collected per checkpoint id (node name → state)."""
        return self._runtime.snapshots if self._runtime else {}

    def metrics(self) -> dict[str, Any]:
        """Plain-data metrics (watermarks, skew, records, late, dead letters, buffered state)."""
        if self._runtime is None:
            return {"status": "created"}
        metrics = self._runtime.metrics()
        if self.bootstrap is not None:
            metrics["bootstrap"] = self.bootstrap.to_dict()
        return metrics


class Stream:
    """A stream of Arrow record batches in the graph being built."""

    def __init__(
        self,
        pipeline: Pipeline,
        spec: _Spec,
        port: str,
        schema: pa.Schema | None,
        time_column: str,
        keys: tuple[str, ...],
    ) -> None:
        self.pipeline = pipeline
        self._spec = spec
        self._port = port
        self.schema = schema
        self.time_column = time_column
        self.keys = keys

    def __repr__(self) -> str:
        return f"Stream({self._spec.name}:{self._port}, keys={list(self.keys)})"

    def _then(
        self,
        base: str,
        make: Callable[[], Operator] | None,
        schema: pa.Schema | None,
        *,
        name: str | None = None,
        keys: tuple[str, ...] | None = None,
        extra: Iterable[Stream] = (),
        stateful: bool = False,
        hint: str = "",
    ) -> Stream:
        new_keys = self.keys if keys is None else keys
        spec_name, named = self.pipeline._name(name, base)
        spec = self.pipeline._add(
            _Spec(
                "operator",
                spec_name,
                make=make,
                keys=new_keys,
                inputs=[(self._spec, self._port), *((s._spec, s._port) for s in extra)],
                named=named,
                stateful=stateful,
                hint=hint,
            )
        )
        return Stream(self.pipeline, spec, "main", schema, self.time_column, new_keys)

    def _check_columns(self, columns: Iterable[str], where: str) -> None:
        if self.schema is None:
            return
        for column in columns:
            if column not in self.schema.names:
                raise SchemaError(
                    f"{where}: unknown column {column!r}; the stream has {self.schema.names}"
                )

    def filter(
        self, predicate: Predicate, *, on_error: str = "dead_letter", name: str | None = None
    ) -> Stream:
        """Keep rows where ``predicate`` (``pc.field("kind") == "click"``, or batch → mask) holds."""
        mode = check_on_error(on_error, "filter")
        if isinstance(predicate, pc.Expression):
            validate_expression(predicate, self.schema, "filter")
        elif not callable(predicate):
            raise ConfigError(
                f"filter: expected a pyarrow expression or a callable, got {predicate!r}"
            )
        return self._then("filter", lambda: FilterOperator(predicate, mode), self.schema, name=name)

    def map(
        self,
        fn: Callable[[pa.RecordBatch], pa.RecordBatch | pa.Table],
        *,
        schema: pa.Schema | None = None,
        on_error: str = "dead_letter",
        name: str | None = None,
    ) -> Stream:
        """Apply ``fn(batch) -> batch`` (declare the output ``schema`` to get build-time checks)."""
        mode = check_on_error(on_error, "map")
        if not callable(fn):
            raise ConfigError(f"map: expected a callable batch -> batch, got {fn!r}")
        if schema is not None and self.time_column not in schema.names:
            raise SchemaError(f"map: output schema drops the time column {self.time_column!r}")
        return self._then("map", lambda: MapOperator(fn, schema, mode), schema, name=name)

    def key_by(self, *columns: str | list[str]) -> Stream:
        """Key the stream by one or more columns (for windows, keyed state and timers)."""
        flat: list[str] = []
        for c in columns:
            flat.extend([c] if isinstance(c, str) else list(c))
        if not flat:
            raise ConfigError("key_by: name at least one column")
        self._check_columns(flat, "key_by")
        return Stream(
            self.pipeline, self._spec, self._port, self.schema, self.time_column, tuple(flat)
        )

    def window(
        self,
        window: Sliding | Session,
        *,
        allowed_lateness: Duration = "0s",
        emit: str = "every",
        flush: str | None = None,
        name: str | None = None,
    ) -> WindowedStream:
        """Event-time windows per key; finish with ``.aggregate(...)``; late records at ``.late()``.

        ``name`` (default ``"window"``) is what checkpoints keep the window's state under; pass
        one when the pipeline has several windows (see the module docstring on names).
        """
        if not isinstance(window, Sliding | Session):
            raise ConfigError(
                f"window: expected ls.Tumbling, ls.Sliding or ls.Session, got {window!r}"
            )
        if not self.keys:
            raise ConfigError(
                f"window: {window!r} needs a keyed stream; call .key_by(column) before .window(...)"
            )
        if emit not in EMIT_MODES:
            raise ConfigError(f"window: emit must be one of {EMIT_MODES}, got {emit!r}")
        if flush is not None and flush not in FLUSH_MODES:
            raise ConfigError(f"window: flush must be one of {FLUSH_MODES}, got {flush!r}")
        lateness = parse_duration(allowed_lateness, name="allowed_lateness")
        if self.schema is not None:
            check_time_type(
                self.schema.field(self.time_column).type, column=self.time_column, where="window"
            ) if self.time_column in self.schema.names else None
            self._check_columns([self.time_column], "window (time column)")
        spec_name, named = self.pipeline._name(name, "window")
        spec = self.pipeline._add(
            _Spec(
                "operator",
                spec_name,
                keys=self.keys,
                inputs=[(self._spec, self._port)],
                named=named,
                stateful=True,
                hint=".window(..., name='...')",
            )
        )
        return WindowedStream(self, spec, window, emit, lateness, flush)  # type: ignore[arg-type]

    def process(self, op: Operator, *, name: str | None = None) -> Stream:
        """Run a custom :class:`Operator` (keyed state and timers when the stream is keyed).

        ``name`` defaults to the operator's class name; checkpoints keep its state under it.
        """
        if not isinstance(op, Operator):
            raise ConfigError(f"process: expected an ls.Operator subclass instance, got {op!r}")
        if not hasattr(op, "name"):
            raise ConfigError(f"process: {type(op).__name__}.__init__ must call super().__init__()")
        hooks = ("open", "on_batch", "on_watermark", "on_timer", "on_end", "close")
        for hook in hooks:
            if inspect.iscoroutinefunction(getattr(type(op), hook, None)):
                raise ConfigError(
                    f"process: {type(op).__name__}.{hook} is `async def`; operator hooks are "
                    "plain functions called on the event loop (a coroutine would never run and "
                    "its records would be lost): write `def`, and do blocking work in a sink"
                )
        schema = op.output_schema if op.output_schema is not None else self.schema
        kind = type(op).__name__
        return self._then(
            kind,
            lambda: op,
            schema,
            name=name,
            stateful=op.stateful,
            hint=f".process({kind}(...), name='...')",
        )

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """Merge streams of the same schema; the watermark is the minimum of the inputs'."""
        for other in others:
            if other.pipeline is not self.pipeline:
                raise ConfigError("union: streams belong to different pipelines")
            if other.time_column != self.time_column:
                raise SchemaError(
                    f"union: time columns differ ({self.time_column!r} vs {other.time_column!r})"
                )
            if (
                self.schema is not None
                and other.schema is not None
                and not other.schema.equals(self.schema)
            ):
                raise SchemaError(f"union: schemas differ:\n{self.schema}\nvs\n{other.schema}")
        keys = self.keys if all(o.keys == self.keys for o in others) else ()
        return self._then("union", UnionOperator, self.schema, name=name, keys=keys, extra=others)

    def sink(self, sink: Sink, *, name: str | None = None) -> Sink:
        """Write the stream to ``sink``; returns the sink (e.g. to read a CollectSink later)."""
        if not isinstance(sink, Sink):
            raise ConfigError(f"sink: expected a sink (e.g. ls.CollectSink()), got {sink!r}")
        if any(s.sink is sink for s in self.pipeline._specs):
            raise ConfigError(f"sink: this {type(sink).__name__} is already used; create another")
        sink.bind(self.schema)
        spec_name, named = self.pipeline._name(name, sink.name)
        self.pipeline._add(
            _Spec("sink", spec_name, sink=sink, inputs=[(self._spec, self._port)], named=named)
        )
        return sink

    def dead_letters(self) -> Stream:
        """Records this node failed on, with its columns plus ``_error`` and ``_position``."""
        schema = None
        if self.schema is not None:
            schema = pa.schema(
                [*self.schema, pa.field("_error", pa.string()), pa.field("_position", pa.string())]
            )
        return Stream(self.pipeline, self._spec, "dead_letters", schema, self.time_column, ())


class WindowedStream:
    """The result of ``.window(...)``: call ``.aggregate(...)``; ``.late()`` gives late records."""

    def __init__(
        self,
        stream: Stream,
        spec: _Spec,
        window: Sliding | Session,
        emit: EmitMode,
        allowed_lateness: int,
        flush: str | None,
    ) -> None:
        self._stream = stream
        self._spec = spec
        self.window = window
        self.emit = emit
        self.allowed_lateness = allowed_lateness
        self.flush = flush

    def aggregate(self, **aggregates: Kernel | Aggregate) -> Stream:
        """Named aggregates, e.g. ``.aggregate(clicks=ls.count(), revenue=ls.sum("amount"))``."""
        if not aggregates:
            raise ConfigError("aggregate: name at least one aggregate, e.g. n=ls.count()")
        if self._spec.make is not None:
            raise ConfigError(f"operator={self._spec.name}: aggregate(...) was already called")
        stream = self._stream
        reserved = {*stream.keys, "window_start", "window_end", "_deleted"}
        kernels: dict[str, Kernel] = {}
        for out_name, agg in aggregates.items():
            if out_name in reserved:
                raise SchemaError(
                    f"aggregate: output name {out_name!r} clashes with a key or window column"
                )
            kernel = as_kernel(agg, f"aggregate {out_name!r}")
            kernel.bind(stream.schema, f"window aggregate {out_name!r}")
            kernels[out_name] = kernel
        schema = None
        if stream.schema is not None:
            schema = output_schema(
                [stream.schema.field(k) for k in stream.keys], kernels, self.emit
            )
        args = dict(
            emit=self.emit,
            allowed_lateness=self.allowed_lateness,
            keys=stream.keys,
            time_column=stream.time_column,
            flush=self.flush,
            schema=schema,
        )
        window = self.window
        self._spec.make = lambda: WindowOperator(window, kernels, **args)  # type: ignore[arg-type]
        return Stream(stream.pipeline, self._spec, "main", schema, "window_end", stream.keys)

    def late(self) -> Stream:
        """Records late for every window they belong to, with the input's columns."""
        s = self._stream
        return Stream(s.pipeline, self._spec, "late", s.schema, s.time_column, s.keys)
