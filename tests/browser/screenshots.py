"""Screenshots of the console's main pages for docs/console/ (run by
scripts/console-screenshots.sh): sign-in, deployments, one deployment with its charts, the
box, and the events.

It starts its own berthd with the console (console_env.ConsoleBox: the echo deployments
`alpha` and `beta`; berthd finds Podman itself, as `make run` does), sends a little traffic,
waits (bounded) for the first per-minute rollup so the charts have points, scales `alpha`
to 2 (an event, a second replica), and writes PNGs of a 1280x900 viewport (full pages).
Only 127.0.0.1; berthd is killed by PID and its containers removed at the end.

    .venv/bin/python -m tests.browser.screenshots [--out docs/console] [--no-wait]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.browser.browser import PageWatch, launch, sign_in
from tests.browser.console_env import PASSWORD, USER, ConsoleBox
from tests.conftest import ECHO_IMAGE, REPO_ROOT

ROLLUP_TIMEOUT = 90.0
PAGES = (
    ("deployments.png", "/console/", "deployments-table"),
    ("deployment.png", "/console/d/alpha", "replicas-table"),
    ("box.png", "/console/box", None),
    ("events.png", "/console/events", "events-table"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "console")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for rollups")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(REPO_ROOT / "scripts" / "build-echo-image.sh"), ECHO_IMAGE], check=True)
    with tempfile.TemporaryDirectory(prefix="berth-console-shots-") as tmp:
        box = ConsoleBox.start(Path(tmp), None, ECHO_IMAGE)
        try:
            box.berthd.berth("scale", "alpha", "2")
            box.wait_ready("alpha", 2)
            box.traffic("alpha", 40)
            box.traffic("beta", 10)
            if not args.no_wait:
                waited = box.wait_rollups("alpha", ROLLUP_TIMEOUT)
                print(f"screenshots: first rollup after {waited:.0f}s")
                box.traffic("alpha", 40)
            problems = shoot(box, args.out)
        finally:
            box.stop()
    for problem in problems:
        print(f"screenshots: {problem}", file=sys.stderr)
    return 1 if problems else 0


def shoot(box: ConsoleBox, out: Path) -> list[str]:
    with launch() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        watch = PageWatch()
        watch.attach(page)
        page.goto(f"{box.base}/console/")
        page.get_by_test_id("signin-form").wait_for()
        page.screenshot(path=str(out / "signin.png"))
        sign_in(page, box.base, USER, PASSWORD)
        for filename, path, testid in PAGES:
            page.goto(f"{box.base}{path}")
            if testid:
                page.get_by_test_id(testid).wait_for()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / filename), full_page=True)
            print(f"screenshots: {out / filename}")
        context.close()
    return watch.problems()


if __name__ == "__main__":
    sys.exit(main())
