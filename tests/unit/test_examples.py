"""Every `config/examples/*.toml` goes through the real parser (`config.parse.parse_spec`),
and the settings docs/model-servers.md explains hold in them.

This is the spec's own checks only. An apply also makes host checks, which need a running
berthd and this host (`berth apply --dry-run FILE`, tests/e2e/test_berthd_examples.py): a free
`endpoint.port`, GPUs for `resources.gpus` / `resources.gpu_memory` (none here: the GPU
examples are refused on this machine for that alone), bind mount sources under berthd's
`[mounts] allowed_roots` that exist, model store entries, registry credential files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config.canonical import spec_to_dict
from config.parse import parse_spec
from config.spec import DeploymentSpec, MetricName, Probe

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
GPU_SERVERS = ("vllm", "tgi", "llama-cpp", "triton", "ollama")
EXPECTED = {*GPU_SERVERS, "model-server", "echo"}


def example(name: str) -> DeploymentSpec:
    path = EXAMPLES / f"{name}.toml"
    return parse_spec(path.read_text(), source=str(path))


def budget(probe: Probe | None) -> float:
    assert probe is not None
    if probe.timeout_total is not None:
        return probe.timeout_total
    return probe.initial_delay + probe.failure_threshold * probe.period


def test_the_examples_are_the_ones_documented() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.toml")} == EXPECTED


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_example_parses_and_is_named_after_its_file(path: Path) -> None:
    spec = parse_spec(path.read_text(), source=str(path))
    assert spec.name == path.stem
    assert spec_to_dict(spec)["name"] == spec.name  # the canonical form can be made


def test_the_endpoint_ports_differ_so_every_example_can_run_at_once() -> None:
    ports = [example(name).endpoint.port for name in sorted(EXPECTED)]
    assert len(set(ports)) == len(ports), ports


@pytest.mark.parametrize("name", GPU_SERVERS)
def test_a_gpu_server_asks_for_a_gpu_loopback_and_a_startup_probe_on_its_own_path(
    name: str,
) -> None:
    spec = example(name)
    assert spec.resources.gpus == 1
    assert spec.endpoint.bind == "127.0.0.1"
    assert spec.health.startup is not None and spec.health.startup.path is not None
    assert spec.health.readiness is not None and spec.health.readiness.path is not None


@pytest.mark.parametrize("name", [*GPU_SERVERS, "model-server"])
def test_a_rollout_outlasts_the_startup_budget(name: str) -> None:
    """A new revision still loading at progress_deadline would be rolled back."""
    spec = example(name)
    assert spec.update.progress_deadline > budget(spec.health.startup), name


def test_vllm_has_shared_memory_its_metrics_scraped_and_scales_on_its_queue() -> None:
    spec = example("vllm")
    assert spec.resources.shm_size is not None and spec.resources.shm_size >= 1 << 30
    assert budget(spec.health.startup) >= 15 * 60  # a big model's load, and its download
    assert [(s.port, s.path) for s in spec.metrics.scrape] == [(8000, "/metrics")]
    (metric,) = spec.autoscale.metrics
    assert metric.metric is MetricName.PROMETHEUS and metric.target == 4
    assert metric.query is not None and metric.query.name == "vllm:num_requests_waiting"
    assert spec.update.drain_timeout >= 60  # long generations


def test_tgi_scales_on_its_queue_size() -> None:
    spec = example("tgi")
    assert spec.resources.shm_size == 1 << 30  # TGI's README: --shm-size 1g
    (metric,) = spec.autoscale.metrics
    assert metric.query is not None and metric.query.name == "tgi_queue_size"


def test_triton_starts_on_live_is_ready_per_model_and_is_scraped_on_its_metrics_port() -> None:
    spec = example("triton")
    assert spec.health.startup is not None and spec.health.startup.path == "/v2/health/live"
    readiness = spec.health.readiness
    assert readiness is not None and readiness.path == "/v2/models/densenet_onnx/ready"
    assert [(s.port, s.path) for s in spec.metrics.scrape] == [(8002, "/metrics")]
    assert spec.resources.shm_size == 1 << 30


def test_the_local_model_server_waits_for_its_load_and_scales_on_its_queue() -> None:
    spec = example("model-server")
    assert spec.image == "localhost/berth-model-server:1"
    assert spec.resources.gpus == 0 and spec.resources.gpu_memory is None  # runs here
    assert budget(spec.health.startup) > int(spec.env["LOAD_SECONDS"])
    (metric,) = spec.autoscale.metrics
    assert metric.query is not None and metric.query.name == "model_queue_size"
