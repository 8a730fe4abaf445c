#!/usr/bin/env bash
# Screenshots of the web console's main pages (PNG) into docs/console/, for README and
# docs/console.md: a real berthd with the console on 127.0.0.1, the echo deployments, Debian's
# chromium through Playwright (tests/browser/screenshots.py). Takes about 5 minutes: it
# waits for 4 per-minute rollups so the charts draw lines (--minutes N: another count).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
exec .venv/bin/python -m tests.browser.screenshots "$@"
