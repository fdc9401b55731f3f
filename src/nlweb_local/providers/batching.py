"""Continuous (iteration-level) batching of a Hugging Face causal LM on one scheduler thread.

    stream()/classify() ──submit──▶ inbox ──▶ scheduler thread (owns the model), each iteration:
      1. sequences whose caller went away are dropped from the batch (their KV rows removed);
      2. waiting classifications run as one left-padded forward pass (no cache, last position only);
      3. newly arrived sequences (up to max_batch_size running) are prefilled in one left-padded
         forward pass; each samples its first token, and their KV cache is left-padded and
         concatenated onto the running batch's;
      4. one decode forward pass over every running sequence: one new token each.
    Tokens go back to each caller's asyncio queue with `call_soon_threadsafe`; every sequence stops on
    its own EOS / max_tokens / stop string.

Layout invariant of the running batch: every row's real tokens are right-aligned (padding only on the
left), so one new column per step serves every row; RoPE positions are per row (count of real tokens),
so a row's logits do not depend on how much padding it carries. Columns that are padding for every
remaining row are trimmed when rows leave.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..core.errors import ContextLengthError, ProviderError
from ..core.types import ChatRequest, Usage

log = logging.getLogger(__name__)

REPEAT_LAST_N = 64  # the repeat penalty looks back this many tokens (llama.cpp's default)


@dataclass(slots=True)
class SchedulerStats:
    """What the scheduler did; `forward_passes` < tokens generated means requests shared passes."""

    forward_passes: int = 0
    prefill_passes: int = 0
    decode_passes: int = 0
    classify_passes: int = 0
    tokens: int = 0
    peak_batch: int = 0


class TextStream:
    """Incremental detokenisation with stop strings: text is released once no stop string can start in it."""

    def __init__(self, tokenizer, stop: Sequence[str] | None):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to text already taken
        self._read = 0
        self._stop = [s for s in (stop or []) if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._buf = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (text safe to send, whether a stop string ended the answer)."""
        self._ids.append(token)
        prefix_text = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        new_text = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return "", False  # an incomplete UTF-8 character: wait for the next token
        self._buf += new_text[len(prefix_text):]
        self._prefix, self._read = self._read, len(self._ids)
        hits = [i for i in (self._buf.find(s) for s in self._stop) if i >= 0]
        if hits:
            out, self._buf = self._buf[:min(hits)], ""
            return out, True
        cut = len(self._buf) - self._hold
        out, self._buf = (self._buf[:cut], self._buf[cut:]) if cut > 0 else ("", self._buf)
        return out, False

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out


