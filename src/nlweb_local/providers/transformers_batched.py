"""Hugging Face Transformers in-process, with continuous batching of concurrent requests.

The research engine: `AutoModelForCausalLM` from a local folder or a GGUF file (dequantised by
transformers; needs `accelerate` and `gguf`), the tokenizer's chat template, and one scheduler thread
(`batching.ContinuousBatcher`) that owns the model and runs every request's tokens through shared
forward passes. The Hub is never contacted (`local_files_only`). No constrained decoding here, so
`json_schema` is False: the structured layer's repair step is what shapes JSON answers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from ..core.errors import BadRequestError, OverloadedError, ProviderError, ProviderTimeoutError
from ..core.types import ChatChunk, ChatRequest, LabelProbs
from .base import BaseProvider, Capabilities, LoadSnapshot
from .batching import ClassifyJob, ContinuousBatcher, GenerationJob, SchedulerStats

log = logging.getLogger(__name__)

# SmolLM2's own template, for checkpoints that come without one
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model(path: str | Path | None, *, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any, str]:
    """(model, tokenizer, name) from a model folder or a .gguf file; `path` None = the packaged SmolLM2 GGUF."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .llama_cpp import packaged_smollm2_path

    p = Path(path).expanduser() if path else packaged_smollm2_path()
    if not p.exists():
        raise BadRequestError(f"model {p} does not exist (set the deployment's model to a model folder or a .gguf file)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype not in DTYPES:
        raise BadRequestError(f"dtype {dtype!r} is none of {', '.join(DTYPES)}")
    torch_dtype = (torch.bfloat16 if device.startswith("cuda") else torch.float32) if dtype == "auto" else getattr(torch, dtype)
    where, kw = (str(p.parent), {"gguf_file": p.name}) if p.is_file() else (str(p), {})
    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **kw)
        model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, dtype=torch_dtype, **kw)
    except (OSError, ValueError) as e:
        raise BadRequestError(f"could not load {p} with transformers: {e} (a GGUF file needs `pip install gguf accelerate`)") from e
    model.to(device).eval()
    if not tokenizer.chat_template:
        log.warning("%s has no chat template; using ChatML", p.name)
        tokenizer.chat_template = CHATML_TEMPLATE
    log.info("loaded %s on %s (%s) in %.1fs", p.name, device, torch_dtype, time.perf_counter() - t0)
    return model, tokenizer, p.stem if p.is_file() else p.name


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return {i for i in ids if isinstance(i, int) and i >= 0}


