"""Playwright on Debian's chromium, for the console's browser tests and screenshots.

`launch()` starts /usr/bin/chromium headless through Playwright's sync API (never a browser
of Playwright's own: `playwright install` cannot reach its CDN from these hosts). Every
wait is bounded: `TIMEOUT_MS` for each action and navigation, unless a test says more.

`PageWatch` records what a page must never show: console errors, uncaught exceptions, and
Content-Security-Policy violations. Chromium reports a blocked inline script or style as a
console error ("Refused to ..."); the `securitypolicyviolation` DOM event is listened for as
well, through an init script (Playwright injects it over CDP, so the page's CSP does not
block it) that calls a binding back into Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 15_000
LAUNCH_TIMEOUT_MS = 60_000

CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__berthCspViolation(
    `${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`
  );
});
"""


@contextmanager
def launch() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = _chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


def _chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, timeout=LAUNCH_TIMEOUT_MS
    )


@dataclass
class PageWatch:
    """What went wrong on a page, as it happened (module docstring)."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.set_default_timeout(TIMEOUT_MS)
        page.set_default_navigation_timeout(TIMEOUT_MS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.expose_function("__berthCspViolation", self._csp_violation)
        page.add_init_script(CSP_LISTENER)

    def _csp_violation(self, what: str) -> None:
        self.csp_violations.append(what)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} ({message.location.get('url', '')})")

    def expect_refused_load(self, url: str, status: int) -> None:
        """A document load this test expects to be refused (the wrong password's 401 page):
        chromium logs every 4xx document as "Failed to load resource"; exactly that entry is
        taken off (it must be there), any other stays."""
        entry = f"the server responded with a status of {status}"
        found = [m for m in self.console_errors if entry in m and m.endswith(f"({url})")]
        assert found, f"no refused load of {url} ({status}) in {self.console_errors}"
        self.console_errors.remove(found[0])

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "the page showed:\n" + "\n".join(problems)

    def problems(self) -> list[str]:
        return (
            [f"console error: {m}" for m in self.console_errors]
            + [f"page error: {m}" for m in self.page_errors]
            + [f"CSP violation: {m}" for m in self.csp_violations]
        )


def sign_in(page: Page, base: str, user: str, password: str) -> None:
    """Open the console signed out, fill the sign-in form and send it. berthd allows 5
    sign-in tries a minute from one address: tests sign in once and share the cookie."""
    page.goto(f"{base}/console/")
    form = page.get_by_test_id("signin-form")
    form.wait_for()
    form.get_by_test_id("signin-name").fill(user)
    form.get_by_test_id("signin-password").fill(password)
    with page.expect_navigation():
        form.get_by_test_id("signin-submit").click()


def scale_through_console(page: Page, count: int) -> None:
    """The deployment page's scale form, its confirmation page, then the confirm button."""
    page.get_by_test_id("scale-replicas").fill(str(count))
    with page.expect_navigation():
        page.get_by_test_id("action-scale").click()
    expect(page.get_by_test_id("confirm-what")).to_contain_text(f"at {count} replicas")
    with page.expect_navigation():
        page.get_by_test_id("confirm-button").click()
