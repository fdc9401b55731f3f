"""`LimitPolicy`: requests per minute, tokens per day and dollars per day, per key and per team.

    await policy.admit_request(identity)        # one request (the auth middleware): requests/minute
    await policy.check_budget(identity)         # refuse up front when a day's budget is already spent
    held = await policy.reserve(identity, tokens, usd)   # before an LLM call: its estimate
    await policy.settle(held, tokens, usd)      # after it: the real usage (0, 0 when it failed)

Windows are fixed and UTC-aligned: a minute, a day (from 00:00 UTC). Over a limit raises
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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Mapping

from ..core.errors import QuotaExceededError
from .counters import Charge, Counters
from .identity import Identity, Limits

NANO = 1_000_000_000  # dollars are counted in nano-dollars (integers: atomic increments)
MINUTE, DAY = 60, 86_400


@dataclass(slots=True)
class Held:
    """A reservation: the counters charged and what was reserved on each (to settle)."""

    charges: list[tuple[str, str, int, float]]  # (what: "tok"|"usd", counter key, reserved, ttl_s)


class LimitPolicy:
    def __init__(self, counters: Counters, *, teams: Mapping[str, Limits], now: Callable[[], float] = time.time):
        """`teams`: each team's limits (a key's own come with its identity)."""
        self.counters = counters
        self._teams = dict(teams)
        self._now = now

    def _limits(self, ident: Identity) -> list[tuple[str, str, Limits]]:
        """[(scope, id, limits)] that apply: the key's, then its team's."""
        out = [("key", ident.key_id, ident.limits)]
        team = self._teams.get(ident.team) if ident.team else None
        if team is not None:
            out.append(("team", ident.team, team))
        return out

    def applies(self, ident: Identity) -> bool:
        """Whether any token or money limit applies (else calls skip reserving)."""
        return any(lim.tokens_per_day is not None or lim.usd_per_day is not None for _, _, lim in self._limits(ident))

    async def admit_request(self, ident: Identity) -> None:
        now = self._now()
        window, reset = int(now // MINUTE), MINUTE - now % MINUTE
        charges, names = [], []
        for scope, who, lim in self._limits(ident):
            if lim.requests_per_minute is not None:
                charges.append(Charge(f"rpm:{scope}:{who}:{window}", 1, lim.requests_per_minute, reset + 5))
                names.append((scope, who, lim.requests_per_minute))
        if not charges:
            return
        refused = await self.counters.reserve(charges)
        if refused is not None:
            scope, who, limit = names[refused.index]
            raise _over(ident, scope, who, "requests_per_minute", f"{limit} requests a minute", now, reset)

    async def check_budget(self, ident: Identity) -> None:
        """Refuse at once when a day's token or money budget is already used up (so /ask answers 429
        instead of a degraded answer)."""
        now = self._now()
        day, reset = int(now // DAY), DAY - now % DAY
        for scope, who, lim in self._limits(ident):
            for what, limit, unit in (("tok", lim.tokens_per_day, 1), ("usd", lim.usd_per_day, NANO)):
                if limit is None:
                    continue
                used = await self.counters.value(f"{what}:{scope}:{who}:{day}")
                if used >= limit * unit:
                    name, text = _name(what, limit)
                    raise _over(ident, scope, who, name, text, now, reset, used=used / unit)

    async def reserve(self, ident: Identity, tokens: int, usd: float) -> Held | None:
        now = self._now()
        day, reset = int(now // DAY), DAY - now % DAY
        charges: list[Charge] = []
        held: list[tuple[str, str, int, float]] = []
        names: list[tuple[str, str, str, float]] = []
        for scope, who, lim in self._limits(ident):
            for what, limit, amount in (("tok", lim.tokens_per_day, tokens),
                                        ("usd", lim.usd_per_day, math.ceil(usd * NANO))):
                if limit is None:
                    continue
                key = f"{what}:{scope}:{who}:{day}"
                scaled = int(limit if what == "tok" else math.floor(limit * NANO))
                charges.append(Charge(key, amount, scaled, reset + 60))
                held.append((what, key, amount, reset + 60))
                names.append((scope, who, what, limit))
        if not charges:
            return None
        refused = await self.counters.reserve(charges)
        if refused is not None:
            scope, who, what, limit = names[refused.index]
            name, text = _name(what, limit)
            unit = 1 if what == "tok" else NANO
            need = charges[refused.index].amount / unit
            raise _over(ident, scope, who, name, text, now, refused.reset_in_s, used=refused.used / unit, need=need)
        return Held(held)

    async def settle(self, held: Held | None, tokens: int, usd: float) -> None:
        if held is None:
            return
        actual = {"tok": tokens, "usd": math.ceil(usd * NANO)}
        await self.counters.adjust([(key, actual[what] - reserved, ttl) for what, key, reserved, ttl in held.charges])


def _name(what: str, limit: float) -> tuple[str, str]:
    if what == "tok":
        return "tokens_per_day", f"{int(limit)} tokens a day"
    return "usd_per_day", f"${limit:g} a day"


def _over(ident: Identity, scope: str, who: str, name: str, text: str, now: float, reset_in: float, *,
          used: float | None = None, need: float | None = None) -> QuotaExceededError:
    whose = f"key {ident.name!r} ({ident.key_id})" if scope == "key" else f"team {who!r}"
    resets = datetime.fromtimestamp(now + reset_in, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    detail = ""
    if used is not None:
        detail = f" ({_amount(name, used)} used or reserved"
        detail += f", this call needs up to {_amount(name, need)})" if need is not None else ")"
    hint = " or lower max_tokens" if need is not None else ""
    return QuotaExceededError(f"{whose} is over its {name} limit of {text}{detail}; it resets at {resets} "
                              f"(in {math.ceil(reset_in)} s){hint}", limit=name, retry_after=reset_in)


def _amount(name: str, value: float) -> str:
    return f"${value:.6f}".rstrip("0").rstrip(".") if name == "usd_per_day" else f"{int(value)}"
