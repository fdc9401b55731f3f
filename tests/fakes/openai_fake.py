"""A wire-faithful fake of the OpenAI chat API as OpenAI, Azure OpenAI and vLLM serve it
(/work/shared/design/ENGINE_APIS.md), plus llama-server's `/health` and `/slots`.

- OpenAI paths `/v1/...` want `Authorization: Bearer <api_key>`; Azure paths
  `/openai/deployments/{deployment}/...` want `?api-version=` and an `api-key` header. A wrong key
  gets 401 (each vendor's own body), an unknown model 404 `model_not_found`, an unknown Azure
  deployment 404 `DeploymentNotFound`.
- Streaming is SSE exactly as OpenAI frames it: `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`, the usage
  in one last chunk with `choices: []` only when `stream_options.include_usage` is true.
- Errors are `{"error": {"message", "type", "param", "code"}}`; 429 carries `retry-after`.
- `/metrics` is `metrics_text` (vLLM's Prometheus text unless a test sets llama-server's; None: 501 as
  llama-server without --metrics); `/health` is 200, or llama-server's 503 "Loading model" while
  `loading` is set; `/slots` is llama-server's slot list. `legacy_health` answers /health as
  llama-server did before `fail_on_no_slot` (early 2024): 503 "no slot available" while every slot is busy.

Canned answers (tests/provider_contract.py): "Hello! I am a fake model." in several chunks;
`{"city": "Paris"}` when `response_format` is set; a `get_weather` call when `tools` are given;
with `logprobs: true`, first-token top logprobs that favour the Yes/No word in the last message.

vLLM's sleep mode (dev mode): `/sleep?level=N`, `/wake_up`, `/is_sleeping`. A real vLLM must not get a
generation request while asleep (it crashed with a CUDA error, vllm#15483; later ones refuse with 503) nor
be put to sleep with requests in flight (vllm#45520): here the first answers 503 and each is counted
(`chats_while_asleep`, `slept_while_busy`), so a test can assert that neither happened.

`fault(kind)` makes the NEXT chat request fail: rate_limit, overloaded, mid_stream, hang,
model_missing, bad_json. Serving, faults and the request record are `FakeEngine`'s (tests/fakes/base.py):

    fake = OpenAIFake().start(); ... fake.url ...; fake.stop()     # or: with OpenAIFake() as fake: ...
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from aiohttp import web

from .base import FakeEngine

ANSWER = ["Hello", "!", " I", " am", " a", " fake", " model", "."]
JSON_ANSWER = ['{"city"', ': "', 'Paris', '"}']
NOT_JSON = ["Sure", "! The", " city", " is", " Paris", "."]
TOOL_ARGS = ['{"city"', ': "Paris', '"}']
FAULTS = ("rate_limit", "overloaded", "mid_stream", "hang", "model_missing", "bad_json")
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="fake-model"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="fake-model"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="fake-model"} 0.25
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="fake-model"} 1234.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="fake-model"} 7.0
"""

