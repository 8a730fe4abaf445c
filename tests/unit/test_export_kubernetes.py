"""`berth export --to kubernetes`: every object valid against Kubernetes 1.33's schemas and the
KEDA CRD (strict), and each mapping's values as docs/export.md's table says."""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.canonical import spec_id
from config.errors import SpecError
from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.export import kubernetes
from daemon.export.bundle import Built, Origin
from tests import export_specs
from tests.export_schemas import SchemaError, validate
from tests.export_specs import EXAMPLES, spec_of


def build(spec: DeploymentSpec) -> Built:
    return kubernetes.build(spec, Origin(spec_id(spec), deployment_id="d-1", revision=4))


def objects(built: Built) -> dict[str, dict[str, Any]]:
    """Each file's one object, validated strictly, by file name."""
    out = {}
    for f in built.files:
        docs = list(yaml.safe_load_all(f.text))
        assert len(docs) == 1, f.name
        validate(docs[0])
        out[f.name] = docs[0]
    return out


def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (c,) = objs["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = c
    return found


def fields(built: Built) -> list[str]:
    return [item.field for item in built.left_out]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_exports_valid_objects(path: Path) -> None:
    spec = parse_spec(path.read_text(), source=str(path))
    built = build(spec)
    objs = objects(built)
    assert {"deployment.yaml", "service.yaml"} <= set(objs)
    for f in built.files:
        assert f.text.startswith("# Exported by berth export from revision 4 of deployment id d-1")
    deployment_text = built.files[0].text
    for item in built.left_out:  # the Deployment's file carries every LeftOut
        assert item.line() in deployment_text
    for obj in objs.values():
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/name"] == spec.name
        assert meta["annotations"]["berth.io/spec-id"] == spec_id(spec)
        assert meta["annotations"]["berth.io/revision"] == "4"
        assert "namespace" not in meta
    assert build(spec) == built  # deterministic
    assert built.apply_steps[-1] == "kubectl apply -f DIR"


def test_an_unknown_field_is_refused_by_both_kinds_of_schema() -> None:
    objs = objects(
        build(
            spec_of(
                "[replicas]\nmin = 0\nmax = 2\n[[autoscale.metrics]]\n"
                'metric = "concurrency"\ntarget = 2'
            )
        )
    )
    deployment = objs["deployment.yaml"]
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(SchemaError, match="gpus"):
        validate(deployment)
    scaled = objs["scaledobject.yaml"]
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behaviour"] = {}
    with pytest.raises(SchemaError, match="behaviour"):
        validate(scaled)
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"].pop("behaviour")
    scaled["metadata"]["labelz"] = {}
    with pytest.raises(SchemaError, match="labelz"):
        validate(scaled)


def test_the_container_image_command_env_and_resources() -> None:
    spec = spec_of(
        '[env]\nPLAIN = "hello"\nTOKEN = { secret = "hf_token" }\n'
        '[resources]\ncpus = 1.5\nmemory = "3Gi"\ngpus = 2\nshm_size = "512Mi"',
        top='command = ["serve", "--port", "8000"]\npull = "always"',
    )
    built = build(spec)
    objs = objects(built)
    c = container(objs)
    assert c["image"] == "ghcr.io/acme/app:1"
    assert c["imagePullPolicy"] == "Always"
    assert c["args"] == ["serve", "--port", "8000"] and "command" not in c
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["env"] == [
        {"name": "PLAIN", "value": "hello"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "value"}}},
    ]
    assert c["resources"] == {
        "requests": {"cpu": "1500m", "memory": "3Gi"},
        "limits": {"cpu": "1500m", "memory": "3Gi", "nvidia.com/gpu": 2},
    }
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    volumes = objs["deployment.yaml"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}} in volumes
    assert built.apply_steps[0].startswith(
        "kubectl create secret generic hf-token --from-file=value=/var/lib/berth/secrets/hf_token"
    )
    assert "berth's secret 'hf_token' is Secret 'hf-token'" in built.files[0].text


