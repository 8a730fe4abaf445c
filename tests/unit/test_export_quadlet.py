"""`daemon.export.quadlet`: the units are checked by a reader of their format, against the
keys Podman 5.4 documents, and through the `.service` Quadlet would generate, which
`systemd-analyze verify` checks here; the echo example's `podman run` runs on this host's
Podman (marked `podman`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from config.canonical import spec_id
from config.errors import SpecError
from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.export import quadlet, quadlet_steps
from daemon.export.bundle import Built, Origin
from daemon.export.quadlet_misses import quadlet_misses
from tests.conftest import REPO_ROOT, free_port, podman_binary
from tests.quadlet_units import (
    KEYS_FILE,
    UnitFile,
    UnitSyntaxError,
    container_argv,
    container_service,
    escape_words,
    exec_argv,
    key_problems,
    load_keys,
    parse_unit,
    service_file_name,
    split_words,
    volume_service,
)

EXAMPLES = sorted((REPO_ROOT / "config" / "examples").glob("*.toml"))
VERIFY_TIMEOUT = 60
PODMAN_TIMEOUT = 60

ODD_VALUE = "a \"b\" 'c' \\d $HOME ${X} $$ 50% %n é\ttab\nline;"
ODD_COMMAND = ["sh", "-c", 'echo "$MESSAGE" 100% \\ done', "two words", "'q'", "$", "%%"]

TARGETED = f"""
name = "kitchen"
image = "registry.example:5000/team/server:1.2"
command = {json.dumps(ODD_COMMAND)}
port = 8000
stop_timeout = "7.5s"
enabled = false
pull = "always"

[env]
PLAIN = "x"
ODD = {json.dumps(ODD_VALUE)}
TOKEN = {{ secret = "hf-token" }}
TOKEN2 = {{ secret = "hf-token" }}

[resources]
gpus = 2
cpus = 2
memory = "3000000001"
shm_size = "2Gi"
ipc = "shareable"

[resources.ulimits]
memlock = "unlimited"
nofile = 65536
stack = {{ soft = "8Mi", hard = "unlimited" }}

[replicas]
count = 2

[health.startup]
tcp = true
port = 8001
initial_delay = "5s"
period = "2s"
failure_threshold = 10

[health.readiness]
path = "/ready?deep=1&x=%20"
period = "3s"
success_threshold = 2

[health.liveness]
path = "/live"
headers = {{ Authorization = "Bearer it's", X-Odd = "50% $x" }}
initial_delay = "1.5s"
period = "250ms"
timeout = "2s"
failure_threshold = 4

[endpoint]
port = 19000
bind = "::1"

[registry]
username = "me"
password = {{ secret = "reg-pass" }}

[[mounts]]
type = "bind"
source = "/srv/data"
target = "/data"
read_only = false

[[mounts]]
type = "volume"
source = "cache_1"
target = "/cache"
read_only = false

[[mounts]]
type = "model"
source = "org/llama-3-8b"

[[mounts]]
type = "git"
source = "https://example.com/repo.git"
target = "/src"
ref = "v1"

[[mounts]]
type = "bind"
source = "/srv/with:colon"
target = "/colon"
"""


def origin_for(spec: DeploymentSpec) -> Origin:
    return Origin(spec_id=spec_id(spec), deployment_id="dep-1", revision=4)


def built(text: str) -> tuple[DeploymentSpec, Built]:
    spec = parse_spec(text)
    return spec, quadlet.build(spec, origin_for(spec))


def units(b: Built) -> dict[str, UnitFile]:
    return {f.name: parse_unit(f.text) for f in b.files}


def argv_of(parsed: dict[str, UnitFile], name: str) -> list[str]:
    """The argv systemd runs for the unit's generated ExecStart=."""
    volumes = {n: u for n, u in parsed.items() if n.endswith(".volume")}
    argv, _ = container_argv(parsed[name], volumes)
    return exec_argv(escape_words(argv), {"t": "/run", "N": name.split(".")[0], "n": "x"})


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# --- the reader and the key list ------------------------------------------------------


def test_reader_sections_repeats_comments_and_continuations() -> None:
    unit = parse_unit(
        "# top\n[Unit]\nDescription = a b \n\n[Container]\n; c\nLabel=a=1\nLabel=b=2\n"
        "Exec=one \\\n# skipped inside\n  two\nEmpty=x\nEmpty=\n"
    )
    assert list(unit.sections) == ["Unit", "Container"]
    assert unit.last("Unit", "Description") == "a b"
    assert unit.all("Container", "Label") == ["a=1", "b=2"]
    assert unit.last("Container", "Exec") == "one two"
    assert unit.all("Container", "Empty") == []  # an empty value clears the ones before
    with pytest.raises(UnitSyntaxError, match="before any section"):
        parse_unit("Key=v\n")
    with pytest.raises(UnitSyntaxError, match="not a key"):
        parse_unit("[Unit]\njust words\n")


def test_words_split_and_escape_as_podman_5_4() -> None:
    assert split_words('a "b c" \'d\' e\\x41 "\\n"') == ["a", "b c", "d", "eA", "\n"]
    assert split_words('a "" b') == ["a"]  # Podman's port ends at an empty word
    assert escape_words(["x", "a b", 'q"', "\\"]) == 'x "a b" "q\\"" "\\\\"'
    assert exec_argv('/bin/echo "%%d" $$HOME "%N"', {"N": "u"}) == ["/bin/echo", "%d", "$HOME", "u"]
    with pytest.raises(UnitSyntaxError, match="expand a variable"):
        exec_argv("/bin/echo $HOME", {})


