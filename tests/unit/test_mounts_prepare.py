"""`MountPreparer`: spec mounts -> MountSpecs, against FakeRuntime and git repositories made here.

No network: every repository is a `git init` in tmp_path, cloned through a file:// URL. Time is
trio's MockClock (it moves only when a test jumps it), for the clone back-off.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from config.parse import parse_spec
from config.settings import DaemonSettings
from config.spec import DeploymentSpec, Mount, MountType
from daemon.integrations.git import checkout, git_config_args, git_environment
from daemon.integrations.mounts import MountError, MountPreparer, git_checkouts_dir
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import MountSpec

BASE = """
name = "app"
image = "localhost/berth-echo:1"
port = 8080
[endpoint]
port = 18080
"""


def read(path: Path) -> str:
    return path.read_text()


def spec_with(mounts: str) -> DeploymentSpec:
    return parse_spec(BASE + mounts, source="test.toml")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository: commit "one" (tagged v1) then commit "two" on main."""
    path = tmp_path / "repo"
    git("init", "--quiet", "--initial-branch=main", str(path))
    (path / "README").write_text("one\n")
    git("add", "README", cwd=path)
    git("commit", "--quiet", "-m", "one", cwd=path)
    git("tag", "v1", cwd=path)
    (path / "README").write_text("two\n")
    git("commit", "--quiet", "-am", "two", cwd=path)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> DaemonSettings:
    """srv/ holds bind sources; repo/ and missing/ may be cloned by file:// URLs; creds/ is
    the credentials root."""
    (tmp_path / "srv" / "data").mkdir(parents=True)
    (tmp_path / "creds").mkdir()
    return DaemonSettings(
        state_dir=tmp_path / "state",
        socket=tmp_path / "run" / "berth.sock",
        podman_url=None,
        specs=None,
        allowed_roots=(tmp_path / "srv", tmp_path / "repo", tmp_path / "missing"),
        metrics_listen=None,
        credentials_roots=(tmp_path / "creds",),
    )


def git_mount(url: str, *, ref: str | None = None, target: str = "/src") -> str:
    text = f'[[mounts]]\ntype = "git"\nsource = "{url}"\ntarget = "{target}"\n'
    return text + (f'ref = "{ref}"\n' if ref else "")


async def test_bind_model_and_volume(settings: DaemonSettings, tmp_path: Path) -> None:
    runtime = FakeRuntime()
    (tmp_path / "srv" / "link").symlink_to(tmp_path / "srv" / "data")
    model = settings.state_dir / "models" / "org" / "tiny"
    model.mkdir(parents=True)
    (model / "weights").write_text("w")
    spec = spec_with(
        f'[[mounts]]\ntype = "bind"\nsource = "{tmp_path}/srv/link"\ntarget = "/data"\n'
        f"read_only = false\n"
        '[[mounts]]\ntype = "model"\nsource = "org/tiny"\n'
        '[[mounts]]\ntype = "volume"\nsource = "cache"\ntarget = "/cache"\nread_only = false\n'
    )
    preparer = MountPreparer(runtime, settings, volume_labels={"io.berth.instance": "t"})
    mounts = await preparer.prepare(spec, "abc")
    assert mounts == (
        MountSpec("bind", str(tmp_path / "srv" / "data"), "/data", read_only=False),
        MountSpec("bind", str(model), "/models/org/tiny", read_only=True),
        MountSpec("volume", "cache", "/cache", read_only=False),
    )
    assert runtime.volumes == {"cache": {"io.berth.instance": "t", "io.berth.deployment": "app"}}
    # A second replica finds the volume there.
    await preparer.prepare(spec, "abc")
    assert [c for c in runtime.calls if c[0] == "create_volume"] == [("create_volume", "cache")]


async def test_a_link_swapped_after_apply_is_refused(
    settings: DaemonSettings, tmp_path: Path
) -> None:
    link = tmp_path / "srv" / "link"
    link.symlink_to("/etc")
    spec = spec_with(f'[[mounts]]\ntype = "bind"\nsource = "{link}"\ntarget = "/data"\n')
    with pytest.raises(MountError) as caught:
        await MountPreparer(FakeRuntime(), settings).prepare(spec, "abc")
    assert str(caught.value).startswith("mounts[0].source: resolves to /etc")


