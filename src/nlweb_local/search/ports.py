"""The ports the search pipeline needs. It imports no provider, router or server."""
from __future__ import annotations

from typing import Any, Protocol, Sequence

from ..core.types import LabelProbs, Privacy, TaskKind
from ..retrieval.base import Embedder, VectorStore

__all__ = ["StructuredLLM", "Embedder", "VectorStore"]


class StructuredLLM(Protocol):
    async def ask(self, task: TaskKind, prompt: str, schema: dict[str, Any], *, max_tokens: int = 128,
                  privacy: Privacy = Privacy.ANY) -> dict[str, Any]:
        """Answer `prompt` as a JSON object matching `schema` (coerced and validated by the implementation).
        `privacy` (every method): the call's class; `LOCAL_ONLY` keeps it on local deployments (the
        pipeline passes a local_only site's class with every call about its items).

        Raises `ModelOutputError` when no object of that shape could be had, `OverloadedError` when the
        LLM's queue is full, other `ProviderError`s for engine faults.
        """
        ...

    async def write(self, task: TaskKind, prompt: str, *, max_tokens: int = 200, privacy: Privacy = Privacy.ANY) -> str:
        """Free text (summaries, answers): small models write better prose without a JSON grammar."""
        ...

    async def classify(self, task: TaskKind, prompt: str, labels: Sequence[str], *,
                       difficulty: float | None = None, privacy: Privacy = Privacy.ANY) -> LabelProbs:
        """Probability of each label as the answer to `prompt` (summing to 1).

        `difficulty` (0..1), when the caller knows it, tells the router's quality strategy how much this
        call needs a strong model (the ranker's uncertain band: 1.0).

        Engines that expose next-token probabilities answer in one forward pass without decoding;
        others answer by constrained generation (the chosen label gets 1.0).
        """
        ...

    def admit(self) -> None:
        """Raise `OverloadedError` (with retry_after) if a new request should not start now (the LLM could
        not start its calls within their deadline)."""
        ...