def test_key_list_names_its_source_and_podman_5_4_keys() -> None:
    header = KEYS_FILE.read_text()
    assert "tag v5.4.0, commit f9f7d48b24b1ca4403f189caaeab1cb8ff4a9aa2" in header
    assert "docs/source/markdown/podman-systemd.unit.5.md" in header
    keys = load_keys()
    container = keys["Container"]
    assert container is not None
    assert {"Notify", "HealthStartupCmd", "AddDevice", "ShmSize", "PodmanArgs"} <= container
    assert "Memory" not in container and "ServiceName" not in container  # not in 5.4's docs
    assert keys["Volume"] is not None and "VolumeName" in keys["Volume"]
    assert keys["Install"] == {"Alias", "DefaultInstance", "RequiredBy", "WantedBy"}
    assert keys["Service"] is None and keys["Unit"] is None
    unit = parse_unit("[Container]\nImage=x\nMemory=1g\n[Bogus]\nA=1\n")
    assert key_problems(unit, ".container", keys) == [
        "[Container] Memory=: not a documented Podman 5.4 key",
        "[Bogus]: not a section of a .container unit in Podman 5.4",
    ]


# --- every example, and the targeted spec: keys, translation, systemd-analyze verify --


def verify(tmp_path: Path, b: Built) -> dict[str, str]:
    """Write the units and the services Quadlet would make of them; systemd-analyze
    verify the services. Returns service file name -> text."""
    parsed = units(b)
    volumes = {n: u for n, u in parsed.items() if n.endswith(".volume")}
    services: dict[str, str] = {}
    for name, unit in parsed.items():
        source = tmp_path / name
        source.write_text(next(f.text for f in b.files if f.name == name))
        if name.endswith(".volume"):
            services[service_file_name(name)] = volume_service(unit, name, source)
        else:
            services[service_file_name(name)] = container_service(unit, source, volumes)
    out_dir = tmp_path / "generated"
    out_dir.mkdir()
    for name, text in services.items():
        (out_dir / name).write_text(text)
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is not installed"
    paths = [str(out_dir / name) for name in sorted(services)]
    run = subprocess.run(
        [analyze, "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT,
        check=False,
    )
    output = (run.stdout + run.stderr).strip()
    assert run.returncode == 0 and output == "", f"systemd-analyze verify: {output}"
    return services


def check_shell(b: Built) -> None:
    """The apply steps' shell lines are one script bash parses (sentences are prose)."""
    # a sentence is prose that names no shell variable (README: a capital starts prose)
    assert not any(s[:1].isupper() and "=" in s.split(" ", 1)[0] for s in b.apply_steps)
    script = "\n".join(s for s in b.apply_steps if not s[:1].isupper()) + "\n"
    bash = shutil.which("bash")
    assert bash is not None
    run = subprocess.run(
        [bash, "-n"], input=script, capture_output=True, text=True, timeout=VERIFY_TIMEOUT
    )
    assert run.returncode == 0, f"{script}: {run.stderr}"
    assert "DIR" not in script  # the README would then explain a DIR the steps do not use


def check_units(b: Built) -> dict[str, UnitFile]:
    keys = load_keys()
    parsed = units(b)
    for name, unit in parsed.items():
        suffix = "." + name.rsplit(".", 1)[1]
        assert key_problems(unit, suffix, keys) == [], name
        for section in unit.sections.values():
            for key, value in section:
                assert "io.berth" not in value, (name, key)
    return parsed


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_has_podman_5_4_keys_and_verifies(example: Path, tmp_path: Path) -> None:
    spec, b = built(example.read_text())
    parsed = check_units(b)
    count = quadlet.replica_count(spec)
    names = [f"{spec.name}-{i}.container" for i in range(count)]
    assert [f.name for f in b.files][:count] == names
    for i, name in enumerate(names):
        unit = parsed[name]
        assert unit.last("Container", "ContainerName") == f"{spec.name}-{i}"
        assert unit.last("Container", "Image") == spec.image
        assert unit.last("Container", "PublishPort") == (
            f"{spec.endpoint.bind}:{spec.endpoint.port + i}:{spec.port}"
        )
        argv = argv_of(parsed, name)
        tail = argv[argv.index(spec.image) + 1 :]
        assert tail == list(spec.command or ())
        assert sorted(flag_values(argv, "--env")) == sorted(
            f"{k}={v}" for k, v in spec.env.items() if isinstance(v, str)
        )
        assert unit.last("Container", "Notify") == "healthy"  # every example has a probe
        assert unit.all("Install", "WantedBy") == ["default.target"]
    assert b.files[0].text.startswith(
        f"# Exported by berth export from {origin_for(spec).describe()}"
    )
    for miss in b.left_out:
        assert f"#   {miss.line()}" in b.files[0].text
    assert b.apply_steps[-1] == "systemctl start " + " ".join(n.split(".")[0] for n in names)
    assert "systemctl daemon-reload" in b.apply_steps
    check_shell(b)
    verify(tmp_path, b)


def test_echo_maps_each_field(tmp_path: Path) -> None:
    spec, b = built((REPO_ROOT / "config/examples/echo.toml").read_text())
    parsed = check_units(b)
    assert [f.name for f in b.files] == ["echo-0.container", "echo-1.container"]
    one = parsed["echo-1.container"]
    assert one.last("Container", "PublishPort") == "127.0.0.1:18081:8080"
    assert one.last("Container", "Exec") == "httpd -f -vv -p 8080 -h /www"
    assert one.all("Container", "Environment") == ['"MESSAGE=hello from berth"']
    assert one.last("Container", "PodmanArgs") == "--cpus=0.5 --memory=64m --ipc=private"
    assert one.last("Container", "StopTimeout") == "2"
    assert one.last("Container", "Pull") == "missing"
    assert one.last("Container", "HealthInterval") == "2s"
    assert one.last("Container", "HealthTimeout") == "1s"
    assert one.last("Container", "HealthRetries") == "3"
    assert one.last("Container", "HealthOnFailure") is None  # readiness: a status only
    assert "http://127.0.0.1:8080/health" in (one.last("Container", "HealthCmd") or "")
    assert one.all("Container", "Label") == [
        "app.kubernetes.io/name=echo",
        "app.kubernetes.io/part-of=berth-export",
    ]
    assert one.all("Container", "Annotation") == [
        f"berth.io/spec-id={spec_id(spec)}",
        "berth.io/deployment-id=dep-1",
        "berth.io/revision=4",
    ]
    # readiness: 3 x 2 s, and the margin
    assert one.last("Service", "TimeoutStartSec") == str(6 + quadlet.START_MARGIN)
    assert one.last("Service", "TimeoutStopSec") == str(2 + quadlet.STOP_MARGIN)
    assert one.last("Service", "Restart") == "always"
    fields = [m.field for m in b.left_out]
    assert fields == ["health.readiness", "update.drain_timeout", "endpoint.port"]
    assert "18080-18081" in b.left_out[2].reason
    # A localhost/ image is in no registry: no pull step, a note on copying it instead.
    assert not any(step.startswith("podman pull") for step in b.apply_steps)
    assert any("podman save localhost/berth-echo:1 | ssh HOST podman load" in n for n in b.notes)
    assert any("load balancer" in n for n in b.notes)
    assert any("autoscaling" in n.lower() for n in b.notes)
    assert any("rolling update" in n for n in b.notes)


def test_targeted_spec_maps_each_field(tmp_path: Path) -> None:
    spec, b = built(TARGETED)
    parsed = check_units(b)
    assert [f.name for f in b.files] == [
        "kitchen-0.container",
        "kitchen-1.container",
        "cache_1.volume",
    ]
    zero, one = parsed["kitchen-0.container"], parsed["kitchen-1.container"]
    # enabled = false: no [Install], said in the notes
    assert "Install" not in zero.sections and "Install" not in one.sections
    assert any("no [Install]" in n for n in b.notes)
    # GPUs: replica I gets I*g .. I*g+g-1
    assert zero.all("Container", "AddDevice") == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert one.all("Container", "AddDevice") == ["nvidia.com/gpu=2", "nvidia.com/gpu=3"]
    assert one.last("Container", "PublishPort") == "[::1]:19001:8000"
    assert one.last("Container", "ShmSize") == "2g"
    assert one.all("Container", "Ulimit") == [
        "memlock=-1:-1",
        "nofile=65536:65536",
        "stack=8388608:-1",
    ]
    assert one.last("Container", "PodmanArgs") == ("--cpus=2 --memory=3000000001b --ipc=shareable")
    assert one.last("Container", "Pull") == "always"
    assert one.last("Container", "StopTimeout") == "8"
    # secrets by name, once per variable; never a value
    assert one.all("Container", "Secret") == [
        "hf-token,type=env,target=TOKEN",
        "hf-token,type=env,target=TOKEN2",
    ]
    # ... created from berth's secret files, named where they lie on the berth host
    steps = b.apply_steps
    assert "podman secret create hf-token /var/lib/berth/secrets/hf-token" in steps
    [intro] = [s for s in steps if s.startswith("Create the Podman secrets")]
    assert "/var/lib/berth/secrets/NAME on the berth host (readable by root only)" in intro
    assert "copy the files" in intro
    # mounts: bind rw, volume (its unit), model read-only, the git checkout the steps
    # clone (read-only, as the spec's default), ':' through Mount=
    assert one.all("Container", "Volume") == [
        "/srv/data:/data",
        "cache_1.volume:/cache",
        "/var/lib/berth/models/org/llama-3-8b:/models/org/llama-3-8b:ro",
        "/var/lib/berth-export/kitchen/git-3:/src:ro",
    ]
    clone = "git clone --depth 1 --branch v1 https://example.com/repo.git "
    clone += "/var/lib/berth-export/kitchen/git-3"
    assert steps.index("mkdir -p /var/lib/berth-export/kitchen") < steps.index(clone)
    assert steps.index(clone) < next(i for i, s in enumerate(steps) if s.startswith("cp "))
    assert any("/var/lib/berth/models/MODEL on the berth host" in n for n in b.notes)
    assert one.all("Container", "Mount") == [
        "type=bind,source=/srv/with:colon,destination=/colon,ro=true"
    ]
    volume = parsed["cache_1.volume"]
    assert volume.last("Volume", "VolumeName") == "cache_1"
    # probes: liveness is the regular check and kills; startup has its budget in tries
    assert one.last("Container", "HealthInterval") == "250ms"
    assert one.last("Container", "HealthTimeout") == "2s"
    assert one.last("Container", "HealthRetries") == "4"
    assert one.last("Container", "HealthStartPeriod") == "1500ms"
    assert one.last("Container", "HealthOnFailure") == "kill"
    assert one.last("Container", "HealthStartupInterval") == "2s"
    assert one.last("Container", "HealthStartupRetries") == "13"  # (5 + 10 x 2) / 2
    assert one.last("Container", "Notify") == "healthy"
    # TimeoutStartSec: the startup budget 25 s + liveness 1.5 + 4 x 0.25 s, and the margin
    assert one.last("Service", "TimeoutStartSec") == str(28 + quadlet.START_MARGIN)

    argv = argv_of(parsed, "kitchen-1.container")
    # the odd command and value reach podman exactly, through Quadlet and systemd
    assert argv[argv.index(spec.image) + 1 :] == ODD_COMMAND
    assert f"ODD={ODD_VALUE}" in flag_values(argv, "--env")
    [health] = flag_values(argv, "--health-cmd")
    assert "-H 'Authorization: Bearer it'\"'\"'s'" in health
    assert "-H 'X-Odd: 50% $x'" in health
    assert "http://127.0.0.1:8000/live" in health
    [startup] = flag_values(argv, "--health-startup-cmd")
    assert "nc -z 127.0.0.1 8001" in startup
    assert "/dev/tcp/127.0.0.1/8001" in startup
    fields = [m.field for m in b.left_out]
    assert fields == [
        "health.readiness",
        "update.drain_timeout",
        "mounts[3]",
        "registry",
        "endpoint.port",
    ]
    assert "liveness" in b.left_out[0].reason
    assert b.left_out[2].reason == (
        "berth cloned https://example.com/repo.git (v1) again for each revision it ran; "
        "here the apply steps clone it once into /var/lib/berth-export/kitchen/git-3 and "
        "the checkout stays as it is: to update it, clone it again there and restart the units"
    )
    assert "pull = always pulls at every start" in b.left_out[3].reason
    login = "podman login --username me --password-stdin registry.example:5000"
    assert f"{login} < /var/lib/berth/secrets/reg-pass" in steps
    # enabled = false: berth ran no replica, so nothing is started; the step says how
    assert not any(s.startswith("systemctl start") for s in steps)
    assert steps[-1].startswith("The spec is disabled (enabled = false)")
    assert "systemctl start kitchen-0 kitchen-1 starts them" in steps[-1]
    check_shell(b)
    verify(tmp_path, b)


def test_readiness_only_spec_and_autoscaling_left_out() -> None:
    spec, b = built(
        """
name = "auto"
image = "localhost/x:1"
port = 8080
[replicas]
min = 0
max = 3
[[autoscale.metrics]]
metric = "cpu"
target = 50
[health.readiness]
path = "/r"
success_threshold = 2
[update]
max_surge = 2
[endpoint]
port = 18100
"""
    )
    parsed = check_units(b)
    assert list(parsed) == ["auto-0.container"]
    unit = parsed["auto-0.container"]
    assert unit.last("Container", "HealthOnFailure") is None
    assert "Exec" not in unit.keys("Container")  # no command: the image's CMD
    misses = {m.field: m.reason for m in b.left_out}
    assert list(misses) == [
        "replicas.min",
        "replicas.max",
        "autoscale.metrics",
        "health.readiness",
        "update",
        "update.drain_timeout",
    ]
    # min = 0: one unit, installed and started (the parser refuses a fixed count of 0)
    assert misses["replicas.min"] == (
        "0: berth stopped the last replica after autoscale.scale_down_delay (5m) without "
        "requests and started one when the next request came (holding it meanwhile); here "
        "1 unit (auto-0) runs all the time"
    )
    assert unit.all("Install", "WantedBy") == ["default.target"]
    assert b.apply_steps[-1] == "systemctl start auto-0"
    assert misses["replicas.max"].startswith("berth's autoscaler ran between 0 and 3 replicas")
    assert "cpu" in misses["autoscale.metrics"]
    assert "not success_threshold (2)" in misses["health.readiness"]


def test_a_fixed_count_of_zero_is_refused_and_scale_to_zero_after_named() -> None:
    """`replicas.count = 0` never reaches the export: the parser refuses it."""
    with pytest.raises(SpecError, match="replicas.count: must be between 1 and 100"):
        parse_spec('name = "z"\nimage = "x"\nport = 80\n[replicas]\ncount = 0\n')
    _, b = built(
        'name = "z"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18600\n'
        '[replicas]\nmin = 0\nmax = 2\nscale_to_zero_after = "10m"\n'
        '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 4\n'
    )
    [miss] = [m for m in b.left_out if m.field == "replicas.min"]
    assert "after scale_to_zero_after (10m) without requests" in miss.reason


def test_no_probe_no_notify_and_deterministic() -> None:
    text = 'name = "plain"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18200\n'
    spec, b = built(text)
    unit = units(b)["plain-0.container"]
    assert unit.last("Container", "Notify") is None  # Notify=healthy needs a healthcheck
    assert "HealthCmd" not in unit.keys("Container")
    # berth's default drain (30s) is still something a single host does not do
    [drain] = b.left_out
    assert drain.field == "update.drain_timeout"
    assert "for 30s (berth's default) before SIGTERM" in drain.reason
    assert quadlet.build(spec, origin_for(spec)) == b


# --- this host's Podman accepts the flags ---------------------------------------------

# Podman 5.4 flags this host's Podman (4.3) lacks: dropped for `podman create`, and named.
NEWER_THAN_4_3 = ("--sdnotify=healthy",)
NEWER_THAN_4_3_WITH_VALUE = (
    "--health-startup-cmd",
    "--health-startup-interval",
    "--health-startup-retries",
    "--health-startup-timeout",
)
ECHO_EXTRAS = """
[resources]
gpus = 1
shm_size = "32Mi"
memory = "64Mi"
[resources.ulimits]
nofile = 1024
[health.startup]
path = "/health"
period = "1s"
[health.liveness]
path = "/health"
period = "5s"
failure_threshold = 2
"""


def create_argv(text: str, tmp_path: Path, name: str) -> tuple[list[str], list[str]]:
    """(`podman create`'s argv from the unit's translated `podman run`, what was dropped):
    no -d (create never attaches), no Podman 5 flags (NEWER_THAN_4_3*), no --device
    nvidia.com/gpu=N (CDI: this host has no GPU), the cid file in tmp_path."""
    spec, b = built(text)
    parsed = check_units(b)
    argv = argv_of(parsed, f"{spec.name}-0.container")
    assert argv[:2] == ["/usr/bin/podman", "run"] and "-d" in argv
    argv = [a.replace(f"/run/{spec.name}-0.cid", str(tmp_path / "cid")) for a in argv]
    kept, dropped, i = [], [], 2
    while i < len(argv):
        a = argv[i]
        if a in NEWER_THAN_4_3 or a == "-d":
            dropped.append(a)
            i += 1
        elif a in NEWER_THAN_4_3_WITH_VALUE or (
            a == "--device" and argv[i + 1].startswith("nvidia.com/gpu=")
        ):
            dropped += argv[i : i + 2]
            i += 2
        else:
            kept.append(a)
            i += 1
    kept[kept.index("--name") + 1] = name
    return [podman_binary(), "create", *kept], dropped


def run_podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [podman_binary(), *args], capture_output=True, text=True, timeout=PODMAN_TIMEOUT
    )


