"""The shared vocabulary: items, task kinds and the chat types every provider speaks."""
from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field, fields
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
    """A provider-neutral chat request. `json_schema` asks for output matching that schema."""

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
    priority: int = 0  # higher is served first where calls queue for an engine (x-nlweb-priority)
    difficulty: float | None = None  # 0 easy .. 1 hard, set by a caller that knows (the ranker's uncertain band); None = the router estimates

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
    route: str | None = None  # set by the router on a stream's first chunk: "deployment; reason"


@dataclass(slots=True)
class ChatResponse:
    content: str
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    deployment: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    route: str = ""  # which deployment served it and why (the x-nlweb-route header)


@dataclass(slots=True)
class EmbeddingResponse:
    vectors: list[list[float]]
    model: str = ""
    prompt_tokens: int = 0
    deployment: str = ""


class LabelProbs(dict):
    """A classification answer: {label: probability}, plus who gave it. `failover` is true when the router's
    first choice failed and another deployment answered — an answer a cache should not keep."""

    __slots__ = ("deployment", "failover")

    def __init__(self, probs: dict[str, float], *, deployment: str = "", failover: bool = False):
        super().__init__(probs)
        self.deployment = deployment
        self.failover = failover