def test_a_secret_value_appears_nowhere() -> None:
    spec = spec_of('[env]\nTOKEN = { secret = "tok" }')
    built = build(spec)
    (env,) = container(objects(built))["env"]
    assert env == {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "value"}}}
    for f in built.files:
        assert "value: " not in f.text.replace("key: value", "")


def test_probes_map_with_whole_seconds_and_the_startup_budget() -> None:
    spec = spec_of(
        '[health.startup]\npath = "/health"\nperiod = "5s"\ntimeout_total = "30m"\n'
        '[health.readiness]\npath = "/ready?deep=1"\nperiod = "1500ms"\ntimeout = "500ms"\n'
        'initial_delay = "2s"\nsuccess_threshold = 2\nfailure_threshold = 4\n'
        '[health.readiness.headers]\nX-Probe = "berth"\n'
        "[health.liveness]\ntcp = true\nport = 9000\n"
    )
    built = build(spec)
    c = container(objects(built))
    assert c["startupProbe"] == {
        "httpGet": {"path": "/health", "port": 8000},
        "initialDelaySeconds": 0,
        "periodSeconds": 5,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": 360,
    }
    assert c["readinessProbe"] == {
        "httpGet": {
            "path": "/ready?deep=1",
            "port": 8000,
            "httpHeaders": [{"name": "X-Probe", "value": "berth"}],
        },
        "initialDelaySeconds": 2,
        "periodSeconds": 2,
        "timeoutSeconds": 1,
        "successThreshold": 2,
        "failureThreshold": 4,
    }
    assert c["livenessProbe"]["tcpSocket"] == {"port": 9000}
    assert c["livenessProbe"]["failureThreshold"] == 3
    assert {"health.readiness.period", "health.readiness.timeout"} <= set(fields(built))
    assert "health.startup.period" not in fields(built)
    assert "1.5s becomes 2s" in built.files[0].text


def test_a_startup_budget_below_the_failure_threshold_keeps_the_threshold() -> None:
    spec = spec_of(
        '[health.startup]\npath = "/h"\nperiod = "10s"\ninitial_delay = "30s"\n'
        'failure_threshold = 20\ntimeout_total = "1m"'
    )
    assert container(objects(build(spec)))["startupProbe"]["failureThreshold"] == 20
    spec = spec_of(
        '[health.startup]\npath = "/h"\nperiod = "7s"\ninitial_delay = "10s"\n'
        'timeout_total = "100s"'
    )
    probe = container(objects(build(spec)))["startupProbe"]
    assert probe["failureThreshold"] == 13  # ceil(90 / 7): the budget is at least 100 s


def test_no_probe_in_the_spec_is_no_probe() -> None:
    c = container(objects(build(spec_of())))
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(c)