def start_and_check(
    create: list[str], name: str, port: int, tmp_path: Path, *, ulimits: bool = True
) -> None:
    """This host has no systemd as PID 1: --cgroups=split (a cgroup under the unit's) cannot
    start here. The same container with --cgroups=enabled runs: it answers on its port, and
    its healthcheck (busybox: the wget branch) passes. `ulimits=False`: without --ulimit
    (Podman 4.3 drops containers.conf's default_ulimits for a container that asks for one,
    and this host cannot grant its nproc default: daemon/runtime/rlimits.py; 5.x merges)."""
    run_podman("rm", "-f", "-t", "0", name)
    (tmp_path / "cid").unlink()  # as the unit's ExecStop (podman rm --cidfile) does
    create = [*create]
    while not ulimits and "--ulimit" in create:
        i = create.index("--ulimit")
        del create[i : i + 2]
    create[create.index("--cgroups=split")] = "--cgroups=enabled"
    made = subprocess.run(create, capture_output=True, text=True, timeout=PODMAN_TIMEOUT)
    assert made.returncode == 0, f"{create}: {made.stderr}"
    started = run_podman("start", name)
    assert started.returncode == 0, started.stderr
    body = b""
    for _ in range(50):  # bounded: 50 tries, 0.2 s apart
        try:
            url = f"http://127.0.0.1:{port}/cgi-bin/echo"
            with urllib.request.urlopen(url, timeout=2) as reply:
                body = reply.read()
            break
        except OSError:
            time.sleep(0.2)
    assert b"hello from berth" in body
    check = run_podman("healthcheck", "run", name)
    assert check.returncode == 0, f"healthcheck: {check.stdout} {check.stderr}"