@dataclass(eq=False)
class GenerationJob:
    """One streamed request. The caller reads `queue`: str deltas, then ("end", text, finish, usage) or an exception."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    cancelled: bool = False  # set by the caller (stream closed or deadline); the scheduler drops it next step
    submitted: float = field(default_factory=time.perf_counter)
    prompt_ids: list[int] = field(default_factory=list)
    max_new: int = 0
    generated: list[int] = field(default_factory=list)
    first_token_s: float | None = None
    text: TextStream | None = None
    generator: torch.Generator | None = None
    done: bool = False

    def send(self, item: Any) -> None:
        if self.cancelled:
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is gone: nobody is listening any more
            self.cancelled = True


@dataclass(eq=False)
class ClassifyJob:
    request: ChatRequest
    label_ids: dict[str, list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: bool = False

    def resolve(self, result: Any) -> None:
        def _set() -> None:
            if not self.future.done():
                (self.future.set_exception if isinstance(result, BaseException) else self.future.set_result)(result)
        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # the caller's event loop is gone
            self.cancelled = True

    send = resolve


def encode_chat(tokenizer, request: ChatRequest) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in request.messages],
                                         tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _left_pad(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _pad_kv(t: torch.Tensor, n: int) -> torch.Tensor:
    return F.pad(t, (0, 0, n, 0)) if n else t  # (batch, heads, seq, dim): n zero columns on the left of seq


class RunningBatch:
    """The sequences being decoded, their shared left-padded KV cache (a `DynamicCache` of full-attention
    layers whose tensors are re-sliced when rows join or leave) and attention mask."""

    def __init__(self) -> None:
        self.jobs: list[GenerationJob] = []
        self.cache = None  # transformers.DynamicCache
        self.mask: torch.Tensor | None = None  # (batch, seq) 1 = real token

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, jobs: list[GenerationJob], cache, mask: torch.Tensor) -> None:
        if not self.jobs:
            self.jobs, self.cache, self.mask = list(jobs), cache, mask
            return
        old_w, new_w = self.mask.shape[1], mask.shape[1]
        width = max(old_w, new_w)
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_pad_kv(old.keys, width - old_w), _pad_kv(new.keys, width - new_w)])
            old.values = torch.cat([_pad_kv(old.values, width - old_w), _pad_kv(new.values, width - new_w)])
        self.mask = torch.cat([F.pad(self.mask, (width - old_w, 0)), F.pad(mask, (width - new_w, 0))])
        self.jobs.extend(jobs)

    def keep(self, keep: list[int]) -> None:
        """Keep these rows; then drop the leading columns that are padding for every row left."""
        if len(keep) == len(self.jobs):
            return
        self.jobs = [self.jobs[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        self.mask = self.mask[idx]
        start = int((self.mask.shape[1] - self.mask.sum(1)).min())
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[idx, :, start:], layer.values[idx, :, start:]

    def step(self) -> None:
        """The forward pass appended one column to every row."""
        self.mask = F.pad(self.mask, (0, 1), value=1)


class ContinuousBatcher:
    """Owns the model on one thread; coalesces concurrent requests into shared forward passes."""

    def __init__(self, model, tokenizer, *, eos_ids: set[int], context_window: int, max_batch_size: int,
                 name: str = "transformers"):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.eos_ids = eos_ids
        self.context_window = context_window
        self.max_batch_size = max_batch_size
        self.name = name
        # transformers 5 renamed the forward argument `past_key_values` to `cache`
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.stats = SchedulerStats()
        self.batch = RunningBatch()
        self._inbox: deque[GenerationJob | ClassifyJob] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-scheduler", daemon=True)
        self._thread.start()

    # -- caller side (any thread) ----------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._inbox)

    @property
    def running(self) -> int:
        return sum(1 for j in self.batch.jobs if not j.done and not j.cancelled)

    def submit(self, job: GenerationJob | ClassifyJob) -> None:
        with self._cond:
            if self._closed or not self._thread.is_alive():
                raise ProviderError("the local model is shut down", deployment=self.name)
            self._inbox.append(job)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- scheduler thread ----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closed and not self._inbox and not self.batch.jobs:
                        self._cond.wait()
                    if self._closed:
                        break
                    classify, fresh = self._take()
                try:
                    self._iteration(classify, fresh)
                except Exception as e:  # noqa: BLE001 - a failed pass fails the calls in it, not the thread
                    log.exception("batched forward pass failed")
                    err = ProviderError(f"local model failed: {e!r}", deployment=self.name)
                    for job in [*classify, *fresh, *self.batch.jobs]:
                        job.send(err)
                    self.batch = RunningBatch()
        shut = ProviderError("the local model is shut down", deployment=self.name)
        for job in [*self._inbox, *self.batch.jobs]:
            job.send(shut)

    def _take(self) -> tuple[list[ClassifyJob], list[GenerationJob]]:
        """Under the lock: all waiting classifications (up to a batch) and new sequences up to free slots,
        higher `request.context.priority` first (a stable sort: FIFO within a priority)."""
        classify: list[ClassifyJob] = []
        fresh: list[GenerationJob] = []
        room = self.max_batch_size - sum(1 for j in self.batch.jobs if not j.cancelled)
        rest: deque = deque()
        for job in sorted(self._inbox, key=lambda j: -j.request.context.priority):
            if job.cancelled:
                continue
            if isinstance(job, ClassifyJob) and len(classify) < self.max_batch_size:
                classify.append(job)
            elif isinstance(job, GenerationJob) and len(fresh) < room:
                fresh.append(job)
            else:
                rest.append(job)
        self._inbox = rest
        return classify, fresh

    def _iteration(self, classify: list[ClassifyJob], fresh: list[GenerationJob]) -> None:
        self.batch.keep([i for i, j in enumerate(self.batch.jobs) if not j.cancelled and not j.done])
        if classify:
            self._classify(classify)
        fresh = [j for j in fresh if self._prepare(j)]
        if fresh:
            self._prefill(fresh)
            self.batch.keep([i for i, j in enumerate(self.batch.jobs) if not j.done])
        if self.batch.jobs:
            self._decode()
            self.batch.keep([i for i, j in enumerate(self.batch.jobs) if not j.done and not j.cancelled])

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache):
        """One forward pass; `cache` (a DynamicCache, or None) is extended in place."""
        self.stats.forward_passes += 1
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **{self._cache_kw: cache},
                          use_cache=cache is not None, logits_to_keep=1)

    def _prepare(self, job: GenerationJob) -> bool:
        try:
            job.prompt_ids = encode_chat(self.tokenizer, job.request)
        except Exception as e:  # noqa: BLE001 - a template error belongs to this request only
            job.send(ProviderError(f"could not apply the chat template: {e}", deployment=self.name))
            return False
        room = self.context_window - len(job.prompt_ids)
        if room <= 0:
            job.send(ContextLengthError(f"prompt of {len(job.prompt_ids)} tokens does not fit the {self.context_window}-token "
                                        "context; shorten it", deployment=self.name))
            return False
        job.max_new = max(1, min(job.request.max_tokens, room))
        job.text = TextStream(self.tokenizer, job.request.stop)
        if job.request.temperature > 0 and job.request.seed is not None:
            job.generator = torch.Generator(device="cpu").manual_seed(job.request.seed)
        return True

    def _prefill(self, jobs: list[GenerationJob]) -> None:
        from transformers import DynamicCache

        self.stats.prefill_passes += 1
        ids, mask = _left_pad([j.prompt_ids for j in jobs], self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()  # no config: every layer full-attention, so rows can be re-padded and merged
        out = self._forward(ids, mask, positions, cache)
        self.batch.add(jobs, cache, mask)
        self._advance(jobs, out.logits[:, -1, :])

    def _decode(self) -> None:
        self.stats.decode_passes += 1
        jobs = self.batch.jobs
        self.stats.peak_batch = max(self.stats.peak_batch, len(jobs))
        ids = torch.tensor([[j.generated[-1]] for j in jobs], dtype=torch.long, device=self.device)
        positions = self.batch.mask.sum(1, keepdim=True)
        mask = F.pad(self.batch.mask, (0, 1), value=1)
        out = self._forward(ids, mask, positions, self.batch.cache)
        self.batch.step()
        self._advance(jobs, out.logits[:, -1, :])

    def _advance(self, jobs: list[GenerationJob], logits: torch.Tensor) -> None:
        """Pick each sequence's next token; stream its text; finish the sequences that are done."""
        logits = logits.float()
        greedy = logits.argmax(-1).tolist()
        now = time.perf_counter()
        for row, job in enumerate(jobs):
            req = job.request
            if req.temperature > 0 or (req.repeat_penalty and req.repeat_penalty != 1.0):
                token = self._sample(logits[row], job)
            else:
                token = greedy[row]
            job.generated.append(token)
            self.stats.tokens += 1
            if job.first_token_s is None:
                job.first_token_s = now - job.submitted
            finish = None
            if token in self.eos_ids:
                finish = "stop"
            else:
                delta, stopped = job.text.push(token)
                if delta:
                    job.send(delta)
                if stopped:
                    finish = "stop"
            if finish is None and len(job.generated) >= job.max_new:
                finish = "length"
            if finish:
                job.done = True
                usage = Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=len(job.generated),
                              time_to_first_token_s=job.first_token_s, total_s=now - job.submitted)
                job.send(("end", job.text.flush(), finish, usage))

    def _sample(self, row: torch.Tensor, job: GenerationJob) -> int:
        req = job.request
        if req.repeat_penalty and req.repeat_penalty != 1.0:
            seen = torch.tensor(sorted(set((job.prompt_ids + job.generated)[-REPEAT_LAST_N:])), device=row.device)
            vals = row[seen]
            row = row.clone()
            row[seen] = torch.where(vals > 0, vals / req.repeat_penalty, vals * req.repeat_penalty)
        if req.temperature <= 0:
            return int(row.argmax())
        probs = torch.softmax(row / req.temperature, -1)
        if req.top_p is not None and 0 < req.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            drop = sorted_p.cumsum(0) - sorted_p > req.top_p
            sorted_p[drop] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs.cpu(), 1, generator=job.generator))

    def _classify(self, jobs: list[ClassifyJob]) -> None:
        self.stats.classify_passes += 1
        prompts: list[list[int]] = []
        for job in jobs:
            prompts.append(encode_chat(self.tokenizer, job.request))
        too_long = [len(p) >= self.context_window for p in prompts]
        for job, bad, p in zip(jobs, too_long, prompts):
            if bad:
                job.resolve(ContextLengthError(f"prompt of {len(p)} tokens exceeds the {self.context_window}-token context",
                                               deployment=self.name))
        live = [(j, p) for j, p, bad in zip(jobs, prompts, too_long) if not bad]
        if not live:
            return
        ids, mask = _left_pad([p for _, p in live], self.device)
        out = self._forward(ids, mask, (mask.cumsum(1) - 1).clamp(min=0), None)
        probs = torch.softmax(out.logits[:, -1, :].float(), -1)
        for row, (job, _) in enumerate(live):
            mass = {label: float(probs[row, ids_].sum()) for label, ids_ in job.label_ids.items()}
            total = sum(mass.values())
            job.resolve({k: v / total for k, v in mass.items()} if total > 0
                        else ProviderError("no probability mass on any label", deployment=self.name))
