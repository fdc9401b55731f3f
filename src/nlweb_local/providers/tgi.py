"""Hugging Face Text Generation Inference (TGI), native API.

`POST /generate_stream` (SSE, one event per token; the last carries `generated_text` and `details`) for
chat, `POST /generate` with `top_n_tokens` for next-token classification, `GET /info` for the context
window, `GET /health` and `GET /metrics` for the load snapshot. The prompt is rendered from the messages
with a simple template (ChatML by default; `options.chat_template` names another or gives its parts),
because TGI's native API takes text, not messages.

How TGI answers errors, and how they map:

- 422 `error_type: validation` → BadRequestError, or ContextLengthError when the prompt is too long
  ("`inputs` tokens + `max_new_tokens` must be <= N", "`inputs` must have less than N tokens").
- 424 `generation` and 500 `incomplete_generation` → ProviderError.
- 429 is TGI's own answer when its queue is full (`error_type: overloaded`, "Model is overloaded", no
  Retry-After header): that is OverloadedError. A 429 WITH Retry-After comes from a rate limiter in
  front of TGI (HF Inference Endpoints, a gateway): that is RateLimitedError with its retry_after.
- 503 (a load balancer in front, or a TGI that is down) → OverloadedError with Retry-After.
- On `/generate_stream` TGI sends 200 and then an SSE event `{"error": ..., "error_type": ...}`, also for
  a full queue; such an event maps by `error_type` as above, after the tokens already yielded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Any, AsyncIterator, Mapping, Sequence

from ..core.errors import (BadRequestError, ContextLengthError, ModelOutputError, NlwebError, OverloadedError,
                           ProviderConnectionError, ProviderError, RateLimitedError)
from ..core.types import ChatChunk, ChatRequest, LabelProbs, Message, Usage
from .base import BaseProvider, Capabilities, LoadSnapshot
from .http import HttpTransport, iter_sse
from .load_parsers import tgi_snapshot

log = logging.getLogger(__name__)

TEMPLATES: dict[str, dict[str, str]] = {
    "chatml": {"message": "<|im_start|>{role}\n{content}<|im_end|>\n", "generation": "<|im_start|>assistant\n"},
    # TGI's tokenizer adds <|begin_of_text|> itself
    "llama3": {"message": "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
               "generation": "<|start_header_id|>assistant<|end_header_id|>\n\n"},
}
FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
_TGI_CONTEXT_MARKERS = ("`inputs` tokens + `max_new_tokens` must be", "`inputs` must have less than")
_INFO_RETRY_S = 60.0


def render_prompt(messages: Sequence[Message], template: Mapping[str, str]) -> str:
    """Messages to one prompt: `prefix`, each message through its role's template (or `message`), then
    `generation` (the opening of the assistant's turn). Templates use `{role}` and `{content}`."""
    parts = [template.get("prefix", "")]
    for m in messages:
        form = template.get(m.role, template["message"])
        parts.append(form.replace("{role}", m.role).replace("{content}", m.content))
    parts.append(template["generation"])
    return "".join(parts)


def _tgi_error(e: NlwebError, body: str | None = None) -> NlwebError:
    """Refine the transport's mapping with what TGI means by its statuses (see the module docstring)."""
    text = body if body is not None else (e.body or "")
    if isinstance(e, RateLimitedError) and e.retry_after is None and '"overloaded"' in text:
        return OverloadedError(f"{e.message} (TGI's queue is full; retry shortly)", retry_after=1.0,
                               deployment=e.deployment, body=e.body)
    if type(e) is BadRequestError and any(m in e.message for m in _TGI_CONTEXT_MARKERS):
        return ContextLengthError(e.message, deployment=e.deployment, body=e.body)
    return e


def _event_error(obj: dict[str, Any], deployment: str) -> NlwebError:
    msg, kind = str(obj.get("error")), str(obj.get("error_type") or "")
    where = f"{deployment}: TGI {kind or 'error'}: {msg}"
    body = json.dumps(obj)
    if kind == "overloaded":
        return OverloadedError(f"{where} (retry shortly)", retry_after=1.0, deployment=deployment, body=body)
    if kind == "validation":
        return _tgi_error(BadRequestError(where, deployment=deployment, body=body))
    return ProviderError(where, deployment=deployment, body=body)


class TgiProvider(BaseProvider):
    def __init__(self, url: str, *, name: str = "tgi", model: str = "", context_window: int | None = None,
                 timeout_s: float = 120.0, headers: Mapping[str, str] | None = None,
                 template: str | Mapping[str, str] = "chatml", top_n_tokens: int = 5):
        if isinstance(template, str):
            if template not in TEMPLATES:
                raise BadRequestError(f"deployment {name!r}: unknown chat_template {template!r} (one of "
                                      f"{', '.join(TEMPLATES)}, or a mapping with 'message' and 'generation')")
            template = TEMPLATES[template]
        if "message" not in template or "generation" not in template:
            raise BadRequestError(f"deployment {name!r}: chat_template needs 'message' and 'generation' entries")
        self.name = name
        self.model = model or "tgi"
        self._model_configured = bool(model)
        self._window_configured = context_window is not None
        self.capabilities = Capabilities(context_window=context_window or 4096, json_schema=True, local=True, classify=True,
                                         enforces_deadline=True)
        self.max_input_tokens: int | None = None
        self._template = dict(template)
        self._top_n = top_n_tokens
        self._http = HttpTransport(url, deployment=name, headers=headers, timeout_s=timeout_s)
        self._info: dict[str, Any] | None = None
        self._info_next_try = 0.0

    # -- /info ----------------------------------------------------------------------------------
    async def info(self, deadline_s: float | None = None) -> dict[str, Any] | None:
        """TGI's /info, fetched once (retried a minute after a failure); sets the context window and model id."""
        if self._info is not None or time.monotonic() < self._info_next_try:
            return self._info
        try:
            info = await self._http.json("GET", "/info", deadline_s=min(5.0, deadline_s or 5.0))
        except ProviderError as e:
            self._info_next_try = time.monotonic() + _INFO_RETRY_S
            log.warning("%s: /info unavailable (%s); using context window %d", self.name, e, self.capabilities.context_window)
            return None
        self._info = info if isinstance(info, dict) else {}
        self.max_input_tokens = self._info.get("max_input_tokens") or self._info.get("max_input_length")
        total = self._info.get("max_total_tokens")
        if total and not self._window_configured:
            self.capabilities = dataclasses.replace(self.capabilities, context_window=int(total))
        if self._info.get("model_id") and not self._model_configured:
            self.model = str(self._info["model_id"])
        return self._info

    # -- request mapping ------------------------------------------------------------------------
    def parameters(self, req: ChatRequest) -> dict[str, Any]:
        p: dict[str, Any] = {"max_new_tokens": req.max_tokens, "details": True, "return_full_text": False}
        if req.temperature and req.temperature > 0:  # TGI rejects temperature 0: greedy is do_sample=false
            p.update(do_sample=True, temperature=req.temperature)
            if req.top_p is not None and 0 < req.top_p < 1:  # TGI wants 0 < top_p < 1
                p["top_p"] = req.top_p
        else:
            p["do_sample"] = False
        if req.stop:
            p["stop"] = list(req.stop)
        if req.seed is not None:
            p["seed"] = req.seed
        if req.repeat_penalty is not None:
            p["repetition_penalty"] = req.repeat_penalty
        if req.json_schema is not None:
            p["grammar"] = {"type": "json", "value": req.json_schema}
        p.update(req.extra)
        return p

    def prompt(self, req: ChatRequest) -> str:
        return render_prompt(req.messages, self._template)

    # -- calls ----------------------------------------------------------------------------------
    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        await self.info(request.deadline_s)
        body = {"inputs": self.prompt(request), "parameters": self.parameters(request)}
        stops = request.stop or []
        hold = max((len(s) for s in stops), default=0)  # TGI keeps a matched stop sequence in the text: hold it back
        text, sent = "", 0
        start = time.perf_counter()
        first: float | None = None
        try:
            async with self._http.request("POST", "/generate_stream", json_body=body, deadline_s=request.deadline_s) as resp:
                async for _event, data in iter_sse(resp):
                    try:
                        obj = json.loads(data)
                    except json.JSONDecodeError:
                        raise ProviderError(f"{self.name}: malformed stream event {data[:120]!r}", deployment=self.name) from None
                    if "error" in obj:
                        raise _event_error(obj, self.name)
                    token = obj.get("token") or {}
                    if not token.get("special"):
                        text += token.get("text") or ""
                        if first is None and text:
                            first = time.perf_counter() - start
                    details = obj.get("details")
                    if obj.get("generated_text") is None and details is None:
                        if len(text) - hold > sent:
                            yield ChatChunk(text[sent:len(text) - hold])
                            sent = len(text) - hold
                        continue
                    details = details or {}
                    reason = details.get("finish_reason")
                    if reason == "stop_sequence":
                        cut = [i for i in (text.rfind(s) for s in stops) if i >= sent]
                        text = text[:min(cut)] if cut else text
                    usage = Usage(prompt_tokens=int(details.get("input_length") or 0),
                                  completion_tokens=int(details.get("generated_tokens") or 0),
                                  time_to_first_token_s=first, total_s=time.perf_counter() - start)
                    yield ChatChunk(text[sent:], FINISH.get(reason, "stop"), usage)
                    return
        except (RateLimitedError, BadRequestError) as e:
            raise _tgi_error(e) from None
        raise ProviderConnectionError(f"{self.name}: TGI's stream ended before its last token", deployment=self.name)

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        """P(label) from the first generated token's `top_n_tokens` alternatives, renormalised over `labels`."""
        await self.info(request.deadline_s)
        params = {"max_new_tokens": 1, "details": True, "do_sample": False, "top_n_tokens": self._top_n,
                  "return_full_text": False}
        try:
            out = await self._http.json("POST", "/generate", json_body={"inputs": self.prompt(request), "parameters": params},
                                        deadline_s=request.deadline_s)
        except (RateLimitedError, BadRequestError) as e:
            raise _tgi_error(e) from None
        details = (out or {}).get("details") or {}
        candidates = list(((details.get("top_tokens") or [[]])[0]) or []) + list((details.get("tokens") or [])[:1])
        mass = label_mass(candidates, labels)
        total = sum(mass.values())
        if total <= 0:
            seen = [c.get("text") for c in candidates]
            raise ModelOutputError(f"{self.name}: none of {list(labels)} among the top next tokens {seen}",
                                   deployment=self.name, body=json.dumps(out))
        return LabelProbs({k: v / total for k, v in mass.items()})

    async def health(self) -> LoadSnapshot:
        try:
            status, body = await self._http.text("GET", "/health", ok=(503,), deadline_s=5.0)
        except NlwebError as e:
            return LoadSnapshot(healthy=False, detail=str(e))
        if status >= 400:
            return LoadSnapshot(healthy=False, detail=f"TGI /health {status}: {body.strip()[:200]}")
        await self.info()
        try:
            _, metrics = await self._http.text("GET", "/metrics", deadline_s=5.0)
        except NlwebError:
            metrics = ""
        snap = tgi_snapshot(metrics)
        return dataclasses.replace(snap, healthy=True, detail=self.model if snap.healthy else f"{self.model} (no /metrics)")

    async def close(self) -> None:
        await self._http.close()


def label_mass(tokens: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> dict[str, float]:
    """Probability mass of each label among candidate tokens (`text`, `logprob`), counting each token once:
    the label it spells (case and surrounding space ignored), else a label it begins (two letters or more)."""
    mass = {label: 0.0 for label in labels}
    seen: set[tuple[Any, str]] = set()
    for tok in tokens:
        t = str(tok.get("text") or "").strip().lower()
        key = (tok.get("id"), t)
        if not t or tok.get("special") or key in seen or tok.get("logprob") is None:
            continue
        seen.add(key)
        match = next((lab for lab in labels if lab.lower() == t), None)
        if match is None and len(t) >= 2:
            match = next((lab for lab in labels if lab.lower().startswith(t)), None)
        if match is not None:
            mass[match] += math.exp(float(tok["logprob"]))
    return mass


def from_settings(d, environ) -> TgiProvider:
    """A `tgi` deployment: `url` (default http://127.0.0.1:8080), optional bearer key (HF Inference
    Endpoints); options: chat_template ("chatml", "llama3" or {prefix, message, generation, <role>}),
    top_n_tokens (classification; at most TGI's --max-top-n-tokens, default 5)."""
    key = d.key(environ)
    o = d.options
    return TgiProvider(d.url or "http://127.0.0.1:8080", name=d.name, model=d.model, context_window=d.context_window,
                       timeout_s=d.timeout_s, headers={"Authorization": f"Bearer {key}"} if key else None,
                       template=o.get("chat_template", "chatml"), top_n_tokens=int(o.get("top_n_tokens", 5)))
