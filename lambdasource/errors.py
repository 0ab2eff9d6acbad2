"""The one error hierarchy of lambdasource.

Every error the library raises on purpose derives from :class:`LambdaSourceError`; errors of the
libraries underneath (aiokafka, botocore, pyiceberg, duckdb) are translated at the boundary with
``raise ... from``, so the original stays attached as ``__cause__``. Messages name the identifiers a
user needs to find the problem (``operator=window column=amount``, ``partition=3 offset=1200``).

::

    LambdaSourceError
    ├── ConfigError            a pipeline or component is misconfigured; raised at build time
    │   └── SchemaError        unknown column, wrong type, irreconcilable schemas
    ├── SourceError            reading input failed
    │   ├── LakeReadError      a lake file/partition is unreadable or corrupt
    │   │   └── LakeStateError a job's pinned lake state (or a position in it) cannot be read again
    │   ├── StreamError        the stream (Kafka) failed
    │   │   └── StreamGapError offsets to read are gone (retention) or never existed (recreated topic)
    │   └── HandoffError       lake → stream handoff cannot be done correctly
    │       └── HandoffGapError  retention deleted offsets the handoff needs
    ├── OperatorError          a user function or operator failed while processing
    ├── StateError             keyed state / timers misused or inconsistent
    │   └── IncompatibleStateError  a checkpoint does not fit the graph
    ├── CheckpointError        writing or reading a checkpoint failed
    └── SinkError              writing to a sink failed

``retriable`` (a class attribute, as in aiokafka) says whether retrying the same call may succeed.

One error per failure reaches the user: the *first* one. Errors that happen after it (another
task failing while the run is torn down, a ``close()`` failing during cleanup) never replace it;
:func:`log_suppressed` logs them, with their cause, on the ``lambdasource`` logger.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable


class LambdaSourceError(Exception):
    """Root of every error lambdasource raises on purpose."""

    retriable: bool = False


class ConfigError(LambdaSourceError):
    """A pipeline or component is misconfigured (raised when the graph is built)."""


class SchemaError(ConfigError):
    """An unknown column, a column of the wrong type, or schemas that cannot be unified."""


class SourceError(LambdaSourceError):
    """Reading from a source failed."""


class LakeReadError(SourceError):
    """A lake file or partition could not be read; the message names it."""


class LakeStateError(LakeReadError):
    """The lake state a job pinned (its files, commit sequence or Iceberg snapshot), or a
    restored position in it, cannot be read again exactly; the message names the file."""


class StreamError(SourceError):
    """The stream (Kafka) failed."""

    retriable = True


class StreamGapError(StreamError):
    """Offsets the stream must read next are out of the partition's range: retention deleted
    them before they were read, or the topic was recreated (partition and offsets named)."""

    retriable = False


class HandoffError(SourceError):
    """The handoff from lake to stream cannot be done correctly."""


class HandoffGapError(HandoffError):
    """Retention already deleted stream offsets the lake needs (partition and range named)."""


class OperatorError(LambdaSourceError):
    """A user function or operator failed while processing; ``__cause__`` holds the original."""


class StateError(LambdaSourceError):
    """Keyed state or timers were misused, or state is inconsistent."""


class IncompatibleStateError(StateError):
    """A checkpoint's state does not fit the graph being restored (operator named)."""


class CheckpointError(LambdaSourceError):
    """Writing or reading a checkpoint failed."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint in a format this version does not read (pickle, lambdasource before
    2026-12): a restore stops here instead of trying older checkpoints of the same format."""


class SinkError(LambdaSourceError):
    """Writing to a sink failed."""


def log_suppressed(error: BaseException, first: BaseException, *, during: str = "") -> None:
    """Log ``error``, which is not raised because ``first`` is (the first error wins).

    The record (level ERROR, logger ``lambdasource``) carries ``error``'s traceback and its
    ``__cause__`` chain; its message names both errors, e.g. ``sink=store failed in close: …
    (while handling: operator=window failed in on_batch: …)``.
    """
    where = f" {during}" if during else ""
    logging.getLogger("lambdasource").error(
        "further error%s, not raised: %s (while handling: %s)",
        where,
        _describe(error),
        str(first) or type(first).__name__,
        exc_info=(type(error), error, error.__traceback__),
    )


async def close_after(what: str, close: Awaitable[None], error: BaseException | None) -> None:
    """Await ``close`` (a cleanup step named ``what``). When ``error`` is propagating already, a
    failure of ``close`` is logged (:func:`log_suppressed`) and ``error`` stays the one raised."""
    if error is None:
        await close
        return
    try:
        await close
    except Exception as exc:
        log_suppressed(exc, error, during=what)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    cause = error.__cause__
    if cause is None or repr(cause) in text:
        return text
    return f"{text} (cause: {cause!r})"


__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "ConfigError",
    "HandoffError",
    "HandoffGapError",
    "IncompatibleStateError",
    "LakeReadError",
    "LambdaSourceError",
    "OperatorError",
    "SchemaError",
    "SinkError",
    "SourceError",
    "StateError",
    "StreamError",
    "StreamGapError",
]


class MisplacedKeyError(StreamError):
    """A record whose key Kafka's default partitioner maps to another partition than the one
    it arrived on (or was archived from): the stream is not co-partitioned by that key, so a
    task of one partition would miss it (topic, partition, offset or lake file named)."""

    retriable = False


__all__ += ["MisplacedKeyError"]


class ScaleOutError(LambdaSourceError):
    """A job run as several workers (one consumer group) failed as a whole: the group could not
    be joined or kept, or a worker process or one of its partition tasks failed (named)."""


__all__ += ["ScaleOutError"]
