"""`LimitPolicy`: requests per minute, tokens per day and dollars per day and month, per key and per team.

    await policy.admit_request(identity)        # one request (the auth middleware): requests/minute
    policy.admit_now(identity)                  # the same, when `policy.local` (no await: in-process counters)
    await policy.check_budget(identity)         # refuse up front when a day's budget is already spent
    held = await policy.reserve(identity, tokens, usd)   # before an LLM call: its estimate
    await policy.settle(held, tokens, usd)      # after it: the real usage (0, 0 when it failed)
    (reserve_now / settle_now: the same without an await, when `policy.local`)

Windows are fixed and UTC-aligned: a minute, a day (from 00:00 UTC), a calendar month. Over a limit raises
`QuotaExceededError` (429) naming the limit, whose it is, and when its window resets.

The bound under concurrency: a reservation is checked and taken atomically, all counters at once
(`Counters.reserve`), so the calls admitted at any moment have together reserved at most the limit. A
call's estimate counts its prompt (~4 characters a token, +4 per message) and all of its `max_tokens`,
priced at the dearest deployment it may be served by; settling can only lower a counter unless a call
used more than its estimate. So a day's spend can exceed its limit only by what calls used beyond their
estimates — a prompt that tokenises at fewer than ~4 characters a token, or a local deployment whose
measured throughput fell between reserve and settle — and never by a burst: 50 concurrent calls against
a budget for 10 get 10 through (tests/test_governance_limits.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Mapping, NamedTuple

from ..core.errors import QuotaExceededError
from .counters import STALE, Cells, Charge, Counters, InProcessCounters, Refusal, Tally
from .identity import Identity, Limits

NANO = 1_000_000_000  # dollars are counted in nano-dollars (integers: atomic increments)
MINUTE, DAY = 60, 86_400


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """How much of one day's budget (tokens or dollars) a key or team has used or reserved so far today."""

    scope: str  # "key" or "team"
    who: str  # the key id or the team name
    what: str  # "tokens_per_day", "usd_per_day" or "usd_per_month"
    used: float  # tokens, or dollars
    limit: float

    @property
    def share(self) -> float:
        return self.used / self.limit if self.limit > 0 else 1.0


class Held(NamedTuple):
    """A reservation: the counters charged (with what was reserved on each) and what each counts. In
    process, `cells` are the counters themselves and `amounts` what was reserved: (tokens, nano-dollars),
    each cell having taken the one it counts (`Plan.tally`) (no `charges`)."""

    charges: list[Charge] | None
    plan: "Plan"
    cells: Cells | None = None
    amounts: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Bound:
    """One limit that applies to a caller: whose (scope "key" or "team", and which), what ("rpm", "tok",
    "usd", "usdm": dollars a month), the limit as configured and in counter units, and its counter's key
    without the window."""

    scope: str
    who: str
    what: str
    limit: float
    scaled: int
    prefix: str


