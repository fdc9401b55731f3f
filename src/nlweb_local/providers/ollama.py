"""Ollama's native API (`/api/chat`, `/api/embed`): NDJSON streaming with engine-side token counts.

One `/api/chat` call per request, always streamed; `complete()` is the assembled stream. The last
NDJSON object (`done: true`) carries `done_reason`, `prompt_eval_count`, `eval_count` and durations
in nanoseconds. An error after the headers were sent arrives as a line `{"error": "..."}`: the tokens
already yielded stay with the caller, then `ProviderError`. A JSON schema becomes Ollama's `format`
(constrained decoding); tool calls come back whole in `message.tool_calls` and are converted to the
OpenAI-style deltas `core.types` uses. Ollama exposes no logprobs reliably across versions, so
`classify` is not offered: the structured layer falls back to a constrained one-word answer.
Ollama has no /metrics: health is `/api/version` (alive) plus `/api/ps` (is the model in memory), read by
`load_parsers.ollama_snapshot`.
"""
from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Mapping, Sequence

from ..core.errors import BadRequestError, ModelNotFoundError, NlwebError, ProviderConnectionError, ProviderError
from ..core.types import ChatChunk, ChatRequest, EmbeddingResponse, Usage
from .base import BaseProvider, Capabilities, LoadSnapshot
from .http import HttpTransport, iter_ndjson
from .load_parsers import ollama_snapshot
from .ollama_models import DEFAULT_URL, LoadedModel, OllamaModels, same_model

DEFAULT_CONTEXT = 2048  # Ollama's historical default num_ctx; set num_ctx (or context_window) to use more
_FINISH = {"length": "length", "stop": "stop", "load": "stop", "unload": "stop"}


class OllamaProvider(BaseProvider):
    def __init__(self, model: str, *, url: str = DEFAULT_URL, name: str = "ollama", timeout_s: float = 120.0,
                 keep_alive: str | int | float | None = None, num_ctx: int | None = None,
                 headers: Mapping[str, str] | None = None):
        if not model:
            raise BadRequestError(f"deployment {name!r}: engine ollama needs a model name (see `ollama list`)",
                                  deployment=name)
        self.name = name
        self.model = model
        self.capabilities = Capabilities(context_window=num_ctx or DEFAULT_CONTEXT, json_schema=True, tools=True,
                                         streaming=True, embeddings=True, local=True, classify=False,
                                         enforces_deadline=True)
        self._keep_alive = keep_alive
        self._num_ctx = num_ctx
        self._timeout_s = timeout_s
        self._http = HttpTransport(url, deployment=name, headers=headers, timeout_s=timeout_s)
        self.models = OllamaModels(self._http, timeout_s=min(timeout_s, 30.0))

    # -- wire -------------------------------------------------------------------------------------
    def chat_body(self, req: ChatRequest) -> dict[str, Any]:
        """The `/api/chat` body for a request: sampling settings go in `options`, the schema in `format`."""
        options: dict[str, Any] = {"temperature": req.temperature, "num_predict": req.max_tokens}
        if self._num_ctx:
            options["num_ctx"] = self._num_ctx
        for key, value in (("stop", req.stop), ("seed", req.seed), ("top_p", req.top_p),
                           ("repeat_penalty", req.repeat_penalty)):
            if value is not None:
                options[key] = value
        body: dict[str, Any] = {"model": self.model, "stream": True, "options": options,
                                "messages": [{"role": m.role, "content": m.content} for m in req.messages]}
        if req.json_schema is not None:
            body["format"] = req.json_schema
        if req.tools:
            body["tools"] = req.tools  # OpenAI function-tool definitions are Ollama's shape too; no tool_choice
        if self._keep_alive is not None:
            body["keep_alive"] = self._keep_alive
        for key, value in req.extra.items():  # engine-specific fields (think, ...) as they are
            if key == "options" and isinstance(value, dict):
                options.update(value)
            else:
                body[key] = value
        return body

    def _pull_hint(self, e: ModelNotFoundError) -> ModelNotFoundError:
        return ModelNotFoundError(f"{self.name}: Ollama has no model {self.model!r}; pull it first: "
                                  f"`ollama pull {self.model}` (upstream said: {e.message})",
                                  deployment=self.name, body=e.body)

    # -- calls ------------------------------------------------------------------------------------
    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        body = self.chat_body(request)
        started = time.perf_counter()
        first: float | None = None
        n_calls = 0
        try:
            async with self._http.request("POST", "/api/chat", json_body=body,
                                          deadline_s=request.deadline_s or self._timeout_s) as resp:
                async for obj in iter_ndjson(resp, deployment=self.name):
                    if "error" in obj:
                        raise ProviderError(f"{self.name}: Ollama failed while answering: {obj['error']}",
                                            deployment=self.name, body=json.dumps(obj))
                    msg = obj.get("message") or {}
                    calls = msg.get("tool_calls") or []
                    if calls:
                        yield ChatChunk("", tool_calls=[tool_call_delta(c, n_calls + i) for i, c in enumerate(calls)])
                        n_calls += len(calls)
                    text = msg.get("content") or ""
                    if text:
                        if first is None:
                            first = time.perf_counter() - started
                        yield ChatChunk(text)
                    if obj.get("done"):
                        finish = "tool_calls" if n_calls else _FINISH.get(obj.get("done_reason") or "stop", "stop")
                        yield ChatChunk("", finish, usage_from_final(obj, first, time.perf_counter() - started))
                        return
        except ModelNotFoundError as e:
            raise self._pull_hint(e) from None
        raise ProviderConnectionError(f"{self.name}: Ollama's answer ended without its final `done` line "
                                      "(engine restarted or connection cut); retry", deployment=self.name)

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        if not texts:
            return EmbeddingResponse([], model=self.model, deployment=self.name)
        body: dict[str, Any] = {"model": self.model, "input": list(texts)}
        if self._keep_alive is not None:
            body["keep_alive"] = self._keep_alive
        try:
            data = await self._http.json("POST", "/api/embed", json_body=body, deadline_s=self._timeout_s) or {}
        except ModelNotFoundError as e:
            raise self._pull_hint(e) from None
        vectors = data.get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise ProviderError(f"{self.name}: /api/embed answered {len(vectors or [])} vectors for {len(texts)} "
                                "texts (is the model an embedding model?)", deployment=self.name, body=json.dumps(data)[:500])
        return EmbeddingResponse(vectors, model=data.get("model") or self.model,
                                 prompt_tokens=int(data.get("prompt_eval_count") or 0), deployment=self.name)

    async def health(self) -> LoadSnapshot:
        try:
            version = await self.models.version()
            ps = await self.models.ps(deadline_s=min(self._timeout_s, 5.0))
        except NlwebError as e:
            return LoadSnapshot(healthy=False, detail=f"{self.name}: {e.message}")
        return ollama_snapshot(True, ps, self.model, version=version)

    # -- ModelLifecycle: Ollama's own controls --------------------------------------------------------
    async def load(self, model: str | None = None) -> None:
        """Load the model into Ollama's memory now (kept for the deployment's keep_alive)."""
        try:
            await self.models.load(model or self.model, keep_alive=self._keep_alive)
        except ModelNotFoundError as e:
            raise self._pull_hint(e) from None

    async def unload(self, model: str | None = None) -> None:
        """Free the model's memory in Ollama now (`keep_alive: 0`); its next call loads it again."""
        await self.models.unload(model or self.model)

    async def resident(self) -> LoadedModel | None:
        """The deployment's model as `/api/ps` lists it (`size`, `size_vram` in bytes); None when not loaded."""
        return next((m for m in await self.models.loaded() if same_model(m.name, self.model)), None)

    async def sleep(self, level: int = 1) -> None:
        raise BadRequestError(f"deployment {self.name!r} (ollama) cannot sleep; unload it instead (its next call "
                              "loads it again)", deployment=self.name)

    async def wake(self) -> None:
        raise BadRequestError(f"deployment {self.name!r} (ollama) cannot sleep or wake; load it instead",
                              deployment=self.name)

    async def is_sleeping(self) -> bool:
        return False

    async def close(self) -> None:
        await self._http.close()


