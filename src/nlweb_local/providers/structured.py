"""`StructuredLLM` over any `Provider`: the port the search pipeline talks to.

One call = one chat request with the task kind, the schema passed to the engine's own constrained
decoding, and one repair-and-validate step (`core.json_coerce`) on what comes back.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from ..core.errors import AuthError, ModelOutputError, NotFoundError, ProviderError
from ..core.json_coerce import coerce_to_schema
from ..core.privacy import strictest
from ..core.types import DEFAULT_CONTEXT, CallContext, ChatRequest, LabelProbs, Message, Privacy, TaskKind
from .base import Classifier, Provider

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a precise assistant for a website's search engine. Answer only with the JSON object asked for."
CLASSIFY_PROMPT = "You are a precise assistant for a website's search engine. Answer with one word."
WRITER_PROMPT = "You are a helpful assistant for a website's search engine. Write plainly and briefly, using only the facts given."


def _trim_unfinished(text: str) -> str:
    """Cut an answer stopped by the token limit back to its last full sentence."""
    end = max(text.rfind(". "), text.rfind(".\n"), text.rfind("! "), text.rfind("? "))
    return text[: end + 1] if end > len(text) // 3 else text


class ProviderStructuredLLM:
    """`context`: how this port's calls are to be served (e.g. pinned to `llm.search_deployment`)."""

    def __init__(self, provider: Provider, *, system_prompt: str = SYSTEM_PROMPT, context: CallContext = DEFAULT_CONTEXT):
        self._provider = provider
        self._system = system_prompt
        self._context = context
        self._local_only = context.with_(privacy=Privacy.LOCAL_ONLY)

    def _ctx(self, privacy: Privacy) -> CallContext:
        """This port's context, held to `privacy` where that is stricter (the call's own class)."""
        return self._context if strictest(self._context.privacy, privacy) is self._context.privacy else self._local_only

    def admit(self) -> None:
        """Refuse a new request up front when the provider could not start one of this port's calls
        before its deadline (`context.deadline_s`)."""
        self._provider.admit(ChatRequest(messages=[], max_tokens=1, context=self._context))

    async def write(self, task: TaskKind, prompt: str, *, max_tokens: int = 200, privacy: Privacy = Privacy.ANY) -> str:
        req = ChatRequest(messages=[Message("system", WRITER_PROMPT), Message("user", prompt)], max_tokens=max_tokens,
                          temperature=0.0, task=task, repeat_penalty=1.15, context=self._ctx(privacy))
        resp = await self._provider.complete(req)
        text = _trim_unfinished(resp.content.strip()) if resp.finish_reason == "length" else resp.content.strip()
        if not text:
            raise ModelOutputError(f"{task.value}: empty answer", deployment=resp.deployment)
        return text

    async def classify(self, task: TaskKind, prompt: str, labels: Sequence[str], *,
                       difficulty: float | None = None, privacy: Privacy = Privacy.ANY) -> LabelProbs:
        ctx = self._ctx(privacy)
        ctx = ctx if difficulty is None else ctx.with_(difficulty=difficulty)
        req = ChatRequest(messages=[Message("system", CLASSIFY_PROMPT), Message("user", prompt)], max_tokens=1,
                          temperature=0.0, task=task, context=ctx)
        provider = self._provider
        if provider.capabilities.classify and isinstance(provider, Classifier):
            return await provider.classify(req, labels)
        schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": list(labels)}}, "required": ["answer"]}
        out = await self.ask(task, prompt + f"\nAnswer as {{\"answer\": one of {list(labels)}}}.", schema, max_tokens=16,
                             privacy=privacy)
        chosen = next((lab for lab in labels if lab.lower() == out["answer"].strip().lower()), None)
        if chosen is None:
            raise ModelOutputError(f"{task.value}: answer {out['answer']!r} is none of {list(labels)}", deployment=self._provider.name)
        return LabelProbs({lab: 1.0 if lab == chosen else 0.0 for lab in labels})

    async def ask(self, task: TaskKind, prompt: str, schema: dict[str, Any], *, max_tokens: int = 128,
                  privacy: Privacy = Privacy.ANY) -> dict[str, Any]:
        req = ChatRequest(messages=[Message("system", self._system), Message("user", prompt)],
                          max_tokens=max_tokens, temperature=0.0, json_schema=schema, task=task, context=self._ctx(privacy))
        resp = await self._provider.complete(req)
        try:
            return coerce_to_schema(resp.content, schema)
        except ValueError as e:
            log.debug("%s answer could not be coerced: %s", task.value, e)
            raise ModelOutputError(f"{task.value}: {e}", deployment=resp.deployment, body=resp.content) from e


# what makes the preferred deployment unusable for a call (not: a wrong-shaped answer, a bad request)
_UNUSABLE = (AuthError, NotFoundError, ProviderError)


class FallbackStructuredLLM:
    """The /ask port when `llm.search_deployment` is set: each call goes to the preferred deployment
    (`primary`, pinned to it) and, when that deployment cannot serve it — down, breaker open, overloaded,
    unreachable, refusing the key or the model — to `fallback` (pinned to the embedded engine, or routed
    like any call), so /ask keeps its LLM ranking instead of degrading to similarity. A wrong-shaped
    answer (`ModelOutputError`) is the preferred model's answer and is not retried elsewhere."""

    def __init__(self, primary: ProviderStructuredLLM, fallback: ProviderStructuredLLM, *, name: str = ""):
        self._primary = primary
        self._fallback = fallback
        self._name = name
        self._failing = False  # (logged once when the preferred deployment starts failing, once when it is back)

    def admit(self) -> None:
        try:
            self._primary.admit()
        except _UNUSABLE:
            self._fallback.admit()

    async def write(self, task: TaskKind, prompt: str, *, max_tokens: int = 200, privacy: Privacy = Privacy.ANY) -> str:
        return await self._call(lambda llm: llm.write(task, prompt, max_tokens=max_tokens, privacy=privacy))

    async def classify(self, task: TaskKind, prompt: str, labels: Sequence[str], *,
                       difficulty: float | None = None, privacy: Privacy = Privacy.ANY) -> LabelProbs:
        return await self._call(lambda llm: llm.classify(task, prompt, labels, difficulty=difficulty, privacy=privacy))

    async def ask(self, task: TaskKind, prompt: str, schema: dict[str, Any], *, max_tokens: int = 128,
                  privacy: Privacy = Privacy.ANY) -> dict[str, Any]:
        return await self._call(lambda llm: llm.ask(task, prompt, schema, max_tokens=max_tokens, privacy=privacy))

    async def _call(self, run):
        try:
            out = await run(self._primary)
        except ModelOutputError:
            raise
        except _UNUSABLE as e:
            if not self._failing:
                self._failing = True
                log.warning("llm.search_deployment %s cannot serve /ask (%s: %s); falling back until it is back",
                            self._name, type(e).__name__, e.message)
            return await run(self._fallback)
        if self._failing:
            self._failing = False
            log.warning("llm.search_deployment %s serves /ask again", self._name)
        return out
