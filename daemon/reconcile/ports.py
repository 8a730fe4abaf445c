"""Host ports for replicas: each one's app port is published on 127.0.0.1 at a port berthd picks.

Podman (and podman-py) cannot pick a host port for us reliably (HOST.md: a port map with host
port None crashes podman-py's create), so berthd asks the kernel for a free one by binding
port 0, and never hands out a port one of its own containers holds.

Which ports are held is derived, as the GPU ledger's holdings are (`daemon.gpu.ledger`):
each successful observation of a deployment replaces that deployment's ports whole (every
container that exists, running or not: a stopped one starts again on its own ports), and a
port allocated for a container being created is held until the create is over and an
observation of its deployment began after that. A container removed behind berthd's back
frees its ports with the next observation.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterable

from daemon.gpu.ledger import deployment_of


class HostPortAllocator:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._observed: dict[str, set[int]] = {}  # deployment -> ports its containers hold
        self._allocated: dict[str, set[int]] = {}  # replica key -> ports being created
        self._settled: dict[str, int] = {}
        self._stamps = itertools.count()

    def __repr__(self) -> str:
        return f"<HostPortAllocator {len(self.held())} held>"

    def held(self) -> set[int]:
        ports = {p for by_deployment in self._observed.values() for p in by_deployment}
        for allocated in self._allocated.values():
            ports |= allocated
        return ports

    def observing(self) -> int:
        """A stamp to take just before listing a deployment's containers."""
        return next(self._stamps)

    def observed(self, deployment: str, ports: Iterable[int], *, stamp: int) -> None:
        """A successful observation of `deployment` that began at `stamp` showed `ports`."""
        self._observed[deployment] = set(ports)
        for key in [k for k in self._allocated if deployment_of(k) == deployment]:
            settled = self._settled.get(key)
            if settled is not None and settled < stamp:
                del self._allocated[key]
                del self._settled[key]

    def allocate(self, key: str) -> int:
        """A free port for the replica `key` ("deployment/replica-id"), held for it."""
        taken = self.held()
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self._host, 0))
                port: int = probe.getsockname()[1]
            if port not in taken:
                self._allocated.setdefault(key, set()).add(port)
                self._settled.pop(key, None)
                return port
        raise OSError("no free host port found for a replica")

    def settle(self, key: str) -> None:
        """The replica's container was created: the next observation shows its ports."""
        if key in self._allocated:
            self._settled[key] = next(self._stamps)

    def release(self, key: str, ports: Iterable[int] = ()) -> None:
        """The create failed, or the container (with `ports`) was removed."""
        self._allocated.pop(key, None)
        self._settled.pop(key, None)
        observed = self._observed.get(deployment_of(key))
        if observed is not None:
            observed.difference_update(ports)
