"""Progress of a rollout, and when it has stalled for too long. Pure: time comes in.

A rollout (Kubernetes' Deployment progress deadline) makes progress when one more replica
of the new revision becomes ready, or one more old replica is gone. No progress for the
spec's `[update] progress_deadline` means the rollout failed: the worker then rolls the
deployment back to its last good revision.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.units import format_duration


@dataclass
class Rollout:
    revision: int
    deadline: float  # seconds without progress before the rollout counts as failed
    last_progress_at: float
    ready_updated: int = 0
    stale: int | None = None

    def observe(self, now: float, ready_updated: int, stale: int) -> None:
        progressed = ready_updated > self.ready_updated or (
            self.stale is not None and stale < self.stale
        )
        if progressed:
            self.last_progress_at = now
        self.ready_updated = max(self.ready_updated, ready_updated)
        self.stale = stale if self.stale is None else min(self.stale, stale)

    def stalled(self, now: float) -> bool:
        return now - self.last_progress_at > self.deadline

    def reason(self, desired: int, why: str | None) -> str:
        text = (
            f"no progress for {format_duration(self.deadline)}: "
            f"{self.ready_updated}/{desired} new replicas ready"
        )
        return f"{text} ({why})" if why else text
