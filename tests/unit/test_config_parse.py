"""The spec language: bad specs name their field paths, good specs come back complete."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomli

from config.errors import Problem, SpecError
from config.parse import parse_spec, spec_from_dict, spec_id, spec_to_dict, template_id
from config.spec import (
    AutoscaleMetric,
    DeploymentSpec,
    Endpoint,
    MetricName,
    Mount,
    MountType,
    Probe,
    Registry,
    Replicas,
    Resources,
    Summary,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
GIB = 1024**3
MIB = 1024**2


def make(body: str = "", *, endpoint: str | None = "port = 18080", **top: str | None) -> str:
    """A spec's text: the minimal valid spec, top-level keys replaced (None removes one)."""
    fields: dict[str, str | None] = {
        "name": '"demo"',
        "image": '"localhost/demo:1"',
        "port": "8080",
    }
    fields.update(top)
    lines = [f"{k} = {v}" for k, v in fields.items() if v is not None]
    if endpoint is not None:
        lines.append(f"[endpoint]\n{endpoint}")
    return "\n".join(lines) + "\n" + body


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="demo.toml")
    assert info.value.source == "demo.toml"
    return info.value.messages()


# (case id, spec text, the start of the expected problem: "field.path: message")
BAD_SPECS = [
    # top level
    ("name missing", make(name=None), "name: required"),
    ("name upper", make(name='"Demo"'), "name: must be 1-63 characters"),
    ("name dash end", make(name='"demo-"'), "name: must be 1-63"),
    ("name too long", make(name='"' + "a" * 64 + '"'), "name: must be 1-63"),
    ("name int", make(name="3"), "name: must be a string (got 3)"),
    ("image missing", make(image=None), "image: required"),
    ("image bad", make(image='"Foo/Bar"'), "image: not a valid image reference"),
    ("image digest", make(image='"x@sha256:12"'), "image: not a valid image reference: invalid"),
    ("port missing", make(port=None), "port: required"),
    ("port zero", make(port="0"), "port: must be between 1 and 65535 (got 0)"),
    ("port big", make(port="70000"), "port: must be between 1 and 65535"),
    ("port string", make(port='"8080"'), 'port: must be an integer (got "8080")'),
    ("port bool", make(port="true"), "port: must be an integer (got true)"),
    ("port float", make(port="8080.0"), "port: must be an integer (got 8080.0)"),
    ("enabled string", make(enabled='"yes"'), "enabled: must be true or false"),
    ("command empty", make(command="[]"), "command: must name a program"),
    ("command ints", make(command="[1, 2]"), "command: must be a list of strings"),
    ("command str", make(command='"httpd -f"'), "command: must be a list of strings"),
    ("stop_timeout big", make(stop_timeout='"10m"'), "stop_timeout: must be at most 5m"),
    ("stop_timeout num", make(stop_timeout="10"), "stop_timeout: must be a duration string"),
    ("stop_timeout unit", make(stop_timeout='"10"'), 'stop_timeout: needs a unit: "10s"'),
    ("unknown top", make(nmae='"x"'), "nmae: unknown key"),
    ("table as value", make(resources="4"), "resources: must be a table"),
    # env
    ("env bad name", make('[env]\n"MY-VAR" = "x"'), "env.MY-VAR: not a valid environment"),
    ("env digit name", make('[env]\n1X = "x"'), "env.1X: not a valid environment"),
    ("env float", make("[env]\nX = 1.5"), "env.X: must be a string (quote it)"),
    ("env bool", make("[env]\nX = true"), "env.X: must be a string (quote it) or an integer"),
    ("env table", make("[env.X]\nY = 1"), 'env.X: a table must be { secret = "NAME" }'),
    # resources
    ("cpus zero", make("[resources]\ncpus = 0"), "resources.cpus: must be > 0 (got 0)"),
    ("cpus many", make("[resources]\ncpus = 2000"), "resources.cpus: must be <= 1024"),
    ("cpus nan", make("[resources]\ncpus = nan"), "resources.cpus: must be a finite number"),
    ("cpus str", make('[resources]\ncpus = "1"'), 'resources.cpus: must be a number (got "1")'),
    ("memory small", make('[resources]\nmemory = "4Mi"'), "resources.memory: must be at least 6Mi"),
    (
        "memory unit",
        make('[resources]\nmemory = "4MB"'),
        'resources.memory: unknown size unit "MB"',
    ),
    ("gpus many", make("[resources]\ngpus = 17"), "resources.gpus: must be between 0 and 16"),
    ("gpus frac", make("[resources]\ngpus = 0.5"), "resources.gpus: must be an integer"),
    (
        "gpus and gpu_memory",
        make('[resources]\ngpus = 1\ngpu_memory = "10Gi"'),
        "resources.gpu_memory: cannot be combined with resources.gpus",
    ),
    ("resources typo", make("[resources]\ncpu = 1"), "resources.cpu: unknown key"),
    # replicas
    ("min string", make('[replicas]\nmin = "two"'), 'replicas.min: must be an integer (got "two")'),
    (
        "max < min",
        make("[replicas]\nmin = 2\nmax = 1"),
        "replicas.max: must be >= replicas.min (1 < 2)",
    ),
    ("max zero", make("[replicas]\nmin = 0\nmax = 0"), "replicas.max: must be between 1 and 100"),
    ("max big", make("[replicas]\nmax = 101"), "replicas.max: must be between 1 and 100"),
    ("min negative", make("[replicas]\nmin = -1"), "replicas.min: must be between 0 and 100"),
    ("count and min", make("[replicas]\ncount = 2\nmin = 1"), "replicas.count: cannot be combined"),
    ("count zero", make("[replicas]\ncount = 0"), "replicas.count: must be between 1 and 100"),
    # autoscale
    (
        "metric unknown",
        make('[[autoscale.metrics]]\nmetric = "rps"\ntarget = 5'),
        "autoscale.metrics[0].metric: must be one of cpu, memory",
    ),
    (
        "metric missing",
        make("[[autoscale.metrics]]\ntarget = 5"),
        "autoscale.metrics[0].metric: required",
    ),
    (
        "target missing",
        make('[[autoscale.metrics]]\nmetric = "cpu"'),
        "autoscale.metrics[0].target: required",
    ),
    (
        "percent too big",
        make('[[autoscale.metrics]]\nmetric = "cpu"\ntarget = "170%"'),
        "autoscale.metrics[0].target: must be a percentage between 1 and 100",
    ),
    (
        "percent as duration",
        make('[[autoscale.metrics]]\nmetric = "cpu"\ntarget = "250ms"'),
        "autoscale.metrics[0].target: must be a percentage",
    ),
    (
        "duration as number",
        make('[[autoscale.metrics]]\nmetric = "request_duration"\ntarget = 250'),
        "autoscale.metrics[0].target: must be a duration string",
    ),
    (
        "zero duration target",
        make('[[autoscale.metrics]]\nmetric = "request_duration"\ntarget = "0s"'),
        "autoscale.metrics[0].target: must be longer than 0s",
    ),
    (
        "concurrency negative",
        make('[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = -1'),
        "autoscale.metrics[0].target: must be > 0",
    ),
    (
        "p95 for cpu",
        make('[[autoscale.metrics]]\nmetric = "cpu"\nsummary = "p95"\ntarget = 70'),
        'autoscale.metrics[0].summary: p95 is only for request_duration (got "p95")',
    ),
    (
        "summary unknown",
        make('[[autoscale.metrics]]\nmetric = "cpu"\nsummary = "max"\ntarget = 70'),
        "autoscale.metrics[0].summary: must be one of average, p95",
    ),
    (
        "gpu metric without gpus",
        make('[[autoscale.metrics]]\nmetric = "gpu_utilization"\ntarget = "80%"'),
        "autoscale.metrics[0].metric: needs resources.gpus or resources.gpu_memory",
    ),
    (
        "memory metric without memory",
        make('[[autoscale.metrics]]\nmetric = "memory"\ntarget = "80%"'),
        "autoscale.metrics[0].metric: needs resources.memory",
    ),
    (
        "duplicate metric",
        make(
            '[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 70\n'
            '[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 50\n'
        ),
        "autoscale.metrics[1].metric: same metric and summary as autoscale.metrics[0]",
    ),
    (
        "metrics as table",
        make('[autoscale.metrics]\nmetric = "cpu"\ntarget = 70'),
        "autoscale.metrics: must be an array of tables ([[autoscale.metrics]])",
    ),
    (
        "metric typo",
        make('[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 70\ntarget_value = 1'),
        "autoscale.metrics[0].target_value: unknown key",
    ),
    (
        "scale_down_delay bad",
        make('[autoscale]\nscale_down_delay = "soon"'),
        "autoscale.scale_down_delay: not a duration",
    ),
    # health
    (
        "probe typo",
        make('[health.readiness]\npath = "/h"\nperod = "1s"'),
        "health.readiness.perod: unknown key",
    ),
    ("probe kind typo", make('[health.ready]\npath = "/h"'), "health.ready: unknown key"),
    (
        "probe relative path",
        make('[health.liveness]\npath = "health"'),
        'health.liveness.path: must start with "/"',
    ),
    ("probe no path", make('[health.readiness]\nperiod = "1s"'), "health.readiness.path: required"),
    (
        "probe path and tcp",
        make('[health.readiness]\npath = "/h"\ntcp = true'),
        "health.readiness.path: cannot be combined with tcp = true",
    ),
    (
        "probe period 0",
        make('[health.readiness]\npath = "/h"\nperiod = "0s"'),
        "health.readiness.period: must be longer than 0s",
    ),
    (
        "probe timeout bad",
        make('[health.readiness]\npath = "/h"\ntimeout = "1 s"'),
        "health.readiness.timeout: not a duration",
    ),
    (
        "probe threshold 0",
        make('[health.readiness]\npath = "/h"\nfailure_threshold = 0'),
        "health.readiness.failure_threshold: must be between 1 and 1000 (got 0)",
    ),
    (
        "liveness success threshold",
        make('[health.liveness]\npath = "/h"\nsuccess_threshold = 2'),
        "health.liveness.success_threshold: must be 1 for a liveness probe (got 2)",
    ),
    (
        "probe port",
        make("[health.startup]\ntcp = true\nport = 0"),
        "health.startup.port: must be between 1 and 65535",
    ),
    (
        "probe header value",
        make('[health.readiness]\npath = "/h"\nheaders = { X-Token = 5 }'),
        "health.readiness.headers.X-Token: must be a string (got 5)",
    ),
    (
        "probe header name",
        make('[health.readiness]\npath = "/h"\nheaders = { "a b" = "x" }'),
        'health.readiness.headers."a b": not a valid HTTP header name',
    ),
    (
        "probe header newline",
        make('[health.readiness]\npath = "/h"\nheaders = { X = "a\\r\\nb" }'),
        "health.readiness.headers.X: must not contain control characters",
    ),
    # endpoint
    ("endpoint missing", make(endpoint=None), "endpoint: required"),
    ("endpoint port missing", make(endpoint='bind = "::1"'), "endpoint.port: required"),
    (
        "endpoint port low",
        make(endpoint="port = 80"),
        "endpoint.port: must be between 1024 and 65535 (got 80)",
    ),
    (
        "endpoint bind host",
        make(endpoint='port = 18080\nbind = "localhost"'),
        "endpoint.bind: must be an IPv4 or IPv6 address",
    ),
    (
        "endpoint timeout",
        make(endpoint='port = 18080\nread_timeout = "0s"'),
        "endpoint.read_timeout: must be longer than 0s",
    ),
    ("endpoint typo", make(endpoint="port = 18080\nhost = 1"), "endpoint.host: unknown key"),
    # update
    (
        "update both zero",
        make("[update]\nmax_surge = 0\nmax_unavailable = 0"),
        "update.max_unavailable: update.max_surge and update.max_unavailable cannot both be 0",
    ),
    (
        "update negative",
        make("[update]\nmax_surge = -1"),
        "update.max_surge: must be between 0 and 100",
    ),
    (
        "update deadline",
        make('[update]\nprogress_deadline = "0s"'),
        "update.progress_deadline: must be longer",
    ),
    # mounts
    (
        "mount type",
        make('[[mounts]]\ntype = "nfs"\nsource = "/a"\ntarget = "/b"'),
        "mounts[0].type: must be one of bind, volume, git, model",
    ),
    ("mount no type", make('[[mounts]]\nsource = "/a"\ntarget = "/b"'), "mounts[0].type: required"),
    (
        "mount relative target",
        make('[[mounts]]\ntype = "bind"\nsource = "/a"\ntarget = "b"'),
        "mounts[0].target: must be an absolute path",
    ),
    (
        "mount no target",
        make('[[mounts]]\ntype = "bind"\nsource = "/a"'),
        "mounts[0].target: required",
    ),
    (
        "mount root target",
        make('[[mounts]]\ntype = "volume"\nsource = "v"\ntarget = "/"'),
        "mounts[0].target: cannot mount over",
    ),
    (
        "mount dotdot",
        make('[[mounts]]\ntype = "bind"\nsource = "/srv/../etc"\ntarget = "/b"'),
        'mounts[0].source: must not contain ".."',
    ),
    (
        "bind relative",
        make('[[mounts]]\ntype = "bind"\nsource = "srv/x"\ntarget = "/b"'),
        "mounts[0].source: must be an absolute path",
    ),
    (
        "bind root",
        make('[[mounts]]\ntype = "bind"\nsource = "/"\ntarget = "/b"'),
        "mounts[0].source: cannot bind the host's root",
    ),
    (
        "volume name",
        make('[[mounts]]\ntype = "volume"\nsource = "/v"\ntarget = "/b"'),
        "mounts[0].source: must be a volume name",
    ),
    (
        "git url",
        make('[[mounts]]\ntype = "git"\nsource = "ftp://x/y"\ntarget = "/b"'),
        "mounts[0].source: unsupported URL scheme 'ftp'",
    ),
    (
        "git plain",
        make('[[mounts]]\ntype = "git"\nsource = "repo"\ntarget = "/b"'),
        "mounts[0].source: must be a network git URL",
    ),
    (
        "git password",
        make('[[mounts]]\ntype = "git"\nsource = "https://u:secret@h/r.git"\ntarget = "/b"'),
        "mounts[0].source: must not hold a password",
    ),
    (
        "git ref option",
        make(
            '[[mounts]]\ntype = "git"\nsource = "https://h/r"\n'
            'ref = "--upload-pack=x"\ntarget = "/b"'
        ),
        "mounts[0].ref: must be a branch, tag or commit",
    ),
    (
        "ref not git",
        make('[[mounts]]\ntype = "bind"\nsource = "/a"\ntarget = "/b"\nref = "main"'),
        "mounts[0].ref: only for git mounts",
    ),
    (
        "model name",
        make('[[mounts]]\ntype = "model"\nsource = "../x"'),
        "mounts[0].source: must be a model name",
    ),
    (
        "read_only str",
        make('[[mounts]]\ntype = "volume"\nsource = "v"\ntarget = "/b"\nread_only = "no"'),
        "mounts[0].read_only: must be true or false",
    ),
    (
        "duplicate targets",
        make(
            '[[mounts]]\ntype = "volume"\nsource = "v"\ntarget = "/data"\n'
            '[[mounts]]\ntype = "bind"\nsource = "/srv/x"\ntarget = "/data/"\n'
        ),
        'mounts[1].target: same target as mounts[0] (got "/data")',
    ),
    (
        "duplicate default model target",
        make(
            '[[mounts]]\ntype = "model"\nsource = "tiny"\n'
            '[[mounts]]\ntype = "bind"\nsource = "/srv/x"\ntarget = "/models/tiny"\n'
        ),
        "mounts[1].target: same target as mounts[0]",
    ),
    ("mounts not tables", make(mounts="[1]"), "mounts[0]: must be a table (got 1)"),
    # registry
    ("registry empty", make("[registry]"), "registry.auth_file: required (or registry.username"),
    (
        "registry both",
        make('[registry]\nauth_file = "/a.json"\nusername = "u"\npassword_file = "/p"'),
        "registry.auth_file: cannot be combined",
    ),
    (
        "registry no password",
        make('[registry]\nusername = "u"'),
        "registry.password_file: required with registry.username",
    ),
    (
        "registry relative",
        make('[registry]\nauth_file = "auth.json"'),
        "registry.auth_file: must be an absolute path",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS]
)
def test_bad_spec_names_the_field(text: str, expected: str) -> None:
    messages = problems_of(text)
    assert any(m.startswith(expected) for m in messages), messages