def echo_text(port: int, extra: str = "") -> str:
    text = (REPO_ROOT / "config/examples/echo.toml").read_text()
    text = text.replace("port = 18080", f"port = {port}").replace("count = 2", "count = 1")
    if extra:
        text = text.replace('[resources]\ncpus = 0.5\nmemory = "64Mi"\n', "") + extra
    return text


@pytest.mark.podman
def test_echo_translation_runs_on_this_podman(tmp_path: Path) -> None:
    """The echo example's translated `podman run` is accepted by `podman create` (less -d
    and --sdnotify=healthy: Podman 4.3 has no such mode) and runs."""
    port = free_port()
    name = f"berth-quadlet-test-{uuid.uuid4().hex[:8]}"
    create, dropped = create_argv(echo_text(port), tmp_path, name)
    assert dropped == ["--sdnotify=healthy", "-d"]
    try:
        made = subprocess.run(create, capture_output=True, text=True, timeout=PODMAN_TIMEOUT)
        assert made.returncode == 0, f"{create}: {made.stderr}"
        [info] = json.loads(run_podman("inspect", name).stdout)
        config = info["Config"]
        assert "MESSAGE=hello from berth" in config["Env"]
        assert config["Cmd"] == ["httpd", "-f", "-vv", "-p", "8080", "-h", "/www"]
        assert config["Labels"]["app.kubernetes.io/name"] == "echo"
        assert config["Annotations"]["berth.io/revision"] == "4"
        assert config["StopTimeout"] == 2
        assert config["Healthcheck"]["Interval"] == 2_000_000_000
        assert config["Healthcheck"]["Retries"] == 3
        assert info["HostConfig"]["Memory"] == 64 * 2**20
        assert info["HostConfig"]["NanoCpus"] == 500_000_000
        ports = info["HostConfig"]["PortBindings"]["8080/tcp"]
        assert ports == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        start_and_check(create, name, port, tmp_path)
    finally:
        run_podman("rm", "-f", "-t", "0", name)


