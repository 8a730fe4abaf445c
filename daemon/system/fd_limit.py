"""berthd's own open-files limit: the soft RLIMIT_NOFILE raised to the hard one at start.

Every proxied connection costs berthd descriptors (a client's and, while it is relayed, a
replica's), and the endpoints' shared connection budget is sized from the soft limit the
first time an endpoint is made (proxy.admission.process_budget). A soft limit left at a
shell's 1,024 would hold every endpoint to 384 client connections whatever the hard limit
allows, so `berthd` raises it before anything else runs (daemon.main, before trio.run).

Raising the soft limit up to the hard one needs no privilege. An infinite hard limit is
taken as the kernel's `fs.nr_open` (what setrlimit accepts for RLIMIT_NOFILE). A failure is
logged and berthd carries on with the limit it has: a smaller budget, not a refusal.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

NR_OPEN = Path("/proc/sys/fs/nr_open")
NR_OPEN_DEFAULT = 1 << 20  # the kernel's default fs.nr_open

log = logging.getLogger("berthd")


def _ceiling(hard: int) -> int:
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        return int(NR_OPEN.read_text().strip())
    except (OSError, ValueError):
        return NR_OPEN_DEFAULT


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (soft before, soft after).

    Logs one line either way; never raises.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _ceiling(hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.info("open files limit %d (already the hard limit)", soft)
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("open files limit left at %d: raising it to %d failed: %s", soft, target, exc)
        return soft, soft
    after, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.info("open files limit raised from %d to %d (the hard limit)", soft, after)
    return soft, after
