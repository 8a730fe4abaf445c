"""Preparing a revision's `[[mounts]]` before its replicas are created.

`MountPreparer.prepare(spec, spec_id)` turns the spec's mounts into the `MountSpec`s of a
`ContainerSpec`, doing the host-side work each type needs:

    bind    re-checked (`daemon.integrations.mount_checks`) and bound by its resolved path,
            so a symbolic link swapped after apply cannot lead elsewhere
    volume  the named Podman volume, created if absent with berth's labels for this
            deployment; one that exists must carry them (or be one of berthd's
            `shared_volumes`): `daemon.integrations.mount_checks.volume_problem`
    git     cloned once per revision into `<state_dir>/git/<deployment>/<spec_id>/<index>`,
            bound read-only; later replicas (and a restarted berthd) reuse the checkout;
            the credentials file read through `config.credentials` (or the `credentials`
            secret's value, through `read_secret`) just before the clone
    model   `<state_dir>/models/<name>`, re-checked, bound read-only by its resolved path

Invariants:
- A checkout directory that exists is complete (`daemon.integrations.git` renames it into place).
- A failure is a `MountError` whose message says why, fit for a deployment event; nothing
  else escapes but `RuntimeFailure` from the runtime's volume calls.
- A failed clone is not tried again on every reconcile round: the failure is remembered and
  handed back (`MountError.repeated`) until a back-off (10 s, doubling to 5 min) has passed.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from config.credentials import CredentialFileError, read_credential
from config.settings import DaemonSettings
from config.spec import DeploymentSpec, Mount, MountType, Registry
from daemon.integrations.git import MountError, checkout
from daemon.integrations.mount_checks import (
    LABEL_VOLUME_DEPLOYMENT,
    bind_source_problem,
    git_source_problem,
    model_dir,
    model_problem,
    volume_problem,
)
from daemon.integrations.registry import registry_auth
from daemon.runtime.interface import ContainerRuntime, MountSpec, RegistryAuth

__all__ = ["MountError", "MountPreparer", "git_checkouts_dir"]

# `bind_source_problem` or `model_problem`: (source, settings) -> the reason, or None.
_Check = Callable[[str, DaemonSettings], str | None]

RETRY_FIRST = 10.0
RETRY_MAX = 300.0


def git_checkouts_dir(state_dir: Path, deployment: str) -> Path:
    """Where a deployment's git checkouts live, one directory per spec_id."""
    return state_dir / "git" / deployment


@dataclass
class _Failure:
    message: str
    retry_at: float
    delay: float


