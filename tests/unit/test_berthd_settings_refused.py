"""`berthd --config BAD` (a real process): each settings problem printed once, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def refuse(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    config = tmp_path / "berthd.toml"
    config.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "daemon.main", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "BERTH_STATE_DIR": str(tmp_path / "state")},
    )
    text = done.stderr.replace(str(config), "CONFIG")
    return done.returncode, [line for line in text.splitlines() if not line.startswith("level=")]


def test_one_problem_is_one_line_with_the_file(tmp_path: Path) -> None:
    code, lines = refuse(tmp_path, '[gateway]\nlisten = "127.0.0.1:8000"\nmax_body = "2Gi"\n')
    assert (code, lines) == (
        2,
        ['berthd: CONFIG: gateway.max_body: must be at most 1Gi (got "2Gi")'],
    )


def test_several_problems_are_a_header_and_one_line_each(tmp_path: Path) -> None:
    code, lines = refuse(
        tmp_path, '[gateway]\nlisten = "127.0.0.1:8000"\nmax_body = "2Gi"\n[metrics]\nlisten = 5\n'
    )
    assert code == 2
    assert lines[0] == f"berthd: CONFIG: {len(lines) - 1} problems:"
    assert len(lines) == 3, lines
    assert sorted(lines[1:]) == sorted(set(lines[1:]))
    assert all(line.startswith("  ") for line in lines[1:])
    assert '  gateway.max_body: must be at most 1Gi (got "2Gi")' in lines
