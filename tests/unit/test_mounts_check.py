"""Apply-time checks of `[[mounts]]` and `[registry]` against a host laid out in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.errors import show_value
from config.parse import parse_spec
from config.settings import DaemonSettings
from config.spec import DeploymentSpec
from daemon.integrations.mount_checks import model_dir, mount_problems

BASE = """
name = "app"
image = "localhost/berth-echo:1"
port = 8080
[endpoint]
port = 18080
"""


def spec_with(extra: str) -> DeploymentSpec:
    return parse_spec(BASE + extra, source="test.toml")


def bind(source: str | Path, target: str = "/data", **more: object) -> str:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in more.items())
    return f'[[mounts]]\ntype = "bind"\nsource = "{source}"\ntarget = "{target}"\n{extra}'


@pytest.fixture
def host(tmp_path: Path) -> DaemonSettings:
    """srv/ is the allowed root; state/ the state dir; run/ holds berth's socket."""
    (tmp_path / "srv" / "data").mkdir(parents=True)
    (tmp_path / "srv" / "data" / "file.txt").write_text("x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "state" / "models").mkdir(parents=True)
    (tmp_path / "state" / "volumes").mkdir()
    (tmp_path / "run").mkdir()
    return settings(tmp_path, roots=(tmp_path / "srv",))


def settings(
    tmp_path: Path, *, roots: tuple[Path, ...], podman_url: str | None = None
) -> DaemonSettings:
    return DaemonSettings(
        state_dir=tmp_path / "state",
        socket=tmp_path / "run" / "berth.sock",
        podman_url=podman_url,
        specs=None,
        allowed_roots=roots,
        metrics_listen=None,
        credentials_roots=(tmp_path,),
    )


def test_no_mounts_no_problems(host: DaemonSettings) -> None:
    assert mount_problems(spec_with(""), host) == []


def test_bind_under_an_allowed_root_is_fine(host: DaemonSettings, tmp_path: Path) -> None:
    spec = spec_with(bind(tmp_path / "srv" / "data") + bind(tmp_path / "srv", "/other"))
    assert mount_problems(spec, host) == []


def test_bind_outside_the_roots_names_the_field(host: DaemonSettings, tmp_path: Path) -> None:
    spec = spec_with(bind(tmp_path / "srv" / "data") + bind(tmp_path / "outside", "/o"))
    [problem] = mount_problems(spec, host)
    assert problem.startswith("mounts[1].source: not under berthd's allowed roots (")
    assert problem.endswith(f"(got {show_value(str(tmp_path / 'outside'))})")


def test_bind_source_must_exist(host: DaemonSettings, tmp_path: Path) -> None:
    [problem] = mount_problems(spec_with(bind(tmp_path / "srv" / "nope")), host)
    assert problem.startswith("mounts[0].source: does not exist on this host")


@pytest.mark.parametrize("escape", ["/etc", "outside"])
def test_a_symbolic_link_out_of_the_roots_is_refused(
    host: DaemonSettings, tmp_path: Path, escape: str
) -> None:
    target = Path(escape) if escape.startswith("/") else tmp_path / escape
    (tmp_path / "srv" / "link").symlink_to(target)
    [problem] = mount_problems(spec_with(bind(tmp_path / "srv" / "link")), host)
    assert problem.startswith(f"mounts[0].source: resolves to {target} (through a symbolic link)")


def test_a_link_inside_the_roots_is_fine(host: DaemonSettings, tmp_path: Path) -> None:
    (tmp_path / "srv" / "link").symlink_to(tmp_path / "srv" / "data")
    assert mount_problems(spec_with(bind(tmp_path / "srv" / "link")), host) == []


@pytest.mark.parametrize("path", ["/etc", "/etc/ssl", "/proc", "/sys", "/dev", "/run", "/var/run"])
def test_system_trees_are_refused_whatever_the_roots(tmp_path: Path, path: str) -> None:
    anything = settings(tmp_path, roots=(Path("/"),))
    [problem] = mount_problems(spec_with(bind(path)), anything)
    assert problem.startswith("mounts[0].source: ")
    assert "system directory" in problem and "berth never mounts it" in problem


def test_the_state_dir_and_its_parents_are_refused(host: DaemonSettings, tmp_path: Path) -> None:
    everything = settings(tmp_path, roots=(tmp_path,))
    spec = spec_with(bind(tmp_path / "state") + bind(tmp_path, "/up"))
    problems = mount_problems(spec, everything)
    assert len(problems) == 2
    assert problems[0].startswith("mounts[0].source: ")
    assert "berthd's state directory" in problems[0]
    assert problems[1].startswith("mounts[1].source: ")


def test_inside_the_state_dir_only_volumes_and_models(tmp_path: Path, host: DaemonSettings) -> None:
    (tmp_path / "state" / "git").mkdir()
    everything = settings(tmp_path, roots=(tmp_path,))
    spec = spec_with(
        bind(tmp_path / "state" / "volumes", "/v")
        + bind(tmp_path / "state" / "models", "/m")
        + bind(tmp_path / "state" / "git", "/g")
    )
    [problem] = mount_problems(spec, everything)
    assert problem.startswith("mounts[2].source: ")
    assert "only its volumes/ and models/ may be mounted" in problem


def test_sockets_and_their_directories_are_refused(tmp_path: Path, host: DaemonSettings) -> None:
    sock_dir = tmp_path / "srv" / "sockets"
    sock_dir.mkdir()
    (sock_dir / "podman.sock").touch()
    with_podman = settings(
        tmp_path, roots=(tmp_path / "srv",), podman_url=f"unix://{sock_dir}/podman.sock"
    )
    spec = spec_with(bind(sock_dir, "/s") + bind(sock_dir / "podman.sock", "/p"))
    problems = mount_problems(spec, with_podman)
    assert [p.split(":")[0] for p in problems] == ["mounts[0].source", "mounts[1].source"]
    assert all(f"the socket {sock_dir / 'podman.sock'}" in p for p in problems)


def test_berths_own_socket_is_refused(tmp_path: Path, host: DaemonSettings) -> None:
    everything = settings(tmp_path, roots=(tmp_path,))
    (tmp_path / "run" / "berth.sock").touch()
    [problem] = mount_problems(spec_with(bind(tmp_path / "run")), everything)
    assert f"the socket {tmp_path / 'run' / 'berth.sock'}" in problem


# -- models ------------------------------------------------------------------------------


def model(name: str, **more: object) -> str:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in more.items())
    return f'[[mounts]]\ntype = "model"\nsource = "{name}"\n{extra}'


