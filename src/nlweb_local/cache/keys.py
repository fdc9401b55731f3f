"""Cache keys: what makes two requests the same request.

A chat request's key is a stable hash (blake2b of orjson with sorted keys) of everything that decides
its answer:

    namespace       the tenant (`context.team`, else `context.caller`) and the request's `cache.namespace`
    models          the sorted (deployment, model_version) of every deployment that may serve it (its
                    pinned model or alias, else its task's group, else every chat deployment): a model
                    change, or an alias pointed elsewhere, makes new keys
    messages        role, content, tool calls, tool-call ids, names
    sampling        temperature, top_p, seed, max_tokens, stop, repeat_penalty, engine-specific `extra`
    output          tools, tool_choice, json_schema, task

Only deterministic requests are cached: temperature 0, or a request that opts in with a `cache.ttl`.
An embedding request's key is the namespace, the embedding model and the texts.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import orjson

from ..core.types import CacheControl, CallContext, ChatRequest, TaskKind

Versions = tuple[tuple[str, str], ...]
_MEMO_LIMIT = 256


def digest(material: Any) -> str:
    """A stable 128-bit hash of JSON-able `material` (dict keys sorted)."""
    return hashlib.blake2b(orjson.dumps(material, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


class ServingVersions:
    """Which model versions may answer a request: the router's static facts (deployments, their model
    versions, aliases), read once. `router`: anything with the router's typed API (`deployments()`,
    `aliases()`, `provider(name)`)."""

    def __init__(self, router: Any):
        views = router.deployments()
        self._version = {v.name: v.info.model_version or v.info.model for v in views}
        self._local = {v.name: v.info.local for v in views}
        self._chat = tuple(v.name for v in views if router.provider(v.name).capabilities.chat)
        self._embedding = self.of([v.name for v in views if router.provider(v.name).capabilities.embeddings])
        self._aliases = dict(router.aliases())
        self._memo: dict[tuple[tuple[str, ...], str], Versions] = {}

    def of(self, names: Sequence[str]) -> Versions:
        return tuple(sorted((n, self._version.get(n, "?")) for n in names))

    def local(self, name: str) -> bool:
        """Whether `name` runs on this machine (an unknown name counts as cloud: the safe side)."""
        return self._local.get(name, False)

    def embedding(self) -> Versions:
        """The embedding deployments (the router embeds with the first one available)."""
        return self._embedding

    def for_request(self, req: ChatRequest) -> Versions:
        """The deployments (with versions) that may serve `req`, as the router would choose among them."""
        task = req.task.value if isinstance(req.task, TaskKind) else str(req.task)
        memo_key = (req.context.deployments, task)
        out = self._memo.get(memo_key)
        if out is None:
            names = req.context.deployments or self._aliases.get(task) or self._chat
            out = self.of(names)
            if len(self._memo) >= _MEMO_LIMIT:  # (pinned sets come from configuration: this rarely happens)
                self._memo.clear()
            self._memo[memo_key] = out
        return out


def namespace(ctx: CallContext | None) -> str:
    """Whose entries a request may read: the tenant and the request's own namespace."""
    if ctx is None:
        return "/"
    ns = ctx.cache.namespace if ctx.cache is not None else ""
    return f"{ctx.team or ctx.caller}/{ns}"


def cacheable(req: ChatRequest) -> bool:
    """Deterministic (temperature 0), or opted in with a ttl; never when the caller says neither read nor store."""
    ctl = req.context.cache
    if ctl is not None and ctl.no_cache and ctl.no_store:
        return False
    return req.temperature == 0 or (ctl is not None and ctl.ttl_s is not None)


def _messages(req: ChatRequest, upto: int | None = None) -> list[Any]:
    return [[m.role, m.content, list(m.tool_calls), m.tool_call_id, m.name] for m in req.messages[:upto]]


def _material(req: ChatRequest, versions: Versions, messages: list[Any]) -> dict[str, Any]:
    return {"ns": namespace(req.context), "models": versions, "messages": messages,
            "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed, "max_tokens": req.max_tokens,
            "stop": req.stop, "repeat_penalty": req.repeat_penalty, "extra": req.extra, "tools": req.tools,
            "tool_choice": req.tool_choice, "json_schema": req.json_schema,
            "task": req.task.value if isinstance(req.task, TaskKind) else str(req.task)}


def chat_key(req: ChatRequest, versions: Versions) -> str | None:
    """The key of a chat request; None when some field is not JSON (it is then not cached)."""
    try:
        return "chat:" + digest(_material(req, versions, _messages(req)))
    except TypeError:
        return None


def semantic_subject(req: ChatRequest, versions: Versions) -> tuple[str, str] | None:
    """(namespace, text) for a semantic index: the last user message as the text, everything else about
    the request as the namespace, "chat:TENANT/NAMESPACE:DIGEST" (so only paraphrases of that message,
    asked the same way of the same models by the same tenant, can match; per-prefix thresholds can key on
    "chat:"). None: not a candidate (no trailing user message, tools)."""
    if not req.messages or req.messages[-1].role != "user" or req.tools or req.task is not TaskKind.CHAT:
        return None
    from .semantic import standalone_question  # (numpy and the vetoes load only when a semantic index is on)

    if not standalone_question(req.messages, tools=req.tools, json_schema=req.json_schema):
        return None  # a follow-up, pasted material, a long text: only an exact hit may answer it
    try:
        rest = digest(_material(req, versions, _messages(req, -1)))
    except TypeError:
        return None
    return f"chat:{namespace(req.context)}:{rest}", req.messages[-1].content


def embed_key(texts: Sequence[str], model: Versions, control: CacheControl | None) -> str:
    ns = f"/{control.namespace}" if control is not None else "/"
    return "embed:" + digest({"ns": ns, "models": model, "texts": list(texts)})
