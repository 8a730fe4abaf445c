"""`[registry]` -> RegistryAuth, and the X-Registry-Auth header PodmanRuntime sends with it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from config.spec import Registry
from daemon.integrations.registry import RegistryCredentialsError, registry_auth
from daemon.runtime.interface import (
    ImageNotFound,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)
from daemon.runtime.pull import pull_failure, registry_auth_header

SECRET = "pa55:w0rd with spaces"


def decode(header: str | None) -> dict[str, str]:
    assert header is not None
    body: dict[str, str] = json.loads(base64.urlsafe_b64decode(header))
    return body


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_no_registry_no_auth() -> None:
    assert registry_auth(None, ()) is None


def test_password_file_is_read_without_its_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(f"{SECRET}\n")
    auth = registry_auth(
        Registry(username="deploy", password_file=str(tmp_path / "pw")), (tmp_path,)
    )
    assert auth == RegistryAuth(username="deploy", password=SECRET)
    assert SECRET not in repr(auth) and SECRET not in str(auth)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "does not exist on this host"),
        ("", "is empty"),
        ("\n", "is empty"),
        (f"{SECRET}\nsecond line\n", "must hold the password alone, on one line"),
    ],
)
def test_bad_password_files(tmp_path: Path, content: str | None, reason: str) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RegistryCredentialsError) as caught:
        registry_auth(Registry(username="u", password_file=str(path)), (tmp_path,))
    assert str(caught.value) == f"registry.password_file: {reason}"


def test_auth_file_is_read_once_and_its_auths_travel(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    auths = {"ghcr.io": auth_entry("u", SECRET)}
    path.write_text(json.dumps({"auths": auths}))
    auth = registry_auth(Registry(auth_file=str(path)), (tmp_path,))
    assert auth == RegistryAuth(auth_file=str(path)) and auth.auths == auths
    assert SECRET not in repr(auth)
    path.write_text(json.dumps({"credHelpers": {}}))
    with pytest.raises(RegistryCredentialsError, match='no "auths" object'):
        registry_auth(Registry(auth_file=str(path)), (tmp_path,))
    path.write_text(f'{{"auths": {{"x": "{SECRET}"')
    with pytest.raises(RegistryCredentialsError) as caught:
        registry_auth(Registry(auth_file=str(path)), (tmp_path,))
    assert str(caught.value) == (
        "registry.auth_file: is not a containers-auth.json file (not JSON)"
    )


def test_header_from_username_and_password() -> None:
    header = registry_auth_header(
        "127.0.0.1:5000/app:1", RegistryAuth(username="u", password=SECRET)
    )
    assert decode(header) == {
        "username": "u",
        "password": SECRET,
        "serveraddress": "127.0.0.1:5000",
    }


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("ghcr.io/org/app:1", "ghcr.io"),
        ("localhost/app", "localhost"),
        ("host:5000/a/b@sha256:" + "0" * 64, "host:5000"),
        ("org/app", "docker.io"),
        ("busybox:1", "docker.io"),
    ],
)
def test_header_names_the_images_registry(image: str, registry: str) -> None:
    header = registry_auth_header(image, RegistryAuth(username="u", password="p"))
    assert decode(header)["serveraddress"] == registry


def test_auth_file_entry_for_the_images_registry(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"  # never read: the entries travel in the RegistryAuth
    auths = {
        "quay.io": auth_entry("general", "g"),
        "quay.io/team": auth_entry("team", "t"),
        "https://ghcr.io": auth_entry("gh", "h"),
        "https://index.docker.io/v1/": auth_entry("hub", "d"),
        "reg.example:5000": {"identitytoken": "tok"},
        "broken.example": {"auth": "not base64!"},
    }
    auth = RegistryAuth(auth_file=str(path), auths=auths)

    def user(image: str) -> str | None:
        header = registry_auth_header(image, auth)
        return None if header is None else decode(header).get("username", "<token>")

    assert user("quay.io/other/app") == "general"
    assert user("quay.io/team/app:1") == "team"  # the longest key that matches wins
    assert user("quay.io/teamster/app") == "general"  # a path prefix ends at a "/"
    assert user("ghcr.io/org/x") == "gh"
    assert user("library/busybox") == "hub"
    assert user("reg.example:5000/x") == "<token>"
    assert decode(registry_auth_header("reg.example:5000/x", auth))["identitytoken"] == "tok"
    assert user("elsewhere.example/x") is None  # no entry: an anonymous pull
    assert user("broken.example/x") is None


@pytest.mark.parametrize(
    ("error", "authenticated", "kind", "start"),
    [
        (
            "reading manifest 1 in r:5000/app: unauthorized: authentication required",
            True,
            RuntimeFailure,
            "pull r:5000/app:1: the registry refused the credentials given: reading",
        ),
        (
            "requested access to the resource is denied",
            False,
            RuntimeFailure,
            "pull r:5000/app:1: the registry refused an anonymous pull (no [registry]): ",
        ),
        ("reading manifest 1: manifest unknown: manifest unknown", True, ImageNotFound, "pull "),
        (
            'Get "https://r:5000/v2/": http: server gave HTTP response to HTTPS client',
            False,
            RuntimeFailure,
            "pull r:5000/app:1: Get",
        ),
        ("dial tcp r:5000: connect: connection refused", True, TemporaryRuntimeError, "pull "),
        ("writing blob: permission denied", True, RuntimeFailure, "pull r:5000/app:1: writing"),
    ],
)
def test_pull_errors_say_what_happened(
    error: str, authenticated: bool, kind: type[RuntimeFailure], start: str
) -> None:
    failure = pull_failure("r:5000/app:1", error, authenticated=authenticated)
    assert type(failure) is kind
    assert str(failure).startswith(start)
    if "HTTPS client" in error:
        assert str(failure).endswith("must be marked insecure = true in Podman's registries.conf)")
