"""The recent calls, kept in memory (bounded), and the figures `/admin/stats` and the dashboard show:
latency percentiles, throughput, availability, local vs cloud share, cost and savings over a window.

Availability counts requests, not attempts: a request that failed on one deployment and was served by
the next (same request id) was available; the attempt success rate is reported beside it.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Iterable, Sequence

from .ledger import CallRecord


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    k = max(0, math.ceil(q / 100.0 * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


def _pcts(values: Iterable[float]) -> dict[str, float | None]:
    v = sorted(values)
    return {"p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99)}


class RecentCalls:
    """A ring of the last `max_calls` calls; memory stays bounded however much traffic comes."""

    def __init__(self, max_calls: int = 20_000, *, clock: Callable[[], float] = time.time):
        self._rows: deque[CallRecord] = deque(maxlen=max_calls)
        self._clock = clock
        self.started = clock()

    def add(self, row: CallRecord) -> None:
        self._rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    def snapshot(self, window_s: float) -> tuple[list[CallRecord], float, float, bool]:
        """(rows in the window, now, span in seconds, whether the ring had already dropped rows of the window).
        Cheap: take it on the event loop, compute `summarize` elsewhere."""
        now = self._clock()
        since = now - window_s
        full = len(self._rows) == self._rows.maxlen
        rows = [r for r in list(self._rows) if r.ts >= since]
        truncated = full and bool(rows) and rows[0] is self._rows[0]
        return rows, now, max(1e-9, min(window_s, now - self.started)), truncated


def summarize(rows: list[CallRecord], *, now: float, span_s: float, buckets: int = 30,
              bucket_s: float | None = None) -> dict[str, Any]:
    """Figures over `rows` (the calls of the last `span_s` seconds before `now`). Answers a cache gave
    (rows with `cache` set) count as requests served, and apart, in `cache_hits`; every other figure is
    about LLM calls."""
    by_request: dict[str, bool] = {}
    for r in rows:
        by_request[r.request_id] = by_request.get(r.request_id, False) or r.ok
    hits = [r for r in rows if r.cache]
    if hits:
        rows = [r for r in rows if not r.cache]
    ok = [r for r in rows if r.ok]
    local_ok = [r for r in ok if r.local]
    tokens_in = sum(r.tokens_in for r in ok)
    tokens_out = sum(r.tokens_out for r in ok)
    local_tokens = sum(r.tokens_in + r.tokens_out for r in local_ok)
    errors: dict[str, int] = {}
    for r in rows:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    deployments: dict[str, dict[str, Any]] = {}
    for name in sorted({r.deployment for r in rows}):
        mine = [r for r in rows if r.deployment == name]
        mine_ok = [r for r in mine if r.ok]
        deployments[name] = {"local": mine[0].local, "calls": len(mine), "errors": len(mine) - len(mine_ok),
                             "latency_s": _pcts(r.latency_s for r in mine_ok),
                             "tokens_in": sum(r.tokens_in for r in mine_ok),
                             "tokens_out": sum(r.tokens_out for r in mine_ok),
                             "cost_usd": sum(r.cost_usd for r in mine_ok)}
    cost = sum(r.cost_usd for r in ok)
    ref = sum(r.reference_usd for r in ok)
    return {
        "window_s": span_s, "until": now, "calls": len(rows), "errors": len(rows) - len(ok),
        "requests": len(by_request),
        "availability": sum(by_request.values()) / len(by_request) if by_request else None,
        "success_rate": len(ok) / len(rows) if rows else None,
        "latency_s": _pcts(r.latency_s for r in ok),
        "ttft_s": _pcts(r.ttft_s for r in ok if r.ttft_s is not None),
        "throughput": {"calls_per_s": len(ok) / span_s, "tokens_per_s": (tokens_in + tokens_out) / span_s,
                       "output_tokens_per_s": tokens_out / span_s},
        "tokens": {"in": tokens_in, "out": tokens_out},
        "share": {"local_calls": len(local_ok) / len(ok) if ok else None,
                  "local_tokens": local_tokens / (tokens_in + tokens_out) if tokens_in + tokens_out else None},
        "cost_usd": cost, "reference_usd": ref, "savings_usd": ref - cost,
        "errors_by_class": errors,
        "deployments": deployments,
        "cache_hits": cache_hits(hits),
        "series": series(rows, now=now, span_s=span_s, buckets=buckets, bucket_s=bucket_s),
    }


def cache_hits(hits: list[CallRecord]) -> dict[str, dict[str, Any]]:
    """Per cache: answers it gave, what the calls they replaced had cost (`saved_usd`) and what the
    reference model would have charged, and how long a hit took."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({r.cache for r in hits}):
        mine = [r for r in hits if r.cache == name]
        out[name] = {"hits": len(mine), "saved_usd": sum(r.saved_usd for r in mine),
                     "reference_usd": sum(r.reference_usd for r in mine), "latency_s": _pcts(r.latency_s for r in mine)}
    return out


def series(rows: list[CallRecord], *, now: float, span_s: float, buckets: int = 30,
           bucket_s: float | None = None) -> list[dict[str, Any]]:
    """The window cut into equal time buckets (oldest first), for charts."""
    width = bucket_s or max(1.0, span_s / buckets)
    n = max(1, min(buckets, math.ceil(span_s / width)))
    start = now - n * width
    slots: list[list[CallRecord]] = [[] for _ in range(n)]
    for r in rows:
        i = int((r.ts - start) // width)
        if 0 <= i < n:
            slots[i].append(r)
    out = []
    for i, slot in enumerate(slots):
        ok = [r for r in slot if r.ok]
        toks = sum(r.tokens_in + r.tokens_out for r in ok)
        lat = sorted(r.latency_s for r in ok)
        out.append({"t": start + (i + 1) * width, "calls": len(slot), "errors": len(slot) - len(ok),
                    "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95), "p99_s": percentile(lat, 99),
                    "tokens_per_s": toks / width,
                    "local_share": sum(r.local for r in ok) / len(ok) if ok else None,
                    "cost_usd": sum(r.cost_usd for r in ok), "savings_usd": sum(r.savings_usd for r in ok)})
    return out
