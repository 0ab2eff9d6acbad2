"""Calling Kinesis: error classification, backoff and one-line errors (shared by every caller).

Kinesis answers a busy shard with ``ProvisionedThroughputExceededException`` (GetRecords over
5 calls or 2 MB per second per shard), a busy control plane with ``LimitExceededException`` and an
encrypted stream whose KMS key is throttled with ``KMSThrottlingException`` (:data:`THROTTLING`);
all are waited out with exponential backoff with full jitter, capped (:func:`backoff_delay`),
indefinitely — throttling is normal operation, not a failure. Transient transport failures
(connection errors, timeouts, 5xx) are retried at most ``retries`` times. Anything else is a
:class:`~lambdasource.errors.StreamError` naming endpoint, stream and what was asked.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from ...errors import StreamError

THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",  # GetRecords: over 5 calls or 2 MB/s per shard
        "LimitExceededException",  # control plane (ListShards, GetShardIterator)
        "KMSThrottlingException",  # an encrypted stream's KMS key is being throttled
        "ThrottlingException",  # AWS's generic throttling answer
    }
)
EXPIRED = "ExpiredIteratorException"
TRANSIENT = frozenset({"InternalFailure", "ServiceUnavailable", "InternalFailureException"})

BACKOFF_BASE = 0.05  # seconds: the first wait after a throttled call (before jitter)
BACKOFF_CAP = 5.0  # seconds: the longest wait

T = TypeVar("T")


async def all_or_nothing(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``calls`` concurrently (results in order). When one fails, the others are
    cancelled and awaited before its error is raised (itself, not an ExceptionGroup): no read of
    another shard is left running on a client about to close."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a ``ClientError`` (None for anything else)."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def is_transient(exc: BaseException) -> bool:
    """A failure that retrying the same call may cure (transport, timeout, 5xx)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in TRANSIENT or int(status or 0) >= 500
    return isinstance(exc, BotoCoreError | OSError | asyncio.TimeoutError)


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base·2^attempt)] — never 0 for
    the first attempts, so a throttled shard is not hammered."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
    return max(BACKOFF_BASE / 2, rng.uniform(0, ceiling))


def describe_failure(endpoint: str, where: str, exc: BaseException) -> str:
    """One line naming the endpoint, the place (``stream=… shard=…``) and the cause."""
    if isinstance(exc, EndpointConnectionError):
        return f"{where}: cannot reach the Kinesis endpoint {endpoint}: {exc}"
    code = error_code(exc)
    if code == "ResourceNotFoundException":
        message = (
            exc.response.get("Error", {}).get("Message", "") if isinstance(exc, ClientError) else ""
        )
        return f"{where}: not found on the Kinesis endpoint {endpoint}: {message}"
    if code is not None:
        return f"{where}: Kinesis at {endpoint} answered {code}: {exc}"
    return f"{where}: Kinesis at {endpoint} failed: {type(exc).__name__}: {exc}"


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    endpoint: str,
    where: str,
    retries: int,
    rng: random.Random,
    on_throttled: Callable[[], None] | None = None,
) -> T:
    """``await call()``, waiting out throttling (counted through ``on_throttled``) and retrying
    transient failures at most ``retries`` times; anything else is a StreamError (not
    retriable when the stream or shard does not exist)."""
    throttled = failed = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if error_code(exc) in THROTTLING:
                if on_throttled is not None:
                    on_throttled()
                await asyncio.sleep(backoff_delay(throttled, rng))
                throttled += 1
                continue
            if is_transient(exc) and failed < retries:
                await asyncio.sleep(backoff_delay(failed, rng))
                failed += 1
                continue
            error = StreamError(describe_failure(endpoint, where, exc))
            error.retriable = error_code(exc) not in ("ResourceNotFoundException",) and (
                is_transient(exc)
            )
            raise error from exc
