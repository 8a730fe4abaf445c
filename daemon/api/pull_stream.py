"""`berth pull NAME`: the pull of a deployment's image, followed as JSON lines.

The pull itself is the deployment's (`daemon.reconcile.image_pull.ImagePuller`): it runs in
the worker's nursery and is shared with a create that needs the same image, so a client
that leaves stops only its own following. The producer writes, into the channel the
response reads (docs/admin-api.md):
- `{"pulling": {...}}` every PROGRESS_EVERY seconds while the pull is under way (the same
  object as `pulling` in `GET /v1/deployments/NAME`), also a sign of life while nothing moves;
- then one last line: `{"image", "done": true, "seconds", "layers_done", ...}`, or
  `{"image", "done": false, "error"}` with the pull's reason.
"""

from __future__ import annotations

import json

import trio

from daemon.reconcile.image_pull import ImagePuller, PullStatus
from daemon.runtime.interface import RegistryAuth, RuntimeFailure

PROGRESS_EVERY = 1.0  # seconds between two progress lines


def _line(value: object) -> bytes:
    return (json.dumps(value) + "\n").encode()


async def follow_pull(
    images: ImagePuller,
    image: str,
    auth: RegistryAuth | None,
    send: trio.MemorySendChannel[bytes],
) -> None:
    async with send:
        outcome: PullStatus | RuntimeFailure
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress_lines, images, image, send)
            try:
                outcome = await images.pull(image, auth, why=" (berth pull)")
            except RuntimeFailure as exc:
                outcome = exc
            nursery.cancel_scope.cancel()
        if isinstance(outcome, RuntimeFailure):
            await send.send(_line({"image": image, "done": False, "error": str(outcome)}))
        else:
            summary = outcome.to_json()
            del summary["started_at"]
            await send.send(_line({**summary, "done": True}))


async def _progress_lines(
    images: ImagePuller, image: str, send: trio.MemorySendChannel[bytes]
) -> None:
    while True:
        status = images.status(image)
        if status is not None:
            await send.send(_line({"pulling": status.to_json()}))
        await trio.sleep(PROGRESS_EVERY)
