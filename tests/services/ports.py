"""Free loopback ports and readiness waits shared by the service fixtures (the library's own)."""

import socket
from contextlib import ExitStack

from lambdasource.embedded import free_port, wait_for_port

__all__ = ["free_port", "free_port_run", "wait_for_port"]


def free_port_run(count: int, attempts: int = 200) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that were all free a moment ago
    (``--metrics-port P`` with ``--workers N`` serves on P … P+N-1)."""
    for _ in range(attempts):
        first = free_port()
        if first + count > 65536:
            continue
        with ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise RuntimeError(f"no run of {count} free loopback ports in {attempts} attempts")
