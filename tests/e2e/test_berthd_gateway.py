"""End to end, the model gateway (issue 16's acceptance): a real berthd with berthd.toml
`[gateway] listen`, real Podman, a fake 1-GPU host (a CDI spec under /var/run/cdi declaring
`nvidia.com/gpu` "0", as tests/e2e/test_berthd_gpus.py does), the model-server image's
OpenAI routes (config/examples/model-server-image/openai_api.py) and the real `openai` SDK
with its base_url at the gateway, `max_retries=0` so that no failure is hidden by a retry.

Deployments `a` and `b` each want the one GPU (`gpus = 1`, `[replicas] min = 0`, max 1):
1. model-a (cold: `a` has no replica) is answered: a cold start, `a` takes the GPU.
2. model-b: `b` cannot be placed while `a` holds the GPU, and `a` is idle: `a` is swapped
   out (scaled to zero, its container gone), `b` started, the request answered.
3. A long stream from `b` (STREAM_TOKENS tokens, TOKEN_SECONDS apart), and while it runs a
   request for model-a: `a` waits (queued, its replica not placed), `b` is not evicted (its
   container is the same one, the stream gets every token); once the stream ends `b` is idle,
   is swapped out, and `a` is answered, after the stream's end.
0 failed requests; the events tell it (cold-start, swap with victim and beneficiary).
`a` also checks `rewrite_model`: its server (STRICT_MODEL=1) knows only "org/model-a", the
client asks for the alias "alias-a", the answer's `model` is what reached the server.

A second test: GET /v1/models (client.models.list()) lists every model of the box, an
unknown model is openai.NotFoundError in OpenAI's error shape with close names, and a 6-way
burst to `c` (no GPU, one replica, `max_concurrency = 2`, each request ~1 s) queues and
answers all six, no more than two at the server at once (three waves); embeddings and a
streamed text completion go through as well. A third: the only waiter of a cold start hangs
up (the SDK's timeout) while its model loads: the start is cancelled (issue 16, point 3).

Every wait is bounded: the SDK's timeout, the futures' result(timeout=), wait_until. Two
CDI files declaring nvidia.com/gpu=0 make Podman refuse both ("unresolvable CDI devices"):
the fixture first waits for another test's (test_berthd_gpus.py, test_berthd_swap.py run at
the same time on this box) to go.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.fake_gpus import fake_nvidia_gpus
from tests.model_server import (
    model_server_image_fixture,  # noqa: F401 (the model_server_image fixture)
)

pytestmark = [pytest.mark.podman, pytest.mark.slow]

LOAD_SECONDS = 2  # each model's load, from its process start
STREAM_TOKENS = 12
TOKEN_SECONDS = 1.0  # b's long stream: 12 s
REQUEST_TIMEOUT = 120.0  # the SDK's, per request: a cold start and a swap fit well inside
STEP_TIMEOUT = 150.0

GPU_SPEC = """
name = "{name}"
image = "{image}"
port = 8000
stop_timeout = "2s"
env = {{ LOAD_SECONDS = "{load}", SERVED_MODEL_NAME = "{served}", STRICT_MODEL = "1" }}
[resources]
gpus = 1
[replicas]
min = 0
max = 1
[health.readiness]
path = "/health"
period = "250ms"
[endpoint]
port = {port}
bind = "127.0.0.1"
cold_start_timeout = "90s"
[gateway]
models = {models}
{rewrite}
"""

BURST_SPEC = """
name = "c"
image = "{image}"
port = 8000
stop_timeout = "2s"
env = {{ LOAD_SECONDS = "0", SERVED_MODEL_NAME = "model-c", TOKEN_DELAY = "0.25" }}
[replicas]
count = 1
[health.readiness]
path = "/health"
period = "250ms"
[endpoint]
port = {port}
bind = "127.0.0.1"
max_concurrency = 2
queue_timeout = "60s"
[gateway]
models = ["model-c"]
"""


@pytest.fixture
def one_fake_gpu() -> Iterator[Path]:
    with fake_nvidia_gpus(1, "gateway") as path:
        yield path


@dataclass
class Box:
    berthd: Berthd
    gateway: str  # http://127.0.0.1:PORT
    metrics: str  # berthd's [metrics] listen: http://127.0.0.1:PORT/metrics
    specs: Path
    clients: list[openai.OpenAI] = field(default_factory=list)  # closed by the fixture

    def client(self) -> openai.OpenAI:
        made = openai.OpenAI(
            base_url=f"{self.gateway}/v1",
            api_key="unused",
            max_retries=0,
            timeout=REQUEST_TIMEOUT,
        )
        self.clients.append(made)
        return made

    def apply(self, name: str, text: str) -> None:
        path = self.specs / f"{name}.toml"
        path.write_text(text)
        self.berthd.berth("apply", str(path))

    def get(self, name: str) -> Any:
        return self.berthd.json("get", name)

    def containers(self, name: str) -> list[str]:
        return [r["container_id"] for r in self.get(name)["replicas"] if r.get("container_id")]

    def events(self) -> list[dict[str, Any]]:
        out = self.berthd.berth("events", "--json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def models(self) -> dict[str, Any]:
        """`berth gateway --json`'s models, by name."""
        return {m["name"]: m for m in self.berthd.json("gateway")["models"]}

    def answered(self, model: str) -> dict[str, float]:
        """berth_gateway_requests_total of `model`: {status class: count}, zeros left out."""
        text = httpx.get(self.metrics, timeout=10).text
        return {
            sample.labels["code"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "berth_gateway_requests_total"
            and sample.labels["model"] == model
            and sample.value
        }


@pytest.fixture
def box(
    berthd_factory: Callable[..., Berthd],
    one_fake_gpu: Path,
    tmp_path: Path,
    free_port: Callable[[], int],
) -> Iterator[Box]:
    port, metrics = free_port(), free_port()
    config = tmp_path / "berthd.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{port}"\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
    )
    daemon = berthd_factory(extra_args=["--config", str(config)])
    daemon.start()  # after the CDI file exists: berthd reads it at start
    gpus = [g["cdi_name"] for g in daemon.json("status")["gpus"]]
    assert gpus == ["nvidia.com/gpu=0"], gpus
    specs = tmp_path / "specs"
    specs.mkdir()
    made = Box(daemon, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics", specs)
    try:
        yield made
    finally:
        for client in made.clients:
            client.close()
        # shown when the test fails: what berthd did, its events and errors (not its probes)
        told = daemon.log_path.read_text(errors="replace").splitlines()
        kept = [line for line in told if "event=" in line or "level=error" in line]
        print("--- berthd's events ---\n" + "\n".join(kept[-80:]))


def gpu_spec(
    name: str,
    image: str,
    port: int,
    *,
    models: list[str],
    rewrite: str = "",
    load: float = LOAD_SECONDS,
) -> str:
    served = rewrite or models[0]
    return GPU_SPEC.format(
        name=name,
        image=image,
        port=port,
        load=load,
        served=served,
        models=json.dumps(models),
        rewrite=f'rewrite_model = "{rewrite}"' if rewrite else "",
    )


def apply_a_and_b(box: Box, image: str, free_port: Callable[[], int]) -> None:
    """a serves model-a and alias-a; its server knows only "org/model-a" (rewrite_model)."""
    a = gpu_spec("a", image, free_port(), models=["model-a", "alias-a"], rewrite="org/model-a")
    box.apply("a", a)
    box.apply("b", gpu_spec("b", image, free_port(), models=["model-b"]))


def ask(client: openai.OpenAI, model: str, *, tokens: int = 3) -> tuple[str, Any, float]:
    """One chat completion: (its text, its `berth` stamp, when it was answered)."""
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=tokens
    )
    text = answer.choices[0].message.content or ""
    return text, (answer.model_extra or {})["berth"] | {"model": answer.model}, time.time()