def test_case_ids_are_unique() -> None:
    ids = [c[0] for c in BAD_SPECS]
    assert len(ids) == len(set(ids))


def test_every_problem_is_reported_at_once() -> None:
    text = make(
        '[replicas]\nmin = "two"\n[health.readiness]\nperod = "1s"\npath = "/h"\n'
        "[resources]\ncpus = -1\n",
        name='"Bad_Name"',
        port="0",
        endpoint="port = 80",
    )
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="demo.toml")
    paths = {p.path for p in info.value.problems}
    assert paths == {
        "name",
        "port",
        "replicas.min",
        "health.readiness.perod",
        "resources.cpus",
        "endpoint.port",
    }
    summary = str(info.value)
    assert summary.startswith("demo.toml: 6 problems: ")
    assert "\n" not in summary
    assert 'replicas.min: must be an integer (got "two")' in summary


def test_single_problem_summary_is_the_problem() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(make(port='"x"'), source="a.toml")
    assert str(info.value) == 'a.toml: port: must be an integer (got "x")'
    assert info.value.messages() == ['port: must be an integer (got "x")']


def test_problem_str_omits_missing_value() -> None:
    assert str(Problem("name", "required")) == "name: required"
    assert (
        str(Problem("x.y", "must be true or false", False))
        == "x.y: must be true or false (got false)"
    )
    assert str(Problem("", "TOML syntax error")) == "TOML syntax error"
    long = str(Problem("a", "bad", "z" * 200))
    assert long.endswith("...)") and len(long) < 90


