"""The secret store: one file per secret under `STATE/secrets/`, berthd its only writer.

Layout (every file 0600, the directory 0700, all owned by berthd's user):
    STATE/secrets/NAME          the value, exactly its bytes (nothing else in the file)
    STATE/secrets/.salt         32 random bytes: the fingerprints' salt, made once
    STATE/secrets/.index.json   when each secret was created and last changed (no values)
Names follow `config.secret_ref.SECRET_NAME`, so they never start with "." and never
collide with berth's own files or with the temporary files of a write in progress.

Invariants:
- A value never leaves this module except as `read`'s answer: not in a log line, an
  exception, a `repr` or the index. What may be shown is the `SecretInfo` (name, times,
  size and a fingerprint: the first 8 hex digits of SHA-256(salt + value), which says
  "changed or not" without letting anyone who lacks the salt test a guess).
- A write is atomic: a temporary file opened O_CREAT|O_EXCL|O_NOFOLLOW, 0600 from its
  first byte, written, fsync'ed, renamed over the old one, the directory fsync'ed. A
  reader sees the old value or the new, never a mix; a crash leaves a stale temporary
  file that the next `open` removes.
- Every path is opened relative to the directory's own descriptor with O_NOFOLLOW, and
  the directory itself is refused when it is a symbolic link or someone else's: a link
  planted in the directory is never followed.
- The index in memory (`names`, `fingerprint`) is what was read at `open` plus this
  process' own changes; every blocking call runs in a thread of the store's own (one at a
  time, so writes are serialised), never on trio's.
- Values are UTF-8 text without NUL bytes, 1 byte to 64 KiB: what an environment
  variable, an HTTP credential or a password file can carry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Final, Literal, TypeVar

import trio

from config.secret_ref import SECRET_NAME, SECRET_NAME_RULE

log = logging.getLogger("berthd.secrets")

MAX_VALUE_BYTES: Final = 64 * 1024
DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600
SALT_FILE: Final = ".salt"
INDEX_FILE: Final = ".index.json"
SALT_BYTES: Final = 32
FINGERPRINT_HEX: Final = 8
_TEMP_SUFFIX: Final = ".tmp"
_OPEN_FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC

T = TypeVar("T")
SecretOutcome = Literal["created", "updated", "unchanged"]


class SecretError(Exception):
    """The secret store cannot do what was asked; the message says why (never a value)."""


class NoSuchSecret(SecretError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f'no such secret "{name}"')
        self.name = name


class SecretRefused(SecretError, ValueError):
    """A name or value that the store does not take."""


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about a secret: never its value."""

    name: str
    created_at: str  # RFC 3339 UTC
    updated_at: str
    fingerprint: str  # changes when the value does
    size: int  # bytes

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SecretChange:
    info: SecretInfo
    outcome: SecretOutcome
    previous: SecretInfo | None  # before this change; None when it was created


