"""`[[mounts]]` in real replicas: spec -> MountPreparer -> PodmanRuntime -> what the container sees.

Files are read back through the echo image's httpd (a mount under /www is served on the
replica's published port) or `podman exec`. Git repositories are made here (`git init`, cloned
through file:// URLs): no network. Volumes get unique names and are removed afterwards.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import trio

from config.parse import parse_spec
from config.settings import DaemonSettings
from config.spec import DeploymentSpec
from daemon.integrations.mount_checks import model_dir, mount_problems, volume_problems
from daemon.integrations.mounts import MountError, MountPreparer
from daemon.runtime.interface import ContainerSpec
from daemon.runtime.podman import PodmanRuntime
from tests.conftest import podman_binary

pytestmark = pytest.mark.podman

HTTPD = ("httpd", "-f", "-p", "8080", "-h", "/www")


@dataclass
class Host:
    settings: DaemonSettings
    srv: Path  # the allowed root
    runtime: PodmanRuntime
    labels: dict[str, str]
    free_port: Callable[[], int]

    def spec(self, mounts: str) -> DeploymentSpec:
        text = (
            'name = "mounts"\nimage = "localhost/berth-echo:1"\nport = 8080\n'
            f"[endpoint]\nport = 18080\n{mounts}"
        )
        return parse_spec(text, source="test.toml")

    async def replica(self, spec: DeploymentSpec, spec_id: str = "rev1") -> Replica:
        """Check the spec as apply does, prepare its mounts, run one replica; wait for httpd."""
        assert mount_problems(spec, self.settings) == []
        mounts = await MountPreparer(
            self.runtime, self.settings, volume_labels=self.labels
        ).prepare(spec, spec_id)
        port = self.free_port()
        container = ContainerSpec(
            name=f"berth-test-{uuid.uuid4().hex[:10]}",
            image=spec.image,
            labels=self.labels,
            app_port=8080,
            host_port=port,
            command=HTTPD,
            stop_timeout=1.0,
        )
        container_id = await self.runtime.create(replace(container, mounts=mounts))
        await self.runtime.start(container_id)
        replica = Replica(container_id, port)
        await replica.get("/health")
        return replica


@dataclass
class Replica:
    container_id: str
    port: int

    async def get(self, path: str) -> httpx.Response:
        with trio.fail_after(10):
            async with httpx.AsyncClient(timeout=2.0) as client:
                while True:
                    try:
                        return await client.get(f"http://127.0.0.1:{self.port}{path}")
                    except httpx.TransportError:
                        await trio.sleep(0.05)

    async def sh(self, script: str) -> subprocess.CompletedProcess[bytes]:
        """`sh -c script` inside the replica (podman exec); never raises on failure."""
        return await trio.run_process(
            [podman_binary(), "exec", self.container_id, "sh", "-c", script],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


@pytest.fixture
def host(
    tmp_path: Path,
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> Host:
    srv = tmp_path / "srv"
    srv.mkdir()
    settings = DaemonSettings(
        state_dir=tmp_path / "state",
        socket=tmp_path / "run" / "berth.sock",
        podman_url=None,
        specs=None,
        allowed_roots=(srv,),
        metrics_listen=None,
    )
    return Host(settings, srv, runtime, test_labels, free_port)


@pytest.fixture
def volume_name() -> Iterator[str]:
    name = f"berth-test-{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        # After test_labels' containers are gone (fixtures end in reverse order of setup).
        subprocess.run(
            [podman_binary(), "volume", "rm", "--force", name], capture_output=True, check=False
        )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def read(path: Path) -> str:
    return path.read_text()


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


async def test_bind_mount_is_served_and_read_only(host: Host) -> None:
    write(host.srv / "site" / "hello.txt", "hello from the host\n")
    spec = host.spec(
        f'[[mounts]]\ntype = "bind"\nsource = "{host.srv}/site"\ntarget = "/www/mounted"\n'
    )
    replica = await host.replica(spec)
    response = await replica.get("/mounted/hello.txt")
    assert response.status_code == 200
    assert response.text == "hello from the host\n"
    # Edits on the host show through at once.
    write(host.srv / "site" / "hello.txt", "changed\n")
    assert (await replica.get("/mounted/hello.txt")).text == "changed\n"
    # read_only defaults to true, and the container really cannot write.
    result = await replica.sh("echo x > /www/mounted/new.txt")
    assert result.returncode != 0
    assert b"Read-only file system" in result.stderr
    assert not (host.srv / "site" / "new.txt").exists()


async def test_writable_bind_mount(host: Host) -> None:
    (host.srv / "out").mkdir()
    spec = host.spec(
        f'[[mounts]]\ntype = "bind"\nsource = "{host.srv}/out"\ntarget = "/out"\n'
        "read_only = false\n"
    )
    replica = await host.replica(spec)
    result = await replica.sh("echo written > /out/result.txt")
    assert result.returncode == 0, result.stderr
    assert read(host.srv / "out" / "result.txt") == "written\n"


async def test_named_volume_is_created_and_shared(host: Host, volume_name: str) -> None:
    spec = host.spec(
        f'[[mounts]]\ntype = "volume"\nsource = "{volume_name}"\ntarget = "/www/shared"\n'
        "read_only = false\n"
    )
    assert not await host.runtime.volume_exists(volume_name)
    first = await host.replica(spec)
    assert await host.runtime.volume_exists(volume_name)
    # Created once, with the given labels.
    inspect = await trio.run_process(
        [podman_binary(), "volume", "inspect", "--format", "{{json .Labels}}", volume_name],
        capture_stdout=True,
    )
    for key, value in {**host.labels, "io.berth.deployment": "mounts"}.items():
        assert f'"{key}":"{value}"' in inspect.stdout.decode()
    result = await first.sh("echo from-replica-1 > /www/shared/note.txt")
    assert result.returncode == 0, result.stderr
    second = await host.replica(spec)
    assert (await second.get("/shared/note.txt")).text == "from-replica-1\n"
    # Creating it again (another berthd got there first) is fine.
    await host.runtime.create_volume(volume_name)


async def test_read_only_volume(host: Host, volume_name: str) -> None:
    spec = host.spec(f'[[mounts]]\ntype = "volume"\nsource = "{volume_name}"\ntarget = "/data"\n')
    replica = await host.replica(spec)
    result = await replica.sh("touch /data/x")
    assert result.returncode != 0 and b"Read-only file system" in result.stderr


async def test_git_checkout_is_served_read_only(host: Host, tmp_path: Path) -> None:
    repo = host.srv / "repo"  # a file:// repository must lie under the allowed roots
    git("init", "--quiet", "--initial-branch=main", str(repo))
    write(repo / "index.html", "version one\n")
    git("add", "index.html", cwd=repo)
    git("commit", "--quiet", "-m", "one", cwd=repo)
    git("tag", "v1", cwd=repo)
    write(repo / "index.html", "version two\n")
    git("commit", "--quiet", "-am", "two", cwd=repo)
    spec = host.spec(
        f'[[mounts]]\ntype = "git"\nsource = "file://{repo}"\ntarget = "/www/head"\n'
        f'[[mounts]]\ntype = "git"\nsource = "file://{repo}"\nref = "v1"\ntarget = "/www/v1"\n'
    )
    replica = await host.replica(spec)
    assert (await replica.get("/head/index.html")).text == "version two\n"
    assert (await replica.get("/v1/index.html")).text == "version one\n"
    result = await replica.sh("echo x > /www/head/index.html")
    assert result.returncode != 0 and b"Read-only file system" in result.stderr


async def test_a_failed_clone_is_a_clear_error(host: Host, tmp_path: Path) -> None:
    (host.srv / "no-repo").mkdir()
    url = f"file://{host.srv}/no-repo"
    spec = host.spec(f'[[mounts]]\ntype = "git"\nsource = "{url}"\ntarget = "/src"\n')
    with pytest.raises(MountError) as caught:
        await MountPreparer(host.runtime, host.settings).prepare(spec, "rev1")
    assert str(caught.value).startswith(f"git clone of {url} failed: fatal: ")


async def test_model_is_mounted_read_only_at_models_name(host: Host) -> None:
    model = model_dir(host.settings.state_dir, "org/tiny")
    write(model / "config.json", '{"layers": 2}\n')
    replica = await host.replica(host.spec('[[mounts]]\ntype = "model"\nsource = "org/tiny"\n'))
    result = await replica.sh("cat /models/org/tiny/config.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b'{"layers": 2}\n'
    result = await replica.sh("rm /models/org/tiny/config.json")
    assert result.returncode != 0 and b"Read-only file system" in result.stderr


async def test_refused_mounts_name_their_field(host: Host, tmp_path: Path) -> None:
    (host.srv / "escape").symlink_to("/etc")
    (tmp_path / "outside").mkdir()
    spec = host.spec(
        f'[[mounts]]\ntype = "bind"\nsource = "{host.srv}/escape"\ntarget = "/a"\n'
        f'[[mounts]]\ntype = "bind"\nsource = "{tmp_path}/outside"\ntarget = "/b"\n'
        '[[mounts]]\ntype = "model"\nsource = "absent"\n'
    )
    problems = mount_problems(spec, host.settings)
    assert [p.split(": ", 1)[0] for p in problems] == [
        "mounts[0].source",
        "mounts[1].source",
        "mounts[2].source",
    ]
    assert "resolves to /etc (through a symbolic link)" in problems[0]
    # Preparing refuses too (a link swapped after apply), and nothing reaches Podman.
    with pytest.raises(MountError, match=r"^mounts\[0\]\.source: resolves to /etc"):
        await MountPreparer(host.runtime, host.settings).prepare(spec, "rev1")
    assert await host.runtime.list(host.labels) == []


async def test_a_volume_berth_did_not_make_for_this_deployment_is_refused(
    host: Host, volume_name: str
) -> None:
    """Label-checked against Podman: a volume made by someone else (or for another
    deployment) is refused at apply and at prepare, unless berthd.toml shares it."""
    mount = f'[[mounts]]\ntype = "volume"\nsource = "{volume_name}"\ntarget = "/v"\n'
    spec = host.spec(mount + "read_only = false\n")
    assert await volume_problems(spec, host.runtime, host.labels, host.settings) == []
    await trio.run_process(
        [podman_binary(), "volume", "create", "--label", "app=other", volume_name],
        capture_stdout=True,
    )
    [problem] = await volume_problems(spec, host.runtime, host.labels, host.settings)
    assert problem.startswith("mounts[0].source: is a Podman volume that berth did not make")
    preparer = MountPreparer(host.runtime, host.settings, volume_labels=host.labels)
    with pytest.raises(MountError, match=r"^mounts\[0\]\.source: is a Podman volume"):
        await preparer.prepare(spec, "rev1")
    shared = replace(host.settings, shared_volumes=(volume_name,))
    assert await volume_problems(spec, host.runtime, host.labels, shared) == []
    prepared = await MountPreparer(host.runtime, shared, volume_labels=host.labels).prepare(
        spec, "rev1"
    )
    assert [m.source for m in prepared] == [volume_name]


async def test_a_volume_of_another_deployment_is_refused(host: Host, volume_name: str) -> None:
    labels = {**host.labels, "io.berth.deployment": "other"}
    flags = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]
    await trio.run_process(
        [podman_binary(), "volume", "create", *flags, volume_name], capture_stdout=True
    )
    spec = host.spec(f'[[mounts]]\ntype = "volume"\nsource = "{volume_name}"\ntarget = "/v"\n')
    [problem] = await volume_problems(spec, host.runtime, host.labels, host.settings)
    assert 'berth made for deployment "other", not for this one' in problem