def test_toml_syntax_error_names_line_and_column() -> None:
    text = 'name = "demo"\nimage = "x"\nport = = 8080\n'
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="broken.toml")
    [problem] = info.value.problems
    assert "line 3, column" in problem.message
    assert problem.message.startswith("TOML syntax error at line 3, column 8")
    assert str(info.value).startswith("broken.toml: TOML syntax error at line 3")


def test_duplicate_key_is_a_syntax_error() -> None:
    with pytest.raises(SpecError, match="line 2"):
        parse_spec('name = "a"\nname = "b"\n')


def test_minimal_spec_gets_every_default() -> None:
    spec = parse_spec(make())
    assert spec == DeploymentSpec(
        name="demo",
        image="localhost/demo:1",
        port=8080,
        endpoint=Endpoint(port=18080),
    )
    assert spec.replicas == Replicas(min=1, max=1)
    assert spec.stop_timeout == 10.0
    assert spec.endpoint.bind == "127.0.0.1"  # loopback unless [endpoint.auth] (issue 13)
    assert spec.endpoint.read_timeout == 300.0
    assert spec.update.max_surge == 1 and spec.update.progress_deadline == 600.0
    assert spec.autoscale.scale_down_delay == 300.0
    assert spec.health.readiness is None
    assert spec.registry is None


