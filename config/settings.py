"""berthd's own settings: flags > environment > berthd.toml > defaults, one key at a time.

    state_dir     --state-dir     BERTH_STATE_DIR   state_dir          /var/lib/berth
    socket        --socket        BERTH_SOCKET      socket             /run/berth/berth.sock
    podman_url    --podman-url    BERTH_PODMAN_URL  podman_url         None (system socket,
                                                                       else embedded)
    specs         --specs         BERTH_SPECS       specs              None
    allowed_roots                                   [mounts] allowed_roots  /srv /data ...
    shared_volumes                                  [mounts] shared_volumes  () (none)
    credentials_roots                               credentials_roots  /etc/berth/credentials
    metrics_listen                                  [metrics] listen   None (off)
    events_keep                                     [events] keep      "168h" (7 days)
    events_max_rows                                 [events] max_rows  100000
    gateway                                         [gateway] listen, max_body, auth, tls
                                                                       None (no gateway)
    console                                         [console] listen, tls  None (no console)

An empty environment variable counts as unset. Relative paths from flags and environment
are taken from the working directory; relative paths in berthd.toml from the file's own
directory. Unknown keys in berthd.toml are errors, as in specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tomli

from config.credentials import DEFAULT_CREDENTIALS_ROOTS
from config.errors import Problem, SpecError
from config.parse import syntax_problem
from config.parse_console import ConsoleSettings, read_console_settings
from config.parse_document import nesting_problem
from config.parse_gateway import GatewaySettings, read_gateway_settings
from config.parse_listen import listen_problem
from config.reader import Reader, as_duration, as_int, as_str, as_str_list

DEFAULT_STATE_DIR = Path("/var/lib/berth")
DEFAULT_SOCKET = Path("/run/berth/berth.sock")


def default_allowed_roots(state_dir: Path) -> tuple[Path, ...]:
    """Where bind sources may lie when berthd.toml says nothing: the usual data folders and
    the state dir's own `volumes/` (wherever `--state-dir` puts it)."""
    return (Path("/srv"), Path("/data"), Path("/models"), state_dir / "volumes")


DEFAULT_ALLOWED_ROOTS = default_allowed_roots(DEFAULT_STATE_DIR)
ENV_VARS = {
    "state_dir": "BERTH_STATE_DIR",
    "socket": "BERTH_SOCKET",
    "podman_url": "BERTH_PODMAN_URL",
    "specs": "BERTH_SPECS",
}
OVERRIDE_KEYS = frozenset(
    {
        "state_dir",
        "socket",
        "podman_url",
        "specs",
        "allowed_roots",
        "metrics_listen",
        "credentials_roots",
        "shared_volumes",
    }
)
PODMAN_SCHEMES = ("unix://", "http+unix://", "tcp://", "ssh://")
DEFAULT_EVENTS_KEEP = 7 * 24 * 3600.0  # seconds
DEFAULT_EVENTS_MAX_ROWS = 100_000


@dataclass(frozen=True)
class DaemonSettings:
    state_dir: Path
    socket: Path
    podman_url: str | None
    specs: Path | None
    allowed_roots: tuple[Path, ...]
    metrics_listen: str | None
    # The event log keeps events this many seconds, and at most this many of the newest.
    events_keep: float = DEFAULT_EVENTS_KEEP
    events_max_rows: int = DEFAULT_EVENTS_MAX_ROWS
    # Where the credential files a spec names must lie (config.credentials).
    credentials_roots: tuple[Path, ...] = DEFAULT_CREDENTIALS_ROOTS
    # Podman volumes any deployment may mount, though berth did not make them for it.
    shared_volumes: tuple[str, ...] = ()
    # `[gateway]`: the model gateway's listener and protection; None: no gateway.
    gateway: GatewaySettings | None = None
    # `[console]`: the web console's listener (daemon/console); None: no console.
    console: ConsoleSettings | None = None

    def allows_bind_source(self, source: str | Path) -> bool:
        """Whether a bind mount's (absolute, normalised) source lies under an allowed root."""
        path = Path(source)
        return any(path == root or root in path.parents for root in self.allowed_roots)


