"""Browser-test fixtures: one real berthd with its console (module scope), one chromium.

- `console_box` (module): `ConsoleBox` (console_env.py): berthd on the session's private
  Podman service, `[console] listen` on a free 127.0.0.1 port, console user `ada`, echo
  deployments `alpha` (two revisions) and `beta`, each 1 ready replica. Killed by PID and its
  containers removed at the end, whatever happened.
- `browser` (module): headless Debian chromium through Playwright (browser.py).
- `page` (function): a fresh context (no cookies) and page, watched (`page_watch`): a test
  ends with `assert not page_watch.problems()` (console errors, page errors, CSP violations).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.browser.browser import PageWatch, launch
from tests.browser.console_env import ConsoleBox


@pytest.fixture(scope="module")
def console_box(
    tmp_path_factory: pytest.TempPathFactory, podman_url: str, echo_image: str
) -> Iterator[ConsoleBox]:
    workdir: Path = tmp_path_factory.mktemp("console")
    box = ConsoleBox.start(workdir, podman_url, echo_image)
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as chromium:
        yield chromium


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page_watch() -> PageWatch:
    return PageWatch()


@pytest.fixture
def page(context: BrowserContext, page_watch: PageWatch) -> Page:
    p = context.new_page()
    page_watch.attach(p)
    return p