FULL = (
    """
name = "llm"
image = "ghcr.io/org/server:2.1@sha256:"""
    + "c" * 64
    + """"
command = ["serve", "--port", "9000"]
port = 9000
enabled = false
stop_timeout = "30s"

[env]
MODEL = "tiny"
WORKERS = 4

[resources]
cpus = 2
memory = "8Gi"
gpu_memory = "10Gi"

[replicas]
min = 0
max = 4

[[autoscale.metrics]]
metric = "request_duration"
summary = "p95"
target = "250ms"

[[autoscale.metrics]]
metric = "gpu_utilization"
target = "70%"

[[autoscale.metrics]]
metric = "concurrency"
target = 8

[[autoscale.metrics]]
metric = "cpu"
target = 65.5

[autoscale]
scale_down_delay = "10m"

[health.startup]
tcp = true
period = "1s"
failure_threshold = 120

[health.readiness]
path = "/ready?deep=1"
port = 9001
headers = { Authorization = "Bearer probe" }
initial_delay = "500ms"
success_threshold = 2

[health.liveness]
path = "/live"
timeout = "2s"

[endpoint]
port = 18000
bind = "0:0:0:0:0:0:0:1"
connect_timeout = "1s"
read_timeout = "1h"
client_idle_timeout = "2m"

[update]
max_surge = 0
max_unavailable = 1
progress_deadline = "30m"

[[mounts]]
type = "bind"
source = "/srv/models/tiny/"
target = "/weights"

[[mounts]]
type = "volume"
source = "cache"
target = "/cache"
read_only = false

[[mounts]]
type = "git"
source = "git@github.com:org/prompts.git"
ref = "v1.2"
credentials_file = "/etc/berth/git-cred"
target = "/prompts"

[[mounts]]
type = "model"
source = "org/llama-3-8b"

[registry]
username = "bot"
password_file = "/etc/berth/registry-password"
"""
)


