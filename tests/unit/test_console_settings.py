"""berthd.toml's `[console]`: off by default, loopback unless `[console.tls]` is set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.errors import SpecError
from config.parse_console import ConsoleSettings
from config.settings import load_settings
from config.spec import EndpointTls


def settings_of(tmp_path: Path, text: str) -> ConsoleSettings | None:
    path = tmp_path / "berthd.toml"
    path.write_text(text)
    return load_settings(path, {}, {}).console


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as caught:
        settings_of(tmp_path, text)
    return str(caught.value)


def test_off_by_default(tmp_path: Path) -> None:
    assert load_settings(None, {}, {}).console is None
    assert settings_of(tmp_path, 'state_dir = "/tmp/x"\n') is None


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9470", "127.0.0.1", 9470),
        ("[::1]:9471", "::1", 9471),
        ("127.0.0.9:1", "127.0.0.9", 1),
    ],
)
def test_loopback_listen(tmp_path: Path, listen: str, host: str, port: int) -> None:
    s = settings_of(tmp_path, f'[console]\nlisten = "{listen}"\n')
    assert s == ConsoleSettings(host=host, port=port)
    assert s.url == f"http://{s.listen}/console/"


@pytest.mark.parametrize("listen", ["0.0.0.0:9470", "192.168.1.5:9470", "[::]:9470", ":9470"])
def test_off_loopback_needs_tls(tmp_path: Path, listen: str) -> None:
    text = refusal(tmp_path, f'[console]\nlisten = "{listen}"\n')
    assert "console.listen:" in text
    assert "[console.tls]" in text and "passwords" in text


def test_off_loopback_with_tls(tmp_path: Path) -> None:
    s = settings_of(
        tmp_path,
        '[console]\nlisten = "0.0.0.0:9470"\n'
        '[console.tls]\ncert = "/etc/berth/credentials/c.crt"\n'
        'key = "/etc/berth/credentials/c.key"\n',
    )
    assert s is not None and s.tls == EndpointTls(
        cert="/etc/berth/credentials/c.crt", key="/etc/berth/credentials/c.key"
    )
    assert s.url == "https://0.0.0.0:9470/console/"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[console]\n", "console.listen: "),
        ('[console]\nlisten = "localhost:9470"\n', "console.listen: must name an IP address"),
        ('[console]\nlisten = "127.0.0.1:99999"\n', "console.listen: "),
        ('[console]\nlisten = "127.0.0.1:9470"\nport = 3\n', "console.port: unknown key"),
        ('[console]\nlisten = "127.0.0.1:9470"\n[console.tls]\ncert = "/c"\n', "console.tls.key"),
    ],
)
def test_refused(tmp_path: Path, text: str, said: str) -> None:
    assert said in refusal(tmp_path, text)


def test_berthd_loads_no_console_code_unless_configured() -> None:
    # `[console]` absent: berthd imports none of daemon.console (the server is imported
    # only by Berthd._start_console), and the proxy never does.
    script = (
        "import sys, daemon.main, daemon.berthd, proxy.endpoint\n"
        "print(sorted(m for m in sys.modules if m.startswith('daemon.console')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
