"""`berthd`: the berth daemon's command line (DESIGN.md, "berthd — contract")."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

import trio

from config.errors import SpecError
from config.settings import load_settings
from daemon import __version__
from daemon.system.fd_limit import raise_open_files_limit
from daemon.system.logs import setup_logging
from proxy import gc_policy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="berthd",
        description="berth's daemon: runs deployments' replicas in Podman behind their endpoints.",
    )
    parser.add_argument("--config", type=Path, help="berthd.toml (every key optional)")
    parser.add_argument(
        "--state-dir", type=Path, help="state (env BERTH_STATE_DIR; /var/lib/berth)"
    )
    parser.add_argument("--socket", type=Path, help="admin socket (env BERTH_SOCKET)")
    parser.add_argument("--podman-url", help="Podman API URL (env BERTH_PODMAN_URL)")
    parser.add_argument("--specs", type=Path, help="apply every *.toml here at start and on SIGHUP")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "--supervise",
        action="store_true",
        help="run berthd as a child that keeps its listening sockets across crashes and "
        "restarts (SIGUSR2: a planned restart); for hosts without systemd",
    )
    parser.add_argument("--version", action="version", version=f"berthd {__version__}")
    return parser.parse_args(argv)


def settings_refused(exc: SpecError) -> str:
    """What berthd prints for refused settings, each problem once: one problem on the line
    with its file, several under a header line, one indented line each."""
    if len(exc.problems) == 1:
        return f"berthd: {exc.source}: {exc.problems[0]}"
    lines = [f"berthd: {exc.source}: {len(exc.problems)} problems:"]
    lines += [f"  {problem}" for problem in exc.problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    # Before any endpoint exists: their shared connection budget is sized from the soft
    # limit when the first one is made (proxy.admission.process_budget).
    raise_open_files_limit()
    gc_policy.configure()  # full collections on berthd's clock (proxy.gc_policy)
    # The same file, environment and flags on SIGHUP: which start-only settings changed.
    read_settings = partial(
        load_settings,
        args.config,
        dict(os.environ),
        {
            "state_dir": args.state_dir,
            "socket": args.socket,
            "podman_url": args.podman_url,
            "specs": args.specs,
        },
    )
    try:
        settings = read_settings()
    except SpecError as exc:
        print(settings_refused(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"berthd: {exc}", file=sys.stderr)
        return 2

    if args.supervise:
        from daemon.system.supervise import supervise

        # The same command line for the child, less --supervise; it reads its settings again.
        return supervise(sys.argv[1:] if argv is None else argv, settings.state_dir)

    from daemon.berthd import Berthd
    from daemon.system.fdstore import FdStore
    from daemon.system.notify import Notifier
    from daemon.system.slow_steps import SlowSteps, threshold_from

    # Before anything starts a child (the embedded Podman service, conmon): it takes
    # NOTIFY_SOCKET out of the environment so that only berthd talks to systemd, and the
    # fd store the LISTEN_* variables (its sockets get FD_CLOEXEC).
    notifier = Notifier.from_environment()
    fd_store = FdStore.from_environment(notifier.address)
    instruments: list[trio.abc.Instrument] = []
    try:
        slow_step = threshold_from(dict(os.environ))
    except ValueError as exc:
        print(f"berthd: {exc}", file=sys.stderr)
        return 2
    if slow_step is not None:  # a diagnostic: steps of the trio thread over N ms logged
        instruments.append(SlowSteps(slow_step))
    try:
        trio.run(Berthd(settings, notifier, fd_store, read_settings).run, instruments=instruments)
    except BaseException as exc:
        startup = _startup_error(exc)
        if startup is None:
            raise
        print(f"berthd: {startup}", file=sys.stderr)
        return 1
    return 0


def _startup_error(exc: BaseException) -> Exception | None:
    """The StartupError in `exc`, however deep in nursery exception groups it sits."""
    from daemon.berthd import StartupError

    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
