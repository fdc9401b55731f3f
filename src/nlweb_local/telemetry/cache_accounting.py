"""`CacheAccounts`: how a cache reports into telemetry.

    lookup(hit)      nlweb_cache_requests_total{cache,result}
    corrupt()        nlweb_cache_corrupt_entries_total{cache}: stored values dropped because they did not read back
    price(d, in, out) what a call of that size costs on deployment `d` now, and the reference model's price
                     (from the deployment's MeteredProvider), stored with an entry so a hit knows what it saved
    hit(...)         one ledger (and recent-calls) row per hit: cost 0, `cache` = the cache's name,
                     `saved_usd` = what the original call cost; nlweb_cache_saved_usd_total{cache}
    spent()          what the LLM calls of the current HTTP request have cost so far (the /ask cache
                     stores it with an answer): `RequestSpend`, set per request by the request-id middleware
"""
from __future__ import annotations

from typing import Any, Callable

from ..governance.identity import CURRENT
from ..providers.wrapper import find
from .context import current_request_id, current_spend, new_request_id
from .ledger import CallRecord
from .metered import MeteredProvider


class CacheAccounts:
    def __init__(self, telemetry: Any, cache: str, *, router: Any = None):
        """`router`: the router whose deployments' prices a hit's savings are computed with (None: free)."""
        self.cache = cache
        self._tally = telemetry.metrics.cache_lookups(cache)
        self._tally.priced = True
        self._ledger = telemetry.ledger
        self._window = telemetry.window
        self._now: Callable[[], float] = telemetry.now
        self._metered: dict[str, MeteredProvider] = {}
        if router is not None:
            for name in router.names():
                m = find(router.provider(name), MeteredProvider)
                if m is not None:
                    self._metered[name] = m

    def lookup(self, hit: bool) -> None:
        self._tally(hit)

    def corrupt(self) -> None:
        self._tally.corrupt += 1

    def price(self, deployment: str, tokens_in: int, tokens_out: int) -> tuple[float, float]:
        m = self._metered.get(deployment)
        return m.cost(tokens_in, tokens_out) if m is not None else (0.0, 0.0)  # (not metered: not priced either)

    def spent(self) -> tuple[float, float]:
        """(cost, reference cost) of the current request's LLM calls so far; (0, 0) outside a request."""
        spend = current_spend()
        return (spend.cost_usd, spend.reference_usd) if spend is not None else (0.0, 0.0)

    def hit(self, *, deployment: str, local: bool, task: str, tokens_in: int, tokens_out: int, latency_s: float,
            saved_usd: float, reference_usd: float) -> None:
        self._tally.saved_usd += saved_usd
        if self._ledger is None and self._window is None:
            return
        who = CURRENT.get()
        row = CallRecord(self._now(), current_request_id() or new_request_id(), deployment, local, task, tokens_in,
                         tokens_out, latency_s, None, 0.0, reference_usd, reference_usd, "", self.cache, saved_usd,
                         "", *((who.key_id, who.team) if who is not None else ()))
        if self._ledger is not None:
            self._ledger.record(row)
        if self._window is not None:
            self._window.add(row)
