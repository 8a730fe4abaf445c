"""The model-server image's OpenAI-compatible routes (config/examples/model-server-image/
openai_api.py), against a real container and the real `openai` SDK: what the gateway's
end-to-end test (tests/e2e/test_berthd_gateway.py) relies on, checked here on its own.

One container (Podman CLI, port published on 127.0.0.1), LOAD_SECONDS=3, STRICT_MODEL=1,
SERVED_MODEL_NAME=org/tiny-chat: 503 in OpenAI's shape before the load, then chat and
completions (JSON and SSE, the token count and the per-token delay), embeddings (float and
base64, deterministic, unit length), /v1/models, a 404 for another model name, and the
KServe V2 routes still answering beside them.
"""

from __future__ import annotations

import math
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.conftest import podman_binary
from tests.model_server import (
    INFER_ANSWER,
    INFER_BODY,
    model_server_image_fixture,  # noqa: F401 (the model_server_image fixture)
    requests_answered,
)

pytestmark = pytest.mark.podman

SERVED = "org/tiny-chat"
LOAD_SECONDS = 3


@pytest.fixture
def server(
    model_server_image: str, test_labels: dict[str, str], free_port: Callable[[], int]
) -> Iterator[str]:
    """The container's base URL (http://127.0.0.1:PORT), its model still loading."""
    port = free_port()
    labels = [f"--label={key}={value}" for key, value in test_labels.items()]
    subprocess.run(
        [
            podman_binary(),
            "run",
            "-d",
            f"--name=berth-test-openai-{uuid.uuid4().hex[:10]}",
            *labels,
            f"--publish=127.0.0.1:{port}:8000",
            f"--env=LOAD_SECONDS={LOAD_SECONDS}",
            f"--env=SERVED_MODEL_NAME={SERVED}",
            "--env=STRICT_MODEL=1",
            model_server_image,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # the process answers (live) long before the model is loaded
        try:
            if httpx.get(f"{base}/v2/health/live", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the model server never answered /v2/health/live"
        time.sleep(0.05)
    yield base


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)


def wait_loaded(base: str) -> None:
    deadline = time.monotonic() + LOAD_SECONDS + 30
    while httpx.get(f"{base}/health", timeout=2).status_code != 200:
        assert time.monotonic() < deadline, "the model never loaded"
        time.sleep(0.05)


def test_openai_routes_answer_in_openai_shapes(server: str) -> None:
    api = client(server)
    with pytest.raises(openai.InternalServerError) as early:  # 503 while loading
        api.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "hi"}])
    assert early.value.status_code == 503
    assert early.value.body == {
        "message": "model not ready yet",
        "type": "server_error",
        "param": None,
        "code": "not_ready",
    }
    wait_loaded(server)

    chat = api.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "three words here"}], max_tokens=4
    )
    assert chat.object == "chat.completion" and chat.model == SERVED
    assert chat.choices[0].message.content == f"{SERVED} 1 2 3"
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (3, 4)
    assert (chat.model_extra or {})["berth"]["served_model"] == SERVED

    started = time.monotonic()
    stream = api.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"berth_token_delay": 0.2},
    )
    pieces, usage = [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    took = time.monotonic() - started
    assert pieces == [SERVED, " 1", " 2", " 3", " 4"]
    assert usage is not None and usage.completion_tokens == 5
    assert 0.9 <= took < 10, took  # 5 tokens 0.2 s apart

    text = api.completions.create(model=SERVED, prompt="a b", max_tokens=2)
    assert text.object == "text_completion" and text.choices[0].text == f"{SERVED} 1"
    streamed = "".join(
        c.choices[0].text
        for c in api.completions.create(model=SERVED, prompt="a", max_tokens=3, stream=True)
        if c.choices
    )
    assert streamed == f"{SERVED} 1 2"

    packed = api.embeddings.create(model=SERVED, input=["alpha", "beta"])  # base64 by default
    plain = api.embeddings.create(model=SERVED, input="alpha", encoding_format="float")
    again = api.embeddings.create(model=SERVED, input="alpha", encoding_format="float")
    assert [d.index for d in packed.data] == [0, 1]
    assert plain.data[0].embedding == again.data[0].embedding  # deterministic
    assert len(plain.data[0].embedding) == 8
    assert math.isclose(sum(x * x for x in plain.data[0].embedding), 1.0, rel_tol=1e-6)
    assert packed.data[0].embedding == pytest.approx(plain.data[0].embedding, abs=1e-6)
    assert packed.data[0].embedding != pytest.approx(packed.data[1].embedding, abs=1e-3)
    wide = api.embeddings.create(model=SERVED, input="x", dimensions=32)
    assert len(wide.data[0].embedding) == 32

    assert [(m.id, m.object) for m in api.models.list()] == [(SERVED, "model")]

    with pytest.raises(openai.NotFoundError) as unknown:
        api.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body == {
        "message": "The model `other` does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model=SERVED, messages=[])

    # The KServe V2 routes are still there beside them.
    infer = httpx.post(f"{server}/v2/models/tiny/infer", json=INFER_BODY, timeout=10)
    assert infer.status_code == 200 and infer.json()["outputs"][0]["data"] == INFER_ANSWER
    counts = requests_answered(httpx.get(f"{server}/metrics", timeout=5).text)
    assert counts[("v1_chat", "503")] == 1
    assert counts[("v1_chat", "200")] == 2
    assert counts[("v1_chat", "404")] == 1
    assert counts[("v1_completions", "200")] == 2
    assert counts[("v1_embeddings", "200")] == 4
    assert counts[("infer", "200")] == 1
