"""Quadlet unit files for the export tests: a reader, the key check, and the `.service`
Quadlet (Podman 5.4) would generate from a `.container` or `.volume` unit.

The reader follows Podman 5.4's `pkg/systemd/parser` (unitfile.go, split.go): lines are
trimmed; `#` and `;` start comments; a trailing backslash joins the next line (the
backslash dropped, nothing added); `[Section]` then `Key=value`, a key may repeat. Word
splitting (`split_words`) is split.go's with SplitRelax|SplitUnquote|SplitCUnescape, as
Quadlet reads Exec=, Environment=, Label=, Annotation=, Secret= and PodmanArgs= (an empty
word ends the split there, as it does in Podman's port). `escape_words` is split.go's
escapeWords, which writes the generated ExecStart=; `exec_argv` reads an ExecStart= line
back as systemd does (specifiers, then words, then `$$`), so a test sees the argv the
container really gets.

`container_service` follows quadlet.go's ConvertContainer for the keys the export writes
(any other key raises, so a new key needs its translation here first); the flags are the
`podman run` options the 5.4 docs give for each key.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

KEYS_FILE = Path(__file__).parent / "data" / "export" / "quadlet-keys-podman-5.4.txt"
PODMAN = "/usr/bin/podman"

# The sections each Quadlet file type may hold (the others are passed through to systemd).
UNIT_SECTIONS = {
    ".container": ("Unit", "Container", "Service", "Install", "Quadlet"),
    ".volume": ("Unit", "Volume", "Service", "Install", "Quadlet"),
}


class UnitSyntaxError(ValueError):
    pass


@dataclass
class UnitFile:
    """Sections in file order, each a list of (key, value) in order (keys may repeat)."""

    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def all(self, section: str, key: str) -> list[str]:
        values: list[str] = []
        for k, v in self.sections.get(section, []):
            if k == key:
                if v == "":
                    values = []  # an empty value clears the ones before (systemd's rule)
                else:
                    values.append(v)
        return values

    def last(self, section: str, key: str) -> str | None:
        values = self.all(section, key)
        return values[-1] if values else None

    def keys(self, section: str) -> list[str]:
        return [k for k, _ in self.sections.get(section, [])]


def parse_unit(text: str) -> UnitFile:
    unit = UnitFile()
    current: list[tuple[str, str]] | None = None
    pending = ""
    lines = text.removesuffix("\n").split("\n")
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line == "" or line[0] in "#;":
            continue  # a comment, also inside a continued line
        if line.endswith("\\") and number != len(lines):
            pending += line[:-1]
            continue
        line, pending = pending + line.removesuffix("\\"), ""
        if line.startswith("["):
            end = line.find("]")
            if end == -1 or line[end + 1 :].strip() or end == 1:
                raise UnitSyntaxError(f"line {number}: a bad section header: {line!r}")
            current = unit.sections.setdefault(line[1:end], [])
        elif "=" in line and not line.startswith("="):
            if current is None:
                raise UnitSyntaxError(f"line {number}: a key before any section")
            key, value = line.split("=", 1)
            current.append((key.rstrip(), value.lstrip()))
        else:
            raise UnitSyntaxError(f"line {number}: not a key, section or comment: {line!r}")
    return unit


def load_keys(path: Path = KEYS_FILE) -> dict[str, set[str] | None]:
    """Section -> the keys documented for it (None: any key, systemd's own section)."""
    keys: dict[str, set[str] | None] = {}
    section: str | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line[1:-1]
            keys[section] = set()
        elif section is not None:
            known = keys[section]
            if line == "*":
                keys[section] = None
            elif known is not None:
                known.add(line)
    return keys


def key_problems(unit: UnitFile, suffix: str, keys: dict[str, set[str] | None]) -> list[str]:
    problems = []
    for section in unit.sections:
        if section not in UNIT_SECTIONS[suffix] or section not in keys:
            problems.append(f"[{section}]: not a section of a {suffix} unit in Podman 5.4")
            continue
        known = keys[section]
        for key in unit.keys(section):
            if known is not None and key not in known:
                problems.append(f"[{section}] {key}=: not a documented Podman 5.4 key")
    return problems


# --- words ---------------------------------------------------------------------------

_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "s": " ",
}  # fmt: skip


