# The image has starlette and uvicorn; berth's own venv (which mypy checks with) does not.
# mypy: disable-error-code="import-not-found"
"""A small KServe V2 (Open Inference Protocol) model server: berth's stand-in for Triton,
MLServer or KServe's own servers, built into localhost/berth-model-server:1 from Debian and
PyPI (scripts/build-model-server-image.sh).

It behaves as the real ones do where berth is concerned:
- The process serves at once; the model loads in the background for LOAD_SECONDS (20 by
  default), starting when the process starts. Until it is loaded:
  `GET /v2/health/live` is 200 (the process is up), `GET /v2/health/ready` and
  `GET /v2/models/NAME/ready` are 503 "model not ready yet", and
  `POST /v2/models/NAME/infer` is 503 too (Triton and MLServer answer the same way).
- `POST /v2/models/NAME/infer` computes for real: y = W . x + b, with W and b made by the
  load (a tiny linear model), on a V2 request `{"inputs": [{"name": "x", "shape": [N, 4],
  "datatype": "FP32", "data": [...]}]}`. INFER_SECONDS (default 0) makes each inference
  take that long (a generation), so that the queue gauge moves.
- `GET /metrics` (prometheus-client): `model_server_requests_total{route,code}`,
  `model_queue_size` (infer requests waiting or in flight, vLLM's num_requests_waiting and
  TGI's tgi_queue_size in spirit), `model_ready`, `model_load_duration_seconds`,
  `model_loaded_timestamp_seconds` and `model_server_process_start_timestamp_seconds`.
- One log line per infer request and one when the model is loaded, with wall-clock times,
  so that a test can read what reached the server and when.

- OpenAI-compatible routes (openai_api.py): `/v1/chat/completions` and `/v1/completions`
  (JSON or an SSE stream, `max_tokens` tokens, each `berth_token_delay` or TOKEN_DELAY
  seconds apart), `/v1/embeddings` (a deterministic vector), `/v1/models` (SERVED_MODEL_NAME,
  MODEL_NAME by default), and `GET /health` (200 once loaded, 503 before, as vLLM's): what
  berth's gateway routes to, in the shapes the `openai` SDK reads. They are counted in
  `model_server_requests_total` and `model_queue_size` as infer is.

- With FAULTS=1 (tests, demos), `PUT /faults/infer` with `{"hang": true}` makes this one
  process's inference hang (and `false` ends it) while its health and readiness still
  answer: the "half-alive" replica that passive health (`[endpoint.outlier]`) is for.

Settings (environment): MODEL_NAME (tiny), LOAD_SECONDS (20), INFER_SECONDS (0), PORT (8000),
FAULTS (off); for the OpenAI routes SERVED_MODEL_NAME (MODEL_NAME), TOKEN_DELAY (0),
EMBEDDING_DIM (8), STRICT_MODEL (off: any `model` is answered; 1: only the served name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from openai_api import Hooks, OpenAiApi, Settings
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MODEL_NAME = os.environ.get("MODEL_NAME", "tiny")
LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "20"))
INFER_SECONDS = float(os.environ.get("INFER_SECONDS", "0"))
PORT = int(os.environ.get("PORT", "8000"))
FAULTS = os.environ.get("FAULTS") == "1"
FEATURES = 4

log = logging.getLogger("model-server")

REQUESTS = Counter(
    "model_server_requests", "Requests answered, by route and status code", ["route", "code"]
)
QUEUE = Gauge("model_queue_size", "Infer requests waiting or in flight")
READY = Gauge("model_ready", "1 once the model is loaded")
LOAD_DURATION = Gauge("model_load_duration_seconds", "How long the model took to load")
LOADED_AT = Gauge("model_loaded_timestamp_seconds", "When the model was loaded (Unix time)")
STARTED_AT = Gauge(
    "model_server_process_start_timestamp_seconds", "When this process started (Unix time)"
)


def process_started() -> float:
    """This process's start in Unix time, to ~10 ms: /proc/self/stat's start (clock ticks
    since boot) against /proc/uptime. (prometheus-client's process_start_time_seconds adds it
    to /proc/stat's btime, a whole second, so it can be up to 1 s off.)"""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


STARTED_AT.set(process_started())


class Model:
    """The tiny linear model; `weights` is None until the load is done."""

    def __init__(self) -> None:
        self.weights: list[float] | None = None
        self.bias = 0.0
        self.loaded = asyncio.Event()

    async def load(self) -> None:
        started = time.monotonic()
        log.info("loading model %s (%.1f s)", MODEL_NAME, LOAD_SECONDS)
        await asyncio.sleep(LOAD_SECONDS)  # reading weights from disk, in a real server
        self.weights = [0.5 * (i + 1) for i in range(FEATURES)]
        self.bias = 1.0
        took = time.monotonic() - started
        LOAD_DURATION.set(took)
        LOADED_AT.set(time.time())
        READY.set(1)
        self.loaded.set()
        log.info("model %s loaded in %.2f s (at %.3f)", MODEL_NAME, took, time.time())

    def predict(self, rows: list[list[float]]) -> list[float]:
        assert self.weights is not None
        return [
            sum(w * x for w, x in zip(self.weights, row, strict=True)) + self.bias for row in rows
        ]


MODEL = Model()


def answer(route: str, status: int, body: dict[str, Any]) -> JSONResponse:
    REQUESTS.labels(route, str(status)).inc()
    return JSONResponse(body, status_code=status)


NOT_READY = {"error": "model not ready yet"}


async def live(request: Request) -> JSONResponse:
    return answer("live", 200, {"live": True})


async def ready(request: Request) -> JSONResponse:
    if not MODEL.loaded.is_set():
        return answer("ready", 503, NOT_READY)
    return answer("ready", 200, {"ready": True})


async def server_metadata(request: Request) -> JSONResponse:
    return answer("metadata", 200, {"name": "berth-model-server", "version": "1", "extensions": []})


def known(request: Request) -> bool:
    return bool(request.path_params["name"] == MODEL_NAME)


async def model_ready(request: Request) -> JSONResponse:
    if not known(request):
        return answer("model_ready", 404, {"error": f"unknown model {request.path_params['name']}"})
    if not MODEL.loaded.is_set():
        return answer("model_ready", 503, NOT_READY)
    return answer("model_ready", 200, {"name": MODEL_NAME, "ready": True})


async def model_metadata(request: Request) -> JSONResponse:
    if not known(request):
        return answer("model_metadata", 404, {"error": "unknown model"})
    return answer(
        "model_metadata",
        200,
        {
            "name": MODEL_NAME,
            "versions": ["1"],
            "platform": "python",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        },
    )


def rows_of(body: Any) -> list[list[float]]:
    """The V2 request's one input as rows of FEATURES numbers; ValueError says what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise ValueError("the request needs an 'inputs' list")
    if len(body["inputs"]) != 1:
        raise ValueError("the model takes exactly one input, 'x'")
    tensor = body["inputs"][0]
    shape, data = tensor.get("shape"), tensor.get("data")
    if tensor.get("name") != "x" or tensor.get("datatype") not in ("FP32", "FP64"):
        raise ValueError("input must be named 'x' with datatype FP32")
    if not (isinstance(shape, list) and len(shape) == 2 and shape[1] == FEATURES):
        raise ValueError(f"input 'x' must have shape [N, {FEATURES}]")
    if not isinstance(data, list) or any(
        not isinstance(v, int | float) or isinstance(v, bool) for v in data
    ):
        raise ValueError("input 'x' data must be a flat list of numbers")
    if not isinstance(shape[0], int) or shape[0] < 1 or len(data) != shape[0] * FEATURES:
        raise ValueError("input 'x' data does not match its shape")
    return [[float(v) for v in data[i : i + FEATURES]] for i in range(0, len(data), FEATURES)]


async def infer(request: Request) -> JSONResponse:
    if not known(request):
        return answer("infer", 404, {"error": f"unknown model {request.path_params['name']}"})
    QUEUE.inc()
    try:
        if not MODEL.loaded.is_set():
            log.info("infer before ready: 503 (at %.3f)", time.time())
            return answer("infer", 503, NOT_READY)
        try:
            rows = rows_of(json.loads(await request.body()))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return answer("infer", 400, {"error": str(exc)})
        if INFER_SECONDS > 0:
            await asyncio.sleep(INFER_SECONDS)
        await INFER_FREE.wait()  # hung (FAULTS): the client or the proxy gives up first
        outputs = MODEL.predict(rows)
        log.info("infer %d rows: 200 (at %.3f)", len(rows), time.time())
        return answer(
            "infer",
            200,
            {
                "model_name": MODEL_NAME,
                "model_version": "1",
                "id": request.headers.get("x-request-id", ""),
                "outputs": [
                    {"name": "y", "datatype": "FP32", "shape": [len(rows), 1], "data": outputs}
                ],
            },
        )
    finally:
        QUEUE.dec()


INFER_FREE = asyncio.Event()  # clear while inference hangs (`PUT /faults/infer`)
INFER_FREE.set()


async def fault_infer(request: Request) -> JSONResponse:
    if not FAULTS:
        return JSONResponse({"error": "fault injection is off (FAULTS=1 turns it on)"}, 404)
    body = json.loads(await request.body() or b"{}")
    hang = bool(body.get("hang"))
    if hang:
        INFER_FREE.clear()
    else:
        INFER_FREE.set()
    log.info("fault: infer hang %s (at %.3f)", hang, time.time())
    return JSONResponse({"hang": hang})


async def health(request: Request) -> JSONResponse:
    if not MODEL.loaded.is_set():
        return answer("health", 503, NOT_READY)
    return answer("health", 200, {"status": "ok"})


OPENAI = OpenAiApi(
    Settings.from_env(MODEL_NAME),
    Hooks(
        loaded=MODEL.loaded,
        count=lambda route, status: REQUESTS.labels(route, str(status)).inc(),
        enter=QUEUE.inc,
        leave=QUEUE.dec,
    ),
)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    loading = asyncio.create_task(MODEL.load())  # starts with the process, not on a request
    try:
        yield
    finally:
        loading.cancel()


app = Starlette(
    routes=[
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/faults/infer", fault_infer, methods=["PUT"]),
        Route("/health", health),
        *OPENAI.routes(),
    ],
    lifespan=lifespan,
)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Probes every second would drown the log: access lines are left out, the infer
    # handler logs its own.
    uvicorn.run(app, host="0.0.0.0", port=PORT, access_log=False, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
