"""A wire-faithful fake Ollama server (docs/api.md of ollama/ollama; /work/shared/design/ENGINE_APIS.md).

Same framing and error bodies as the real one: NDJSON (`application/x-ndjson`) unless `stream: false`,
a final object with `done`, `done_reason`, token counts and durations in nanoseconds; `{"error": "..."}`
bodies with 400/404/503, and an `{"error": ...}` line after a 200 when a stream fails part-way.

It keeps state like Ollama: models installed (`/api/tags`, `/api/pull`, `DELETE /api/delete`) and
loaded (`/api/ps`; a request loads its model for `keep_alive`, an empty request loads it, an empty
request with `keep_alive: 0` unloads it). A model that is not installed answers 404. A model whose name
has "embed" in it is embedding-only: any generation request but an unload answers 400 `"NAME" does not
support generate`; an empty /api/embed loads it. `/api/ps` lists
each loaded model with its `size` in memory and `size_vram` (all of it, as on one GPU): `memory_bytes`
per model (default 100 MiB). So a test can assert what a real Ollama host must not see, it records
`most_loaded_bytes` (the most memory its loaded models ever held at once), `loads` / `unloads` per model,
and `unloaded_while_busy` (a `keep_alive: 0` for a model with a generation in flight). While `holding`
is set, an answer waits before its final line (a call kept in flight).

Canned answers (tests/provider_contract.py): "Hello! I am a fake model." in word chunks; `{"city": "Paris"}`
when `format` is set; a call of the first tool when `tools` are given. `options.num_predict` cuts the
answer (done_reason "length"), `options.stop` cuts it before a stop string.

`fault(kind)` makes the NEXT generation request (/api/chat, /api/generate, /api/embed; never the health
or lifecycle endpoints) fail: rate_limit, overloaded, mid_stream, hang, model_missing, bad_json, cut.

Serving, faults and the request record are `FakeEngine`'s (tests/fakes/base.py):

    with OllamaFake(models=["fake-model"]) as fake:
        ... OllamaProvider("fake-model", url=fake.url) ...
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from aiohttp import web

from .base import FakeEngine

VERSION = "0.6.5"
ANSWER = "Hello! I am a fake model."
JSON_ANSWER = '{"city": "Paris"}'
NOT_JSON = "Sure! The city you are looking for is Paris."
EMBED_DIM = 8
FAULTS = ("rate_limit", "overloaded", "mid_stream", "hang", "model_missing", "bad_json", "cut")
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def canonical(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def keep_alive_s(value: Any) -> float:
    """Ollama's keep_alive: seconds (number), a Go duration ("5m", "1h30m"), negative = forever; default 5m."""
    if value is None or value == "":
        return 300.0
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
        seconds = float(value)
    else:
        parts = _DURATION.findall(value.strip())
        if not parts:
            raise ValueError(f"time: invalid duration {value!r}")
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return math.inf if seconds < 0 else seconds