def test_a_model_directory_with_files_is_fine(host: DaemonSettings) -> None:
    path = model_dir(host.state_dir, "org/tiny")
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"\0")
    spec = spec_with(model("org/tiny"))
    assert spec.mounts[0].target == "/models/org/tiny"
    assert mount_problems(spec, host) == []


def test_a_missing_model_names_where_it_was_looked_for(host: DaemonSettings) -> None:
    [problem] = mount_problems(spec_with(model("tiny")), host)
    assert problem == (
        f'mounts[0].source: no such model: {host.state_dir}/models/tiny does not exist (got "tiny")'
    )


def test_a_model_must_be_a_directory_with_something_in_it(host: DaemonSettings) -> None:
    (host.state_dir / "models" / "file").write_text("x")
    (host.state_dir / "models" / "empty").mkdir()
    problems = mount_problems(spec_with(model("file") + model("empty")), host)
    assert problems == [
        f'mounts[0].source: {host.state_dir}/models/file is not a directory (got "file")',
        f'mounts[1].source: {host.state_dir}/models/empty is empty (got "empty")',
    ]


def test_a_model_may_link_to_an_allowed_directory(host: DaemonSettings, tmp_path: Path) -> None:
    (host.state_dir / "models" / "big").symlink_to(tmp_path / "srv" / "data")
    (host.state_dir / "models" / "evil").symlink_to("/etc")
    problems = mount_problems(spec_with(model("big") + model("evil")), host)
    [problem] = problems
    assert problem.startswith(f"mounts[1].source: {host.state_dir}/models/evil links to /etc")


def test_model_and_git_mounts_are_read_only(host: DaemonSettings) -> None:
    path = model_dir(host.state_dir, "tiny")
    path.mkdir()
    (path / "w").write_text("x")
    spec = spec_with(
        model("tiny", read_only=False)
        + '[[mounts]]\ntype = "git"\nsource = "https://git.example.com/x.git"\n'
        + 'target = "/src"\nread_only = false\n'
    )
    assert mount_problems(spec, host) == [
        "mounts[0].read_only: model mounts are always read-only (got false)",
        "mounts[1].read_only: git checkouts are shared by the replicas and always read-only "
        "(got false)",
    ]


def test_git_credentials_file_must_exist(host: DaemonSettings, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    spec = spec_with(
        f'[[mounts]]\ntype = "git"\nsource = "https://example.com/r.git"\ntarget = "/src"\n'
        f'credentials_file = "{creds}"\n'
    )
    [problem] = mount_problems(spec, host)
    assert problem == (
        f"mounts[0].credentials_file: does not exist on this host (got {show_value(str(creds))})"
    )
    creds.write_text("username=u\npassword=hunter2\n")
    assert mount_problems(spec, host) == []


def test_git_credentials_file_is_confined(host: DaemonSettings, tmp_path: Path) -> None:
    def problems(creds: str) -> list[str]:
        return mount_problems(
            spec_with(
                '[[mounts]]\ntype = "git"\nsource = "git@git.example.com:o/r.git"\n'
                f'target = "/src"\ncredentials_file = "{creds}"\n'
            ),
            host,
        )

    outside = f"mounts[0].credentials_file: must lie under berthd's credentials_roots ({tmp_path})"
    assert problems("/etc/shadow") == [f'{outside} (got "/etc/shadow")']
    assert problems("/root/.ssh/id_rsa") == [f'{outside} (got "/root/.ssh/id_rsa")']
    (tmp_path / "key").symlink_to("/etc/shadow")
    [problem] = problems(str(tmp_path / "key"))
    assert "symbolic link" in problem and problem.startswith("mounts[0].credentials_file: ")


def test_volumes_need_nothing_from_the_host(host: DaemonSettings) -> None:
    spec = spec_with('[[mounts]]\ntype = "volume"\nsource = "cache"\ntarget = "/cache"\n')
    assert mount_problems(spec, host) == []


# -- [registry] --------------------------------------------------------------------------


def test_registry_files_are_checked_without_showing_them(
    host: DaemonSettings, tmp_path: Path
) -> None:
    secret = "s3cret-Pa55"
    password = tmp_path / "password"
    spec = spec_with(f'[registry]\nusername = "u"\npassword_file = "{password}"\n')
    assert mount_problems(spec, host) == [
        f"registry.password_file: does not exist on this host (got {show_value(str(password))})"
    ]
    password.write_text(f"{secret}\n")
    assert mount_problems(spec, host) == []

    auth = tmp_path / "auth.json"
    auth.write_text(f"{{not json {secret}")
    spec = spec_with(f'[registry]\nauth_file = "{auth}"\n')
    [problem] = mount_problems(spec, host)
    assert problem.startswith("registry.auth_file: is not a containers-auth.json file (not JSON)")
    assert secret not in problem
    auth.write_text(json.dumps({"auths": {}}))
    assert mount_problems(spec, host) == []
