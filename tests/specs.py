"""Deployment specs for tests that run the example image (busybox httpd on 8080, /health)."""

from __future__ import annotations


def echo_spec(
    name: str,
    image: str,
    port: int,
    *,
    count: int = 2,
    message: str = "hello",
    extra: str = "",
) -> str:
    """`count` echo replicas answering with `message`, ready when /health answers (probed
    every second), behind an endpoint on 127.0.0.1:`port`; `extra` is appended (tables)."""
    return f"""
name = "{name}"
image = "{image}"
port = 8080
stop_timeout = "1s"
[env]
MESSAGE = "{message}"
[replicas]
count = {count}
[health.readiness]
path = "/health"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
{extra}"""
