"""The spec language: TOML text in, a validated, frozen `DeploymentSpec` out.

Invariants:
- A spec either parses completely or raises `SpecError` listing every problem in it; no
  partial spec ever leaves this module.
- Every problem names its field path (`health.readiness.period`, `mounts[1].target`).
- Defaults are filled in here (from `config.spec`), so a `DeploymentSpec` is complete.
- Unknown keys are errors at every level.

The sections with more rules live next door: `config.parse_scaling` (replicas, autoscale),
`config.parse_health` (probes), `config.parse_mounts` (mounts, registry),
`config.parse_resources` (resources, shared memory, ulimits), `config.parse_document`
(nesting and control bytes, checked on the whole document first), `config.parse_metrics`
(`[[metrics.scrape]]`, the prometheus metric's query), `config.parse_traffic` (admission,
balancing, retries, the upstream protocol, `[endpoint.outlier]`). The canonical form and the ids
live in `config.canonical`, re-exported here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

import tomli

from config.canonical import spec_id, spec_to_dict, template_id
from config.errors import Problem, SpecError
from config.image_ref import parse_image_ref
from config.parse_auth import read_auth
from config.parse_document import document_problems, nesting_problem
from config.parse_gateway import read_gateway
from config.parse_health import read_health
from config.parse_limits import read_limits
from config.parse_metrics import read_metrics
from config.parse_mounts import read_mounts, read_registry
from config.parse_resources import read_resources
from config.parse_scaling import read_autoscale, read_replicas
from config.parse_tls import read_tls
from config.parse_traffic import read_traffic
from config.reader import (
    Reader,
    as_bool,
    as_duration,
    as_enum,
    as_int,
    read_string_table,
)
from config.secret_ref import SecretRef, as_secret_ref
from config.spec import (
    ENDPOINT_CLIENT_IDLE_TIMEOUT,
    ENDPOINT_CONNECT_TIMEOUT,
    ENDPOINT_READ_TIMEOUT,
    DeploymentSpec,
    Endpoint,
    PullPolicy,
    Update,
    UpdateStrategy,
    default_bind,
)

__all__ = [
    "parse_spec",
    "spec_from_dict",
    "spec_id",
    "spec_to_dict",
    "template_id",
]

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYNTAX_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")

MAX_STOP_TIMEOUT = 300.0
MAX_TIMEOUT = 86400.0


def parse_spec(text: str, *, source: str = "<spec>") -> DeploymentSpec:
    """Parse and validate a spec's TOML text; SpecError (naming `source`) lists all problems."""
    too_deep = nesting_problem(text)
    if too_deep is not None:
        raise SpecError([too_deep], source=source)
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise SpecError([syntax_problem(exc)], source=source) from None
    return spec_from_dict(data, source=source)


def spec_from_dict(data: Mapping[str, object], *, source: str = "<spec>") -> DeploymentSpec:
    """Validate an already-decoded spec (a TOML document, or `spec_to_dict`'s output)."""
    problems = document_problems(data)  # control bytes, nesting: before any field is read
    if problems:
        raise SpecError(problems, source=source)
    spec = _read_spec(Reader(data, "", problems))
    if problems or spec is None:
        raise SpecError(problems, source=source)
    return spec


def syntax_problem(exc: tomli.TOMLDecodeError) -> Problem:
    """A TOML syntax error as one problem naming line and column."""
    lineno: object = getattr(exc, "lineno", None)
    colno: object = getattr(exc, "colno", None)
    msg: object = getattr(exc, "msg", None)
    text = str(exc)
    if not isinstance(lineno, int) or not isinstance(colno, int):
        m = _SYNTAX_POSITION.search(text)
        lineno, colno = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    if not isinstance(msg, str):
        msg = _SYNTAX_POSITION.sub("", text).strip()
    where = f" at line {lineno}, column {colno}" if lineno is not None else ""
    return Problem("", f"TOML syntax error{where}: {msg}")


