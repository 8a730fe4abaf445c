"""systemd/berthd.service: `systemd-analyze verify` accepts it, and it keeps the choices
that let replicas outlive berthd (docs/operations.md).

systemd is installed on the test machines but is not PID 1; `systemd-analyze verify` works
without a running manager (it loads the unit offline). It insists that ExecStart's binary
exists, and /opt/berth/venv/bin/berthd exists only after systemd/install.sh, so the test
verifies a copy of the unit whose ExecStart names this venv's berthd instead; nothing else
is changed. A missing `systemd-analyze` fails the test (scripts/setup-host.sh installs
Debian's `systemd` package), it never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "systemd" / "berthd.service"
INSTALLED_BERTHD = "/opt/berth/venv/bin/berthd"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> keys -> every value given (systemd allows repeats), comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not on PATH: install Debian's `systemd` package "
            "(scripts/setup-host.sh does)",
            pytrace=False,
        )
    return path


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    copy = tmp_path / "berthd.service"
    copy.write_text(unit_text)
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def with_local_berthd(text: str) -> str:
    local = Path(sys.executable).parent / "berthd"
    assert local.is_file(), f"{local} missing: the venv needs `pip install -e .`"
    assert text.count(INSTALLED_BERTHD) == 1
    return text.replace(INSTALLED_BERTHD, str(local))


def test_unit_verifies(tmp_path: Path) -> None:
    result = verify(with_local_berthd(UNIT.read_text()), tmp_path)
    # verify exits 0 on mere warnings (unknown keys, bad values): silence is the pass
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        ("Type=notify", "Type=notfy"),
        ("KillMode=process", "KillMod=process"),
    ],
)
def test_verify_catches_mistakes_here(tmp_path: Path, broken: str, complaint: str) -> None:
    """The check above means something on this machine (no systemd as PID 1)."""
    text = with_local_berthd(UNIT.read_text()).replace(f"\n{broken}\n", f"\n{complaint}\n")
    result = verify(text, tmp_path)
    assert result.stdout + result.stderr != ""


def test_verify_needs_exec_start_to_exist(tmp_path: Path) -> None:
    result = verify(UNIT.read_text().replace(INSTALLED_BERTHD, "/nonexistent/berthd"), tmp_path)
    assert result.returncode != 0
    assert "/nonexistent/berthd" in result.stderr


def test_unit_choices() -> None:
    unit = parse_unit(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "30s"
    assert service["Restart"] == "on-failure"
    # replicas (and the embedded Podman service) must survive a stop or restart
    assert service["KillMode"] == "process"
    assert service["ExecStart"] == f"{INSTALLED_BERTHD} --config /etc/berth/berthd.toml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["StateDirectory"] == "berth"
    assert service["RuntimeDirectory"] == "berth"
    assert service["RuntimeDirectoryMode"] == "0750"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    assert "podman.socket" in unit["Unit"]["After"][-1].split()
    assert "podman.socket" in unit["Unit"]["Wants"][-1].split()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# Each would give the embedded Podman (and every container it starts) a private mount
# namespace or an inherited restriction it cannot shed: see the unit's hardening comment.
BREAKS_PODMAN = [
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ReadOnlyPaths",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectControlGroups",
    "ProtectProc",
    "NoNewPrivileges",
    "SystemCallFilter",
    "RestrictNamespaces",
    "MemoryDenyWriteExecute",
    "CapabilityBoundingSet",
    "PrivateNetwork",
    "DevicePolicy",
]


def test_no_hardening_that_breaks_embedded_podman() -> None:
    text = UNIT.read_text()
    service = parse_unit(text)["Service"]
    for key in BREAKS_PODMAN:
        assert key not in service, f"{key} set: rootful Podman runs under this unit"
        assert f"{key}=" in text, f"the hardening comment should explain why {key} is off"


def test_strict_drop_in_verifies(tmp_path: Path) -> None:
    """systemd/berthd-strict.conf (opt-in, for the system Podman only) on top of the unit."""
    drop_in = (REPO_ROOT / "systemd" / "berthd-strict.conf").read_text()
    text = with_local_berthd(UNIT.read_text())
    # a drop-in's [Service] keys join the unit's [Service]: verify them as one file
    service_keys = drop_in.split("[Service]", 1)[1]
    merged = text.replace("\n[Install]\n", f"\n[Service]{service_keys}\n[Install]\n")
    result = verify(merged, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    assert "ProtectSystem=strict" in merged


def test_berthd_writes_privately_its_children_as_before() -> None:
    """UMask=0077 for berthd (issue 13); the embedded Podman and git get 0022 back, so
    volumes, container files and clones mounted into non-root replicas stay readable."""
    service = {k: v[-1] for k, v in parse_unit(UNIT.read_text())["Service"].items()}
    assert service["UMask"] == "0077"
    assert service["StateDirectoryMode"] == "0700"
    for child in ("daemon/runtime/service.py", "daemon/integrations/git.py"):
        assert "umask=0o022" in (REPO_ROOT / child).read_text(), child


def test_listening_sockets_are_kept_in_the_fd_store() -> None:
    """Issue 15: endpoints and the admin socket outlive berthd in systemd's fd store."""
    service = {k: v[-1] for k, v in parse_unit(UNIT.read_text())["Service"].items()}
    assert int(service["FileDescriptorStoreMax"]) >= 512
    assert service["NotifyAccess"] == "main"  # FDSTORE=1 is sent by berthd's main process
