"""A git mount's `credentials = { secret = "NAME" }`: parsed by field path beside
`credentials_file` (the canonical form carries the reference only), and at the clone the
secret's value is what git's credential helper answers with, from a 0600 copy in the private
HOME that is gone afterwards."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import trio

from config.canonical import spec_to_dict
from config.errors import SpecError
from config.parse import parse_spec, spec_from_dict
from config.secret_ref import SecretRef
from config.settings import DaemonSettings
from config.spec import Mount
from daemon.integrations import git as git_module
from daemon.integrations.git import git_config_args
from daemon.integrations.mounts import MountError, MountPreparer
from daemon.runtime.fake import FakeRuntime
from daemon.secrets.references import secret_references
from daemon.secrets.store import SecretError, SecretStore

BASE = 'name = "app"\nimage = "localhost/x:1"\nport = 8080\n[endpoint]\nport = 18080\n'
VALUE = "username=deploy\npassword=ghp_FromASecret123\n"


def git_mount(url: str, extra: str) -> str:
    return f'[[mounts]]\ntype = "git"\nsource = "{url}"\ntarget = "/src"\n{extra}\n'


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(BASE + text)
    return caught.value.messages()


def test_a_credentials_reference_parses_and_round_trips() -> None:
    s = parse_spec(
        BASE + git_mount("https://git.example.com/r.git", 'credentials = { secret = "git" }')
    )
    assert s.mounts[0].credentials == SecretRef("git") and s.mounts[0].credentials_file is None
    canonical = spec_to_dict(s)
    assert canonical["mounts"][0]["credentials"] == {"secret": "git"}
    assert spec_from_dict(json.loads(json.dumps(canonical))) == s
    assert secret_references(s) == [("mounts[0].credentials", SecretRef("git"))]


@pytest.mark.parametrize(
    ("mount", "expected"),
    [
        (
            git_mount(
                "https://g.example/r.git",
                'credentials = { secret = "git" }\ncredentials_file = "/etc/berth/c"',
            ),
            "mounts[0].credentials: cannot be combined with credentials_file",
        ),
        (
            '[[mounts]]\ntype = "bind"\nsource = "/srv/x"\ntarget = "/x"\n'
            'credentials = { secret = "git" }\n',
            "mounts[0].credentials: only for git mounts",
        ),
        (
            git_mount("https://g.example/r.git", 'credentials = "password=hunter2"'),
            "mounts[0].credentials: must be a reference",
        ),
    ],
)
def test_bad_credentials_name_their_field(mount: str, expected: str) -> None:
    found = problems(mount)
    assert any(m.startswith(expected) for m in found), found
    assert not any("hunter2" in m for m in found)


@pytest.fixture
def settings(tmp_path: Path) -> DaemonSettings:
    (tmp_path / "creds").mkdir()
    return DaemonSettings(
        state_dir=tmp_path / "state",
        socket=tmp_path / "run" / "berth.sock",
        podman_url=None,
        specs=None,
        allowed_roots=(tmp_path / "repo",),
        metrics_listen=None,
        credentials_roots=(tmp_path / "creds",),
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    run = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*run, "init", "-q", "--initial-branch=main", str(path)], check=True)
    (path / "README").write_text("one\n")
    subprocess.run([*run, "add", "README"], cwd=path, check=True)
    subprocess.run([*run, "commit", "-q", "-m", "one"], cwd=path, check=True)
    return path


async def test_the_secret_value_reaches_the_git_helper(
    settings: DaemonSettings, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SecretStore(tmp_path / "secrets")
    await store.open()
    await store.create("git", VALUE.encode())
    seen: dict[str, object] = {}
    real_environment = git_module.git_environment

    def environment(mount: Mount, home: Path, credentials: Path | None = None) -> dict[str, str]:
        env = real_environment(mount, home, credentials)
        assert credentials is not None
        seen["mode"] = stat.S_IMODE(os.stat(credentials).st_mode)
        seen["home"] = home
        # What git itself gets when it asks for credentials (the helper `cat`s the copy):
        seen["filled"] = subprocess.run(
            ["git", *git_config_args(mount, with_credentials=True), "credential", "fill"],
            input="protocol=https\nhost=git.example.com\npath=r.git\n\n",
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return env

    monkeypatch.setattr(git_module, "git_environment", environment)
    preparer = MountPreparer(
        FakeRuntime(), settings, read_secret=store.read, read_failures=(SecretError,)
    )
    spec = parse_spec(BASE + git_mount(f"file://{repo}", 'credentials = { secret = "git" }'))
    (mount,) = await preparer.prepare(spec, "rev1")
    assert (Path(mount.source) / "README").read_text() == "one\n"
    assert seen["mode"] == 0o600
    filled = str(seen["filled"])
    assert "username=deploy\n" in filled and "password=ghp_FromASecret123\n" in filled
    assert not await trio.Path(
        str(seen["home"])
    ).exists()  # the private HOME and its copy are removed


async def test_a_missing_secret_names_the_field(
    settings: DaemonSettings, repo: Path, tmp_path: Path
) -> None:
    store = SecretStore(tmp_path / "secrets")
    await store.open()
    spec = parse_spec(BASE + git_mount(f"file://{repo}", 'credentials = { secret = "git" }'))
    preparer = MountPreparer(
        FakeRuntime(), settings, read_secret=store.read, read_failures=(SecretError,)
    )
    with pytest.raises(MountError, match=r'^mounts\[0\]\.credentials\.secret: secret "git"'):
        await preparer.prepare(spec, "rev1")
    with pytest.raises(MountError, match="keeps no secrets"):
        await MountPreparer(FakeRuntime(), settings).prepare(spec, "rev2")
