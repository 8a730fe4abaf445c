"""berthd raises its soft RLIMIT_NOFILE to the hard one before any endpoint exists, so the
endpoints' shared connection budget is sized from the raised limit; a failure to raise is
logged, not fatal. The raise runs for real in a child process started with a lower soft
limit (set in its preexec_fn)."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon.system import fd_limit
from proxy.admission import default_budget

REPO = Path(__file__).resolve().parents[2]
LOW_SOFT = 512

# berthd's real main(), with Berthd swapped for a stand-in that makes one proxy Endpoint
# (the first, so it sizes the process budget) and reports the limit and the budget.
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import daemon.berthd
    from proxy.admission import process_budget
    from proxy.endpoint import Endpoint

    class StandIn:
        def __init__(self, *args, **kwargs):
            pass

        async def run(self):
            Endpoint("probe", bind="127.0.0.1", port=0)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            print(json.dumps({"soft": soft, "hard": hard, "cap": process_budget().cap}))

    daemon.berthd.Berthd = StandIn
    from daemon.main import main
    sys.exit(main(["--state-dir", sys.argv[1], "--socket", sys.argv[2]]))
    """
)


def _lower_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_SOFT, hard))


def test_berthd_sizes_the_budget_from_the_raised_limit(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= LOW_SOFT:
        pytest.skip(f"the hard limit {hard} leaves nothing to raise")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "state"), str(tmp_path / "berth.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=_lower_soft_limit,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    expected = fd_limit._ceiling(hard)
    assert seen["soft"] == expected > LOW_SOFT
    assert seen["cap"] == default_budget(expected) > default_budget(LOW_SOFT)
    assert f"open files limit raised from {LOW_SOFT} to {expected}" in result.stderr


def test_a_limit_already_at_the_hard_one_is_left_alone(tmp_path: Path) -> None:
    script = (
        "import resource; from daemon.system.fd_limit import raise_open_files_limit as r;"
        "s, h = resource.getrlimit(resource.RLIMIT_NOFILE); print(r() == (s, s))"
    )

    def soft_at_hard() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=soft_at_hard,
        check=True,
    ).stdout
    assert out.strip() == "True"


def test_a_failure_to_raise_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (LOW_SOFT, 4096))

    def refuse(_which: int, _limits: tuple[int, int]) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    logger = logging.getLogger("berthd")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="berthd"):
        assert fd_limit.raise_open_files_limit() == (LOW_SOFT, LOW_SOFT)
    assert f"left at {LOW_SOFT}: raising it to 4096 failed" in caplog.text


def test_an_infinite_hard_limit_means_the_kernels_nr_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nr_open = tmp_path / "nr_open"
    nr_open.write_text("65536\n")
    monkeypatch.setattr(fd_limit, "NR_OPEN", nr_open)
    assert fd_limit._ceiling(resource.RLIM_INFINITY) == 65536
    assert fd_limit._ceiling(2048) == 2048
    monkeypatch.setattr(fd_limit, "NR_OPEN", tmp_path / "missing")
    assert fd_limit._ceiling(resource.RLIM_INFINITY) == fd_limit.NR_OPEN_DEFAULT
