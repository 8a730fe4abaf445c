"""A bounded client load for end-to-end tests: a few threads sending GETs until stopped."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.e2e.berthd_process import wait_until

REPLICA_RE = re.compile(r"replica=(\S+)")
MESSAGE_RE = re.compile(r"message=(\S+)")


@dataclass
class Load:
    """`threads` clients, each sending GETs one after another until stopped (or capped)."""

    url: str
    threads: int = 4
    max_seconds: float = 20.0
    max_requests_per_thread: int = 20_000
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    # (monotonic time the answer came, replica hostname, message) per successful request
    answers: list[tuple[float, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self._workers), "a load thread did not stop"

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=15.0) as client:
            for n in range(self.max_requests_per_thread):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                sent = time.monotonic()
                try:
                    resp = client.get(self.url, params={"t": index, "n": n})
                except httpx.HTTPError as exc:
                    self._fail(f"thread {index} request {n}: {exc!r}")
                    continue
                now = time.monotonic()
                if resp.status_code != 200:
                    self._fail(f"thread {index} request {n}: {resp.status_code} {resp.text!r}")
                    continue
                replica = REPLICA_RE.search(resp.text)
                message = MESSAGE_RE.search(resp.text)
                with self._lock:
                    self.ok += 1
                    self.latencies.append(now - sent)
                    self.answers.append(
                        (
                            now,
                            replica.group(1) if replica else "?",
                            message.group(1) if message else "?",
                        )
                    )

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def replicas_since(self, since: float) -> Counter[str]:
        with self._lock:
            return Counter(r for t, r, _ in self.answers if t >= since)

    def messages_since(self, since: float) -> Counter[str]:
        with self._lock:
            return Counter(m for t, _, m in self.answers if t >= since)

    def wait_answers(self, count: int, since: float, timeout: float = 10.0) -> None:
        def enough() -> bool:
            with self._lock:
                return sum(1 for t, _, _ in self.answers if t >= since) >= count

        wait_until(f"{count} answers under load", enough, timeout)
