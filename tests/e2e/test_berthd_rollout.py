"""End to end, failed updates and rollbacks (issue 6), berthd as a process, real Podman:

- a new revision whose replicas crash, with a short progress_deadline, under load: rolled
  back on its own, no request fails, `berth apply --wait` exits non-zero, history says
  failed with the reason;
- `berth rollback NAME --to 1` makes a new revision with revision 1's spec and serves it;
- a change of `[replicas]` only adds a replica and replaces none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.load import Load

pytestmark = pytest.mark.podman

SPEC = """
name = "roll"
image = "{image}"
{command}
port = 8080
stop_timeout = "1s"
[env]
MESSAGE = "{message}"
[replicas]
count = {count}
[health.readiness]
path = "/health"
period = "1s"
[update]
progress_deadline = "6s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


def test_a_crashing_update_rolls_back_and_rollback_restores_revision_one(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    spec = tmp_path / "roll.toml"

    def write(message: str, *, crash: bool = False, count: int = 2) -> None:
        command = 'command = ["sh", "-c", "exit 3"]' if crash else ""
        spec.write_text(
            SPEC.format(image=echo_image, command=command, message=message, port=port, count=count)
        )

    berthd.start()
    write("v1")
    berthd.berth("apply", str(spec), "--wait")
    v1 = {r["container_id"] for r in berthd.json("get", "roll")["replicas"]}

    with Load(f"http://127.0.0.1:{port}/cgi-bin/echo", threads=3, max_seconds=40) as load:
        load.wait_answers(20, since=0.0)
        write("v2", crash=True)
        result = berthd.berth("apply", str(spec), "--wait", check=False)
        assert result.returncode != 0
        assert "revision 2 failed" in result.stderr and "no progress for 6s" in result.stderr
        assert "crash-looping: exited with code 3" in result.stderr
        wait_until(
            "the crashing replica to be removed",
            lambda: {r["container_id"] for r in berthd.json("get", "roll")["replicas"]} == v1,
            timeout=20,
        )
    assert load.failures == [], load.failures[:5]
    assert set(load.messages_since(0.0)) == {"v1"}
    history = berthd.json("history", "roll")
    assert [(h["revision"], h["status"], h["active"]) for h in history] == [
        (1, "active", True),
        (2, "failed", False),
    ]
    assert "crash-looping" in history[1]["reason"]
    assert "rolled-back" in berthd.berth("events", "roll").stdout

    # a good update, then `rollback --to 1`: a new revision with revision 1's spec
    write("v3")
    berthd.berth("apply", str(spec), "--wait")
    out = berthd.berth("rollback", "roll", "--to", "1").stdout
    assert "revision 4" in out
    wait_until(
        "revision 1's spec to serve again",
        lambda: (
            berthd.json("get", "roll")["status"] == "running"
            and {r["spec_id"] for r in berthd.json("get", "roll")["replicas"]}
            == {history[0]["spec_id"]}
        ),
        timeout=30,
    )
    assert berthd.json("ls")[0]["spec_id"] == history[0]["spec_id"]
    diff = berthd.berth("history", "roll", "--diff", "4").stdout
    assert '-MESSAGE = "v3"' in diff and '+MESSAGE = "v1"' in diff

    # [replicas] only: one more replica, none replaced
    before = {r["container_id"] for r in berthd.json("get", "roll")["replicas"]}
    write("v1", count=3)
    berthd.berth("apply", str(spec), "--wait")
    after = {r["container_id"] for r in berthd.json("get", "roll")["replicas"]}
    assert before < after and len(after) == 3