async def test_git_is_cloned_once_per_revision(
    settings: DaemonSettings, repo: Path, mock_clock: MockClock
) -> None:
    preparer = MountPreparer(FakeRuntime(), settings)
    spec = spec_with(
        git_mount(f"file://{repo}") + git_mount(f"file://{repo}", ref="v1", target="/v1")
    )
    mounts = await preparer.prepare(spec, "rev1")
    checkouts = git_checkouts_dir(settings.state_dir, "app") / "rev1"
    assert mounts == (
        MountSpec("bind", str(checkouts / "0"), "/src", read_only=True),
        MountSpec("bind", str(checkouts / "1"), "/v1", read_only=True),
    )
    assert read(checkouts / "0" / "README") == "two\n"
    assert read(checkouts / "1" / "README") == "one\n"
    # The same revision again: the checkout is reused, even if the repository moved on.
    (repo / "README").write_text("three\n")
    git("commit", "--quiet", "-am", "three", cwd=repo)
    assert await preparer.prepare(spec, "rev1") == mounts
    assert read(checkouts / "0" / "README") == "two\n"
    # A new revision gets its own.
    await preparer.prepare(spec, "rev2")
    assert read(checkouts.parent / "rev2" / "0" / "README") == "three\n"
    await preparer.prune("app", keep={"rev2"})
    assert sorted(p.name for p in checkouts.parent.iterdir()) == ["rev2"]
    await preparer.prune("app")
    assert not checkouts.parent.exists()


@pytest.mark.parametrize("ref", ["v1", "full-sha", "short-sha"])
async def test_git_refs(tmp_path: Path, repo: Path, ref: str) -> None:
    first = git("rev-parse", "v1", cwd=repo)
    wanted = {"v1": "v1", "full-sha": first, "short-sha": first[:10]}[ref]
    mount = Mount(MountType.GIT, "/src", f"file://{repo}", ref=wanted)
    commit = await checkout(mount, tmp_path / "out")
    assert commit == first
    assert read(tmp_path / "out" / "README") == "one\n"
    assert not (tmp_path / ".out.partial").exists()


async def test_a_failed_clone_is_clear_and_not_retried_at_once(
    settings: DaemonSettings, tmp_path: Path, repo: Path, mock_clock: MockClock
) -> None:
    preparer = MountPreparer(FakeRuntime(), settings)
    (tmp_path / "missing").mkdir()  # allowed, but no repository (yet)
    url = f"file://{tmp_path}/missing"
    spec = spec_with(git_mount(url))
    with pytest.raises(MountError) as caught:
        await preparer.prepare(spec, "rev1")
    message = str(caught.value)
    assert message.startswith(f"git clone of {url} failed: fatal: ")
    assert "does not appear to be a git repository" in message
    assert not caught.value.repeated
    assert not (git_checkouts_dir(settings.state_dir, "app") / "rev1" / "0").exists()
    # Within the back-off the same failure comes back, marked as a repeat, without a clone.
    await trio.run_process(["git", "clone", "--quiet", str(repo), f"{tmp_path}/missing"])
    mock_clock.jump(5)
    with pytest.raises(MountError) as again:
        await preparer.prepare(spec, "rev1")
    assert again.value.repeated and str(again.value) == message
    mock_clock.jump(6)
    [mount] = await preparer.prepare(spec, "rev1")
    assert read(Path(mount.source, "README")) == "two\n"


async def test_an_unknown_branch(tmp_path: Path, repo: Path) -> None:
    mount = Mount(MountType.GIT, "/src", f"file://{repo}", ref="nope")
    with pytest.raises(MountError) as caught:
        await checkout(mount, tmp_path / "out")
    assert str(caught.value) == (
        f"git clone of file://{repo} failed: fatal: Remote branch nope not found in upstream origin"
    )


