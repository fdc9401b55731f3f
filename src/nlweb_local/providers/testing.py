"""Test doubles shipped with the package (as pydantic-ai ships TestModel/FunctionModel).

`FunctionLLM` is a `StructuredLLM` whose answers come from a plain function; it goes through the
same coercion step as a real model, so tests exercise repair and validation too.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

from ..core.errors import ModelOutputError, OverloadedError
from ..core.json_coerce import coerce_to_schema
from ..core.types import LabelProbs, Privacy, TaskKind

AnswerFn = Callable[[TaskKind, str, dict[str, Any]], str]


class FunctionLLM:
    def __init__(self, answer: AnswerFn, *, delay_s: float = 0.0, max_queue: int | None = None):
        self._answer = answer
        self._delay = delay_s
        self._max_queue = max_queue
        self.pending = 0
        self.calls: list[tuple[TaskKind, str]] = []
        self.privacies: list[Privacy] = []  # each call's privacy class, in order

    def admit(self) -> None:
        if self._max_queue is not None and self.pending >= self._max_queue:
            raise OverloadedError(f"queue full ({self.pending} calls waiting); retry after a moment", retry_after=2.0, deployment="function")

    async def write(self, task: TaskKind, prompt: str, *, max_tokens: int = 200, privacy: Privacy = Privacy.ANY) -> str:
        self.calls.append((task, prompt))
        self.privacies.append(privacy)
        text = self._answer(task, prompt, {}).strip()
        if not text:
            raise ModelOutputError(f"{task.value}: empty answer", deployment="function")
        return text

    async def classify(self, task: TaskKind, prompt: str, labels: Sequence[str], *,
                       difficulty: float | None = None, privacy: Privacy = Privacy.ANY) -> LabelProbs:
        """The answer function's JSON, read as label probabilities: `{"yes": 0.9}`, or `{"score": 90}`
        for yes/no labels (P(first label) = score / 100)."""
        out = await self.ask(task, prompt, {"type": "object", "properties": {"score": {"type": "number", "minimum": 0,
                             "maximum": 100}}, "required": ["score"]}, privacy=privacy)
        p = out["score"] / 100.0
        return LabelProbs({labels[0]: p, **{lab: (1 - p) / max(1, len(labels) - 1) for lab in labels[1:]}})

    async def ask(self, task: TaskKind, prompt: str, schema: dict[str, Any], *, max_tokens: int = 128,
                  privacy: Privacy = Privacy.ANY) -> dict[str, Any]:
        self.calls.append((task, prompt))
        self.privacies.append(privacy)
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


class ScriptedProvider:
    """A `Provider` whose behaviour is set by the test: text, per-token delay, and failures.

    `fail_with` (an exception, or a callable returning one or None per call) fails a call before its
    first token; `fail_after_tokens` fails it mid-stream after that many tokens.
    """

    def __init__(self, name: str, text: str = "Hello from a scripted model.", *, local: bool = True,
                 token_delay_s: float = 0.0, context_window: int = 4096, classify: bool = False):
        from .base import Capabilities

        self.name = name
        self.model = f"{name}-model"
        self.capabilities = Capabilities(context_window=context_window, json_schema=True, local=local, classify=classify)
        self.text = text
        self.token_delay_s = token_delay_s
        self.fail_with: Any = None
        self.fail_after_tokens: int | None = None
        self.calls = 0
        self.healthy = True

    def _failure(self):
        f = self.fail_with
        return f() if callable(f) and not isinstance(f, BaseException) else f

    async def stream(self, request):
        from ..core.errors import ProviderConnectionError
        from ..core.types import ChatChunk, Usage

        self.calls += 1
        err = self._failure()
        if err is not None:
            raise err
        words = self.text.split(" ")
        for i, w in enumerate(words):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            if self.fail_after_tokens is not None and i == self.fail_after_tokens:
                raise ProviderConnectionError(f"{self.name}: connection lost mid-stream", deployment=self.name)
            last = i == len(words) - 1
            yield ChatChunk(w + ("" if last else " "), "stop" if last else None,
                            Usage(prompt_tokens=sum(len(m.content) for m in request.messages) // 4 + 1,
                                  completion_tokens=len(words), time_to_first_token_s=self.token_delay_s,
                                  total_s=self.token_delay_s * len(words)) if last else None)

    async def complete(self, request):
        from .base import assemble

        return await assemble(self.stream(request), deployment=self.name, model=self.model)

    async def classify(self, request, labels):
        self.calls += 1
        err = self._failure()
        if err is not None:
            raise err
        return LabelProbs({lab: (1.0 if i == 0 else 0.0) for i, lab in enumerate(labels)})

    async def embed(self, texts):
        from ..core.types import EmbeddingResponse

        return EmbeddingResponse([[float(len(t)), 1.0] for t in texts], model=self.model, deployment=self.name)

    async def health(self):
        from .base import LoadSnapshot

        return LoadSnapshot(healthy=self.healthy, detail=self.model)

    def admit(self, request=None) -> None:
        return None

    async def close(self) -> None:
        return None


class LoadableModel(ScriptedProvider):
    """A `ScriptedProvider` with a `ModelLifecycle`, as an in-process engine under a memory budget: it answers
    only while loaded (a call to an unloaded model fails), counts loads and unloads, and states its size
    (`estimated_memory_mb`). `load_delay_s` makes loading take that long; `events` records the order."""

    def __init__(self, name: str, size_mb: float, *, load_delay_s: float = 0.0, events: list | None = None, **kw):
        super().__init__(name, **kw)
        self.size_mb = size_mb
        self.load_delay_s = load_delay_s
        self.loaded = False
        self.loads = self.unloads = 0
        self.events = events if events is not None else []

    def estimated_memory_mb(self, gguf_factor: float) -> float:
        return self.size_mb

    async def load(self, model=None) -> None:
        if self.load_delay_s:
            await asyncio.sleep(self.load_delay_s)
        self.loaded, self.loads = True, self.loads + 1
        self.events.append(("load", self.name))

    async def unload(self, model=None) -> None:
        self.loaded, self.unloads = False, self.unloads + 1
        self.events.append(("unload", self.name))

    async def sleep(self, level: int = 1) -> None:
        from ..core.errors import BadRequestError

        raise BadRequestError(f"{self.name} cannot sleep")

    async def wake(self) -> None:
        from ..core.errors import BadRequestError

        raise BadRequestError(f"{self.name} cannot wake")

    async def is_sleeping(self) -> bool:
        return False

    async def stream(self, request):
        from ..core.errors import ProviderError

        if not self.loaded:
            raise ProviderError(f"{self.name}: called while its model is not loaded", deployment=self.name)
        async for ch in super().stream(request):
            yield ch


class SimulatedEngine:
    """A `Provider` that behaves like a serving engine under load, without a model: `slots` calls are
    processed at once, the rest wait in its queue; a call's first token comes after `prefill_s`, the rest
    after `per_token_s` per requested token, all times `slowdown` (a slower machine or GPU). Its
    `health()` reports its queue as a scraped engine's would. For benchmarks of balancing
    (`nlweb-local bench fleet`) and tests."""

    def __init__(self, name: str, *, slots: int = 4, prefill_s: float = 0.02, per_token_s: float = 0.002,
                 slowdown: float = 1.0):
        from .base import Capabilities

        self.name, self.model = name, f"{name}-model"
        self.capabilities = Capabilities(context_window=8192, json_schema=True)
        self.prefill_s, self.per_token_s, self.slowdown = prefill_s * slowdown, per_token_s * slowdown, slowdown
        self._slots = asyncio.Semaphore(slots)
        self.waiting = self.running = self.calls = 0

    async def stream(self, request):
        from ..core.types import ChatChunk, Usage

        self.calls += 1
        self.waiting += 1
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            await asyncio.sleep(self.prefill_s)
            ttft = loop.time() - t0
            yield ChatChunk("Hello", None)
            await asyncio.sleep(self.per_token_s * request.max_tokens)
            yield ChatChunk(".", "stop", Usage(prompt_tokens=10, completion_tokens=request.max_tokens,
                                               time_to_first_token_s=ttft, total_s=loop.time() - t0))
        finally:
            self.running -= 1
            self._slots.release()

    async def complete(self, request):
        from .base import assemble

        return await assemble(self.stream(request), deployment=self.name, model=self.model)

    async def embed(self, texts):  # pragma: no cover - not an embedding engine
        raise NotImplementedError

    async def health(self):
        from .base import LoadSnapshot

        return LoadSnapshot(healthy=True, detail=self.model, waiting=self.waiting, running=self.running)

    def admit(self, request=None) -> None:
        return None

    async def close(self) -> None:
        return None