def test_full_spec() -> None:
    spec = parse_spec(FULL)
    assert spec.command == ("serve", "--port", "9000")
    assert not spec.enabled
    assert spec.stop_timeout == 30.0
    assert spec.env == {"MODEL": "tiny", "WORKERS": "4"}
    assert spec.resources == Resources(cpus=2.0, memory=8 * GIB, gpus=0, gpu_memory=10 * GIB)
    assert spec.replicas == Replicas(min=0, max=4)
    assert spec.autoscale.metrics == (
        AutoscaleMetric(MetricName.REQUEST_DURATION, Summary.P95, 0.25),
        AutoscaleMetric(MetricName.GPU_UTILIZATION, Summary.AVERAGE, 70.0),
        AutoscaleMetric(MetricName.CONCURRENCY, Summary.AVERAGE, 8.0),
        AutoscaleMetric(MetricName.CPU, Summary.AVERAGE, 65.5),
    )
    assert spec.autoscale.scale_down_delay == 600.0
    assert spec.health.startup == Probe(port=9000, tcp=True, period=1.0, failure_threshold=120)
    assert spec.health.readiness == Probe(
        port=9001,
        path="/ready?deep=1",
        headers={"Authorization": "Bearer probe"},
        initial_delay=0.5,
        success_threshold=2,
    )
    assert spec.health.liveness == Probe(port=9000, path="/live", timeout=2.0)
    assert spec.endpoint == Endpoint(
        port=18000, bind="::1", connect_timeout=1.0, read_timeout=3600.0, client_idle_timeout=120.0
    )
    assert (spec.update.max_surge, spec.update.max_unavailable) == (0, 1)
    assert spec.update.progress_deadline == 1800.0
    assert spec.mounts == (
        Mount(MountType.BIND, target="/weights", source="/srv/models/tiny"),
        Mount(MountType.VOLUME, target="/cache", source="cache", read_only=False),
        Mount(
            MountType.GIT,
            target="/prompts",
            source="git@github.com:org/prompts.git",
            ref="v1.2",
            credentials_file="/etc/berth/git-cred",
        ),
        Mount(MountType.MODEL, target="/models/org/llama-3-8b", source="org/llama-3-8b"),
    )
    assert spec.registry == Registry(username="bot", password_file="/etc/berth/registry-password")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[replicas]\ncount = 3", Replicas(3, 3)),
        ("[replicas]\nmin = 2", Replicas(2, 2)),
        ("[replicas]\nmin = 0", Replicas(0, 1)),
        ("[replicas]\nmax = 5", Replicas(1, 5)),
        ("[replicas]", Replicas(1, 1)),
        ("[replicas]\nmin = 2\nmax = 2", Replicas(2, 2)),
    ],
)
def test_replica_shorthands(body: str, expected: Replicas) -> None:
    assert parse_spec(make(body)).replicas == expected


