"""A pull's stream, read: which Podman endpoint to ask, its JSON lines, and what they mean.

Pure (no I/O): `daemon.runtime.podman` sends the request and feeds the body here.

Podman 4.3 has two pull endpoints, and they say different things while they work
(checked against a docker-registry on loopback, the lines are in tests/unit/test_pull.py):
- libpod's `/libpod/images/pull` (not quiet) writes `{"stream": "Copying blob sha256:..."}`
  as each blob's download *starts*, `{"stream": "Copying config sha256:..."}`, then
  `{"images": [ID], "id": ID}` once the image is stored, or `{"error": ...}`: no byte
  counts, nothing when a layer is done, and nothing at all while a big layer downloads.
- the Docker-compatible `/images/create` writes, per blob, `Pulling fs layer` when its
  download starts, `Downloading` with `progressDetail: {current, total}` about once a
  second while bytes flow, `Download complete`, or `Already exists` for a layer stored
  already; then `Download complete` once more for the image's config, whose id (12 hex
  digits) is the image id; or `{"error": ..., "errorDetail": ...}`.
So a reference with a registry is pulled through `/images/create`: layers and bytes, and a
line every second while a layer downloads, so a silence means a stall. But that endpoint
puts a short name ("vllm/vllm-openai") on docker.io (Docker's rule), while berth leaves
short names to Podman's registries.conf (`config.image_ref`): a short name is pulled
through libpod's endpoint, and its progress is layers started, without bytes.

Invariants:
- `PullReader.feed` never raises: a line that cannot be read is counted (`skipped`) and
  ignored; the pull's outcome is `error` (Podman's words), `finished` (the image is
  stored) or neither (the stream ended early: temporary).
- The compat stream names the config blob like a layer: it counts as one from its start
  (once every layer is done, a moment before the end) until the last line says which it
  was; libpod's stream names it ("Copying config").
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from config.image_ref import parse_image_ref
from daemon.runtime.auth_file import credential_for, registry_of
from daemon.runtime.interface import (
    ImageNotFound,
    PullProgress,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)

# A pull that gets no line from Podman for this long has stalled: it fails as temporary
# (and is retried: the layers stored so far are kept). Through /images/create a line
# comes every second while bytes flow, so this is minutes of no bytes at all.
PULL_IDLE_TIMEOUT = 300.0
# The Docker-compatible API version Podman 4.x serves.
COMPAT_PREFIX = "/v1.41"
LIBPOD_PREFIX = "/v4.0.0/libpod"

# Podman's messages for a registry that has no such image (pull and create).
IMAGE_MISSING_HINTS = ("image not known", "manifest unknown", "name unknown", "not found")
# A `localhost/` reference names no registry but this host, where none answers as a rule.
LOCAL_IMAGE_HINT = (
    " (a localhost/ image is one built or loaded on this host: podman build -t NAME, or "
    "podman load; no registry serves it here)"
)
REGISTRY_TEMPORARY_HINTS = (
    "connection refused",
    "connection reset",
    "i/o timeout",
    "no such host",
    "timeout",
    "unexpected eof",  # the registry's connection broke mid-blob
)
# ... that refuses the credentials (or wants some): checked first, as "access denied" can hide a
# missing private repository, and the credentials are the thing to look at then.
REGISTRY_AUTH_HINTS = (
    "unauthorized",
    "authentication required",
    "requested access to the resource is denied",
    "invalid username",
)
# ... that speaks plain HTTP to a client expecting TLS.
REGISTRY_PLAIN_HTTP_HINT = "server gave http response to https client"


def pull_target(image: str) -> tuple[str, bool]:
    """The request target that pulls `image`, and whether it is the compat endpoint."""
    try:
        qualified = parse_image_ref(image).domain is not None
    except ValueError:
        qualified = False  # Podman says what is wrong with it
    if qualified:
        return f"{COMPAT_PREFIX}/images/create?{urlencode({'fromImage': image})}", True
    query = urlencode({"reference": image, "quiet": "false"})
    return f"{LIBPOD_PREFIX}/images/pull?{query}", False


@dataclass
class _Blob:
    done: bool = False
    stored: bool = False  # "Already exists": nothing to fetch
    current: int = 0
    total: int | None = None


class PullReader:
    """The lines of one pull's stream, in order, read into progress and an outcome."""

    def __init__(self) -> None:
        self._blobs: dict[str, _Blob] = {}  # by id, in the order announced
        self._config: str | None = None
        self._bytes_seen = False
        self._last = PullProgress()
        self.error: str | None = None
        self.image_id: str | None = None
        self.skipped = 0  # lines that could not be read

    def __repr__(self) -> str:
        p = self._last
        return (
            f"<PullReader {p.layers_done}/{p.layers_total} layers "
            f"finished={self.finished} error={self.error!r}>"
        )

    @property
    def finished(self) -> bool:
        return self.image_id is not None and self.error is None

    @property
    def progress(self) -> PullProgress:
        return self._last

    def feed(self, line: bytes) -> bool:
        """One line of the stream; True when the progress changed."""
        if not line.strip():
            return False
        try:
            body = json.loads(line)
        except ValueError:
            self.skipped += 1
            return False
        if not isinstance(body, dict):
            self.skipped += 1
            return False
        error = body.get("error")
        if error:
            self.error = str(error)
            return False
        if "status" in body:
            self._compat(body)
        else:
            self._libpod(body)
        return self._update()

    def _compat(self, body: dict[str, Any]) -> None:
        status, blob_id = body.get("status"), body.get("id")
        if not isinstance(status, str) or not isinstance(blob_id, str) or not blob_id:
            self.skipped += 1
            return
        blob = self._blobs.get(blob_id)
        if status == "Download complete" and blob is not None and blob.done:
            # Said twice only for the config: its id is the image's. The pull is over.
            self._config = blob_id
            self.image_id = blob_id
            return
        if blob is None:
            blob = self._blobs[blob_id] = _Blob()
        if status == "Already exists":
            blob.done = blob.stored = True
        elif status == "Downloading":
            detail = body.get("progressDetail")
            if isinstance(detail, dict):
                current, total = detail.get("current"), detail.get("total")
                if isinstance(current, int) and not isinstance(current, bool):
                    blob.current = max(blob.current, current)
                    self._bytes_seen = True
                if isinstance(total, int) and not isinstance(total, bool) and total > 0:
                    blob.total = total
        elif status == "Download complete":
            blob.done = True
            if blob.total is not None:
                blob.current = blob.total

    def _libpod(self, body: dict[str, Any]) -> None:
        stream = body.get("stream")
        if isinstance(stream, str):
            words = stream.split()
            if len(words) >= 3 and words[0] == "Copying" and words[1] in ("blob", "config"):
                if words[1] == "blob":  # started; libpod never says when one is done
                    self._blobs.setdefault(words[2], _Blob())
                else:
                    self._config = words[2]
                    for blob in self._blobs.values():
                        blob.done = True  # the config is copied once every layer is
            return
        image_id = body.get("id")
        if isinstance(image_id, str) and image_id:
            for blob in self._blobs.values():
                blob.done = True
            self.image_id = image_id
            return
        self.skipped += 1

    def _update(self) -> bool:
        layers = [b for i, b in self._blobs.items() if i != self._config]
        bytes_done = bytes_total = None
        if self._bytes_seen:
            fetched = [b for b in layers if not b.stored]
            bytes_done = sum(b.current for b in fetched)
            bytes_total = sum(b.total if b.total is not None else b.current for b in fetched)
        previous, self._last = (
            self._last,
            PullProgress(
                layers_done=sum(1 for b in layers if b.done),
                layers_total=len(layers),
                bytes_done=bytes_done,
                bytes_total=bytes_total,
            ),
        )
        return self._last != previous