class MountPreparer:
    def __init__(
        self,
        runtime: ContainerRuntime,
        settings: DaemonSettings,
        *,
        volume_labels: Mapping[str, str] | None = None,
        read_secret: Callable[[str], Awaitable[bytes]] | None = None,
        read_failures: tuple[type[Exception], ...] = (),
    ) -> None:
        self._runtime = runtime
        self._settings = settings
        self._volume_labels = dict(volume_labels or {})
        # A git mount's `credentials = { secret = "NAME" }`: the secret store's `read`, and
        # what it raises when a secret cannot be read (named in the message, never a value).
        self._read_secret = read_secret
        self._read_failures = read_failures
        self._locks: dict[Path, trio.Lock] = {}
        self._failures: dict[Path, _Failure] = {}

    def __repr__(self) -> str:
        return f"<MountPreparer {self._settings.state_dir} {len(self._failures)} failing>"

    @property
    def settings(self) -> DaemonSettings:
        return self._settings

    def registry_auth(
        self, registry: Registry | None, password: str | None = None
    ) -> RegistryAuth | None:
        """The spec's registry credentials, read under this berthd's credentials roots
        (blocking: run it in a thread). `password`: the value of `registry.password`'s
        secret. RegistryCredentialsError names the field."""
        return registry_auth(registry, self._settings.credentials_roots, password)

    async def prepare(self, spec: DeploymentSpec, spec_id: str) -> tuple[MountSpec, ...]:
        """The mounts of `spec` (revision `spec_id`), ready for every replica to use."""
        prepared = []
        for index, mount in enumerate(spec.mounts):
            where = f"mounts[{index}]"
            if mount.type is MountType.BIND:
                check = partial(bind_source_problem, read_only=mount.read_only)
                source = await self._checked(where, mount, check)
                prepared.append(MountSpec("bind", source, mount.target, mount.read_only))
            elif mount.type is MountType.MODEL:
                source = await self._checked(where, mount, model_problem)
                prepared.append(MountSpec("bind", source, mount.target, True))
            elif mount.type is MountType.VOLUME:
                await self._ensure_volume(where, mount.source, spec.name)
                prepared.append(MountSpec("volume", mount.source, mount.target, mount.read_only))
            else:
                dest = git_checkouts_dir(self._settings.state_dir, spec.name) / spec_id / str(index)
                await self._ensure_checkout(where, mount, dest)
                prepared.append(MountSpec("bind", str(dest), mount.target, True))
        return tuple(prepared)

    async def prune(self, deployment: str, keep: Collection[str] = ()) -> None:
        """Remove the deployment's git checkouts except those of the `keep` spec_ids."""
        root = git_checkouts_dir(self._settings.state_dir, deployment)

        def prune() -> None:
            if not root.is_dir():
                return
            for entry in root.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry, ignore_errors=True)
            if not keep:
                shutil.rmtree(root, ignore_errors=True)

        await trio.to_thread.run_sync(prune)
        for path in [p for p in self._failures if root in p.parents]:
            if path.parent.name not in keep:
                del self._failures[path]

    async def _checked(self, where: str, mount: Mount, check: _Check) -> str:
        """The resolved host path of a bind or model mount, checked again now."""
        settings = self._settings

        def resolve() -> str:
            reason = check(mount.source, settings)
            if reason is not None:
                raise MountError(f"{where}.source: {reason} (got {mount.source})")
            path = Path(mount.source)
            if mount.type is MountType.MODEL:
                path = model_dir(settings.state_dir, mount.source)
            return str(path.resolve(strict=True))

        try:
            return await trio.to_thread.run_sync(resolve)
        except OSError as exc:  # it vanished between the check and the resolve
            raise MountError(f"{where}.source: {exc.strerror} (got {mount.source})") from None

    async def _ensure_volume(self, where: str, name: str, deployment: str) -> None:
        labels = await self._runtime.volume_labels(name)
        if labels is None:
            wanted = {**self._volume_labels, LABEL_VOLUME_DEPLOYMENT: deployment}
            await self._runtime.create_volume(name, labels=wanted)
            labels = await self._runtime.volume_labels(name)  # made meanwhile by another?
        reason = volume_problem(name, labels, deployment, self._volume_labels, self._settings)
        if reason is not None:
            raise MountError(f"{where}.source: {reason} (got {name})")

    async def _ensure_checkout(self, where: str, mount: Mount, dest: Path) -> None:
        lock = self._locks.setdefault(dest, trio.Lock())
        async with lock:
            if await trio.to_thread.run_sync(dest.is_dir):
                return
            failure = self._failures.get(dest)
            now = trio.current_time()
            if failure is not None and now < failure.retry_at:
                raise MountError(failure.message, repeated=True)
            try:
                # file:// sources resolve paths (lstat per component): off the loop.
                reason = await trio.to_thread.run_sync(
                    git_source_problem, mount.source, self._settings
                )
                if reason is not None:
                    raise MountError(f"{where}.source: {reason} (got {mount.source})")
                credentials = await self._credentials(where, mount)
                await checkout(mount, dest, credentials)
            except MountError as exc:
                delay = RETRY_FIRST if failure is None else min(failure.delay * 2, RETRY_MAX)
                self._failures[dest] = _Failure(str(exc), now + delay, delay)
                raise
            self._failures.pop(dest, None)

    async def _credentials(self, where: str, mount: Mount) -> bytes | None:
        """The contents of the mount's `credentials_file`, or its `credentials` secret's value."""
        if mount.credentials is not None:
            return await self._secret_credentials(where, mount.credentials.name)
        if mount.credentials_file is None:
            return None
        try:
            return await trio.to_thread.run_sync(
                partial(
                    read_credential,
                    mount.credentials_file,
                    field=f"{where}.credentials_file",
                    roots=self._settings.credentials_roots,
                )
            )
        except CredentialFileError as exc:
            raise MountError(str(exc)) from None

    async def _secret_credentials(self, where: str, name: str) -> bytes:
        field = f"{where}.credentials.secret"
        if self._read_secret is None:
            raise MountError(f"{field}: this berthd keeps no secrets")
        try:
            return await self._read_secret(name)
        except self._read_failures as exc:  # the store's message names no value
            raise MountError(f'{field}: secret "{name}" cannot be read: {exc}') from None