def test_credentials_reach_git_through_the_helper_only(tmp_path: Path) -> None:
    secret = "ghp_Secret123"
    creds = tmp_path / "creds"
    creds.write_text(f"username=deploy\npassword={secret}\n")
    mount = Mount(
        MountType.GIT, "/src", "https://git.example.com/r.git", credentials_file="/anything"
    )
    args = git_config_args(mount, with_credentials=True)
    env = git_environment(mount, tmp_path, creds)
    assert secret not in " ".join(args) and all(secret not in v for v in env.values())
    assert env["HOME"] == str(tmp_path) and env["GIT_CONFIG_NOSYSTEM"] == "1"
    # What git itself gets when it asks for credentials for this URL:
    filled = subprocess.run(
        ["git", *args, "credential", "fill"],
        input="protocol=https\nhost=git.example.com\npath=r.git\n\n",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "username=deploy\n" in filled and f"password={secret}\n" in filled


def test_git_speaks_only_the_urls_protocol(tmp_path: Path) -> None:
    https = Mount(MountType.GIT, "/src", "https://git.example.com/r.git")
    assert git_config_args(https) == [
        "-c",
        "protocol.allow=never",
        "-c",
        "protocol.https.allow=always",
        "-c",
        "credential.helper=",
    ]
    scp = Mount(MountType.GIT, "/src", "git@git.example.com:org/r.git")
    assert "protocol.ssh.allow=always" in git_config_args(scp)


def test_ssh_urls_take_a_key_file_and_nothing_of_roots(tmp_path: Path) -> None:
    key = tmp_path / "credentials"
    mount = Mount(MountType.GIT, "/src", "git@git.example.com:org/r.git", credentials_file="/k")
    env = git_environment(mount, tmp_path, key)
    assert f"-i {key}" in env["GIT_SSH_COMMAND"]
    assert "-F /dev/null" in env["GIT_SSH_COMMAND"]
    assert "IdentityAgent=none" in env["GIT_SSH_COMMAND"]
    assert "BERTH_GIT_CREDENTIALS" not in env and "SSH_AUTH_SOCK" not in env
    assert "credential.helper=!" not in " ".join(git_config_args(mount, with_credentials=True))
    # Without a key file ssh offers no key at all (root's ~/.ssh/id_* stay unused).
    bare = git_environment(Mount(MountType.GIT, "/src", "ssh://git.example.com/r.git"), tmp_path)
    assert "PubkeyAuthentication=no" in bare["GIT_SSH_COMMAND"]
    assert "-i " not in bare["GIT_SSH_COMMAND"]


async def test_credentials_are_read_checked_and_the_copy_removed(
    settings: DaemonSettings, tmp_path: Path, repo: Path, mock_clock: MockClock
) -> None:
    creds = tmp_path / "creds" / "git"
    creds.write_text("username=u\npassword=p\n")
    text = git_mount(f"file://{repo}") + f'credentials_file = "{creds}"\n'
    [mount] = await MountPreparer(FakeRuntime(), settings).prepare(spec_with(text), "rev1")
    assert read(Path(mount.source, "README")) == "two\n"
    # Only the checkout is left beside it: the private HOME and its copy are gone.
    assert [p.name for p in Path(mount.source).parent.iterdir()] == ["0"]
    # A link planted where the file was is refused at the next clone, naming the field.
    creds.unlink()
    creds.symlink_to("/etc/shadow")
    with pytest.raises(MountError) as caught:
        await MountPreparer(FakeRuntime(), settings).prepare(spec_with(text), "rev2")
    assert str(caught.value).startswith("mounts[0].credentials_file: is or goes through a ")


async def test_a_file_url_outside_the_roots_is_refused_at_prepare(
    settings: DaemonSettings, mock_clock: MockClock
) -> None:
    with pytest.raises(MountError) as caught:
        await MountPreparer(FakeRuntime(), settings).prepare(
            spec_with(git_mount("file:///etc")), "rev1"
        )
    assert str(caught.value).startswith("mounts[0].source: a file:// repository /etc: not under")


async def test_a_foreign_volume_is_refused_at_prepare(settings: DaemonSettings) -> None:
    runtime = FakeRuntime()
    runtime.volumes["secrets"] = {"app": "other"}
    runtime.volumes["theirs"] = {"io.berth.instance": "t", "io.berth.deployment": "other"}
    preparer = MountPreparer(runtime, settings, volume_labels={"io.berth.instance": "t"})
    for name, words in [("secrets", "berth did not make"), ("theirs", 'for deployment "other"')]:
        mount = f'[[mounts]]\ntype = "volume"\nsource = "{name}"\ntarget = "/v"\n'
        with pytest.raises(MountError) as caught:
            await preparer.prepare(spec_with(mount), "rev1")
        assert str(caught.value).startswith("mounts[0].source: ") and words in str(caught.value)
    shared = dataclasses.replace(settings, shared_volumes=("secrets",))
    mount = '[[mounts]]\ntype = "volume"\nsource = "secrets"\ntarget = "/v"\n'
    preparer = MountPreparer(runtime, shared, volume_labels={"io.berth.instance": "t"})
    assert await preparer.prepare(spec_with(mount), "rev1") == (
        MountSpec("volume", "secrets", "/v", read_only=True),
    )
