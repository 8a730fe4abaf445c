"""systemd's fd store protocol as berthd speaks it (daemon/system/fdstore.py): the names, the
FDSTORE / FDSTOREREMOVE datagrams with the descriptor passed for real over an AF_UNIX
datagram socket (as systemd or `berthd --supervise` reads them), and LISTEN_FDS read back.

The supervisor's side, and a berthd that takes its sockets back, run as processes in
tests/integration/test_supervise.py and tests/e2e/test_berthd_restarts.py.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.reconcile.endpoints import endpoint_fd_name
from daemon.system.fdstore import (
    FdStore,
    fd_name_is_valid,
    listen_fds,
    remove_message,
    store_message,
)
from daemon.system.supervise import parse_message, receive


@pytest.fixture
def reader() -> Iterator[tuple[str, socket.socket]]:
    """A notify socket, read as systemd reads it (SO_PASSCRED: the sender's PID too)."""
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        path = str(Path(d) / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield path, sock
        finally:
            sock.close()


def test_names_follow_systemds_fdname_rule() -> None:
    assert fd_name_is_valid("admin") and fd_name_is_valid("ep-127.0.0.1-18080")
    assert not fd_name_is_valid("ep-::1-18080")  # ':' separates LISTEN_FDNAMES
    assert not fd_name_is_valid("a\nb") and not fd_name_is_valid("caf\u00e9")
    assert not fd_name_is_valid("x" * 256) and fd_name_is_valid("x" * 255)
    for bind in ("127.0.0.1", "0.0.0.0", "::1", "::", "fe80::1%eth0", "localhost"):
        name = endpoint_fd_name(bind, 18080)
        assert fd_name_is_valid(name), name
    assert endpoint_fd_name("::1", 8080) == "ep-__1-8080"
    assert endpoint_fd_name("127.0.0.1", 8080) != endpoint_fd_name("127.0.0.1", 8081)


def test_message_formats() -> None:
    assert store_message("ep-127.0.0.1-8080") == b"FDSTORE=1\nFDNAME=ep-127.0.0.1-8080"
    assert remove_message("admin") == b"FDSTOREREMOVE=1\nFDNAME=admin"
    assert parse_message(b"FDSTORE=1\nFDNAME=admin\nno-equals") == {
        "FDSTORE": "1",
        "FDNAME": "admin",
    }


def test_keep_passes_the_listening_socket_itself(reader: tuple[str, socket.socket]) -> None:
    path, sock = reader
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    store = FdStore(path)
    assert store.keep(f"ep-127.0.0.1-{port}", listener.fileno())
    fields, fds, pid = receive(sock)
    assert fields == {"FDSTORE": "1", "FDNAME": f"ep-127.0.0.1-{port}"}
    assert pid == os.getpid() and len(fds) == 1
    copy = socket.socket(fileno=fds[0])
    listener.close()  # our descriptor goes: the copy keeps the socket listening
    try:
        assert copy.getsockname() == ("127.0.0.1", port)
        assert not os.get_inheritable(copy.fileno())
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # accepted into the backlog, not refused
        copy.settimeout(5)
        accepted, _ = copy.accept()
        accepted.close()
    finally:
        copy.close()
    assert store.forget("whatever")
    fields, fds, _ = receive(sock)
    assert fields == {"FDSTOREREMOVE": "1", "FDNAME": "whatever"} and fds == []


def test_without_notify_socket_keep_and_forget_do_nothing() -> None:
    store = FdStore(None)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert not store.keep("admin", listener.fileno())
    assert not store.forget("admin") and store.take("admin") is None


def test_an_invalid_name_is_not_kept(reader: tuple[str, socket.socket]) -> None:
    path, sock = reader
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert not FdStore(path).keep("ep-::1-80", listener.fileno())
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        receive(sock)


def test_a_missing_notify_socket_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    store = FdStore("/nonexistent/berth-notify.sock")
    assert not store.forget("a") and not store.forget("b")
    assert sum("fd store at" in r.getMessage() for r in caplog.records) == 1


def test_listen_fds_only_for_this_process_and_unset() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "admin:ep-127.0.0.1-80", "LISTEN_PID": "42"}
    assert listen_fds(dict(env), pid=43) == []  # meant for another process
    mine = dict(env)
    assert listen_fds(mine, pid=42) == [("admin", 3), ("ep-127.0.0.1-80", 4)]
    assert mine == {}  # children inherit none of it
    short = {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "admin", "LISTEN_PID": "7"}
    assert listen_fds(short, pid=7) == [("admin", 3), ("unknown", 4)]
    kept = dict(env)
    assert listen_fds(kept, pid=42, unset=False) and kept == env
    assert listen_fds({"LISTEN_FDS": "x", "LISTEN_PID": "7"}, pid=7) == []


def test_take_once_and_release_the_rest(reader: tuple[str, socket.socket]) -> None:
    path, sock = reader
    a = socket.create_server(("127.0.0.1", 0))
    b = socket.create_server(("127.0.0.1", 0))
    dup = socket.create_server(("127.0.0.1", 0))
    store = FdStore(path, [("a", a), ("b", b), ("a", dup)])
    assert dup.fileno() == -1  # a second socket of one name is closed at once
    assert store.take("a") is a and store.take("a") is None
    assert store.release_unclaimed() == ["b"]
    assert b.fileno() == -1 and a.fileno() != -1
    fields, _, _ = receive(sock)
    assert fields == {"FDSTOREREMOVE": "1", "FDNAME": "b"}
    a.close()