@dataclass(slots=True)
class Plan:
    """Every limit that applies to one identity, worked out once (the hot path only adds the window)."""

    rpm: tuple[Bound, ...]
    budget: tuple[Bound, ...]  # tokens and dollars a day, dollars a month
    money: bool  # a dollar limit among them (else calls need no pricing)
    monthly: bool = False  # a month's limit among them (its counters live until the month's end)
    tokens: tuple[bool, ...] = ()  # per budget bound: counts tokens (else nano-dollars)
    day: int = -1  # the day `day_keys` are for
    day_keys: tuple[str, ...] = ()
    minute: int = -1  # the minute `minute_charges` are for
    minute_charges: tuple[Charge, ...] = ()
    rpm_limits: tuple[int, ...] = ()  # in counter units, per bound
    budget_limits: tuple[int, ...] = ()
    rpm_tally: Tally = field(init=False)  # one request onto each requests/minute counter
    tally: Tally = field(init=False)  # per budget counter: tokens (the first amount) or nano-dollars (the second)
    # in process: the counters themselves, for the window they were lent for
    minute_cells: Cells | None = None
    cells_minute: int = -1
    day_cells: Cells | None = None
    cells_day: int = -1

    def __post_init__(self) -> None:
        self.tokens = tuple(b.what == "tok" for b in self.budget)
        self.rpm_limits = tuple(b.scaled for b in self.rpm)
        self.budget_limits = tuple(b.scaled for b in self.budget)
        self.rpm_tally = Tally((0,) * len(self.rpm))
        self.tally = Tally([0 if t else 1 for t in self.tokens])

    def rpm_charges(self, minute: int, reset_in: float) -> tuple[Charge, ...]:
        """One request against each requests/minute limit in `minute`. Made once a minute: a counter's
        expiry (the window's end, +5 s) is the one worked out at the window's first request, so a counter
        created later in the window may outlive it by up to a minute (it is never read after its window:
        its key names the minute)."""
        if minute != self.minute:
            self.minute_charges = tuple(_charge(Charge, (f"{b.prefix}{minute}", 1, b.scaled, reset_in + 5))
                                        for b in self.rpm)
            self.minute = minute
        return self.minute_charges

    def keys_for(self, day: int) -> tuple[str, ...]:
        if day != self.day:
            month = _month(day * DAY)[0]
            self.day_keys, self.day = tuple(f"{b.prefix}{month if b.what == 'usdm' else day}" for b in self.budget), day
        return self.day_keys


_charge = _held = tuple.__new__  # _charge(Charge, (key, amount, limit, ttl_s)), _held(Held, (...)): without their Python-level __new__


