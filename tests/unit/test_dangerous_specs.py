"""A corpus of dangerous specs (issue 13, point 4 and 5): each is refused, and the refusal
names the field at fault.

Each case is the spec's extra text, where it is refused (`parse`: `parse_spec`; `host`: the
apply-time checks `mount_problems` and `volume_problems`, on a host laid out in tmp_path
with real files, links and a fake Podman's volumes), the berthd settings it runs under
(`roots`: the tmp layout's allowed roots, or `/` for everything: the protected list must
hold even then), and the field path and words its problem must have. The first 18 are the
ones the issue measured as accepted; the rest are their neighbours.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from config.errors import SpecError
from config.parse import parse_spec
from config.settings import DaemonSettings
from daemon.integrations.mount_checks import mount_problems, volume_problems
from daemon.runtime.fake import FakeRuntime

BASE = """
name = "app"
image = "localhost/berth-echo:1"
port = 8080
[endpoint]
port = 18080
"""
BERTH_LABELS = {"io.berth.instance": "this-berthd"}


@dataclass(frozen=True)
class Case:
    id: str
    text: str  # TOML; {tmp} is the host layout's directory
    field: str  # the problem's path
    words: str  # in the problem's message
    where: str = "host"  # "parse" or "host"
    everything: bool = False  # allowed_roots = ["/"]
    top: bool = False  # top-level keys: put before BASE's tables


def bind(source: str, target: str = "/data", read_only: bool = True) -> str:
    ro = "true" if read_only else "false"
    return (
        f'[[mounts]]\ntype = "bind"\nsource = "{source}"\ntarget = "{target}"\nread_only = {ro}\n'
    )


def git(source: str, extra: str = "") -> str:
    return f'[[mounts]]\ntype = "git"\nsource = "{source}"\ntarget = "/src"\n{extra}'


def volume(name: str, read_only: bool = False) -> str:
    ro = "true" if read_only else "false"
    return f'[[mounts]]\ntype = "volume"\nsource = "{name}"\ntarget = "/v"\nread_only = {ro}\n'


OUTSIDE_CREDS = "must lie under berthd's credentials_roots"
ROOTS = "not under berthd's allowed roots"
NEVER = "berth never mounts it"
RW = "berth mounts it only read-only"

CASES = [
    # -- the 18 the issue counts ------------------------------------------------------
    Case("git file:///etc", git("file:///etc"), "mounts[0].source", ROOTS),
    Case(
        "git file:///etc, roots /",
        git("file:///etc"),
        "mounts[0].source",
        NEVER,
        everything=True,
    ),
    Case("foreign volume rw", volume("other-apps-secrets"), "mounts[0].source", "did not make"),
    Case(
        "foreign volume ro",
        volume("other-apps-secrets", read_only=True),
        "mounts[0].source",
        "did not make",
    ),
    Case(
        "git credentials_file /etc/shadow",
        git("https://git.example.com/r.git", 'credentials_file = "/etc/shadow"\n'),
        "mounts[0].credentials_file",
        OUTSIDE_CREDS,
    ),
    Case("target /proc", bind("{tmp}/srv/data", "/proc"), "mounts[0].target", "/proc", "parse"),
    Case("target /sys", bind("{tmp}/srv/data", "/sys/fs"), "mounts[0].target", "/sys", "parse"),
    Case("target /dev", bind("{tmp}/srv/data", "/dev"), "mounts[0].target", "/dev", "parse"),
    Case(
        "NUL in env value",
        '[env]\nTOKEN = "abc\\u0000def"\n',
        "env.TOKEN",
        "NUL",
        "parse",
    ),
    Case(
        "NUL in command",
        'command = ["sh", "-c", "echo\\u0000"]\n',
        "command[2]",
        "NUL",
        "parse",
        top=True,
    ),
    Case(
        "deep nesting",
        "x = " + "[" * 400 + "]" * 400 + "\n",
        "",
        "nested more than 16 levels",
        "parse",
        top=True,
    ),
    Case("roots / with /root", bind("/root"), "mounts[0].source", NEVER, everything=True),
    Case(
        "roots / with /root/.ssh",
        bind("/root/.ssh"),
        "mounts[0].source",
        NEVER,
        everything=True,
    ),
    Case(
        "roots / with /var/lib/containers",
        bind("/var/lib/containers"),
        "mounts[0].source",
        NEVER,
        everything=True,
    ),
    Case("roots / with /boot", bind("/boot"), "mounts[0].source", NEVER, everything=True),
    Case(
        "roots / with /usr rw",
        bind("/usr", read_only=False),
        "mounts[0].source",
        RW,
        everything=True,
    ),
    Case(
        "symlink escape",
        bind("{tmp}/srv/escape"),
        "mounts[0].source",
        "resolves to /etc (through a symbolic link)",
    ),
    Case(
        "registry password_file root's HF token",
        '[registry]\nusername = "u"\npassword_file = "/root/.cache/huggingface/token"\n',
        "registry.password_file",
        OUTSIDE_CREDS,
    ),
    # -- more of the same kind --------------------------------------------------------
    Case(
        "registry auth_file root's docker config",
        '[registry]\nauth_file = "/root/.docker/config.json"\n',
        "registry.auth_file",
        OUTSIDE_CREDS,
    ),
    Case(
        "credentials link inside the root",
        git("git@git.example.com:o/r.git", 'credentials_file = "{tmp}/creds/link"\n'),
        "mounts[0].credentials_file",
        "symbolic link",
    ),
    Case(
        "credentials through a linked directory",
        git("https://git.example.com/r.git", 'credentials_file = "{tmp}/creds/dir/token"\n'),
        "mounts[0].credentials_file",
        "symbolic link",
    ),
    Case(
        "group-writable credentials",
        '[registry]\nusername = "u"\npassword_file = "{tmp}/creds/shared"\n',
        "registry.password_file",
        "writable by group or others",
    ),
    Case(
        "another deployment's volume",
        volume("theirs"),
        "mounts[0].source",
        'for deployment "other"',
    ),
    Case("git http://", git("http://git.lan/r"), "mounts[0].source", "unsupported URL", "parse"),
    Case("git git://", git("git://git.lan/r"), "mounts[0].source", "unsupported URL", "parse"),
    Case("git ext::", git("ext::sh -c id"), "mounts[0].source", "git URL", "parse"),
    Case(
        "git ssh option as host",
        git("git@-oProxyCommand=id:r.git"),
        "mounts[0].source",
        "network git URL",
        "parse",
    ),
    Case(
        "git file:// of another host",
        git("file://server/srv/r"),
        "mounts[0].source",
        "file:///path",
        "parse",
    ),
    Case(
        "git file:// link escape",
        git("file://{tmp}/srv/escape"),
        "mounts[0].source",
        "through a symbolic link",
    ),
    Case(
        "target /dev/shm", bind("{tmp}/srv/data", "/dev/shm"), "mounts[0].target", "/dev", "parse"
    ),
    Case(
        "target /run/secrets",
        bind("{tmp}/srv/data", "/run/secrets/x"),
        "mounts[0].target",
        "/run/secrets",
        "parse",
    ),
    Case(
        "target /etc/hosts",
        bind("{tmp}/srv/data/file.txt", "/etc/hosts"),
        "mounts[0].target",
        "/etc/hosts",
        "parse",
    ),
    Case(
        "target /etc/resolv.conf",
        bind("{tmp}/srv/data/file.txt", "/etc/resolv.conf"),
        "mounts[0].target",
        "/etc/resolv.conf",
        "parse",
    ),
    Case(
        "target /etc/hostname",
        bind("{tmp}/srv/data/file.txt", "/etc/hostname"),
        "mounts[0].target",
        "/etc/hostname",
        "parse",
    ),
    Case("target /", bind("{tmp}/srv/data", "/"), "mounts[0].target", "root directory", "parse"),
    Case("bind source /", bind("/"), "mounts[0].source", "root directory", "parse"),
    Case(
        "ESC in env value",
        '[env]\nBANNER = "\\u001b[2J"\n',
        "env.BANNER",
        "control characters (U+001B)",
        "parse",
    ),
    Case("NUL in env name", '[env]\n"A\\u0000B" = "x"\n', "env", "NUL", "parse"),
    Case(
        "NUL in image",
        'image = "localhost/x\\u0000:1"\n',
        "image",
        "NUL",
        "parse",
        top=True,
    ),
    Case(
        "deep inline tables",
        "x = " + "{a = " * 40 + "1" + "}" * 40 + "\n",
        "",
        "nested more than 16 levels",
        "parse",
        top=True,
    ),
    Case(
        "deep dotted keys",
        "x" + ".x" * 40 + " = 1\n",
        "x" + ".x" * 15,
        "nested more than 16 levels",
        "parse",
        top=True,
    ),
    Case("roots / with /etc", bind("/etc"), "mounts[0].source", NEVER, everything=True),
    Case(
        "roots / with /var (holds containers)",
        bind("/var"),
        "mounts[0].source",
        NEVER,
        everything=True,
    ),
    Case(
        "roots / with /home rw",
        bind("/home", read_only=False),
        "mounts[0].source",
        RW,
        everything=True,
    ),
    Case(
        "roots / with the state dir",
        bind("{tmp}/state"),
        "mounts[0].source",
        "state directory",
        everything=True,
    ),
    Case(
        "roots / with the socket's directory",
        bind("{tmp}/run"),
        "mounts[0].source",
        "socket",
        everything=True,
    ),
    Case("roots / with /proc", bind("/proc/1"), "mounts[0].source", NEVER, everything=True),
    Case(
        "model linked to /root",
        '[[mounts]]\ntype = "model"\nsource = "evil"\n',
        "mounts[0].source",
        "links to /root, which may not be mounted: ",
    ),
]


@pytest.fixture
def host(tmp_path: Path) -> DaemonSettings:
    (tmp_path / "srv" / "data").mkdir(parents=True)
    (tmp_path / "srv" / "data" / "file.txt").write_text("x")
    (tmp_path / "srv" / "escape").symlink_to("/etc")
    (tmp_path / "state" / "models").mkdir(parents=True)
    (tmp_path / "state" / "models" / "evil").symlink_to("/root")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "berth.sock").write_text("")
    creds = tmp_path / "creds"
    (creds / "real").mkdir(parents=True)
    (creds / "real" / "token").write_text("t")
    (creds / "dir").symlink_to(creds / "real")
    (creds / "link").symlink_to(creds / "real" / "token")
    (creds / "shared").write_text("t")
    (creds / "shared").chmod(0o660)
    return DaemonSettings(
        state_dir=tmp_path / "state",
        socket=tmp_path / "run" / "berth.sock",
        podman_url="unix:///run/podman/podman.sock",
        specs=None,
        allowed_roots=(tmp_path / "srv",),
        metrics_listen=None,
        credentials_roots=(creds,),
    )


def runtime() -> FakeRuntime:
    fake = FakeRuntime()
    fake.volumes["other-apps-secrets"] = {"com.example.app": "vault"}
    fake.volumes["theirs"] = {**BERTH_LABELS, "io.berth.deployment": "other"}
    return fake


def problems_of(case: Case, settings: DaemonSettings, tmp_path: Path) -> list[str]:
    extra = case.text.replace("{tmp}", str(tmp_path))
    base = BASE
    if extra.startswith("image = "):  # the case's own image in place of BASE's
        base = "\n".join(line for line in BASE.split("\n") if not line.startswith("image"))
    text = extra + base if case.top else base + extra
    try:
        spec = parse_spec(text, source="danger.toml")
    except SpecError as exc:
        assert case.where == "parse", f"refused at parse time, not on the host: {exc}"
        return exc.messages()
    assert case.where == "host", f"{case.id}: accepted by the parser"
    if case.everything:
        settings = dataclasses.replace(settings, allowed_roots=(Path("/"),))
    found = mount_problems(spec, settings)
    found += trio.run(volume_problems, spec, runtime(), BERTH_LABELS, settings)
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_dangerous_spec_is_refused_naming_its_field(
    case: Case, host: DaemonSettings, tmp_path: Path
) -> None:
    found = problems_of(case, host, tmp_path)
    assert found, f"{case.id}: accepted"
    prefix = f"{case.field}: " if case.field else ""
    matching = [p for p in found if p.startswith(prefix) and case.words in p]
    assert matching, f"{case.id}: no problem at {case.field!r} saying {case.words!r}: {found}"


def test_the_corpus_holds_at_least_the_issues_eighteen() -> None:
    assert len(CASES) >= 18 + 20
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_path_outside_the_roots_reads_the_same_whether_it_exists(
    host: DaemonSettings, tmp_path: Path
) -> None:
    present, absent = tmp_path / "srv" / "data" / "file.txt", tmp_path / "absent"
    said = []
    for path in (present, absent, Path("/etc/shadow"), Path("/nonexistent/x")):
        spec = parse_spec(BASE + f'[registry]\nauth_file = "{path}"\n', source="x.toml")
        [problem] = mount_problems(spec, host)
        said.append(problem.split(" (got ")[0])
    assert len(set(said)) == 1, said


def test_the_same_mounts_inside_the_rules_are_accepted(
    host: DaemonSettings, tmp_path: Path
) -> None:
    """The fences are not walls: what is allowed next to each refusal passes."""
    os.chmod(tmp_path / "creds" / "real" / "token", 0o600)
    (tmp_path / "srv" / "repo").mkdir()
    text = BASE + (
        bind(f"{tmp_path}/srv/data", "/data", read_only=False)
        + bind("/usr", "/host-usr")
        + git(f"file://{tmp_path}/srv/repo")
        + '[[mounts]]\ntype = "volume"\nsource = "mine"\ntarget = "/m"\n'
        + '[registry]\nusername = "u"\n'
        + f'password_file = "{tmp_path}/creds/real/token"\n'
    )
    spec = parse_spec(text.replace('target = "/src"', 'target = "/repo"'), source="ok.toml")
    everything = dataclasses.replace(host, allowed_roots=(Path("/"),))
    assert mount_problems(spec, everything) == []
    assert trio.run(volume_problems, spec, runtime(), BERTH_LABELS, everything) == []
