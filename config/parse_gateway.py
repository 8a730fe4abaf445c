"""`[gateway]`, twice: in a deployment spec (which models it serves through berthd's model
gateway) and in berthd.toml (where the gateway listens, and how it is protected).

    # a deployment spec
    [gateway]
    models = ["llama-3.1-8b", "llama3.1"]        # names and aliases, unique on the box
    rewrite_model = "meta-llama/Llama-3.1-8B-Instruct"   # what the server expects (optional)
    priority = 0                                 # higher is kept longer by a swap
    group = "chat"                               # models that may share the box (optional)
    min_idle = "30s"                             # idle at least this long before a swap

    # berthd.toml
    [gateway]
    listen = "127.0.0.1:8000"                    # absent: no gateway
    max_body = "32Mi"                            # a request body read to find `model`
    [gateway.auth]                               # as [endpoint.auth]
    [gateway.tls]                                # as [endpoint.tls]

A model name is what clients send as `model`: 1-128 characters, no whitespace or control
character; the names in one spec are unique. That no other deployment serves one of them is
checked at apply, by berthd (`daemon.gateway.routes`): the spec alone cannot know.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from config.errors import Problem, WithheldValueError
from config.parse_auth import read_auth
from config.parse_listen import ip_listen
from config.parse_tls import read_tls
from config.reader import Reader, as_duration, as_int, as_size, join_path
from config.spec import EndpointAuth, EndpointTls, Gateway

MAX_MODELS: Final = 64
MAX_PRIORITY: Final = 1_000_000
MAX_MIN_IDLE: Final = 7 * 86400.0
DEFAULT_MAX_BODY: Final = 32 * 1024 * 1024
MIN_MAX_BODY: Final = 1024
MAX_MAX_BODY: Final = 1024 * 1024 * 1024
_MODEL: Final = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")
_REWRITE: Final = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_GROUP: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")
# The two `[gateway]` tables' keys: one written in the other is named as such, not just
# "unknown key" (a newcomer puts `models` in berthd.toml, or `listen` in a spec).
SPEC_KEYS: Final = ("models", "rewrite_model", "priority", "group", "min_idle")
SETTINGS_KEYS: Final = ("listen", "max_body", "auth", "tls")


def read_gateway(r: Reader | None) -> Gateway | None:
    """A spec's `[gateway]`; None when absent (or wrong: then problems are recorded)."""
    if r is None:
        return None
    models = _read_models(r)
    rewrite = r.optional("rewrite_model", _as_rewrite)
    priority = r.get("priority", as_int(-MAX_PRIORITY, MAX_PRIORITY), 0)
    group = r.optional("group", _as_group)
    min_idle = r.get("min_idle", as_duration(0.0, MAX_MIN_IDLE), 0.0)
    _refuse_keys_of_the_other(
        r,
        SETTINGS_KEYS,
        "berthd.toml's [gateway] key, not a spec's: where the gateway listens and how it is "
        "protected is berthd's, for every model (docs/gateway.md)",
    )
    r.close()
    if models is None:
        return None
    return Gateway(
        models=models, rewrite_model=rewrite, priority=priority, group=group, min_idle=min_idle
    )


def _read_models(r: Reader) -> tuple[str, ...] | None:
    if not r.has("models"):
        r.required("models", _as_list)  # records "required"
        return None
    raw = r.optional("models", _as_list)
    if raw is None:
        return None
    names: list[str] = []
    bad = False
    for i, item in enumerate(raw):
        path = join_path(r.path_of("models"), i)
        try:
            name = _as_model(item)
        except ValueError as exc:
            r.problems.append(Problem(path, str(exc), item))
            bad = True
            continue
        if name in names:
            first = join_path(r.path_of("models"), names.index(name))
            r.problems.append(Problem(path, f'"{name}" is listed twice (first at {first})'))
            bad = True
            continue
        names.append(name)
    return None if bad else tuple(names)


def _as_list(raw: object) -> list[object]:
    if not isinstance(raw, list):
        raise ValueError('must be a list of model names, such as ["llama-3.1-8b"]')
    if not raw:
        raise ValueError("must name at least one model")
    if len(raw) > MAX_MODELS:
        raise ValueError(f"at most {MAX_MODELS} names")
    return raw


def _as_model(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    if not _MODEL.fullmatch(raw):
        raise ValueError("must be 1-128 characters, no whitespace or control character")
    return raw


def _as_rewrite(raw: object) -> str:
    if not isinstance(raw, str) or not _REWRITE.fullmatch(raw):
        raise ValueError("must be a string of 1-256 characters, no control character")
    return raw


def _as_group(raw: object) -> str:
    if not isinstance(raw, str) or not _GROUP.fullmatch(raw):
        raise ValueError(
            'must be 1-63 characters of A-Z, a-z, 0-9, ".", "_" and "-", starting with a '
            "letter or digit"
        )
    return raw


@dataclass(frozen=True)
class GatewaySettings:
    """berthd.toml's `[gateway]`: the model gateway listens at `host`:`port`."""

    host: str
    port: int
    max_body: int = DEFAULT_MAX_BODY
    auth: EndpointAuth | None = None
    tls: EndpointTls | None = None

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def read_gateway_settings(
    r: Reader | None,
) -> GatewaySettings | None:
    """berthd.toml's `[gateway]`; None when absent (or wrong: then problems are recorded)."""
    if r is None:
        return None
    listen = r.required("listen", ip_listen(8000))
    max_body = r.get(
        "max_body",
        as_size(MIN_MAX_BODY, lo_text="1Ki", hi=MAX_MAX_BODY, hi_text="1Gi"),
        DEFAULT_MAX_BODY,
    )
    auth = read_auth(r.table("auth"))
    tls = read_tls(r.table("tls"))
    _refuse_keys_of_the_other(
        r,
        SPEC_KEYS,
        "a deployment spec's [gateway] key, not berthd.toml's: put it in the spec of the "
        "deployment that serves the models (docs/gateway.md)",
    )
    r.close()
    if listen is None:
        return None
    host, port = listen
    return GatewaySettings(host=host, port=port, max_body=max_body, auth=auth, tls=tls)


def _refuse_keys_of_the_other(r: Reader, keys: tuple[str, ...], message: str) -> None:
    """Each of `keys` present in `r` is a problem saying where it belongs (then no longer an
    unknown key for `close`); its value is not shown back (an auth table may hold a key)."""
    for key in keys:
        if r.has(key):
            r.optional(key, _refused(message))


def _refused(message: str) -> Callable[[object], object]:
    def convert(raw: object) -> object:
        raise WithheldValueError(message)

    return convert
