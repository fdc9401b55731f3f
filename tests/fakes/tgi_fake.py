"""A wire-faithful fake of Hugging Face TGI's native API (serving and faults: `FakeEngine`, tests/fakes/base.py).

Framing as TGI (router/src/server.rs) writes it: axum SSE `data:{json}\\n\\n` events, one per token, the
last with `generated_text` and `details`; errors `{"error": ..., "error_type": ...}` with 422/424/429/500,
and as an SSE event on /generate_stream.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .base import FakeEngine

PLAIN = ["Hello", "!", " I", " am", " a", " fake", " model", "."]
JSON_ANSWER = ['{"', "city", '":', ' "', "Paris", '"}']
NOT_JSON = ["I", " cannot", " answer", " in", " JSON", " today", "."]
EOS = {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}


def _token(i: int, text: str, logprob: float = -0.05) -> dict[str, Any]:
    return {"id": 1000 + i, "text": text, "logprob": logprob, "special": False}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data:" + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _error(status: int, error: str, error_type: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "error_type": error_type}, status=status, headers=headers)


YES_NO_TOP = [{"id": 7566, "text": "Yes", "logprob": -0.12, "special": False},
              {"id": 3869, "text": " yes", "logprob": -3.1, "special": False},
              {"id": 1939, "text": "No", "logprob": -2.4, "special": False},
              {"id": 450, "text": "The", "logprob": -4.0, "special": False},
              {"id": 13, "text": "\n", "logprob": -5.0, "special": False}]


class TgiFake(FakeEngine):
    """TGI 3.x serving a 2048-token model. `queue_size`, `batch_size` and `healthy` shape /metrics and /health."""

    FAULTS = ("rate_limit", "overloaded", "queue_full", "generation_error", "model_missing", "hang", "mid_stream",
              "stream_overloaded", "bad_json")

    model_id = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    max_input_tokens, max_total_tokens = 1024, 2048

    def __init__(self) -> None:
        super().__init__()
        self.queue_size, self.batch_size, self.healthy = 0, 0, True

    def reset(self) -> None:
        super().reset()
        self.queue_size, self.batch_size, self.healthy = 0, 0, True

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/generate_stream", self.generate_stream)
        app.router.add_post("/generate", self.generate)
        app.router.add_get("/info", self.info)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)

    # -- read-only endpoints --------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "model_id": self.model_id, "model_sha": "31b70e2e869a7173562077fd711b654946d38674",
            "model_pipeline_tag": "text-generation", "max_concurrent_requests": 128, "max_best_of": 2,
            "max_stop_sequences": 4, "max_input_tokens": self.max_input_tokens, "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
            "version": "3.0.1", "sha": "bb9095aae339579fc5ae0d6cb1c0a3e8e3b2a2f6", "docker_label": "sha-bb9095a"})

    async def health(self, request: web.Request) -> web.Response:
        if self.healthy:
            return web.Response(status=200)
        return _error(503, "unhealthy", "healthcheck")

    async def metrics(self, request: web.Request) -> web.Response:
        text = (f"# TYPE tgi_queue_size gauge\ntgi_queue_size {self.queue_size}\n"
                f"# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size {self.batch_size}\n"
                "# TYPE tgi_request_duration histogram\n"
                'tgi_request_duration_bucket{le="0.5"} 3\ntgi_request_duration_bucket{le="+Inf"} 4\n'
                "tgi_request_duration_sum 1.75\ntgi_request_duration_count 4\n")
        return web.Response(text=text, content_type="text/plain")

    # -- validation as TGI's router does it ------------------------------------------------------
    def validate(self, body: dict[str, Any]) -> tuple[web.Response | None, int]:
        inputs = body.get("inputs")
        p = body.get("parameters") or {}
        if not isinstance(inputs, str) or not inputs:
            return _error(422, "Input validation error: `inputs` cannot be empty", "validation"), 0
        if "temperature" in p and not p["temperature"] > 0:
            return _error(422, "Input validation error: `temperature` must be strictly positive", "validation"), 0
        if "top_p" in p and not 0 < p["top_p"] < 1:
            return _error(422, "Input validation error: `top_p` must be > 0.0 and < 1.0", "validation"), 0
        if len(p.get("stop") or []) > 4:
            return _error(422, f"Input validation error: `stop` supports up to 4 stop sequences. Given: {len(p['stop'])}",
                          "validation"), 0
        if (p.get("top_n_tokens") or 0) > 5:
            return _error(422, "Input validation error: `top_n_tokens` must be >= 0 and <= 5", "validation"), 0
        n_in = len(inputs.split())  # the fake's "tokenizer"
        new = int(p.get("max_new_tokens") or 20)
        if n_in > self.max_input_tokens:
            return _error(422, f"Input validation error: `inputs` must have less than {self.max_input_tokens} tokens. "
                               f"Given: {n_in}", "validation"), n_in
        if n_in + new > self.max_total_tokens:
            return _error(422, f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                               f"{self.max_total_tokens}. Given: {n_in} `inputs` tokens and {new} `max_new_tokens`",
                          "validation"), n_in
        return None, n_in

    def answer(self, p: dict[str, Any], fault: str | None) -> tuple[list[str], str]:
        """The token texts and finish reason for these parameters, as TGI would stop them."""
        texts = (NOT_JSON if fault == "bad_json" else JSON_ANSWER) if p.get("grammar") else PLAIN
        out: list[str] = []
        for t in texts:
            if len(out) >= int(p.get("max_new_tokens") or 20):
                return out, "length"
            out.append(t)
            if any(s and "".join(out).endswith(s) for s in p.get("stop") or ()):
                return out, "stop_sequence"  # TGI keeps the stop sequence in the text
        return out, "eos_token"

    def fault_reply(self, kind: str, request: web.Request, body: Any) -> web.StreamResponse | None:
        if kind == "rate_limit":  # a rate limiter in front of TGI (HF Inference Endpoints)
            return web.json_response({"error": "Rate limit reached. You reached the per-minute limit; retry later."},
                                     status=429, headers={"retry-after": "7"})
        if kind == "overloaded":  # a load balancer in front of TGI, no replica ready
            return _error(503, "Model is overloaded", "overloaded", {"retry-after": "2"})
        if kind == "queue_full":  # TGI's own answer when its queue is full
            return _error(429, "Model is overloaded", "overloaded")
        if kind == "generation_error":
            return _error(424, "Request failed during generation: Server error: unhandled exception", "generation")
        if kind == "model_missing":  # HF's router in front of TGI: no such model
            return web.json_response({"error": f"Model {self.model_id}-missing does not exist"}, status=404)
        if kind == "hang":
            return web.Response(status=504)
        return None

    # -- generation -----------------------------------------------------------------------------
    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        body = await self.read(request) or {}
        fault = await self.take_fault(request, body)
        invalid, n_in = self.validate(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "x-compute-type": "gpu+optimized", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        if invalid is not None:  # TGI reports validation errors on /generate_stream as an event, status 200
            await resp.write(b"data:" + invalid.body + b"\n\n")
            return resp
        if fault == "stream_overloaded":
            await resp.write(_sse({"error": "Model is overloaded", "error_type": "overloaded"}))
            return resp
        p = body.get("parameters") or {}
        texts, reason = self.answer(p, fault)
        top = p.get("top_n_tokens")
        for i, text in enumerate(texts):
            if fault == "mid_stream" and i == 3:
                await resp.write(_sse({"error": "Request failed during generation: Server error: CUDA out of memory. "
                                                "Tried to allocate 20.00 MiB", "error_type": "generation"}))
                return resp
            event: dict[str, Any] = {"index": i + 1, "token": _token(i, text), "generated_text": None, "details": None}
            if top:
                event["top_tokens"] = [_token(i, text)] + YES_NO_TOP[: top - 1]
            if reason != "eos_token" and i == len(texts) - 1:
                break
            await resp.write(_sse(event))
            await asyncio.sleep(0)
        last = EOS if reason == "eos_token" else _token(len(texts) - 1, texts[-1])
        n = len(texts) + (1 if reason == "eos_token" else 0)
        await resp.write(_sse({"index": n, "token": last, "generated_text": "".join(texts),
                               "details": {"finish_reason": reason, "generated_tokens": n,
                                           "seed": p.get("seed"), "input_length": n_in}}))
        return resp

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await self.read(request) or {}
        fault = await self.take_fault(request, body)
        invalid, n_in = self.validate(body)
        if invalid is not None:
            return invalid
        p = body.get("parameters") or {}
        texts, reason = self.answer(p, fault)
        top = p.get("top_n_tokens")
        if top:  # classification: the fake's first token is Yes, unless the prompt asks for No
            first = YES_NO_TOP[:top]
            if "No." in body["inputs"]:
                first = [dict(t, logprob={"No": -0.1, "Yes": -2.6}.get(t["text"], t["logprob"])) for t in first]
            first = sorted(first, key=lambda t: -t["logprob"])
            texts, reason = [first[0]["text"]], "length"
        tokens = [first[0]] if top else [_token(i, t) for i, t in enumerate(texts)]
        details = {"finish_reason": reason, "generated_tokens": len(tokens), "seed": p.get("seed"), "prefill": [],
                   "tokens": tokens}
        if top:
            details["top_tokens"] = [first]
        out: dict[str, Any] = {"generated_text": "".join(texts)}
        if p.get("details"):
            out["details"] = details
        return web.json_response(out)