def tool_call_delta(call: dict[str, Any], index: int) -> dict[str, Any]:
    """An Ollama tool call (`{function: {name, arguments: {...}}}`, whole) as an OpenAI-style delta."""
    fn = call.get("function") or {}
    args = fn.get("arguments", {})
    return {"index": index, "id": call.get("id") or f"call_{index}", "type": "function",
            "function": {"name": fn.get("name", ""), "arguments": args if isinstance(args, str) else json.dumps(args)}}


def usage_from_final(final: dict[str, Any], ttft_s: float | None, wall_s: float) -> Usage:
    """Token counts from Ollama's last line. Time to first token is measured here; the total is first
    token + `eval_duration`, so `Usage.tokens_per_second` is the engine's own eval_count / eval_duration."""
    eval_ns = final.get("eval_duration") or 0
    total = ttft_s + eval_ns / 1e9 if ttft_s is not None and eval_ns else wall_s
    return Usage(prompt_tokens=int(final.get("prompt_eval_count") or 0), completion_tokens=int(final.get("eval_count") or 0),
                 time_to_first_token_s=ttft_s, total_s=total)


def _url_from_environ(environ: Mapping[str, str]) -> str:
    """`OLLAMA_HOST` as the ollama CLI reads it: `host`, `host:port` or a URL (http defaults to port 11434)."""
    host = (environ.get("OLLAMA_HOST") or "").strip().rstrip("/")
    if not host:
        return DEFAULT_URL
    if "://" not in host:
        host = f"http://{host}"
    has_port = host.rsplit(":", 1)[-1].isdigit()
    return host if has_port or host.startswith("https://") else f"{host}:11434"


def from_settings(d, environ: Mapping[str, str]) -> OllamaProvider:
    """An `ollama` deployment. url: the deployment's, else $OLLAMA_HOST, else http://127.0.0.1:11434.
    options: keep_alive ("5m", seconds, -1 = forever; else the deployment's keep_alive), num_ctx (defaults to context_window when that is set,
    since Ollama otherwise silently truncates prompts to its own default context)."""
    o = d.options
    key = d.key(environ)
    return OllamaProvider(d.model, url=d.url or _url_from_environ(environ), name=d.name, timeout_s=d.timeout_s,
                          keep_alive=o.get("keep_alive", d.keep_alive), num_ctx=o.get("num_ctx") or d.context_window,
                          headers={"Authorization": f"Bearer {key}"} if key else None)  # a proxy in front may want one
