"""The model gateway's daemon side, its pure parts: the route table from the `[gateway]`
sections, the uniqueness check an apply makes, the manager's table kept in step (no
listener: settings None), the swap and cold-start counts, the status and the Prometheus
families. The gateway's listener with a real berthd: tests/e2e/test_gateway_routing.py."""

from __future__ import annotations

import math

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from config.spec import DeploymentSpec, Gateway, Update
from config.spec import Endpoint as EndpointSpec
from daemon.cli.gateway import address_line
from daemon.cli.gateway import model_row as gateway_row
from daemon.gateway.event_counts import ModelCounts, count
from daemon.gateway.manager import GatewayManager, Placed
from daemon.gateway.routes import build_routes, claim_problems, claims
from daemon.gateway.status import gateway_status
from daemon.metrics.exposition import MetricsSnapshot, render
from daemon.metrics.gateway_families import GatewayModelMetrics
from daemon.store.database import Event
from proxy.balancer import EndpointTimeouts
from proxy.endpoint import Endpoint
from proxy.stats import LatencySummary, StatusCounts

LLAMA = Gateway(models=("llama-3.1-8b", "llama3.1"), rewrite_model="meta/Llama")
QWEN = Gateway(models=("qwen", "qwen2.5"))


def endpoint(name: str, port: int) -> Endpoint:
    return Endpoint(name, bind="127.0.0.1", port=port, timeouts=EndpointTimeouts())


def test_aliases_route_to_one_route_of_their_deployment() -> None:
    eps = {"llama": endpoint("llama", 18001), "qwen": endpoint("qwen", 18002)}
    table = build_routes({"llama": LLAMA, "qwen": QWEN}, eps.get)
    assert sorted(table.routes) == ["llama-3.1-8b", "llama3.1", "qwen", "qwen2.5"]
    route = table.routes["llama3.1"]
    assert route is table.routes["llama-3.1-8b"]
    assert (route.deployment, route.endpoint, route.rewrite_model, route.canonical) == (
        "llama",
        eps["llama"],
        "meta/Llama",
        "llama-3.1-8b",
    )
    assert table.routes["qwen2.5"].endpoint is eps["qwen"]
    assert table.routes["qwen"].rewrite_model is None
    assert table.conflicts == ()


def test_a_deployment_without_an_endpoint_has_no_route() -> None:
    eps = {"qwen": endpoint("qwen", 18002)}
    table = build_routes({"llama": LLAMA, "qwen": QWEN}, eps.get)
    assert sorted(table.routes) == ["qwen", "qwen2.5"]


def test_a_name_claimed_twice_is_kept_by_the_first_deployment_by_name() -> None:
    eps = {"a": endpoint("a", 18001), "b": endpoint("b", 18002)}
    table = build_routes({"b": Gateway(("m", "b-only")), "a": Gateway(("x", "m"))}, eps.get)
    assert table.routes["m"].deployment == "a"
    assert table.routes["b-only"].deployment == "b"
    assert table.conflicts == (("m", "a", "b"),)
    assert claims({"b": Gateway(("m",)), "a": Gateway(("m",))}) == {"m": "a"}


def test_claim_problems_name_the_field_and_the_other_deployment() -> None:
    others = {"llama": LLAMA, "qwen": QWEN}
    mine = Gateway(models=("mine", "qwen2.5", "llama-3.1-8b"))
    assert claim_problems("new", mine, others) == [
        'gateway.models[1]: "qwen2.5" is served by deployment "qwen" (its [gateway] models '
        "names it; a model name or alias is unique on the box)",
        'gateway.models[2]: "llama-3.1-8b" is served by deployment "llama" (its [gateway] '
        "models names it; a model name or alias is unique on the box)",
    ]


def test_a_deployment_may_claim_its_own_names_again() -> None:
    others = {"llama": LLAMA, "qwen": QWEN}
    assert claim_problems("llama", Gateway(("llama3.1", "new-alias")), others) == []
    assert claim_problems("other", None, others) == []
    assert claim_problems("other", Gateway(("Qwen",)), others) == []  # names are exact


def spec_with(name: str, gateway: Gateway, drain: float = 30.0) -> DeploymentSpec:
    return DeploymentSpec(
        name=name,
        image="localhost/x:1",
        port=8080,
        endpoint=EndpointSpec(port=18000),
        update=Update(drain_timeout=drain),
        gateway=gateway,
    )


def manager(
    sections: dict[str, Gateway],
    eps: dict[str, Endpoint],
    ready: dict[str, int],
    drains: dict[str, float] | None = None,
) -> GatewayManager:
    drains = drains or {}

    async def read_sections() -> dict[str, DeploymentSpec]:
        await trio.lowlevel.checkpoint()
        return {d: spec_with(d, g, drains.get(d, 30.0)) for d, g in sections.items()}

    return GatewayManager(
        settings=None,
        sections=read_sections,
        endpoint_of=eps.get,
        replicas=lambda d: Placed(ready.get(d, 0), 0, ("nvidia.com/gpu=0",) if d in ready else ()),
    )


async def test_manager_keeps_the_table_in_step_when_nudged() -> None:
    sections = {"llama": LLAMA}
    eps: dict[str, Endpoint] = {}
    m = manager(sections, eps, {})
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        assert m.table.routes == {} and set(m.known) == {"llama"}  # no endpoint yet
        eps["llama"] = endpoint("llama", 18001)
        m.nudge()  # the endpoint manager made it
        await trio.testing.wait_all_tasks_blocked()
        assert "llama3.1" in m.table.routes
        sections["qwen"] = QWEN
        eps["qwen"] = endpoint("qwen", 18002)
        await m.sync()  # an apply syncs before it answers
        assert sorted(m.table.routes) == ["llama-3.1-8b", "llama3.1", "qwen", "qwen2.5"]
        del sections["llama"]
        await m.sync()  # a delete
        assert sorted(m.table.routes) == ["qwen", "qwen2.5"]
        await m.drain(0.1)


