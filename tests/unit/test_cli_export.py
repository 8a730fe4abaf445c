"""`berth export`: the command's side (arguments, where the spec comes from, stdout, --out).

`--file` runs against a socket path that does not exist: any attempt to reach berthd would
fail with "cannot reach berthd". NAME runs against berthd's own admin routes
(`daemon.api.routes.AdminApi`) over a real Unix socket, on a real SQLite store holding the
deployment's revisions. What the target modules put in the files is their tests' business
(tests/unit/test_export_*.py); here the command's output is compared with
`daemon.export.targets.export` of the same spec and origin.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from config.canonical import spec_id, spec_to_dict
from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.api.routes import AdminApi
from daemon.cli import main as cli
from daemon.cli.export import stdout_text
from daemon.export.bundle import Bundle, Origin, Target
from daemon.export.targets import export
from daemon.http.listeners import UnixSocketListener
from daemon.http.server import HttpServer
from daemon.store.access import StoreAccess
from daemon.store.database import Store

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "config" / "examples" / "echo.toml"
VLLM = REPO / "config" / "examples" / "vllm.toml"

SPEC_1 = 'name = "echo"\nimage = "localhost/berth-echo:1"\nport = 8080\n[endpoint]\nport = 18080\n'
SPEC_2 = (
    'name = "echo"\nimage = "localhost/berth-echo:2"\nport = 8080\n'
    "[endpoint]\nport = 18080\nmax_concurrency = 4\n"
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def no_socket(short_dir: Path) -> str:
    """A socket path with nothing behind it (its directory does not exist either)."""
    return str(short_dir / "absent" / "berth.sock")


@pytest.fixture(autouse=True)
def no_env_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BERTH_SOCKET", raising=False)


def run(socket_path: str, *argv: str) -> int:
    return cli.main(["--socket", socket_path, "export", *argv])


def from_file(path: Path, target: Target) -> Bundle:
    spec = parse_spec(path.read_text(), source=str(path))
    return export(spec, Origin(spec_id=spec_id(spec), file=path.name), target)


def documents(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


# -- arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--to", "kubernetes"], "one of the arguments NAME --file is required"),
        (["echo", "--file", str(ECHO), "--to", "kubernetes"], "not allowed with argument"),
        (["echo"], "the following arguments are required: --to"),
        (["echo", "--to", "nomad"], "invalid choice: 'nomad'"),
        (["echo", "--to", "kubernetes", "--revision", "two"], "invalid int value: 'two'"),
    ],
)
def test_usage_errors_exit_2(
    no_socket: str, argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(no_socket, *argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert error in captured.err


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["--file", str(ECHO), "--revision", "2"],
            "--revision goes with a deployment NAME, not --file",
        ),
        (["echo", "--revision", "0"], "--revision must be 1 or more"),
    ],
)
def test_revision_misuse_exits_2_before_anything_is_asked(
    no_socket: str, argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(no_socket, *argv, "--to", "kubernetes") == 2
    assert capsys.readouterr().err == f"berth: {error}\n"


# -- --file -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", [Target.KUBERNETES, Target.KSERVE])
def test_file_to_stdout_is_one_yaml_stream_led_by_the_readme(
    no_socket: str, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(no_socket, "--file", str(ECHO), "--to", target) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # berthd was never asked: no "cannot reach berthd"
    bundle = from_file(ECHO, target)
    assert captured.out == stdout_text(bundle)
    readme = next(f.text for f in bundle.files if f.name == "README.md")
    head = captured.out[: captured.out.index("\n---\n")]
    assert head.splitlines() == [f"# {line}".rstrip() for line in readme.splitlines()]
    expected: list[Any] = []
    for exported in bundle.files:
        if exported.name != "README.md":
            expected += documents(exported.text)
    assert expected and documents(captured.out) == expected
    assert all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in expected)


def test_file_to_stdout_for_quadlet_names_each_file(
    no_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(no_socket, "--file", str(ECHO), "--to", "quadlet") == 0
    out = capsys.readouterr().out
    bundle = from_file(ECHO, Target.QUADLET)
    # Split the output back into files at its `# ==> NAME <==` lines.
    parts: dict[str, list[str]] = {}
    for line in out.splitlines(keepends=True):
        if line.startswith("# ==> ") and line.endswith(" <==\n"):
            current = parts.setdefault(line[len("# ==> ") : -len(" <==\n")], [])
        else:
            current.append(line)
    names = [f.name for f in bundle.files]
    assert list(parts) == ["README.md", *(n for n in names if n != "README.md")]
    for exported in bundle.files:
        text = "".join(parts[exported.name])
        assert text in (exported.text, exported.text + "\n")  # a blank line between files


def test_a_bad_spec_is_refused_with_every_problem_and_nothing_written(
    short_dir: Path, no_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = short_dir / "bad.toml"
    bad.write_text('name = "Echo"\nimage = "localhost/berth-echo:1"\nport = 0\n[endpoint]\n')
    out = short_dir / "out"
    assert run(no_socket, "--file", str(bad), "--to", "kubernetes", "--out", str(out)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"berth: {bad}: spec refused, 3 problems:"  # as berth apply says it
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["name", "port", "endpoint.port"]
    assert all(line.startswith("  ") for line in lines[1:])
    assert not out.exists()


def test_a_missing_file_is_one_line(
    short_dir: Path, no_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = short_dir / "nope.toml"
    assert run(no_socket, "--file", str(missing), "--to", "quadlet") == 1
    assert capsys.readouterr().err == f"berth: cannot read {missing}: No such file or directory\n"


def test_out_writes_every_file_and_names_what_it_did_not_write(
    short_dir: Path, no_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = short_dir / "made" / "here"  # made, parents too
    assert run(no_socket, "--file", str(VLLM), "--to", "kubernetes", "--out", str(out)) == 0
    bundle = from_file(VLLM, Target.KUBERNETES)
    names = [f.name for f in bundle.files]
    assert names[-1] == "README.md"
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary file left
    for exported in bundle.files:
        assert (out / exported.name).read_text() == exported.text
        assert (out / exported.name).stat().st_mode & 0o777 == 0o666 & ~_umask()
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [str(out / n) for n in names]
    assert bundle.left_out  # vllm.toml sets endpoint fields no target has
    count = len(bundle.left_out)
    assert captured.err == (
        f"berth: {count} fields could not be carried to kubernetes: see {out / 'README.md'}\n"
    )

    # Again over the same directory, with a file an older export (or someone) left there.
    (out / "old-pvc.yaml").write_text("kind: PersistentVolumeClaim\n")
    (out / "README.md").write_text("stale\n")
    assert run(no_socket, "--file", str(VLLM), "--to", "kubernetes", "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert (out / "README.md").read_text() == bundle.files[-1].text
    assert (out / "old-pvc.yaml").read_text() == "kind: PersistentVolumeClaim\n"  # never removed
    assert captured.err.splitlines()[0] == (
        f"berth: {out / 'old-pvc.yaml'}: not written by this export, left as it is "
        "(remove it if an older export wrote it)"
    )


def test_out_on_a_file_is_one_line(
    short_dir: Path, no_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = short_dir / "a-file"
    blocker.write_text("")
    assert run(no_socket, "--file", str(ECHO), "--to", "quadlet", "--out", str(blocker)) == 1
    assert capsys.readouterr().err == (
        f"berth: {blocker} is not a directory: --out names the directory to write into\n"
    )


@pytest.mark.parametrize("target", list(Target))
def test_two_runs_give_the_same_bytes(
    short_dir: Path, no_socket: str, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for attempt in ("a", "b"):
        assert run(no_socket, "--file", str(VLLM), "--to", target) == 0
        printed = capsys.readouterr().out
        out = short_dir / attempt
        assert run(no_socket, "--file", str(VLLM), "--to", target, "--out", str(out)) == 0
        capsys.readouterr()
        outputs.append((printed, {p.name: p.read_bytes() for p in sorted(out.iterdir())}))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] and len(outputs[0][1]) >= 2


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- NAME: berthd's admin routes on a real socket and store -------------------------------


@dataclass
class Daemon:
    """What AdminApi's get and revision routes read of berthd: its store and workers."""

    store: StoreAccess
    workers: dict[str, Any]

    async def active_spec(self, name: str) -> DeploymentSpec | None:
        revision = await self.store.call(Store.active_revision, name)
        return None if revision is None else parse_spec(revision.spec_text, source=name)


