"""The canary's stage decision, off the request path.

    decide(canary, baseline, candidate, has_feedback) -> Decision     pure: hold | advance | promote | rollback
    CanaryWatch.tick()      every `registry.canary_check_s` in each server: flush this replica's counts to the
                            registry database, reload the view when the registry changed, decide each running
                            canary on every replica's counts, apply (compare-and-set: one replica wins), and
                            on a rollback fire an alert (the log and telemetry's alert webhooks)

A stage is judged once the candidate has `min_requests` calls in it (and the baseline as many, when a guard
compares with it); an absolute error-rate guard the candidate can no longer meet rolls it back sooner.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable, Sequence

from .canary import Canary, CanaryStore, Decision
from .canary_split import KEEP_PROMOTED_S, CanaryTally, CanaryView
from .guards import Figures, certainly_broken, judge, parse_guards

log = logging.getLogger(__name__)


def decide(c: Canary, baseline: Figures, candidate: Figures, *, has_feedback: bool = False) -> Decision:
    guards = parse_guards(c.guards)
    n = c.min_requests
    figures = {"baseline": baseline.as_dict(), "candidate": candidate.as_dict()}
    broken = [g for g in guards if certainly_broken(g, candidate, n)]
    if broken and candidate.requests < n:
        v = judge(broken[0], baseline, candidate)
        return Decision("rollback", f"guard {v.guard} broken: {v.text}", {"figures": figures, "guards": [v.__dict__]})
    need_base = n if any(g.relative for g in guards) else 0
    if candidate.requests < n or baseline.requests < need_base:
        return Decision("hold", f"waiting: {candidate.requests}/{n} candidate calls"
                        + (f", {baseline.requests}/{need_base} baseline calls" if need_base else ""), {"figures": figures})
    verdicts = [judge(g, baseline, candidate, has_feedback=has_feedback) for g in guards]
    detail = {"figures": figures, "guards": [v.__dict__ for v in verdicts]}
    failed = [v for v in verdicts if v.holds is False]
    if failed:
        return Decision("rollback", "; ".join(f"guard {v.guard} broken: {v.text}" for v in failed), detail)
    held = ", ".join(f"{v.guard} ({v.text})" for v in verdicts) or "no guards"
    nxt = c.stage + 1
    if c.stages[nxt] >= 100:
        return Decision("promote", f"stage {c.stage + 1} passed: {held}", detail)
    return Decision("advance", f"stage {c.stage + 1} passed ({held}): {c.stages[nxt]:g}% next", detail)


class CanaryWatch:
    def __init__(self, canaries: CanaryStore, view: CanaryView, tally: CanaryTally, *, interval_s: float = 1.0,
                 on_change: Callable[[], Any] | None = None, notifiers: Sequence[Callable[..., Any]] = (),
                 replica: str | None = None, clock: Callable[[], float] = time.time,
                 ratings: Callable[[str, float, float], tuple[float, int]] | None = None):
        """`on_change`: after this replica changed the registry (the alias view reloads at once);
        `notifiers`: telemetry's alert notifiers, each called as `notify("firing", Alert, since)`;
        `ratings(NAME@VERSION, since, until)` -> (sum of ratings, how many): a feedback source for the
        quality guard (None: none, the guard is skipped)."""
        self.ratings = ratings
        self.canaries = canaries
        self.view = view
        self.tally = tally
        self._interval_s = interval_s
        self._on_change = on_change
        self.notifiers = list(notifiers)
        self.replica = replica or f"{os.uname().nodename}-{os.getpid()}-{os.urandom(3).hex()}"
        self._clock = clock
        self.decisions: list[tuple[Canary, Decision]] = []  # this replica's, newest last (bounded)

    async def tick(self) -> list[tuple[Canary, Decision]]:
        """One round: flush, reload, decide, apply, alert. Returns the decisions this replica applied."""
        snapshot = self.tally.snapshot({s.canary for s in self.view.splits().values()})
        applied = await asyncio.to_thread(self._tick, snapshot)
        for c, d in applied:
            if d.action == "rollback":
                await self._alert(c, d)
        return applied

    def _tick(self, snapshot: dict) -> list[tuple[Canary, Decision]]:
        self.canaries.flush(self.replica, snapshot)
        if self.view.reload(force=False) and self._on_change is not None:
            self._on_change()  # (the registry moved: the alias view reads it in the same tick, so both agree)
        applied: list[tuple[Canary, Decision]] = []
        if not self.view.splits():  # (a canary's start moves the registry's version: the view then holds it)
            return applied
        for c in self.canaries.running():
            baseline, candidate = self.canaries.figures(c.id, c.stage)
            if self.ratings is not None:
                now = self._clock()
                baseline.rating_sum, baseline.ratings = self.ratings(c.base_key, c.stage_at, now)
                candidate.rating_sum, candidate.ratings = self.ratings(c.key, c.stage_at, now)
            d = decide(c, baseline, candidate, has_feedback=self.ratings is not None)
            if d.action == "hold":
                continue
            if self.canaries.apply(c, d, by=f"canary-watch:{self.replica}") is not None:
                applied.append((c, d))
                log.log(logging.ERROR if d.action == "rollback" else logging.INFO, "canary %s on %s: %s (%s)",
                        c.key, c.alias, d.action, d.reason)
        if applied:
            self.view.reload()
            if self._on_change is not None:
                self._on_change()
            self.decisions = (self.decisions + applied)[-100:]
        return applied

    async def _alert(self, c: Canary, d: Decision) -> None:
        from ..telemetry.alerts import Alert

        alert = Alert("canary_rollback", f"canary_rollback:{c.alias}:{c.id}", "critical",
                      f"canary of {c.key} on {c.alias} rolled back at {c.weight:g}%: {d.reason}")
        for notify in self.notifiers:
            try:
                await notify("firing", alert, self._clock())
            except Exception:  # noqa: BLE001 - a broken notifier must not stop the watch
                log.exception("canary alert notifier failed")

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - keep watching (a registry outage: the last view keeps serving)
                log.exception("canary check failed")
            await asyncio.sleep(self._interval_s)


def feedback_ratings(store: Any) -> Callable[[str, float, float], tuple[float, int]]:
    """The quality guard's source: `POST /feedback` ratings (scores normalised to [0, 1]) of the calls a
    version served, in the registry database's `feedback` table."""
    def ratings(key: str, since: float, until: float) -> tuple[float, int]:
        with store._reading():
            row = store._run("SELECT SUM(score), COUNT(*) FROM feedback WHERE model_version = ? AND at >= ? AND at < ?",
                             (key, since, until))[0]
        return float(row[0] or 0.0), int(row[1] or 0)
    return ratings


__all__ = ["CanaryWatch", "KEEP_PROMOTED_S", "decide", "feedback_ratings"]
