"""Helpers for end-to-end tests: berthd as a real process, the real `berth` CLI, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Berthd:
    """One berthd process, started and ended by this test (by PID)."""

    state_dir: Path
    socket: Path
    podman_url: str | None  # None: berthd finds its own (the system socket, else embedded)
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "berthd"),
                    "--state-dir",
                    str(self.state_dir),
                    "--socket",
                    str(self.socket),
                    *(["--podman-url", self.podman_url] if self.podman_url else []),
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        wait_until("berthd to answer `berth status`", self._answers, START_TIMEOUT)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"berthd exited ({self.proc.returncode}):\n{self.log()}")
        return self.berth("status", check=False).returncode == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def signal(self, signum: int) -> int:
        """Send a signal and wait (bounded) for the exit; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)

    def berth(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "berth"), "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"berth {' '.join(args)} exited {result.returncode}:\n{result.stdout}"
                f"{result.stderr}\n--- berthd log ---\n{self.log()}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.berth(*args, "--json").stdout)


def get_text(url: str, timeout: float = 5.0) -> tuple[int, str]:
    response = httpx.get(url, timeout=timeout)
    return response.status_code, response.text
