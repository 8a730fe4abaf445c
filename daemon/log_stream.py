"""Replica logs for `berth logs`: one replica's as they are, several interleaved by line.

With several replicas each line is prefixed `REPLICA_ID | `. Following merges the replicas'
streams through one memory channel; the producers live in a nursery that ends when the
consumer (the admin server's response) closes the stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing

import trio

from daemon.runtime import LABEL_REPLICA, ContainerInfo, ContainerRuntime, RuntimeFailure


def _prefix(lines: bytes, replica: str) -> bytes:
    return b"".join(replica.encode() + b" | " + line for line in lines.splitlines(keepends=True))


async def replica_logs(
    runtime: ContainerRuntime, containers: list[ContainerInfo], *, tail: int | None
) -> bytes:
    if len(containers) == 1:
        return await runtime.logs(containers[0].container_id, tail=tail)
    parts = []
    for c in containers:
        data = await runtime.logs(c.container_id, tail=tail)
        parts.append(_prefix(data, c.labels.get(LABEL_REPLICA, c.container_id[:12])))
    return b"".join(parts)


async def follow_replica_logs(
    runtime: ContainerRuntime, containers: list[ContainerInfo], *, tail: int | None
) -> AsyncIterator[bytes]:
    send, receive = trio.open_memory_channel[bytes](64)
    prefix = len(containers) > 1

    async def pump(c: ContainerInfo, out: trio.MemorySendChannel[bytes]) -> None:
        replica = c.labels.get(LABEL_REPLICA, c.container_id[:12])
        pending = b""
        async with out:
            try:
                async with aclosing(runtime.follow_logs(c.container_id, tail=tail)) as chunks:
                    async for chunk in chunks:
                        if not prefix:
                            await out.send(chunk)
                            continue
                        pending += chunk
                        complete, _, pending = pending.rpartition(b"\n")
                        if complete:
                            await out.send(_prefix(complete + b"\n", replica))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader went away
            except RuntimeFailure as exc:
                # A pump never fails the merged stream: the others go on. (The consumer runs
                # inside this generator's nursery, so a pump's exception would cancel it.)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await out.send(f"[{replica}: log stream ended: {exc}]\n".encode())

    async with trio.open_nursery() as nursery:
        async with send:
            for c in containers:
                nursery.start_soon(pump, c, send.clone())
        try:
            async with receive:
                async for chunk in receive:
                    yield chunk
        finally:
            nursery.cancel_scope.cancel()
