"""Hugging Face Transformers in-process, with continuous batching of concurrent requests.

The research engine: `AutoModelForCausalLM` from a local folder or a GGUF file (dequantised by
transformers; needs `accelerate` and `gguf`), the tokenizer's chat template, and one scheduler thread
(`batching.ContinuousBatcher`) that owns the model and runs every request's tokens through shared
forward passes. The Hub is never contacted (`local_files_only`). No constrained decoding here, so
`json_schema` is False: the structured layer's repair step is what shapes JSON answers.

`lazy_load` (set for every transformers deployment under `llm.memory`'s budget): the model is loaded on
the first call or `load()`, and `unload()` frees it (`ModelLifecycle`; fleet/memory.py drives both). Its
size for the budget is estimated before loading from the checkpoint's own metadata: parameters (GGUF
tensor shapes, safetensors headers) × bytes per value of the dtype it is loaded in (a GGUF file is
dequantised: 4 bytes each in float32 on a CPU) × `TORCH_FACTOR`; on a GPU it counts against the GPU pool.
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
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# RSS growth over parameters × bytes: SmolLM2-135M from its GGUF, float32 on the CPU (513 MiB of parameters)
# grew RSS by 712-753 MiB over three load + call cycles, the first one's imports included; what the
# tokenizer, torch's allocator and the first batches add. After an unload ~180-200 MiB stayed (imports,
# the heap's fragments), not growing from cycle to cycle.
TORCH_FACTOR = 1.5


def load_model(path: str | Path | None, *, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any, str]:
    """(model, tokenizer, name) from a model folder or a .gguf file; `path` None = the packaged SmolLM2 GGUF."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .llama_cpp import packaged_smollm2_path

    p = Path(path).expanduser() if path else packaged_smollm2_path()
    if not p.exists():
        raise BadRequestError(f"model {p} does not exist (set the deployment's model to a model folder or a .gguf file)")
    device, dtype = resolve_device(device, dtype)
    torch_dtype = getattr(torch, dtype)
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


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """("cuda"/"cpu"/..., "float32"/...) for the options "auto" (a GPU when torch sees one; bfloat16 there,
    float32 on a CPU)."""
    if dtype not in DTYPES:
        raise BadRequestError(f"dtype {dtype!r} is none of {', '.join(DTYPES)}")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def parameter_count(path: Path) -> int:
    """How many parameters a checkpoint holds, from its metadata only: a GGUF file's tensor shapes, or the
    headers of a folder's *.safetensors files."""
    import json
    import math
    import struct

    if path.is_file():
        from ..fleet.model_size import gguf_tensor_shapes

        return sum(math.prod(shape) for shape in gguf_tensor_shapes(path))
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    if not total:
        raise ValueError(f"{path} has no *.safetensors files to count its parameters from")
    return total


