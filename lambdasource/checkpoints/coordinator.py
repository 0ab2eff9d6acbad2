"""The checkpoint coordinator of one run: triggers, background writes, restore, metrics.

Protocol (DESIGN §3 "Checkpoints"): every ``interval`` the coordinator asks the runtime for a
checkpoint; each live source injects barrier ``n`` at its next emission (same id for all
sources) and snapshots its position; operators snapshot when every input delivered the barrier;
sinks ``flush()`` when it reaches them. When every sink acknowledged it, the runtime hands the
collected states to :meth:`CheckpointCoordinator.completed` — synchronously and cheaply (states
are immutable: engines share never-mutated arrays, everything else was frozen into bytes at
capture). Serialising and writing happen here, in the coordinator's task and worker threads, so
the pipeline keeps running while a checkpoint is written. Only after the manifest is written is
the checkpoint complete: sinks' ``on_checkpoint_complete`` runs (a two-phase sink commits what
it pre-committed at the barrier; its error fails the run), then sources', and old checkpoints of
the run's own lineage are pruned (never those of other lineages, see ``lineage.py``). A checkpoint
abandoned or not written is reported to the sinks (``on_checkpoint_failed``).

At most one checkpoint is in progress; a trigger due meanwhile waits for it. A checkpoint that
does not complete within ``timeout`` is abandoned and counted as failed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import (
    CheckpointError,
    CheckpointFormatError,
    IncompatibleStateError,
    LambdaSourceError,
    SinkError,
    close_after,
)
from .codec import readable
from .format import (
    FORMAT_VERSION,
    PICKLE_FORMAT_VERSION,
    Encoded,
    decode,
    encode_checkpoint,
    pickle_refused,
    thaw,
)
from .lineage import MARKER_FORMAT, Inventory

if TYPE_CHECKING:
    from ..runtime import Runtime
    from . import Checkpoints

log = logging.getLogger("lambdasource.checkpoints")

FORMAT_NAME = "lambdasource-checkpoint"
_HISTORY = 100


def fingerprint(graph: dict[str, str]) -> str:
    """A short hash of the graph description (node name → descriptor)."""
    text = json.dumps(graph, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _node(name: str, descriptor: str) -> str:
    return f"{'source' if descriptor.startswith('source ') else 'operator'}={name}"


_STATELESS = ("FilterOperator", "MapOperator", "UnionOperator")


def _current(saved: dict[str, str]) -> dict[str, str]:
    """A saved graph description in today's form: checkpoints written before stateless steps
    were left out and before descriptors dropped the node's inputs still restore."""
    out: dict[str, str] = {}
    for name, descriptor in saved.items():
        if descriptor.startswith(_STATELESS):
            continue
        out[name] = re.sub(r" inputs=\[[^\]]*\]$", "", descriptor)
    return out


def check_compatible(graph: dict[str, str], saved: dict[str, str], where: str) -> None:
    """Raise :class:`IncompatibleStateError` naming the first node whose state would not fit.

    ``graph`` and ``saved`` map each stateful node's name to what shapes its state. State is
    found by name only: a node missing from the checkpoint, one whose configuration changed, or
    a checkpointed node the graph no longer has, is an error naming it, listing what the
    checkpoint holds, and saying that ``name=`` pins a node to its state.
    """
    saved = _current(saved)
    held = ", ".join(f"{n} ({d})" for n, d in sorted(saved.items())) or "nothing"
    for name, descriptor in graph.items():
        if name not in saved:
            same = sorted(n for n, d in saved.items() if d == descriptor and n not in graph)
            hint = (
                f"the checkpoint has {same[0]!r} with the same configuration: if that is this "
                f"node, pass name={same[0]!r} to it"
                if same
                else "if the node was renamed, pass its old name with name=...; if it is new, "
                "start fresh with run(restore=None) (earlier checkpoints are kept)"
            )
            raise IncompatibleStateError(
                f"checkpoint {where}: {_node(name, descriptor)} ({descriptor}) has no state in "
                f"the checkpoint, which holds state for: {held}. State is kept by node name; "
                f"name= pins a node to its state: {hint}"
            )
        if saved[name] != descriptor:
            raise IncompatibleStateError(
                f"checkpoint {where}: {_node(name, descriptor)} changed: the checkpoint has "
                f"{saved[name]!r}, the graph has {descriptor!r}; its state does not fit. Start "
                "fresh with run(restore=None) (earlier checkpoints are kept) or restore the "
                "previous configuration"
            )
    for name in saved:
        if name not in graph:
            raise IncompatibleStateError(
                f"checkpoint {where}: {_node(name, saved[name])} ({saved[name]}) is in the "
                f"checkpoint but not in the graph (stateful nodes now: {sorted(graph)}); if a "
                f"node was renamed, pass name={name!r} to it; if it was removed, its state "
                "would be lost: start fresh with run(restore=None) (earlier checkpoints are kept)"
            )