def _unescape(text: str, i: int) -> tuple[str, int]:
    """The C escape after the backslash at text[i-1]: (character, next index)."""
    c = text[i]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 1
    if c == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 1 : i + 3]):
        return chr(int(text[i + 1 : i + 3], 16)), i + 3
    if c == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 1 : i + 5]):
        return chr(int(text[i + 1 : i + 5], 16)), i + 5
    if re.fullmatch(r"[0-7]{3}", text[i : i + 3]):
        return chr(int(text[i : i + 3], 8)), i + 3
    raise UnitSyntaxError(f"an unknown escape \\{c} in {text!r}")


def split_words(text: str) -> list[str]:
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\n\r":
            i += 1
        if i >= n:
            return words
        out: list[str] = []
        quote = ""
        while i < n:
            c = text[i]
            if c == "\\":
                if i + 1 >= n:
                    i += 1
                    break
                ch, i = _unescape(text, i + 1)
                out.append(ch)
            elif quote:
                if c == quote:
                    quote = ""
                else:
                    out.append(c)
                i += 1
            elif c in "'\"":
                quote = c
                i += 1
            elif c in " \t\n\r":
                break
            else:
                out.append(c)
                i += 1
        if not out:
            return words  # Podman's port: an empty word ends the split
        words.append("".join(out))


def _needs_escape(c: str) -> bool:
    return ord(c) <= 128 and (c.isspace() or ord(c) < 32 or ord(c) == 127 or c in "\"'\\")


_ESCAPE_OUT = {"\a": "\\a", "\b": "\\b", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               "\f": "\\f", "\\": "\\\\", " ": " ", '"': '\\"', "'": "'"}  # fmt: skip


def escape_words(words: list[str]) -> str:
    out = []
    for w in words:
        if any(_needs_escape(c) for c in w):
            body = "".join(
                _ESCAPE_OUT.get(c, f"\\x{ord(c):02x}") if _needs_escape(c) else c for c in w
            )
            out.append(f'"{body}"')
        else:
            out.append(w)
    return " ".join(out)