LLAMA_SERVER_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 10234
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 29.1
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 5120
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 351.68
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.25
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 1024
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 3
"""


def error(status: int, message: str, type_: str | None, code: Any = None, headers: dict | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


class OpenAIFake(FakeEngine):
    FAULTS = FAULTS

    def __init__(self, *, api_key: str = "sk-test", model: str = "fake-model", azure_deployment: str = "gpt-fake",
                 azure_key: str = "azure-test"):
        super().__init__()
        self.api_key, self.model = api_key, model
        self.azure_deployment, self.azure_key = azure_deployment, azure_key
        self.loading = False
        self.sleeping_level = 0
        self.chats_in_flight = 0
        self.chats_while_asleep = 0  # generation requests that reached the engine asleep
        self.slept_while_busy = 0  # /sleep calls while generation requests were in flight
        self.sleeps = self.wakes = 0
        self.slots = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}]
        self.metrics_text: str | None = VLLM_METRICS
        self.legacy_health = False
        self._canned: tuple[int, Any, dict[str, str]] | None = None

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._embeddings)
        app.router.add_get("/openai/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/slots", self._slots)
        app.router.add_post("/sleep", self._sleep)  # vLLM dev mode (VLLM_SERVER_DEV_MODE=1, --enable-sleep-mode)
        app.router.add_post("/wake_up", self._wake)
        app.router.add_get("/is_sleeping", self._is_sleeping)

    def fault_reply(self, kind: str, request: web.Request, body: Any) -> web.StreamResponse | None:
        if kind == "rate_limit":
            return error(429, "Rate limit reached for requests. Please try again in 7s.", "requests",
                         "rate_limit_exceeded", headers={"retry-after": "7"})
        if kind == "overloaded":
            return error(503, "The engine is currently overloaded, please try again later", "server_error",
                         headers={"retry-after": "2"})
        if kind == "model_missing":
            return self._missing(request, body)
        if kind == "hang":
            return error(504, "hung", "server_error")
        return None


    async def _slots(self, request: web.Request) -> web.Response:
        return web.json_response(self.slots)

    async def _is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.sleeping_level > 0})

    async def _sleep(self, request: web.Request) -> web.Response:
        self.slept_while_busy += self.chats_in_flight > 0
        self.sleeping_level = int(request.query.get("level", "1"))
        self.sleeps += 1
        return web.Response(status=200)

    async def _wake(self, request: web.Request) -> web.Response:
        self.sleeping_level = 0
        self.wakes += 1
        return web.Response(status=200)

    def clear_faults(self) -> None:
        super().clear_faults()
        self._canned = None

    def answer_next(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """The NEXT chat request gets exactly this answer (a dict is sent as JSON, bytes as they are)."""
        self._canned = (status, body, headers or {})

    # -- checks ------------------------------------------------------------------------------
    def _refuse(self, request: web.Request, body: dict[str, Any]) -> web.Response | None:
        """The vendor's own answer to a bad key, version, deployment or model; None when all is well."""
        if not isinstance(body, dict):
            return error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        deployment = request.match_info.get("deployment")
        if deployment is not None or request.path.startswith("/openai/"):
            if "api-version" not in request.query:
                return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
            if request.headers.get("api-key") != self.azure_key:
                return web.json_response({"error": {"code": "401", "message": "Access denied due to invalid subscription "
                                          "key or wrong API endpoint. Make sure to provide a valid key for an active "
                                          "subscription and use a correct regional API endpoint for your resource."}},
                                         status=401)
            if deployment is not None and deployment != self.azure_deployment:
                return self._missing(request, body)
            return None
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            if not auth:
                return error(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                             "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", "invalid_request_error")
            return error(401, f"Incorrect API key provided: {auth[7:11]}****.", "invalid_request_error", "invalid_api_key")
        if "model" in body and body["model"] != self.model:
            return self._missing(request, body)
        return None

    def _missing(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if "deployment" in request.match_info:
            return web.json_response({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this "
                                      "resource does not exist. If you created the deployment within the last 5 minutes, "
                                      "please wait a moment and try again."}}, status=404)
        return error(404, f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                     "invalid_request_error", "model_not_found")

    # -- chat ----------------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.sleeping_level:
            self.chats_while_asleep += 1
            return error(503, "The engine is sleeping; POST /wake_up first", "server_error")
        self.chats_in_flight += 1
        try:
            return await self._chat_awake(request)
        finally:
            self.chats_in_flight -= 1

    async def _chat_awake(self, request: web.Request) -> web.StreamResponse:
        body = await self.read(request)
        refused = self._refuse(request, body)
        if refused is not None:
            return refused
        if self._canned is not None:
            (status, canned, headers), self._canned = self._canned, None
            if isinstance(canned, bytes):
                return web.Response(status=status, body=canned, headers={"content-type": "text/event-stream", **headers})
            return web.json_response(canned, status=status, headers=headers)
        fault = await self.take_fault(request, body)
        prompt_tokens = 1 + sum(len(str(m.get("content") or "")) for m in body.get("messages", ())) // 4
        tools = bool(body.get("tools")) and body.get("tool_choice") != "none"
        pieces = NOT_JSON if fault == "bad_json" else JSON_ANSWER if body.get("response_format") else ANSWER
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 1 << 30
        finish = "tool_calls" if tools else "length" if len(pieces) > limit else "stop"
        pieces = TOOL_ARGS if tools else pieces[:limit]
        if body.get("stream"):
            return await self._stream(request, body, pieces, finish, tools, prompt_tokens, fault == "mid_stream")
        if fault == "mid_stream":  # the connection drops part-way through the body
            full = json.dumps(self._completion(body, pieces, finish, tools, prompt_tokens)).encode()
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.content_length = len(full)
            await resp.prepare(request)
            await resp.write(full[: len(full) // 2])
            request.transport.close()  # type: ignore[union-attr]
            return resp
        return web.json_response(self._completion(body, pieces, finish, tools, prompt_tokens))

    def _completion(self, body, pieces, finish, tools, prompt_tokens) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None if tools else "".join(pieces), "refusal": None}
        if tools:
            message["tool_calls"] = [{"id": "call_fake1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": "".join(pieces)}}]
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [self._logprobs(body)]}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": self.model,
                "choices": [choice], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                                                "total_tokens": prompt_tokens + len(pieces)}}

    def _logprobs(self, body: dict[str, Any]) -> dict[str, Any]:
        last = str(body["messages"][-1].get("content", ""))
        target = "No" if "No" in last.replace(".", " ").split() else "Yes"
        other = "Yes" if target == "No" else "No"
        dist = [(target, 0.7), ("Maybe", 0.1), (" " + target, 0.1), (target.lower(), 0.05), (other, 0.05)]
        if "banana" in last.lower():
            dist = [("Banana", 0.9), ("Apple", 0.1)]
        top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in dist]
        return {**top[0], "top_logprobs": top[: int(body.get("top_logprobs") or 0)]}

    async def _stream(self, request, body, pieces, finish, tools, prompt_tokens, fail) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"})
        await resp.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model,
                "system_fingerprint": "fp_fake"}
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish_reason}], **extra})

        await resp.write(chunk({"role": "assistant", "content": None if tools else ""}))
        for i, piece in enumerate(pieces):
            if tools:
                call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
                if i == 0:
                    call.update(id="call_fake1", type="function", function={"name": "get_weather", "arguments": piece})
                await resp.write(chunk({"tool_calls": [call]}))
            else:
                await resp.write(chunk({"content": piece}))
            if fail and i == 1:
                await resp.write(_sse({"error": {"message": "The server had an error while processing your request.",
                                                 "type": "server_error", "param": None, "code": None}}))
                return resp
        await resp.write(chunk({}, finish))
        if include_usage:
            await resp.write(_sse({**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens":
                                                                      len(pieces), "total_tokens": prompt_tokens + len(pieces)}}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- the rest --------------------------------------------------------------------------------
    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self.read(request)
        refused = self._refuse(request, body)
        if refused is not None:
            return refused
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i,
                 "embedding": [b / 255 for b in hashlib.sha256(t.encode()).digest()[:8]]} for i, t in enumerate(texts)]
        tokens = sum(len(t) // 4 + 1 for t in texts)
        return web.json_response({"object": "list", "data": data, "model": body.get("model", self.model),
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _models(self, request: web.Request) -> web.Response:
        refused = self._refuse(request, {})
        if refused is not None:
            return refused
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "created": 0,
                                                              "owned_by": "fake"}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_text is None:
            return error(501, "This server does not support metrics endpoint. Start it with `--metrics`",
                         "not_supported_error", 501)
        return web.Response(text=self.metrics_text, content_type="text/plain")

    async def _health(self, request: web.Request) -> web.Response:
        if self.legacy_health:
            busy = sum(1 for s in self.slots if s.get("is_processing") or s.get("state") == 1)
            counts = {"slots_idle": len(self.slots) - busy, "slots_processing": busy}
            if self.loading:
                return web.json_response({"status": "loading model"}, status=503)
            if busy == len(self.slots):
                return web.json_response({"status": "no slot available", **counts}, status=503)
            return web.json_response({"status": "ok", **counts})
        if self.loading:
            return web.json_response({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                                     status=503)
        return web.json_response({"status": "ok"})