def load_settings(
    config_file: Path | None,
    env: Mapping[str, str],
    overrides: Mapping[str, object | None],
) -> DaemonSettings:
    """berthd's settings; SpecError (source = the file name) for a bad file or value."""
    unknown = set(overrides) - OVERRIDE_KEYS
    if unknown:
        raise ValueError(f"unknown settings override(s): {', '.join(sorted(unknown))}")
    source = str(config_file) if config_file is not None else "berthd settings"
    problems: list[Problem] = []
    file_values = _read_file(config_file, problems) if config_file is not None else {}
    cwd = Path.cwd()

    def pick(key: str) -> tuple[object | None, str, Path]:
        """The winning value for `key`, the path to blame, and the base for relative paths."""
        given = overrides.get(key)
        if given is not None:
            return given, f"--{key.replace('_', '-')}", cwd
        var = ENV_VARS.get(key)
        if var is not None and env.get(var):
            return env[var], var, cwd
        base = config_file.parent if config_file is not None else cwd
        return file_values.get(key), _FILE_PATHS.get(key, key), base

    def path_value(key: str, default: Path | None) -> Path | None:
        value, where, base = pick(key)
        if value is None:
            return default
        if not isinstance(value, str | Path) or not str(value):
            problems.append(Problem(where, "must be a path", value))
            return default
        return _absolute(Path(value), base)

    state_dir = path_value("state_dir", DEFAULT_STATE_DIR) or DEFAULT_STATE_DIR
    socket = path_value("socket", DEFAULT_SOCKET) or DEFAULT_SOCKET
    specs = path_value("specs", None)

    podman_url, where, _ = pick("podman_url")
    if podman_url is not None and (
        not isinstance(podman_url, str) or not podman_url.startswith(PODMAN_SCHEMES)
    ):
        problems.append(
            Problem(where, "must be a URL starting " + ", ".join(PODMAN_SCHEMES), podman_url)
        )
        podman_url = None

    roots_value, where, base = pick("allowed_roots")
    allowed_roots = default_allowed_roots(state_dir)
    if roots_value is not None:
        roots = _as_roots(roots_value, where, problems)
        if roots is not None:
            allowed_roots = tuple(_absolute(p, base) for p in roots)

    credentials_roots: tuple[Path, ...] = DEFAULT_CREDENTIALS_ROOTS
    creds_value, where, base = pick("credentials_roots")
    if creds_value is not None:
        roots = _as_roots(creds_value, where, problems)
        if roots is not None:
            credentials_roots = tuple(_absolute(p, base) for p in roots)

    shared_value, where, _ = pick("shared_volumes")
    shared_volumes: tuple[str, ...] = ()
    if shared_value is not None:
        if isinstance(shared_value, list | tuple) and all(isinstance(v, str) for v in shared_value):
            shared_volumes = tuple(shared_value)
        else:
            problems.append(Problem(where, "must be a list of volume names", shared_value))

    listen, where, _ = pick("metrics_listen")
    if listen is not None:
        reason = listen_problem(listen)
        if reason is not None:
            problems.append(Problem(where, reason, listen))
            listen = None

    keep, rows = file_values.get("events_keep"), file_values.get("events_max_rows")
    gateway = file_values.get("gateway")
    console = file_values.get("console")
    if problems:
        raise SpecError(problems, source=source)
    return DaemonSettings(
        state_dir=state_dir,
        socket=socket,
        podman_url=podman_url if isinstance(podman_url, str) else None,
        specs=specs,
        allowed_roots=allowed_roots,
        metrics_listen=listen if isinstance(listen, str) else None,
        events_keep=keep if isinstance(keep, float) else DEFAULT_EVENTS_KEEP,
        events_max_rows=rows if isinstance(rows, int) else DEFAULT_EVENTS_MAX_ROWS,
        credentials_roots=credentials_roots,
        shared_volumes=shared_volumes,
        gateway=gateway if isinstance(gateway, GatewaySettings) else None,
        console=console if isinstance(console, ConsoleSettings) else None,
    )


_FILE_PATHS = {
    "allowed_roots": "mounts.allowed_roots",
    "shared_volumes": "mounts.shared_volumes",
    "metrics_listen": "metrics.listen",
}


def _read_file(path: Path, problems: list[Problem]) -> dict[str, object]:
    """berthd.toml as flat settings keys; problems (with TOML paths) for anything wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem("", f"cannot read: {exc}")], source=str(path)) from None
    too_deep = nesting_problem(text)
    if too_deep is not None:
        raise SpecError([too_deep], source=str(path))
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise SpecError([syntax_problem(exc)], source=str(path)) from None
    r = Reader(data, "", problems)
    out: dict[str, object] = {}
    for key in ("state_dir", "socket", "podman_url", "specs"):
        value = r.optional(key, as_str)
        if value is not None:
            out[key] = value
    credentials_roots = r.optional("credentials_roots", as_str_list)
    if credentials_roots is not None:
        out["credentials_roots"] = list(credentials_roots)
    mounts = r.table("mounts")
    if mounts is not None:
        roots = mounts.optional("allowed_roots", as_str_list)
        if roots is not None:
            out["allowed_roots"] = list(roots)
        shared = mounts.optional("shared_volumes", as_str_list)
        if shared is not None:
            out["shared_volumes"] = list(shared)
        mounts.close()
    metrics = r.table("metrics")
    if metrics is not None:
        listen = metrics.optional("listen", as_str)
        if listen is not None:
            out["metrics_listen"] = listen
        metrics.close()
    events = r.table("events")
    if events is not None:
        keep = events.optional("keep", as_duration(lo=3600.0, hi=10 * 365 * 86400.0))
        if keep is not None:
            out["events_keep"] = keep
        rows = events.optional("max_rows", as_int(100, 100_000_000))
        if rows is not None:
            out["events_max_rows"] = rows
        events.close()
    gateway = read_gateway_settings(r.table("gateway"))
    if gateway is not None:
        out["gateway"] = gateway
    console = read_console_settings(r.table("console"))
    if console is not None:
        out["console"] = console
    r.close()
    return out


def _absolute(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _as_roots(value: object, where: str, problems: list[Problem]) -> list[Path] | None:
    if isinstance(value, str | Path):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | Path) for v in value):
        problems.append(Problem(where, "must be a list of paths", value))
        return None
    return [Path(v) for v in value]
