"""The fault suite's own tools: the TCP proxy (forwarding, latency, outage) and the verifying
sink (duplicates, losses, per-key order, lateness, watermark regressions) against plain-Python
references."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.proxy import TcpProxy
from tests.faults.verify import VerifyingSink


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _roundtrip(port: int) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"
    return time.perf_counter() - started


async def test_proxy_forwards_adds_latency_and_drops_during_an_outage() -> None:
    server, port = await _echo_server()
    try:
        with TcpProxy(port, latency=0.1) as proxy:
            assert await asyncio.to_thread(_roundtrip, proxy.port) >= 0.2  # both directions
            proxy.latency = 0.0
            sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", proxy.port))
            await asyncio.sleep(0.1)
            proxy.outage(0.5)
            await asyncio.sleep(0.1)
            assert proxy.dropped >= 1
            sock.settimeout(2)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(16) == b""  # reset or closed: no data ever again
            sock.close()
            # a new connection is accepted and reset at once: the echo never comes back
            with pytest.raises((ConnectionError, OSError, AssertionError)):
                await asyncio.to_thread(_roundtrip, proxy.port)
            assert proxy.refused >= 1
            await asyncio.sleep(0.5)
            assert await asyncio.to_thread(_roundtrip, proxy.port) < 1.0  # back after it
    finally:
        server.close()
        await server.wait_closed()


rows = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3), st.integers(0, 100)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(rows, max_size=5),
    expected=st.sets(st.integers(0, 30), max_size=20),
    marks=st.lists(st.integers(0, 100), max_size=5),
)
def test_verifying_sink_counts_like_a_plain_python_reference(
    batches: list[list[tuple[int, int, int]]], expected: set[int], marks: list[int]
) -> None:
    sink = VerifyingSink(expected, id_column="id", key_column="k", time_column="t")
    late = regressions = 0
    watermark: int | None = None

    async def feed() -> None:
        nonlocal late, regressions, watermark
        for i, batch in enumerate(batches):
            if batch:
                ids, keys, times = zip(*batch, strict=True)
                await sink.write(
                    pa.record_batch(
                        {
                            "id": pa.array(ids, pa.int64()),
                            "k": pa.array(keys, pa.int64()),
                            "t": pa.array(times, pa.timestamp("us", tz="UTC")),
                        }
                    )
                )
                late += sum(t <= watermark for t in times) if watermark is not None else 0
            if i < len(marks):
                if watermark is not None and marks[i] < watermark:
                    regressions += 1
                watermark = marks[i] if watermark is None else max(watermark, marks[i])
                await sink.on_watermark(marks[i])

    asyncio.run(feed())
    flat = [r for b in batches for r in b]
    counts = Counter(r[0] for r in flat)
    running: dict[int, int] = {}
    out_of_order = 0
    for _, key, t in flat:
        if key in running and t < running[key]:
            out_of_order += 1
        running[key] = max(running.get(key, t), t)
    report = sink.report()
    assert report["rows"] == len(flat)
    assert report["duplicates"] == sum(c - 1 for c in counts.values())
    assert report["missing"] == len(expected - counts.keys())
    assert report["unexpected"] == len(counts.keys() - expected)
    assert report["out_of_order"] == out_of_order
    assert report["late"] == late
    assert report["watermark_regressions"] == regressions
    assert np.array_equal(np.sort(sink.ids()), np.sort(np.array([r[0] for r in flat], np.int64)))
