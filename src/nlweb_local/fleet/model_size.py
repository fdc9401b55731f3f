"""How much memory a model will take before it is loaded: a GGUF file's size × a stated factor plus its KV
cache, read from the file's own metadata (no model is loaded to find out).

    estimate = file size × factor + KV cache
    KV cache = layers × n_ctx × KV heads × (key dim + value dim) × 2 bytes (f16, llama.cpp's default)

The factor (`llm.memory.gguf_factor`, 1.3) covers what llama.cpp allocates beside the weights: compute
buffers, the vocabulary, repacked tensors. Measured here (llama-cpp-python, n_ctx 2048, RSS after the
first call): SmolLM2-135M Q4_1 (94 MiB file) +162 MiB, estimate 167; Gemma 3 270M Q4_K_M (241 MiB file)
+337 MiB, estimate 350.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MIB = 1024 * 1024
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True, slots=True)
class GgufShape:
    """What a GGUF file says about its model's shape (the keys its KV cache size depends on)."""

    architecture: str
    layers: int
    embedding: int
    heads: int
    kv_heads: int
    key_dim: int
    value_dim: int
    context_length: int | None

    def kv_cache_bytes(self, n_ctx: int, bytes_per_value: int = 2) -> int:
        return self.layers * n_ctx * self.kv_heads * (self.key_dim + self.value_dim) * bytes_per_value


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("the file ends inside its metadata")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:
        raise ValueError("the file ends inside its metadata")
    return data.decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:  # skipped (vocabularies): only its length is kept
        item, count = _read(f, "<I"), _read(f, "<Q")
        if item in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                _value(f, item)
        return count
    raise ValueError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (version 2 or 3); arrays are given as their lengths."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = _read(f, "<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old (convert it again with a current llama.cpp)")
        _read(f, "<Q")  # tensor count
        out: dict[str, Any] = {}
        for _ in range(_read(f, "<Q")):
            key = _string(f)
            out[key] = _value(f, _read(f, "<I"))
        return out


def gguf_shape(meta: dict[str, Any]) -> GgufShape:
    arch = str(meta.get("general.architecture", ""))
    get = lambda k, default=None: meta.get(f"{arch}.{k}", default)  # noqa: E731
    layers, embedding, heads = get("block_count"), get("embedding_length"), get("attention.head_count")
    if not (layers and embedding and heads):
        raise ValueError(f"the GGUF metadata lacks {arch}.block_count/embedding_length/attention.head_count")
    kv_heads = get("attention.head_count_kv") or heads
    key_dim = get("attention.key_length") or embedding // heads
    return GgufShape(arch, int(layers), int(embedding), int(heads), int(kv_heads), int(key_dim),
                     int(get("attention.value_length") or key_dim), get("context_length"))


def estimate_gguf_mb(path: str | Path, n_ctx: int, factor: float) -> float:
    """MiB a GGUF model will take in memory with an `n_ctx` context: file size × `factor` + its KV cache."""
    p = Path(path)
    shape = gguf_shape(gguf_metadata(p))
    return (p.stat().st_size * factor + shape.kv_cache_bytes(n_ctx)) / MIB


def gguf_tensor_shapes(path: str | Path) -> list[tuple[int, ...]]:
    """The shape of every tensor a GGUF file holds (from its tensor index, after the metadata; no data read)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        if _read(f, "<I") < 2:
            raise ValueError(f"{path}: GGUF version too old (convert it again with a current llama.cpp)")
        tensors, kvs = _read(f, "<Q"), _read(f, "<Q")
        for _ in range(kvs):
            _string(f)
            _value(f, _read(f, "<I"))
        shapes = []
        for _ in range(tensors):
            _string(f)  # name
            dims = _read(f, "<I")
            shapes.append(tuple(_read(f, "<Q") for _ in range(dims)))
            _read(f, "<I")  # type
            _read(f, "<Q")  # offset
        return shapes