@pytest.mark.podman
def test_echo_with_gpu_shm_ulimit_and_probes_runs_on_this_podman(tmp_path: Path) -> None:
    """Echo with gpus, shm_size, a ulimit, startup and liveness probes: the same, less the
    GPU's --device (no GPU here) and the startup healthcheck's flags (Podman 5)."""
    port = free_port()
    name = f"berth-quadlet-test-{uuid.uuid4().hex[:8]}"
    create, dropped = create_argv(echo_text(port, ECHO_EXTRAS), tmp_path, name)
    assert dropped[:2] == ["--sdnotify=healthy", "-d"]
    assert ["--device", "nvidia.com/gpu=0"] == dropped[2:4]
    assert {d for d in dropped if d.startswith("--health-startup")} == set(
        NEWER_THAN_4_3_WITH_VALUE
    )
    try:
        made = subprocess.run(create, capture_output=True, text=True, timeout=PODMAN_TIMEOUT)
        assert made.returncode == 0, f"{create}: {made.stderr}"
        [info] = json.loads(run_podman("inspect", name).stdout)
        assert info["HostConfig"]["ShmSize"] == 32 * 2**20
        assert {"Name": "RLIMIT_NOFILE", "Soft": 1024, "Hard": 1024} in info["HostConfig"][
            "Ulimits"
        ]
        health = info["Config"]["Healthcheck"]
        assert health["Interval"] == 5_000_000_000 and health["Retries"] == 2
        assert "http://127.0.0.1:8080/health" in " ".join(health["Test"])
        assert info["Config"]["HealthcheckOnFailureAction"] == "kill"
        start_and_check(create, name, port, tmp_path, ulimits=False)
    finally:
        run_podman("rm", "-f", "-t", "0", name)