class LimitPolicy:
    def __init__(self, counters: Counters, *, teams: Mapping[str, Limits], now: Callable[[], float] = time.time):
        """`teams`: each team's limits (a key's own come with its identity)."""
        self.counters = counters
        self._teams = dict(teams)
        self._now = now
        self._plans: dict[int, tuple[Identity, Plan]] = {}  # by id(identity): the authenticator reuses them
        self._local = counters if isinstance(counters, InProcessCounters) else None  # lends its counters
        self.local = self._local is not None  # the *_now methods apply (no await on the request path)

    def plan(self, ident: Identity) -> Plan:
        hit = self._plans.get(id(ident))
        if hit is not None and hit[0] is ident:
            return hit[1]
        whose = [("key", ident.key_id, ident.limits)]
        team = self._teams.get(ident.team) if ident.team else None
        if team is not None:
            whose.append(("team", ident.team, team))
        rpm, budget = [], []
        for scope, who, lim in whose:
            for what, limit, unit, into in (("rpm", lim.requests_per_minute, 1, rpm), ("tok", lim.tokens_per_day, 1, budget),
                                            ("usd", lim.usd_per_day, NANO, budget),
                                            ("usdm", lim.usd_per_month, NANO, budget)):
                if limit is not None:
                    into.append(Bound(scope, who, what, limit, math.floor(limit * unit), f"{what}:{scope}:{who}:"))
        plan = Plan(tuple(rpm), tuple(budget), any(b.what in ("usd", "usdm") for b in budget),
                    monthly=any(b.what == "usdm" for b in budget))
        if len(self._plans) >= 4096:
            self._plans.clear()
        self._plans[id(ident)] = (ident, plan)
        return plan

    def applies(self, ident: Identity) -> bool:
        """Whether any token or money limit applies (else calls skip reserving)."""
        return bool(self.plan(ident).budget)

    async def admit_request(self, ident: Identity) -> None:
        if self._local is not None:
            self.admit_now(ident)
            return
        plan = self.plan(ident)
        if not plan.rpm:
            return
        now = self._now()
        window = int(now // MINUTE)
        refused = await self.counters.reserve(plan.minute_charges if window == plan.minute
                                              else plan.rpm_charges(window, MINUTE - now % MINUTE))
        if refused is not None:
            raise _over(ident, plan.rpm[refused.index], now, MINUTE - now % MINUTE)

    def admit_now(self, ident: Identity) -> None:
        """`admit_request` on in-process counters (only when `local`)."""
        hit = self._plans.get(id(ident))  # (`plan`, its common case written out)
        plan = hit[1] if hit is not None and hit[0] is ident else self.plan(ident)
        if not plan.rpm:
            return
        now = self._now()
        window = int(now // MINUTE)
        cells = plan.minute_cells  # (the common case: this minute's counters, lent earlier)
        refused = self._local.take(cells, plan.rpm_tally, 1, 0, plan.rpm_limits) if cells is not None and \
            plan.cells_minute == window else STALE  # type: ignore[union-attr]
        if refused is STALE:
            refused = self._take_rpm(plan, window, now)
        if refused is not None:
            raise _over(ident, plan.rpm[refused.index], now, MINUTE - now % MINUTE)

    def _take_rpm(self, plan: Plan, window: int, now: float) -> Refusal | None:
        """One request against `window`'s requests/minute counters, lent anew (a new minute, or the first
        request, or counters that expired)."""
        local = self._local
        assert local is not None
        cells = plan.minute_cells = local.cells([f"{b.prefix}{window}" for b in plan.rpm], MINUTE - now % MINUTE + 5)
        plan.cells_minute = window
        return local.take(cells, plan.rpm_tally, 1, 0, plan.rpm_limits)

    async def check_budget(self, ident: Identity) -> None:
        """Refuse at once when a day's token or money budget is already used up (so /ask answers 429
        instead of a degraded answer)."""
        plan = self.plan(ident)
        bounds = plan.budget
        if not bounds:
            return
        now = self._now()
        for b, key in zip(bounds, plan.keys_for(int(now // DAY))):
            used = await self.counters.value(key)
            if used >= b.scaled:
                raise _over(ident, b, now, _month(now)[1] if b.what == "usdm" else DAY - now % DAY, used=used)

    async def reserve(self, ident: Identity, tokens: int, usd: float, plan: Plan | None = None) -> Held | None:
        """`plan`: the identity's (`plan(ident)`), when the caller has it already."""
        if self._local is not None:
            return self.reserve_now(ident, tokens, usd, plan)
        if plan is None:
            plan = self.plan(ident)
        bounds = plan.budget
        if not bounds:
            return None
        now = self._now()
        day = int(now // DAY)
        ttl = (_month(now)[1] if plan.monthly else DAY - now % DAY) + 60  # (a day's counter may outlive its day)
        nano = math.ceil(usd * NANO)
        charges = [_charge(Charge, (key, tokens if counts_tokens else nano, b.scaled, ttl))
                   for key, counts_tokens, b in zip(plan.day_keys if day == plan.day else plan.keys_for(day),
                                                    plan.tokens, bounds)]
        refused = await self.counters.reserve(charges)
        if refused is not None:
            b = bounds[refused.index]  # (it resets when its window ends: the counter outlives it by a minute)
            raise _over(ident, b, now, _month(now)[1] if b.what == "usdm" else DAY - now % DAY, used=refused.used,
                        need=charges[refused.index].amount)
        return Held(charges, plan)

    def reserve_now(self, ident: Identity, tokens: int, usd: float, plan: Plan | None = None) -> Held | None:
        """`reserve` on in-process counters (only when `local`)."""
        if plan is None:
            plan = self.plan(ident)
        bounds = plan.budget
        if not bounds:
            return None
        now = self._now()
        day = int(now // DAY)
        nano = math.ceil(usd * NANO)
        tally = plan.tally
        local: InProcessCounters = self._local  # type: ignore[assignment]  (only when `local`)
        cells = plan.day_cells
        refused = local.take(cells, tally, tokens, nano, plan.budget_limits) if cells is not None and \
            plan.cells_day == day else STALE
        if refused is STALE:  # a new day (or the first call): today's counters (a day's may outlive its day)
            ttl = (_month(now)[1] if plan.monthly else DAY - now % DAY) + 60
            cells = plan.day_cells = local.cells(plan.keys_for(day), ttl)
            plan.cells_day = day
            refused = local.take(cells, tally, tokens, nano, plan.budget_limits)
        if refused is None:
            return _held(Held, (None, plan, cells, (tokens, nano)))  # (a Held without its Python-level __new__)
        b = bounds[refused.index]  # (it resets when its window ends)
        raise _over(ident, b, now, _month(now)[1] if b.what == "usdm" else DAY - now % DAY, used=refused.used,
                    need=nano if tally.kinds[refused.index] else tokens)

    async def settle(self, held: Held | None, tokens: int, usd: float) -> None:
        if held is None:
            return
        if held.cells is not None:
            self.settle_now(held, tokens, usd)
            return
        plan = held.plan
        nano = math.ceil(usd * NANO) if plan.money else 0
        assert held.charges is not None
        await self.counters.adjust([(key, (tokens if counts_tokens else nano) - amount, ttl_s)
                                    for (key, amount, _, ttl_s), counts_tokens in zip(held.charges, plan.tokens)])

    def settle_now(self, held: Held | None, tokens: int, usd: float) -> None:
        """`settle` of a reservation on in-process counters (`reserve_now`'s)."""
        if held is None:
            return
        plan = held.plan  # (a reservation of `reserve_now`: its cells and amounts are set; no asserts on this path)
        reserved_tokens, reserved_nano = held.amounts  # type: ignore[misc]
        self._local.give(held.cells, plan.tally, tokens - reserved_tokens,  # type: ignore[union-attr]
                         (math.ceil(usd * NANO) if plan.money else 0) - reserved_nano)

    async def usage(self) -> list[BudgetUse]:
        """Today's use of every day budget of the keys seen since start and of their teams (for the budget
        alert, off the request path: one counter read each)."""
        bounds: dict[str, Bound] = {}
        for _, plan in list(self._plans.values()):
            for b in plan.budget:
                bounds.setdefault(b.prefix, b)
        now = self._now()
        day, month = int(now // DAY), _month(now)[0]
        out = []
        for b in bounds.values():
            used = await self.counters.value(f"{b.prefix}{month if b.what == 'usdm' else day}")
            out.append(BudgetUse(b.scope, b.who, _NAMES[b.what], used / NANO if b.what != "tok" else used, b.limit))
        return out


def _month(now: float) -> tuple[int, float]:
    """(the UTC calendar month `now` falls in, as year * 12 + month - 1; seconds until the next begins)."""
    d = datetime.fromtimestamp(now, timezone.utc)
    following = datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=timezone.utc)
    return d.year * 12 + d.month - 1, following.timestamp() - now


_NAMES = {"rpm": "requests_per_minute", "tok": "tokens_per_day", "usd": "usd_per_day", "usdm": "usd_per_month"}


def _over(ident: Identity, b: Bound, now: float, reset_in: float, *, used: int | None = None,
          need: int | None = None) -> QuotaExceededError:
    """`used`, `need`: in counter units."""
    name = _NAMES[b.what]
    text = {"rpm": f"{int(b.limit)} requests a minute", "tok": f"{int(b.limit)} tokens a day",
            "usd": f"${b.limit:g} a day", "usdm": f"${b.limit:g} a month"}[b.what]
    whose = f"key {ident.name!r} ({ident.key_id})" if b.scope == "key" else f"team {b.who!r}"
    resets = datetime.fromtimestamp(now + reset_in, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    detail = ""
    if used is not None:
        detail = f" ({_amount(b.what, used)} used or reserved"
        detail += f", this call needs up to {_amount(b.what, need)})" if need is not None else ")"
    hint = " or lower max_tokens" if need is not None else ""
    return QuotaExceededError(f"{whose} is over its {name} limit of {text}{detail}; it resets at {resets} "
                              f"(in {math.ceil(reset_in)} s){hint}", limit=name, retry_after=reset_in)


def _amount(what: str, value: int) -> str:
    return f"${value / NANO:.9f}".rstrip("0").rstrip(".") if what in ("usd", "usdm") else f"{value}"
