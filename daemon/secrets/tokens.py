"""A literal `[env]` value that looks like a credential: a warning at apply, never a refusal.

A literal value is kept verbatim in the spec history and shown by `berth get`, `--json` and
`history --diff`; a secret reference is not. The warning names the field and the kind of
token, and suggests `{ secret = "NAME" }`; it never repeats the value (nor any part of it).

What counts (after gitleaks' and GitHub secret scanning's published prefixes):
- a known prefix: Hugging Face `hf_`, OpenAI/Anthropic `sk-`, GitHub `ghp_` `gho_` `ghu_`
  `ghs_` `ghr_` `github_pat_`, Slack `xoxb-` `xoxp-`, AWS access key ids `AKIA`/`ASIA`
  (16 upper-case letters or digits after them), GitLab `glpat-`; each with enough
  characters after it to be a token rather than a word;
- a variable named like a credential (a `_`-separated word TOKEN, SECRET, PASSWORD,
  PASSWD, APIKEY, or API/ACCESS/PRIVATE followed by KEY) with a value of 8 or more
  characters that is not a boolean, a number or a `${...}` placeholder;
- a long high-entropy word: once the separators of names, paths and URLs (`/ . : @ ~ -`)
  are taken as breaks, a run of 20+ characters of `[A-Za-z0-9+=_]` with upper and lower
  case and digits all present and at least 3.7 bits of Shannon entropy per character
  (a random 20-character base62 word has ~3.9 on average; model names such as
  `mistralai/Mistral-7B-Instruct-v0.2` break into short words, hex digests lack upper
  case). A heuristic: a random token cut short by separators may pass unwarned.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Final

from config.reader import join_path

_PREFIXES: Final = (
    (re.compile(r"hf_[A-Za-z0-9]{20,}"), "a Hugging Face token"),
    (re.compile(r"sk-[A-Za-z0-9_-]{20,}"), "an API secret key (sk-)"),
    (re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"), "a GitHub token"),
    (re.compile(r"github_pat_[A-Za-z0-9_]{20,}"), "a GitHub token"),
    (re.compile(r"xox[bpas]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}"), "an AWS access key id"),
    (re.compile(r"glpat-[A-Za-z0-9_-]{20,}"), "a GitLab token"),
)
_CREDENTIAL_WORDS: Final = frozenset({"TOKEN", "SECRET", "PASSWORD", "PASSWD", "APIKEY", "PAT"})
_KEY_QUALIFIERS: Final = frozenset({"API", "ACCESS", "PRIVATE", "SECRET", "AUTH"})
_NOT_A_CREDENTIAL: Final = re.compile(r"(?i:true|false|yes|no|on|off|none|null)|[0-9.]+|\$\{.*\}")
_SEPARATORS: Final = re.compile(r"[/.:@~-]")
_WORD: Final = re.compile(r"[A-Za-z0-9+=_]{20,}")
MIN_NAMED_LENGTH: Final = 8
MIN_ENTROPY_BITS: Final = 3.7


def token_kind(name: str, value: str) -> str | None:
    """What the value looks like ("a GitHub token"), or None when it looks like no token."""
    for pattern, kind in _PREFIXES:
        if pattern.search(value):
            return kind
    if _named_like_credential(name) and len(value) >= MIN_NAMED_LENGTH:
        if not _NOT_A_CREDENTIAL.fullmatch(value.strip()):
            return f"a credential (the variable's name says {name})"
    if _high_entropy(value):
        return "a random token (a long, high-entropy value)"
    return None


def literal_token_warnings(env: Mapping[str, object]) -> list[str]:
    """One warning per literal `[env]` value that looks like a credential."""
    warnings = []
    for name, value in env.items():
        if not isinstance(value, str):
            continue  # a reference to a secret: what the warning asks for
        kind = token_kind(name, value)
        if kind is not None:
            warnings.append(
                f"{join_path('env', name)}: the literal value looks like {kind}; it is "
                "kept in the spec history and shown by berth get: store it with "
                f'`berth secret create NAME` and write {name} = {{ secret = "NAME" }}'
            )
    return warnings


def _named_like_credential(name: str) -> bool:
    words = [w for w in name.upper().split("_") if w]
    if any(w in _CREDENTIAL_WORDS for w in words):
        return True
    return any(a in _KEY_QUALIFIERS and b == "KEY" for a, b in zip(words, words[1:], strict=False))


def _high_entropy(value: str) -> bool:
    if "://" in value or value.startswith(("/", "./", "~")):
        return False
    for word in _WORD.findall(_SEPARATORS.sub(" ", value)):
        has_all = (
            any(c.islower() for c in word)
            and any(c.isupper() for c in word)
            and any(c.isdigit() for c in word)
        )
        if has_all and _entropy(word) >= MIN_ENTROPY_BITS:
            return True
    return False


def _entropy(word: str) -> float:
    counts = Counter(word)
    n = len(word)
    return -sum(c / n * math.log2(c / n) for c in counts.values())
