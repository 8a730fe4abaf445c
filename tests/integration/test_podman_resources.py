"""`[resources]` shm_size, ipc and ulimits reach a replica's container on a real Podman.

Each container is made the way berthd makes a replica: a parsed spec through
`replica_container`, then `PodmanRuntime.create`; what the replica sees is read from the
inside (its own `df`, `ulimit`, written to its log) or tried from outside (another container
joining its IPC namespace), not only from what Podman records.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable

import pytest
import trio

from config.parse import parse_spec, spec_id, template_id
from daemon.reconcile.replica_spec import ReplicaIdentity, ReplicaPlacement, replica_container
from daemon.runtime.interface import LABEL_INSTANCE
from daemon.runtime.podman import PodmanRuntime

pytestmark = pytest.mark.podman

MIB = 1024**2
REPORT = (
    "df -k /dev/shm; "
    "echo memlock $(ulimit -Sl) $(ulimit -Hl); "
    "echo nofile $(ulimit -Sn) $(ulimit -Hn); "
    "echo stack $(ulimit -Ss) $(ulimit -Hs); "
    "echo nproc $(ulimit -Su) $(ulimit -Hu); "
    "echo reported; exec sleep 30"
)


def spec_text(image: str, resources: str) -> str:
    return (
        f'name = "res"\nimage = "{image}"\nport = 8080\n'
        f'command = ["sh", "-c", "{REPORT}"]\nstop_timeout = "1s"\n'
        f"[endpoint]\nport = 18080\n[resources]\n{resources}"
    )


async def start_replica(
    runtime: PodmanRuntime, labels: dict[str, str], port: int, text: str
) -> str:
    spec = parse_spec(text)
    who = ReplicaIdentity(
        instance=labels[LABEL_INSTANCE],
        deployment=spec.name,
        replica_id=uuid.uuid4().hex[:8],
        spec_id=spec_id(spec),
        template_id=template_id(spec),
    )
    container_id = await runtime.create(replica_container(spec, who, ReplicaPlacement(port)))
    await runtime.start(container_id)
    return container_id


async def report_of(runtime: PodmanRuntime, container_id: str) -> dict[str, list[str]]:
    """The replica's own report, by its first word: "/dev/shm" (df's columns), "memlock",
    "nofile", "stack", "nproc" (soft and hard)."""
    for _ in range(200):  # 10 s
        log = await runtime.logs(container_id)
        if b"reported" in log:
            break
        await trio.sleep(0.05)
    else:
        raise AssertionError(f"{container_id[:12]} did not report within 10 s: {log!r}")
    report: dict[str, list[str]] = {}
    for line in log.decode().splitlines():
        words = line.split()
        if words and words[-1] == "/dev/shm":
            report["/dev/shm"] = words
        elif words:
            report[words[0]] = words[1:]
    return report


async def test_dev_shm_has_the_asked_size(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    asked = await start_replica(
        runtime, test_labels, free_port(), spec_text(echo_image, 'shm_size = "256Mi"\n')
    )
    default = await start_replica(runtime, test_labels, free_port(), spec_text(echo_image, ""))
    # df -k: Filesystem, 1K-blocks, Used, Available, Use%, Mounted on
    assert (await report_of(runtime, asked))["/dev/shm"][1] == str(256 * MIB // 1024)
    assert (await report_of(runtime, default))["/dev/shm"][1] == "64000"  # Podman's 64 MB


async def test_ulimits_are_set_and_the_others_keep_the_engines_defaults(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    """Values a host without CAP_SYS_RESOURCE can grant (Podman's own limits here: memlock
    8Mi, nofile 20000; containers.conf nofile=1024:1024, nproc=4096:4096). nproc is not
    named: it keeps the engine's default, which Podman 4.3 alone would have replaced (and
    with it nofile's, failing the start here)."""
    ulimits = (
        "[resources.ulimits]\n"
        'memlock = { soft = "4Mi", hard = "8Mi" }\n'
        "nofile = 2048\n"
        'stack = { soft = "16Mi", hard = "unlimited" }\n'
    )
    asked = await start_replica(runtime, test_labels, free_port(), spec_text(echo_image, ulimits))
    default = await start_replica(runtime, test_labels, free_port(), spec_text(echo_image, ""))
    inside, control = await report_of(runtime, asked), await report_of(runtime, default)
    assert inside["memlock"] == ["4096", "8192"]  # KiB
    assert inside["nofile"] == ["2048", "2048"]
    assert inside["stack"] == ["16384", "unlimited"]
    assert inside["nproc"] == control["nproc"]
    assert control["nofile"] != inside["nofile"]


def join_ipc(image: str, container_id: str) -> subprocess.CompletedProcess[str]:
    """Another container that asks to join this one's IPC namespace (`--ipc container:ID`)."""
    return subprocess.run(
        ["podman", "run", "--rm", "--ipc", f"container:{container_id}", image, "true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_ipc_private_by_default_shareable_when_asked(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    """Podman 4.3's inspect says "shareable" for every mode, so the witness is a join:
    refused for a private replica, which Podman's own default (shareable) would allow."""
    private = await start_replica(runtime, test_labels, free_port(), spec_text(echo_image, ""))
    shareable = await start_replica(
        runtime, test_labels, free_port(), spec_text(echo_image, 'ipc = "shareable"\n')
    )
    await report_of(runtime, private)
    await report_of(runtime, shareable)

    refused = await trio.to_thread.run_sync(join_ipc, echo_image, private)
    assert refused.returncode != 0
    assert "non-shareable IPC" in refused.stderr
    joined = await trio.to_thread.run_sync(join_ipc, echo_image, shareable)
    assert joined.returncode == 0, joined.stderr
