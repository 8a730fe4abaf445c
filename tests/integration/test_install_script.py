"""systemd/install.sh into a temporary root (BERTH_INSTALL_ROOT): the venv's berthd runs,
the unit and docs are in place, berthd.toml lists every setting commented out with its
default (and berthd accepts it, commented or not), and a second run upgrades in place
without overwriting an edited berthd.toml.

It pip-installs the checkout into a fresh venv from the machine's pip cache / wheel dirs:
about 15 s for the first run, less for the second (measured on the project's machines).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from config.settings import DEFAULT_ALLOWED_ROOTS, DEFAULT_SOCKET, DEFAULT_STATE_DIR, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "systemd" / "install.sh"


def run_install(root: Path) -> str:
    env = {**os.environ, "BERTH_INSTALL_ROOT": str(root)}
    result = subprocess.run(
        [str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("root")
    build_dir = REPO_ROOT / "build"
    built_before = build_dir.exists()
    out = run_install(root)
    # pip builds from a staged copy: the checkout gains no build/ (other runs may share it)
    assert build_dir.exists() == built_before
    return root, out


def test_installs_a_working_berthd(installed: tuple[Path, str]) -> None:
    root, out = installed
    berthd = root / "opt/berth/venv/bin/berthd"
    version = subprocess.run(
        [str(berthd), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert version.stdout.startswith("berthd ")
    assert (root / "opt/berth/venv/bin/berth").is_file()
    assert "systemd left alone" in out


def test_installs_unit_and_docs(installed: tuple[Path, str]) -> None:
    root, _ = installed
    unit = root / "etc/systemd/system/berthd.service"
    assert unit.read_text() == (REPO_ROOT / "systemd/berthd.service").read_text()
    assert (root / "opt/berth/doc/operations.md").is_file()  # the unit's Documentation=
    assert (root / "etc/berth/deployments").is_dir()


def test_config_file_lists_every_setting(installed: tuple[Path, str]) -> None:
    root, _ = installed
    path = root / "etc/berth/berthd.toml"
    text = path.read_text()
    for key in ("state_dir", "socket", "podman_url", "allowed_roots", "listen"):
        assert re.search(rf"^# {key} = ", text, re.M), f"{key} missing from berthd.toml"
    assert re.search(r'^specs = "/etc/berth/deployments"$', text, re.M)
    assert "[mounts]" in text and "[metrics]" in text

    as_written = load_settings(path, {}, {})
    assert as_written.specs == Path("/etc/berth/deployments")
    assert as_written.metrics_listen is None

    # uncommented, the documented defaults are the real ones
    uncommented = root / "uncommented.toml"
    uncommented.write_text(re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M))
    settings = load_settings(uncommented, {}, {})
    assert settings.state_dir == DEFAULT_STATE_DIR
    assert settings.socket == DEFAULT_SOCKET
    assert settings.allowed_roots == DEFAULT_ALLOWED_ROOTS
    assert settings.podman_url == "unix:///run/podman/podman.sock"
    assert settings.metrics_listen == "127.0.0.1:9464"


def test_second_run_upgrades_in_place_and_keeps_edits(installed: tuple[Path, str]) -> None:
    root, _ = installed
    config = root / "etc/berth/berthd.toml"
    config.write_text('specs = "/srv/specs"\n')
    out = run_install(root)
    assert "keeping" in out and "creating the venv" not in out
    assert config.read_text() == 'specs = "/srv/specs"\n'
    berthd = root / "opt/berth/venv/bin/berthd"
    subprocess.run([str(berthd), "--version"], capture_output=True, timeout=30, check=True)
