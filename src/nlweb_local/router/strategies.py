"""Routing strategies: pure functions of a request's features and a snapshot of deployment views.

Every strategy has the same signature, `(features, views, rng) -> RouteDecision`, and returns the
deployments to try in order plus the reason. Eligibility (privacy, capabilities, context window,
health, breaker) is decided once, here, for all of them.
"""
from __future__ import annotations

import hashlib
import random
from typing import Callable, Sequence

from .model import DeploymentView, Privacy, RequestFeatures, RouteDecision

Strategy = Callable[[RequestFeatures, Sequence[DeploymentView], random.Random], RouteDecision]


def why_not(f: RequestFeatures, v: DeploymentView) -> str | None:
    """Why `v` cannot serve `f` now, or None if it can."""
    if f.privacy is Privacy.LOCAL_ONLY and not v.info.local:
        return "cloud deployment; request is local_only"
    if f.needs_json and not v.info.json_schema:
        return "no JSON-schema output"
    if f.needs_tools and not v.info.tools:
        return "no tool calling"
    if f.prompt_tokens + f.max_tokens > v.info.context_window:
        return f"context {v.info.context_window} < {f.prompt_tokens + f.max_tokens} tokens"
    if not v.healthy:
        return "unhealthy"
    if not v.admits:
        return f"breaker {v.breaker}"
    if v.in_flight >= v.info.max_concurrency:
        return "at max concurrency"
    return None


def split(f: RequestFeatures, views: Sequence[DeploymentView]) -> tuple[list[DeploymentView], dict[str, str]]:
    ok, rejected = [], {}
    for v in views:
        reason = why_not(f, v)
        if reason is None:
            ok.append(v)
        else:
            rejected[v.name] = reason
    return ok, rejected


def _load(v: DeploymentView) -> float:
    return (v.in_flight + v.waiting) / max(1, v.info.max_concurrency)


def estimated_cost(f: RequestFeatures, v: DeploymentView) -> float:
    return (f.prompt_tokens * v.info.price_in_per_m + f.max_tokens * v.info.price_out_per_m) / 1e6


def expected_latency(v: DeploymentView) -> float:
    ttft = v.ewma_ttft_s if v.ewma_ttft_s is not None else 1.0
    return ttft * (1 + v.waiting + v.in_flight / max(1, v.info.max_concurrency))


def local_first(f: RequestFeatures, views: Sequence[DeploymentView], rng: random.Random) -> RouteDecision:
    ok, rejected = split(f, views)
    local = sorted((v for v in ok if v.info.local), key=_load)
    cloud = sorted((v for v in ok if not v.info.local), key=lambda v: estimated_cost(f, v))
    if local:  # cloud stays at the end of the chain: used only if every local one fails at call time
        return RouteDecision(tuple(v.name for v in local + cloud), "local-first: a local deployment can serve", rejected)
    why = "; ".join(f"{n}: {r}" for n, r in rejected.items()) or "none configured"
    reason = (f"local-first: no local deployment can serve ({why}); cloud fallback" if cloud
              else "local-first: nothing can serve")
    return RouteDecision(tuple(v.name for v in cloud), reason, rejected)


def cost_optimised(f: RequestFeatures, views: Sequence[DeploymentView], rng: random.Random) -> RouteDecision:
    ok, rejected = split(f, views)
    ordered = sorted(ok, key=lambda v: (estimated_cost(f, v), _load(v)))
    cost = f"${estimated_cost(f, ordered[0]):.6f}" if ordered else "-"
    return RouteDecision(tuple(v.name for v in ordered), f"cost: cheapest estimate {cost}", rejected)


def latency_optimised(f: RequestFeatures, views: Sequence[DeploymentView], rng: random.Random,
                      *, close: float = 1.25) -> RouteDecision:
    """Lowest expected latency; among those within `close`× of the best, power of two choices."""
    ok, rejected = split(f, views)
    ordered = sorted(ok, key=expected_latency)
    if len(ordered) >= 2:
        best = expected_latency(ordered[0])
        near = [v for v in ordered if expected_latency(v) <= best * close]
        if len(near) >= 2:
            a, b = rng.sample(near, 2)
            first = a if _load(a) <= _load(b) else b
            ordered.remove(first)
            ordered.insert(0, first)
    reason = f"latency: expected {expected_latency(ordered[0]):.2f}s" if ordered else "latency: nothing can serve"
    return RouteDecision(tuple(v.name for v in ordered), reason, rejected)


def quality_optimised(f: RequestFeatures, views: Sequence[DeploymentView], rng: random.Random,
                      *, threshold: float = 0.5) -> RouteDecision:
    """Hard requests (difficulty ≥ threshold) go to the strongest tier first; easy ones to the cheapest
    deployment of the lowest adequate tier. `threshold` is calibrated elsewhere (see calibrate_threshold)."""
    ok, rejected = split(f, views)
    if f.difficulty >= threshold:
        ordered = sorted(ok, key=lambda v: (-v.info.tier, estimated_cost(f, v)))
        reason = f"quality: difficulty {f.difficulty:.2f} ≥ {threshold:.2f}, strongest first"
    else:
        ordered = sorted(ok, key=lambda v: (not v.info.local, v.info.tier, estimated_cost(f, v)))
        reason = f"quality: difficulty {f.difficulty:.2f} < {threshold:.2f}, local/cheap first"
    return RouteDecision(tuple(v.name for v in ordered), reason, rejected)


def calibrate_threshold(difficulties: Sequence[float], target_escalation: float) -> float:
    """The threshold that sends `target_escalation` of requests (by their difficulty) to the strong tier,
    as RouteLLM calibrates its router on a labelled sample."""
    if not difficulties:
        return 0.5
    xs = sorted(difficulties)
    k = min(len(xs) - 1, max(0, int(round((1.0 - target_escalation) * len(xs)))))
    return xs[k] if target_escalation > 0 else float("inf")


def sticky_bucket(key: str) -> float:
    """A stable number in [0, 1) for a conversation: the same conversation always lands the same way."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def with_rollout(inner: Strategy, local_share: float) -> Strategy:
    """Migration phases (5 % → 25 % → 75 % → 100 % local): `local_share` of conversations prefer local
    deployments, the rest prefer cloud; sticky per conversation. Privacy rules still apply."""
    def strategy(f: RequestFeatures, views: Sequence[DeploymentView], rng: random.Random) -> RouteDecision:
        d = inner(f, views, rng)
        eligible, _ = split(f, views)
        local_names = {v.name for v in views if v.info.local}
        bucket = sticky_bucket(f.conversation) if f.conversation else rng.random()
        prefer_local = bucket < local_share
        # the inner order first, then eligible deployments the inner strategy left out (local-first omits cloud)
        rank = {n: i for i, n in enumerate(d.ordered)}
        names = sorted((v.name for v in eligible), key=lambda n: rank.get(n, len(rank)))
        ordered = sorted(names, key=lambda n: (n in local_names) != prefer_local)
        side = "local" if prefer_local else "cloud"
        return RouteDecision(tuple(ordered), f"rollout {local_share:.0%} local: {side} for this conversation; {d.reason}",
                             d.rejected)
    return strategy


STRATEGIES: dict[str, Strategy] = {
    "local-first": local_first,
    "cost": cost_optimised,
    "latency": latency_optimised,
    "quality": quality_optimised,
}
