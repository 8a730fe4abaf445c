"""A real berthd with its web console on, for the browser tests and the screenshot script.

`ConsoleBox.start(...)` runs berthd as a process (tests/e2e/berthd_process.py) with a
berthd.toml whose `[console] listen` is a free 127.0.0.1 port, adds a console user through
the real CLI (`berth console user add NAME`, the password on stdin) and applies the echo
deployments the tests look at: `alpha` (1 replica, two revisions, so there is one to roll
back to) and `beta` (1 replica). `stop()` kills berthd by PID and removes the containers of
its instance. Nothing here imports Playwright: `browser.py` drives the pages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from daemon.berthd import instance_id
from daemon.runtime.interface import LABEL_INSTANCE
from tests.conftest import free_port, podman_binary, remove_labelled_containers
from tests.e2e.berthd_process import BIN, Berthd, wait_until
from tests.specs import echo_spec

USER = "ada"
PASSWORD = "correct horse battery staple"
READY_TIMEOUT = 60.0
DEPLOYMENTS = ("alpha", "beta")


@dataclass
class ConsoleBox:
    berthd: Berthd
    base: str  # http://127.0.0.1:PORT
    workdir: Path
    ports: dict[str, int]

    @classmethod
    def start(cls, workdir: Path, podman_url: str | None, image: str) -> ConsoleBox:
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = workdir / "berthd.toml"
        config.write_text(f'[console]\nlisten = "127.0.0.1:{port}"\n')
        daemon = Berthd(
            workdir / "state",
            workdir / "run" / "berth.sock",
            podman_url,
            workdir / "berthd.log",
            extra_args=["--config", str(config)],
        )
        box = cls(daemon, f"http://127.0.0.1:{port}", workdir, {})
        try:
            daemon.start()
            box.add_user(USER, PASSWORD)
            for name in DEPLOYMENTS:
                box.apply(name, image, message=f"{name} 1")
            # alpha's second revision: the one the console rolls back from.
            box.apply("alpha", image, message="alpha 2")
            for name in DEPLOYMENTS:
                box.wait_ready(name, 1)
        except BaseException:
            box.stop()
            raise
        return box

    def add_user(self, name: str, password: str) -> None:
        """`berth console user add NAME`, the password on stdin (no tty: no prompt)."""
        result = subprocess.run(
            [str(BIN / "berth"), "--socket", str(self.berthd.socket)]
            + ["console", "user", "add", name],
            input=f"{password}\n",
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **self.berthd.env},
            check=False,
        )
        assert result.returncode == 0, (
            f"berth console user add {name} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}\n--- berthd log ---\n{self.berthd.log()}"
        )

    def apply(self, name: str, image: str, *, message: str, count: int = 1) -> None:
        port = self.ports.setdefault(name, free_port())
        spec = self.workdir / f"{name}.toml"
        spec.write_text(echo_spec(name, image, port, count=count, message=message))
        self.berthd.berth("apply", str(spec), "--wait", "--timeout", str(READY_TIMEOUT))

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """`berth events [NAME] --json`: one JSON object a line, oldest first."""
        out = self.berthd.berth("events", *([name] if name else []), "--json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def ready(self, name: str) -> int:
        shown = self.berthd.json("get", name)
        return int(shown.get("ready", 0))

    def wait_ready(self, name: str, count: int, timeout: float = READY_TIMEOUT) -> None:
        wait_until(f"{name} to have {count} ready", lambda: self.ready(name) == count, timeout)

    def traffic(self, name: str, requests: int = 20) -> None:
        """A few requests through `name`'s endpoint (bounded: `requests`, 5 s each)."""
        url = f"http://127.0.0.1:{self.ports[name]}/"
        with httpx.Client(timeout=5.0) as client:
            for _ in range(requests):
                client.get(url)

    def wait_rollups(self, name: str, timeout: float) -> float:
        """Wait (bounded) until berthd has written a per-minute rollup of `name` that has its
        request rate: the sampler rolls a minute up in its first round of the next wall-clock
        minute (rounds every 10 s while nothing autoscales), so up to ~80 s after the first
        request.
        Returns the seconds waited."""
        started = time.monotonic()

        def measured() -> bool:
            # The deployment's own row (replica "") with a request rate: a minute rolled up
            # before its endpoint had counted a request has none (that chart has no point).
            rows = self.berthd.json("metrics", name).get("series") or []
            return any(r["replica"] == "" and r["requests_per_s"] is not None for r in rows)

        wait_until(
            f"a per-minute rollup of {name} with its request rate (berth metrics {name} --json)",
            measured,
            timeout,
            interval=1.0,
        )
        return time.monotonic() - started

    def stop(self) -> None:
        # SIGTERM first: a berthd that stops ends the `podman system service` it started
        # (the scripts run without the tests' private service; a SIGKILL left it running).
        proc = self.berthd.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass  # stop() below kills it
        self.berthd.stop()
        remove_labelled_containers(
            podman_binary(), {LABEL_INSTANCE: instance_id(self.berthd.state_dir)}
        )
