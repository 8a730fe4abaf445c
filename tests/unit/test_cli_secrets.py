"""`berth secret create`'s value: from a file, stdin or a no-echo prompt; one newline off."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from daemon.cli import secrets as cli_secrets
from daemon.cli.client import CliError


class FakeStdin(io.TextIOWrapper):
    def __init__(self, data: bytes, *, tty: bool) -> None:
        super().__init__(io.BytesIO(data))
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_a_file_loses_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"hf_value\n\n")
    assert cli_secrets.read_value(str(path)) == b"hf_value\n"
    path.write_bytes(b"line1\nline2\r\n")
    assert cli_secrets.read_value(str(path)) == b"line1\nline2"


def test_stdin_when_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", FakeStdin(b"sk-value\n", tty=False))
    assert cli_secrets.read_value(None) == b"sk-value"
    monkeypatch.setattr("sys.stdin", FakeStdin(b"from-dash", tty=True))
    assert cli_secrets.read_value("-") == b"from-dash"  # "-" reads stdin even on a tty


def test_a_terminal_is_asked_twice_without_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", FakeStdin(b"", tty=True))
    answers = iter(["typed", "typed"])
    monkeypatch.setattr(cli_secrets.getpass, "getpass", lambda prompt: next(answers))
    assert cli_secrets.read_value(None) == b"typed"
    answers = iter(["one", "two"])
    with pytest.raises(CliError, match="differ"):
        cli_secrets.read_value(None)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"\n", "empty"), (b"x" * (64 * 1024 + 1), "over 65536")],
)
def test_refused_before_sending(monkeypatch: pytest.MonkeyPatch, data: bytes, message: str) -> None:
    monkeypatch.setattr("sys.stdin", FakeStdin(data, tty=False))
    with pytest.raises(CliError, match=message):
        cli_secrets.read_value(None)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cannot read .*: No such file"):
        cli_secrets.read_value(str(tmp_path / "absent"))
