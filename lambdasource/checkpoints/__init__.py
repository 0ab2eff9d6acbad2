"""``ls.Checkpoints``: periodic, aligned checkpoints of a pipeline to a local directory or S3.

A checkpoint is the state of every source (its position), operator (window state, keyed state,
timers) at one aligned barrier, written when every sink has flushed the writes before it. It is
written atomically (``state.bin`` then ``MANIFEST.json``, see ``store.py``) in the background; a
restarted run resumes from the newest complete checkpoint (``run(restore="latest")``).

A run never deletes checkpoints other than its own lineage's old ones (``keep``): starting fresh
(``run(restore=None)``) begins a new lineage beside the earlier checkpoints (``lineage.py``).
Deleting them takes an explicit call: ``await Checkpoints(url).clear()``.
"""

from __future__ import annotations

from ..errors import ConfigError, close_after
from ..s3 import S3Config
from ..timeutil import Duration, format_duration, parse_duration
from .store import CheckpointStore, LocalStore, S3Store, store_for

__all__ = ["CheckpointStore", "Checkpoints", "LocalStore", "S3Store"]


class Checkpoints:
    """Where and how often to checkpoint.

    ``url``: a local path, ``file:///dir`` or ``s3://bucket/prefix`` (``s3`` configures the
    endpoint; default: the AWS environment). ``interval``: time between checkpoint triggers
    (a trigger is skipped while the previous checkpoint is still in progress). ``keep``: complete
    checkpoints of the run's lineage to retain (other lineages' are never pruned; ``clear()``
    deletes everything). ``tolerable_failures``: consecutive failed checkpoint writes that are
    only counted and logged; one more fails the run with ``CheckpointError``. ``timeout``: a
    checkpoint not complete by then is abandoned (counted as failed). ``store`` overrides
    the store built from ``url`` (tests, custom backends).
    """

    def __init__(
        self,
        url: str,
        interval: Duration = "30s",
        keep: int = 3,
        s3: S3Config | None = None,
        *,
        tolerable_failures: int = 3,
        timeout: Duration = "10m",
        store: CheckpointStore | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ConfigError(f"Checkpoints: url must be a non-empty string, got {url!r}")
        self.interval = parse_duration(interval, name="Checkpoints(interval)")
        if self.interval <= 0:
            raise ConfigError(f"Checkpoints: interval must be positive, got {interval!r}")
        self.timeout = parse_duration(timeout, name="Checkpoints(timeout)")
        if self.timeout <= 0:
            raise ConfigError(f"Checkpoints: timeout must be positive, got {timeout!r}")
        if not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"Checkpoints: keep must be an integer >= 1, got {keep!r}")
        if tolerable_failures < 0:
            raise ConfigError(
                f"Checkpoints: tolerable_failures must be >= 0, got {tolerable_failures!r}"
            )
        if s3 is not None and not isinstance(s3, S3Config):
            raise ConfigError(f"Checkpoints: s3 must be an ls.S3Config, got {s3!r}")
        self.url = url
        self.keep = keep
        self.s3 = s3
        self.tolerable_failures = tolerable_failures
        self._store = store if store is not None else store_for(url, s3)

    @property
    def store(self) -> CheckpointStore:
        return self._store

    async def clear(self) -> list[int]:
        """Delete every checkpoint and lineage marker at ``url``; returns the deleted ids.

        The only way checkpoints are deleted besides pruning (a run keeps the ``keep`` newest of
        its own lineage): ``run(restore=None)`` starts fresh without deleting anything. Call it
        while no pipeline uses the URL.
        """
        store = self._store
        await store.open()
        try:
            deleted = await store.clear()
        except BaseException as error:
            await close_after("closing the checkpoint store", store.close(), error)
            raise
        await store.close()
        return deleted

    def __repr__(self) -> str:
        return (
            f"Checkpoints({self.url!r}, interval={format_duration(self.interval)!r}, "
            f"keep={self.keep})"
        )
