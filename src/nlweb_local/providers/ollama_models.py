"""Ollama's model lifecycle: what is installed (`/api/tags`), what is loaded (`/api/ps`), and pull,
show, load, unload and delete.

Ollama loads a model on its first request and unloads it `keep_alive` after the last (default 5m).
Loading is an empty request (no prompt); unloading is an empty request with `keep_alive: 0`.
Names without a tag mean `:latest` (`llama3.2` is `llama3.2:latest`), so names are compared canonically.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from ..core.errors import BadRequestError, ProviderError
from .http import HttpTransport, iter_ndjson
from .load_parsers import ollama_canonical

DEFAULT_URL = "http://127.0.0.1:11434"
PULL_TIMEOUT_S = 6 * 3600.0  # a pull downloads gigabytes; the per-call deadline of chats does not apply


canonical = ollama_canonical  # `llama3.2` → `llama3.2:latest`; a tagged name is kept


def same_model(a: str, b: str) -> bool:
    return canonical(a) == canonical(b)


@dataclass(frozen=True, slots=True)
class InstalledModel:
    name: str
    size: int = 0  # bytes on disk
    digest: str = ""
    family: str = ""
    parameter_size: str = ""  # "8.0B"
    quantization_level: str = ""  # "Q4_K_M"
    modified_at: str = ""

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> "InstalledModel":
        d = m.get("details") or {}
        return cls(name=m.get("name") or m.get("model", ""), size=int(m.get("size") or 0), digest=m.get("digest", ""),
                   family=d.get("family") or "", parameter_size=d.get("parameter_size") or "",
                   quantization_level=d.get("quantization_level") or "", modified_at=m.get("modified_at", ""))


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    size: int = 0  # bytes in memory
    size_vram: int = 0  # of which on the GPU
    expires_at: str = ""  # when keep_alive runs out

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> "LoadedModel":
        return cls(name=m.get("name") or m.get("model", ""), size=int(m.get("size") or 0),
                   size_vram=int(m.get("size_vram") or 0), expires_at=m.get("expires_at", ""))


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One line of `/api/pull`: "pulling manifest", "pulling <digest>" with byte counts, ..., "success"."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    @property
    def fraction(self) -> float | None:
        return self.completed / self.total if self.total and self.completed is not None else None

    @property
    def done(self) -> bool:
        return self.status == "success"


ProgressCallback = Callable[[PullProgress], "Awaitable[None] | None"]


class OllamaModels:
    """The lifecycle endpoints of one Ollama server."""

    def __init__(self, http: HttpTransport, *, timeout_s: float = 60.0):
        self._http = http
        self._timeout_s = timeout_s

    @classmethod
    def at(cls, url: str = DEFAULT_URL, *, deployment: str = "ollama", timeout_s: float = 60.0) -> "OllamaModels":
        return cls(HttpTransport(url, deployment=deployment, timeout_s=timeout_s), timeout_s=timeout_s)

    async def version(self) -> str:
        data = await self._http.json("GET", "/api/version", deadline_s=min(self._timeout_s, 5.0))
        return str((data or {}).get("version", ""))

    async def installed(self) -> list[InstalledModel]:
        data = await self._http.json("GET", "/api/tags", deadline_s=self._timeout_s)
        return [InstalledModel.from_wire(m) for m in (data or {}).get("models") or []]

    async def ps(self, *, deadline_s: float | None = None) -> dict[str, Any]:
        """`/api/ps` as Ollama sends it (`load_parsers.ollama_snapshot` reads it)."""
        return await self._http.json("GET", "/api/ps", deadline_s=deadline_s or self._timeout_s) or {}

    async def loaded(self) -> list[LoadedModel]:
        return [LoadedModel.from_wire(m) for m in (await self.ps()).get("models") or []]

    async def is_installed(self, name: str) -> bool:
        return any(same_model(m.name, name) for m in await self.installed())

    async def is_loaded(self, name: str) -> bool:
        return any(same_model(m.name, name) for m in await self.loaded())

    async def show(self, name: str) -> dict[str, Any]:
        """Details, template, parameters and `model_info` (see `context_length`); 404 → ModelNotFoundError."""
        return await self._http.json("POST", "/api/show", json_body={"model": name}, deadline_s=self._timeout_s) or {}

    async def pull(self, name: str, *, insecure: bool = False) -> AsyncIterator[PullProgress]:
        """Download a model, yielding Ollama's progress lines in order; the last is `success`.

        Ollama reports a failed pull (unknown name, no network) as a `{"error": ...}` line after a 200:
        that raises `ProviderError` with its message."""
        body = {"model": name, "stream": True, **({"insecure": True} if insecure else {})}
        async with self._http.request("POST", "/api/pull", json_body=body, deadline_s=PULL_TIMEOUT_S) as resp:
            async for obj in iter_ndjson(resp, deployment=self._http.deployment):
                if "error" in obj:
                    raise ProviderError(f"{self._http.deployment}: pulling {name!r} failed: {obj['error']} "
                                        f"(check the name at https://ollama.com/library)", deployment=self._http.deployment)
                p = PullProgress(str(obj.get("status", "")), obj.get("digest"), obj.get("total"), obj.get("completed"))
                yield p
                if p.done:
                    return
        raise ProviderError(f"{self._http.deployment}: pulling {name!r} ended without success; run it again (pulls resume)",
                            deployment=self._http.deployment)

    async def ensure(self, name: str, on_progress: ProgressCallback | None = None) -> bool:
        """Pull `name` unless it is installed; `on_progress` sees each progress line. True if it pulled."""
        if await self.is_installed(name):
            return False
        async for p in self.pull(name):
            if on_progress is not None:
                maybe = on_progress(p)
                if maybe is not None:
                    await maybe
        return True

    async def load(self, name: str, *, keep_alive: str | int | float | None = None) -> None:
        """Load a model into memory now (an empty request), so the first real call does not wait for it.
        An embedding-only model refuses /api/generate (400 "does not support generate"): it is loaded by an
        empty /api/embed instead."""
        body: dict[str, Any] = {"model": name, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        deadline = max(self._timeout_s, 300.0)
        try:
            await self._http.json("POST", "/api/generate", json_body=body, deadline_s=deadline)
        except BadRequestError as e:
            if "does not support generate" not in e.message:
                raise
            body.pop("stream")
            await self._http.json("POST", "/api/embed", json_body=body, deadline_s=deadline)

    async def unload(self, name: str) -> None:
        """Free the model's memory now (an empty request with `keep_alive: 0`; Ollama answers it before it
        checks what the model can do, so this unloads embedding models too)."""
        await self._http.json("POST", "/api/generate", json_body={"model": name, "keep_alive": 0, "stream": False},
                              deadline_s=self._timeout_s)

    async def delete(self, name: str) -> None:
        """Remove a model from disk; 404 (not installed) → ModelNotFoundError."""
        await self._http.text("DELETE", "/api/delete", json_body={"model": name}, deadline_s=self._timeout_s)

    async def close(self) -> None:
        await self._http.close()


def context_length(show: dict[str, Any]) -> int | None:
    """The trained context length from `/api/show`'s `model_info` (`<architecture>.context_length`)."""
    info = show.get("model_info") or {}
    arch = info.get("general.architecture")
    value = info.get(f"{arch}.context_length") if arch else None
    if value is None:
        value = next((v for k, v in info.items() if k.endswith(".context_length")), None)
    return int(value) if isinstance(value, (int, float)) else None