GO_DURATION = re.compile(r"\d+(ms|s)")
PUBLISH = re.compile(r"(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:]+\]):\d{1,5}:\d{1,5}")
DURATION_KEYS = (
    "HealthInterval",
    "HealthTimeout",
    "HealthStartPeriod",
    "HealthStartupInterval",
    "HealthStartupTimeout",
)


@pytest.mark.parametrize(
    "text",
    [TARGETED, *(p.read_text() for p in EXAMPLES)],
    ids=["targeted", *(p.stem for p in EXAMPLES)],
)
def test_values_parse(text: str) -> None:
    """Durations are Go's, ports ip:host:container, counts and seconds whole numbers."""
    _, b = built(text)
    for name, unit in units(b).items():
        if not name.endswith(".container"):
            continue
        for key in DURATION_KEYS:
            for value in unit.all("Container", key):
                assert GO_DURATION.fullmatch(value), (name, key, value)
        for value in unit.all("Container", "PublishPort"):
            assert PUBLISH.fullmatch(value), (name, value)
            assert all(1 <= int(p) <= 65535 for p in value.rsplit(":", 2)[1:])
        for key in ("HealthRetries", "HealthStartupRetries", "StopTimeout"):
            for value in unit.all("Container", key):
                assert value.isdigit() and int(value) >= 0, (name, key, value)
        for key in ("TimeoutStartSec", "TimeoutStopSec"):
            assert (unit.last("Service", key) or "").isdigit(), (name, key)


def test_gpu_memory_h2c_and_an_empty_argument(tmp_path: Path) -> None:
    spec, b = built(
        """
name = "shared"
image = "localhost/x:1"
command = ["serve", "", "--after-empty"]
port = 50051
[resources]
gpu_memory = "10Gi"
[replicas]
count = 2
[endpoint]
port = 18300
upstream_protocol = "h2c"
"""
    )
    parsed = check_units(b)
    for name in ("shared-0.container", "shared-1.container"):
        assert parsed[name].all("Container", "AddDevice") == ["nvidia.com/gpu=0"]
    assert parsed["shared-0.container"].last("Container", "Exec") == 'serve "" --after-empty'
    argv = argv_of(parsed, "shared-0.container")
    assert argv[argv.index(spec.image) + 1 :] == ["serve"]  # Quadlet 5.4 stops at ""
    fields = [m.field for m in b.left_out]
    assert fields == [
        "command",
        "resources.gpu_memory",
        "update.drain_timeout",
        "endpoint.port",
        "endpoint.upstream_protocol",
    ]
    assert "GPU 0" in b.left_out[1].reason  # Quadlet's own reason, not the cluster one
    assert any("h2c" in n for n in b.notes)
    verify(tmp_path, b)


def test_an_odd_file_name_in_the_description(tmp_path: Path) -> None:
    spec = parse_spec('name = "f"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18400\n')
    origin = Origin(spec_id=spec_id(spec), file="specs/50%\n$x.toml")
    b = quadlet.build(spec, origin)
    unit = units(b)["f-0.container"]
    assert unit.last("Unit", "Description") == (
        "berth deployment f, replica 0, from spec file specs/50%%?$x.toml "
        f"(spec_id {spec_id(spec)})"
    )
    assert "Annotation" in unit.keys("Container")
    assert not any("deployment-id" in a for a in unit.all("Container", "Annotation"))
    verify(tmp_path, b)


