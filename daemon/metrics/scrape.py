"""The scraper: each ready replica's own Prometheus metrics (`[[metrics.scrape]]`), on its period.

Theory of operation. `targets()` (the daemon's callable: every ready replica of a deployment
with scrape entries, once per entry, with the 127.0.0.1 port its container port is published
on) is asked at most every `discover_every` seconds and whenever a scrape falls due. A
target seen for the first time is scraped at once, then every `period`; each scrape is one
GET over berthd's one HTTP client (`daemon.http.client`), bounded by the entry's `timeout`
and by `max_body` bytes, and its body is parsed by prometheus-client's own text parser in a
worker thread (one at a time: a large body never stalls the trio loop, where the endpoints
run). The latest parsed families of each (replica, entry) are kept for the autoscaler, the
admin API and berthd's `/metrics` (`daemon.metrics.exposition`).

Invariants:
- A scrape that failed (connect, timeout, HTTP status, a body over the bound, not the text
  format) leaves that entry unknown, never zero: its previous result is dropped. Each
  distinct reason is logged once per entry, until a scrape of it works again.
- A replica that is no longer a target (not ready, removed, a new container) is forgotten
  at the next discovery, results and all; a scrape still in flight for it stores nothing.
- At most one scrape per (replica, entry) is in flight; a scrape that takes longer than its
  period delays the next one, it does not pile up.
- Only gauges (and untyped series) are values: a sample of a counter, histogram or summary
  never answers a query, nor does a NaN or an infinity.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from config.spec import Scrape, SeriesSelector
from config.units import format_duration, format_size
from daemon import __version__
from daemon.http.client import ConnectFailed, HttpClientError, TcpAddress, request

log = logging.getLogger("berthd.metrics")

MAX_BODY = 4 * 1024 * 1024  # vLLM's /metrics is ~50-100 KiB; TGI's and Triton's smaller
MAX_SERIES = 20_000  # samples in one scrape
DISCOVER_EVERY = 2.0  # a replica that became ready is scraped within this many seconds
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
VALUE_TYPES = frozenset({"gauge", "unknown"})


class ScrapeFailed(Exception):
    """One scrape did not give a page of metrics; the message says why, in a few words."""


@dataclass(frozen=True)
class ScrapeTarget:
    deployment: str
    replica_id: str
    container_id: str
    entry: int  # which [[metrics.scrape]] entry (its index)
    scrape: Scrape
    host_port: int  # where the entry's container port is published
    host: str = "127.0.0.1"

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.deployment, self.replica_id, self.entry)

    @property
    def where(self) -> str:
        return f":{self.scrape.port}{self.scrape.path}"


@dataclass(frozen=True)
class Scraped:
    """One entry's latest successful scrape of one replica."""

    target: ScrapeTarget
    families: tuple[Metric, ...]
    at: float  # trio clock
    series: int


@dataclass(frozen=True)
class ScrapedFamilies:
    """What `/metrics` re-exports for one replica: its scraped families, in scrape order."""

    deployment: str
    replica_id: str
    families: tuple[Metric, ...]


Fetch = Callable[[ScrapeTarget, int], Awaitable[bytes]]
Targets = Callable[[], Iterable[ScrapeTarget]]
Key = tuple[str, str, int]