async def test_the_gateway_drains_as_long_as_its_longest_deployment() -> None:
    m = manager({"llama": LLAMA, "qwen": QWEN}, {}, {}, {"llama": 300.0, "qwen": 5.0})
    assert m.drain_timeout == 30.0  # before the first sync: the default
    await m.sync()
    assert m.drain_timeout == 300.0
    m = manager({}, {}, {})
    await m.sync()
    assert m.drain_timeout == 30.0


async def test_status_shows_every_model_routed_or_not() -> None:
    eps = {"qwen": endpoint("qwen", 18002)}
    m = manager({"llama": LLAMA, "qwen": QWEN}, eps, {"qwen": 1})
    await m.sync()
    m.counts["qwen"] = ModelCounts(swaps=2, cold_starts=3, last_swap={"message": "evicted"})
    status = gateway_status(m)
    assert (status["listen"], status["tls"], status["auth"]) == (None, False, False)
    llama, qwen = status["models"]
    assert llama["name"] == "llama-3.1-8b" and llama["aliases"] == ["llama3.1"]
    assert (llama["routed"], llama["loaded"], llama["waiting"], llama["swaps"]) == (
        False,
        False,
        0,
        0,
    )
    assert (qwen["deployment"], qwen["routed"], qwen["loaded"], qwen["ready"]) == (
        "qwen",
        True,
        True,
        1,
    )
    assert (qwen["gpus"], llama["gpus"]) == (["nvidia.com/gpu=0"], [])
    assert (qwen["in_flight"], qwen["last_request_at"], qwen["idle_s"]) == (0, None, None)
    assert (qwen["requests"], qwen["status"], qwen["ttft"]) == (0, None, None)  # no listener
    assert (qwen["swaps"], qwen["cold_starts"], qwen["last_swap"]) == (
        2,
        3,
        {"message": "evicted"},
    )
    assert address_line(status) == "off (berthd.toml has no [gateway] listen)"
    assert gateway_row(llama)[3] == "not routed"
    assert gateway_row(qwen)[:4] == ("qwen", "qwen2.5", "qwen", "yes")
    g = {"listen": "127.0.0.1:8000", "tls": True, "auth": True}
    assert address_line(g) == "https://127.0.0.1:8000/v1, protected ([gateway.auth])"


def event(kind: str, deployment: str | None, n: int = 1) -> Event:
    return Event(n, "2026-01-01T00:00:00+00:00", deployment, None, kind, f"{kind} {n}")


def test_swaps_and_cold_starts_are_counted_by_deployment() -> None:
    counts: dict[str, ModelCounts] = {}
    for e in (
        event("swap", "a", 1),
        event("cold-start", "a", 2),
        event("cold-start", "a", 3),
        event("swap", "a", 4),
        event("applied", "a", 5),
        event("swap", None, 6),
        event("cold-start", "b", 7),
    ):
        count(counts, e)
    assert (counts["a"].swaps, counts["a"].cold_starts) == (2, 2)
    assert counts["a"].last_swap is not None and counts["a"].last_swap["id"] == 4
    assert (counts["b"].swaps, counts["b"].cold_starts, counts["b"].last_swap) == (0, 1, None)
    assert set(counts) == {"a", "b"}


def test_prometheus_families_per_model() -> None:
    models = (
        GatewayModelMetrics(
            "llama-3.1-8b",
            "llama",
            True,
            status=StatusCounts(s2xx=7, s4xx=1, s5xx=2),
            ttft=LatencySummary(7, 0.05, 0.2, 0.3),
            queue_time=LatencySummary(3, 1.5, None, None),
            swaps=1,
            cold_starts=4,
        ),
        GatewayModelMetrics("qwen", "qwen", False),
    )
    text, _ = render(MetricsSnapshot("0", gateway=models, gateway_refused=((404, 3), (413, 1))))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name.startswith("berth_gateway")
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("berth_gateway_requests_total", model="llama-3.1-8b", code="2xx") == 7
    assert value("berth_gateway_requests_total", model="llama-3.1-8b", code="5xx") == 2
    assert value("berth_gateway_requests_total", model="qwen", code="2xx") == 0
    assert value("berth_gateway_ttft_seconds", model="llama-3.1-8b", quantile="0.95") == 0.2
    assert value("berth_gateway_queue_time_seconds", model="llama-3.1-8b", quantile="0.5") == 1.5
    assert value("berth_gateway_queue_time_seconds", model="llama-3.1-8b", quantile="0.95") is None
    assert value("berth_gateway_ttft_seconds", model="qwen", quantile="0.5") is None
    assert value("berth_gateway_swaps_total", model="llama-3.1-8b") == 1
    assert value("berth_gateway_cold_starts_total", model="llama-3.1-8b") == 4
    assert value("berth_gateway_model_loaded", model="llama-3.1-8b") == 1
    assert value("berth_gateway_model_loaded", model="qwen") == 0
    assert value("berth_gateway_refused_total", code="404") == 3
    assert value("berth_gateway_refused_total", code="413") == 1
    assert not any(math.isnan(v) for v in samples.values())
    empty, _ = render(MetricsSnapshot("0"))
    assert b"berth_gateway" not in empty  # no gateway model: no family
