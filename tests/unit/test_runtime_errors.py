"""The first error of a run is the one raised; every later one is logged, never dropped.

A run can fail in several places: an operator, then its own ``close()``, a sink's ``close()``
during the teardown, another task reacting to the cancellation, the checkpoint store's
``close()``. The user sees the first error (with its cause); the others go to the
``lambdasource`` logger with theirs.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import lambdasource as ls
from lambdasource.checkpoints import Checkpoints, LocalStore

from .scripted import Scripted, batch


class Boom(ls.Operator):
    """Fails on its second batch and, when ``close_fails``, in ``close`` too."""

    def __init__(self, close_fails: bool = True) -> None:
        super().__init__()
        self.seen = 0
        self.close_fails = close_fails
        self.closed = False

    def on_batch(self, b: pa.RecordBatch, ctx: ls.Context) -> None:
        self.seen += 1
        if self.seen > 1:
            raise ValueError("boom on purpose")
        ctx.emit(b)

    def close(self, ctx: ls.Context) -> None:
        self.closed = True
        if self.close_fails:
            raise RuntimeError("close failed too")


class CloseFails(ls.CollectSink):
    closed = False

    async def close(self) -> None:
        CloseFails.closed = True
        raise OSError("store connection lost while closing")


def _logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lambdasource" and r.levelno >= logging.ERROR]


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_operator_error_wins_over_its_close_and_a_sink_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    op = Boom()
    p = ls.Pipeline()
    steps = [batch((1, 1, 1)), batch((2, 1, 1)), batch((3, 1, 1))]
    p.source(Scripted("s", steps)).process(op, name="boom").sink(CloseFails(), name="store")
    with (
        caplog.at_level(logging.ERROR, logger="lambdasource"),
        pytest.raises(ls.OperatorError, match="operator=boom failed in on_batch") as info,
    ):
        await p.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert op.closed and CloseFails.closed
    assert not _other_tasks()
    records = _logged(caplog)
    messages = [r.getMessage() for r in records]
    closing_op = [m for m in messages if "operator=boom failed in close" in m]
    closing_sink = [m for m in messages if "sink=store failed in close" in m]
    assert len(closing_op) == 1 and len(closing_sink) == 1, messages
    for message in (*closing_op, *closing_sink):
        assert "operator=boom failed in on_batch" in message  # names the error it gave way to
    # the logged records carry the error itself and its cause (the original exception)
    for record in records:
        assert record.exc_info is not None and record.exc_info[1] is not None
    causes = {type(r.exc_info[1].__cause__) for r in records if r.exc_info and r.exc_info[1]}
    assert {RuntimeError, OSError} <= causes


async def test_sink_write_error_is_not_masked_by_its_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(CloseFails):
        async def write(self, b: pa.RecordBatch) -> None:
            raise ConnectionError("store down")

    p = ls.Pipeline()
    p.source(Scripted("s", [batch((1, 1, 1))])).sink(Broken(), name="store")
    with (
        caplog.at_level(logging.ERROR, logger="lambdasource"),
        pytest.raises(ls.SinkError, match="sink=store failed in write") as info,
    ):
        await p.run()
    assert isinstance(info.value.__cause__, ConnectionError)
    messages = [r.getMessage() for r in _logged(caplog)]
    assert any("sink=store failed in close" in m and "OSError" in m for m in messages), messages


async def test_a_close_failure_alone_is_raised() -> None:
    p = ls.Pipeline()
    p.source(Scripted("s", [batch((1, 1, 1))])).process(Boom(close_fails=True), name="boom").sink(
        ls.CollectSink()
    )
    with pytest.raises(ls.OperatorError, match="operator=boom failed in close"):
        await p.run()


async def test_errors_of_other_tasks_are_logged_not_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second task failing while the run is torn down (here: a source whose cancellation
    cleanup raises) is logged with its cause; the operator's error is the one raised."""
    hang = asyncio.Event()

    async def wait_forever() -> None:
        try:
            await hang.wait()
        except asyncio.CancelledError:
            raise RuntimeError("source cleanup failed") from None

    p = ls.Pipeline()
    slow = p.source(Scripted("slow", [wait_forever]))
    fast = p.source(Scripted("fast", [batch((1, 1, 1)), batch((2, 1, 1))]))
    fast.union(slow).process(Boom(close_fails=False), name="boom").sink(ls.CollectSink())
    with (
        caplog.at_level(logging.ERROR, logger="lambdasource"),
        pytest.raises(ls.OperatorError, match="operator=boom failed in on_batch"),
    ):
        await p.run()
    records = [r for r in _logged(caplog) if "source=slow failed" in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in _logged(caplog)]
    assert "operator=boom failed in on_batch" in records[0].getMessage()
    exc_info = records[0].exc_info
    assert exc_info is not None and isinstance(exc_info[1], ls.SourceError)
    assert isinstance(exc_info[1].__cause__, RuntimeError)
    assert not _other_tasks()


class ClosingFails(LocalStore):
    async def close(self) -> None:
        raise OSError("checkpoint store close failed")


async def test_checkpoint_store_close_failure_does_not_mask_the_run_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = ls.Pipeline(
        checkpoints=Checkpoints(str(tmp_path), interval="1h", store=ClosingFails(tmp_path))
    )
    p.source(Scripted("s", [batch((1, 1, 1)), batch((2, 1, 1))])).process(
        Boom(close_fails=False), name="boom"
    ).sink(ls.CollectSink())
    with (
        caplog.at_level(logging.ERROR, logger="lambdasource"),
        pytest.raises(ls.OperatorError, match="operator=boom failed in on_batch"),
    ):
        await p.run()
    messages = [r.getMessage() for r in _logged(caplog)]
    assert any("checkpoint store close failed" in m for m in messages), messages


async def test_restore_failure_is_not_masked_by_the_store_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "chk-000000000001").mkdir()
    (tmp_path / "chk-000000000001" / "MANIFEST.json").write_text("{not json")
    p = ls.Pipeline(
        checkpoints=Checkpoints(str(tmp_path), interval="1h", store=ClosingFails(tmp_path))
    )
    p.source(Scripted("s", [batch((1, 1, 1))])).sink(ls.CollectSink())
    with (
        caplog.at_level(logging.ERROR, logger="lambdasource"),
        pytest.raises(ls.CheckpointError, match="unreadable"),
    ):
        await p.run(restore=1)
    messages = [r.getMessage() for r in _logged(caplog)]
    assert any("checkpoint store close failed" in m for m in messages), messages