def test_update_replace_deadline_and_grace() -> None:
    spec = spec_of(
        '[update]\nstrategy = "replace"\nprogress_deadline = "90.5s"\ndrain_timeout = "1m"',
        top='stop_timeout = "4500ms"',
    )
    built = build(spec)
    d = objects(built)["deployment.yaml"]["spec"]
    assert d["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    assert d["progressDeadlineSeconds"] == 91
    assert d["template"]["spec"]["terminationGracePeriodSeconds"] == 65
    assert "update.progress_deadline" in fields(built)
    spec = spec_of("[update]\nmax_surge = 2\nmax_unavailable = 1")
    d = objects(build(spec))["deployment.yaml"]["spec"]
    assert d["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": 1}


def test_fixed_count_and_disabled() -> None:
    objs = objects(build(spec_of("[replicas]\ncount = 3")))
    assert objs["deployment.yaml"]["spec"]["replicas"] == 3
    assert set(objs) == {"deployment.yaml", "service.yaml"}
    spec = spec_of(
        '[replicas]\nmin = 1\nmax = 4\n[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 2',
        top="enabled = false",
    )
    built = build(spec)
    objs = objects(built)
    assert objs["deployment.yaml"]["spec"]["replicas"] == 0
    assert set(objs) == {"deployment.yaml", "service.yaml"}
    assert "enabled = false" in built.files[0].text


def test_cpu_and_memory_make_an_hpa() -> None:
    spec = spec_of(
        '[resources]\ncpus = 2\nmemory = "1Gi"\n[replicas]\nmin = 2\nmax = 5\n'
        '[autoscale]\nscale_down_delay = "2h"\n'
        '[[autoscale.metrics]]\nmetric = "cpu"\ntarget = "70%"\n'
        '[[autoscale.metrics]]\nmetric = "memory"\ntarget = 80.4'
    )
    built = build(spec)
    objs = objects(built)
    assert "scaledobject.yaml" not in objs
    hpa = objs["hpa.yaml"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        },
        {
            "type": "Resource",
            "resource": {
                "name": "memory",
                "target": {"type": "Utilization", "averageUtilization": 80},
            },
        },
    ]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 3600
    assert {"autoscale.scale_down_delay", "autoscale.metrics[1].target"} <= set(fields(built))
    assert objs["deployment.yaml"]["spec"]["replicas"] == 2


def test_cpu_without_cpus_is_a_share_of_one_cpu() -> None:
    spec = spec_of('[replicas]\nmax = 3\n[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 70')
    (metric,) = objects(build(spec))["hpa.yaml"]["spec"]["metrics"]
    assert metric["resource"]["target"] == {"type": "AverageValue", "averageValue": "700m"}


def _triggers(tables: str, top: str = "") -> tuple[list[dict[str, Any]], Built]:
    built = build(spec_of(tables, top))
    objs = objects(built)
    assert "hpa.yaml" not in objs
    return objs["scaledobject.yaml"]["spec"]["triggers"], built


def test_each_other_metric_is_a_keda_prometheus_trigger() -> None:
    tables = (
        "[resources]\ngpus = 1\ncpus = 2\n[replicas]\nmin = 1\nmax = 4\n"
        "[[metrics.scrape]]\nport = 8000\n"
        '[[autoscale.metrics]]\nmetric = "prometheus"\nquery = \'q{model="m"}\'\ntarget = 4\n'
        '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 2.5\n'
        '[[autoscale.metrics]]\nmetric = "request_duration"\ntarget = "250ms"\n'
        '[[autoscale.metrics]]\nmetric = "request_duration"\nsummary = "p95"\ntarget = "2s"\n'
        '[[autoscale.metrics]]\nmetric = "gpu_utilization"\ntarget = 60\n'
        '[[autoscale.metrics]]\nmetric = "gpu_memory"\ntarget = 90\n'
        '[[autoscale.metrics]]\nmetric = "queue"\ntarget = 2\n'
        '[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 50\n'
    )
    triggers, built = _triggers(tables)
    nginx = "nginx_ingress_controller_request_duration_seconds"
    svc = 'exported_service="app"'
    pods = 'pod=~"app-[a-z0-9]+-[a-z0-9]+"'  # the Deployment's pods, not app-embed's
    used, free = (f"DCGM_FI_DEV_FB_{x}{{{pods}}}" for x in ("USED", "FREE"))
    got = [
        (
            t["type"],
            t.get("metricType"),
            t["metadata"].get("query"),
            t["metadata"].get("threshold", t["metadata"].get("value")),
        )
        for t in triggers
    ]
    assert got == [
        ("prometheus", "AverageValue", f'sum(q{{model="m",{pods}}})', "4"),
        (
            "prometheus",
            "AverageValue",
            f'sum(rate({nginx}_sum{{exported_service="app"}}[1m]))',
            "2.5",
        ),
        (
            "prometheus",
            "Value",
            f"sum(rate({nginx}_sum{{{svc}}}[2m])) / sum(rate({nginx}_count{{{svc}}}[2m]))",
            "0.25",
        ),
        (
            "prometheus",
            "Value",
            f"histogram_quantile(0.95, sum by (le) (rate({nginx}_bucket{{{svc}}}[2m])))",
            "2",
        ),
        ("prometheus", "Value", f"avg(DCGM_FI_DEV_GPU_UTIL{{{pods}}})", "60"),
        (
            "prometheus",
            "Value",
            f"avg({used} / ({used} + {free}) * 100)",
            "90",
        ),
        ("cpu", "Utilization", None, "50"),
    ]
    for t in triggers:
        if t["type"] == "prometheus":
            assert t["metadata"]["serverAddress"] == "http://prometheus.monitoring.svc:9090"
    assert "autoscale.metrics[6]" in fields(built)  # queue
    assert any("Prometheus address" in n for n in built.notes)


