"""berthd's settings: precedence flags > environment > berthd.toml > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import SpecError
from config.settings import DEFAULT_ALLOWED_ROOTS, DaemonSettings, load_settings

NO_FLAGS: dict[str, object | None] = {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "berthd.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings(None, {}, NO_FLAGS)
    assert s == DaemonSettings(
        state_dir=Path("/var/lib/berth"),
        socket=Path("/run/berth/berth.sock"),
        podman_url=None,
        specs=None,
        allowed_roots=(
            Path("/srv"),
            Path("/data"),
            Path("/models"),
            Path("/var/lib/berth/volumes"),
        ),
        metrics_listen=None,
    )


def test_config_file_values(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'state_dir = "/opt/berth"\n'
        'socket = "/opt/berth/berth.sock"\n'
        'podman_url = "unix:///run/podman/podman.sock"\n'
        'specs = "/etc/berth/deployments"\n'
        '[mounts]\nallowed_roots = ["/srv", "/mnt/models"]\n'
        '[metrics]\nlisten = "127.0.0.1:9464"\n',
    )
    s = load_settings(config, {}, NO_FLAGS)
    assert s.state_dir == Path("/opt/berth")
    assert s.socket == Path("/opt/berth/berth.sock")
    assert s.podman_url == "unix:///run/podman/podman.sock"
    assert s.specs == Path("/etc/berth/deployments")
    assert s.allowed_roots == (Path("/srv"), Path("/mnt/models"))
    assert s.metrics_listen == "127.0.0.1:9464"


@pytest.mark.parametrize(
    ("file_value", "env_value", "flag_value", "expected"),
    [
        (None, None, None, "/var/lib/berth"),
        ("/from/file", None, None, "/from/file"),
        ("/from/file", "/from/env", None, "/from/env"),
        ("/from/file", "/from/env", "/from/flag", "/from/flag"),
        (None, None, "/from/flag", "/from/flag"),
        ("/from/file", "", None, "/from/file"),  # an empty variable counts as unset
    ],
)
def test_precedence(
    tmp_path: Path,
    file_value: str | None,
    env_value: str | None,
    flag_value: str | None,
    expected: str,
) -> None:
    config = write(tmp_path, f'state_dir = "{file_value}"\n' if file_value else "")
    env = {"BERTH_STATE_DIR": env_value} if env_value is not None else {}
    s = load_settings(config, env, {"state_dir": flag_value})
    assert s.state_dir == Path(expected)


def test_every_variable_is_read() -> None:
    env = {
        "BERTH_STATE_DIR": "/s",
        "BERTH_SOCKET": "/s/b.sock",
        "BERTH_PODMAN_URL": "tcp://127.0.0.1:8888",
        "BERTH_SPECS": "/specs",
    }
    s = load_settings(None, env, NO_FLAGS)
    assert (s.state_dir, s.socket, s.specs) == (Path("/s"), Path("/s/b.sock"), Path("/specs"))
    assert s.podman_url == "tcp://127.0.0.1:8888"


def test_flags_take_paths_and_strings(tmp_path: Path) -> None:
    s = load_settings(None, {}, {"socket": tmp_path / "x.sock", "metrics_listen": "[::1]:9464"})
    assert s.socket == tmp_path / "x.sock"
    assert s.metrics_listen == "[::1]:9464"


def test_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    config = conf_dir / "berthd.toml"
    config.write_text('specs = "deployments"\n')
    s = load_settings(config, {}, {"state_dir": ".berth"})
    assert s.state_dir == tmp_path / ".berth"  # flags: from the working directory
    assert s.specs == conf_dir / "deployments"  # the file: from its own directory


def test_event_retention(tmp_path: Path) -> None:
    assert load_settings(None, {}, NO_FLAGS).events_keep == 7 * 24 * 3600
    config = write(tmp_path, '[events]\nkeep = "48h"\nmax_rows = 5000\n')
    s = load_settings(config, {}, NO_FLAGS)
    assert (s.events_keep, s.events_max_rows) == (48 * 3600, 5000)


def test_unknown_keys_name_their_paths(tmp_path: Path) -> None:
    config = write(tmp_path, 'state = "/x"\n[mounts]\nroots = []\n[metric]\nlisten = ":1"\n')
    with pytest.raises(SpecError) as info:
        load_settings(config, {}, NO_FLAGS)
    assert info.value.source == str(config)
    assert set(info.value.messages()) == {
        "state: unknown key",
        "mounts.roots: unknown key",
        "metric: unknown key",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("socket = 5\n", "socket: must be a string (got 5)"),
        ('podman_url = "/run/podman.sock"\n', "podman_url: must be a URL starting unix://"),
        ("[mounts]\nallowed_roots = [1]\n", "mounts.allowed_roots: must be a list of strings"),
        ('[metrics]\nlisten = "9464"\n', 'metrics.listen: must be "host:port"'),
        ('[metrics]\nlisten = "::1:9464"\n', "metrics.listen: write an IPv6 host in brackets"),
        ('[metrics]\nlisten = "0.0.0.0:99999"\n', 'metrics.listen: must be "host:port"'),
        ("mounts = 1\n", "mounts: must be a table"),
        ('[events]\nkeep = "10s"\n', "events.keep: must be"),
        ("[events]\nmax_rows = 5\n", "events.max_rows: must be"),
        ("[events]\nrows = 5\n", "events.rows: unknown key"),
        ("state_dir = \n", "TOML syntax error at line 1"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_settings(write(tmp_path, text), {}, NO_FLAGS)
    assert any(m.startswith(expected) for m in info.value.messages()), info.value.messages()


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(SpecError, match="BERTH_PODMAN_URL: must be a URL"):
        load_settings(None, {"BERTH_PODMAN_URL": "podman.sock"}, NO_FLAGS)


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(SpecError, match="--podman-url: must be a URL"):
        load_settings(None, {}, {"podman_url": "nope"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", {}, NO_FLAGS)


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="statedir"):
        load_settings(None, {}, {"statedir": "/x"})


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("/srv", True),
        ("/srv/models/tiny", True),
        ("/srvx", False),
        ("/var/lib/berth/volumes/v1", True),
        ("/var/lib/berth", False),
        ("/etc", False),
    ],
)
def test_allows_bind_source(source: str, allowed: bool) -> None:
    s = load_settings(None, {}, NO_FLAGS)
    assert s.allowed_roots == DEFAULT_ALLOWED_ROOTS
    assert s.allows_bind_source(source) is allowed


def test_the_default_allowed_roots_follow_the_state_dir(tmp_path: Path) -> None:
    s = load_settings(None, {}, {"state_dir": tmp_path / "state"})
    assert s.allowed_roots[-1] == tmp_path / "state" / "volumes"
    assert s.allows_bind_source(str(tmp_path / "state" / "volumes" / "v1"))
    assert not s.allows_bind_source("/var/lib/berth/volumes/v1")
