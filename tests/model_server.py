"""The model-server image (localhost/berth-model-server:1, config/examples/model-server-image)
for the tests that run it: a session fixture that builds it (import
`model_server_image_fixture` into a test module; the fixture is `model_server_image`), its V2
request, and its metrics.

The server is a KServe V2 model server whose model loads for LOAD_SECONDS from the process
start; until then its ready paths and infer answer 503 {"error": "model not ready yet"}.
It also serves OpenAI-compatible routes (openai_api.py in the image's directory:
/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health) with knobs for
tests: SERVED_MODEL_NAME, TOKEN_DELAY or a request's `berth_token_delay`, STRICT_MODEL.
Its /metrics counts every request it answered by route and code
(`model_server_requests_total`: infer, v1_chat, v1_completions, v1_embeddings, ...), so a
test can tell what reached it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO_ROOT, podman_binary

MODEL_SERVER_IMAGE = "localhost/berth-model-server:1"
BUILD_TIMEOUT = 1200.0  # fresh: a Debian rootfs, the wheels, the build (about 30 s here)

# y = W . x + b with W = (0.5, 1, 1.5, 2) and b = 1: the row (1, 2, 3, 4) gives 16.
INFER_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
INFER_ANSWER = [16.0]


@pytest.fixture(scope="session", name="model_server_image")
def model_server_image_fixture() -> str:
    """Built by scripts/build-model-server-image.sh (a no-op when up to date)."""
    podman_binary()
    script = REPO_ROOT / "scripts" / "build-model-server-image.sh"
    result = subprocess.run(
        [str(script), MODEL_SERVER_IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{script.name} failed ({result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return MODEL_SERVER_IMAGE


def requests_answered(metrics_text: str) -> dict[tuple[str, str], float]:
    """`model_server_requests_total` from the server's /metrics: {(route, code): count}."""
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "model_server_requests":
            continue
        for sample in family.samples:
            if sample.name == "model_server_requests_total":
                counts[(sample.labels["route"], sample.labels["code"])] = sample.value
    return counts


def gauge(metrics_text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and (labels is None or dict(labels) == sample.labels):
                return float(sample.value)
    return None