def test_min_zero_is_keda_with_cooldown() -> None:
    triggers, built = _triggers(
        '[replicas]\nmin = 0\nmax = 2\nscale_to_zero_after = "10m"\n'
        '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 1'
    )
    so = objects(built)["scaledobject.yaml"]["spec"]
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["cooldownPeriod"]) == (0, 2, 600)
    assert so["scaleTargetRef"] == {"name": "app"}
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 300
    }
    assert objects(built)["deployment.yaml"]["spec"]["replicas"] == 0
    assert "replicas.min" in fields(built)


def test_keda_leaves_out_cpu_with_no_cpu_request() -> None:
    # KEDA's webhook refuses a cpu trigger on a container with no cpu request.
    triggers, built = _triggers(
        '[replicas]\nmin = 1\nmax = 3\n[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 50\n'
        '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 2'
    )
    assert [t["type"] for t in triggers] == ["prometheus"]
    assert "autoscale.metrics[0]" in fields(built)
    built = build(
        spec_of('[replicas]\nmin = 0\nmax = 3\n[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 5')
    )
    objs = objects(built)
    assert set(objs) == {"deployment.yaml", "service.yaml"}
    assert objs["deployment.yaml"]["spec"]["replicas"] == 1
    assert {"autoscale.metrics[0]", "replicas.max"} <= set(fields(built))


def test_min_zero_on_cpu_alone_keeps_one() -> None:
    _, built = _triggers(
        "[resources]\ncpus = 1\n[replicas]\nmin = 0\nmax = 2\n"
        '[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 50'
    )
    assert objects(built)["scaledobject.yaml"]["spec"]["minReplicaCount"] == 1


def test_queue_alone_leaves_no_autoscaler() -> None:
    built = build(
        spec_of('[replicas]\nmin = 1\nmax = 3\n[[autoscale.metrics]]\nmetric = "queue"\ntarget = 2')
    )
    objs = objects(built)
    assert set(objs) == {"deployment.yaml", "service.yaml"}
    assert {"autoscale.metrics[0]", "replicas.max"} <= set(fields(built))


def test_service_ports_h2c_and_scrape_ports() -> None:
    spec = spec_of(
        '[[metrics.scrape]]\nport = 8002\npath = "/m"\n[[metrics.scrape]]\nport = 8000',
        endpoint='upstream_protocol = "h2c"',
    )
    built = build(spec)
    objs = objects(built)
    (port,) = objs["service.yaml"]["spec"]["ports"]
    assert port == {
        "name": "http",
        "port": 18000,
        "targetPort": 8000,
        "protocol": "TCP",
        "appProtocol": "kubernetes.io/h2c",
    }
    assert objs["service.yaml"]["spec"]["type"] == "ClusterIP"
    c = container(objs)
    assert c["ports"][1] == {"name": "metrics-0", "containerPort": 8002, "protocol": "TCP"}
    assert len(c["ports"]) == 2
    notes = objs["deployment.yaml"]["spec"]["template"]["metadata"]["annotations"]
    assert (
        notes["prometheus.io/scrape"],
        notes["prometheus.io/port"],
        notes["prometheus.io/path"],
    ) == ("true", "8002", "/m")
    assert "metrics.scrape[1]" in fields(built)


