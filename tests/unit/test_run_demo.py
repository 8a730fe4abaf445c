"""scripts/run-demo.sh (`make run`) passes a berthd.toml to berthd: ./berthd.toml of the
checkout, or the file BERTH_CONFIG names. The real script runs in a copy of the checkout
whose `.venv/bin` holds stand-ins: a berthd that writes its arguments down and waits, a
berth that answers `status`, `apply`, `ls` at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "run-demo.sh"

FAKE_BERTHD = """#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/berthd.args.tmp"
mv "$(dirname "$0")/berthd.args.tmp" "$(dirname "$0")/berthd.args"
exec sleep 60
"""

FAKE_BERTH = """#!/bin/sh
case "$1" in
  status) [ -f "$(dirname "$0")/berthd.args" ] ;;
  ls) [ "$2" = --json ] && echo '[{"name": "echo", "endpoint": "http://127.0.0.1:9"}]' ;;
esac
exit 0
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts" / "run-demo.sh")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("berthd", FAKE_BERTHD), ("berth", FAKE_BERTH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    yield root
    pid_file = root / ".berth" / "berthd.pid"
    if pid_file.exists():  # the stand-in berthd this test started
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass


def berthd_args(root: Path, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        ["bash", str(root / "scripts" / "run-demo.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    args = root / ".venv" / "bin" / "berthd.args"
    deadline = time.monotonic() + 10
    while not args.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return args.read_text().splitlines()


def test_without_a_berthd_toml_berthd_gets_no_config(checkout: Path) -> None:
    assert "--config" not in berthd_args(checkout)


def test_the_checkouts_berthd_toml_is_passed_as_config(checkout: Path) -> None:
    (checkout / "berthd.toml").write_text('[gateway]\nlisten = "127.0.0.1:8000"\n')
    args = berthd_args(checkout)
    assert args[args.index("--config") + 1] == str(checkout / "berthd.toml")


def test_berth_config_names_the_file_instead(checkout: Path, tmp_path: Path) -> None:
    (checkout / "berthd.toml").write_text("")
    mine = tmp_path / "mine.toml"
    mine.write_text("")
    args = berthd_args(checkout, {"BERTH_CONFIG": str(mine)})
    assert args[args.index("--config") + 1] == str(mine)


def test_a_berth_config_that_is_no_file_is_refused(checkout: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(checkout / "scripts" / "run-demo.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "BERTH_CONFIG": str(tmp_path / "none.toml")},
    )
    assert done.returncode == 1
    assert "is not a file" in done.stderr
    assert not (checkout / ".berth" / "berthd.pid").exists()
