"""The `berth` command's side of the admin API: httpx over berthd's Unix socket.

Every failure becomes a `CliError` whose message is one line in the user's terms (the
daemon not running, no permission on the socket, the server's own `error`), so the command
can print `berth: message` and exit 1 without a traceback. httpx's exceptions never leave
this module.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_SOCKET = "/run/berth/berth.sock"
DEFAULT_TIMEOUT = 30.0


class CliError(Exception):
    """A failure reported as `berth: MESSAGE` on stderr; `exit_code` is the command's status."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ApiError(CliError):
    """berthd answered 4xx/5xx; `problems` is filled for a refused spec."""

    def __init__(self, status: int, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems


class AdminClient:
    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        self._reachable = False
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=socket_path),
            base_url="http://berth",
            timeout=timeout,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer (or text, or None for an empty body)."""
        self._check_reachable()
        with self._translate():
            response = self._client.request(
                method, path, params=params, json=json, content=content, headers=headers
            )
        if response.is_error:
            raise _api_error(response)
        if not response.content:
            return None
        if "json" in response.headers.get("content-type", ""):
            try:
                return response.json()
            except ValueError as exc:
                raise CliError(f"berthd sent malformed JSON for {method} {path}") from exc
        return response.text

    @contextmanager
    def stream(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A streamed answer; its body is read by the caller, errors are still translated."""
        # Following a stream waits for the server as long as it takes.
        timeout = httpx.Timeout(self._timeout, read=None)
        self._check_reachable()
        with self._translate():
            with self._client.stream(method, path, params=params, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise _api_error(response)
                yield response

    def _check_reachable(self) -> None:
        """Connect once ourselves first, for a precise message when berthd is not there.

        (httpcore 1.0 also leaks the socket of a failed Unix connect; this way the common
        failures never reach it.)
        """
        if self._reachable:
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(self._timeout)
            probe.connect(self.socket_path)
        except TimeoutError:
            raise CliError(f"berthd at {self.socket_path} did not answer in time") from None
        except OSError as exc:
            raise CliError(_connect_failure(self.socket_path, exc)) from None
        finally:
            probe.close()
        self._reachable = True

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise CliError(_connect_failure(self.socket_path, exc)) from None
        except httpx.TimeoutException:
            raise CliError(f"berthd at {self.socket_path} did not answer in time") from None
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise CliError(
                f"lost the connection to berthd at {self.socket_path} ({detail})"
            ) from None


def _connect_failure(socket_path: str, exc: BaseException) -> str:
    os_error = _find_os_error(exc)
    code = os_error.errno if os_error is not None else None
    text = str(exc)
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return f"permission denied on {socket_path} (join the socket's group, or run berth as root)"
    if (
        code in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR)
        or "No such file" in text
        or "Connection refused" in text
    ):
        return f"cannot reach berthd at {socket_path} (is berthd running?)"
    detail = os_error.strerror if os_error is not None and os_error.strerror else text
    return f"cannot reach berthd at {socket_path}: {detail}"


def _find_os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _api_error(response: httpx.Response) -> ApiError:
    message = ""
    problems: list[str] = []
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("error") or "")
        raw = body.get("problems")
        if isinstance(raw, list):
            problems = [str(p) for p in raw]
    elif response.text.strip():
        message = response.text.strip().splitlines()[0]
    if not message:
        request = response.request
        message = (
            f"berthd answered {response.status_code} {response.reason_phrase} "
            f"to {request.method} {request.url.path}"
        )
    return ApiError(response.status_code, " ".join(message.split()), problems)


def deployment_path(name: str, *rest: str) -> str:
    """The admin API path of a deployment (and of something under it), each part quoted."""
    return "/v1/deployments/" + "/".join(quote(part, safe="") for part in (name, *rest))