@pytest.mark.parametrize(
    "source",
    [
        "https://github.com/org/repo.git",
        "ssh://git@git.lan:2222/repo.git",
        "file:///srv/git/repo",
        "git@github.com:org/repo.git",
        "https://token-user@github.com/org/repo.git",
    ],
)
def test_git_sources(source: str) -> None:
    text = make(f'[[mounts]]\ntype = "git"\nsource = "{source}"\ntarget = "/repo"')
    assert parse_spec(text).mounts[0].source == source


def test_percent_target_forms_agree() -> None:
    def target(value: str) -> float:
        text = make(f'[[autoscale.metrics]]\nmetric = "cpu"\ntarget = {value}')
        return parse_spec(text).autoscale.metrics[0].target

    assert target('"70%"') == target("70") == target("70.0") == 70.0


def test_size_as_plain_bytes() -> None:
    assert parse_spec(make("[resources]\nmemory = 67108864")).resources.memory == 64 * MIB


def test_echo_example_parses() -> None:
    text = (EXAMPLES / "echo.toml").read_text()
    spec = parse_spec(text, source="echo.toml")
    assert spec.name == "echo"
    assert spec.replicas == Replicas(2, 2)
    assert spec.stop_timeout == 2.0
    assert spec.health.readiness is not None and spec.health.readiness.port == 8080
    assert spec.endpoint.port == 18080


