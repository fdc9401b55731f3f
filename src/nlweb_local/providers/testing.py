"""Test doubles shipped with the package (as pydantic-ai ships TestModel/FunctionModel).

`FunctionLLM` is a `StructuredLLM` whose answers come from a plain function; it goes through the
same coercion step as a real model, so tests exercise repair and validation too.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

from ..core.errors import ModelOutputError, OverloadedError
from ..core.json_coerce import coerce_to_schema
from ..core.types import TaskKind

AnswerFn = Callable[[TaskKind, str, dict[str, Any]], str]


class FunctionLLM:
    def __init__(self, answer: AnswerFn, *, delay_s: float = 0.0, max_queue: int | None = None):
        self._answer = answer
        self._delay = delay_s
        self._max_queue = max_queue
        self.pending = 0
        self.calls: list[tuple[TaskKind, str]] = []

    def admit(self) -> None:
        if self._max_queue is not None and self.pending >= self._max_queue:
            raise OverloadedError(f"queue full ({self.pending} calls waiting); retry after a moment", retry_after=2.0, deployment="function")

    async def write(self, task: TaskKind, prompt: str, *, max_tokens: int = 200) -> str:
        self.calls.append((task, prompt))
        text = self._answer(task, prompt, {}).strip()
        if not text:
            raise ModelOutputError(f"{task.value}: empty answer", deployment="function")
        return text

    async def classify(self, task: TaskKind, prompt: str, labels: Sequence[str]) -> dict[str, float]:
        """The answer function's JSON, read as label probabilities: `{"yes": 0.9}`, or `{"score": 90}`
        for yes/no labels (P(first label) = score / 100)."""
        out = await self.ask(task, prompt, {"type": "object", "properties": {"score": {"type": "number", "minimum": 0,
                             "maximum": 100}}, "required": ["score"]})
        p = out["score"] / 100.0
        return {labels[0]: p, **{lab: (1 - p) / max(1, len(labels) - 1) for lab in labels[1:]}}

    async def ask(self, task: TaskKind, prompt: str, schema: dict[str, Any], *, max_tokens: int = 128) -> dict[str, Any]:
        self.calls.append((task, prompt))
        self.pending += 1
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            text = self._answer(task, prompt, schema)
        finally:
            self.pending -= 1
        try:
            return coerce_to_schema(text, schema)
        except ValueError as e:
            raise ModelOutputError(f"{task.value}: {e}", deployment="function", body=text) from e