def _read_spec(r: Reader) -> DeploymentSpec | None:
    name = r.required("name", _as_name)
    image = r.required("image", _as_image)
    command = r.optional("command", _as_command)
    port = r.required("port", as_int(1, 65535))
    enabled = r.get("enabled", as_bool, True)
    stop_timeout = r.get("stop_timeout", as_duration(0, MAX_STOP_TIMEOUT), 10.0)
    pull = r.get("pull", as_enum({p.value: p for p in PullPolicy}), PullPolicy.MISSING)
    env = _read_env(r.table("env"))
    resources = read_resources(r.table("resources"))
    replicas = read_replicas(r.table("replicas"))
    metrics_table = r.table("metrics")
    metrics = read_metrics(metrics_table, app_port=port or 0)
    # Scrape entries that have problems of their own are not "no entry" as well.
    scraped = bool(metrics.scrape) or (metrics_table is not None and metrics_table.has("scrape"))
    autoscale = read_autoscale(r.table("autoscale"), resources, scraped=scraped)
    health = read_health(r.table("health"), app_port=port or 0)
    endpoint = _read_endpoint(r.table("endpoint", required=True))
    update = _read_update(r.table("update"))
    mounts = read_mounts(r.tables("mounts"))
    registry = read_registry(r.table("registry"))
    gateway = read_gateway(r.table("gateway"))
    r.close()
    if r.problems or name is None or image is None or port is None or endpoint is None:
        return None
    return DeploymentSpec(
        name=name,
        image=image,
        port=port,
        endpoint=endpoint,
        command=command,
        enabled=enabled,
        stop_timeout=stop_timeout,
        pull=pull,
        env=env,
        resources=resources,
        replicas=replicas,
        autoscale=autoscale,
        health=health,
        update=update,
        mounts=mounts,
        registry=registry,
        metrics=metrics,
        gateway=gateway,
    )


def _as_name(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    if not _NAME.fullmatch(raw):
        raise ValueError(
            'must be 1-63 characters of a-z, 0-9 and "-", starting and ending with a letter '
            "or digit"
        )
    return raw


def _as_image(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    try:
        parse_image_ref(raw)
    except ValueError as exc:
        raise ValueError(f"not a valid image reference: {exc}") from None
    return raw


def _as_command(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError("must be a list of strings")
    if not raw or not raw[0]:
        raise ValueError("must name a program: a non-empty list whose first item is not empty")
    return tuple(raw)


def _as_env_value(raw: object) -> str | SecretRef:
    # Integers have one obvious text; floats ("1.0" or "1"?) and booleans ("true" or
    # "True"?) do not, so those must be quoted.
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, Mapping):  # a reference: the value is kept by berthd, not the spec
        if set(raw) != {"secret"}:
            raise ValueError('a table must be { secret = "NAME" }')
        return as_secret_ref(raw)
    raise ValueError('must be a string (quote it) or an integer, or { secret = "NAME" }')


def _read_env(r: Reader | None) -> dict[str, str | SecretRef]:
    rule = "not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
    return read_string_table(r, _ENV_NAME, rule, _as_env_value)


def _as_bind(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    try:
        return ipaddress.ip_address(raw).compressed
    except ValueError:
        raise ValueError('must be an IPv4 or IPv6 address such as "0.0.0.0" or "::1"') from None


def _read_endpoint(r: Reader | None) -> Endpoint | None:
    if r is None:
        return None
    port = r.required("port", as_int(1024, 65535))
    bind = r.optional("bind", _as_bind)
    auth = read_auth(r.table("auth"))
    tls = read_tls(r.table("tls"))
    connect_timeout = r.get(
        "connect_timeout", as_duration(hi=3600.0, above=0), ENDPOINT_CONNECT_TIMEOUT
    )
    read_timeout = r.get(
        "read_timeout", as_duration(hi=MAX_TIMEOUT, above=0), ENDPOINT_READ_TIMEOUT
    )
    idle = r.get(
        "client_idle_timeout", as_duration(hi=MAX_TIMEOUT, above=0), ENDPOINT_CLIENT_IDLE_TIMEOUT
    )
    cold_start = r.get("cold_start_timeout", as_duration(lo=1.0, hi=MAX_TIMEOUT), 600.0)
    max_connections, trusted_proxies = read_limits(r)
    traffic = read_traffic(r)
    r.close()
    if port is None:
        return None
    return Endpoint(
        port=port,
        bind=default_bind(auth) if bind is None else bind,  # loopback unless protected
        bind_given=bind is not None,
        auth=auth,
        tls=tls,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        client_idle_timeout=idle,
        cold_start_timeout=cold_start,
        max_connections=max_connections,
        trusted_proxies=trusted_proxies,
        **traffic,
    )


def _read_update(r: Reader | None) -> Update:
    if r is None:
        return Update()
    surge = r.get("max_surge", as_int(0, 100), 1)
    unavailable = r.get("max_unavailable", as_int(0, 100), 0)
    deadline = r.get("progress_deadline", as_duration(hi=MAX_TIMEOUT, above=0), 600.0)
    drain = r.get("drain_timeout", as_duration(lo=0.0, hi=MAX_TIMEOUT), 30.0)
    strategy = r.optional("strategy", as_enum({s.value: s for s in UpdateStrategy}))
    if r.ok("max_surge", "max_unavailable") and surge == 0 and unavailable == 0:
        r.problem(
            "max_unavailable",
            "update.max_surge and update.max_unavailable cannot both be 0 "
            "(the update could never replace a replica)",
        )
    r.close()
    return Update(
        max_surge=surge,
        max_unavailable=unavailable,
        progress_deadline=deadline,
        drain_timeout=drain,
        strategy=strategy,
    )
