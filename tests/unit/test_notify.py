"""sd_notify: messages reach a fake NOTIFY_SOCKET (path and abstract), the watchdog pings at
half its period (fake clock), and everything is a no-op without systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from daemon.system.notify import Notifier


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.sock.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@berth-test-{uuid.uuid4().hex}")
    yield fake
    fake.sock.close()


def test_messages_reach_the_socket(systemd: FakeSystemd) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": systemd.address})
    assert n.enabled
    assert n.ready("serving 2 deployments")
    assert n.status("applying specs\nagain")
    assert n.reloading()
    assert n.watchdog()
    assert n.stopping()
    assert systemd.messages() == [
        "READY=1\nSTATUS=serving 2 deployments",
        "STATUS=applying specs again",
        "RELOADING=1",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_abstract_namespace(abstract_systemd: FakeSystemd) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": abstract_systemd.address})
    assert n.ready()
    assert abstract_systemd.messages() == ["READY=1"]


def test_no_socket_means_no_op() -> None:
    n = Notifier.from_environment({})
    assert not n.enabled
    assert not n.ready() and not n.stopping() and not n.status("x") and not n.watchdog()
    assert n.watchdog_interval is None


def test_unreachable_socket_is_logged_once_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not n.ready()
    assert not n.watchdog()
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1


def test_environment_is_unset_so_children_do_not_inherit_it(systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "30000000", "PATH": "/bin"}
    n = Notifier.from_environment(env)
    assert env == {"PATH": "/bin"}
    assert n.watchdog_interval == 15.0
    kept = {"NOTIFY_SOCKET": systemd.address}
    Notifier.from_environment(kept, unset=False)
    assert kept == {"NOTIFY_SOCKET": systemd.address}


@pytest.mark.parametrize(
    ("usec", "watchdog_pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "ours", 15.0),
        ("30000000", "1", None),  # another process's watchdog
        ("0", None, None),
        ("junk", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    systemd: FakeSystemd, usec: str | None, watchdog_pid: str | None, expected: float | None
) -> None:
    env = {"NOTIFY_SOCKET": systemd.address}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if watchdog_pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if watchdog_pid == "ours" else watchdog_pid
    assert Notifier.from_environment(env).watchdog_interval == expected


def test_watchdog_needs_a_socket() -> None:
    assert Notifier.from_environment({"WATCHDOG_USEC": "1000000"}).watchdog_interval is None


async def test_watchdog_loop_pings_every_half_period(
    systemd: FakeSystemd, autojump_clock: trio.testing.MockClock
) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "30000000"})
    with trio.move_on_after(100):  # pings at 0, 15, ..., 90
        await n.watchdog_loop()
    assert systemd.messages() == ["WATCHDOG=1"] * 7


async def test_watchdog_loop_returns_without_a_watchdog(systemd: FakeSystemd) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": systemd.address})
    with trio.fail_after(1):
        await n.watchdog_loop()
    assert systemd.messages() == []


async def test_watchdog_loop_skips_pings_while_a_part_is_stalled(
    systemd: FakeSystemd, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "30000000"})
    stuck = {"from": 20.0, "to": 65.0}

    def stalled() -> str | None:
        now = trio.current_time()
        return "a store call has not returned" if stuck["from"] <= now < stuck["to"] else None

    with trio.move_on_after(100):  # ticks at 0, 15, ..., 90; stalled at 30, 45, 60
        await n.watchdog_loop(stalled)
    assert systemd.messages() == ["WATCHDOG=1"] * 4
    said = [r.getMessage() for r in caplog.records if "watchdog" in r.getMessage()]
    assert said == [
        "watchdog: not pinging systemd: a store call has not returned",
        "watchdog: progress again; pinging systemd again",
    ]
