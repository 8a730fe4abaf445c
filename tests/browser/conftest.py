"""Browser-test fixtures: one real berthd with its console (module scope), one chromium.

- `console_box` (module): `ConsoleBox` (console_env.py): berthd on the session's private
  Podman service, `[console] listen` on a free 127.0.0.1 port, console user `ada`, echo
  deployments `alpha` (two revisions) and `beta`, each 1 ready replica. Killed by PID and its
  containers removed at the end, whatever happened.
- `browser` (module): headless Debian chromium through Playwright (browser.py).
- `page` (function): a fresh context (no cookies) and page, watched (`page_watch`): a test
  ends with `assert not page_watch.problems()` (console errors, page errors, CSP violations).
- `signed_in_state` (module): the cookies of one sign-in as `ada` (berthd allows 5 sign-in
  tries a minute from one address, so the tests share one session); `console_page`
  (function): a watched page in a fresh context holding that session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.browser.browser import PageWatch, launch, sign_in
from tests.browser.console_env import PASSWORD, USER, ConsoleBox


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


@pytest.fixture(scope="module")
def signed_in_state(browser: Browser, console_box: ConsoleBox) -> Any:
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        sign_in(page, console_box.base, USER, PASSWORD)
        page.get_by_test_id("deployments-table").wait_for()
        return ctx.storage_state()
    finally:
        ctx.close()


@pytest.fixture
def signed_context(browser: Browser, signed_in_state: Any) -> Iterator[BrowserContext]:
    ctx = browser.new_context(
        viewport={"width": 1280, "height": 900}, storage_state=signed_in_state
    )
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def console_page(signed_context: BrowserContext, page_watch: PageWatch) -> Page:
    p = signed_context.new_page()
    page_watch.attach(p)
    return p
