"""Alert rules, evaluated in the background, delivered to the log and to webhooks.

    signals (stats window, router state, month's spend) ──► rules (pure functions) ──► firing alerts
    AlertEngine: new alert → "firing" notice; still firing → nothing (de-duplicated); gone → "resolved" notice

Rules and severities:
    critical  service_down      no deployment can take calls (every breaker open or unhealthy)
    critical  deployment_down   a deployment's breaker is open, or its health probe fails
    critical  error_rate        failed calls / calls over the window ≥ error_rate (with ≥ min_calls)
    warning   p95_latency       p95 latency over the window above p95_latency_s
    warning   budget            this month's spend ≥ budget_share × monthly_budget_usd; and per API key and team
                                (governance), today's tokens or dollars ≥ budget_share × its day budget
    warning   memory            machine memory in use ≥ memory_percent
    info      cloud_share       the share of calls served by the cloud rose above cloud_share_info

Webhook body (JSON): {"status": "firing"|"resolved", "alert": {rule, key, severity, summary, value,
threshold, since}, "service": "nlweb-local"}. A webhook that fails is logged and retried at the next
change, never on the request path.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ..config.settings import AlertSettings

log = logging.getLogger(__name__)
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class Alert:
    rule: str
    key: str  # what de-duplicates: one alert per rule and subject (e.g. "deployment_down:local")
    severity: str
    summary: str
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Signals:
    """What the rules look at, gathered once per evaluation."""

    stats: dict[str, Any]  # stats.summarize() over the alert window
    breakers: dict[str, str] = field(default_factory=dict)  # deployment -> breaker state
    healthy: dict[str, bool] = field(default_factory=dict)  # deployment -> last health probe
    month_spend_usd: float | None = None
    memory_percent: float | None = None
    budgets: tuple[Any, ...] = ()  # governance.limits.BudgetUse: each key's and team's day budgets, used so far


Rule = Callable[[Signals, AlertSettings], list[Alert]]  # the thresholds are the config section itself


def service_down(s: Signals, t: AlertSettings) -> list[Alert]:
    names = set(s.breakers) | set(s.healthy)
    if names and all(s.breakers.get(n) == "open" or not s.healthy.get(n, True) for n in names):
        return [Alert("service_down", "service_down", "critical", "no deployment can take calls: every breaker is "
                      "open or every health probe fails")]
    return []


def deployment_down(s: Signals, t: AlertSettings) -> list[Alert]:
    out = []
    for name in sorted(set(s.breakers) | set(s.healthy)):
        why = [w for w, bad in (("breaker open", s.breakers.get(name) == "open"),
                                ("health probe failing", not s.healthy.get(name, True))) if bad]
        if why:
            out.append(Alert("deployment_down", f"deployment_down:{name}", "critical",
                             f"deployment {name} is down ({', '.join(why)})"))
    return out


def error_rate(s: Signals, t: AlertSettings) -> list[Alert]:
    calls, errors = s.stats.get("calls", 0), s.stats.get("errors", 0)
    if calls >= t.min_calls and errors / calls >= t.error_rate:
        rate = errors / calls
        return [Alert("error_rate", "error_rate", "critical", f"{rate:.0%} of {calls} LLM calls failed over the last "
                      f"{s.stats.get('window_s', 0):.0f}s (threshold {t.error_rate:.0%})", rate, t.error_rate)]
    return []


def p95_latency(s: Signals, t: AlertSettings) -> list[Alert]:
    p95 = (s.stats.get("latency_s") or {}).get("p95")
    if p95 is not None and p95 > t.p95_latency_s:
        return [Alert("p95_latency", "p95_latency", "warning", f"p95 latency {p95:.2f}s is above {t.p95_latency_s:g}s",
                      p95, t.p95_latency_s)]
    return []


def budget(s: Signals, t: AlertSettings) -> list[Alert]:
    if not t.monthly_budget_usd or s.month_spend_usd is None:
        return []
    limit = t.monthly_budget_usd * t.budget_share
    if s.month_spend_usd >= limit:
        return [Alert("budget", "budget", "warning", f"this month's LLM spend ${s.month_spend_usd:.2f} reached "
                      f"{s.month_spend_usd / t.monthly_budget_usd:.0%} of the ${t.monthly_budget_usd:g} budget",
                      s.month_spend_usd, limit)]
    return []


def limit_budgets(s: Signals, t: AlertSettings) -> list[Alert]:
    """A key's or a team's day budget (auth.teams, a key's --limits) at budget_share or more."""
    out = []
    for u in s.budgets:
        if u.share >= t.budget_share:
            used = f"${u.used:.4f} of ${u.limit:g}" if u.what.startswith("usd") else f"{u.used:g} of {u.limit:g} tokens"
            out.append(Alert("budget", f"budget:{u.scope}:{u.who}:{u.what}", "warning",
                             f"{u.scope} {u.who!r} has used {u.share:.0%} of its {u.what} budget "
                             f"{'this month' if u.what.endswith('month') else 'today'} ({used})",
                             round(u.share, 4), t.budget_share))
    return out


def memory(s: Signals, t: AlertSettings) -> list[Alert]:
    if s.memory_percent is not None and s.memory_percent >= t.memory_percent:
        return [Alert("memory", "memory", "warning", f"machine memory {s.memory_percent:.0f}% in use",
                      s.memory_percent, t.memory_percent)]
    return []


def cloud_share(s: Signals, t: AlertSettings) -> list[Alert]:
    local = (s.stats.get("share") or {}).get("local_calls")
    if t.cloud_share_info is None or local is None or s.stats.get("calls", 0) < t.min_calls:
        return []
    if 1 - local > t.cloud_share_info:
        return [Alert("cloud_share", "cloud_share", "info", f"{1 - local:.0%} of calls went to the cloud",
                      1 - local, t.cloud_share_info)]
    return []


RULES: tuple[Rule, ...] = (service_down, deployment_down, error_rate, p95_latency, budget, limit_budgets, memory,
                          cloud_share)


class WebhookNotifier:
    """POSTs each notice as JSON to every URL (aiohttp; one shared session, short timeout)."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float = 5.0):
        self.urls = list(urls)
        self._timeout_s = timeout_s
        self._session: Any = None
        self.failures = 0

    async def __call__(self, status: str, alert: Alert, since: float) -> None:
        if not self.urls:
            return
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        body = {"status": status, "alert": {**asdict(alert), "since": since}, "service": "nlweb-local"}
        for url in self.urls:
            try:
                async with self._session.post(url, json=body) as r:
                    if r.status >= 300:
                        raise RuntimeError(f"HTTP {r.status}")
            except Exception as e:  # noqa: BLE001 - a broken webhook must not stop the others or the server
                self.failures += 1
                log.warning("alert webhook %s failed: %s", url, e)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AlertEngine:
    """Turns each evaluation's firing alerts into firing/resolved notices, once per change."""

    def __init__(self, thresholds: AlertSettings, *, rules: Sequence[Rule] = RULES,
                 notify: Sequence[Callable[[str, Alert, float], Any]] = (), clock: Callable[[], float] = time.time):
        self.thresholds = thresholds
        self._rules = rules
        self.notifiers = list(notify)
        self._clock = clock
        self._active: dict[str, tuple[Alert, float]] = {}

    def active(self) -> list[dict[str, Any]]:
        order = {s: i for i, s in enumerate(SEVERITIES)}
        return [{**asdict(a), "since": since} for a, since in
                sorted(self._active.values(), key=lambda x: (order.get(x[0].severity, 9), x[0].key))]

    async def evaluate(self, signals: Signals) -> list[tuple[str, Alert]]:
        firing: dict[str, Alert] = {}
        for rule in self._rules:
            try:
                for a in rule(signals, self.thresholds):
                    firing[a.key] = a
            except Exception:  # noqa: BLE001 - one broken rule must not silence the rest
                log.exception("alert rule %s failed", getattr(rule, "__name__", rule))
        now = self._clock()
        changes: list[tuple[str, Alert, float]] = []
        for key, a in firing.items():
            if key not in self._active:
                self._active[key] = (a, now)
                changes.append(("firing", a, now))
            else:
                self._active[key] = (a, self._active[key][1])  # keep the start; refresh the figures
        for key in [k for k in self._active if k not in firing]:
            a, since = self._active.pop(key)
            changes.append(("resolved", a, since))
        for status, a, since in changes:
            level = logging.INFO if status == "resolved" or a.severity == "info" else \
                logging.ERROR if a.severity == "critical" else logging.WARNING
            log.log(level, "alert %s [%s] %s", status, a.severity, a.summary)
            for n in self.notifiers:
                await n(status, a, since)
        return [(s, a) for s, a, _ in changes]


class AlertMonitor:
    """Gathers `Signals` from telemetry and the router every `interval_s` and runs the engine."""

    def __init__(self, engine: AlertEngine, telemetry: Any, router: Any = None, *, window_s: float = 300.0,
                 interval_s: float = 15.0, month_start: Callable[[float], float] | None = None):
        self.engine = engine
        self._telemetry = telemetry
        self._router = router
        self._window_s = window_s
        self._interval_s = interval_s
        self._month_start = month_start or _month_start
        self.budgets: Callable[[], Any] | None = None  # async () -> [BudgetUse] (governance's limits, when on)

    async def signals(self) -> Signals:
        from .stats import summarize

        rows, now, span, _ = self._telemetry.window.snapshot(self._window_s)
        stats = await asyncio.to_thread(summarize, rows, now=now, span_s=span, buckets=1)
        breakers, healthy = {}, {}
        if self._router is not None:
            for v in self._router.deployments():
                breakers[v.name], healthy[v.name] = v.breaker, v.healthy
        spend = None
        ledger = self._telemetry.ledger
        if ledger is not None and self.engine.thresholds.monthly_budget_usd:
            spend = await asyncio.to_thread(ledger.spend, self._month_start(now))
        budgets = tuple(await self.budgets()) if self.budgets is not None else ()
        return Signals(stats, breakers, healthy, spend, _memory_percent(), budgets)

    async def run_once(self) -> list[tuple[str, Alert]]:
        return await self.engine.evaluate(await self.signals())

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("alert evaluation failed")
            await asyncio.sleep(self._interval_s)


def _month_start(now: float) -> float:
    """The start of `now`'s calendar month, UTC."""
    import calendar

    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def _memory_percent() -> float | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return None
    return psutil.virtual_memory().percent
