"""OCI image references, checked against the distribution/reference grammar.

    reference  := name [":" tag] ["@" digest]
    name       := [domain "/"] path            (at most 255 characters)
    domain     := host [":" port]              host: DNS name, IPv4, or [IPv6]
    path       := component ("/" component)*   component: [a-z0-9]+ ([._]|__|-+ [a-z0-9]+)*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex            sha256: 64, sha384: 96, sha512: 128 hex

The first "/"-separated part is the domain when it holds a "." or a ":", is "localhost",
or has an upper-case letter (Docker's rule, so "localhost/x" and "ghcr.io/x" are domains
and "library/x" is a path). berth does not add Docker's "docker.io/library/" defaults:
Podman resolves short names itself (registries.conf), so the reference is kept as written.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")
NAME_MAX = 255


@dataclass(frozen=True)
class ImageRef:
    domain: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        out = f"{self.domain}/{self.path}" if self.domain else self.path
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_image_ref(text: str) -> ImageRef:
    """Split `text` into its parts; ValueError with the reason when it is not a reference."""
    if not text:
        raise ValueError("empty image reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise ValueError("an image reference cannot contain spaces")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        _check_digest(digest)
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ValueError(
                f'invalid tag "{tag}": letters, digits, "_", "." and "-", '
                "not starting with . or -, at most 128"
            )
    if not name:
        raise ValueError("missing image name")
    if len(name) > NAME_MAX:
        raise ValueError(f"image name longer than {NAME_MAX} characters")
    domain, path = _split_domain(name)
    if domain is not None:
        _check_domain(domain)
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
                raise ValueError(f'repository name "{component}" must be lowercase')
            raise ValueError(
                f'invalid repository name component "{component}": '
                'lowercase letters and digits, separated by ".", "_", "__" or "-"'
            )
    return ImageRef(domain=domain, path=path, tag=tag, digest=digest)


def image_ref_problem(text: str) -> str | None:
    """Why `text` is not a valid image reference, or None when it is."""
    try:
        parse_image_ref(text)
    except ValueError as exc:
        return str(exc)
    return None


def _split_domain(name: str) -> tuple[str | None, str]:
    first, sep, rest = name.partition("/")
    if not sep:
        return None, name
    if "." in first or ":" in first or first == "localhost" or first.lower() != first:
        return first, rest
    return None, name


def _check_domain(domain: str) -> None:
    host, port = domain, None
    if domain.startswith("["):
        end = domain.find("]")
        if end < 0:
            raise ValueError(f'invalid registry "{domain}": unclosed "["')
        host, after = domain[1:end], domain[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'invalid registry "{domain}": not an IPv6 address') from None
        if after:
            if not after.startswith(":"):
                raise ValueError(f'invalid registry "{domain}"')
            port = after[1:]
    elif ":" in domain:
        host, port = domain.split(":", 1)
        if not host or not all(_DOMAIN_COMPONENT.fullmatch(p) for p in host.split(".")):
            raise ValueError(f'invalid registry host "{host}"')
    elif not all(_DOMAIN_COMPONENT.fullmatch(p) for p in domain.split(".")):
        raise ValueError(f'invalid registry host "{domain}"')
    if port is not None and not (port.isascii() and port.isdigit()):
        raise ValueError(f'invalid registry port "{port}"')


def _check_digest(digest: str) -> None:
    algorithm, sep, hex_ = digest.partition(":")
    if not sep:
        raise ValueError(f'invalid digest "{digest}": expected "sha256:<64 hex digits>"')
    want = _DIGEST_LENGTHS.get(algorithm)
    if want is None:
        raise ValueError(f'unsupported digest algorithm "{algorithm}" (sha256, sha384, sha512)')
    if len(hex_) != want or not _HEX.fullmatch(hex_):
        raise ValueError(f"invalid {algorithm} digest: expected {want} lowercase hex digits")