class ModelSource:
    """Where a lazily loaded model comes from and what it will take: the checkpoint, device and dtype."""

    def __init__(self, path: str | Path | None, *, device: str = "auto", dtype: str = "auto"):
        from .llama_cpp import packaged_smollm2_path

        self.path = Path(path).expanduser() if path else packaged_smollm2_path()
        if not self.path.exists():
            raise BadRequestError(f"model {self.path} does not exist (set the deployment's model to a model folder or a "
                                  ".gguf file)")
        self.device, self.dtype = resolve_device(device, dtype)

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name

    def context_window(self) -> int:
        """The checkpoint's own context length (GGUF metadata, config.json), else 2048."""
        try:
            if self.path.is_file():
                from ..fleet.model_size import gguf_metadata, gguf_shape

                return int(gguf_shape(gguf_metadata(self.path)).context_length or 2048)
            import json

            config = json.loads((self.path / "config.json").read_text())
            return int(config.get("max_position_embeddings") or 2048)
        except (OSError, ValueError):
            return 2048

    def load(self) -> tuple[Any, Any, str]:
        return load_model(self.path, device=self.device, dtype=self.dtype)


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
    """Over a loaded `model` and `tokenizer`, or (both None) over `source`, loaded on the first call."""

    def __init__(self, model=None, tokenizer=None, *, model_name: str, name: str = "transformers",
                 context_window: int | None = None, max_batch_size: int = 16, max_queue: int = 64,
                 call_timeout_s: float = 120.0, source: ModelSource | None = None):
        if model is None and source is None:
            raise ValueError("a TransformersBatchedProvider needs a loaded model or a source to load it from")
        window = context_window or (int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
                                    if model is not None else source.context_window())  # type: ignore[union-attr]
        self.name, self.model = name, model_name
        self.capabilities = Capabilities(context_window=window, json_schema=False, local=True, classify=True,
                                         enforces_deadline=True)
        self._window, self._source = window, source
        self.tokenizer: Any = None
        self._scheduler: ContinuousBatcher | None = None
        self._max_batch, self._max_queue = max_batch_size, max_queue
        self._timeout = call_timeout_s
        self._pending = 0  # calls admitted and not finished; touched on the event loop only
        self._avg_call_s = 1.0
        self._closed = False
        self._label_cache: dict[tuple[str, ...], dict[str, list[int]]] = {}
        self._load_lock = asyncio.Lock()
        if model is not None:
            self._attach(model, tokenizer)

    def _attach(self, model, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._label_cache.clear()
        self._scheduler = ContinuousBatcher(model, tokenizer, eos_ids=_eos_ids(model, tokenizer),
                                            context_window=self._window, max_batch_size=self._max_batch, name=self.name)

    @classmethod
    def open(cls, path: str | Path | None = None, *, device: str = "auto", dtype: str = "auto", **kw) -> "TransformersBatchedProvider":
        """A provider over the model at `path`, loaded now."""
        model, tokenizer, model_name = load_model(path, device=device, dtype=dtype)
        return cls(model, tokenizer, model_name=model_name, **kw)

    @property
    def stats(self) -> SchedulerStats:
        return self._scheduler.stats if self._scheduler is not None else SchedulerStats()

    # -- ModelLifecycle ------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._scheduler is not None

    @property
    def memory_pool(self) -> str:
        """The budget's pool this model's memory counts against: "gpu" when it is placed on a GPU."""
        return "gpu" if self._source is not None and self._source.device.startswith("cuda") else "ram"

    def estimated_memory_mb(self, gguf_factor: float | None = None) -> float:
        """MiB the model will take once loaded: parameters × bytes of its dtype × TORCH_FACTOR (`gguf_factor`,
        llama.cpp's, does not apply: transformers dequantises a GGUF file)."""
        if self._source is None:
            raise ValueError("the model was given loaded; set the deployment's memory_mb")
        return parameter_count(self._source.path) * DTYPE_BYTES[self._source.dtype] * TORCH_FACTOR / 2**20

    async def load(self, model: str | None = None) -> None:
        """Load the model now (in a worker thread); a no-op when it is loaded."""
        async with self._load_lock:
            if self._scheduler is None:
                if self._closed:
                    raise ProviderError("the local model is shut down", deployment=self.name)
                assert self._source is not None
                loaded, tokenizer, _ = await asyncio.to_thread(self._source.load)
                self._attach(loaded, tokenizer)

    async def unload(self, model: str | None = None) -> None:
        """Stop the scheduler and free the model's memory; the next call loads it again. Refused while calls
        are admitted, or when the model was given loaded (nothing to load it again from)."""
        async with self._load_lock:
            if self._pending:
                raise BadRequestError(f"deployment {self.name!r} has {self._pending} calls in progress; unload it "
                                      "when idle", deployment=self.name)
            if self._source is None:
                raise BadRequestError(f"deployment {self.name!r} was given a loaded model; it cannot be loaded again",
                                      deployment=self.name)
            scheduler, self._scheduler, self.tokenizer = self._scheduler, None, None
            if scheduler is not None:
                await asyncio.to_thread(_free, scheduler)
                log.info("unloaded %s", self.model)

    async def sleep(self, level: int = 1) -> None:
        raise BadRequestError(f"deployment {self.name!r} (transformers) cannot sleep; unload it instead", deployment=self.name)

    async def wake(self) -> None:
        raise BadRequestError(f"deployment {self.name!r} (transformers) cannot sleep or wake; load it instead",
                              deployment=self.name)

    async def is_sleeping(self) -> bool:
        return False

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
            await self.load()
            assert self._scheduler is not None
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
        self._pending += 1
        started = time.perf_counter()
        job: ClassifyJob | None = None
        try:
            await self.load()
            assert self._scheduler is not None
            loop = asyncio.get_running_loop()
            job = ClassifyJob(request, self._label_tokens(labels), loop, loop.create_future())
            self._scheduler.submit(job)
            return LabelProbs(await asyncio.wait_for(asyncio.shield(job.future), request.deadline_s or self._timeout))
        except asyncio.TimeoutError:
            raise ProviderTimeoutError("local model classification timed out", deployment=self.name) from None
        finally:
            if job is not None:
                job.cancelled = True
            self._finished(started)

    async def health(self) -> LoadSnapshot:
        if self._scheduler is None:
            return LoadSnapshot(healthy=not self._closed, detail=f"{self.model} (not loaded)")
        return LoadSnapshot(healthy=not self._closed, detail=self.model, waiting=self._scheduler.waiting,
                            running=self._scheduler.running)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            async with self._load_lock:
                if self._scheduler is not None:
                    await asyncio.to_thread(self._scheduler.close)


def _free(scheduler: ContinuousBatcher) -> None:
    """Stop `scheduler`'s thread and drop the model it owns, then hand the freed heap back to the system."""
    from .llama_cpp import release_freed_memory

    scheduler.close()
    scheduler.model = scheduler.tokenizer = None
    scheduler.batch = None  # type: ignore[assignment]
    del scheduler
    release_freed_memory()


def from_settings(d, environ) -> TransformersBatchedProvider:
    """A `transformers` deployment: `model` is a model folder or .gguf file (empty = the packaged SmolLM2 GGUF);
    options: device (cpu|cuda|auto), dtype (auto|float32|bfloat16|float16), max_batch_size, max_queue, lazy_load
    (load on the first call; set for every transformers deployment under llm.memory's budget)."""
    o = d.options
    kw = dict(name=d.name, context_window=d.context_window, max_batch_size=int(o.get("max_batch_size", 16)),
              max_queue=int(o.get("max_queue", 64)), call_timeout_s=d.timeout_s)
    if o.get("lazy_load"):
        source = ModelSource(d.model or None, device=o.get("device", "auto"), dtype=o.get("dtype", "auto"))
        return TransformersBatchedProvider(model_name=source.name, source=source, **kw)
    return TransformersBatchedProvider.open(d.model or None, device=o.get("device", "auto"), dtype=o.get("dtype", "auto"),
                                            **kw)
