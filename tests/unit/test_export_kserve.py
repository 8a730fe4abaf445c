"""`berth export --to kserve`: the InferenceService valid against KServe v0.20.0's CRD (strict),
its mode, scaling, concurrency, timeout and predictor as docs/export.md's table says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.canonical import spec_id, template_id
from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.export import kserve, readme
from daemon.export.bundle import Built, Origin, Target
from tests import export_specs
from tests.export_schemas import SchemaError, validate
from tests.export_specs import EXAMPLES, objects


def spec_of(tables: str = "", top: str = "", endpoint: str = "") -> DeploymentSpec:
    return export_specs.spec_of(tables, top, endpoint, name="llm", port=8080)


def build(spec: DeploymentSpec) -> Built:
    return kserve.build(spec, Origin(spec_id(spec), deployment_id="d-9", revision=2))


def predictor(built: Built) -> dict[str, Any]:
    isvc = objects(built)["inferenceservice.yaml"]
    predictor: dict[str, Any] = isvc["spec"]["predictor"]
    return predictor


def isvc_annotations(built: Built) -> dict[str, str]:
    annotations: dict[str, str] = objects(built)["inferenceservice.yaml"]["metadata"]["annotations"]
    return annotations


def fields(built: Built) -> list[str]:
    return [item.field for item in built.left_out]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_exports_a_valid_inference_service(path: Path) -> None:
    spec = parse_spec(path.read_text(), source=str(path))
    built = build(spec)
    objs = objects(built)
    isvc = objs["inferenceservice.yaml"]
    assert isvc["metadata"]["name"] == spec.name
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    # KServe copies these onto the pods: the template id only (re-exports restart nothing).
    assert isvc["metadata"]["annotations"]["berth.io/template-id"] == template_id(spec)
    assert "berth.io/deployment-id" not in isvc["metadata"]["annotations"]
    assert built.files[0].text.startswith(
        f"# Exported by berth export from revision 2 of deployment id d-9 (spec_id {spec_id(spec)})"
    )
    assert "needs KServe 0.16 or later (the Standard mode's name, kserve#4608)" in built.notes
    (c,) = isvc["spec"]["predictor"]["containers"]
    assert c["name"] == "kserve-container" and c["image"] == spec.image
    for item in built.left_out:
        assert item.line() in built.files[0].text
    assert build(spec) == built


def test_an_unknown_predictor_field_is_refused() -> None:
    isvc = objects(build(spec_of()))["inferenceservice.yaml"]
    isvc["spec"]["predictor"]["replicas"] = 2
    with pytest.raises(SchemaError, match="replicas"):
        validate(isvc)
    del isvc["spec"]["predictor"]["replicas"]
    isvc["spec"]["predictor"]["containers"][0]["startupprobe"] = {}
    with pytest.raises(SchemaError, match="startupprobe"):
        validate(isvc)


def test_standard_mode_with_one_cpu_target_uses_scale_metric() -> None:
    built = build(
        spec_of(
            "[resources]\ncpus = 2\n[replicas]\nmin = 1\nmax = 4\n[autoscale]\n"
            'scale_down_delay = "10m"\n[[autoscale.metrics]]\nmetric = "cpu"\ntarget = 60\n'
            '[update]\nstrategy = "replace"'
        )
    )
    p = predictor(built)
    assert (p["minReplicas"], p["maxReplicas"]) == (1, 4)
    assert (p["scaleMetric"], p["scaleTarget"]) == ("cpu", 60)
    assert p["autoScaling"] == {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}}
    assert p["deploymentStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    assert isvc_annotations(built)["serving.kserve.io/autoscalerClass"] == "hpa"


def test_standard_mode_keda_class_for_a_scraped_gauge() -> None:
    built = build(
        spec_of(
            "[replicas]\nmin = 1\nmax = 3\n[[metrics.scrape]]\nport = 8080\n"
            '[[autoscale.metrics]]\nmetric = "prometheus"\nquery = "queue_size"\ntarget = 4\n'
            '[[autoscale.metrics]]\nmetric = "request_duration"\ntarget = "1s"\n'
            '[[autoscale.metrics]]\nmetric = "memory"\ntarget = 70\n'
            '[resources]\nmemory = "1Gi"'
        )
    )
    p = predictor(built)
    assert "scaleMetric" not in p
    assert p["autoScaling"]["metrics"] == [
        {
            "type": "External",
            "external": {
                "metric": {
                    "backend": "prometheus",
                    "serverAddress": "http://prometheus.monitoring.svc:9090",
                    # KServe's Deployment is llm-predictor: its pods, no other's
                    "query": 'sum(queue_size{pod=~"llm-predictor-[a-z0-9]+-[a-z0-9]+"})',
                },
                "target": {"type": "Value", "value": "4"},
            },
        },
        {
            "type": "Resource",
            "resource": {
                "name": "memory",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        },
    ]
    assert isvc_annotations(built)["serving.kserve.io/autoscalerClass"] == "keda"
    assert "autoscale.metrics[1]" in fields(built)  # request_duration: no metricType
    assert p["annotations"]["prometheus.io/port"] == "8080"


def test_knative_mode_for_min_zero() -> None:
    built = build(
        spec_of(
            '[replicas]\nmin = 0\nmax = 2\nscale_to_zero_after = "15m"\n'
            '[autoscale]\nscale_down_delay = "2h"\n'
            '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 3\n'
            '[[autoscale.metrics]]\nmetric = "request_duration"\ntarget = "1s"\n'
            "[[metrics.scrape]]\nport = 9100\n"
            '[[mounts]]\ntype = "bind"\nsource = "/srv/m"\ntarget = "/m"\n',
            endpoint='max_concurrency = 8\nread_timeout = "10m"\nupstream_protocol = "h2c"',
        )
    )
    annotations = isvc_annotations(built)
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "3600s"
    assert annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "900s"
    p = predictor(built)
    assert (p["minReplicas"], p["maxReplicas"]) == (0, 2)
    assert (p["scaleMetric"], p["scaleTarget"]) == ("concurrency", 3)
    assert p["containerConcurrency"] == 8
    assert p["timeout"] == 600
    (c,) = p["containers"]
    assert c["ports"] == [{"name": "h2c", "containerPort": 8080, "protocol": "TCP"}]
    f = fields(built)
    assert "endpoint.max_concurrency" not in f  # carried
    assert {"autoscale.metrics[1]", "autoscale.scale_down_delay", "metrics.scrape"} <= set(f)
    assert any("kubernetes.podspec-hostpath" in n for n in built.notes)


def test_standard_mode_leaves_max_concurrency_out_and_carries_the_timeout() -> None:
    built = build(spec_of(endpoint='max_concurrency = 8\nread_timeout = "90s"'))
    p = predictor(built)
    assert "containerConcurrency" not in p
    assert p["timeout"] == 90
    assert "endpoint.max_concurrency" in fields(built)
    assert "endpoint.read_timeout" not in fields(built)
    assert p["containers"][0]["ports"][0]["name"] == "http1"


def test_disabled_is_stopped_and_fixed_count_is_min_max() -> None:
    built = build(spec_of("[replicas]\ncount = 2", top="enabled = false"))
    assert isvc_annotations(built)["serving.kserve.io/stop"] == "true"
    p = predictor(built)
    assert (p["minReplicas"], p["maxReplicas"]) == (2, 2)
    assert "autoScaling" not in p
    p = predictor(build(spec_of("[replicas]\ncount = 2")))
    assert (p["minReplicas"], p["maxReplicas"]) == (2, 2)


def test_pod_parts_carry_to_the_predictor() -> None:
    built = build(
        spec_of(
            '[env]\nK = { secret = "k" }\n[resources]\ngpus = 1\nshm_size = "1Gi"\n'
            '[[mounts]]\ntype = "volume"\nsource = "data"\ntarget = "/data"\n'
            '[[mounts]]\ntype = "git"\nsource = "https://example.com/r.git"\ntarget = "/r"\n'
            '[registry]\nauth_file = "/etc/berth/credentials/a.json"\n'
            '[health.startup]\npath = "/h"\nperiod = "5s"\ntimeout_total = "30m"'
        )
    )
    objs = objects(built)
    p = objs["inferenceservice.yaml"]["spec"]["predictor"]
    assert p["imagePullSecrets"] == [{"name": "llm-registry"}]
    assert [c["name"] for c in p["initContainers"]] == ["git-1"]
    assert {v["name"] for v in p["volumes"]} == {"shm", "volume-0", "git-1"}
    c = p["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["startupProbe"]["failureThreshold"] == 360
    assert c["env"] == [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "k", "key": "value"}}}]
    assert "pvc-data.yaml" in objs
    assert built.apply_steps[-1] == "kubectl apply -f DIR"
    assert len(built.apply_steps) == 3  # the env secret, the registry secret, then apply


KNATIVE = (
    '[replicas]\nmin = 0\nmax = 2\n[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 2\n'
)


def test_knative_mode_sets_no_grace_period() -> None:
    # Knative's PodSpec field mask refuses it ("must not set the field(s):
    # spec.template.spec.terminationGracePeriodSeconds"); it sets the revision timeout there.
    built = build(spec_of(KNATIVE, top='stop_timeout = "20s"'))
    p = predictor(built)
    assert "terminationGracePeriodSeconds" not in p and p["timeout"] == 300
    reasons = {item.field: item.reason for item in built.left_out}
    drain = reasons["update.drain_timeout"]
    assert drain.startswith(
        "berth drains a leaving replica for 30s by default before SIGTERM; Knative refuses"
    )
    assert "revision timeout (300s)" in drain and "(50s) is not used" in drain
    assert "SIGKILL comes up to 300s after SIGTERM" in reasons["stop_timeout"]
    standard = predictor(build(spec_of(top='stop_timeout = "20s"')))
    assert standard["terminationGracePeriodSeconds"] == 50  # Standard mode keeps it


def test_knative_progress_deadline_covers_the_startup_budget() -> None:
    built = build(spec_of(KNATIVE))
    assert isvc_annotations(built)["serving.kserve.io/deploymentMode"] == "Knative"
    assert isvc_annotations(built)["serving.knative.dev/progress-deadline"] == "600s"
    assert not any(f.startswith("update.") and f != "update.drain_timeout" for f in fields(built))
    assert not any("max-revision-timeout-seconds" in n for n in built.notes)
    built = build(
        spec_of(
            KNATIVE + '[health.startup]\npath = "/h"\nperiod = "10s"\ntimeout_total = "30m"',
            endpoint='read_timeout = "15m"',
        )
    )
    assert isvc_annotations(built)["serving.knative.dev/progress-deadline"] == "1800s"
    (deadline,) = [i for i in built.left_out if i.field == "update.progress_deadline"]
    assert "raised to 1800s, the startup probe's budget" in deadline.reason
    assert predictor(built)["timeout"] == 900
    (note,) = [n for n in built.notes if "max-revision-timeout-seconds" in n]
    assert "config-defaults" in note and "(600)" in note


def test_knative_names_only_the_update_fields_that_are_set() -> None:
    built = build(spec_of(KNATIVE + "[update]\nmax_surge = 2"))
    update = [f for f in fields(built) if f.startswith("update")]
    assert update == ["update.drain_timeout", "update.max_surge"]


def test_knative_lists_metrics_scrape_once() -> None:
    built = build(spec_of(KNATIVE + "[[metrics.scrape]]\nport = 9100\n"))
    assert fields(built).count("metrics.scrape") == 1
    (item,) = [i for i in built.left_out if i.field == "metrics.scrape"]
    assert "port(s) 9100 are not declared" in item.reason
    (c,) = predictor(built)["containers"]
    assert [port["containerPort"] for port in c["ports"]] == [8080]
    text = readme.render("llm", Origin("x"), Target.KSERVE, built)
    assert text.count("`metrics.scrape`") == 1
    assert "needs KServe 0.16 or later (the Knative mode's name" in text


def test_an_empty_auth_table_and_a_cold_start_timeout_are_named() -> None:
    built = build(spec_of("[endpoint.auth]", endpoint='cold_start_timeout = "20m"'))
    assert {"endpoint.auth", "endpoint.cold_start_timeout"} <= set(fields(built))
    knative = build(
        spec_of(
            '[replicas]\nmin = 0\nmax = 2\n[[autoscale.metrics]]\nmetric = "concurrency"\n'
            "target = 3",
            endpoint='cold_start_timeout = "20m"',
        )
    )
    (reason,) = [i.reason for i in knative.left_out if i.field == "endpoint.cold_start_timeout"]
    assert "Knative's activator holds it too" in reason and "(300s" in reason


def test_knative_asks_the_pvc_write_flag_only_for_a_writable_volume() -> None:
    scale = (
        '[replicas]\nmin = 0\nmax = 2\n[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 3\n'
    )
    model = '[[mounts]]\ntype = "model"\nsource = "m"\nread_only = false\n'
    built = build(spec_of(scale + model))
    (note,) = [n for n in built.notes if "config-features" in n]
    assert "persistent-volume-claim" in note and "persistent-volume-write" not in note
    volume = '[[mounts]]\ntype = "volume"\nsource = "v"\ntarget = "/v"\nread_only = false\n'
    (note,) = [n for n in build(spec_of(scale + volume)).notes if "config-features" in n]
    assert "kubernetes.podspec-persistent-volume-write" in note


_KEDA = (
    "[replicas]\nmin = 1\nmax = 4\n[[metrics.scrape]]\nport = 8000\n"
    '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 2\n'
    '[[autoscale.metrics]]\nmetric = "prometheus"\nquery = "q"\ntarget = 4\n'
)


def _isvc(name: str, tables: str = _KEDA) -> tuple[dict[str, Any], Built]:
    spec = export_specs.spec_of(tables, name=name, port=8080)
    built = kserve.build(spec, Origin(spec_id(spec)))
    return objects(built)["inferenceservice.yaml"], built


def test_a_name_starting_with_a_digit_is_mapped_and_the_queries_use_the_predictor() -> None:
    isvc, built = _isvc("1chat")
    assert isvc["metadata"]["name"] == "d-1chat"
    assert any("'d-1chat'" in n for n in built.notes)
    text = str(isvc["spec"]["predictor"])
    # KServe's Standard-mode Service (and Deployment) is NAME-predictor
    assert 'exported_service="d-1chat-predictor"' in text
    assert 'pod=~"d-1chat-predictor-[a-z0-9]+-[a-z0-9]+"' in text


def test_a_name_whose_predictor_name_is_too_long_is_said() -> None:
    _, built = _isvc("a" * 54, tables="")
    assert any("over 63 characters" in n for n in built.notes)
    _, built = _isvc("a" * 53, tables="")
    assert not any("over 63 characters" in n for n in built.notes)


def test_knative_retention_period_is_cut_to_an_hour() -> None:
    built = build(
        spec_of(
            '[replicas]\nmin = 0\nmax = 2\nscale_to_zero_after = "3h"\n'
            '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 3\n'
        )
    )
    key = "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
    assert isvc_annotations(built)[key] == "3600s"
    assert "replicas.scale_to_zero_after" in fields(built)


def test_standard_mode_with_gpus_and_no_strategy_says_the_surge_pod_waits() -> None:
    (reason,) = [
        i.reason
        for i in build(spec_of("[resources]\ngpus = 1")).left_out
        if i.field == "update.strategy"
    ]
    assert "surge pod waits Pending" in reason
    assert "the predictor's deploymentStrategy.rollingUpdate" in reason
    with_strategy = build(spec_of('[resources]\ngpus = 1\n[update]\nstrategy = "replace"'))
    assert "update.strategy" not in fields(with_strategy)
