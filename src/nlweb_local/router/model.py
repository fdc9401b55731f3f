"""What routing decides over: deployments (static facts), their live views, and a request's features."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..core.types import Privacy, TaskKind
from ..providers.base import Capabilities

__all__ = ["AliasSource", "DeploymentInfo", "DeploymentView", "Privacy", "RequestFeatures", "RouteDecision"]


class AliasSource(Protocol):
    """Aliases the router does not own (the model registry's): read from memory on every request.
    `current()` is the snapshot's generation (it moves when any alias moves)."""

    def target(self, alias: str) -> str | None:
        """The NAME@VERSION `alias` points at now; None when it is not an alias."""
        ...

    def targets(self) -> dict[str, str]: ...

    def current(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """What routing knows of a deployment that does not change while it runs. Built from the adapter's
    `Capabilities` plus the operator's settings by `DeploymentInfo.of` (the composition root does)."""

    name: str
    local: bool
    price_in_per_m: float = 0.0  # $ per 1M input tokens (local: amortised hardware + power)
    price_out_per_m: float = 0.0
    context_window: int = 4096
    max_concurrency: int = 64
    json_schema: bool = True
    tools: bool = False
    tier: int = 0  # quality tier: higher is stronger
    model: str = ""  # the model name at the engine
    model_version: str = ""  # the registry's NAME@VERSION it serves, else a fingerprint (engine, model, URL)
    serves: str = ""  # the model registry's NAME@VERSION this deployment serves ("" = none)

    @classmethod
    def of(cls, name: str, caps: Capabilities, *, model: str = "", model_version: str = "", price_in_per_m: float = 0.0,
           price_out_per_m: float = 0.0, max_concurrency: int = 64, tier: int = 0, serves: str = "") -> "DeploymentInfo":
        return cls(name, caps.local, price_in_per_m, price_out_per_m, caps.context_window, max_concurrency,
                   caps.json_schema, caps.tools, tier, model, serves or model_version, serves)


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """A deployment as the router sees it at one instant."""

    info: DeploymentInfo
    healthy: bool = True
    admits: bool = True  # its breaker would let a call through now
    breaker: str = "closed"
    in_flight: int = 0
    waiting: int = 0  # queued in the engine (from its load snapshot)
    ewma_ttft_s: float | None = None

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    task: TaskKind = TaskKind.CHAT
    prompt_tokens: int = 0
    max_tokens: int = 256
    needs_json: bool = False
    needs_tools: bool = False
    privacy: Privacy = Privacy.ANY
    difficulty: float = 0.0  # 0 easy .. 1 hard (see quality strategy)
    conversation: str = ""  # for sticky rollout decisions
    priority: int = 0


@dataclass(frozen=True, slots=True)
class RouteDecision:
    ordered: tuple[str, ...]  # deployments to try, in order
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)  # deployment -> why it cannot serve