class TransformersBatchedProvider(BaseProvider):
    def __init__(self, model, tokenizer, *, model_name: str, name: str = "transformers", context_window: int | None = None,
                 max_batch_size: int = 16, max_queue: int = 64, call_timeout_s: float = 120.0):
        window = context_window or int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.name, self.model = name, model_name
        self.capabilities = Capabilities(context_window=window, json_schema=False, local=True, classify=True,
                                         enforces_deadline=True)
        self.tokenizer = tokenizer
        self._scheduler = ContinuousBatcher(model, tokenizer, eos_ids=_eos_ids(model, tokenizer), context_window=window,
                                            max_batch_size=max_batch_size, name=name)
        self._max_batch, self._max_queue = max_batch_size, max_queue
        self._timeout = call_timeout_s
        self._pending = 0  # calls admitted and not finished; touched on the event loop only
        self._avg_call_s = 1.0
        self._closed = False
        self._label_cache: dict[tuple[str, ...], dict[str, list[int]]] = {}

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str = "auto", dtype: str = "auto", **kw) -> "TransformersBatchedProvider":
        model, tokenizer, model_name = load_model(path, device=device, dtype=dtype)
        return cls(model, tokenizer, model_name=model_name, **kw)

    @property
    def stats(self) -> SchedulerStats:
        return self._scheduler.stats

    # -- admission ------------------------------------------------------------------------------
    def admit(self, request: ChatRequest | None = None) -> None:
        """Up to `max_batch_size` run; `max_queue` more wait; beyond that, refuse at once."""
        if self._closed:
            raise ProviderError("the local model is shut down", deployment=self.name)
        waiting = self._pending - self._max_batch
        if waiting >= self._max_queue:
            raise OverloadedError(
                f"the local model has {waiting} calls waiting for a batch slot (limit max_queue={self._max_queue}); retry shortly",
                retry_after=max(1.0, round((waiting + 1) * self._avg_call_s / self._max_batch, 1)), deployment=self.name)

    def _finished(self, started: float) -> None:
        self._pending -= 1
        self._avg_call_s = 0.8 * self._avg_call_s + 0.2 * (time.perf_counter() - started)

    # -- calls ----------------------------------------------------------------------------------
    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        self.admit()
        job = GenerationJob(request, asyncio.get_running_loop(), asyncio.Queue())
        self._pending += 1
        started = time.perf_counter()
        deadline = started + (request.deadline_s or self._timeout)
        try:
            self._scheduler.submit(job)
            while True:
                try:
                    got = await asyncio.wait_for(job.queue.get(), max(0.0, deadline - time.perf_counter()))
                except asyncio.TimeoutError:
                    raise ProviderTimeoutError(f"local model call exceeded {deadline - started:.0f}s (queue wait included)",
                                               deployment=self.name) from None
                if isinstance(got, Exception):
                    raise got
                if isinstance(got, tuple):  # ("end", text, finish, usage)
                    yield ChatChunk(got[1], got[2], got[3])
                    return
                yield ChatChunk(got)
        finally:
            job.cancelled = True  # a no-op when finished; otherwise the scheduler drops the sequence next step
            self._finished(started)

    def _label_tokens(self, labels: Sequence[str]) -> dict[str, list[int]]:
        """First token ids of each label in its usual spellings ("Yes", "yes", " Yes", ...)."""
        key = tuple(labels)
        if key not in self._label_cache:
            ids: dict[str, list[int]] = {}
            for label in labels:
                variants = {label, label.lower(), label.capitalize(), label.upper()}
                ids[label] = sorted({self.tokenizer.encode(v, add_special_tokens=False)[0]
                                     for w in variants for v in (w, " " + w)})
            self._label_cache[key] = ids
        return self._label_cache[key]

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        """P(label) for the first token of the answer, renormalised over `labels`: one forward pass (shared
        with the other classifications waiting at that step), no decoding."""
        self.admit()
        loop = asyncio.get_running_loop()
        job = ClassifyJob(request, self._label_tokens(labels), loop, loop.create_future())
        self._pending += 1
        started = time.perf_counter()
        try:
            self._scheduler.submit(job)
            return LabelProbs(await asyncio.wait_for(asyncio.shield(job.future), request.deadline_s or self._timeout))
        except asyncio.TimeoutError:
            raise ProviderTimeoutError("local model classification timed out", deployment=self.name) from None
        finally:
            job.cancelled = True
            self._finished(started)

    async def health(self) -> LoadSnapshot:
        return LoadSnapshot(healthy=not self._closed, detail=self.model, waiting=self._scheduler.waiting,
                            running=self._scheduler.running)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._scheduler.close)


def from_settings(d, environ) -> TransformersBatchedProvider:
    """A `transformers` deployment: `model` is a model folder or .gguf file (empty = the packaged SmolLM2 GGUF);
    options: device (cpu|cuda|auto), dtype (auto|float32|bfloat16|float16), max_batch_size, max_queue."""
    o = d.options
    return TransformersBatchedProvider.load(d.model or None, device=o.get("device", "auto"), dtype=o.get("dtype", "auto"),
                                            name=d.name, context_window=d.context_window,
                                            max_batch_size=int(o.get("max_batch_size", 16)),
                                            max_queue=int(o.get("max_queue", 64)), call_timeout_s=d.timeout_s)