def stream(client: openai.OpenAI, model: str, started: list[float]) -> tuple[list[str], float]:
    """A long stream: (its tokens, when it ended); `started` gets the first token's time."""
    pieces = []
    chunks = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "tell me a long story"}],
        max_tokens=STREAM_TOKENS,
        stream=True,
        extra_body={"berth_token_delay": TOKEN_SECONDS},
    )
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            if not pieces:
                started.append(time.time())
            pieces.append(chunk.choices[0].delta.content)
    return pieces, time.time()


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


def names_victim(event: dict[str, Any], name: str) -> bool:
    """The swap event's message names `name` as its victim ("... victim a (idle 2s, ...)")."""
    return bool(re.search(rf"\bvictims? {re.escape(name)}(?![\w.-])", event["message"]))


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


def test_cold_start_swap_and_no_eviction_under_a_stream(
    box: Box, model_server_image: str, free_port: Callable[[], int]
) -> None:
    image = model_server_image
    apply_a_and_b(box, image, free_port)
    wait_until(
        "a and b idle at zero replicas",
        lambda: box.get("a")["replicas"] == [] == box.get("b")["replicas"],
        timeout=60,
    )
    client = box.client()
    failures: list[str] = []

    # 1. a, cold: started on demand and answered; the alias reaches the server rewritten.
    began = time.time()
    text, stamp, answered = ask(client, "alias-a")
    print(f"\n1. model-a cold start answered in {answered - began:.2f}s")
    assert text == "org/model-a 1 2", text
    assert stamp["model"] == "org/model-a" and stamp["requested_model"] == "org/model-a"
    a_container = box.containers("a")
    assert len(a_container) == 1 and box.get("a")["replicas"][0]["gpus"] == ["nvidia.com/gpu=0"]

    # 2. b: a is idle, so a is swapped out and b started on the GPU.
    began = time.time()
    text, stamp, answered = ask(client, "model-b")
    print(f"2. model-b answered in {answered - began:.2f}s (a swapped out)")
    assert text == "model-b 1 2" and stamp["model"] == "model-b"
    assert box.containers("a") == [], box.get("a")
    b_container = box.containers("b")
    assert len(b_container) == 1 and box.get("b")["replicas"][0]["gpus"] == ["nvidia.com/gpu=0"]

    # 3. a long stream from b; a asked while it runs waits, and b is not evicted under it.
    with ThreadPoolExecutor(max_workers=2) as pool:
        first_token: list[float] = []
        streaming: Future[tuple[list[str], float]] = pool.submit(
            stream, client, "model-b", first_token
        )
        wait_until("b's stream to begin", lambda: bool(first_token), timeout=30)
        asked_a = time.time()
        waiting: Future[tuple[str, Any, float]] = pool.submit(ask, client, "model-a")
        wait_until(
            "a's request waiting at a's endpoint, b's stream in flight",
            lambda: (
                (m := box.models())["model-a"]["waiting"] >= 1 and m["model-b"]["in_flight"] >= 1
            ),
            timeout=15,
        )
        wait_until(  # and why it waits: b is busy, so nothing can be swapped out
            "a's error to say b cannot be swapped out",
            lambda: "b has 1 request in flight" in (box.get("a").get("error") or ""),
            timeout=15,
        )
        print(f"3. a waits: {box.get('a')['error']}")
        while not streaming.done():  # until the stream ends: b keeps its replica, a waits
            assert box.containers("b") == b_container, box.get("b")
            assert not waiting.done() or waiting.exception() is not None, "a answered early"
            time.sleep(0.5)
        try:
            pieces, stream_ended = streaming.result(timeout=1)
        except Exception as exc:  # the stream failed: say how, and go on to the rest
            failures.append(f"b's stream: {exc!r}")
            pieces, stream_ended = [], time.time()
        try:
            text, stamp, a_answered = waiting.result(timeout=STEP_TIMEOUT)
        except Exception as exc:
            failures.append(f"a while b streamed: {exc!r}")
            text, stamp, a_answered = "", {}, 0.0
    print(
        f"3. b's stream: {len(pieces)} tokens, ended {stream_ended - asked_a:.2f}s after a was"
        f" asked; a answered {a_answered - stream_ended:.2f}s after the stream's end"
    )
    assert failures == [], failures
    assert pieces == ["model-b", *(f" {i}" for i in range(1, STREAM_TOKENS))]
    assert text == "org/model-a 1 2"
    assert a_answered >= stream_ended, "a was answered before b's stream ended"
    assert box.containers("b") == [], box.get("b")  # b went idle and was swapped out
    assert box.containers("a") != a_container  # a new replica of a
    assert box.get("a")["replicas"][0]["gpus"] == ["nvidia.com/gpu=0"]
    models = box.models()
    assert models["model-a"]["loaded"] and not models["model-b"]["loaded"], models
    assert models["model-a"]["aliases"] == ["alias-a"] and models["model-a"]["deployment"] == "a"
    assert models["model-a"]["cold_starts"] >= 1, models["model-a"]
    shown = box.berthd.berth("gateway").stdout
    print(shown)
    assert "last swap of model-a:" in shown and "swapping out b for a" in shown, shown
    listing = box.berthd.berth("ls").stdout
    print(listing)
    (b_line,) = [line for line in listing.splitlines() if line.split()[:1] == ["b"]]
    assert "idle (unloaded" in b_line, listing
    # 0 failed requests, as the gateway counted them too: 2 answered for each model
    assert box.answered("model-a") == {"2xx": 2}, box.answered("model-a")
    assert box.answered("model-b") == {"2xx": 2}, box.answered("model-b")

    # The events tell the story.
    events = box.events()
    story = [
        f"{e['kind']} {e['deployment']}: {e['message']}"
        for e in events
        if e["kind"] in ("cold-start", "swap", "start-cancelled", "unloaded")
    ]
    kinds = (" cold-start ", " swap ", " scaled ", " start-cancelled ", " unloaded ")
    printed = box.berthd.berth("events").stdout.splitlines()
    print("\n".join(line for line in printed if any(k in line for k in kinds)))
    cold = of_kind(events, "cold-start")
    assert any(e["deployment"] == "a" for e in cold), story
    swaps = of_kind(events, "swap")
    assert len(swaps) == 2, story
    first, second = swaps  # a out for b, then b out for a: for whom, the victim, and why
    assert first["deployment"] == "b" and names_victim(first, "a"), first
    assert second["deployment"] == "a" and names_victim(second, "b"), second
    for swap in swaps:
        assert "needs 1 GPU" in swap["message"], swap  # the placement's reason
        assert "idle" in swap["message"] and "priority" in swap["message"], swap  # the inputs
    told = [(e["kind"], e["deployment"]) for e in events if e["kind"] in ("cold-start", "swap")]
    assert told == [
        ("cold-start", "a"),  # 1.
        ("cold-start", "b"),  # 2. b woken, no room: a swapped out for it
        ("swap", "b"),
        ("cold-start", "a"),  # 3. a woken during b's stream; the swap only after it
        ("swap", "a"),
    ], story
    assert at(second) >= stream_ended - 1.0, "b was swapped out before its stream ended"
    assert of_kind(events, "start-cancelled") == [], story