def _now_iso(offset_s: float = 0.0) -> str:
    if math.isinf(offset_s):
        return "2318-11-25T00:00:00Z"  # what Ollama shows for keep_alive < 0
    return (datetime.now(timezone.utc) + timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _tags_entry(name: str) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": _now_iso(), "size": 91_739_413, "digest": _digest(name),
            "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                        "parameter_size": "134.52M", "quantization_level": "Q4_1"}}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class OllamaFake(FakeEngine):
    FAULTS = FAULTS

    def __init__(self, models: Iterable[str] = ("fake-model",), *, pullable: Iterable[str] | None = None,
                 context_length: int = 8192, memory_bytes: dict[str, int] | None = None):
        super().__init__()
        self.installed: dict[str, dict[str, Any]] = {canonical(m): _tags_entry(canonical(m)) for m in models}
        self.expires: dict[str, float] = {}  # loaded model -> monotonic expiry (inf = forever)
        self.memory_bytes = {canonical(m): n for m, n in (memory_bytes or {}).items()}  # size in memory (/api/ps)
        self.in_flight: dict[str, int] = {}  # model -> generations being answered
        self.loads: dict[str, int] = {}
        self.unloads: dict[str, int] = {}
        self.most_loaded_bytes = 0
        self.unloaded_while_busy = 0
        self.holding = False
        # names /api/pull can find; None = any name except those containing "nonexistent"
        self.pullable = None if pullable is None else {canonical(m) for m in pullable}
        self.context_length = context_length

    def loaded(self) -> list[str]:
        now = time.monotonic()
        return [m for m, t in self.expires.items() if t > now]

    # -- app --------------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/pull", self._pull)
        app.router.add_delete("/api/delete", self._delete)
        app.router.add_post("/api/embed", self._embed)

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    def _missing(self, name: str) -> web.Response:
        return _error(404, f"model '{name}' not found, try pulling it first")

    def fault_reply(self, kind: str, request: web.Request, body: Any) -> web.StreamResponse | None:
        if kind == "rate_limit":  # Ollama itself does not rate-limit; a proxy in front of it (LiteLLM, nginx) does
            return web.json_response({"error": {"message": "Rate limit reached; try again in 7s", "type": "rate_limit_error",
                                                "code": "rate_limit_exceeded"}}, status=429, headers={"retry-after": "7"})
        if kind == "overloaded":  # past OLLAMA_MAX_QUEUE; real Ollama sends no Retry-After (the adapter then assumes 1 s)
            return _error(503, "server busy, please try again.  maximum pending requests exceeded", {"retry-after": "2"})
        if kind == "model_missing":
            return self._missing(body.get("model") or "")
        if kind == "hang":
            return _error(500, "hung request released")
        return None

    def reset(self) -> None:
        super().reset()
        self.expires.clear()
        self.in_flight.clear()
        self.loads.clear()
        self.unloads.clear()
        self.most_loaded_bytes = self.unloaded_while_busy = 0
        self.holding = False

    def size_of(self, model: str) -> int:
        return self.memory_bytes.get(canonical(model), 100 * 2**20)

    def loaded_bytes(self) -> int:
        return sum(self.size_of(m) for m in self.loaded())

    def _touch(self, name: str, keep_alive: Any) -> None:
        seconds = keep_alive_s(keep_alive)
        was_loaded = name in self.loaded()
        if seconds == 0:
            if was_loaded:
                self.unloads[name] = self.unloads.get(name, 0) + 1
                self.unloaded_while_busy += self.in_flight.get(name, 0) > 0
            self.expires.pop(name, None)
            return
        self.expires[name] = time.monotonic() + seconds
        if not was_loaded:
            self.loads[name] = self.loads.get(name, 0) + 1
            self.most_loaded_bytes = max(self.most_loaded_bytes, self.loaded_bytes())

    # -- generation -------------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def _answer(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = await self.read(request)
        if not isinstance(body, dict):
            return _error(400, "invalid character 'x' looking for beginning of value")
        name = body.get("model") or ""
        if not name:
            return _error(400, "model is required")
        fault = await self.take_fault(request, body)
        model = canonical(name)
        if model not in self.installed:
            return self._missing(name)
        try:
            keep_alive_s(body.get("keep_alive"))
        except ValueError as e:
            return _error(400, str(e))
        was_loaded = model in self.loaded()
        empty = not body.get("messages") if chat else not body.get("prompt")
        unload = empty and "keep_alive" in body and keep_alive_s(body["keep_alive"]) == 0
        if "embed" in model and not unload:  # Ollama answers an unload before it checks what the model can do
            return _error(400, f'"{name}" does not support {"chat" if chat else "generate"}')
        if empty:  # load, or unload with keep_alive 0: one JSON object whatever `stream` says
            self._touch(model, body.get("keep_alive"))
            return web.json_response(self._piece(name, "", chat, done=True) | {"done_reason": "unload" if unload else "load"})
        self._touch(model, body.get("keep_alive"))
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        try:
            return await self._generation(request, body, chat, fault, was_loaded)
        finally:
            self.in_flight[model] -= 1

    async def _generation(self, request: web.Request, body: dict[str, Any], chat: bool, fault: str | None,
                          was_loaded: bool) -> web.StreamResponse:
        name = body["model"]
        pieces, reason, calls = self._pieces(body, chat, fault)
        while self.holding:  # a test keeps this call in flight
            await asyncio.sleep(0.01)
        stats = self._stats(body, chat, len(pieces) + (1 if calls else 0), was_loaded)
        if body.get("stream") is False:
            final = self._piece(name, "".join(pieces), chat, done=True, calls=calls) | {"done_reason": reason} | stats
            return web.json_response(final)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        broken = fault in ("mid_stream", "cut")
        for text in pieces[:2] if broken else pieces:
            await resp.write(json.dumps(self._piece(name, text, chat)).encode() + b"\n")
            await asyncio.sleep(0)
        if broken:  # a few tokens, then Ollama's in-stream error line, or ("cut") no final `done` line at all
            if fault == "mid_stream":
                await resp.write(b'{"error":"an error was encountered while running the model: unexpected EOF"}\n')
            return resp
        if calls:
            await resp.write(json.dumps(self._piece(name, "", chat, calls=calls)).encode() + b"\n")
        final = self._piece(name, "", chat, done=True) | {"done_reason": reason} | stats
        if not chat:
            final["context"] = [1, 2, 3]
        await resp.write(json.dumps(final).encode() + b"\n")
        await resp.write_eof()
        return resp

    def _pieces(self, body: dict[str, Any], chat: bool, fault: str | None) -> tuple[list[str], str, list[dict]]:
        tools = body.get("tools") if chat else None
        if fault == "bad_json":
            text = NOT_JSON
        elif body.get("format"):
            text = JSON_ANSWER
        elif tools:
            return [], "stop", [self._tool_call(tools[0])]
        else:
            text = ANSWER
        options = body.get("options") or {}
        reason = "stop"
        for stop in ([options["stop"]] if isinstance(options.get("stop"), str) else options.get("stop") or []):
            if stop and stop in text:
                text = text[: text.index(stop)]
        pieces = re.findall(r"\S+\s*|\s+", text)
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        return pieces, reason, []

    @staticmethod
    def _tool_call(tool: dict[str, Any]) -> dict[str, Any]:
        fn = tool.get("function") or {}
        props = (fn.get("parameters") or {}).get("properties") or {}
        sample = {"string": "Paris", "integer": 1, "number": 1.5, "boolean": True}
        args = {k: sample.get((v or {}).get("type"), "Paris") for k, v in props.items()}
        return {"function": {"name": fn.get("name", ""), "arguments": args}}

    @staticmethod
    def _piece(name: str, text: str, chat: bool, *, done: bool = False, calls: list | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": name, "created_at": _now_iso()}
        if chat:
            out["message"] = {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}
        else:
            out["response"] = text
        out["done"] = done
        return out

    @staticmethod
    def _stats(body: dict[str, Any], chat: bool, eval_count: int, was_loaded: bool) -> dict[str, int]:
        texts = [m.get("content") or "" for m in body.get("messages") or []] if chat else [body.get("prompt") or "",
                                                                                           body.get("system") or ""]
        prompt_count = 10 + sum(len(t.split()) for t in texts)
        load, prompt_ns, eval_ns = (0 if was_loaded else 50_000_000), prompt_count * 1_000_000, eval_count * 20_000_000
        return {"total_duration": load + prompt_ns + eval_ns, "load_duration": load, "prompt_eval_count": prompt_count,
                "prompt_eval_duration": prompt_ns, "eval_count": eval_count, "eval_duration": eval_ns}

    # -- lifecycle --------------------------------------------------------------------------------
    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": list(self.installed.values())})

    async def _ps(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        models = [self.installed[m] | {"size": self.size_of(m), "expires_at": _now_iso(t - now), "size_vram": self.size_of(m)}
                  for m, t in self.expires.items() if t > now and m in self.installed]
        return web.json_response({"models": models})

    async def _show(self, request: web.Request) -> web.Response:
        body = await self.read(request) or {}
        name = body.get("model") or body.get("name") or ""
        entry = self.installed.get(canonical(name))
        if entry is None:
            return _error(404, f"model '{name}' not found")
        return web.json_response({
            "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {name}\n", "parameters": "stop \"<|im_end|>\"",
            "template": "{{ .Prompt }}", "details": entry["details"], "capabilities": ["completion", "tools"],
            "model_info": {"general.architecture": "llama", "general.parameter_count": 134515008,
                           "llama.context_length": self.context_length, "llama.embedding_length": 576},
            "modified_at": entry["modified_at"]})

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self.read(request) or {}
        name = body.get("model") or body.get("name") or ""
        model = canonical(name)
        known = "nonexistent" not in name if self.pullable is None else model in self.pullable
        if body.get("stream") is False:
            if not known:
                return _error(500, "pull model manifest: file does not exist")
            self.installed[model] = _tags_entry(model)
            return web.json_response({"status": "success"})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)

        async def line(obj: dict[str, Any]) -> None:
            await resp.write(json.dumps(obj).encode() + b"\n")

        await line({"status": "pulling manifest"})
        if not known:  # a streamed pull reports failure in-stream, after the 200
            await line({"error": "pull model manifest: file does not exist"})
            return resp
        for layer, total in (("model", 91_000_000), ("template", 1_000)):
            digest = "sha256:" + _digest(model + layer)
            short = digest[7:19]
            await line({"status": f"pulling {short}", "digest": digest, "total": total})
            for done in (total // 2, total):
                await line({"status": f"pulling {short}", "digest": digest, "total": total, "completed": done})
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            await line({"status": status})
        self.installed[model] = _tags_entry(model)
        await resp.write_eof()
        return resp

    async def _delete(self, request: web.Request) -> web.Response:
        body = await self.read(request) or {}
        name = body.get("model") or body.get("name") or ""
        if self.installed.pop(canonical(name), None) is None:
            return _error(404, f"model '{name}' not found")
        self.expires.pop(canonical(name), None)
        return web.Response(status=200)

    async def _embed(self, request: web.Request) -> web.Response:
        body = await self.read(request)
        if not isinstance(body, dict):
            return _error(400, "invalid request body")
        name = body.get("model") or ""
        await self.take_fault(request, body)  # only the faults that answer by themselves apply to embeddings
        if canonical(name) not in self.installed:
            return self._missing(name)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        self._touch(canonical(name), body.get("keep_alive"))
        return web.json_response({"model": name, "embeddings": [self.vector(t) for t in texts],
                                  "total_duration": 14_143_917, "load_duration": 1_019_500,
                                  "prompt_eval_count": sum(len(t.split()) + 2 for t in texts)})

    @staticmethod
    def vector(text: str) -> list[float]:
        """A deterministic unit vector per text (Ollama's /api/embed vectors are L2-normalised)."""
        raw = [b - 127.5 for b in hashlib.sha256(text.encode()).digest()[:EMBED_DIM]]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [x / norm for x in raw]
