"""Host ports for replicas: each one's app port is published on 127.0.0.1 at a port berthd picks.

Podman (and podman-py) cannot pick a host port for us reliably (HOST.md: a port map with host
port None crashes podman-py's create), so berthd asks the kernel for a free one by binding
port 0, and remembers the ports its own containers hold so it never hands one out twice.
"""

from __future__ import annotations

import socket


class HostPortAllocator:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._taken: set[int] = set()

    def reserve(self, port: int) -> None:
        """Mark a port as held (an adopted container's, or one just allocated)."""
        self._taken.add(port)

    def release(self, port: int) -> None:
        self._taken.discard(port)

    def allocate(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self._host, 0))
                port: int = probe.getsockname()[1]
            if port not in self._taken:
                self._taken.add(port)
                return port
        raise OSError("no free host port found for a replica")