def test_models_unknown_model_and_a_queued_burst(
    box: Box, model_server_image: str, free_port: Callable[[], int]
) -> None:
    image = model_server_image
    apply_a_and_b(box, image, free_port)
    box.apply("c", BURST_SPEC.format(image=image, port=free_port()))
    wait_until("c ready", lambda: box.get("c")["ready"] == 1, timeout=60)
    client = box.client()

    listed = {m.id: m for m in client.models.list()}
    assert {"model-a", "alias-a", "model-b", "model-c"} <= set(listed), listed
    assert all(m.owned_by == "berth" for m in listed.values()), listed
    loaded = {name: (m.model_extra or {}).get("loaded") for name, m in listed.items()}
    assert loaded == {"model-a": False, "alias-a": False, "model-b": False, "model-c": True}
    alias = client.models.retrieve("alias-a")  # GET /v1/models/alias-a
    assert alias.id == "alias-a" and (alias.model_extra or {}).get("deployment") == "a", alias

    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(
            model="model-x", messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.status_code == 404
    error = unknown.value.body
    assert isinstance(error, dict), error
    assert error["type"] == "invalid_request_error", error
    assert error["param"] == "model" and error["code"] == "model_not_found", error
    assert error["message"].startswith("The model 'model-x' does not exist"), error
    assert "model-a" in error["message"] and "model-c" in error["message"], error

    # 6 at once to c (max_concurrency 2, one replica, 4 tokens of 0.25 s: ~1 s each): two at
    # a time reach the server, the rest wait in c's queue; all six are answered.
    began = time.time()
    with ThreadPoolExecutor(max_workers=6) as pool:
        burst = [pool.submit(ask, client, "model-c", tokens=4) for _ in range(6)]
        results = [f.result(timeout=STEP_TIMEOUT) for f in burst]
    took = sorted(answered - began for _, _, answered in results)
    print("\nburst: 6 answered after " + ", ".join(f"{t:.2f}s" for t in took))
    assert all(text == "model-c 1 2 3" for text, _, _ in results), results
    # three waves of two: the last is answered three request-times after the burst began
    # (all six at once would take one); the first two about one request-time in
    assert took[-1] >= 2.7, f"answered after {took}: not two at a time"
    assert took[0] < took[-1] - 1.5, f"answered after {took}: not in waves"

    # The other routes go the same way: embeddings, and a streamed text completion.
    vectors = client.embeddings.create(model="model-c", input=["alpha", "beta"])
    assert [len(d.embedding) for d in vectors.data] == [8, 8] and vectors.model == "model-c"
    streamed = client.completions.create(model="model-c", prompt="a", max_tokens=3, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "model-c 1 2"


def test_a_client_that_hangs_up_during_a_cold_start_cancels_it(
    box: Box, model_server_image: str, free_port: Callable[[], int]
) -> None:
    """Issue 16, point 3: the only waiter of a cold start gives up (the SDK's timeout) while
    the model still loads: the gateway sees the hang-up, the request leaves the queue, and
    the start is cancelled (start-cancelled, the container removed, the GPU free again)."""
    slow = gpu_spec("slow", model_server_image, free_port(), models=["model-slow"], load=60)
    box.apply("slow", slow)
    wait_until("slow idle at zero replicas", lambda: box.get("slow")["replicas"] == [], 60)
    impatient = openai.OpenAI(
        base_url=f"{box.gateway}/v1", api_key="unused", max_retries=0, timeout=3.0
    )
    box.clients.append(impatient)
    with pytest.raises(openai.APITimeoutError):
        ask(impatient, "model-slow")
    gave_up = time.time()
    wait_until(
        "the cold start cancelled",
        lambda: bool(of_kind(box.events(), "start-cancelled")),
        timeout=30,
    )
    wait_until("its container removed", lambda: box.get("slow")["replicas"] == [], 30)
    cancelled = of_kind(box.events(), "start-cancelled")
    print(f"\ncancelled {at(cancelled[0]) - gave_up:.2f}s after the client gave up: {cancelled}")
    assert [e["deployment"] for e in cancelled] == ["slow"], cancelled
    assert [e["deployment"] for e in of_kind(box.events(), "cold-start")] == ["slow"]
    assert [e["deployment"] for e in of_kind(box.events(), "created")] == ["slow"]  # it began
    assert box.models()["model-slow"]["waiting"] == 0