async def fetch_exposition(target: ScrapeTarget, max_body: int) -> bytes:
    """The body of one GET of the target's page, at most `max_body` bytes (else it fails)."""
    address = TcpAddress(target.host, target.host_port)
    headers = [
        ("Host", f"{target.host}:{target.host_port}"),
        ("Accept", ACCEPT),
        ("Accept-Encoding", "identity"),
        ("User-Agent", f"berthd/{__version__}"),
    ]
    try:
        async with request(address, "GET", target.scrape.path, headers) as response:
            if response.status != 200:
                raise ScrapeFailed(f"HTTP {response.status}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ScrapeFailed(f"a {encoding}-encoded body (identity was asked)")
            body = await response.read(max_body + 1)
    except ConnectFailed as exc:
        raise ScrapeFailed(f"connect failed: {exc}") from exc
    except HttpClientError as exc:
        raise ScrapeFailed(str(exc)) from exc
    if len(body) > max_body:
        raise ScrapeFailed(f"the page is over {format_size(max_body)}")
    return body


def parse_exposition(body: bytes, max_series: int) -> tuple[Metric, ...]:
    """The families of a text-format (0.0.4) page, by prometheus-client's parser."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScrapeFailed(f"not UTF-8 text (byte {exc.start})") from exc
    families: list[Metric] = []
    series = 0
    try:
        for family in text_string_to_metric_families(text):
            series += len(family.samples)
            if series > max_series:
                raise ScrapeFailed(f"more than {max_series} series")
            families.append(family)
    except (ValueError, IndexError, TypeError) as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise ScrapeFailed(f"not the Prometheus text format: {detail[:80]}") from exc
    return tuple(families)


def gauge_value(families: Iterable[Metric], selector: SeriesSelector) -> float | None:
    """The sum of the finite gauge (or untyped) samples `selector` matches; None for none."""
    total = 0.0
    found = False
    for family in families:
        if family.type not in VALUE_TYPES or family.name != selector.name:
            continue
        for sample in family.samples:
            value = float(sample.value)
            if math.isfinite(value) and selector.matches(sample.name, sample.labels):
                total += value
                found = True
    return total if found else None


class Scraper:
    def __init__(
        self,
        targets: Targets,
        *,
        fetch: Fetch = fetch_exposition,
        discover_every: float = DISCOVER_EVERY,
        max_body: int = MAX_BODY,
        max_series: int = MAX_SERIES,
        parse_in_thread: bool = True,  # False: on the loop (tests on MockClock)
    ) -> None:
        self._targets_of = targets
        self._fetch = fetch
        self._parsing = trio.CapacityLimiter(1)  # one parse at a time, in a thread
        self._parse_in_thread = parse_in_thread
        self.discover_every = discover_every
        self.max_body = max_body
        self.max_series = max_series
        self._targets: dict[Key, ScrapeTarget] = {}
        self._due: dict[Key, float] = {}
        self._in_flight: set[Key] = set()
        self._latest: dict[Key, Scraped] = {}
        self._failed: dict[Key, str] = {}  # the reason last logged, until a scrape works
        self.scrapes = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (
            f"<Scraper targets={len(self._targets)} known={len(self._latest)} "
            f"failing={len(self._failed)} scrapes={self.scrapes}>"
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = trio.current_time()
                self.discover(now)
                for key, target in self._targets.items():
                    if key not in self._in_flight and self._due[key] <= now:
                        self._in_flight.add(key)
                        self._due[key] = now + target.scrape.period
                        nursery.start_soon(self.scrape, target)
                # A scrape still in flight past its due time starts again at a later wake.
                waiting = [d for k, d in self._due.items() if k not in self._in_flight]
                next_due = min(waiting, default=math.inf)
                await trio.sleep_until(min(next_due, now + self.discover_every))

    def discover(self, now: float) -> None:
        """Take the current targets; forget what belonged to replicas that are gone."""
        current = {t.key: t for t in self._targets_of()}
        for key in list(self._targets):
            if current.get(key) != self._targets[key]:
                self._forget(key)
        for key, target in current.items():
            if key not in self._targets:
                self._targets[key] = target
                self._due[key] = now

    def _forget(self, key: Key) -> None:
        del self._targets[key]
        self._due.pop(key, None)
        self._latest.pop(key, None)
        self._failed.pop(key, None)

    async def scrape(self, target: ScrapeTarget) -> None:
        """Scrape `target` once and keep the result (or its failure)."""
        try:
            try:
                with trio.fail_after(target.scrape.timeout):
                    body = await self._fetch(target, self.max_body)
            except trio.TooSlowError:
                raise ScrapeFailed(
                    f"no answer within {format_duration(target.scrape.timeout)}"
                ) from None
            families = await self._parse(body)
        except ScrapeFailed as exc:
            self._record_failure(target, str(exc))
        else:
            self._record(target, families)
        finally:
            self._in_flight.discard(target.key)

    async def _parse(self, body: bytes) -> tuple[Metric, ...]:
        if not self._parse_in_thread:
            return parse_exposition(body, self.max_series)
        return await trio.to_thread.run_sync(
            parse_exposition, body, self.max_series, limiter=self._parsing
        )

    def _current(self, target: ScrapeTarget) -> bool:
        return self._targets.get(target.key) == target

    def _record(self, target: ScrapeTarget, families: tuple[Metric, ...]) -> None:
        self.scrapes += 1
        if not self._current(target):
            return  # the replica left while it was scraped
        series = sum(len(f.samples) for f in families)
        self._latest[target.key] = Scraped(target, families, trio.current_time(), series)
        if self._failed.pop(target.key, None) is not None:
            log.info(
                "scrape of replica %s at %s works again (%d series)",
                target.replica_id,
                target.where,
                series,
                extra={"deployment": target.deployment},
            )

    def _record_failure(self, target: ScrapeTarget, reason: str) -> None:
        self.failures += 1
        if not self._current(target):
            return
        self._latest.pop(target.key, None)  # unknown now, not the last value seen
        if self._failed.get(target.key) != reason:
            self._failed[target.key] = reason
            log.warning(
                "cannot scrape replica %s at %s: %s (its metrics are unknown until it answers)",
                target.replica_id,
                target.where,
                reason,
                extra={"deployment": target.deployment},
            )

    # -- what the others read -----------------------------------------------------------

    def replicas(self, deployment: str) -> list[str]:
        """The replicas being scraped: the deployment's ready replicas with a scrape port."""
        return sorted({t.replica_id for t in self._targets.values() if t.deployment == deployment})

    def value(self, deployment: str, replica_id: str, selector: SeriesSelector) -> float | None:
        """The gauge on that replica now, summed over its matching series and its entries;
        None when no entry's latest scrape has it (failed, not yet, or not exported)."""
        found = [
            v
            for s in self._latest.values()
            if s.target.deployment == deployment and s.target.replica_id == replica_id
            if (v := gauge_value(s.families, selector)) is not None
        ]
        return sum(found) if found else None

    def total(self, deployment: str, selector: SeriesSelector) -> float | None:
        """The gauge over the deployment's ready replicas: the mean of those that have it
        times how many there are (one that could not be read counts as the others' mean),
        or None when none has it."""
        replicas = self.replicas(deployment)
        values = [v for r in replicas if (v := self.value(deployment, r, selector)) is not None]
        if not values:
            return None
        return sum(values) / len(values) * len(replicas)

    def exported(self) -> list[ScrapedFamilies]:
        """Every replica's latest families, for `/metrics` (by deployment, replica, entry)."""
        by_replica: dict[tuple[str, str], list[Metric]] = {}
        for key in sorted(self._latest):
            s = self._latest[key]
            by_replica.setdefault(key[:2], []).extend(s.families)
        return [ScrapedFamilies(d, r, tuple(fams)) for (d, r), fams in by_replica.items()]

    def target_states(self) -> list[tuple[ScrapeTarget, bool]]:
        """Each target and whether its latest scrape worked (`berth_scrape_up`)."""
        return [(self._targets[k], k in self._latest) for k in sorted(self._targets)]

    def deployment_json(
        self, deployment: str, selectors: Sequence[SeriesSelector]
    ) -> dict[str, Any]:
        """The admin API's `scraped` object: each query's value on each scraped replica, and
        each entry's state (age of the latest scrape, or why it failed)."""
        now = trio.current_time()
        replicas = []
        for replica_id in self.replicas(deployment):
            entries = []
            for key in sorted(k for k in self._targets if k[:2] == (deployment, replica_id)):
                target, latest = self._targets[key], self._latest.get(key)
                entries.append(
                    {
                        "port": target.scrape.port,
                        "path": target.scrape.path,
                        "ok": latest is not None,
                        "age_s": None if latest is None else round(now - latest.at, 1),
                        "series": None if latest is None else latest.series,
                        "error": self._failed.get(key),
                    }
                )
            values = {str(q): self.value(deployment, replica_id, q) for q in selectors}
            replicas.append({"replica_id": replica_id, "values": values, "scrapes": entries})
        averages: Mapping[str, float | None] = {
            str(q): _per_replica(self.total(deployment, q), len(replicas)) for q in selectors
        }
        return {"queries": [str(q) for q in selectors], "average": averages, "replicas": replicas}


def _per_replica(total: float | None, replicas: int) -> float | None:
    return None if total is None or replicas == 0 else total / replicas
