"""The pod both Kubernetes targets share (`kube_pod`, `kube_mounts`), on both: a VRAM share
is one GPU, `$` reaches the container as written, every mapped name is unique, the pod
template's annotation changes only with the containers, and the apply steps fill the model
claim before the pods start and name where berth's secrets are."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import yaml

from config.canonical import spec_id, template_id
from config.spec import DeploymentSpec
from daemon.export import kserve, kube_mounts, kubernetes, readme
from daemon.export.bundle import Built, Origin, Target
from daemon.export.targets import export
from tests import export_specs
from tests.export_schemas import validate
from tests.export_specs import objects, spec_of

Build = Callable[[DeploymentSpec, Origin], Built]
TARGETS = pytest.mark.parametrize(
    "build", [kubernetes.build, kserve.build], ids=["kubernetes", "kserve"]
)


def origin(spec: DeploymentSpec) -> Origin:
    return Origin(spec_id(spec), deployment_id="d-1", revision=7)


def pod_of(built: Built) -> dict[str, Any]:
    """The pod spec, whichever target."""
    objs = objects(built)
    if "deployment.yaml" in objs:
        pod: dict[str, Any] = objs["deployment.yaml"]["spec"]["template"]["spec"]
        return pod
    predictor: dict[str, Any] = objs["inferenceservice.yaml"]["spec"]["predictor"]
    return predictor


def pod_template_annotations(built: Built) -> dict[str, str]:
    """What the pods carry: the Deployment's template, or what KServe copies onto them (the
    InferenceService's annotations and the predictor's)."""
    objs = objects(built)
    if "deployment.yaml" in objs:
        template: dict[str, str] = objs["deployment.yaml"]["spec"]["template"]["metadata"][
            "annotations"
        ]
        return template
    isvc = objs["inferenceservice.yaml"]
    return {**isvc["metadata"]["annotations"], **isvc["spec"]["predictor"].get("annotations", {})}


@TARGETS
def test_a_vram_share_is_one_whole_gpu(build: Build) -> None:
    spec = spec_of('[resources]\ngpu_memory = "20Gi"')
    built = build(spec, origin(spec))
    (container,) = pod_of(built)["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    (item,) = [i for i in built.left_out if i.field == "resources.gpu_memory"]
    assert "not expressed" in item.reason and "one whole GPU" in item.reason
    assert "DRA" in item.reason
    assert any("NVIDIA device plugin" in n for n in built.notes)


@TARGETS
def test_a_dollar_reaches_the_container_as_written(build: Build) -> None:
    spec = spec_of(
        '[env]\nGREETING = "echo $(LOG_LEVEL) $$ 100%"\n'
        '[[mounts]]\ntype = "git"\nsource = "https://example.com/$r.git"\ntarget = "/r"',
        top='command = ["sh", "-c", "echo $(LOG_LEVEL) $$ 100%"]',
    )
    built = build(spec, origin(spec))
    pod = pod_of(built)
    (container,) = pod["containers"]
    # Kubernetes reduces $$ to $ and leaves no $(VAR) to expand: the text berth passed.
    assert container["args"] == ["sh", "-c", "echo $$(LOG_LEVEL) $$$$ 100%"]
    assert container["env"] == [{"name": "GREETING", "value": "echo $$(LOG_LEVEL) $$$$ 100%"}]
    (init,) = pod["initContainers"]
    assert init["command"][-2:] == ["https://example.com/$$r.git", ""]
    script = init["command"][2]
    assert "$" not in script.replace("$$", "")  # every $ of the script doubled
    assert script.replace("$$", "$").startswith('set -eu; url="$1"')
    assert "every $ in args and env values is written $$" in built.files[0].text


@TARGETS
def test_volume_names_that_map_alike_get_their_own_claims(build: Build) -> None:
    spec = spec_of(
        '[[mounts]]\ntype = "volume"\nsource = "cache_a"\ntarget = "/a"\n'
        '[[mounts]]\ntype = "volume"\nsource = "cache-a"\ntarget = "/b"\n'
        '[[mounts]]\ntype = "volume"\nsource = "cache_a"\ntarget = "/c"\n'
        '[[mounts]]\ntype = "volume"\nsource = "berth-models"\ntarget = "/d"\n'
        '[[mounts]]\ntype = "model"\nsource = "org/tiny"\n'
    )
    built = build(spec, origin(spec))
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod_of(built)["volumes"]}
    assert claims == {
        "volume-0": "cache-a",
        "volume-1": "cache-a-2",
        "volume-2": "cache-a",  # the same Podman volume, the same claim
        "volume-3": "berth-models-2",  # berth-models is the model store's
        "model-4": "berth-models",
    }
    objs = objects(built)
    assert {"pvc-cache-a.yaml", "pvc-cache-a-2.yaml", "pvc-berth-models-2.yaml"} <= set(objs)
    claim_text = next(f.text for f in built.files if f.name == "pvc-cache-a-2.yaml")
    assert "'cache-a' is taken by Podman volume 'cache_a'" in claim_text
    bundle = export(spec, origin(spec), Target.KUBERNETES)  # no duplicate file: no ValueError
    assert len({f.name for f in bundle.files}) == len(bundle.files)
    assert any("cache-a-2 is Podman volume 'cache-a'" in n for n in built.notes)


@TARGETS
def test_secret_names_that_map_alike_are_not_merged(build: Build) -> None:
    spec = spec_of(
        '[env]\nA = { secret = "hf_token" }\nB = { secret = "hf-token" }\n'
        'C = { secret = "hf_token" }\nD = { secret = "app-registry" }\n'
        '[registry]\nusername = "bot"\npassword = { secret = "reg" }'
    )
    built = build(spec, origin(spec))
    pod = pod_of(built)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in pod["containers"][0]["env"]}
    assert refs == {"A": "hf-token", "B": "hf-token-2", "C": "hf-token", "D": "app-registry"}
    assert pod["imagePullSecrets"] == [{"name": "app-registry-2"}]
    steps = built.apply_steps
    assert steps[:3] == (
        "kubectl create secret generic hf-token --from-file=value=/var/lib/berth/secrets/hf_token",
        "kubectl create secret generic hf-token-2 "
        "--from-file=value=/var/lib/berth/secrets/hf-token",
        "kubectl create secret generic app-registry "
        "--from-file=value=/var/lib/berth/secrets/app-registry",
    )
    assert " | kubectl create secret generic app-registry-2 --type=" in steps[3]
    assert '"$(cat /var/lib/berth/secrets/reg)"' in steps[3]
    assert any("Secret hf-token-2 is berth's secret 'hf-token'" in n for n in built.notes)
    assert any("STATE/secrets/NAME" in n and "root only" in n for n in built.notes)


@TARGETS
def test_the_pods_restart_only_when_the_containers_change(build: Build) -> None:
    spec = spec_of("[replicas]\ncount = 2")
    berth_only = replace(spec, endpoint=replace(spec.endpoint, max_concurrency=4))
    image = replace(spec, image="ghcr.io/acme/app:2")
    first, second, third = (
        pod_template_annotations(build(s, Origin(spec_id(s), "d-1", revision=n)))
        for n, s in enumerate((spec, berth_only, image), start=1)
    )
    assert first == second  # a berth-only change: the same pods
    assert first["berth.io/template-id"] == template_id(spec)
    assert third["berth.io/template-id"] == template_id(image) != template_id(spec)
    assert not {"berth.io/spec-id", "berth.io/revision", "berth.io/deployment-id"} & set(first)
    built = build(berth_only, origin(berth_only))
    text = built.files[0].text
    assert f"spec_id {spec_id(berth_only)}" in text.splitlines()[0]


def test_the_kubernetes_objects_carry_the_spec_id() -> None:
    spec = spec_of()
    objs = objects(kubernetes.build(spec, origin(spec)))
    for obj in objs.values():
        annotations = obj["metadata"]["annotations"]
        assert annotations["berth.io/spec-id"] == spec_id(spec)
        assert (annotations["berth.io/revision"], annotations["berth.io/deployment-id"]) == (
            "7",
            "d-1",
        )


@TARGETS
def test_the_model_claim_is_filled_before_the_pods_start(build: Build) -> None:
    spec = spec_of(
        '[env]\nT = { secret = "tok" }\n'
        '[[mounts]]\ntype = "model"\nsource = "org/llama-3-8b"\n'
        '[[mounts]]\ntype = "model"\nsource = "tiny"\ntarget = "/t"\n'
    )
    built = build(spec, origin(spec))
    steps = list(built.apply_steps)
    assert steps[0].startswith("kubectl create secret generic tok ")
    assert steps[1] == "kubectl apply -f DIR/pvc-berth-models.yaml"
    fill = steps[2]
    assert fill.startswith("kubectl apply -f - <<'EOF'\n") and fill.endswith("\nEOF")
    (pod,) = yaml.safe_load_all(fill.split("\n", 1)[1].rsplit("\n", 1)[0])
    validate(pod)
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "berth-models"}
    assert steps[3] == "kubectl wait --for=condition=Ready pod/berth-models-fill --timeout=10m"
    assert steps[4][0].isupper()  # a sentence: where to run the copy
    assert steps[5:8] == [
        "tar -C /var/lib/berth/models -chf - org/llama-3-8b | "
        "kubectl exec -i berth-models-fill -- tar -C /models -xf -",
        "tar -C /var/lib/berth/models -chf - tiny | "
        "kubectl exec -i berth-models-fill -- tar -C /models -xf -",
        "kubectl delete pod berth-models-fill",
    ]
    assert steps[-1] == "kubectl apply -f DIR"
    (note,) = [n for n in built.notes if n.startswith("PersistentVolumeClaim berth-models")]
    assert "org/llama-3-8b, tiny" in note and "SOURCE" not in note
    text = readme.render(spec.name, origin(spec), Target.KUBERNETES, built)
    assert text.index("pvc-berth-models.yaml\n") < text.index("kubectl apply -f DIR\n")


_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.mark.parametrize(
    ("berth", "kube"),
    [
        ("a._b", "a.b"),
        ("data..x", "data.x"),
        ("Cache_1", "cache-1"),
        ("-x-.y_", "x.y"),
        ("a" * 252 + "._b", "a" * 252),
        ("a" * 252 + "_b", "a" * 252),
    ],
)
def test_kube_name_is_a_valid_subdomain(berth: str, kube: str) -> None:
    name = kube_mounts.kube_name(berth)
    assert name == kube
    assert _SUBDOMAIN.fullmatch(name) and len(name) <= 253


def test_secret_names_that_normalise_alike_stay_apart() -> None:
    spec = export_specs.spec_of('[env]\nA = { secret = "a.b" }\nB = { secret = "a._b" }')
    built = kubernetes.build(spec, Origin(spec_id(spec)))
    (c,) = objects(built)["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"]}
    assert refs == {"A": "a.b", "B": "a.b-2"}
