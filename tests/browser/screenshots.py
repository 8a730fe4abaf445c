"""Screenshots of the console's main pages for docs/console/ (run by
scripts/console-screenshots.sh): sign-in, deployments, one deployment with its charts, the
box, and the events.

It starts its own berthd with the console (console_env.ConsoleBox: the echo deployments
`alpha` and `beta`; berthd finds Podman itself, as `make run` does), signs in, scales `alpha`
to 2 through the console (an event naming the console user, a second replica), sends a
little traffic and waits (bounded) for a few per-minute rollups so the charts have lines,
then writes PNGs at a 1280-pixel width (tall pages clipped).
Only 127.0.0.1; berthd is killed by PID and its containers removed at the end.

    .venv/bin/python -m tests.browser.screenshots [--out docs/console] [--minutes N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import FloatRect

from tests.browser.browser import PageWatch, launch, scale_through_console, sign_in
from tests.browser.console_env import PASSWORD, USER, ConsoleBox
from tests.conftest import ECHO_IMAGE, REPO_ROOT

ROLLUP_TIMEOUT = 90.0
MINUTES = 4  # rolled-up minutes before the shots: a line needs two points to show
# (file, path, the element to wait for, the height kept: None for the full page)
PAGES = (
    ("deployments.png", "/console/", "deployments-table", 400),
    ("deployment.png", "/console/d/alpha", "chart-requests", 1900),
    ("box.png", "/console/box", None, None),
    ("events.png", "/console/events", "events-table", 1400),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "console")
    parser.add_argument(
        "--minutes", type=int, default=MINUTES, help="rolled-up minutes to wait for (0: none)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(REPO_ROOT / "scripts" / "build-echo-image.sh"), ECHO_IMAGE], check=True)
    with tempfile.TemporaryDirectory(prefix="berth-console-shots-") as tmp:
        box = ConsoleBox.start(Path(tmp), None, ECHO_IMAGE)
        try:
            problems = shoot(box, args.out, args.minutes)
        finally:
            box.stop()
    for problem in problems:
        print(f"screenshots: {problem}", file=sys.stderr)
    return 1 if problems else 0


def wait_minutes(box: ConsoleBox, minutes: int) -> None:
    """Some traffic every few seconds (bounded: 60 * `minutes` + 90 s) until alpha has
    `minutes` rolled-up minutes."""
    deadline = time.monotonic() + 60.0 * minutes + ROLLUP_TIMEOUT
    while True:
        series = box.berthd.json("metrics", "alpha").get("series") or []
        have = len({row["minute"] for row in series})
        if have >= minutes:
            print(f"screenshots: {have} rolled-up minutes")
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: only {have} rolled-up minutes of alpha")
        box.traffic("alpha", 30)
        box.traffic("beta", 5)
        time.sleep(3.0)


def shoot(box: ConsoleBox, out: Path, minutes: int) -> list[str]:
    with launch() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        watch = PageWatch()
        watch.attach(page)
        page.goto(f"{box.base}/console/")
        page.get_by_test_id("signin-form").wait_for()
        page.screenshot(path=str(out / "signin.png"))
        sign_in(page, box.base, USER, PASSWORD)
        # alpha to 2 replicas through the console (its event names the console user).
        page.goto(f"{box.base}/console/d/alpha")
        scale_through_console(page, 2)
        box.wait_ready("alpha", 2)
        box.traffic("alpha", 40)
        box.traffic("beta", 10)
        if minutes > 0:
            wait_minutes(box, minutes)
        for filename, path, testid, height in PAGES:
            page.goto(f"{box.base}{path}")
            if testid:
                page.get_by_test_id(testid).wait_for()
            if path.startswith("/console/d/"):
                page.locator("[data-testid=chart-requests][data-points]").wait_for()
            page.wait_for_load_state("load")
            clip: FloatRect | None = None
            if height is not None:
                clip = {"x": 0, "y": 0, "width": 1280, "height": height}
            page.screenshot(path=str(out / filename), full_page=True, clip=clip)
            print(f"screenshots: {out / filename}")
        context.close()
    return watch.problems()


if __name__ == "__main__":
    sys.exit(main())
