"""`berth gateway`'s table (daemon/cli/gateway.py) from a `GET /v1/gateway` answer: what each
column shows, and the words when no deployment opts in."""

from __future__ import annotations

import argparse
from typing import Any, cast

import pytest

from daemon.cli.client import AdminClient
from daemon.cli.gateway import cmd_gateway, model_row


def model(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "model-a",
        "aliases": ["alias-a", "alias-b"],
        "deployment": "a",
        "routed": True,
        "loaded": True,
        "ready": 1,
        "starting": 0,
        "gpus": ["nvidia.com/gpu=0", "nvidia.com/gpu=1"],
        "waiting": 0,
        "in_flight": 0,
        "idle_s": 2.7,
        "swaps": 1,
        "cold_starts": 2,
    }
    return {**base, **fields}


def test_a_row_splits_on_whitespace_into_its_columns() -> None:
    row = model_row(model())
    assert row == ("model-a", "alias-a,alias-b", "a", "yes", 1, 0, "0,1", 0, 0, "2.7s", 1, 2)


@pytest.mark.parametrize(("waiting", "in_flight"), [(1, 1), (0, 1), (1, 0)])
def test_a_model_with_a_request_under_way_is_busy_not_idle(waiting: int, in_flight: int) -> None:
    """The endpoint's idle time runs from its last request's end, also while another one
    streams or waits for a cold start: the table says `busy` then, not `6.0s`."""
    row = model_row(model(waiting=waiting, in_flight=in_flight, idle_s=6.0))
    assert row[9] == "busy"


def test_never_asked_is_a_dash() -> None:
    assert model_row(model(idle_s=None, aliases=[], gpus=[]))[9] == "-"
    assert model_row(model(idle_s=None, aliases=[], gpus=[]))[1] == "-"


class Stub:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    def call(self, method: str, path: str) -> dict[str, Any]:
        assert (method, path) == ("GET", "/v1/gateway")
        return self.answer


def test_no_model_says_how_to_add_one(capsys: pytest.CaptureFixture[str]) -> None:
    client = cast(AdminClient, Stub({"listen": "127.0.0.1:8000", "models": []}))
    assert cmd_gateway(client, argparse.Namespace(json=False)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "gateway: http://127.0.0.1:8000/v1",
        'no deployment has a [gateway] section: add `[gateway] models = ["NAME"]` to the spec '
        "of a deployment to serve it here (docs/gateway.md)",
    ]
