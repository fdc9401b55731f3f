"""The shared vocabulary: items, task kinds and the chat types every provider speaks."""
from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field, fields, replace
from collections.abc import Iterator, Mapping
from typing import Any, Literal


class TaskKind(str, enum.Enum):
    """What an LLM call is for. The search pipeline asks for tasks, never for a vendor."""

    RANK = "rank"
    DECONTEXTUALIZE = "decontextualize"
    SUMMARIZE = "summarize"
    GENERATE = "generate"
    CHAT = "chat"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Item:
    """One schema.org item as stored: NLWeb's `{url, name, site, schema_json}` payload."""

    url: str
    name: str
    site: str
    schema_json: str

    @property
    def schema_object(self) -> Any:
        import json

        return json.loads(self.schema_json)


@dataclass(frozen=True, slots=True)
class ScoredItem:
    """An item with its retrieval similarity (cosine, -1..1)."""

    item: Item
    similarity: float


class Privacy(str, enum.Enum):
    ANY = "any"
    LOCAL_ONLY = "local_only"  # never leaves the machine: a hard guarantee


@dataclass(frozen=True, slots=True)
class CacheControl:
    """A caller's say over the response cache, per request (the gateway reads it from the body's `cache`
    object and the `Cache-Control` / `x-nlweb-cache-namespace` headers)."""

    no_cache: bool = False  # do not answer from the cache (the answer may still be stored)
    no_store: bool = False  # do not keep this answer
    ttl_s: float | None = None  # keep this answer this long (None: the cache's default); also opts a
    #                             non-deterministic request (temperature > 0) in
    max_age_s: float | None = None  # answer only from an entry at most this old
    namespace: str = ""  # entries are shared only within a namespace


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who asks and how one call must be served: set once where the request enters (the HTTP edge, the
    /ask pipeline) and carried, unchanged, on the `ChatRequest` through every wrapper to the engine.

    `deadline_s` is the caller's whole budget for the call, in seconds (the router splits what is left of
    it over its attempts and hands each engine its share as `ChatRequest.deadline_s`)."""

    strategy: str | None = None  # routing strategy; None = the router's default
    privacy: Privacy = Privacy.ANY
    deployments: tuple[str, ...] = ()  # pinned: only these may serve (a model name that names deployments)
    conversation: str = ""  # sticky decisions (rollout) per conversation
    priority: int = 0  # higher is served first where calls queue for an engine
    deadline_s: float | None = None  # the caller's budget; None = the router's default
    difficulty: float | None = None  # 0 easy .. 1 hard, set by a caller that knows; None = the router estimates
    caller: str = ""  # identity of the caller (an API key's id), for governance
    team: str = ""
    role: str = ""
    budget_usd: float | None = None  # what this caller may still spend, when a budget applies
    cache: CacheControl | None = None  # the caller's cache controls; None = the defaults

    def with_(self, **changes: Any) -> "CallContext":
        """A copy with some fields changed (the context itself is immutable)."""
        return replace(self, **changes)


DEFAULT_CONTEXT = CallContext()


@dataclass(frozen=True, slots=True)
class Served:
    """Who served a call and why: typed fields the HTTP edge renders (`x-nlweb-route`), never parsed back."""

    deployment: str
    reason: str = ""
    failover_from: tuple[str, ...] = ()  # deployments that failed before this one answered
    model: str = ""  # the model name at the engine
    # the model registry's NAME@VERSION when the deployment serves a registered version (then x-nlweb-route
    # names it), else a fingerprint of the deployment's engine, model and URL (cache keys)
    model_version: str = ""
    cache: str = ""  # the response cache's outcome (`x-nlweb-cache`): "hit", "miss", "semantic-hit; similarity=0.97"; "" = not looked up

    @property
    def failover(self) -> bool:
        """True when the router's first choice failed and another deployment answered."""
        return bool(self.failover_from)

    def header(self) -> str:
        """The `x-nlweb-route` value: who served, why, and whom it replaced (ASCII-safe)."""
        text = f"{self.deployment}; {self.reason}" if self.reason else self.deployment
        if self.failover_from:
            text += f"; after failover from {', '.join(self.failover_from)}"
        if "@" in self.model_version:  # a registered version (a fingerprint is hex)
            text += f"; version={self.model_version}"
        return text.encode("ascii", "replace").decode("ascii")


Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()  # an assistant turn that called tools (OpenAI shape)
    tool_call_id: str | None = None  # a tool turn: which call this result answers
    name: str | None = None

    def openai(self) -> dict[str, Any]:
        """This message in OpenAI's chat format."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = list(self.tool_calls)
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.name:
            out["name"] = self.name
        return out


@dataclass(slots=True)
class ChatRequest:
    """A provider-neutral chat request. `json_schema` asks for output matching that schema.

    `deadline_s` is what the engine serving this attempt may take (set by the router from the caller's
    `context.deadline_s`); engines that honour it say so with `Capabilities.enforces_deadline`."""

    messages: list[Message]
    model: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    json_schema: dict[str, Any] | None = None
    stop: list[str] | None = None
    repeat_penalty: float | None = None
    task: TaskKind = TaskKind.CHAT
    deadline_s: float | None = None
    top_p: float | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None  # OpenAI function-tool definitions, passed through where supported
    tool_choice: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific body fields, passed through as they are
    context: CallContext = DEFAULT_CONTEXT  # who asks and how the call must be served (frozen, shared by copies)

    def with_deadline(self, seconds: float | None) -> "ChatRequest":
        """A shallow copy with another deadline (the router's copy per attempt; ~5× cheaper than copy.copy)."""
        new = ChatRequest(*_chat_request_fields(self))
        new.deadline_s = seconds
        return new


_chat_request_fields = operator.attrgetter(*(f.name for f in fields(ChatRequest)))  # in __init__'s order


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_s: float | None = None
    total_s: float | None = None
    queue_s: float = 0.0  # time spent waiting in nlweb-local's own queue for an in-process engine (not service time)
    # prompt tokens the engine took from its KV/prompt cache instead of computing them (of prompt_tokens);
    # None: the engine did not say
    cached_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tokens_per_second(self) -> float | None:
        if not self.total_s or not self.completion_tokens:
            return None
        gen_time = self.total_s - (self.time_to_first_token_s or 0.0)
        return self.completion_tokens / gen_time if gen_time > 0 else None


@dataclass(slots=True)
class ChatChunk:
    """One streamed piece of an answer; the last chunk carries `finish_reason` and usage."""

    delta: str
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI-style tool-call deltas
    served: Served | None = None  # set by the router on a stream's first chunk


@dataclass(slots=True)
class ChatResponse:
    content: str
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    deployment: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    served: Served | None = None  # which deployment served it and why (set by the router)


@dataclass(slots=True)
class EmbeddingResponse:
    vectors: list[list[float]]
    model: str = ""
    prompt_tokens: int = 0
    deployment: str = ""
    cache: str = ""  # the response cache's outcome, as `Served.cache`


@dataclass(frozen=True, slots=True, eq=False)  # equality is the mapping's: the probabilities
class LabelProbs(Mapping[str, float]):
    """A classification answer: the probability of each label (read it as a mapping), and who gave it
    (`served.failover` is true when the router's first choice failed and another deployment answered —
    an answer a cache should not keep)."""

    probs: dict[str, float]
    served: Served | None = None
    queue_s: float = 0.0  # time spent waiting in nlweb-local's own queue (see `Usage.queue_s`)
    usage: Usage | None = None  # the prompt's tokens (and how many came from the KV cache), where the engine says

    def __getitem__(self, label: str) -> float:
        return self.probs[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self.probs)

    def __len__(self) -> int:
        return len(self.probs)