def utc_stamp(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_name(name: str) -> str:
    if not SECRET_NAME.fullmatch(name):
        raise SecretRefused(f"secret name {SECRET_NAME_RULE} (got {name!r})")
    return name


def check_value(value: bytes) -> bytes:
    if not value:
        raise SecretRefused("the value is empty")
    if len(value) > MAX_VALUE_BYTES:
        raise SecretRefused(f"the value is {len(value)} bytes; at most {MAX_VALUE_BYTES} (64 KiB)")
    if b"\0" in value:
        raise SecretRefused("the value holds a NUL byte (an environment variable cannot)")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretRefused("the value is not UTF-8 text") from None
    return value


class SecretStore:
    """`await open()` once, then `create`, `read`, `remove` (async), `names`, `fingerprint`."""

    def __init__(self, directory: Path, *, now: Callable[[], str] = utc_stamp) -> None:
        self.directory = directory
        self._now = now
        self._salt = b""
        self._index: dict[str, SecretInfo] = {}
        self._limiter = trio.CapacityLimiter(1)  # the store's own thread: one call at a time
        self._opened = False

    def __repr__(self) -> str:
        return f"<SecretStore {str(self.directory)!r} secrets={len(self._index)}>"

    # -- the async face (each blocking call in the store's thread) --------------------------

    async def open(self) -> list[str]:
        """Make or check the directory, load the salt and index; returns what it tightened
        (one line each, for the log): a directory or file that others could read."""
        notes = await trio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
        self._opened = True
        return notes

    async def create(self, name: str, value: bytes) -> SecretChange:
        """Create `name`, or give it a new value (the same value again changes nothing)."""
        check_name(name)
        check_value(value)
        return await self._in_thread(self._create_sync, name, value)

    async def read(self, name: str) -> bytes:
        """The value of `name`; NoSuchSecret when there is none."""
        check_name(name)
        return await self._in_thread(self._read_sync, name)

    async def remove(self, name: str) -> SecretInfo:
        check_name(name)
        return await self._in_thread(self._remove_sync, name)

    # -- in memory: never blocks ----------------------------------------------------------

    def names(self) -> list[SecretInfo]:
        """Every secret, by name."""
        return [self._index[name] for name in sorted(self._index)]

    def info(self, name: str) -> SecretInfo | None:
        return self._index.get(name)

    def fingerprint(self, name: str) -> str | None:
        info = self._index.get(name)
        return info.fingerprint if info else None

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        if not self._opened:
            raise SecretError("the secret store is not open")
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self._limiter)

    # -- the synchronous work -------------------------------------------------------------

    def _fingerprint(self, value: bytes) -> str:
        return hashlib.sha256(self._salt + value).hexdigest()[:FINGERPRINT_HEX]

    @contextlib.contextmanager
    def _dir(self) -> Iterator[int]:
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS)
        except OSError as exc:
            raise SecretError(f"{self.directory}: {exc.strerror or exc}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _open_sync(self) -> list[str]:
        notes: list[str] = []
        try:
            os.mkdir(self.directory, DIRECTORY_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SecretError(f"{self.directory}: {exc.strerror or exc}") from None
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            raise SecretError(f"{self.directory}: not a directory (a link or a file is refused)")
        if st.st_uid != os.geteuid():
            raise SecretError(f"{self.directory}: owned by uid {st.st_uid}, not berthd's")
        if stat.S_IMODE(st.st_mode) != DIRECTORY_MODE:
            os.chmod(self.directory, DIRECTORY_MODE)
            notes.append(
                f"{self.directory}: mode {stat.S_IMODE(st.st_mode):04o} -> {DIRECTORY_MODE:04o}"
            )
        with self._dir() as dfd:
            self._salt = self._load_salt(dfd, notes)
            index = self._read_index(dfd)
            found: dict[str, SecretInfo] = {}
            for entry in sorted(os.listdir(dfd)):
                if entry.startswith(".") and entry.endswith(_TEMP_SUFFIX):
                    os.unlink(entry, dir_fd=dfd)  # a write that never finished
                    notes.append(f"{self.directory / entry}: an unfinished write, removed")
                    continue
                if not SECRET_NAME.fullmatch(entry):
                    continue
                value, mtime = self._read_file(dfd, entry, notes)
                known = index.get(entry, {})
                found[entry] = SecretInfo(
                    name=entry,
                    created_at=str(known.get("created_at") or mtime),
                    updated_at=str(known.get("updated_at") or mtime),
                    fingerprint=self._fingerprint(value),
                    size=len(value),
                )
            self._index = found
            self._write_index(dfd)
        return notes

    def _load_salt(self, dfd: int, notes: list[str]) -> bytes:
        try:
            salt, _ = self._read_file(dfd, SALT_FILE, notes)
        except NoSuchSecret:
            salt = os.urandom(SALT_BYTES)
            _write_atomic(dfd, SALT_FILE, salt)
        return salt

    def _read_index(self, dfd: int) -> dict[str, dict[str, object]]:
        try:
            raw, _ = self._read_file(dfd, INDEX_FILE, [])
            data = json.loads(raw)
        except NoSuchSecret:
            return {}
        except ValueError:
            log.warning("%s: unreadable, the times are taken from the files", INDEX_FILE)
            return {}
        entries = data.get("secrets") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict)}

    def _write_index(self, dfd: int) -> None:
        entries = {
            name: {"created_at": i.created_at, "updated_at": i.updated_at}
            for name, i in sorted(self._index.items())
        }
        text = json.dumps({"version": 1, "secrets": entries}, indent=1) + "\n"
        _write_atomic(dfd, INDEX_FILE, text.encode())

    def _read_file(self, dfd: int, name: str, notes: list[str]) -> tuple[bytes, str]:
        """A file's bytes and mtime (RFC 3339); tightens a loose mode, refuses a non-file."""
        try:
            fd = os.open(name, os.O_RDONLY | _OPEN_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            raise NoSuchSecret(name) from None
        except OSError as exc:  # ELOOP: a symbolic link, never followed
            raise SecretError(f"{self.directory / name}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SecretError(f"{self.directory / name}: not a regular file")
            if stat.S_IMODE(st.st_mode) != FILE_MODE:
                os.fchmod(fd, FILE_MODE)
                notes.append(
                    f"{self.directory / name}: mode {stat.S_IMODE(st.st_mode):04o} -> "
                    f"{FILE_MODE:04o}"
                )
            chunks = []
            size = 0
            while chunk := os.read(fd, MAX_VALUE_BYTES + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_VALUE_BYTES:
                    raise SecretError(f"{self.directory / name}: larger than {MAX_VALUE_BYTES}")
            mtime = utc_stamp(datetime.fromtimestamp(st.st_mtime, UTC))
            return b"".join(chunks), mtime
        finally:
            os.close(fd)

    def _read_sync(self, name: str) -> bytes:
        with self._dir() as dfd:
            value, _ = self._read_file(dfd, name, [])
        return value

    def _create_sync(self, name: str, value: bytes) -> SecretChange:
        previous = self._index.get(name)
        fingerprint = self._fingerprint(value)
        if previous is not None and previous.fingerprint == fingerprint:
            with self._dir() as dfd:
                current, _ = self._read_file(dfd, name, [])
            if current == value:
                return SecretChange(previous, "unchanged", previous)
        now = self._now()
        info = SecretInfo(
            name=name,
            created_at=previous.created_at if previous else now,
            updated_at=now,
            fingerprint=fingerprint,
            size=len(value),
        )
        with self._dir() as dfd:
            _write_atomic(dfd, name, value)
            self._index[name] = info
            self._write_index(dfd)
        return SecretChange(info, "updated" if previous else "created", previous)

    def _remove_sync(self, name: str) -> SecretInfo:
        with self._dir() as dfd:
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                raise NoSuchSecret(name) from None
            os.fsync(dfd)
            info = self._index.pop(name, None)
            self._write_index(dfd)
        if info is None:  # a file made behind berthd's back since open
            info = SecretInfo(name, "", "", "", 0)
        return info


def _write_atomic(dfd: int, name: str, data: bytes) -> None:
    """`data` as the file `name` in the directory `dfd`, replaced whole or not at all."""
    temp = f".{name}.{os.urandom(6).hex()}{_TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, FILE_MODE, dir_fd=dfd)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask could only narrow it; say exactly what we mean
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dfd)
        raise
    os.fsync(dfd)
