"""`berth console user add`'s password: from stdin (one newline off) or asked twice on a
terminal without echo; an empty one is refused before anything is sent."""

from __future__ import annotations

import io

import pytest

from daemon.cli import console as cli_console
from daemon.cli.client import CliError
from daemon.cli.main import _parser as build_parser


class FakeStdin(io.TextIOWrapper):
    def __init__(self, data: bytes, *, tty: bool) -> None:
        super().__init__(io.BytesIO(data))
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_stdin_loses_one_trailing_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", FakeStdin("pässword\n".encode(), tty=False))
    assert cli_console.read_password() == "pässword"
    monkeypatch.setattr("sys.stdin", FakeStdin(b" spaced \r\n", tty=False))
    assert cli_console.read_password() == " spaced "


def test_a_terminal_is_asked_twice_without_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", FakeStdin(b"", tty=True))
    prompts: list[str] = []
    answers = iter(["typed", "typed", "one", "two", "", ""])

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(cli_console.getpass, "getpass", getpass)
    assert cli_console.read_password() == "typed"
    assert prompts == ["password: ", "again: "]
    with pytest.raises(CliError, match="differ"):
        cli_console.read_password()
    with pytest.raises(CliError, match="empty"):
        cli_console.read_password()


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"\n", "empty"), (b"x" * 1025, "over 1024"), (b"\xff\xfe", "UTF-8")],
)
def test_refused_before_sending(monkeypatch: pytest.MonkeyPatch, data: bytes, message: str) -> None:
    monkeypatch.setattr("sys.stdin", FakeStdin(data, tty=False))
    with pytest.raises(CliError, match=message):
        cli_console.read_password()


def test_the_commands_parse() -> None:
    parser = build_parser()
    add = parser.parse_args(["console", "user", "add", "alice"])
    assert add.command is cli_console.cmd_user_add and add.name == "alice"
    assert parser.parse_args(["console", "user", "ls", "--json"]).json
    assert parser.parse_args(["console", "user", "rm", "bob"]).command is cli_console.cmd_user_rm