class LineSplitter:
    """Bytes as they arrive -> whole lines (without their newline)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return lines

    def rest(self) -> bytes:
        """What came after the last newline (a final line without one)."""
        rest, self._buffer = self._buffer, b""
        return rest


def pull_failure(image: str, error: str, *, authenticated: bool) -> RuntimeFailure:
    """libpod's pull error as one of ours, with what to do about it where that is known."""
    lowered = error.lower()
    if any(hint in lowered for hint in REGISTRY_AUTH_HINTS):
        what = "the credentials given" if authenticated else "an anonymous pull (no [registry])"
        return RuntimeFailure(f"pull {image}: the registry refused {what}: {error}")
    if any(hint in lowered for hint in IMAGE_MISSING_HINTS):
        return ImageNotFound(f"pull {image}: {error}")
    if REGISTRY_PLAIN_HTTP_HINT in lowered:
        return RuntimeFailure(
            f"pull {image}: {error} (a registry without TLS must be marked insecure = true in "
            "Podman's registries.conf)"
        )
    if any(hint in lowered for hint in REGISTRY_TEMPORARY_HINTS):
        if image.startswith("localhost/") and "connection refused" in lowered:
            error += LOCAL_IMAGE_HINT
        return TemporaryRuntimeError(f"pull {image}: {error}")
    return RuntimeFailure(f"pull {image}: {error}")


def registry_auth_header(image: str, auth: RegistryAuth) -> str | None:
    """The X-Registry-Auth header libpod's pull takes: base64url of a JSON credential.

    A username and password are sent as they are. With only an auth file (containers-auth.json,
    its `auths` read by `daemon.integrations.registry`) the file's entry for the image's
    registry is used (`daemon.runtime.auth_file`); None when it has none: the pull is
    anonymous.
    """
    registry, _ = registry_of(image)
    if auth.username is not None:
        payload = {
            "username": auth.username,
            "password": auth.password or "",
            "serveraddress": registry,
        }
    elif auth.auths is not None:
        entry = credential_for(auth.auths, image)
        if entry is None:
            return None
        payload = {**entry, "serveraddress": registry}
    else:
        return None
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
