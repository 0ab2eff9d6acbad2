"""Network namespaces as separate "machines" on one host (``ip netns``), for scale-out tests.

:class:`NamespaceNetwork` creates a Linux bridge with an address on the host side and ``count``
namespaces, each joined to the bridge by a veth pair and given its own address on the bridge's
/24. A process started with :meth:`NamespaceNetwork.command` sees only its namespace's interfaces
(its own address and loopback): it reaches services on the host only through the bridge address
(``host_address``), so a service bound to ``127.0.0.1`` is out of its reach — which is the point:
nothing may assume that workers share a host.

Facts found here (root in the container, iproute2 present): ``ip netns add``, veth pairs and
bridges work without extra privileges; namespaces have no ``ping``; loopback must be brought up
by hand. Everything created is removed on exit, also after a failure; names carry the creating
process id so concurrent test sessions do not collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

__all__ = ["NamespaceNetwork", "NetnsUnavailable"]


class NetnsUnavailable(RuntimeError):
    """This machine cannot create network namespaces (not root, or no ``ip``)."""


def _ip(*args: str, namespace: str | None = None) -> None:
    command = (
        ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    )
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip() or done.stdout}")


class NamespaceNetwork:
    """``count`` namespaces on a bridge: ``host_address`` on the host, ``addresses[i]`` inside
    namespace ``names[i]``; ``subnet`` picks the /24 (``10.<subnet>.<pid % 250>.0``)."""

    def __init__(self, count: int, *, subnet: int = 231) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise NetnsUnavailable(
                "network namespaces need root and iproute2 (`ip`): run as root with "
                "`apt-get install -y iproute2`"
            )
        tag = os.getpid() % 100_000
        third = os.getpid() % 250
        self.bridge = f"lsbr{tag}"
        self.host_address = f"10.{subnet}.{third}.1"
        self.names = [f"ls{tag}n{i}" for i in range(count)]
        self.addresses = [f"10.{subnet}.{third}.{i + 2}" for i in range(count)]
        self._created: list[tuple[str, str]] = []  # ("link" | "netns", name), for teardown

    def __enter__(self) -> NamespaceNetwork:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._created.append(("link", self.bridge))
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index, (name, address) in enumerate(zip(self.names, self.addresses, strict=True)):
                host_end, inner_end = f"{self.bridge}v{index}", "eth0"
                _ip("netns", "add", name)
                self._created.append(("netns", name))
                _ip("link", "add", host_end, "type", "veth", "peer", "name", f"{host_end}p")
                self._created.append(("link", host_end))
                _ip("link", "set", f"{host_end}p", "netns", name)
                _ip("link", "set", f"{host_end}p", "name", inner_end, namespace=name)
                _ip("link", "set", host_end, "master", self.bridge)
                _ip("link", "set", host_end, "up")
                _ip("addr", "add", f"{address}/24", "dev", inner_end, namespace=name)
                _ip("link", "set", inner_end, "up", namespace=name)
                _ip("link", "set", "lo", "up", namespace=name)
        except BaseException:
            self.close()
            raise
        return self

    def command(self, index: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``index``."""
        return ["ip", "netns", "exec", self.names[index], *argv]

    def close(self) -> None:
        """Remove what was created (namespaces first: that deletes their veth ends too)."""
        for kind, name in reversed(self._created):
            command = (
                ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            )
            subprocess.run(command, capture_output=True, check=False)
        self._created.clear()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