def test_a_protected_endpoint_is_published_on_loopback_only(tmp_path: Path) -> None:
    _, b = built(
        """
name = "guarded"
image = "localhost/x:1"
port = 8080
[endpoint]
port = 18500
[endpoint.auth]
api_keys = [{ secret = "key-1" }]
[[mounts]]
type = "git"
source = "https://example.com/r.git"
target = "/src"
ref = "0123abcd"
"""
    )
    unit = check_units(b)["guarded-0.container"]
    assert unit.last("Container", "PublishPort") == "127.0.0.1:18500:8080"  # bind was 0.0.0.0
    misses = {m.field: m.reason for m in b.left_out}
    # left_out.endpoint_features names the auth fields (its own words: not checked here)
    auth = [f for f in misses if f.startswith("endpoint.auth")]
    assert auth
    assert [f for f in misses if f not in auth] == [
        "update.drain_timeout",
        "mounts[0]",
        "endpoint.bind",
    ]
    assert misses["endpoint.bind"].startswith("0.0.0.0: berth served it behind the endpoint")
    assert "published on loopback only" in misses["endpoint.bind"]
    # a commit-like ref: a full clone, then a checkout (as berth's git integration)
    dest = "/var/lib/berth-export/guarded/git-0"
    steps = list(b.apply_steps)
    i = steps.index(f"git clone https://example.com/r.git {dest}")
    assert steps[i + 1] == f"git -C {dest} checkout 0123abcd"
    assert "(0123abcd) again for each revision" in misses["mounts[0]"]
    assert unit.all("Container", "Volume") == [f"{dest}:/src:ro"]
    assert any("127.0.0.1:18500" in n for n in b.notes)
    check_shell(b)
    verify(tmp_path, b)


GIT_CREDENTIALS = """
name = "repos"
image = "localhost/x:1"
port = 8080
[endpoint]
port = 18700
[[mounts]]
type = "git"
source = "https://example.com/private.git"
target = "/src"
credentials = { secret = "git-token" }
read_only = false
[[mounts]]
type = "git"
source = "git@example.com:team/repo.git"
target = "/ssh"
ref = "release/2"
credentials_file = "/etc/berth/credentials/deploy-key"
"""


def test_git_mounts_with_credentials_are_cloned_before_the_start(tmp_path: Path) -> None:
    _, b = built(GIT_CREDENTIALS)
    unit = check_units(b)["repos-0.container"]
    assert unit.all("Container", "Volume") == [
        # read-only whatever read_only says: berthd mounts its checkouts read-only
        "/var/lib/berth-export/repos/git-0:/src:ro",
        "/var/lib/berth-export/repos/git-1:/ssh:ro",
    ]
    steps = list(b.apply_steps)
    [intro] = [s for s in steps if s.startswith("Clone the git mounts")]
    # the credentials by name and where they lie on the berth host
    assert (
        "berth's secret git-token, the file /var/lib/berth/secrets/git-token "
        "(readable by root only)"
    ) in intro
    assert "the credentials_file /etc/berth/credentials/deploy-key" in intro
    https, ssh = steps[steps.index(intro) + 2 :][:2]
    # https: a credential helper that prints berth's secret file, as berthd does
    assert https == (
        'git -c credential.helper=\'!f() { test "$1" = get && cat '
        "/var/lib/berth/secrets/git-token; }; f' clone --depth 1 "
        "https://example.com/private.git /var/lib/berth-export/repos/git-0"
    )
    # ssh: the file is the key
    assert ssh == (
        "env GIT_SSH_COMMAND='ssh -i /etc/berth/credentials/deploy-key -o IdentitiesOnly=yes' "
        "git clone --depth 1 --branch release/2 git@example.com:team/repo.git "
        "/var/lib/berth-export/repos/git-1"
    )
    misses = {m.field: m.reason for m in b.left_out}
    assert list(misses) == ["update.drain_timeout", "mounts[0]", "mounts[1]"]
    assert "(its default branch) again for each revision" in misses["mounts[0]"]
    check_shell(b)
    verify(tmp_path, b)


def test_the_state_paths_are_berthds_defaults() -> None:
    from config.settings import DEFAULT_STATE_DIR
    from daemon.berthd import SECRETS_DIR

    assert quadlet_steps.STATE_DIR == str(DEFAULT_STATE_DIR)
    assert quadlet_steps.SECRETS_DIR == str(DEFAULT_STATE_DIR / SECRETS_DIR)


@pytest.mark.parametrize(
    "text",
    [TARGETED, GIT_CREDENTIALS, *(p.read_text() for p in EXAMPLES)],
    ids=["targeted", "git", *(p.stem for p in EXAMPLES)],
)
def test_left_out_lines_say_what_berth_did_and_what_happens_here(text: str) -> None:
    """Each of Quadlet's own lines is about the spec's field: what berth did with it (or
    does by default) and what the units do instead; no placeholder a reader must decode."""
    spec, b = built(text)
    for miss in quadlet_misses(spec):
        assert "berth" in miss.reason and "here" in miss.reason, miss.line()
        assert not re.search(r"\bDIR\b|NAME-I|\(s\)", miss.reason), miss.line()
    for note in b.notes:
        assert not re.search(r"NAME-I|\(s\)", note), note