class CheckpointCoordinator:
    """Drives checkpoints for one :class:`~lambdasource.runtime.Runtime` (see module docstring)."""

    def __init__(self, config: Checkpoints, graph: dict[str, str], pipeline: str) -> None:
        self.config = config
        self.store = config.store
        self.graph = graph
        self.fingerprint = fingerprint(graph)
        self.pipeline = pipeline
        self.runtime: Runtime | None = None
        self._ready: collections.deque[tuple[int, dict[str, Any], float]] = collections.deque()
        self._wake = asyncio.Event()
        # metrics
        self.completed_ids: collections.deque[int] = collections.deque(maxlen=_HISTORY)
        self.count = 0
        self.failed = 0
        self.abandoned = 0
        self._consecutive_failures = 0
        self.durations: collections.deque[float] = collections.deque(maxlen=_HISTORY)
        self.max_duration = 0.0
        self.total_duration = 0.0
        self.last_size = 0
        self.last_write_s = 0.0
        self.restored_from: int | None = None
        self.lineage = 0
        """The lineage this run writes (and prunes); set by :meth:`prepare`."""
        self.next_id = 1
        """The run's first checkpoint id (above every id at the URL); set by :meth:`prepare`."""
        self.skipped_corrupt: list[int] = []
        self.writing: int | None = None

    # restore ------------------------------------------------------------------------------------

    async def prepare(self, restore: str | int | None) -> tuple[int, dict[str, Any]] | None:
        """Open the store, choose this run's lineage and load the checkpoint to restore.

        ``"latest"``: the newest complete checkpoint of the newest lineage (a lineage branched
        from an older checkpoint that has none yet restores that checkpoint; a fresh lineage
        that has none starts fresh). An int: that checkpoint; unless it is the newest of the
        newest lineage, the run branches a new lineage from it. ``None``: start fresh in a new
        lineage. Nothing is ever deleted here (see ``lineage.py``); the run's checkpoint ids
        start above every id present. Returns ``(checkpoint id, node states)`` or None.
        """
        await self.store.open()
        inventory = await self.store.inventory()
        self.next_id = inventory.next_id()
        if restore is None:
            await self._fresh_lineage(inventory)
            return None
        if isinstance(restore, int):
            if restore not in inventory.complete:
                raise CheckpointError(
                    f"checkpoint {self.store.where(restore)}: not found (complete ones by "
                    f"lineage: {inventory.describe()})"
                )
            found = await self._load(restore)
            newest = inventory.newest_lineage()
            assert newest is not None
            members = inventory.members(newest)
            if members and members[-1] == restore:
                self.lineage = newest
            else:
                await self._new_lineage(parent=restore)
            return found
        newest = inventory.newest_lineage()
        if newest is None:  # nothing restorable at the URL (no marker either): lineage 0
            self.lineage = 0
            return None
        self.lineage = newest
        members = inventory.members(newest)
        for checkpoint_id in reversed(members):
            try:
                return await self._load(checkpoint_id)
            except (IncompatibleStateError, CheckpointFormatError):
                raise
            except CheckpointError as exc:
                log.warning("checkpoints: skipping %s: %s", self.store.where(checkpoint_id), exc)
                self.skipped_corrupt.append(checkpoint_id)
        if members:
            raise CheckpointError(
                f"checkpoints at {self.store.url}: none of the complete checkpoints {members} "
                f"of lineage {newest} is readable; refusing to start from scratch silently "
                "(run(restore=None) starts a new lineage and keeps them)"
            )
        parent = (await self.store.read_marker(newest)).get("parent")
        if isinstance(parent, int):  # a branch that has not checkpointed yet: its start point
            if parent not in inventory.complete:
                raise CheckpointError(
                    f"checkpoints at {self.store.url}: lineage {newest} branched from "
                    f"checkpoint {parent}, which is gone; restore=<id> or restore=None choose"
                )
            return await self._load(parent)
        others = [i for i in inventory.complete if inventory.lineage_of(i) != newest]
        log.info(
            "checkpoints: lineage %d at %s (started fresh) has no complete checkpoint; starting "
            "fresh%s",
            newest,
            self.store.url,
            f"; older checkpoints {others} are kept (restore=<id> resumes one)" if others else "",
        )
        return None

    async def _load(self, checkpoint_id: int) -> tuple[int, dict[str, Any]]:
        """Read, verify and decode one checkpoint (``CheckpointError`` when unreadable,
        ``IncompatibleStateError`` when the graph does not fit it)."""
        where = self.store.where(checkpoint_id)
        manifest = await self.store.read_manifest(checkpoint_id)
        self._check_manifest(manifest, where)
        raw = await self.store.read_data(checkpoint_id, manifest)
        payload = await asyncio.to_thread(decode, raw, where=where)
        if payload.get("checkpoint_id") != checkpoint_id:
            raise CheckpointError(f"checkpoint {where}: state belongs to another checkpoint")
        self.restored_from = checkpoint_id
        log.info("checkpoints: restoring %s", where)
        return checkpoint_id, payload["nodes"]

    async def _fresh_lineage(self, inventory: Inventory) -> None:
        """``restore=None``: a lineage with no state to restore, earlier checkpoints kept."""
        newest = inventory.newest_lineage()
        if newest is None:  # nothing restorable at the URL (no marker either): lineage 0
            self.lineage = 0
            return
        if (  # (lineage 0 always has members)
            not inventory.members(newest)
            and (await self.store.read_marker(newest)).get("parent") is None
        ):
            self.lineage = newest  # a fresh lineage that never checkpointed: reuse it
            return
        await self._new_lineage(parent=None)
        log.info(
            "checkpoints: fresh start in lineage %d at %s; earlier checkpoints are kept "
            "(by lineage: %s); Checkpoints.clear() deletes them",
            self.lineage,
            self.store.url,
            inventory.describe(),
        )

    async def _new_lineage(self, parent: int | None) -> None:
        """Write the marker of a new lineage at the run's first id (before anything else)."""
        lineage = self.next_id
        body = {
            "format": MARKER_FORMAT,
            "lineage": lineage,
            "parent": parent,
            "created_at": datetime.now(UTC).isoformat(),
            "pipeline": self.pipeline,
        }
        await self.store.put_marker(lineage, json.dumps(body, indent=1).encode())
        self.lineage = lineage

    def _check_manifest(self, manifest: dict[str, Any], where: str) -> None:
        if (
            manifest.get("format") == FORMAT_NAME
            and manifest.get("version") == PICKLE_FORMAT_VERSION
        ):
            raise pickle_refused(f"checkpoint {where}")
        if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {where}: format {manifest.get('format')!r} version "
                f"{manifest.get('version')!r}; this lambdasource writes {FORMAT_NAME!r} "
                f"version {FORMAT_VERSION}"
            )
        saved = manifest.get("graph")
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {where}: manifest has no graph description")
        check_compatible(self.graph, saved, where)

    # running ------------------------------------------------------------------------------------

    def completed(self, checkpoint_id: int, states: dict[str, Any], started: float) -> None:
        """Every sink acknowledged ``checkpoint_id``: queue its (immutable) states for writing.

        ``started`` is the ``time.perf_counter()`` of the trigger.
        """
        self._ready.append((checkpoint_id, states, started))
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """The coordinator task: trigger, write, until the run's sinks have all finished."""
        runtime = self.runtime
        assert runtime is not None
        interval = self.config.interval / 1e6
        timeout = self.config.timeout / 1e6
        next_at = time.perf_counter() + interval
        try:
            await self._loop(runtime, interval, timeout, next_at)
        except BaseException as error:
            reason = runtime.reason(error)
            await close_after("closing the checkpoint store", self.store.close(), reason)
            raise
        await self.store.close()

    async def _loop(
        self, runtime: Runtime, interval: float, abandon_after: float, next_at: float
    ) -> None:
        """Write completed checkpoints, abandon overdue ones, trigger new ones (seconds)."""
        timeout = abandon_after
        while True:
            if self._ready:
                checkpoint_id, states, started = self._ready.popleft()
                await self._write(checkpoint_id, states, started)
                continue
            if runtime.done:
                return
            now = time.perf_counter()
            pending = runtime.pending_checkpoints()
            for checkpoint_id, started in pending.items():
                if now - started > timeout:
                    runtime.abandon_checkpoint(checkpoint_id)
                    await self._sinks_failed(checkpoint_id)
                    self.failed += 1
                    self.abandoned += 1
                    log.warning(
                        "checkpoints: checkpoint %d did not complete within %.0f s; abandoned",
                        checkpoint_id,
                        timeout,
                    )
            pending = runtime.pending_checkpoints()
            wait: float | None
            if pending:
                oldest = min(pending.values())
                wait = max(0.0, oldest + timeout - now)
            elif now >= next_at:
                if runtime.has_live_sources():
                    runtime.request_checkpoint()
                next_at = now + interval
                continue
            else:
                wait = next_at - now
            self._wake.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _write(self, checkpoint_id: int, states: dict[str, Any], started: float) -> None:
        runtime = self.runtime
        assert runtime is not None
        t0 = time.perf_counter()
        self.writing = checkpoint_id
        where = self.store.where(checkpoint_id)
        try:
            encoded = await self._store(
                checkpoint_id, states, {source.name for source in runtime.sources}
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed += 1
            self._consecutive_failures += 1
            log.error("checkpoints: writing %s failed: %r", where, exc)
            await self._sinks_failed(checkpoint_id)
            if self._consecutive_failures > self.config.tolerable_failures:
                if isinstance(exc, LambdaSourceError):
                    raise
                raise CheckpointError(f"checkpoint {where}: write failed: {exc!r}") from exc
            return
        finally:
            self.writing = None
        self._consecutive_failures = 0
        end = time.perf_counter()
        self._written(checkpoint_id, encoded, end - started, end - t0)
        for sink in runtime.sinks:
            try:
                await sink.sink.on_checkpoint_complete(checkpoint_id)
            except (LambdaSourceError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise SinkError(
                    f"sink={sink.name}: on_checkpoint_complete({checkpoint_id}) failed: {exc!r}"
                ) from exc
        for node in runtime.sources:
            try:
                await node.source.on_checkpoint_complete(checkpoint_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "source=%s: on_checkpoint_complete(%d) failed: %r",
                    node.name,
                    checkpoint_id,
                    exc,
                )
        try:
            await self.store.prune(self.config.keep, lineage=self.lineage)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("checkpoints: pruning %s failed: %r", self.store.url, exc)

    async def _store(
        self, checkpoint_id: int, states: dict[str, Any], sources: set[str], final: bool = False
    ) -> Encoded:
        """Encode ``states`` (off the event loop) and write them with their manifest."""

        def encode_all() -> tuple[Encoded, dict[str, Any]]:
            positions = {name: readable(thaw(states[name])) for name in sources & set(states)}
            return encode_checkpoint(checkpoint_id, states), positions

        encoded, positions = await asyncio.to_thread(encode_all)
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "checkpoint_id": checkpoint_id,
            "created_at": datetime.now(UTC).isoformat(),
            "pipeline": self.pipeline,
            "fingerprint": self.fingerprint,
            "lineage": self.lineage,
            "graph": self.graph,
            "state_bytes": encoded.sizes,  # per node (sources, operators, sink:<name>)
            "positions": positions,  # for people and `inspect`; restores read the state
        }
        if final:
            manifest["final"] = True  # write_final: the run had ended (scale-out completion)
        await self.store.write(checkpoint_id, encoded, manifest)
        return encoded

    async def write_initial(self, states: dict[str, Any], sources: set[str]) -> int:
        """Write ``states`` as the run's first checkpoint before the run starts (the state
        bootstrap's: lake done, stream at its handoff); returns its id. Errors propagate: a
        bootstrap whose state cannot be kept must not go on as if it could."""
        checkpoint_id = self.next_id
        t0 = time.perf_counter()
        encoded = await self._store(checkpoint_id, states, sources)
        self.next_id = checkpoint_id + 1
        duration = time.perf_counter() - t0
        self._written(checkpoint_id, encoded, duration, duration)
        return checkpoint_id

    async def write_final(self) -> int | None:
        """After a run that ended by itself (every sink finished): write every node's final
        state as one more checkpoint and return its id (None when the run did not end so, or
        the checkpoint could not be completed); its manifest says ``"final": true``. Sinks are
        not called (they have ended), and nothing is pruned. A scale-out task uses it so that
        the next owner of a complete partition restores it at its end instead of replaying
        from an earlier checkpoint, and workers see which partitions are complete."""
        runtime = self.runtime
        if runtime is None or not runtime.done or runtime.status != "finished":
            return None
        checkpoint_id = runtime.request_checkpoint()  # every node has its final state
        ready = [entry for entry in self._ready if entry[0] == checkpoint_id]
        if not ready:
            return None
        self._ready.remove(ready[0])
        _, states, started = ready[0]
        await self.store.open()
        try:
            sources = {source.name for source in runtime.sources}
            encoded = await self._store(checkpoint_id, states, sources, final=True)
        finally:
            await self.store.close()
        end = time.perf_counter()
        self._written(checkpoint_id, encoded, end - started, end - started)
        return checkpoint_id

    def _written(self, checkpoint_id: int, encoded: Encoded, duration: float, write: float) -> None:
        """Count a checkpoint written in ``write`` s, ``duration`` s after its trigger."""
        self.count += 1
        self.completed_ids.append(checkpoint_id)
        self.durations.append(duration)
        self.total_duration += duration
        self.max_duration = max(self.max_duration, duration)
        self.last_size = encoded.size
        self.last_write_s = write

    async def _sinks_failed(self, checkpoint_id: int) -> None:
        """Tell every sink that ``checkpoint_id`` will never complete (errors fail the run)."""
        assert self.runtime is not None
        for sink in self.runtime.sinks:
            try:
                await sink.sink.on_checkpoint_failed(checkpoint_id)
            except (LambdaSourceError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise SinkError(
                    f"sink={sink.name}: on_checkpoint_failed({checkpoint_id}) failed: {exc!r}"
                ) from exc

    # metrics ------------------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        durations = list(self.durations)
        return {
            "url": self.store.url,
            "count": self.count,
            "failed": self.failed,
            "abandoned": self.abandoned,
            "last_id": self.completed_ids[-1] if self.completed_ids else None,
            "last_duration_s": durations[-1] if durations else None,
            "mean_duration_s": self.total_duration / self.count if self.count else None,
            "max_duration_s": self.max_duration if self.count else None,
            "last_write_s": self.last_write_s if self.count else None,
            "size_bytes": self.last_size,
            "restored_from": self.restored_from,
            "lineage": self.lineage,
            "skipped_corrupt": list(self.skipped_corrupt),
            "writing": self.writing,
        }
