"""`PodmanRuntime`: the real `ContainerRuntime`, over Podman's libpod API.

Invariants:
- This is the only module that imports podman-py. Its blocking calls run in
  `trio.to_thread.run_sync`, one call per thread hop, so the trio loop never blocks on Podman.
- The two endless streams (`follow_logs`, `events`) and the pull do not use podman-py: a
  thread blocked in a socket read cannot be cancelled, so they read the same libpod
  endpoints with berthd's HTTP client helper (`daemon.http.client`: h11 on a trio stream),
  and end the moment their consumer stops or is cancelled (use `contextlib.aclosing`). A
  pull has no deadline, only an idle timeout; its stream is read by `daemon.runtime.pull`.
- podman-py, HTTP client and socket exceptions never escape: they become `RuntimeFailure`
  subclasses, with Podman's own explanation in the message (an unreachable service, or one
  that breaks off mid-stream, is a `TemporaryRuntimeError`).
- One event that cannot be read (not JSON, not an object, a field missing or of the wrong
  type) is logged and skipped (`parse_event` says why); the stream goes on.
- Containers are created with restart policy "no": restarting is berthd's decision, not
  Podman's. They carry `LABEL_HOST_PORT`, so an adopted container's port is known.
- A container's IPC mode is always sent ("private" unless the spec says "shareable"; Podman's
  own default is shareable), and a spec's ulimits go over the engine's defaults
  (`daemon.runtime.rlimits`), so the limits a spec does not name stay as the host set them.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import socket
import struct
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

import podman.errors
import requests
import trio
from podman import PodmanClient

from config.spec import Ulimit
from daemon.http import client
from daemon.runtime.interface import (
    LABEL_HOST_PORT,
    ContainerEvent,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStats,
    ImageNotFound,
    PullProgressFn,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)
from daemon.runtime.libpod_json import (
    MalformedEvent,
    info_from_inspect,
    info_from_list,
    parse_event,
    stats_from_entry,
)
from daemon.runtime.pull import (
    PULL_IDLE_TIMEOUT,
    LineSplitter,
    PullReader,
    pull_failure,
    pull_target,
    registry_auth_header,
)
from daemon.runtime.rlimits import (
    SETRLIMIT_FAILURE,
    SETRLIMIT_HINT,
    engine_defaults,
    ulimits_kwarg,
)

T = TypeVar("T")

log = logging.getLogger("berthd.podman")

LIST_ATTEMPTS = 3
CALLS_AT_ONCE = 4  # Podman calls in flight at once (threads), whatever berthd asks
CALL_MARGIN = 5.0  # seconds past the client's read timeout before a call is abandoned

# libpod API prefix used by the streams; Podman 4.x accepts any version >= 4.0.0 here.
LIBPOD_PREFIX = "/v4.0.0/libpod"
# How much of an error answer on a stream is read for its message.
ERROR_BODY_LIMIT = 64 * 1024
# On the container made only to read Podman's default rlimits (never started, removed at once).
LABEL_RLIMITS_PROBE = "io.berth.rlimits-probe"
# Extra event attributes that Podman mixes in with the container's labels.
# How much of an event that cannot be read is quoted in the log.
EVENT_EXCERPT = 200


class PodmanRuntime:
    def __init__(
        self, url: str, *, timeout: float = 60.0, pull_idle_timeout: float = PULL_IDLE_TIMEOUT
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._pull_idle_timeout = pull_idle_timeout
        self._client = PodmanClient(base_url=url, timeout=timeout)
        self._limiter = trio.CapacityLimiter(CALLS_AT_ONCE)
        self._engine_ulimits_lock = trio.Lock()
        self._engine_ulimits_cache: dict[str, Ulimit] | None = None

    def __repr__(self) -> str:
        return f"PodmanRuntime({self.url!r})"

    async def _call(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        not_found: type[RuntimeFailure] = ContainerNotFound,
        deadline: float | None = None,
    ) -> T:
        """`fn` (podman-py, blocking) in a thread of the runtime's own limiter, bounded.

        At most CALLS_AT_ONCE calls run at a time, so a Podman that stopped answering holds
        a few threads, never trio's whole pool. Each call has a deadline (`deadline`
        seconds; default: the client's read timeout and a margin; math.inf for none, as a
        pull's): past it the thread is abandoned and the call fails as temporary.
        """
        limit = self._timeout + CALL_MARGIN if deadline is None else deadline
        try:
            with trio.fail_after(limit):
                return await trio.to_thread.run_sync(
                    fn, limiter=self._limiter, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            raise TemporaryRuntimeError(
                f"{what}: Podman at {self.url} did not answer within {limit:g}s"
            ) from None
        except podman.errors.ImageNotFound as exc:
            raise ImageNotFound(f"{what}: {_explain(exc)}") from exc
        except podman.errors.NotFound as exc:
            raise not_found(f"{what}: {_explain(exc)}") from exc
        except podman.errors.APIError as exc:
            if exc.response is None:
                # podman-py wraps connection failures (OSError) in an APIError without response.
                _close_leaked_sockets(exc)
                raise TemporaryRuntimeError(
                    f"{what}: Podman at {self.url} unreachable ({exc.__cause__ or exc})"
                ) from exc
            message = _explain(exc)
            if "image not known" in message:
                raise ImageNotFound(f"{what}: {message}") from exc
            raise RuntimeFailure(f"{what}: {message}") from exc
        except (requests.RequestException, OSError) as exc:
            raise TemporaryRuntimeError(f"{what}: Podman at {self.url}: {exc}") from exc

    async def version(self) -> str:
        body = await self._call(self._client.version, what="podman version")
        api = body.get("Components", [{}])[0].get("Details", {}).get("APIVersion", "?")
        return f"podman {body.get('Version', '?')} (API {api})"

    async def image_exists(self, image: str) -> bool:
        return await self._call(partial(self._client.images.exists, image), what=image)

    async def pull(
        self,
        image: str,
        *,
        auth: RegistryAuth | None = None,
        progress: PullProgressFn | None = None,
    ) -> None:
        # Streamed on berthd's HTTP client (cancellable, no thread), with no deadline
        # overall: only a silence of `pull_idle_timeout` ends it (`daemon.runtime.pull`).
        what = f"pull {image}"
        address = client.address_of_url(self.url)
        if address is None:
            raise RuntimeFailure(f"{what}: Podman at {self.url!r} is not unix or tcp")
        header = None
        if auth is not None:
            header = await trio.to_thread.run_sync(registry_auth_header, image, auth)
        headers = [("Host", "podman"), *([("X-Registry-Auth", header)] if header else [])]
        target, _ = pull_target(image)
        reader, lines = PullReader(), LineSplitter()
        with trio.CancelScope() as idle:
            idle.deadline = trio.current_time() + self._pull_idle_timeout
            try:
                async with client.request(address, "POST", target, headers) as response:
                    if response.status >= 400:
                        reader.error = _message(await response.read(ERROR_BODY_LIMIT))
                    else:
                        async for chunk in response:
                            idle.deadline = trio.current_time() + self._pull_idle_timeout
                            for line in lines.feed(chunk):
                                if reader.feed(line) and progress is not None:
                                    progress(reader.progress)
                        reader.feed(lines.rest())
            except client.ConnectFailed as exc:
                raise TemporaryRuntimeError(
                    f"{what}: Podman at {self.url} unreachable ({exc})"
                ) from exc
            except client.HttpClientError as exc:
                raise TemporaryRuntimeError(f"{what}: Podman at {self.url}: {exc!r}") from exc
        if idle.cancelled_caught:
            raise TemporaryRuntimeError(
                f"{what}: no progress for {self._pull_idle_timeout:g}s (the registry or the "
                "link stalled); the layers stored so far are kept for the retry"
            )
        if reader.error is not None:
            raise pull_failure(image, reader.error, authenticated=header is not None)
        if reader.skipped:
            log.warning("podman: %s: skipped %d lines that cannot be read", what, reader.skipped)
        if not reader.finished:
            raise TemporaryRuntimeError(f"{what}: Podman's stream ended before the pull did")
        if progress is not None:
            progress(reader.progress)  # the final count (the config no longer a layer)

    async def create(self, spec: ContainerSpec) -> str:
        labels = {LABEL_HOST_PORT: str(spec.host_port), **spec.labels}
        kwargs: dict[str, Any] = {
            "name": spec.name,
            "labels": labels,
            "environment": dict(spec.env),
            "ports": {
                f"{spec.app_port}/tcp": (spec.host_ip, spec.host_port),
                **{
                    f"{inner}/tcp": (spec.host_ip, outer)
                    for inner, outer in spec.extra_ports.items()
                },
            },
            "stop_timeout": math.ceil(spec.stop_timeout),
            "restart_policy": {"Name": "no"},
        }
        if spec.log_size_max is not None:
            kwargs["log_config"] = {"Type": "k8s-file", "Config": {"size": spec.log_size_max}}
        if spec.command is not None:
            kwargs["command"] = list(spec.command)
        if spec.cpus is not None:
            # podman-py silently drops `nano_cpus`: express the CPU limit as a CFS quota.
            kwargs["cpu_period"] = 100_000
            kwargs["cpu_quota"] = max(1_000, round(spec.cpus * 100_000))
        if spec.memory_bytes is not None:
            kwargs["mem_limit"] = spec.memory_bytes
        binds = [m for m in spec.mounts if m.type == "bind"]
        volumes = [m for m in spec.mounts if m.type == "volume"]
        if binds:
            kwargs["mounts"] = [
                {"type": "bind", "source": m.source, "target": m.target, "read_only": m.read_only}
                for m in binds
            ]
        if volumes:
            kwargs["volumes"] = {
                m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in volumes
            }
        if spec.devices:
            # Sent as {"path": "nvidia.com/gpu=0"}; libpod resolves CDI names from /etc/cdi and
            # /var/run/cdi when the container starts (an unknown device fails the start).
            kwargs["devices"] = list(spec.devices)
        # Podman 4.3's inspect says "shareable" whatever was asked; the mode holds all the same.
        kwargs["ipc_mode"] = spec.ipc.value
        if spec.shm_size is not None:
            kwargs["shm_size"] = spec.shm_size
        if spec.ulimits:
            defaults = await self._engine_ulimits(spec.image)
            kwargs["ulimits"] = ulimits_kwarg(spec.ulimits, defaults)
        container = await self._call(
            partial(self._client.containers.create, spec.image, **kwargs),
            what=f"create {spec.name}",
            not_found=ImageNotFound,
        )
        container_id: str = container.id
        return container_id

    async def _engine_ulimits(self, image: str) -> dict[str, Ulimit]:
        """The rlimits Podman gives a container that asks for none (see `rlimits`), read
        once from a container made of `image` for that and removed unstarted."""
        async with self._engine_ulimits_lock:
            if self._engine_ulimits_cache is None:
                name = f"berth-rlimits-probe-{secrets.token_hex(6)}"
                probe = await self._call(
                    partial(
                        self._client.containers.create,
                        image,
                        command=["true"],
                        name=name,
                        labels={LABEL_RLIMITS_PROBE: "1"},
                    ),
                    what="read Podman's default rlimits",
                    not_found=ImageNotFound,
                )
                host_config = probe.attrs.get("HostConfig") or {}
                self._engine_ulimits_cache = engine_defaults(host_config.get("Ulimits"))
                try:
                    await self.remove(probe.id)
                except RuntimeFailure as exc:  # a leftover, never started: not worth a failure
                    log.warning("could not remove %s: %s", name, exc)
            return dict(self._engine_ulimits_cache)

    async def start(self, container_id: str) -> None:
        def start() -> None:
            response = self._client.api.post(f"/containers/{container_id}/start")
            response.raise_for_status()

        try:
            await self._call(start, what=f"start {container_id[:12]}")
        except RuntimeFailure as exc:
            if SETRLIMIT_FAILURE not in str(exc):
                raise
            raise type(exc)(f"{exc} ({SETRLIMIT_HINT})") from exc

    # `timeout` is Podman's grace period before SIGKILL (the Protocol's name), not a deadline.
    async def stop(self, container_id: str, *, timeout: float) -> None:  # noqa: ASYNC109
        seconds = max(0, math.ceil(timeout))

        def stop() -> None:
            # 304: already stopped. The HTTP timeout must outlast Podman's grace period.
            response = self._client.api.post(
                f"/containers/{container_id}/stop",
                params={"timeout": seconds},
                timeout=seconds + self._timeout,
            )
            if response.status_code != 304:
                response.raise_for_status()

        await self._call(
            stop, what=f"stop {container_id[:12]}", deadline=seconds + self._timeout + CALL_MARGIN
        )

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            # timeout=0: a forced remove kills at once (callers stop gracefully first).
            response = self._client.api.delete(
                f"/containers/{container_id}", params={"force": True, "timeout": 0}
            )
            if response.status_code != 404:
                response.raise_for_status()

        await self._call(remove, what=f"remove {container_id[:12]}")

    async def inspect(self, container_id: str) -> ContainerInfo:
        def inspect() -> dict[str, Any]:
            response = self._client.api.get(f"/containers/{container_id}/json")
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body

        try:
            body = await self._call(inspect, what=f"inspect {container_id[:12]}")
        except ContainerNotFound:
            raise
        except RuntimeFailure as exc:
            if _vanished(exc):  # removed while it was being read: gone all the same
                raise ContainerNotFound(str(exc)) from exc
            raise
        try:
            return info_from_inspect(body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TemporaryRuntimeError(f"inspect {container_id}: odd answer ({exc!r})") from exc

    async def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        filters = json.dumps({"label": [f"{key}={value}" for key, value in labels.items()]})

        def list_() -> list[dict[str, Any]]:
            response = self._client.api.get(
                "/containers/json", params={"all": True, "filters": filters}
            )
            response.raise_for_status()
            body: list[dict[str, Any]] = response.json()
            return body

        # libpod's list fails whole when a container goes while it is being listed (a
        # removal racing the list); that is no reason to know nothing: list again.
        for attempt in range(LIST_ATTEMPTS):
            try:
                entries = await self._call(list_, what="list containers")
                break
            except RuntimeFailure as exc:
                if attempt + 1 == LIST_ATTEMPTS or not _vanished(exc):
                    raise
        infos = []
        for entry in entries:
            try:
                info = info_from_list(entry)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # Unknown, not "no containers": the round that asked plans nothing.
                raise TemporaryRuntimeError(f"list: odd answer from Podman ({exc!r})") from exc
            if not info.running and info.status != "created":
                # The list omits OOMKilled; inspect the few that have exited.
                try:
                    info = await self.inspect(info.container_id)
                except ContainerNotFound:
                    continue
                except RuntimeFailure as exc:
                    if _vanished(exc):
                        continue  # removed between the list and the inspect
                    raise
            infos.append(info)
        return infos

    async def stats(self, container_id: str) -> ContainerStats:
        measured = await self.stats_many([container_id])
        if container_id not in measured:
            raise ContainerNotFound(f"stats {container_id[:12]}: gone or not running")
        return measured[container_id]

    async def stats_many(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        # One GET /containers/stats?containers=A&containers=B&stream=false for them all.
        ids = list(dict.fromkeys(container_ids))
        if not ids:
            return {}

        def stats() -> dict[str, Any]:
            response = self._client.api.get(
                "/containers/stats", params={"containers": ids, "stream": False}
            )
            response.raise_for_status()
            body: dict[str, Any] = json.loads(response.content)
            return body

        what = f"stats {ids[0][:12]}" if len(ids) == 1 else f"stats of {len(ids)} containers"
        body = await self._call(stats, what=what)
        entries = body.get("Stats")
        if body.get("Error") is not None or entries is None:
            # Podman 4.3 fails the whole call when one id is gone (Error {}, no Stats): ask
            # for each alone then, so the others are still measured.
            if len(ids) == 1:
                return {}
            measured: dict[str, ContainerStats] = {}
            for container_id in ids:
                measured.update(await self.stats_many([container_id]))
            return measured
        by_full_id = {str(e.get("ContainerID", "")): e for e in entries}
        out = {}
        for container_id in ids:
            entry = by_full_id.get(container_id) or next(
                (e for full, e in by_full_id.items() if full.startswith(container_id)), None
            )
            # A container that is not running is reported with zeros (and no SystemNano):
            # not measured, so left out rather than shown as idle.
            if entry is not None and entry.get("SystemNano"):
                out[container_id] = stats_from_entry(entry)
        return out

    async def logs(self, container_id: str, *, tail: int | None = None) -> bytes:
        def logs() -> bytes:
            container = self._client.containers.get(container_id)
            frames = container.logs(stdout=True, stderr=True, tail=tail)
            return frames if isinstance(frames, bytes) else b"".join(frames)

        return await self._call(logs, what=f"logs {container_id[:12]}")

    async def follow_logs(
        self, container_id: str, *, tail: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        params = {"follow": "true", "stdout": "true", "stderr": "true"}
        if tail is not None:
            params["tail"] = str(tail)
        path = f"/containers/{container_id}/logs"
        buffer = b""
        async with aclosing(self._stream(path, params, what=f"logs {container_id[:12]}")) as body:
            async for chunk in body:
                buffer += chunk
                # Frames: 1 byte stream (1 stdout, 2 stderr), 3 padding, 4 length (big-endian).
                while len(buffer) >= 8:
                    (length,) = struct.unpack_from(">L", buffer, 4)
                    if len(buffer) < 8 + length:
                        break
                    frame, buffer = buffer[8 : 8 + length], buffer[8 + length :]
                    if frame:
                        yield frame

    async def events(self, labels: Mapping[str, str]) -> AsyncGenerator[ContainerEvent, None]:
        filters = {"type": ["container"]}
        if labels:
            filters["label"] = [f"{key}={value}" for key, value in labels.items()]
        params = {"stream": "true", "filters": json.dumps(filters)}
        buffer = b""
        async with aclosing(self._stream("/events", params, what="events")) as body:
            async for chunk in body:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = parse_event(line)
                    except MalformedEvent as exc:
                        log.warning(
                            "podman: skipped an event that cannot be read (%s): %r",
                            exc,
                            line[:EVENT_EXCERPT],
                        )
                        continue
                    yield event

    async def _stream(
        self, path: str, params: Mapping[str, str], *, what: str
    ) -> AsyncGenerator[bytes, None]:
        """The body of a libpod GET, as it arrives (berthd's HTTP client helper)."""
        address = client.address_of_url(self.url)
        if address is None:
            raise RuntimeFailure(
                f"streaming from Podman at {self.url!r} is not supported (unix or tcp only)"
            )
        target = f"{LIBPOD_PREFIX}{path}?{urlencode(params)}"
        head_limit = self._timeout + CALL_MARGIN
        try:
            async with AsyncExitStack() as stack:
                # The connect and the response head are bounded like any call; the body of
                # a stream (events, logs -f) has no deadline: it lasts as long as it lasts.
                with trio.fail_after(head_limit):
                    response = await stack.enter_async_context(
                        client.request(address, "GET", target, [("Host", "podman")])
                    )
                if response.status >= 400:
                    error = await response.read(ERROR_BODY_LIMIT)
                else:
                    async for chunk in response:
                        yield chunk
                    return
        except trio.TooSlowError:
            raise TemporaryRuntimeError(
                f"{what}: Podman at {self.url} did not answer within {head_limit:g}s"
            ) from None
        except client.ConnectFailed as exc:
            raise TemporaryRuntimeError(
                f"{what}: Podman at {self.url} unreachable ({exc})"
            ) from exc
        except client.HttpClientError as exc:
            raise TemporaryRuntimeError(f"{what}: Podman at {self.url}: {exc!r}") from exc
        if response.status == 404:
            raise ContainerNotFound(f"{what}: {_message(error)}")
        raise RuntimeFailure(f"{what}: {_message(error)}")

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._client.close)

    async def volume_exists(self, name: str) -> bool:
        return await self._call(partial(self._client.volumes.exists, name), what=f"volume {name}")

    async def create_volume(self, name: str, *, labels: Mapping[str, str] | None = None) -> None:
        def create() -> None:
            response = self._client.api.post(
                "/volumes/create",
                data=json.dumps({"Name": name, "Label": dict(labels or {})}),
                headers={"Content-Type": "application/json"},
            )
            # Made meanwhile (another worker, another berthd): as good as made here. Podman
            # 4.3 answers 500 "volume already exists", later ones 409.
            if response.status_code == 409 or (
                not response.ok and "volume already exists" in response.text
            ):
                return
            response.raise_for_status()

        await self._call(create, what=f"create volume {name}")

    async def volume_labels(self, name: str) -> Mapping[str, str] | None:
        def inspect() -> dict[str, str] | None:
            response = self._client.api.get(f"/volumes/{name}/json")
            if response.status_code == 404:
                return None
            response.raise_for_status()
            labels = response.json().get("Labels") or {}
            return {str(k): str(v) for k, v in labels.items()}

        return await self._call(inspect, what=f"volume {name}")


def _explain(exc: podman.errors.APIError) -> str:
    return exc.explanation or str(exc)


def _message(body: bytes) -> str:
    """Podman's explanation from an error body ({"cause": ..., "message": ...})."""
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip()


def _close_leaked_sockets(exc: BaseException | None) -> None:
    """podman-py 5.8's UDSSocket.connect() leaves its socket open when connect() fails."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            candidate = tb.tb_frame.f_locals.get("self")
            if isinstance(candidate, socket.socket):
                candidate.close()
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__


def _vanished(exc: RuntimeFailure) -> bool:
    """libpod's words (a 500, not a 404) for a container removed while it was being read."""
    text = str(exc).lower()
    return "no such container" in text or "does not exist" in text