def resolve_specifiers(text: str, specifiers: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        letter = m.group(1)
        if letter == "%":
            return "%"
        if letter not in specifiers:
            raise UnitSyntaxError(f"specifier %{letter} unknown to this test in {text!r}")
        return specifiers[letter]

    return re.sub(r"%(.)", one, text)


def _literal_dollars(word: str) -> str:
    """systemd's variable substitution on one argv word, for words with no variables:
    `$$` is `$`; a `$` that would expand a variable fails the test."""
    out, i = [], 0
    while i < len(word):
        if word[i] == "$":
            if word[i + 1 : i + 2] == "$":
                out.append("$")
                i += 2
                continue
            if re.match(r"\$(\{|[A-Za-z_])", word[i:]):
                raise UnitSyntaxError(f"systemd would expand a variable in {word!r}")
        out.append(word[i])
        i += 1
    return "".join(out)


def exec_argv(line: str, specifiers: dict[str, str]) -> list[str]:
    """An ExecStart= value as the argv systemd runs (no environment variables)."""
    words = split_words(resolve_specifiers(line, specifiers))
    return [_literal_dollars(w) for w in words]


# --- the .service Quadlet generates ----------------------------------------------------

_STRING_FLAGS = {"Pull": "--pull", "ShmSize": "--shm-size", "StopTimeout": "--stop-timeout"}
_HEALTH_FLAGS = (
    ("HealthCmd", "cmd"),
    ("HealthInterval", "interval"),
    ("HealthOnFailure", "on-failure"),
    ("HealthRetries", "retries"),
    ("HealthStartPeriod", "start-period"),
    ("HealthTimeout", "timeout"),
    ("HealthStartupCmd", "startup-cmd"),
    ("HealthStartupInterval", "startup-interval"),
    ("HealthStartupRetries", "startup-retries"),
    ("HealthStartupTimeout", "startup-timeout"),
)
_TRANSLATED = {
    "ContainerName", "Image", "Exec", "Environment", "Secret", "PublishPort", "AddDevice",
    "Ulimit", "PodmanArgs", "Volume", "Mount", "Notify", "Label", "Annotation",
    *_STRING_FLAGS, *(k for k, _ in _HEALTH_FLAGS),
}  # fmt: skip


def _lookup(unit: UnitFile, key: str) -> str | None:
    """Quadlet's Lookup: the last value, trailing blanks and surrounding quotes trimmed."""
    value = unit.last("Container", key)
    return None if value is None else value.rstrip().strip('"')


def _key_values(unit: UnitFile, key: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in unit.all("Container", key):
        for assign in split_words(value):
            name, eq, v = assign.partition("=")
            if eq:
                pairs[name] = v
    return pairs


def volume_resource(volume: UnitFile, file_name: str) -> str:
    return volume.last("Volume", "VolumeName") or f"systemd-{file_name.removesuffix('.volume')}"


def _write(sections: dict[str, list[tuple[str, str]]]) -> str:
    out = []
    for name, lines in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k}={v}" for k, v in lines)
        out.append("")
    return "\n".join(out)


def container_argv(unit: UnitFile, volumes: dict[str, UnitFile]) -> tuple[list[str], list[str]]:
    """(podman run's argv, the units it requires) for a .container's [Container]."""
    unknown = set(unit.keys("Container")) - _TRANSLATED
    if unknown:
        raise NotImplementedError(f"no translation in this test for {sorted(unknown)}")
    image = _lookup(unit, "Image")
    if not image:
        raise UnitSyntaxError("no Image=")
    name = _lookup(unit, "ContainerName") or "systemd-%N"
    argv = [PODMAN, "run", "--name", name, "--cidfile=%t/%N.cid", "--replace", "--rm"]
    argv.append("--cgroups=split")
    requires: list[str] = []
    for key, flag in sorted(_STRING_FLAGS.items()):
        value = _lookup(unit, key)
        if value:
            argv += [flag, value]
    for value in unit.all("Container", "Ulimit"):
        argv += ["--ulimit", value]
    notify = _lookup(unit, "Notify")
    argv.append("--sdnotify=healthy" if notify == "healthy" else "--sdnotify=conmon")
    argv.append("-d")
    for value in unit.all("Container", "AddDevice"):
        for device in split_words(value):
            argv += ["--device", device]
    for value in unit.all("Container", "Volume"):
        parts = value.split(":", 2)
        source, dest = (parts[0], parts[1]) if len(parts) >= 2 else ("", parts[0])
        options = f":{parts[2]}" if len(parts) == 3 else ""
        if source.startswith("/"):
            requires.append(f"RequiresMountsFor={source}")
        elif source.endswith(".volume"):
            if source not in volumes:
                raise UnitSyntaxError(f"Volume={value}: no {source} unit")
            service = source.removesuffix(".volume") + "-volume.service"
            requires += [f"Requires={service}", f"After={service}"]
            source = volume_resource(volumes[source], source)
        argv += ["-v", f"{source}:{dest}{options}" if source else dest]
    for value in unit.all("Container", "PublishPort"):
        argv += ["--publish", value]
    for flag, key in (
        ("--env", "Environment"),
        ("--label", "Label"),
        ("--annotation", "Annotation"),
    ):
        for k, v in sorted(_key_values(unit, key).items()):
            argv += [flag, f"{k}={v}"]
    for value in unit.all("Container", "Secret"):
        for secret in split_words(value):
            argv += ["--secret", secret]
    for value in unit.all("Container", "Mount"):
        for mount in split_words(value):
            fields = next(csv.reader([mount]))
            for f in fields:
                if f.startswith(("source=", "src=")) and f.split("=", 1)[1].startswith("/"):
                    requires.append(f"RequiresMountsFor={f.split('=', 1)[1]}")
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(fields)
            argv += ["--mount", buffer.getvalue()]
    for key, suffix in _HEALTH_FLAGS:
        value = _lookup(unit, key)
        if value:
            argv += [f"--health-{suffix}", value]
    for value in unit.all("Container", "PodmanArgs"):
        argv += split_words(value)
    argv.append(image)
    exec_value = unit.last("Container", "Exec")
    if exec_value is not None:
        argv += split_words(exec_value)
    return argv, requires


def container_service(unit: UnitFile, source_path: Path, volumes: dict[str, UnitFile]) -> str:
    """The `NAME.service` Quadlet 5.4 generates from `NAME.container` (rootful)."""
    argv, requires = container_argv(unit, volumes)
    sections = {name: list(lines) for name, lines in unit.sections.items()}
    unit_lines = [("Wants", "network-online.target"), ("After", "network-online.target")]
    unit_lines += sections.pop("Unit", [])
    unit_lines += [("SourcePath", str(source_path)), ("RequiresMountsFor", "%t/containers")]
    unit_lines += [tuple(r.split("=", 1)) for r in requires]  # type: ignore[misc]
    stop = [PODMAN, "rm", "-v", "-f", "-i", "--cidfile=%t/%N.cid"]
    service = sections.pop("Service", [])
    service += [
        ("Environment", "PODMAN_SYSTEMD_UNIT=%n"),
        ("KillMode", "mixed"),
        ("ExecStop", escape_words(stop)),
        ("ExecStopPost", escape_words(["-" + stop[0], *stop[1:]])),
        ("Delegate", "yes"),
        ("Type", "notify"),
        ("NotifyAccess", "all"),
        ("SyslogIdentifier", "%N"),
        ("ExecStart", escape_words(argv)),
    ]
    out = {"Unit": unit_lines, "X-Container": sections.pop("Container", []), "Service": service}
    out.update(sections)
    return _write(out)


def volume_service(unit: UnitFile, file_name: str, source_path: Path) -> str:
    """The `NAME-volume.service` Quadlet 5.4 generates from `NAME.volume`."""
    unknown = set(unit.keys("Volume")) - {"VolumeName", "Label"}
    if unknown:
        raise NotImplementedError(f"no translation in this test for {sorted(unknown)}")
    argv = [PODMAN, "volume", "create", "--ignore"]
    labels: dict[str, str] = {}
    for value in unit.all("Volume", "Label"):
        for assign in split_words(value):
            k, _, v = assign.partition("=")
            labels[k] = v
    for k, v in sorted(labels.items()):
        argv += ["--label", f"{k}={v}"]
    argv.append(volume_resource(unit, file_name))
    sections = {name: list(lines) for name, lines in unit.sections.items()}
    unit_lines = [("Wants", "network-online.target"), ("After", "network-online.target")]
    unit_lines += sections.pop("Unit", [])
    unit_lines += [("SourcePath", str(source_path)), ("RequiresMountsFor", "%t/containers")]
    service = sections.pop("Service", []) + [
        ("ExecStart", escape_words(argv)),
        ("Type", "oneshot"),
        ("RemainAfterExit", "yes"),
        ("SyslogIdentifier", "%N"),
    ]
    out = {"Unit": unit_lines, "X-Volume": sections.pop("Volume", []), "Service": service}
    out.update(sections)
    return _write(out)


def service_file_name(file_name: str) -> str:
    if file_name.endswith(".volume"):
        return file_name.removesuffix(".volume") + "-volume.service"
    return file_name.removesuffix(".container") + ".service"
