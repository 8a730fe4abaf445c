"""`[endpoint.tls]` (issue 13, point 2): the spec's field-path errors, its canonical form,
and the host check (`daemon.reconcile.endpoint_tls`): files under the credentials roots,
PEM, the key the certificate's. The files are the test's own (trustme), in a 0700 dir."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trustme

from config.errors import SpecError
from config.parse import parse_spec, spec_from_dict, spec_id, spec_to_dict, template_id
from config.spec import DeploymentSpec, EndpointTls
from daemon.reconcile.endpoint_tls import TlsFileError, load_tls, tls_problems

BASE = 'name = "a"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18080\n'
TLS = (
    '[endpoint.tls]\ncert = "/etc/berth/credentials/a.crt"\nkey = "/etc/berth/credentials/a.key"\n'
)


def spec(extra: str = "") -> DeploymentSpec:
    return parse_spec(BASE + extra)


def problems(extra: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        spec(extra)
    return err.value.messages()


def test_tls_parses_and_round_trips_and_changes_the_spec_id_not_the_template() -> None:
    s = spec(TLS)
    assert s.endpoint.tls == EndpointTls(
        cert="/etc/berth/credentials/a.crt", key="/etc/berth/credentials/a.key"
    )
    d = spec_to_dict(s, defaults=False)
    assert d["endpoint"]["tls"] == {
        "cert": "/etc/berth/credentials/a.crt",
        "key": "/etc/berth/credentials/a.key",
    }
    assert spec_from_dict(d) == s
    plain = spec()
    assert spec_id(plain) != spec_id(s)  # a new revision, recorded
    assert template_id(plain) == template_id(s)  # but no replica is replaced for it
    # The bind default is as without TLS (docs/spec.md "The bind default").
    assert s.endpoint.bind == plain.endpoint.bind


def test_tls_problems_name_their_field() -> None:
    assert problems('[endpoint.tls]\ncert = "rel.pem"\nkeyfile = "/k"\n') == [
        'endpoint.tls.cert: must be an absolute path (got "rel.pem")',
        "endpoint.tls.key: required",
        "endpoint.tls.keyfile: unknown key",
    ]
    assert problems('[endpoint.tls]\ncert = 1\nkey = "/a/../b"\n') == [
        "endpoint.tls.cert: must be a string (got 1)",
        'endpoint.tls.key: must not contain ".." (got "/a/../b")',
    ]
    assert problems('tls = "on"\n') == ['endpoint.tls: must be a table ([endpoint.tls]) (got "on")']


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "credentials"
    d.mkdir(mode=0o700)
    return d


def write(path: Path, data: bytes, mode: int = 0o600) -> str:
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def test_the_host_check_loads_a_matching_pair_and_names_what_is_wrong(root: Path) -> None:
    ca = trustme.CA()
    cert, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    crt = write(root / "a.crt", cert.cert_chain_pems[0].bytes())
    key = write(root / "a.key", cert.private_key_pem.bytes())
    roots = (root,)
    assert isinstance(load_tls(EndpointTls(crt, key), roots), ssl.SSLContext)
    assert tls_problems(EndpointTls(crt, key), roots) == []
    assert tls_problems(None, roots) == []

    wrong = write(root / "b.key", other.private_key_pem.bytes())
    assert tls_problems(EndpointTls(crt, wrong), roots) == [
        "endpoint.tls.key: is not the private key of endpoint.tls.cert (they do not match)"
    ]
    assert tls_problems(EndpointTls(key, key), roots) == [
        "endpoint.tls.cert: is not a PEM certificate"
    ]
    assert tls_problems(EndpointTls(crt, crt), roots) == [
        "endpoint.tls.key: is not a PEM private key"
    ]
    (problem,) = tls_problems(EndpointTls("/etc/ssl/private/x.pem", key), roots)
    assert problem.startswith("endpoint.tls.cert: must lie under berthd's credentials_roots")
    os.symlink(crt, root / "link.crt")
    (problem,) = tls_problems(EndpointTls(str(root / "link.crt"), key), roots)
    assert problem.startswith("endpoint.tls.cert: is or goes through a symbolic link")
    loose = write(root / "loose.key", cert.private_key_pem.bytes(), mode=0o666)
    (problem,) = tls_problems(EndpointTls(crt, loose), roots)
    assert problem.startswith("endpoint.tls.key: must not be writable by group or others")
    with pytest.raises(TlsFileError, match="^endpoint.tls.key: does not exist on this host"):
        load_tls(EndpointTls(crt, str(root / "none.key")), roots)
    # No message holds a byte of the files.
    for p in tls_problems(EndpointTls(crt, wrong), roots) + [problem]:
        assert "PRIVATE" not in p and "BEGIN" not in p
