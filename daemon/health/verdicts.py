"""A replica's health: probe results in, `started` / `ready` / restart verdicts out. Pure.

Kubernetes' semantics (and Paperspace's): the startup probe, when there is one, gates the
other two; until it passes nothing else is probed, and it has a budget (`Probe.budget`:
`initial_delay + failure_threshold x period`, or `timeout_total`) from the container's
start: a failure at or past the budget, after at least `failure_threshold` of them, means
"restart". So a model that loads in 30 s passes the default startup probe (10 s x 3).
Readiness decides traffic: `success_threshold` consecutive passes make the replica ready,
`failure_threshold` consecutive failures take it out of rotation, and it comes back when it
passes again. `failure_threshold` liveness failures mean "restart".
With no readiness probe, a TCP connect to the app port is the readiness probe (the app
listens: it is ready), checked every second.

One `ReplicaHealth` lives for one run of a container: a restart makes a new one, so nothing
from before a restart is trusted. An adopted replica (found running by a restarted berthd)
starts from fresh probes too, but without waiting out `initial_delay` and with one readiness
pass enough: it was serving a moment ago. One whose last verdict (kept in the store) was
ready for this very container begins ready (`was_ready`): back in rotation at once, its
startup probe taken as passed, every other probe due at once to confirm it, and taken out
as any ready replica is (`failure_threshold` failures in a row).

Time is explicit (`now`, trio's clock in seconds): the table tests drive it with numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from config.spec import Health, Probe
from daemon.health.probes import ProbeResult


class ProbeKind(StrEnum):
    STARTUP = "startup"
    READINESS = "readiness"
    LIVENESS = "liveness"


class Transition(StrEnum):
    STARTED = "started"  # the startup probe passed
    READY = "ready"
    UNREADY = "unready"
    RESTART = "restart"  # startup or liveness failed: drain, stop, start again


def default_readiness(app_port: int) -> Probe:
    return Probe(port=app_port, tcp=True, period=1.0, timeout=1.0, failure_threshold=1)


@dataclass
class ProbeTrack:
    kind: ProbeKind
    probe: Probe
    next_at: float
    successes: int = 0
    failures: int = 0
    in_flight: bool = False
    last: ProbeResult | None = None


@dataclass
class ReplicaHealth:
    tracks: dict[ProbeKind, ProbeTrack]
    started: bool  # the startup probe passed (or there is none)
    adopted: bool = False
    ready: bool = False
    ever_ready: bool = False
    restart_reason: str | None = None
    last_result: ProbeResult | None = field(default=None)
    give_up_at: float | None = None  # the startup budget runs out (trio clock)

    @classmethod
    def begin(
        cls,
        health: Health,
        app_port: int,
        started_at: float,
        *,
        adopted: bool = False,
        was_ready: bool = False,
    ) -> ReplicaHealth:
        probes = {
            ProbeKind.STARTUP: health.startup,
            ProbeKind.READINESS: health.readiness or default_readiness(app_port),
            ProbeKind.LIVENESS: health.liveness,
        }
        tracks = {
            kind: ProbeTrack(kind, probe, started_at + (0.0 if adopted else probe.initial_delay))
            for kind, probe in probes.items()
            if probe is not None
        }
        startup = health.startup
        give_up_at = started_at + startup.budget if startup is not None else None
        if adopted and was_ready:
            # Ready when the berthd before this one stopped: in rotation now, its startup
            # long passed; every track probes at once and failures count as for any ready
            # replica (failure_threshold in a row takes it out).
            return cls(tracks, started=True, adopted=True, ready=True, ever_ready=True)
        return cls(
            tracks, started=ProbeKind.STARTUP not in tracks, adopted=adopted, give_up_at=give_up_at
        )

    def __repr__(self) -> str:
        state = "ready" if self.ready else "started" if self.started else "starting"
        return f"<ReplicaHealth {state} restart={self.restart_reason!r}>"

    def _active(self) -> list[ProbeTrack]:
        if self.restart_reason is not None:
            return []
        if not self.started:
            return [self.tracks[ProbeKind.STARTUP]]
        return [t for k, t in self.tracks.items() if k != ProbeKind.STARTUP]

    def due(self, now: float) -> list[ProbeTrack]:
        """Probes to run now; each is marked in flight until its result is recorded.

        The next probe of a track is due one period after this one begins (kubelet's
        ticker), not after its result: the prober knows when to wake without waiting for
        results. A probe still in flight then is not doubled: the next runs after it."""
        tracks = [t for t in self._active() if not t.in_flight and t.next_at <= now]
        for t in tracks:
            t.in_flight = True
            t.next_at = now + t.probe.period
        return tracks

    def abandon(self, kind: ProbeKind) -> None:
        """The probe `due` handed out will give no result: the track may run again."""
        self.tracks[kind].in_flight = False

    def probe_soon(self, kind: ProbeKind, now: float) -> None:
        """Bring a probe forward (the proxy saw the replica fail a request)."""
        track = self.tracks.get(kind)
        if track is not None:
            track.next_at = min(track.next_at, now)

    def next_due(self) -> float | None:
        times = [t.next_at for t in self._active() if not t.in_flight]
        return min(times) if times else None

    @property
    def loading(self) -> bool:
        """Up but not ready yet (a model loading): its startup probe passed, or, with none,
        its server answered a readiness probe (HTTP, not ready). Before that: starting."""
        if self.ready or not self.started:
            return False
        if ProbeKind.STARTUP in self.tracks:
            return True
        last = self.tracks[ProbeKind.READINESS].last
        return last is not None and last.answered

    @property
    def consecutive_failures(self) -> int:
        return max((t.failures for t in self.tracks.values()), default=0)

    def record(self, kind: ProbeKind, result: ProbeResult, now: float) -> list[Transition]:
        track = self.tracks[kind]
        track.in_flight = False
        track.last = self.last_result = result
        if result.ok:
            track.successes += 1
            track.failures = 0
        else:
            track.failures += 1
            track.successes = 0
        if self.restart_reason is not None:
            return []
        return self._judge(track, now)

    def _judge(self, track: ProbeTrack, now: float) -> list[Transition]:
        probe, kind = track.probe, track.kind
        if kind is ProbeKind.STARTUP:
            if track.successes >= 1:
                self.started = True
                for other in self.tracks.values():
                    if other is not track:
                        other.next_at = now
                return [Transition.STARTED]
            out_of_budget = self.give_up_at is None or now >= self.give_up_at
            if track.failures >= probe.failure_threshold and out_of_budget:
                return self._restart(track)
            return []
        if kind is ProbeKind.LIVENESS:
            return self._restart(track) if track.failures >= probe.failure_threshold else []
        needed = 1 if self.adopted and not self.ever_ready else probe.success_threshold
        if not self.ready and track.successes >= needed:
            self.ready = self.ever_ready = True
            return [Transition.READY]
        if self.ready and track.failures >= probe.failure_threshold:
            self.ready = False
            return [Transition.UNREADY]
        return []

    def _restart(self, track: ProbeTrack) -> list[Transition]:
        detail = track.last.detail if track.last else "no answer"
        self.restart_reason = f"{track.kind} probe failed {track.failures} times ({detail})"
        transitions = [Transition.RESTART]
        if self.ready:
            self.ready = False
            transitions.insert(0, Transition.UNREADY)
        return transitions
