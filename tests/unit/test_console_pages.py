"""The console's box, deployment and events pages (daemon/console/pages/): what they show
of the admin API's answers, that every outside value comes out escaped, and the parts the
page's scripts fetch (fragments, the series JSON). The admin API is a table of canned
answers here (the pages' logic is what is tested); tests/browser drive the real one."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any, cast

import pytest

from daemon.console.pages import box, deployment, events
from daemon.console.request import AdminError, ConsoleRequest
from daemon.console.series import CHART_IDS
from daemon.http.server import Response
from daemon.store.access import StoreAccess
from daemon.store.database import MetricRollup, Store, rfc3339

EVIL = "<script>alert(1)</script>"
ECHO = """name = "web"
image = "localhost/berth-echo:1"
port = 8080
[env]
MESSAGE = "hello"
[replicas]
count = 1
[endpoint]
port = 18080
"""


class FakeAdmin:
    def __init__(self, answers: Mapping[str, Any]) -> None:
        self.answers = dict(answers)
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def get(self, path: str, **query: str) -> Any:
        self.calls.append((path, query))
        if path not in self.answers:
            raise AdminError(404, f"no such thing: {path}", [])
        answer = self.answers[path]
        return answer(query) if callable(answer) else answer


def request(
    path: str, admin: FakeAdmin, *, query: Mapping[str, str] | None = None, **route: str
) -> ConsoleRequest:
    host = {"sampled_at": "2026-12-01T18:00:00Z", "cpu_percent": 37.5,
            "memory_used_bytes": 8 * 2**30, "memory_total_bytes": 32 * 2**30,
            "gpus": [{"index": 0, "cdi_name": "nvidia.com/gpu=0", "utilization_percent": 81.0,
                      "memory_used_bytes": 40 * 2**30, "memory_total_bytes": 80 * 2**30,
                      "temperature_c": 61.0, "power_w": 250.0}]}  # fmt: skip
    return ConsoleRequest(
        method="GET",
        path=path,
        query=MappingProxyType(dict(query or {})),
        form=MappingProxyType({}),
        user="ann",
        csrf="tok",
        admin=cast(Any, admin),
        daemon=cast(Any, SimpleNamespace(metrics=SimpleNamespace(host_json=lambda: host))),
        route=MappingProxyType(route),
    )


def deployment_answer(name: str = "web", spec: str = ECHO) -> dict[str, Any]:
    return {
        "name": name, "revision": 2, "spec_id": "b" * 12, "desired": 2, "ready": 1,
        "endpoint": "http://127.0.0.1:18080", "status": "progressing", "pinned": 2,
        "image": "localhost/berth-echo:1", "created_at": "2026-12-01T17:00:00Z", "spec": spec,
        "reason": None, "unloaded_at": None, "endpoint_error": None, "pending": 0, "error": None,
        "replicas": [
            {"id": "web-a1", "container_id": "c" * 64, "state": "running", "ready": True,
             "restarts": 0, "host_port": 40001, "spec_id": "b" * 12,
             "gpus": ["nvidia.com/gpu=0"], "last_probe": "200 in 3 ms",
             "consecutive_failures": 0, "last_exit_reason": None, "restart_in": None},
            {"id": "web-b2", "container_id": "d" * 64, "state": "running", "ready": False,
             "restarts": 3, "host_port": 40002, "spec_id": "b" * 12, "gpus": [],
             "last_probe": EVIL, "consecutive_failures": 2, "last_exit_reason": "exit 137",
             "restart_in": None},
        ],
    }  # fmt: skip


def history(name: str = "web") -> list[dict[str, Any]]:
    return [
        {"revision": 1, "spec_id": "a" * 12, "created_at": "2026-12-01T16:00:00Z",
         "active": False, "status": "superseded", "reason": None},
        {"revision": 2, "spec_id": "b" * 12, "created_at": "2026-12-01T17:00:00Z",
         "active": True, "status": "active", "reason": EVIL},
    ]  # fmt: skip


def event(i: int, kind: str, message: str, deployment: str | None = "web") -> dict[str, Any]:
    return {"id": i, "time": f"2026-12-01T18:{i:02d}:00Z", "deployment": deployment,
            "replica": None, "kind": kind, "message": message, "uid": None}  # fmt: skip


def admin_for(name: str = "web", spec: str = ECHO) -> FakeAdmin:
    base = f"/v1/deployments/{name}"
    return FakeAdmin(
        {
            base: deployment_answer(name, spec),
            f"{base}/history": history(name),
            f"{base}/revisions/1": {**history(name)[0], "spec": ECHO.replace("8080", "9090")},
            f"{base}/revisions/2": {**history(name)[1], "spec": ECHO},
            "/v1/events": [event(1, "applied", "revision 1"), event(2, "died", EVIL)],
            "/v1/deployments": [{"name": name}],
        }
    )


def assert_escaped(page: str) -> None:
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_deployment_page_shows_replicas_charts_spec_revisions_events_and_actions() -> None:
    page = await deployment.render(request("/console/d/web", admin_for(), name="web"))
    assert isinstance(page, str)
    for testid in ("replicas-table", "replica-row-web-a1", "replica-row-web-b2", "log-tail",
                   "action-scale", "action-remove", "action-restart", "action-rollback",
                   "events-table", "event-row", "revisions-table", "active-spec"):  # fmt: skip
        assert f'data-testid="{testid}"' in page, testid
    for chart in CHART_IDS:
        assert f'data-testid="chart-{chart}"' in page
    assert 'data-series-src="/console/d/web/data/series?window=1h"' in page
    assert 'data-log-src="/console/d/web/logs"' in page
    # K1's action forms (daemon.console.actions): GETs to the confirm pages.
    assert 'action="/console/d/web/rollback/confirm"' in page
    assert '<input type="hidden" name="to" value="1">' in page
    assert '<input type="hidden" name="replica" value="web-b2">' in page
    assert 'action="/console/d/web/scale/confirm"' in page and 'name="auto"' in page
    assert 'data-testid="revision-compare"' in page
    assert '<option value="1" selected>1</option>' in page  # from: the newest older one
    assert "failing (2 in a row)" in page and "exit 137" in page and "nvidia.com/gpu=0" in page
    assert 'data-fragment="/console/d/web/fragment/replicas"' in page
    assert "[replicas]" in page and "min = 1" in page  # the canonical form, not the text
    assert 'src="/console/static/vendor/uplot/uPlot.iife.min.js"' in page
    assert "<style" not in page and "style=" not in page and "onclick" not in page
    assert_escaped(page)


async def test_a_name_and_a_spec_with_markup_come_out_escaped() -> None:
    spec = f'name = "x"\n# {EVIL}\n</pre>{EVIL}'  # does not parse: shown as written
    admin = admin_for(EVIL, spec)
    admin.answers = {k.replace(EVIL, "%3Cscript%3Ealert%281%29%3C%2Fscript%3E"): v
                     for k, v in admin.answers.items()}  # fmt: skip
    page = await deployment.render(request("/console/d/x", admin, name=EVIL))
    assert isinstance(page, str)
    assert "<script>alert" not in page and "</pre><script>" not in page
    assert "&lt;/pre&gt;&lt;script&gt;" in page
    assert "/console/d/%3Cscript%3Ealert%281%29%3C%2Fscript%3E/fragment/replicas" in page


async def test_unknown_deployment_is_the_admin_apis_404() -> None:
    answer = await deployment.render(request("/console/d/nope", FakeAdmin({}), name="nope"))
    assert isinstance(answer, Response) and answer.status == 404


async def test_diff_between_two_revisions_of_canonical_specs() -> None:
    req = request("/console/d/web", admin_for(), query={"from": "1", "to": "2"}, name="web")
    page = await deployment.render(req)
    assert isinstance(page, str)
    assert 'data-testid="spec-diff"' in page
    assert '<span class="del">-port = 9090</span>' in page
    assert '<span class="add">+port = 8080</span>' in page
    same = request("/console/d/web", admin_for(), query={"from": "2", "to": "2"}, name="web")
    assert "mean the same spec" in str(await deployment.render(same))
    bad = request("/console/d/web", admin_for(), query={"from": "7", "to": "2"}, name="web")
    assert "no such thing" in str(await deployment.render(bad))


@pytest.mark.parametrize("part", ["summary", "replicas", "revisions", "events"])
async def test_fragments_are_the_page_parts_alone(part: str) -> None:
    html = await deployment.fragment(request("/f", admin_for(), name="web", part=part))
    assert isinstance(html, str)
    assert "<html" not in html and "<nav" not in html
    if part != "summary":
        assert "<table" in html
    if part in ("replicas", "revisions", "events"):
        assert_escaped(html)


async def test_unknown_fragment_is_404() -> None:
    answer = await deployment.fragment(request("/f", admin_for(), name="web", part="nope"))
    assert isinstance(answer, Response) and answer.status == 404


async def test_series_json_is_shaped_from_the_stores_rollups(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with Store(tmp_path / "berth.db") as store:
        access = StoreAccess(store)
        store.apply("web", "a" * 12, ECHO, "{}")
        minute = rfc3339(now - timedelta(minutes=2))
        old = rfc3339(now - timedelta(days=2))
        store.add_metric_rollups(
            [
                MetricRollup("web", "", minute, 12, requests_per_s=3.0, desired_replicas=2.0),
                MetricRollup("web", "web-a1", minute, 12, requests_per_s=3.0),
                MetricRollup("web", "", old, 12, requests_per_s=9.0),
                MetricRollup("", "", minute, 12, cpu_percent=50.0),  # the host's: not web's
            ]
        )

        async def series(name: str, window: str) -> Response:
            req = request("/s", FakeAdmin({}), query={"window": window}, name=name, part="series")
            req = dataclasses.replace(req, daemon=cast(Any, SimpleNamespace(store=access)))
            return await deployment.data(req)

        answer = await series("web", "1h")
        assert answer.status == 200
        body = json.loads(json.dumps(answer.json))
        assert body["window"] == "1h" and body["deployment"] == "web"
        assert set(body["charts"]) == set(CHART_IDS)
        requests, replicas = body["charts"]["requests"], body["charts"]["replicas"]
        assert requests["points"] == 1 and requests["data"][1][-3] == 3.0
        assert replicas["data"][1][-3] == 1.0 and replicas["data"][2][-3] == 2.0
        assert body["charts"]["cpu"]["points"] == 0
        day = json.loads(json.dumps((await series("web", "1d")).json))
        assert day["charts"]["requests"]["points"] == 1  # two days ago is outside it
        bad = await series("web", "1y")
        assert bad.status == 400 and "window: must be one of 1h, 1d" in str(bad.json)
        assert (await series("nope", "1h")).status == 404
        store.mark_removed("web")
        assert (await series("web", "1h")).status == 404


async def test_events_page_filters_by_kind_and_level_newest_first() -> None:
    found = [event(i, kind, f"m{i}") for i, kind in
             enumerate(["applied", "died", "created", "create-failed", "died"], 1)]  # fmt: skip
    found.append(event(6, "scaled", EVIL, deployment=EVIL))
    admin = FakeAdmin({"/v1/events": found, "/v1/deployments": [{"name": "web"}]})
    page = await events.render(request("/console/events", admin))
    assert page.count('data-testid="event-row"') == 6
    assert page.index("m5") < page.index("m1")  # newest first
    assert_escaped(page)
    warn = await events.render(request("/console/events", admin, query={"level": "warning"}))
    assert warn.count('data-testid="event-row"') == 2 and "m2" in warn and "m5" in warn
    assert admin.calls[-2] == ("/v1/events", {"limit": str(events.SCAN)})
    died = await events.render(request("/e", admin, query={"kind": "died", "limit": "1"}))
    assert died.count('data-testid="event-row"') == 1 and "m5" in died
    err = await events.fragment(
        request("/e", admin, query={"level": "error", "deployment": "web"}, part="events")
    )
    assert isinstance(err, str) and "m4" in err and err.count("event-row") == 1
    assert admin.calls[-2] == ("/v1/events", {"limit": str(events.SCAN), "deployment": "web"})
    await events.render(request("/e", admin, query={"limit": "99999"}))
    assert admin.calls[-2] == ("/v1/events", {"limit": str(events.MAX_LIMIT)})


async def test_box_page_shows_gpus_with_their_holders_host_and_berthd() -> None:
    admin = admin_for()
    admin.answers["/v1/status"] = {
        "version": "0.1.0", "podman": "4.3.1", "uptime_s": 3725.0, "pid": 42,
        "started_at": "2026-12-01T17:00:00Z", "deployments": 1, "gateway": None,
        "state_dir": "/var/lib/berth", "last_unclean_stop": None, "gpu_note": EVIL,
        "gpus": [{"index": 0, "name": "NVIDIA H200", "cdi_name": "nvidia.com/gpu=0",
                  "uuid": None, "memory_total_bytes": 80 * 2**30},
                 {"index": 1, "name": "NVIDIA H200", "cdi_name": "nvidia.com/gpu=1",
                  "uuid": None, "memory_total_bytes": 80 * 2**30}],
    }  # fmt: skip
    page = await box.render(request("/console/box", admin))
    assert 'data-testid="gpu-row-0"' in page and 'data-testid="gpu-row-1"' in page
    assert "40.0 GiB / 80.0 GiB" in page and "81 %" in page
    assert '<a href="/console/d/web" data-testid="gpu-holder">web / web-a1</a>' in page
    row1 = page[page.index('data-testid="gpu-row-1"') :]
    assert "free" in row1[: row1.index("</tr>")]
    assert "1h 2m" in page and "0.1.0" in page and "38 %" in page and "8.0 GiB / 32.0 GiB" in page
    assert_escaped(page)
    gpus = await box.fragment(request("/f", admin, part="gpus"))
    assert isinstance(gpus, str) and "gpus-table" in gpus and "<nav" not in gpus
