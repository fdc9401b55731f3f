"""The OpenAI request bodies the gateway accepts, as pydantic models (strict: a number is not a string,
`true` is not an integer), and the one place a validation failure becomes a 400 naming the field.

    ChatCompletionRequest   POST /v1/chat/completions
    CompletionRequest       POST /v1/completions
    EmbeddingRequest        POST /v1/embeddings

Fields this gateway does not use but OpenAI clients send (`user`, `logit_bias`, `presence_penalty`,
`frequency_penalty`, `logprobs`, `metadata`, `store`, `parallel_tool_calls`, ...) are accepted and
ignored (`extra="allow"`), so the official SDK and LiteLLM-style clients keep working.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core.errors import BadRequestError
from ..core.types import ChatRequest, Message, TaskKind

Number = Annotated[float, Field(allow_inf_nan=False)]  # strict: an int is a number, a bool or a string is not
MAX_STOP = 4
INT64 = 2**63


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class ContentPart(_Wire):
    type: str
    text: str | None = None


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def message(self) -> Message:
        content = self.content
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.text or "" for p in content if p.type in ("text", "input_text"))
        return Message("system" if self.role == "developer" else self.role, content or "",  # type: ignore[arg-type]
                       tool_calls=tuple(self.tool_calls or ()), tool_call_id=self.tool_call_id, name=self.name)


class FunctionDefinition(_Wire):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: FunctionName


class TextFormat(_Wire):
    type: Literal["text"]


class JsonObjectFormat(_Wire):
    type: Literal["json_object"]


class JsonSchemaSpec(_Wire):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Wire):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[Union[TextFormat, JsonObjectFormat, JsonSchemaFormat], Field(discriminator="type")]


class StreamOptions(_Wire):
    include_usage: bool | None = None


class _Sampling(_Wire):
    """What both completion endpoints share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None

    @field_validator("n")
    @classmethod
    def _only_one(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError("only n=1 is supported (one choice per request); send several requests instead")
        return n

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options is not None and self.stream_options.include_usage)

    def _request(self, messages: list[Message], **kw: Any) -> ChatRequest:
        """The provider-neutral request. `max_tokens` is None when the client set none (the gateway picks)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return ChatRequest(messages=messages, model=self.model,
                           max_tokens=self.max_completion_tokens or self.max_tokens or 0,
                           temperature=1.0 if self.temperature is None else float(self.temperature), stop=stop,
                           top_p=self.top_p, seed=self.seed, **kw)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    def chat_request(self) -> ChatRequest:
        fmt = self.response_format
        schema = (fmt.json_schema.schema_ if isinstance(fmt, JsonSchemaFormat)
                  else {"type": "object"} if isinstance(fmt, JsonObjectFormat) else None)
        tools = [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, BaseModel) else self.tool_choice
        return self._request([m.message() for m in self.messages], json_schema=schema, tools=tools, tool_choice=choice,
                             task=TaskKind.JSON if schema else TaskKind.CHAT)


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def chat_request(self) -> ChatRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return self._request([Message("user", prompt)])


class EmbeddingRequest(_Wire):
    input: str | Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None  # answered as floats (the SDK reads both)
    dimensions: int | None = Field(None, ge=1)

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


_SIMPLE_KEYS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stream", "user"})
_SIMPLE_ROLES = frozenset({"system", "user", "assistant"})


def simple_chat(body: dict[str, Any]) -> ChatRequest | None:
    """The gateway's hot path: the request a chat body of the most common shape stands for — `model`,
    plain `{role, content}` messages with text content, and at most `max_tokens`, `temperature`,
    `stream` and `user` — exactly as `ChatCompletionRequest` would give it, without building the models.
    None for anything else, which `validate` then checks in full (and names the field at fault)."""
    if not body.keys() <= _SIMPLE_KEYS:
        return None
    msgs = body.get("messages")
    if type(msgs) is not list or not msgs:
        return None
    messages = []
    for m in msgs:
        if type(m) is not dict or len(m) != 2:
            return None
        role, content = m.get("role"), m.get("content")
        if type(role) is not str or role not in _SIMPLE_ROLES or type(content) is not str:
            return None
        messages.append(Message(role, content))
    model = body.get("model")
    temperature = body.get("temperature")
    stream = body.get("stream")
    if (model is not None and type(model) is not str) or (stream is not None and type(stream) is not bool):
        return None
    if temperature is not None and (type(temperature) not in (int, float) or not 0 <= temperature <= 2):
        return None  # (NaN fails the comparison; orjson gives no infinities)
    limits = (body.get("max_completion_tokens"), body.get("max_tokens"))
    for value in limits:
        if value is not None and (type(value) is not int or not 1 <= value < INT64):
            return None
    max_tokens = limits[0] or limits[1] or 0
    user = body.get("user")
    if user is not None and type(user) is not str:
        return None
    return ChatRequest(messages=messages, model=model, max_tokens=max_tokens,
                       temperature=1.0 if temperature is None else float(temperature))


W = TypeVar("W", bound=BaseModel)


def validate(model: type[W], body: dict[str, Any]) -> W:
    """`body` as `model`, or a `BadRequestError` (400) whose message and `param` name the field."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise bad_request(e) from None


def bad_request(e: ValidationError) -> BadRequestError:
    """The failing field of `e` said plainly: `invalid 'messages[0].content[1].text': Input should be ...`.
    A field that may take several shapes (a union) fails once per shape: the deepest failure is the one
    that says most (a list whose item is wrong, not "should be a string"); equally deep ones are joined."""
    errors = e.errors(include_url=False)
    deepest = max(errors, key=lambda err: len(err["loc"]))
    param = _param(deepest["loc"])
    reasons = list(dict.fromkeys(_reason(err) for err in errors
                                 if _param(err["loc"]) == param and len(err["loc"]) == len(deepest["loc"])))
    where = f"'{param}'" if param else "the request body"
    err = BadRequestError(f"invalid {where}: {' or '.join(reasons)} (got {_short(deepest.get('input'))})")
    err.param = param or None  # type: ignore[attr-defined]  (OpenAI's error.param)
    return err


def _reason(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _field_names() -> frozenset[str]:
    names: set[str] = set()
    for m in (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ChatMessage, ContentPart, FunctionTool,
              FunctionDefinition, NamedToolChoice, FunctionName, JsonSchemaFormat, JsonSchemaSpec, StreamOptions):
        for name, f in m.model_fields.items():
            names.add(f.alias or name)
    return frozenset(names)


_FIELDS = _field_names()


def _param(loc: tuple[Any, ...]) -> str:
    """`('messages', 0, 'content', 'list[ContentPart]', 1)` → `messages[0].content[1]`: the union members
    pydantic names in a location are not fields, and a tagged union repeats its tag."""
    out = ""
    last: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _FIELDS and part != last:
            out += f".{part}" if out else part
        last = part
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
