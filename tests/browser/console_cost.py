"""What an open console page costs berthd, measured: berthd's own CPU time (utime + stime
from /proc/PID/stat) over a window with no browser connected, then over windows of the
same length with one page open (the deployments page; one deployment's page, with its
charts, live fragments and log tail), each page left alone (no clicks) as a page left
open for a day is. Prints each as a share of one core and the difference the page makes.

    .venv/bin/python -m tests.browser.console_cost [--seconds 120]

Only 127.0.0.1; berthd is killed by PID and its containers removed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.browser.browser import PageWatch, launch, sign_in
from tests.browser.console_env import PASSWORD, USER, ConsoleBox
from tests.conftest import ECHO_IMAGE

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def share(pid: int, seconds: float) -> float:
    """berthd's CPU over the next `seconds`, in % of one core."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - before) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="berth-console-cost-") as tmp:
        box = ConsoleBox.start(Path(tmp), None, ECHO_IMAGE)
        try:
            assert box.berthd.proc is not None
            pid = box.berthd.proc.pid
            time.sleep(5.0)  # the applies' rollouts settle
            closed = share(pid, args.seconds)
            print(f"console closed: berthd {closed:.3f} % of a core over {args.seconds:g} s")
            with launch() as browser:
                page = browser.new_context().new_page()
                watch = PageWatch()
                watch.attach(page)
                sign_in(page, box.base, USER, PASSWORD)
                for path in ("/console/", "/console/d/alpha"):
                    page.goto(f"{box.base}{path}")
                    page.wait_for_load_state("load")
                    time.sleep(2.0)  # its scripts' first fetches
                    opened = share(pid, args.seconds)
                    print(
                        f"{path} open: berthd {opened:.3f} % of a core "
                        f"({opened - closed:+.3f} over closed)"
                    )
                for problem in watch.problems():
                    print(f"console_cost: {problem}", file=sys.stderr)
        finally:
            box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
