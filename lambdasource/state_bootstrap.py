"""``bootstrap="state"``: the lake part of a job in one columnar pass instead of a replay.

DESIGN §3 "Bootstrap from state". A job whose windows are fed by the lambda source (or a lake
alone) through stateless steps runs in two phases:

1. **The pass.** The graph runs once over the lake alone: the lambda source plans its handoff
   as a run would (pinned lake state, cutoff or recorded offsets, the stream's start offsets and
   gap checks) but reads only the lake, with the lake's own watermarks; stateless steps
   (filters, maps, ``process()`` operators with ``stateful = False``) run over its batches as
   always; each window aggregates per (key, slice) without completing anything (bulk mode,
   :mod:`.windows.bulk`) and at the end builds its state as of the lake's last watermark,
   completing every window at once — so the sinks get what a replay would have left in them
   (``latest``: each key's newest value; ``changes``/``every``: the lake range's changelog), in
   bulk. The nodes' end states are the job's first checkpoint (written to the checkpoint store
   when the pipeline has one).
2. **The stream.** The pipeline runs again from that state, exactly like a resume from a
   checkpoint: the lake is done, the stream starts at the handoff.

Why it equals a replay: the lake never emits a watermark that makes one of its records late
(DESIGN §3), so each window's state after the lake is a function of its records and the last
watermark, whatever the batching; the first checkpoint carries the lake's final watermark (the
cutoff − 1µs, or the lake's high-water mark − 1µs for offsets handoff), which the lake would have
emitted. A stateless step can still make records late (a map moving times back): a window that
sees one leaves bulk mode at that watermark and replays the rest of the pass record by record. A restart finds that checkpoint and does not bootstrap again; a pass killed before it
wrote the checkpoint runs again (upserts make its writes idempotent).

A graph outside that shape replays, with the reason in one warning and in
``metrics()["bootstrap"]``: see :func:`blocker`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .nodes import OperatorNode
from .runtime import Runtime
from .sources.lake.source import LakeSource
from .sources.lambda_source import LambdaSource
from .windows.operator import WindowOperator

log = logging.getLogger("lambdasource.bootstrap")

BOOTSTRAP_MODES = ("replay", "state")


@dataclass
class BootstrapReport:
    """What the bootstrap did (``pipeline.metrics()["bootstrap"]``)."""

    mode: str  # "replay" | "state"
    requested: str
    reason: str | None = None  # why a requested state bootstrap replays instead
    seconds: float | None = None  # the pass, wall clock
    checkpoint_id: int | None = None  # the first checkpoint it wrote (None: kept in memory)
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)  # per window: rows, slices

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "requested": self.requested,
            "reason": self.reason,
            "seconds": self.seconds,
            "checkpoint_id": self.checkpoint_id,
            "windows": {name: dict(report) for name, report in self.windows.items()},
        }


def _downstream(node: Any) -> list[Any]:
    return [edge.target for edges in node.outputs.values() for edge in edges]


def blocker(runtime: Runtime) -> str | None:
    """Why this graph cannot be bootstrapped from state (None: it can): one source, a lambda
    source or a lake; every operator a window with built-in aggregates (``windows.bulk``) or
    stateless (filter, map, a ``process()`` operator with ``stateful = False``: it sees the
    lake's batches, and of its watermarks only the last); no window fed by another window; no
    sink that commits with checkpoints."""
    if len(runtime.sources) != 1:
        return f"the graph has {len(runtime.sources)} sources; the pass reads one lake"
    source = runtime.sources[0].source
    if not isinstance(source, LambdaSource | LakeSource):
        return (
            f"source {runtime.sources[0].name!r} is a {type(source).__name__}, not a lambda "
            "source or a lake: there is no lake part to build state from"
        )
    windows = [node for node in runtime.operators if isinstance(node.op, WindowOperator)]
    if not windows:
        return "the graph has no window: there is no state to build"
    for node in runtime.operators:
        if isinstance(node.op, WindowOperator):
            reason = node.op.bulk_unsupported()
            if reason is not None:
                return f"window {node.name!r}: {reason}"
        elif node.op.stateful:
            return (
                f"operator {node.name!r} ({type(node.op).__name__}) keeps state, which only a "
                "replay can build"
            )
    for window in windows:
        stack, seen = _downstream(window), set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, OperatorNode) and isinstance(node.op, WindowOperator):
                return f"window {node.name!r} is fed by window {window.name!r}"
            if isinstance(node, OperatorNode):
                stack.extend(_downstream(node))
    for sink in runtime.sinks:
        if getattr(sink.sink, "exactly_once", False):
            return (
                f"sink {sink.name!r} commits its writes with checkpoints (exactly_once); "
                "the pass writes outside one"
            )
    return None


async def run_pass(runtime: Runtime, report: BootstrapReport) -> dict[str, Any]:
    """Run the pass on ``runtime`` (built for it, no checkpoint coordinator; ``blocker`` said
    None) and return the nodes' end states: the job's first checkpoint."""
    assert runtime.coordinator is None
    source = runtime.sources[0].source
    lambda_source = source if isinstance(source, LambdaSource) else None
    windows = {
        node.name: node.op for node in runtime.operators if isinstance(node.op, WindowOperator)
    }
    for window in windows.values():
        window.start_bulk()
    if lambda_source is not None:
        lambda_source.lake_only = True
    started = time.perf_counter()
    try:
        await runtime.run()
    finally:
        if lambda_source is not None:
            lambda_source.lake_only = False
    report.seconds = time.perf_counter() - started
    for name, window in windows.items():
        report.windows[name] = dict(window.bulk_report or {})
    log.info(
        "bootstrap: state built from the lake in %.1f s (%s)%s",
        report.seconds,
        ", ".join(
            f"{name}: {w.get('rows', 0)} rows → {w.get('slices', 0)} slices"
            for name, w in report.windows.items()
        ),
        "; the stream continues from the handoff" if lambda_source is not None else "",
    )
    return dict(runtime.final_states)
