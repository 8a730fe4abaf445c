"""`config.credentials`: the checked opener of credential files, on real files in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.credentials import (
    CredentialFileError,
    credential_path_problem,
    open_credential,
    read_credential,
)

FIELD = "registry.password_file"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "creds"
    (path / "team").mkdir(parents=True)
    secret = path / "team" / "token"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    return path


def refusal(path: Path | str, roots: tuple[Path, ...]) -> str:
    with pytest.raises(CredentialFileError) as caught:
        read_credential(str(path), field=FIELD, roots=roots)
    message = str(caught.value)
    assert message.startswith(f"{FIELD}: ") and "s3cret" not in message
    return message.removeprefix(f"{FIELD}: ")


def test_a_file_under_a_root_is_read(root: Path) -> None:
    assert read_credential(str(root / "team" / "token"), field=FIELD, roots=(root,)) == (
        b"s3cret\n"
    )
    assert credential_path_problem(str(root / "team" / "token"), (root,)) is None


def test_outside_the_roots_says_the_same_whether_it_exists_or_not(
    root: Path, tmp_path: Path
) -> None:
    present = tmp_path / "elsewhere"
    present.write_text("x")
    present.chmod(0o600)
    words = f"must lie under berthd's credentials_roots ({root})"
    assert refusal(present, (root,)) == words
    assert refusal(tmp_path / "absent", (root,)) == words
    assert refusal("/etc/shadow", (root,)) == words
    assert refusal("/root/.cache/huggingface/token", (root,)) == words
    # ".." cannot climb out, nor a sibling whose name starts like the root's.
    assert refusal(f"{root}/../elsewhere", (root,)) == words
    (tmp_path / "creds-evil").mkdir()
    assert refusal(tmp_path / "creds-evil" / "x", (root,)) == words
    assert credential_path_problem(str(present), (root,)) == words


def test_absent_under_a_root(root: Path) -> None:
    assert refusal(root / "team" / "nope", (root,)) == "does not exist on this host"
    assert refusal(root / "nope" / "x", (root,)) == "does not exist on this host"
    assert refusal(root, (root,)) == "is a credentials root itself, not a file in it"


def test_symbolic_links_are_refused_anywhere_below_the_root(root: Path, tmp_path: Path) -> None:
    (root / "link").symlink_to(root / "team" / "token")  # even one that stays inside
    (root / "dirlink").symlink_to(root / "team")
    (root / "out").symlink_to("/etc/shadow")
    for path in (root / "link", root / "dirlink" / "token", root / "out"):
        assert "symbolic link" in refusal(path, (root,))


def test_a_root_may_itself_be_a_link(root: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    for path in (alias / "team" / "token", root / "team" / "token"):
        assert read_credential(str(path), field=FIELD, roots=(alias,)) == b"s3cret\n"


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_writable_by_others_is_refused(root: Path, mode: int) -> None:
    path = root / "team" / "token"
    path.chmod(mode)
    assert refusal(path, (root,)) == (f"must not be writable by group or others (mode {mode:04o})")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owned_by_another_user_is_refused(root: Path) -> None:
    path = root / "team" / "token"
    os.chown(path, 65534, 65534)
    assert refusal(path, (root,)) == (
        "must be owned by root or by berthd's user (owned by uid 65534)"
    )


def test_not_a_regular_file(root: Path) -> None:
    os.mkfifo(root / "fifo", 0o600)  # must not hang the open
    assert refusal(root / "fifo", (root,)) == "is not a regular file"
    assert refusal(root / "team", (root,)) == "is not a regular file"


def test_too_large(root: Path) -> None:
    path = root / "team" / "token"
    with pytest.raises(CredentialFileError, match="larger than 4 bytes"):
        read_credential(str(path), field=FIELD, roots=(root,), max_bytes=4)


def test_open_credential_gives_a_descriptor_to_reopen_by_proc(root: Path) -> None:
    with open_credential(str(root / "team" / "token"), field=FIELD, roots=(root,)) as fd:
        assert Path(f"/proc/self/fd/{fd}").read_bytes() == b"s3cret\n"