def record(store: Store, text: str) -> str:
    spec = parse_spec(text)
    return store.apply(spec.name, spec_id(spec), text, str(spec_to_dict(spec))).deployment_id


@asynccontextmanager
async def berthd(path: Path, store: Store) -> AsyncIterator[None]:
    api = AdminApi(Daemon(StoreAccess(store), {}))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(HttpServer(UnixSocketListener(path), api.handle, name="admin").run)
        yield
        nursery.cancel_scope.cancel()


async def berth(path: Path, *argv: str) -> int:
    """The command in a thread (it is synchronous) while the server runs on trio."""
    return await trio.to_thread.run_sync(run, str(path), *argv)


async def test_name_exports_the_active_revision_and_revision_n_an_older_one(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    with Store(short_dir / "berth.db") as store:
        deployment_id = record(store, SPEC_1)
        record(store, SPEC_2)
        async with berthd(path, store):
            assert await berth(path, "echo", "--to", "kubernetes") == 0
            active = capsys.readouterr()
            assert await berth(path, "echo", "--revision", "1", "--to", "quadlet") == 0
            first = capsys.readouterr()
    assert active.err == first.err == ""
    spec_2, spec_1 = parse_spec(SPEC_2), parse_spec(SPEC_1)
    origin_2 = Origin(spec_id=spec_id(spec_2), deployment_id=deployment_id, revision=2)
    origin_1 = Origin(spec_id=spec_id(spec_1), deployment_id=deployment_id, revision=1)
    assert active.out == stdout_text(export(spec_2, origin_2, Target.KUBERNETES))
    assert first.out == stdout_text(export(spec_1, origin_1, Target.QUADLET))
    assert f"revision 2 of deployment id {deployment_id} (spec_id " in active.out
    assert "localhost/berth-echo:2" in active.out and "berth-echo:1" not in active.out
    assert "localhost/berth-echo:1" in first.out and "berth-echo:2" not in first.out


async def test_a_removed_deployments_revision_still_exports(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    with Store(short_dir / "berth.db") as store:
        record(store, SPEC_1)
        store.mark_removed("echo")
        async with berthd(path, store):
            assert await berth(path, "echo", "--to", "kubernetes") == 1
            gone = capsys.readouterr()
            assert await berth(path, "echo", "--revision", "1", "--to", "kubernetes") == 0
            kept = capsys.readouterr()
    assert gone.err == (
        "berth: no deployment named 'echo' (it was removed; its revisions are kept: "
        "berth export echo --revision 1 --to ..., or berth history echo)\n"
    )
    spec = parse_spec(SPEC_1)
    origin = Origin(spec_id=spec_id(spec), revision=1)  # no deployment id: it is removed
    assert kept.out == stdout_text(export(spec, origin, Target.KUBERNETES))


async def test_unknown_names_and_revisions_get_berthds_message(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    with Store(short_dir / "berth.db") as store:
        record(store, SPEC_1)
        async with berthd(path, store):
            assert await berth(path, "nope", "--to", "kserve", "--out", str(short_dir / "o")) == 1
            assert capsys.readouterr().err == "berth: no deployment named 'nope'\n"
            assert await berth(path, "echo", "--revision", "9", "--to", "kserve") == 1
            assert capsys.readouterr().err == "berth: echo has no revision 9\n"
    assert not (short_dir / "o").exists()


def test_name_without_berthd_says_it_cannot_reach_it(
    no_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(no_socket, "echo", "--to", "kubernetes") == 1
    assert capsys.readouterr().err == (
        f"berth: cannot reach berthd at {no_socket} (is berthd running?)\n"
    )


def test_the_bytes_do_not_depend_on_the_directory_it_is_run_from(
    short_dir: Path,
    no_socket: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The origin is the file's name alone: `--file vllm.toml` and the absolute path agree."""
    assert run(no_socket, "--file", str(VLLM), "--to", "kubernetes") == 0
    absolute = capsys.readouterr().out
    monkeypatch.chdir(VLLM.parent)
    assert run(no_socket, "--file", VLLM.name, "--to", "kubernetes") == 0
    assert capsys.readouterr().out == absolute
    assert f"from spec file {VLLM.name} (spec_id" in absolute