@pytest.mark.parametrize("text", [make(), FULL, (EXAMPLES / "echo.toml").read_text()])
def test_canonical_dict_round_trips(text: str) -> None:
    spec = parse_spec(text)
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict(spec_to_dict(spec, defaults=False)) == spec


def test_canonical_dict_normalises_units() -> None:
    d = spec_to_dict(parse_spec(make('[resources]\nmemory = "1024Mi"', stop_timeout='"90s"')))
    assert d["resources"]["memory"] == "1Gi"
    assert d["stop_timeout"] == "1m30s"
    assert d["replicas"] == {"min": 1, "max": 1}
    assert d["endpoint"]["read_timeout"] == "5m"


def test_spec_id_is_stable_under_reformatting() -> None:
    plain = make('[resources]\nmemory = "1Gi"\n[replicas]\ncount = 1\n')
    reformatted = (
        "# a comment\n"
        'port=8080\nimage = "localhost/demo:1"\n  name   =   "demo"\n'
        "stop_timeout = '10000ms'\n"
        "[resources]\nmemory = '1024Mi' # the same\n"
        "[endpoint]\nport = 18080\nclient_idle_timeout = '60s'\n"
    )
    a, b = parse_spec(plain), parse_spec(reformatted)
    assert a == b
    assert spec_id(a) == spec_id(b)
    assert len(spec_id(a)) == 12 and int(spec_id(a), 16) >= 0
    assert template_id(a) == template_id(b)


CHANGES = [
    make(name='"demo2"'),
    make(image='"localhost/demo:2"'),
    make(port="8081"),
    make(command='["a"]'),
    make(enabled="false"),
    make(stop_timeout='"11s"'),
    make('[env]\nA = "1"'),
    make("[resources]\ncpus = 1"),
    make("[replicas]\ncount = 2"),
    make('[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 70'),
    make('[autoscale]\nscale_down_delay = "1m"'),
    make('[health.readiness]\npath = "/h"'),
    make(endpoint="port = 18081"),
    make(endpoint='port = 18080\nread_timeout = "1h"'),
    make("[update]\nmax_surge = 2"),
    make('[[mounts]]\ntype = "volume"\nsource = "v"\ntarget = "/v"'),
    make('[registry]\nauth_file = "/etc/auth.json"'),
]


def test_spec_id_changes_on_any_change() -> None:
    ids = [spec_id(parse_spec(t)) for t in [make(), *CHANGES]]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "body",
    [
        "[replicas]\ncount = 5",
        '[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 70',
        '[health.readiness]\npath = "/h"',
        "[update]\nmax_surge = 3",
    ],
)
def test_template_id_ignores_what_does_not_shape_containers(body: str) -> None:
    base = parse_spec(make())
    changed = parse_spec(make(body))
    assert spec_id(base) != spec_id(changed)
    assert template_id(base) == template_id(changed)


def test_template_id_changes_when_a_probe_moves_to_a_port_not_published() -> None:
    base = parse_spec(make())
    on_app_port = parse_spec(make('[health.readiness]\npath = "/h"\nport = 8080'))
    elsewhere = parse_spec(make('[health.readiness]\npath = "/h"\nport = 9090'))
    assert template_id(on_app_port) == template_id(base)  # nothing new to publish
    assert template_id(elsewhere) != template_id(base)


