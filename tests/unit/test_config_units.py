"""Durations, sizes and image references: tables of good and bad text, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.image_ref import image_ref_problem, parse_image_ref
from config.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("0.1s", 0.1),
        (" 2s ", 2.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("10", "needs a unit"),
        ("-1s", "negative"),
        ("5x", "not a duration"),
        ("1.s", "not a duration"),
        ("s", "not a duration"),
        ("1s 2s", "not a duration"),
        ("1d", "not a duration"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.00025, "250us"),
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (10.0, "10s"),
        (90.0, "1m30s"),
        (300.0, "5m"),
        (3600.0, "1h"),
        (3661.5, "1h1m1.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_round_trip_from_microseconds(micros: int) -> None:
    seconds = micros / 1_000_000
    assert parse_duration(format_duration(seconds)) == seconds


@given(
    st.integers(0, 99),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
)
def test_duration_text_is_canonical(h: int, m: int, s: int, ms: int) -> None:
    written = f"{h}h{m}m{s}s{ms}ms"
    canonical = format_duration(parse_duration(written))
    assert parse_duration(canonical) == parse_duration(written)
    assert format_duration(parse_duration(canonical)) == canonical


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("0", 0),
        ("64Ki", 64 * 1024),
        ("512Mi", 512 * 1024**2),
        ("8Gi", 8 * 1024**3),
        ("1.5Gi", 1536 * 1024**2),
        ("2G", 2 * 10**9),
        ("100M", 100 * 10**6),
        ("4k", 4000),
        ("4K", 4000),
        ("1Ti", 1024**4),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a size"),
        ("Mi", "not a size"),
        ("-1Mi", "negative"),
        ("1.5", "whole number of bytes"),
        ("1Xi", 'unknown size unit "Xi"'),
        ("1MB", 'unknown size unit "MB"'),
        ("1e3", "not a size"),
        ("1 Gi", "not a size"),
    ],
)
def test_parse_size_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (7, "7"),
        (1024, "1Ki"),
        (512 * 1024**2, "512Mi"),
        (1536 * 1024**2, "1.5Gi"),
        (2 * 10**9, "2G"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=2**62))
def test_size_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(st.integers(0, 10**6), st.sampled_from(["", "Ki", "Mi", "Gi", "k", "M", "G"]))
def test_size_format_is_canonical(n: int, suffix: str) -> None:
    size = parse_size(f"{n}{suffix}")
    assert format_size(parse_size(format_size(size))) == format_size(size)


@pytest.mark.parametrize(
    "ref",
    [
        "busybox",
        "busybox:1.36",
        "library/busybox",
        "docker.io/library/busybox:latest",
        "localhost/berth-echo:1",
        "localhost:5000/team/model_server:v1.2-rc.3",
        "ghcr.io/org/some__name/a-b--c:tag",
        "registry.example.com:443/a/b/c",
        "[::1]:5000/x",
        "192.168.1.10:5000/x",
        "busybox@sha256:" + "a" * 64,
        "quay.io/x/y:1@sha256:" + "0123456789abcdef" * 4,
        "x@sha512:" + "f" * 128,
        "Registry.Example.com/x",  # upper case in the domain is fine
        "x:" + "t" * 128,
    ],
)
def test_valid_image_refs(ref: str) -> None:
    assert image_ref_problem(ref) is None
    assert str(parse_image_ref(ref)) == ref


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("", "empty"),
        ("busy box", "spaces"),
        ("docker.io/Library/busybox", "must be lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:.x", "invalid tag"),
        ("busybox:" + "t" * 129, "invalid tag"),
        ("busybox@sha256:abc", "64 lowercase hex"),
        ("busybox@sha256:" + "A" * 64, "64 lowercase hex"),
        ("busybox@md5:" + "a" * 32, "unsupported digest"),
        ("busybox@", "invalid digest"),
        ("a//b", "invalid repository name"),
        ("a/b_", "invalid repository name"),
        ("-a", "invalid repository name"),
        ("a___b", "invalid repository name"),
        ("host:port/x", "invalid registry port"),
        ("-host.io/x", "invalid registry host"),
        ("[::1/x", "unclosed"),
        ("[zz]:5000/x", "IPv6"),
        (":tag", "missing image name"),
        ("a/" * 130 + "b", "longer than 255"),
    ],
)
def test_invalid_image_refs(ref: str, reason: str) -> None:
    problem = image_ref_problem(ref)
    assert problem is not None and reason in problem


def test_image_ref_parts() -> None:
    ref = parse_image_ref("localhost:5000/team/app:1@sha256:" + "b" * 64)
    assert ref.domain == "localhost:5000"
    assert ref.path == "team/app"
    assert ref.tag == "1"
    assert ref.digest == "sha256:" + "b" * 64
    assert parse_image_ref("library/busybox").domain is None
