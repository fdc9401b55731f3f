"""Router state behind a store: each deployment's circuit breaker and live counters.

The router keeps no per-deployment state of its own. It asks a `RouterState` for a deployment's
`DeploymentState` — its breaker, calls in flight, EWMA time to first token and last load snapshot —
once per attempt. `InProcessRouterState` (the default) keeps them in this process; a shared store
(Redis, so several replicas agree on breakers and load) implements the same two protocols. The breaker
is router state, not a wrapper: whether a deployment may be tried is a routing decision, taken before
the call, over every candidate at once.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

from ..providers.base import LoadSnapshot
from .breaker import CircuitBreaker


class DeploymentState(Protocol):
    """The live state of one deployment (read and updated by the router on every attempt)."""

    breaker: CircuitBreaker
    in_flight: int
    ewma_ttft_s: float | None
    load: LoadSnapshot

    def begin(self) -> None:
        """A call starts (in flight + 1)."""

    def end(self) -> None:
        """A call ends, however it ended (in flight - 1)."""

    def observe_ttft(self, seconds: float) -> None:
        """Time to first token (or to the answer) of a successful call, folded into the EWMA."""


class RouterState(Protocol):
    def of(self, deployment: str) -> DeploymentState:
        """The state of `deployment` (created on first use)."""

    def forget(self, deployment: str) -> None:
        """Drop a deployment's state (it left the router, e.g. replaced by a registry rollback)."""


class LocalDeploymentState:
    """In-process state of one deployment."""

    __slots__ = ("breaker", "in_flight", "ewma_ttft_s", "load")

    def __init__(self, breaker: CircuitBreaker):
        self.breaker = breaker
        self.in_flight = 0
        self.ewma_ttft_s: float | None = None
        self.load = LoadSnapshot(healthy=True)

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1

    def observe_ttft(self, seconds: float) -> None:
        self.ewma_ttft_s = seconds if self.ewma_ttft_s is None else 0.8 * self.ewma_ttft_s + 0.2 * seconds


class InProcessRouterState:
    """Router state in this process. `breaker(name)` makes a deployment's breaker on first use; `seed`
    gives some deployments a breaker made elsewhere (tests: a breaker on a fake clock)."""

    def __init__(self, breaker: Callable[[str], CircuitBreaker] = CircuitBreaker,
                 seed: Iterable[CircuitBreaker] = ()):
        self._make = breaker
        self._states: dict[str, LocalDeploymentState] = {b.name: LocalDeploymentState(b) for b in seed}

    def of(self, deployment: str) -> LocalDeploymentState:
        st = self._states.get(deployment)
        if st is None:
            st = self._states[deployment] = LocalDeploymentState(self._make(deployment))
        return st

    def forget(self, deployment: str) -> None:
        self._states.pop(deployment, None)