def test_template_id_ignores_endpoint_and_enabled() -> None:
    base = parse_spec(make())
    for text in (make(endpoint="port = 18081"), make(enabled="false")):
        assert template_id(parse_spec(text)) == template_id(base)


@pytest.mark.parametrize(
    "text",
    [
        make(name='"demo2"'),
        make(image='"localhost/demo:2"'),
        make(port="8081"),
        make(command='["a"]'),
        make(stop_timeout='"11s"'),
        make('[env]\nA = "1"'),
        make('[resources]\nmemory = "1Gi"'),
        make('[[mounts]]\ntype = "volume"\nsource = "v"\ntarget = "/v"'),
        make('[registry]\nauth_file = "/etc/auth.json"'),
    ],
)
def test_template_id_changes_with_the_container(text: str) -> None:
    assert template_id(parse_spec(text)) != template_id(parse_spec(make()))


def test_ids_do_not_depend_on_spelled_out_defaults() -> None:
    spelled = make(
        '[update]\nmax_surge = 1\nmax_unavailable = 0\nprogress_deadline = "10m"\n'
        '[autoscale]\nscale_down_delay = "5m"\n[resources]\ngpus = 0\n',
        enabled="true",
        stop_timeout='"10s"',
        endpoint='port = 18080\nconnect_timeout = "5s"\nread_timeout = "300s"',
    )
    assert spec_id(parse_spec(spelled)) == spec_id(parse_spec(make()))


def test_spec_from_dict_accepts_decoded_toml() -> None:
    data = tomli.loads(make())
    assert spec_from_dict(data) == parse_spec(make())


def test_spec_is_frozen() -> None:
    spec = parse_spec(make())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]


def test_the_example_in_the_spec_reference_parses() -> None:
    doc = (EXAMPLES.parents[1] / "docs" / "spec.md").read_text()
    example = doc.split("## A full example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    spec = parse_spec(example, source="docs/spec.md")
    assert spec.mounts[1].target == "/models/org/llama-3-8b"
    assert spec.env["WORKERS"] == "4"


def test_drain_and_cold_start_timeouts() -> None:
    default = parse_spec(make())
    assert (default.update.drain_timeout, default.endpoint.cold_start_timeout) == (30.0, 600.0)
    spec = parse_spec(
        make(
            '[update]\ndrain_timeout = "2h"\n', endpoint='port = 18080\ncold_start_timeout = "20m"'
        )
    )
    assert (spec.update.drain_timeout, spec.endpoint.cold_start_timeout) == (7200.0, 1200.0)
    assert spec_id(spec) != spec_id(default)
    assert spec_id(parse_spec(make('[update]\ndrain_timeout = "30s"\n'))) == spec_id(default)
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert template_id(spec) == template_id(default)  # no replica is replaced for them
    bad = make(
        '[update]\ndrain_timeout = "2d"\n', endpoint='port = 18080\ncold_start_timeout = "0s"'
    )
    assert sorted(p.split(":")[0] for p in problems_of(bad)) == [
        "endpoint.cold_start_timeout",
        "update.drain_timeout",
    ]


def test_startup_timeout_total() -> None:
    spec = parse_spec(make('[health.startup]\npath = "/ready"\ntimeout_total = "15m"\n'))
    assert spec.health.startup is not None and spec.health.startup.budget == 900.0
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert problems_of(make('[health.readiness]\npath = "/r"\ntimeout_total = "1m"\n')) == [
        "health.readiness.timeout_total: only for the startup probe ([health.startup])"
    ]


def test_pull_policy() -> None:
    assert parse_spec(make()).pull == "missing"
    spec = parse_spec(make(pull='"always"'))
    assert spec.pull == "always" and spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_id(parse_spec(make(pull='"missing"'))) == spec_id(parse_spec(make()))
    assert template_id(spec) == template_id(parse_spec(make()))  # no replica is replaced
    (problem,) = problems_of(make(pull='"sometimes"'))
    assert problem.startswith("pull: must be one of")