def git(*args: str, cwd: Path | None = None) -> str:
    run = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT,
        check=True,
    )
    return run.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_clone_steps_check_out_the_ref(tmp_path: Path) -> None:
    """The apply steps' git lines, run (into tmp_path instead of /var/lib/berth-export):
    a branch by --depth 1 --branch, a short commit id by a full clone and a checkout."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "--quiet", "-b", "main", cwd=repo)
    (repo / "f").write_text("one\n")
    git("add", "f", cwd=repo)
    git("commit", "--quiet", "-m", "one", cwd=repo)
    first = git("rev-parse", "--short=8", "HEAD", cwd=repo)
    git("checkout", "--quiet", "-b", "rel", cwd=repo)
    (repo / "f").write_text("two\n")
    git("commit", "--quiet", "-am", "two", cwd=repo)
    _, b = built(
        f'name = "g"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18800\n'
        f'[[mounts]]\ntype = "git"\nsource = "file://{repo}"\ntarget = "/a"\nref = "{first}"\n'
        f'[[mounts]]\ntype = "git"\nsource = "file://{repo}"\ntarget = "/b"\nref = "rel"\n'
    )
    lines = [s for s in b.apply_steps if s.startswith(("mkdir", "git"))]
    assert len(lines) == 4  # mkdir, clone + checkout, clone --branch
    script = "set -e\n" + "\n".join(lines).replace("/var/lib/berth-export", str(tmp_path))
    subprocess.run(["bash", "-c", script], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "g/git-0/f").read_text() == "one\n"
    assert (tmp_path / "g/git-1/f").read_text() == "two\n"


def test_git_and_model_mounts_are_read_only_whatever_read_only_says(tmp_path: Path) -> None:
    """berthd mounts a git checkout and a model read-only even with read_only = false
    (daemon.integrations.mounts): the units do the same."""
    _, b = built(
        'name = "rw"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18900\n'
        '[[mounts]]\ntype = "git"\nsource = "https://example.com/r.git"\ntarget = "/code"\n'
        "read_only = false\n"
        '[[mounts]]\ntype = "model"\nsource = "tiny"\nread_only = false\n'
        '[[mounts]]\ntype = "bind"\nsource = "/srv/rw"\ntarget = "/rw"\nread_only = false\n'
    )
    unit = check_units(b)["rw-0.container"]
    assert unit.all("Container", "Volume") == [
        "/var/lib/berth-export/rw/git-0:/code:ro",
        "/var/lib/berth/models/tiny:/models/tiny:ro",
        "/srv/rw:/rw",  # a bind follows read_only, as berthd
    ]
    verify(tmp_path, b)


def drain_misses(update: str) -> dict[str, str]:
    _, b = built(
        'name = "d"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18901\n' + update
    )
    return {m.field: m.reason for m in b.left_out if m.field.startswith("update")}


def test_the_drain_is_left_out_whenever_berth_drains() -> None:
    # berth's default: berth still drains 30 s before SIGTERM; a unit does not
    assert list(drain_misses("")) == ["update.drain_timeout"]
    assert "for 30s (berth's default) before SIGTERM" in drain_misses("")["update.drain_timeout"]
    given = drain_misses('[update]\ndrain_timeout = "2m"\n')
    assert list(given) == ["update.drain_timeout"]  # the rest of [update] is berth's default
    assert "for 2m before SIGTERM" in given["update.drain_timeout"]
    assert "SIGTERM at once" in given["update.drain_timeout"]
    assert drain_misses('[update]\ndrain_timeout = "0s"\n') == {}  # nothing to drain
    both = drain_misses('[update]\nmax_surge = 2\ndrain_timeout = "0s"\n')
    assert list(both) == ["update"]
    assert "drain_timeout" not in both["update"]


def test_metrics_of_a_fixed_count_are_not_left_out() -> None:
    """min = max: berth's autoscaler ignores the metrics, so nothing is lost."""
    metric = '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 2\n'
    head = 'name = "m"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18902\n'
    _, fixed = built(head + "[replicas]\nmin = 2\nmax = 2\n" + metric)
    assert not any(m.field.startswith(("autoscale", "replicas")) for m in fixed.left_out)
    _, scaled = built(head + "[replicas]\nmin = 1\nmax = 2\n" + metric)
    assert [m.field for m in scaled.left_out if m.field.startswith("autoscale")] == [
        "autoscale.metrics"
    ]


def test_a_file_git_source_is_said_to_be_on_the_berth_host() -> None:
    mount = '[[mounts]]\ntype = "git"\nsource = "{url}"\ntarget = "/code"\n'
    head = 'name = "f"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18903\n'
    _, b = built(head + mount.format(url="file:///srv/repo"))
    [intro] = [s for s in b.apply_steps if s.startswith("Clone the git mounts")]
    assert (
        "file:///srv/repo is a repository on the berth host: the clone works there; on "
        "another host, copy it to the same path first (or change the URL)."
    ) in intro
    _, remote = built(head + mount.format(url="https://example.com/r.git"))
    assert not any("berth host" in s for s in remote.apply_steps)


def test_a_cold_start_timeout_is_left_out_once() -> None:
    """berth's endpoint holds a request while a replica starts; one host has no endpoint.
    One line, whichever module names it (Quadlet's own, or left_out.endpoint_features)."""
    head = 'name = "c"\nimage = "localhost/x:1"\nport = 80\n'
    _, b = built(head + '[endpoint]\nport = 18904\ncold_start_timeout = "30m"\n')
    [cold] = [m for m in b.left_out if m.field == "endpoint.cold_start_timeout"]
    assert "berth" in cold.reason
    _, default = built(head + "[endpoint]\nport = 18905\n")
    assert not any("cold_start" in m.field for m in default.left_out)
