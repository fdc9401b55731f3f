"""What routing decides over: deployments (static facts), their live views, and a request's features."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..core.types import TaskKind


class Privacy(str, enum.Enum):
    ANY = "any"
    LOCAL_ONLY = "local_only"  # never leaves the machine: a hard guarantee


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    name: str
    local: bool
    price_in_per_m: float = 0.0  # $ per 1M input tokens (local: amortised hardware + power)
    price_out_per_m: float = 0.0
    context_window: int = 4096
    max_concurrency: int = 64
    json_schema: bool = True
    tools: bool = False
    tier: int = 0  # quality tier: higher is stronger


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

    def header(self) -> str:
        """The `x-nlweb-route` value: first choice and the reason."""
        return f"{self.ordered[0] if self.ordered else 'none'}; {self.reason}"
