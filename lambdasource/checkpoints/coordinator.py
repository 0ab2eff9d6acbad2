"""The checkpoint coordinator of one run: triggers, background writes, restore, metrics.

Protocol (DESIGN §3 "Checkpoints"): every ``interval`` the coordinator asks the runtime for a
checkpoint; each live source injects barrier ``n`` at its next emission (same id for all
sources) and snapshots its position; operators snapshot when every input delivered the barrier;
sinks ``flush()`` when it reaches them. When every sink acknowledged it, the runtime hands the
collected states to :meth:`CheckpointCoordinator.completed` — synchronously and cheaply (states
are immutable: engines share never-mutated arrays, everything else was frozen into bytes at
capture). Serialising and writing happen here, in the coordinator's task and worker threads, so
the pipeline keeps running while a checkpoint is written. Only after the manifest is written is
the checkpoint complete: sources' ``on_checkpoint_complete`` runs, old checkpoints are pruned.

At most one checkpoint is in progress; a trigger due meanwhile waits for it. A checkpoint that
does not complete within ``timeout`` is abandoned and counted as failed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, IncompatibleStateError, LambdaSourceError
from .format import FORMAT_VERSION, decode, encode

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


def check_compatible(graph: dict[str, str], saved: dict[str, str], where: str) -> None:
    """Raise :class:`IncompatibleStateError` naming the first node whose state would not fit."""
    for name, descriptor in graph.items():
        if name not in saved:
            raise IncompatibleStateError(
                f"checkpoint {where}: operator={name} ({descriptor}) is not in the checkpoint; "
                f"it holds {sorted(saved)}. Start fresh with run(restore=None) or use another URL"
            )
        if saved[name] != descriptor:
            raise IncompatibleStateError(
                f"checkpoint {where}: operator={name} changed: the checkpoint has "
                f"{saved[name]!r}, the graph has {descriptor!r}"
            )
    for name in saved:
        if name not in graph:
            raise IncompatibleStateError(
                f"checkpoint {where}: operator={name} ({saved[name]}) is in the checkpoint but "
                "not in the graph"
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
        self.skipped_corrupt: list[int] = []
        self.writing: int | None = None

    # restore ------------------------------------------------------------------------------------

    async def prepare(self, restore: str | int | None) -> tuple[int, dict[str, Any]] | None:
        """Open the store; ``None``: delete old checkpoints; else load the one to restore.

        Returns ``(checkpoint id, node states)`` or None when there is nothing to restore.
        """
        await self.store.open()
        if restore is None:
            cleared = await self.store.clear()
            if cleared:
                log.info("checkpoints: fresh start, deleted %d old checkpoint(s)", len(cleared))
            return None
        ids = await self.store.complete_ids()
        if isinstance(restore, int):
            if restore not in ids:
                raise CheckpointError(
                    f"checkpoint {self.store.where(restore)}: not found (complete ones: {ids})"
                )
            ids = [restore]
        for checkpoint_id in reversed(ids):
            where = self.store.where(checkpoint_id)
            try:
                manifest = await self.store.read_manifest(checkpoint_id)
                self._check_manifest(manifest, where)
                raw = await self.store.read_data(checkpoint_id, manifest)
                payload = await asyncio.to_thread(decode, raw, where=where)
            except IncompatibleStateError:
                raise
            except CheckpointError as exc:
                if isinstance(restore, int):
                    raise
                log.warning("checkpoints: skipping %s: %s", where, exc)
                self.skipped_corrupt.append(checkpoint_id)
                continue
            if payload.get("checkpoint_id") != checkpoint_id:
                raise CheckpointError(f"checkpoint {where}: state belongs to another checkpoint")
            self.restored_from = checkpoint_id
            log.info("checkpoints: restoring %s", where)
            return checkpoint_id, payload["nodes"]
        if ids:
            raise CheckpointError(
                f"checkpoints at {self.store.url}: none of the complete checkpoints {ids} is "
                "readable; refusing to start from scratch silently (use run(restore=None))"
            )
        return None

    def _check_manifest(self, manifest: dict[str, Any], where: str) -> None:
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
        finally:
            await self.store.close()

    async def _write(self, checkpoint_id: int, states: dict[str, Any], started: float) -> None:
        runtime = self.runtime
        assert runtime is not None
        t0 = time.perf_counter()
        self.writing = checkpoint_id
        where = self.store.where(checkpoint_id)
        try:
            payload = {"checkpoint_id": checkpoint_id, "nodes": states}
            encoded = await asyncio.to_thread(encode, payload)
            manifest = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "checkpoint_id": checkpoint_id,
                "created_at": datetime.now(UTC).isoformat(),
                "pipeline": self.pipeline,
                "fingerprint": self.fingerprint,
                "graph": self.graph,
            }
            await self.store.write(checkpoint_id, encoded, manifest)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed += 1
            self._consecutive_failures += 1
            log.error("checkpoints: writing %s failed: %r", where, exc)
            if self._consecutive_failures > self.config.tolerable_failures:
                if isinstance(exc, LambdaSourceError):
                    raise
                raise CheckpointError(f"checkpoint {where}: write failed: {exc!r}") from exc
            return
        finally:
            self.writing = None
        self._consecutive_failures = 0
        end = time.perf_counter()
        duration = end - started
        self.count += 1
        self.completed_ids.append(checkpoint_id)
        self.durations.append(duration)
        self.total_duration += duration
        self.max_duration = max(self.max_duration, duration)
        self.last_size = encoded.size
        self.last_write_s = end - t0
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
            await self.store.prune(self.config.keep)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("checkpoints: pruning %s failed: %r", self.store.url, exc)

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
            "skipped_corrupt": list(self.skipped_corrupt),
            "writing": self.writing,
        }
