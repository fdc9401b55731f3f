"""Balancing policies: pure functions of a call's features and a snapshot of a deployment's instances.

Every policy has one signature, `(features, views, rng) -> Pick`, and returns the instances to try in
order (its choice first, then the others that are up, best first, for failover) plus the reason. An
instance that is down (its last fresh scrape failed, or its breaker is open) is never in the order.

    round_robin          the next instance in turn (`features.sequence`)
    least_outstanding    the fewest calls queued or running
    p2c                  power of two choices: of two instances drawn at random, the lower
                         EWMA latency × (queue + 1)
    affinity             rendezvous hashing on the conversation id or the prompt's first characters,
                         so an engine's prompt (KV) cache is reused; P2C when the chosen instance is
                         much busier than the least busy (more than 2× its queue + `spill`)
"""
from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One instance of a deployment as the fleet sees it at one instant."""

    id: str  # its URL
    healthy: bool = True  # the last scrape, while fresh (an old scrape says nothing: True)
    admits: bool = True  # its breaker is not open
    in_flight: int = 0  # calls this gateway has on it now
    waiting: int = 0  # queued in the engine (fresh scrape, else 0)
    running: int = 0  # being processed by the engine (fresh scrape, else 0)
    ewma_s: float | None = None  # EWMA of its time to first token (or to the answer)

    @property
    def up(self) -> bool:
        return self.healthy and self.admits

    @property
    def queue(self) -> int:
        """Calls ahead of a new one: ours in flight, or what the engine reports when others load it too."""
        return max(self.in_flight, self.running + self.waiting)


@dataclass(frozen=True, slots=True)
class PickFeatures:
    affinity_key: str = ""  # conversation id, else the prompt's first characters ("" = none)
    sequence: int = 0  # the fleet's call counter (round robin)


@dataclass(frozen=True, slots=True)
class Pick:
    order: tuple[str, ...]  # instance ids to try, in order (only instances that are up)
    reason: str


Policy = Callable[[PickFeatures, Sequence[InstanceView], random.Random], Pick]


def _prior(up: Sequence[InstanceView]) -> float:
    """The latency assumed for an instance without measurements: the best measured one (so a new or
    returning instance gets tried), else 1 s."""
    known = [v.ewma_s for v in up if v.ewma_s is not None]
    return min(known) if known else 1.0


def expected_wait(v: InstanceView, prior: float) -> float:
    return (v.ewma_s if v.ewma_s is not None else prior) * (v.queue + 1)


def _rest(first: InstanceView, up: Sequence[InstanceView], prior: float) -> tuple[str, ...]:
    """`first`, then the other instances that are up by expected wait (the failover order)."""
    return (first.id, *(v.id for v in sorted(up, key=lambda v: expected_wait(v, prior)) if v is not first))


def _nothing(views: Sequence[InstanceView]) -> Pick:
    return Pick((), f"no instance up ({len(views)} down)")


def round_robin(f: PickFeatures, views: Sequence[InstanceView], rng: random.Random) -> Pick:
    up = [v for v in views if v.up]
    if not up:
        return _nothing(views)
    i = f.sequence % len(up)
    return Pick(tuple(v.id for v in up[i:] + up[:i]), "round-robin")


def least_outstanding(f: PickFeatures, views: Sequence[InstanceView], rng: random.Random) -> Pick:
    up = [v for v in views if v.up]
    if not up:
        return _nothing(views)
    ordered = sorted(up, key=lambda v: (v.queue, rng.random()))  # ties broken at random
    return Pick(tuple(v.id for v in ordered), f"least outstanding: {ordered[0].queue} queued")


def p2c(f: PickFeatures, views: Sequence[InstanceView], rng: random.Random) -> Pick:
    up = [v for v in views if v.up]
    if not up:
        return _nothing(views)
    prior = _prior(up)
    pair = rng.sample(up, 2) if len(up) > 2 else up
    first = min(pair, key=lambda v: expected_wait(v, prior))
    return Pick(_rest(first, up, prior), f"p2c: expected {expected_wait(first, prior):.3f}s")


def rendezvous(key: str, ids: Sequence[str]) -> str:
    """Highest-random-weight hashing: the id whose hash with `key` is highest. Adding or removing another
    id never moves a key that it did not win."""
    return max(ids, key=lambda i: hashlib.blake2b(f"{key}\0{i}".encode(), digest_size=8).digest())


def affinity(f: PickFeatures, views: Sequence[InstanceView], rng: random.Random, *, spill: int = 2) -> Pick:
    up = [v for v in views if v.up]
    if not up or not f.affinity_key:
        return p2c(f, views, rng)
    by_id = {v.id: v for v in up}
    chosen = by_id[rendezvous(f.affinity_key, list(by_id))]
    least = min(v.queue for v in up)
    if chosen.queue > 2 * least + spill:
        d = p2c(f, views, rng)
        return Pick(d.order, f"affinity: {chosen.id} much busier ({chosen.queue} vs {least} queued); {d.reason}")
    return Pick(_rest(chosen, up, _prior(up)), "affinity")


POLICIES: dict[str, Policy] = {
    "p2c": p2c,
    "least-outstanding": least_outstanding,
    "round-robin": round_robin,
    "affinity": affinity,
}


def policy_named(name: str, *, spill: int = 2) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown balancing policy {name!r} (one of {', '.join(POLICIES)})")
    return functools.partial(affinity, spill=spill) if name == "affinity" else POLICIES[name]