def test_mounts_volume_bind_model_git() -> None:
    tables = (
        "[replicas]\nmin = 1\nmax = 2\n"
        '[[mounts]]\ntype = "volume"\nsource = "Cache_1"\ntarget = "/cache"\nread_only = false\n'
        '[[mounts]]\ntype = "bind"\nsource = "/srv/models"\ntarget = "/models"\n'
        '[[mounts]]\ntype = "model"\nsource = "org/llama"\n'
        '[[mounts]]\ntype = "git"\nsource = "https://example.com/r.git"\ntarget = "/code"\n'
        'ref = "v1"\ncredentials = { secret = "git-token" }\n'
        '[[mounts]]\ntype = "git"\nsource = "git@example.com:r.git"\ntarget = "/code2"\n'
        'credentials_file = "/etc/berth/credentials/key"\n'
    )
    built = build(spec_of(tables))
    objs = objects(built)
    pod = objs["deployment.yaml"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["volume-0"]["persistentVolumeClaim"] == {"claimName": "cache-1"}
    assert volumes["bind-1"]["hostPath"] == {"path": "/srv/models"}  # no type: no check
    assert volumes["model-2"]["persistentVolumeClaim"] == {"claimName": "berth-models"}
    assert volumes["git-3"] == {"name": "git-3", "emptyDir": {}}
    assert volumes["git-3-credentials"]["secret"] == {
        "secretName": "git-token",
        "defaultMode": 0o400,
    }
    assert volumes["git-4-credentials"]["secret"]["secretName"] == "app-git-4"
    mounts = {m["name"]: m for m in container(objs)["volumeMounts"]}
    assert mounts["volume-0"] == {"name": "volume-0", "mountPath": "/cache"}
    assert mounts["bind-1"]["readOnly"] is True
    assert mounts["model-2"] == {
        "name": "model-2",
        "mountPath": "/models/org/llama",
        "readOnly": True,
        "subPath": "org/llama",
    }
    assert mounts["git-3"]["mountPath"] == "/code"
    init = {c["name"]: c for c in pod["initContainers"]}
    https = init["git-3"]
    assert https["command"][-2:] == ["https://example.com/r.git", "v1"]
    assert {"name": "BERTH_GIT_CREDENTIALS", "value": "/berth/git-credentials/value"} in https[
        "env"
    ]
    ssh_env = {e["name"]: e["value"] for e in init["git-4"]["env"]}
    assert "-i /berth/git-credentials/value" in ssh_env["GIT_SSH_COMMAND"]
    assert init["git-4"]["command"][-1] == ""
    pvc = objs["pvc-cache-1.yaml"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "pvc-berth-models.yaml" in objs
    steps = "\n".join(built.apply_steps)
    assert "kubectl create secret generic git-token" in steps
    assert (
        "kubectl create secret generic app-git-4 --from-file=value=/etc/berth/credentials/key"
        in steps
    )
    assert any("10Gi placeholder" in n for n in built.notes)


def test_registry_makes_image_pull_secrets() -> None:
    built = build(spec_of('[registry]\nusername = "bot"\npassword = { secret = "reg-pass" }'))
    pod = objects(built)["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "app-registry"}]
    assert built.apply_steps[0].endswith(
        "| kubectl create secret generic app-registry --type=kubernetes.io/dockerconfigjson "
        "--from-file=.dockerconfigjson=/dev/stdin"
    )
    assert '"$(cat /var/lib/berth/secrets/reg-pass)"' in built.apply_steps[0]
    built = build(spec_of('[registry]\nauth_file = "/etc/berth/credentials/auth.json"'))
    assert built.apply_steps[0] == (
        "kubectl create secret generic app-registry --type=kubernetes.io/dockerconfigjson "
        "--from-file=.dockerconfigjson=/etc/berth/credentials/auth.json"
    )


def test_what_kubernetes_cannot_express_is_left_out() -> None:
    spec = spec_of('[resources]\nipc = "shareable"\n[resources.ulimits]\nnofile = 65536')
    built = build(spec)
    assert {"resources.ipc", "resources.ulimits", "update.drain_timeout"} <= set(fields(built))
    objects(built)


@pytest.mark.parametrize("kind", ["startup", "liveness"])
def test_the_parser_already_holds_success_threshold_to_one_where_kubernetes_does(
    kind: str,
) -> None:
    # The export writes successThreshold as given, with no LeftOut: this is why it may.
    with pytest.raises(SpecError, match=f"health.{kind}.success_threshold"):
        spec_of(f'[health.{kind}]\npath = "/h"\nsuccess_threshold = 2')


def test_the_pod_matcher_reads_this_deployments_pods_only() -> None:
    triggers, built = _triggers(
        "[replicas]\nmin = 1\nmax = 4\n[[metrics.scrape]]\nport = 8000\n"
        '[[autoscale.metrics]]\nmetric = "prometheus"\nquery = "q"\ntarget = 4'
    )
    query = triggers[0]["metadata"]["query"]
    (pattern,) = re.findall(r'pod=~"([^"]+)"', query)
    pods = re.compile(pattern)  # PromQL anchors a regex match at both ends
    assert pods.fullmatch("app-7d4f8b9c6-x2k9q")  # NAME-<ReplicaSet hash>-<suffix>
    assert not pods.fullmatch("app-embed-7d4f8b9c6-x2k9q")  # another deployment's pod
    comments = next(f.text for f in built.files if f.name == "scaledobject.yaml")
    assert 'pod=~"NAME-[a-z0-9]+-[a-z0-9]+" (the ReplicaSet\'s hash' in comments


def test_the_update_reasons_say_what_berth_does_by_default_and_what_to_write() -> None:
    built = build(spec_of("[resources]\ngpus = 1"))
    reasons = {item.field: item.reason for item in built.left_out}
    assert reasons["update.drain_timeout"].startswith(
        "berth drains a leaving replica for 30s by default before SIGTERM; "
    )
    assert reasons["update.progress_deadline"].startswith(
        "berth rolls back a rollout with no progress for 10m by default: "
    )
    strategy = reasons["update.strategy"]
    assert "write maxSurge: 0 and maxUnavailable: 1 in the Deployment's" in strategy
    built = build(spec_of('[update]\ndrain_timeout = "2m"\nprogress_deadline = "20m"'))
    reasons = {item.field: item.reason for item in built.left_out}
    assert reasons["update.drain_timeout"].startswith(
        "berth drains a leaving replica for 2m before"
    )
    assert "for 20m: " in reasons["update.progress_deadline"]


def test_the_auth_reason_says_it_once() -> None:
    built = build(spec_of('[endpoint.auth]\napi_keys = [{ secret = "ci" }]'))
    (reason,) = [i.reason for i in built.left_out if i.field == "endpoint.auth.api_keys"]
    assert reason.count("in front") == 1


def test_an_auth_table_with_no_keys_is_still_named() -> None:
    # berth: only `berth keys create` keys pass; every other request gets 401.
    built = build(spec_of("[endpoint.auth]"))
    assert "endpoint.auth" in fields(built)
    built = build(spec_of('[endpoint.auth]\napi_keys = [{ secret = "ci" }]\nforward_auth = true'))
    assert {"endpoint.auth", "endpoint.auth.api_keys", "endpoint.auth.forward_auth"} <= set(
        fields(built)
    )
    assert "endpoint.auth" not in fields(build(spec_of("")))


def test_a_cold_start_timeout_is_named_unless_default() -> None:
    assert "endpoint.cold_start_timeout" not in fields(build(spec_of("")))
    built = build(spec_of(endpoint='cold_start_timeout = "20m"'))
    (reason,) = [i.reason for i in built.left_out if i.field == "endpoint.cold_start_timeout"]
    assert "1200s" in reason and "nothing here holds" in reason


def test_git_and_model_mounts_are_read_only_whatever_read_only_says() -> None:
    # berthd mounts them read-only always (daemon/integrations/mounts.py)
    tables = (
        '[[mounts]]\ntype = "model"\nsource = "org/llama"\nread_only = false\n'
        '[[mounts]]\ntype = "git"\nsource = "https://example.com/r.git"\ntarget = "/code"\n'
        "read_only = false\n"
    )
    objs = objects(build(spec_of(tables)))
    mounts = {m["name"]: m for m in container(objs)["volumeMounts"]}
    assert mounts["model-0"]["readOnly"] is True
    assert mounts["git-1"]["readOnly"] is True


def test_a_bound_file_has_no_hostpath_type() -> None:
    tables = '[[mounts]]\ntype = "bind"\nsource = "/srv/cfg.json"\ntarget = "/etc/cfg.json"\n'
    built = build(spec_of(tables))
    pod = objects(built)["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "bind-0", "hostPath": {"path": "/srv/cfg.json"}}]
    text = next(f.text for f in built.files if f.name == "deployment.yaml")
    assert "that file or directory must exist" in text


@pytest.mark.parametrize("most", [1, 3])
def test_the_shared_model_claim_is_the_same_for_every_export(most: int) -> None:
    # accessModes are immutable: a second export must not ask another mode or relabel it
    tables = f'[replicas]\nmin = 1\nmax = {most}\n[[mounts]]\ntype = "model"\nsource = "m"\n'
    pvc = objects(build(spec_of(tables)))["pvc-berth-models.yaml"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"] == {
        "name": "berth-models",
        "labels": {"app.kubernetes.io/part-of": "berth-export"},
    }


def _run_step(step: str, tmp: Path) -> str:
    """`step` in bash with kubectl a function that prints its stdin (and its argv to a file)."""
    script = f'kubectl() {{ printf "%s\\n" "$@" > {tmp}/argv; cat; }}\n{step}\n'
    assert subprocess.run(["bash", "-n", "-c", script], check=False).returncode == 0
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout


def test_the_registry_password_reaches_kubectl_on_stdin_only(tmp_path: Path) -> None:
    password = "p'a$s\"w `x` \\ word"
    path = tmp_path / "pass word's"
    path.write_text(password + "\n")
    built = build(spec_of(f'[registry]\nusername = "bot"\npassword_file = "{path}"'))
    step = built.apply_steps[0]
    assert "--docker-password" not in step
    config = json.loads(_run_step(step, tmp_path))
    auth = base64.b64decode(config["auths"]["ghcr.io"]["auth"]).decode()
    assert auth == f"bot:{password}"
    argv = (tmp_path / "argv").read_text().split("\n")
    assert argv[:4] == ["create", "secret", "generic", "app-registry"]
    assert "--from-file=.dockerconfigjson=/dev/stdin" in argv
    assert password not in (tmp_path / "argv").read_text()


def test_the_apply_steps_quote_every_value(tmp_path: Path) -> None:
    tables = (
        '[env]\nA = { secret = "s_1" }\n'
        '[[mounts]]\ntype = "git"\nsource = "https://example.com/r.git"\ntarget = "/c"\n'
        f'credentials_file = "{tmp_path}/key; rm -rf x"\n'
    )
    built = build(spec_of(tables))
    lines = "\n".join(built.apply_steps)
    assert "--from-file=value=/var/lib/berth/secrets/s_1\n" in lines
    (git,) = [step for step in built.apply_steps if "app-git-0" in step]
    assert shlex.split(git)[-1] == f"--from-file=value={tmp_path}/key; rm -rf x"
    assert f"--from-file='value={tmp_path}/key; rm -rf x'" in lines


_CONCURRENCY = (
    '[replicas]\nmin = 1\nmax = 4\n[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 2'
)


def test_a_name_starting_with_a_digit_names_a_service_that_starts_with_a_letter() -> None:
    # berth allows "1chat"; a Service's name is a DNS-1035 label (the API server refuses it)
    built = kubernetes.build(export_specs.spec_of(_CONCURRENCY, name="1chat"), Origin("s" * 64))
    objs = objects(built)
    assert objs["service.yaml"]["metadata"]["name"] == "d-1chat"
    assert objs["deployment.yaml"]["metadata"]["name"] == "1chat"
    assert objs["service.yaml"]["spec"]["selector"] == {"app.kubernetes.io/name": "1chat"}
    query = objs["scaledobject.yaml"]["spec"]["triggers"][0]["metadata"]["query"]
    assert 'exported_service="d-1chat"' in query
    assert any("'d-1chat'" in n for n in built.notes)
    long = "9" + "a" * 62
    service = objects(kubernetes.build(export_specs.spec_of(name=long), Origin("s" * 64)))
    assert service["service.yaml"]["metadata"]["name"] == ("d-" + long)[:63]


@pytest.mark.parametrize("length", [46, 47, 57, 63])
def test_the_pod_matcher_of_a_long_name_matches_its_pods(length: int) -> None:
    name = "a" * (length - 1) + "b"
    built = kubernetes.build(
        export_specs.spec_of(
            _CONCURRENCY.replace("concurrency", "gpu_utilization") + "\n[resources]\ngpus = 1",
            name=name,
        ),
        Origin("s" * 64),
    )
    query = objects(built)["scaledobject.yaml"]["spec"]["triggers"][0]["metadata"]["query"]
    (pattern,) = re.findall(r'pod=~"([^"]+)"', query)
    for rs_hash in ("7d4f8b9c6", "5b9d8f7c4a"):
        # the pod's name: generateName NAME-HASH- cut at 58, then 5 random characters
        pod = f"{name}-{rs_hash}-"[:58] + "x2k9q"
        assert re.fullmatch(pattern, pod), (pattern, pod)
    if length <= 46:
        assert not re.fullmatch(pattern, f"{name}-embed-7d4f8b9c6-x2k9q")


def test_a_probe_header_kubernetes_refuses_is_left_out() -> None:
    tables = '[health.readiness]\npath = "/r"\nheaders = { X_Token = "a", "X.Y" = "b", X-Ok = "c" }'
    built = build(spec_of(tables))
    probe = container(objects(built))["readinessProbe"]["httpGet"]
    assert probe["httpHeaders"] == [{"name": "X-Ok", "value": "c"}]
    assert {"health.readiness.headers.X_Token", "health.readiness.headers.X.Y"} <= set(
        fields(built)
    )


@pytest.mark.parametrize(
    "metrics",
    ["", '[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 70\n'],
    ids=["no-metric", "cpu-only"],
)
def test_min_zero_that_cannot_scale_to_zero_is_said(metrics: str) -> None:
    tables = '[resources]\ncpus = 1\n[replicas]\nmin = 0\nmax = 3\nscale_to_zero_after = "5m"\n'
    built = build(spec_of(tables + metrics))
    assert {"replicas.min", "replicas.scale_to_zero_after"} <= set(fields(built))


def test_a_file_git_source_is_left_out() -> None:
    tables = '[[mounts]]\ntype = "git"\nsource = "file:///srv/repo.git"\ntarget = "/code"\n'
    built = build(spec_of(tables))
    assert "mounts[0].source" in fields(built)
    pod = objects(built)["deployment.yaml"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod  # it could not clone: the pod would never start
    assert pod["volumes"] == [{"name": "git-0", "emptyDir": {}}]
