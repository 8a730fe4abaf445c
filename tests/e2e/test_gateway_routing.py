"""End to end, the gateway's routes follow the deployments: a real berthd whose berthd.toml
sets `[gateway] listen` on a free 127.0.0.1 port, real Podman, the echo image (busybox
httpd: it has no OpenAI routes, so a POST that reaches it gets busybox's own 501 page, not
the gateway's JSON `model_not_found`, and its access log shows the request).

One deployment with `[gateway] models`: a POST /v1/chat/completions for its alias through
the gateway reaches its replica; `berth gateway --json` lists it (name, alias, loaded, a
ready replica, the request counted) as /metrics does (berth_gateway_requests_total);
`berth status` shows the gateway's URL; a second deployment claiming the
same model is refused at apply (and at `--dry-run`) naming `gateway.models[1]` and the
first deployment; an update that drops the alias unroutes it at once; a delete removes the
route (404 in OpenAI's shape). And under `berthd --supervise`, the gateway's listener kept
in the fd store (`gateway`) across kill -9: a request sent right after a kill waits in its
backlog and is answered by the replica. The openai SDK's acceptance:
tests/e2e/test_berthd_gateway.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.restarts import children_running, kill_now, supervised_child
from tests.specs import echo_spec

pytestmark = pytest.mark.podman

READY_TIMEOUT = 60.0


def routed_spec(image: str, port: int, models: list[str], name: str = "echo") -> str:
    gateway = f"[gateway]\nmodels = {json.dumps(models)}\n"
    return echo_spec(name, image, port, count=1, extra=gateway)


def chat(base: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10.0)


def gateway_samples(url: str) -> dict[tuple[str, str, str], float]:
    """berthd's /metrics, the berth_gateway_* samples by (name, model, code)."""
    text = httpx.get(url, timeout=10.0).text
    return {
        (s.name, s.labels.get("model", ""), s.labels.get("code", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("berth_gateway_") and "quantile" not in s.labels
    }


def model_not_found(response: httpx.Response) -> bool:
    if response.status_code != 404 or "json" not in response.headers.get("content-type", ""):
        return False
    return bool(response.json().get("error", {}).get("code") == "model_not_found")


def test_routes_follow_apply_update_and_delete(
    berthd_factory: Callable[..., Berthd],
    echo_image: str,
    tmp_path: Path,
    free_port: Callable[[], int],
) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "berthd.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nmax_body = "1Mi"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    )
    daemon = berthd_factory(extra_args=["--config", str(config)])
    daemon.start()
    base = f"http://127.0.0.1:{port}"
    assert daemon.json("status")["gateway"] == f"{base}/v1"
    assert model_not_found(chat(base, "echo-model"))  # nothing routed yet

    spec = tmp_path / "echo.toml"
    spec.write_text(routed_spec(echo_image, free_port(), ["echo-model", "echo-alias"]))
    daemon.berth("apply", str(spec), "--wait", "--timeout", str(READY_TIMEOUT))

    def listed() -> dict[str, object]:
        models: list[dict[str, object]] = daemon.json("gateway")["models"]
        assert [m["deployment"] for m in models] == ["echo"], models
        return models[0]

    wait_until("echo to be routed and loaded", lambda: bool(listed()["loaded"]), READY_TIMEOUT)
    model = listed()
    assert (model["name"], model["aliases"], model["routed"], model["ready"]) == (
        "echo-model",
        ["echo-alias"],
        True,
        1,
    )

    # Through the gateway to the replica: busybox's own answer to a POST outside its
    # cgi-bin (501, an HTML page), and its access log.
    answer = chat(base, "echo-alias")
    assert answer.status_code == 501 and "501 Not Implemented" in answer.text, answer.text
    wait_until(
        "the replica's log to show the request",
        lambda: "/v1/chat/completions" in daemon.berth("logs", "echo").stdout,
        10.0,
    )
    model = listed()
    assert model["idle_s"] is not None  # a request reached a replica
    assert model["requests"] == 1 and model["status"]["s5xx"] == 1, model  # its 501
    samples = gateway_samples(f"http://127.0.0.1:{metrics_port}/metrics")
    assert samples[("berth_gateway_requests_total", "echo-model", "5xx")] == 1, samples
    assert samples[("berth_gateway_requests_total", "echo-model", "2xx")] == 0, samples
    assert samples[("berth_gateway_model_loaded", "echo-model", "")] == 1, samples
    assert samples[("berth_gateway_cold_starts_total", "echo-model", "")] == 0, samples
    assert samples[("berth_gateway_refused_total", "", "404")] == 1, samples  # before routed
    shown = daemon.berth("gateway").stdout
    assert "echo-model" in shown and "echo-alias" in shown and f"{base}/v1" in shown, shown

    # A second deployment claiming a name the first serves: refused, the store untouched.
    other = tmp_path / "other.toml"
    other.write_text(routed_spec(echo_image, free_port(), ["mine", "echo-alias"], "other"))
    for args in (("apply", "--dry-run", str(other)), ("apply", str(other))):
        refused = daemon.berth(*args, check=False)
        assert refused.returncode != 0, refused.stdout
        said = refused.stdout + refused.stderr
        assert 'gateway.models[1]: "echo-alias" is served by deployment "echo"' in said, said
    assert [d["name"] for d in daemon.json("ls")] == ["echo"]

    # An update that drops the alias: it is no longer routed once apply has answered.
    spec.write_text(routed_spec(echo_image, free_port(), ["echo-model"]))
    daemon.berth("apply", str(spec))
    assert model_not_found(chat(base, "echo-alias"))
    wait_until(
        "echo-model to be routed on the new endpoint",
        lambda: not model_not_found(chat(base, "echo-model")),
        READY_TIMEOUT,
    )

    # A delete removes the route.
    daemon.berth("rm", "echo")
    gone = chat(base, "echo-model")
    assert model_not_found(gone), gone.text
    assert daemon.json("gateway")["models"] == []


@pytest.mark.slow
def test_the_gateway_listener_outlives_a_killed_berthd(
    berthd_factory: Callable[..., Berthd],
    echo_image: str,
    tmp_path: Path,
    free_port: Callable[[], int],
) -> None:
    """`berthd --supervise`, 3 x kill -9 of its child: a request sent through the gateway
    right after each kill waits in the kept listener's backlog and is answered by the
    replica (busybox's 501), never refused and never the empty table's 404."""
    port = free_port()
    config = tmp_path / "berthd.toml"
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:{port}"\n')
    daemon = berthd_factory(extra_args=["--config", str(config), "--supervise"])
    try:
        daemon.start()
        spec = tmp_path / "echo.toml"
        spec.write_text(routed_spec(echo_image, free_port(), ["echo-model"]))
        daemon.berth("apply", str(spec), "--wait", "--timeout", str(READY_TIMEOUT))
        base = f"http://127.0.0.1:{port}"
        wait_until(
            "echo-model to be answered by its replica",
            lambda: chat(base, "echo-model").status_code == 501,
            READY_TIMEOUT,
        )
        for _ in range(3):
            child = supervised_child(daemon)
            kill_now(child)
            body = {"model": "echo-model", "messages": []}
            answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60.0)
            assert answer.status_code == 501, answer.text  # the replica's, not a 404
            supervised_child(daemon, other_than=child)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            children = children_running(daemon.proc.pid, b"daemon.main")
            daemon.send(signal.SIGTERM)
            try:
                daemon.proc.wait(timeout=60)
            finally:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
