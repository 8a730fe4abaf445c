"""What the Python bench scripts share (run as `python bench/NAME.py`: this directory is on
sys.path). Loopback only."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # the venv's berthd and berth


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait(check: Callable[[], bool], timeout: float, what: str, *, every: float = 0.1) -> None:
    """Until `check()` holds; exits the script saying what it waited for past `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def remove_instance_containers(instance: str) -> None:
    """Remove the containers of the berthd instance this script started (its label)."""
    if not instance:
        return
    ids = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=io.berth.instance={instance}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if ids:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True, check=False)


def stamp(text: str) -> float:
    """An event's RFC 3339 time as a wall-clock timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Daemon:
    """A berthd of the bench's own (private state dir and socket under `root`), driven by
    the `berth` CLI; `stop` ends it by PID and removes the containers it made."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "berth.sock"
        self.log = (root / "berthd.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "berthd"), "--state-dir", str(root / "state"), "--socket", str(self.sock)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait(lambda: self.berth("status", check=False).returncode == 0, 60, "berthd", every=0.05)
        self.instance: str = json.loads(self.berth("status", "--json").stdout)["instance"]

    def berth(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "berth"), "--socket", str(self.sock), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode:
            raise SystemExit(f"berth {' '.join(args)}: {result.stderr}")
        return result

    def get(self, name: str) -> dict[str, Any]:
        return json.loads(self.berth("get", name, "--json").stdout)  # type: ignore[no-any-return]

    def events(self, name: str, limit: int = 500) -> list[dict[str, str]]:
        out = self.berth("events", name, "--json", "--limit", str(limit)).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        remove_instance_containers(self.instance)
        self.log.close()
