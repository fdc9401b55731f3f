"""One adapter for every engine that speaks OpenAI's `/v1/chat/completions`: OpenAI, Azure OpenAI,
vLLM, llama-server, llama-cpp-python's server, Ollama's `/v1` and TGI's `/v1`. What differs between
them (URL, auth, JSON mode, capabilities, load signals) is data in `profiles.py`.

`stream()` reads SSE chunks up to `data: [DONE]`, asking for usage in the last chunk; an engine that
sends none gets an `EstimatedUsage` (completion = streamed chunks, prompt ≈ characters / 4).
`complete()` is one non-streamed call: engines report exact usage there (llama-cpp-python's server
does not in streams) and it costs one JSON parse; the contract suite checks both paths agree.
"""
from __future__ import annotations

import math
import time
from typing import Any, AsyncIterator, Mapping, Sequence

import orjson

from ..config.settings import DeploymentSettings
from ..core.errors import (BadRequestError, ModelNotFoundError, ModelOutputError, NlwebError, NotFoundError,
                           ProviderError)
from ..core.types import ChatChunk, ChatRequest, ChatResponse, EmbeddingResponse, LabelProbs, Usage
from .base import BaseProvider, Capabilities, LoadSnapshot, merge_tool_call_delta
from .http import HttpTransport, error_for_status, iter_sse
from .load_parsers import llama_server_snapshot, openai_models, vllm_snapshot
from .profiles import EngineProfile, profile_for

DEFAULT_AZURE_API_VERSION = "2024-10-21"


class EstimatedUsage(Usage):
    """Usage the engine did not report; check with `getattr(usage, "estimated", False)`."""

    __slots__ = ()
    estimated = True


def response_format(profile: EngineProfile, schema: dict[str, Any]) -> dict[str, Any] | None:
    mode = profile.json_mode
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema}  # llama-cpp-python: grammar from the schema
    if mode == "json_object_value":
        return {"type": "json_object", "value": schema}  # TGI's grammar
    return {"type": "json_object"} if mode == "json_object" else None


def _usage(raw: Mapping[str, Any] | None, *, ttft: float | None, total: float) -> Usage | None:
    if not raw:
        return None
    details = raw.get("prompt_tokens_details")  # OpenAI, vLLM, llama-server: how much of the prompt was cached
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0), ttft, total,
                 cached_tokens=int(cached) if isinstance(cached, (int, float)) and cached >= 0 else None)


