"""Free loopback ports and readiness waits shared by the service fixtures (the library's own)."""

from lambdasource.embedded import free_port, wait_for_port

__all__ = ["free_port", "wait_for_port"]
