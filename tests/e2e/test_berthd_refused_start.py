"""A berthd whose `[gateway] listen` port is taken exits 1 at start with the reason, and the
next berthd does not take that refused start for an unclean stop (real berthd processes,
real Podman, a real socket holding the port)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.berthd_process import BIN, Berthd

pytestmark = pytest.mark.podman


def test_a_gateway_port_in_use_refuses_the_start_and_is_no_unclean_stop(
    tmp_path: Path, berthd_factory: Callable[..., Berthd]
) -> None:
    port = free_port()
    config = tmp_path / "berthd.toml"
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:{port}"\n')
    daemon = berthd_factory(extra_args=["--config", str(config)])
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        refused = subprocess.run(
            [
                str(BIN / "berthd"),
                "--state-dir", str(daemon.state_dir),
                "--socket", str(daemon.socket),
                *(["--podman-url", daemon.podman_url] if daemon.podman_url else []),
                "--config", str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        holder.close()
    assert refused.returncode == 1, refused.stderr
    assert f"berthd: gateway 127.0.0.1:{port}: " in refused.stderr, refused.stderr

    daemon.start()
    lines = daemon.berth("events", "--json").stdout.splitlines()
    started = [json.loads(line) for line in lines if line.strip()]
    started = [e["message"] for e in started if e["kind"] == "started"]
    assert len(started) == 2, started
    assert "after a clean stop" in started[-1], started[-1]
    assert daemon.json("status")["last_unclean_stop"] is None