def _estimate(req: ChatRequest, completion_tokens: int, *, ttft: float | None, total: float) -> EstimatedUsage:
    chars = sum(len(m.content) + 8 for m in req.messages)  # + role and template markers
    return EstimatedUsage(max(1, chars // 4), completion_tokens, ttft, total)


class OpenAICompatProvider(BaseProvider):
    def __init__(self, d: DeploymentSettings, environ: Mapping[str, str] | None = None):
        environ = environ or {}
        self.profile = p = profile_for(d.engine, d.options)
        o = d.options
        self.name = d.name
        self.d_engine = d.engine
        key = d.key(environ) or (environ.get(p.default_key_env) if p.default_key_env and not d.api_key_env else None)
        if p.key_required and not key:
            env = d.api_key_env or p.default_key_env
            raise BadRequestError(f"deployment {d.name!r} ({d.engine}) has no API key: set the environment variable {env} "
                                  f"(or name another one with api_key_env)", deployment=d.name)
        url = d.url or p.default_url
        if not url:
            raise BadRequestError(f"deployment {d.name!r} ({d.engine}) needs url, e.g. https://<resource>.openai.azure.com",
                                  deployment=d.name)
        self._deployment = o.get("deployment") or d.model
        self.model = d.model or self._deployment or p.default_model or ""
        if not self.model:
            raise BadRequestError(f"deployment {d.name!r} ({d.engine}) needs model: the name the engine serves it under",
                                  deployment=d.name)
        self._embedding_model = o.get("embedding_model") or self.model
        self._embedding_deployment = o.get("embedding_deployment") or o.get("embedding_model") or self._deployment
        self._params = {"api-version": o.get("api_version", DEFAULT_AZURE_API_VERSION)} if p.azure else None
        headers = dict(o.get("headers") or {})
        if key:
            headers.update({"api-key": key} if p.auth == "api-key" else {"Authorization": f"Bearer {key}"})
        self._timeout_s = d.timeout_s
        self._http = HttpTransport(url, deployment=d.name, headers=headers, timeout_s=d.timeout_s,
                                   max_connections=int(o.get("max_connections", 256)))
        self._root = self._http.base_url.removesuffix("/v1")  # where /health, /metrics and /slots live
        self.capabilities = Capabilities(context_window=d.context_window or p.context_window,
                                         json_schema=p.json_mode != "none", tools=p.tools, streaming=True,
                                         embeddings=p.embeddings, local=p.local, classify=p.classify,
                                         enforces_deadline=True)

    # -- the wire --------------------------------------------------------------------------------
    def _path(self, endpoint: str, deployment: str | None = None) -> str:
        if self.profile.azure:
            return f"/openai/deployments/{deployment or self._deployment}/{endpoint}"
        return f"/{endpoint}"

    def body(self, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        p = self.profile
        body: dict[str, Any] = {"model": self.model, "messages": [m.openai() for m in req.messages],
                                p.max_tokens_key: req.max_tokens, "temperature": req.temperature, "stream": stream}
        if stream and p.stream_usage:
            body["stream_options"] = {"include_usage": True}
        for key in ("stop", "top_p", "seed", "tools", "tool_choice"):
            if getattr(req, key) is not None:
                body[key] = getattr(req, key)
        if req.repeat_penalty is not None and p.repeat_penalty_key:
            body[p.repeat_penalty_key] = req.repeat_penalty
        if req.json_schema is not None and (fmt := response_format(p, req.json_schema)):
            body["response_format"] = fmt
        body.update(req.extra)
        return body

    def _not_found_is_model(self, e: NotFoundError, served: str) -> NlwebError:
        """On a chat or embeddings endpoint, a 404 means the model (Azure: the deployment) is not served."""
        if isinstance(e, ModelNotFoundError):
            return e
        return ModelNotFoundError(f"{e.message} (is {served!r} deployed/served under that name?)", deployment=self.name,
                                  body=e.body)

    def _stream_error(self, obj: Mapping[str, Any]) -> ProviderError:
        err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
        code = err.get("code")
        mapped = error_for_status(code, orjson.dumps(obj).decode(), {}, deployment=self.name) \
            if isinstance(code, int) and 400 <= code < 600 else None
        if isinstance(mapped, ProviderError):
            return mapped
        return ProviderError(f"{self.name}: the engine failed mid-answer: {err.get('message') or obj.get('error') or err}",
                             deployment=self.name, body=orjson.dumps(obj).decode())

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        start = time.perf_counter()
        ttft: float | None = None
        finish, usage, n = None, None, 0
        done = False
        try:
            async with self._http.request("POST", self._path("chat/completions"), json_body=self.body(request, stream=True),
                                          params=self._params, deadline_s=request.deadline_s) as resp:
                async for _event, data in iter_sse(resp):
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        obj = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise ProviderError(f"{self.name}: malformed stream event {data[:120]!r}", deployment=self.name) from None
                    if "error" in obj or obj.get("object") == "error":
                        raise self._stream_error(obj)
                    usage = obj.get("usage") or usage
                    for choice in obj.get("choices") or ():
                        finish = choice.get("finish_reason") or finish
                        delta = choice.get("delta") or {}
                        text, calls = delta.get("content") or "", delta.get("tool_calls")
                        if text or calls:
                            n += 1
                            ttft = ttft if ttft is not None else time.perf_counter() - start
                            yield ChatChunk(text, None, None, calls)
        except NotFoundError as e:
            raise self._not_found_is_model(e, self._deployment if self.profile.azure else self.model) from None
        if not done and finish is None:
            raise ProviderError(f"{self.name}: the stream ended before the answer did (no [DONE])", deployment=self.name)
        total = time.perf_counter() - start
        yield ChatChunk("", finish or "stop", _usage(usage, ttft=ttft, total=total) or _estimate(request, n, ttft=ttft, total=total))

    async def _post(self, endpoint: str, body: dict[str, Any], *, deadline_s: float | None,
                    deployment: str | None = None) -> dict[str, Any]:
        try:
            raw = await self._http.post_json(self._path(endpoint, deployment), body, params=self._params,
                                             deadline_s=deadline_s)
        except NotFoundError as e:
            raise self._not_found_is_model(e, (deployment or self._deployment) if self.profile.azure else body["model"]) from None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProviderError(f"{self.name}: {endpoint} answered with invalid JSON: {raw[:200]!r}", deployment=self.name,
                                body=raw.decode(errors="replace")) from None
        if not isinstance(obj, dict) or "error" in obj or obj.get("object") == "error":
            raise self._stream_error(obj if isinstance(obj, dict) else {"error": {"message": str(obj)[:200]}})
        return obj

    async def complete(self, request: ChatRequest) -> ChatResponse:
        start = time.perf_counter()
        obj = await self._post("chat/completions", self.body(request, stream=False), deadline_s=request.deadline_s)
        total = time.perf_counter() - start
        try:
            choice = obj["choices"][0]
            msg = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            raise ProviderError(f"{self.name}: an answer without choices: {str(obj)[:200]}", deployment=self.name) from None
        content = msg.get("content") or ""
        calls: dict[int, dict] = {}
        for i, tc in enumerate(msg.get("tool_calls") or ()):
            merge_tool_call_delta(calls, {"index": i, **tc})
        usage = _usage(obj.get("usage"), ttft=None, total=total) or \
            _estimate(request, max(1, len(content) // 4), ttft=None, total=total)
        return ChatResponse(content, choice.get("finish_reason") or "stop", usage, model=self.model, deployment=self.name,
                            tool_calls=[calls[i] for i in sorted(calls)])

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        """P(label) as the first answer token, from the engine's top logprobs, renormalised over `labels`.
        Each label counts its spellings that differ only in case or a leading space ("Yes", " yes", ...)."""
        if not self.capabilities.classify:
            raise BadRequestError(f"deployment {self.name!r} does not return logprobs (classify is off in its profile)",
                                  deployment=self.name)
        body = self.body(request, stream=False)
        for key in ("response_format", "tools", "tool_choice"):
            body.pop(key, None)
        body.update({self.profile.max_tokens_key: 1, "temperature": 0.0, "logprobs": True,
                     "top_logprobs": self.profile.top_logprobs})
        obj = await self._post("chat/completions", body, deadline_s=request.deadline_s)
        try:
            top = obj["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise ProviderError(f"{self.name}: the answer carries no logprobs; set classify: false in the deployment's "
                                f"options", deployment=self.name, body=str(obj)[:500]) from None
        wanted = {label.strip().lower(): label for label in labels}
        mass = dict.fromkeys(labels, 0.0)
        for cand in top:
            label = wanted.get(str(cand.get("token", "")).strip().lower())
            if label is not None:
                mass[label] += math.exp(float(cand["logprob"]))
        total = sum(mass.values())
        if total <= 0:
            raise ModelOutputError(f"{self.name}: none of {list(labels)} among the model's top "
                                   f"{len(top)} first tokens", deployment=self.name)
        return LabelProbs({k: v / total for k, v in mass.items()})

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        obj = await self._post("embeddings", {"model": self._embedding_model, "input": list(texts)}, deadline_s=None,
                               deployment=self._embedding_deployment)
        rows = sorted(obj.get("data") or (), key=lambda r: r.get("index", 0))
        return EmbeddingResponse([r["embedding"] for r in rows], model=obj.get("model") or self._embedding_model,
                                 prompt_tokens=int((obj.get("usage") or {}).get("prompt_tokens") or 0), deployment=self.name)

    # -- load and health -------------------------------------------------------------------------
    async def health(self) -> LoadSnapshot:
        """The engine's load as `load_parsers` reads it: vLLM from /health + /metrics, llama-server from
        /health + /metrics (with --metrics) + /slots; any other profile is up when /models answers."""
        deadline = min(self._timeout_s, 5.0)
        try:
            if self.profile.health == "vllm":
                await self._http.text("GET", f"{self._root}/health", deadline_s=deadline)
                status, text = await self._http.text("GET", f"{self._root}/metrics", deadline_s=deadline, ok=(404,))
                if status != 200:  # up (its /health said so), behind something that hides /metrics
                    return LoadSnapshot(healthy=True, detail=f"{self.model} (no /metrics: load unknown)")
                return vllm_snapshot(text, self.model)
            if self.profile.health == "llama_server":
                return await self._llama_server_health(deadline)
            models = "/openai/models" if self.profile.azure else "/models"
            _, body = await self._http.text("GET", models, params=self._params, deadline_s=deadline)
            # a local engine's /models is what it has loaded (a cloud's lists its whole catalogue: not said)
            return LoadSnapshot(healthy=True, detail=self.model, models=openai_models(body) if self.profile.local else None)
        except NlwebError as e:
            return LoadSnapshot(healthy=False, detail=e.message)

    async def _llama_server_health(self, deadline: float) -> LoadSnapshot:
        """503 from /health is "Loading model" (not healthy yet) or, on older servers, "no slot available"
        (healthy, all slots busy): `llama_server_snapshot` tells them apart. /metrics answers only with
        --metrics and /slots only without --no-slots (else 501); each is read when there."""
        health_status, health = await self._http.text("GET", f"{self._root}/health", deadline_s=deadline, ok=(503,))
        status, metrics = await self._http.text("GET", f"{self._root}/metrics", deadline_s=deadline, ok=(404, 501, 503))
        status_s, slots_text = await self._http.text("GET", f"{self._root}/slots", deadline_s=deadline,
                                                     ok=(404, 501, 503))
        try:
            slots = orjson.loads(slots_text) if status_s == 200 and slots_text else None
        except orjson.JSONDecodeError:
            slots = None
        return llama_server_snapshot(metrics if status == 200 else None, health_status, health,
                                     slots if isinstance(slots, list) else None)

    # -- vLLM's dev-mode lifecycle (server started with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode) --
    async def sleep(self, level: int = 1) -> None:
        """Free the GPU: level 1 offloads weights to CPU memory, level 2 discards them."""
        self._need_vllm("sleep")
        await self._http.text("POST", f"{self._root}/sleep", params={"level": str(level)}, deadline_s=self._timeout_s)

    async def wake(self) -> None:
        """Load the weights back after `sleep` (vLLM's /wake_up)."""
        self._need_vllm("wake_up")
        await self._http.text("POST", f"{self._root}/wake_up", deadline_s=self._timeout_s)

    async def load(self, model: str | None = None) -> None:
        raise BadRequestError(f"deployment {self.name!r} ({self.d_engine}) loads its model when the server starts; "
                              "start it with the model (e.g. vllm serve MODEL), or use sleep/wake", deployment=self.name)

    async def unload(self, model: str | None = None) -> None:
        raise BadRequestError(f"deployment {self.name!r} ({self.d_engine}) cannot unload its model; use sleep "
                              "(vLLM dev mode) to free the accelerator", deployment=self.name)

    async def is_sleeping(self) -> bool:
        self._need_vllm("is_sleeping")
        data = await self._http.json("GET", f"{self._root}/is_sleeping", deadline_s=min(self._timeout_s, 5.0))
        return bool((data or {}).get("is_sleeping"))

    def _need_vllm(self, what: str) -> None:
        if self.profile.health != "vllm":
            from ..core.errors import BadRequestError

            raise BadRequestError(f"{what} is a vLLM endpoint; deployment {self.name!r} runs on {self.d_engine}")

    async def close(self) -> None:
        await self._http.close()


def from_settings(d: DeploymentSettings, environ: Mapping[str, str]) -> OpenAICompatProvider:
    """Any OpenAI-compatible deployment; `d.engine` picks the profile (see `profiles.py`)."""
    return OpenAICompatProvider(d, environ)
