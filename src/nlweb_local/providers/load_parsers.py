"""Pure parsers from what engines expose (Prometheus text, /health, /slots, /api/ps) to `LoadSnapshot`.

No I/O and no state: adapters fetch, these functions read. One function per engine, all returning the
same shape, so a router compares engines without knowing them.

    parse_prometheus(text) -> {metric name: [(labels, value), ...]}
    vllm_snapshot(metrics_text, model=None)           (with prefix-cache hits, when vLLM reports them)
    tgi_snapshot(metrics_text)
    llama_server_snapshot(metrics_text=None, health_status=None, health_body=None, slots=None)
    ollama_snapshot(version_ok, ps_json, model, version="")
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Mapping

from .base import LoadSnapshot, PromptCacheCounters

Samples = dict[str, list[tuple[dict[str, str], float]]]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _skip_spaces(line: str, i: int) -> int:
    while i < len(line) and line[i] == " ":
        i += 1
    return i


def _labels(line: str, i: int) -> tuple[dict[str, str], int]:
    """Parse `{k="v",...}` starting at line[i] == "{"; return the labels and the index after "}"."""
    labels: dict[str, str] = {}
    i += 1
    while True:
        while i < len(line) and line[i] in " ,":
            i += 1
        if i >= len(line):
            raise ValueError("unterminated label set")
        if line[i] == "}":
            return labels, i + 1
        m = _LABEL_NAME.match(line, i)
        if not m:
            raise ValueError(f"bad label name at {i}")
        i = m.end()
        i = _skip_spaces(line, i)
        if line[i:i + 1] != "=":
            raise ValueError(f"expected = at {i}")
        i = _skip_spaces(line, i + 1)
        if line[i:i + 1] != '"':
            raise ValueError(f"expected a quoted value at {i}")
        i += 1
        out: list[str] = []
        while True:
            if i >= len(line):
                raise ValueError("unterminated label value")
            c = line[i]
            if c == "\\" and i + 1 < len(line):
                out.append(_ESCAPES.get(line[i + 1], "\\" + line[i + 1]))
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                out.append(c)
                i += 1
        labels[m.group(0)] = "".join(out)


def parse_prometheus(text: str) -> Samples:
    """Prometheus text exposition format (0.0.4) to samples by metric name.

    Comments (`# HELP`, `# TYPE`) are skipped; histogram and summary series appear under their own
    names (`x_bucket` with an `le` label, `x_sum`, `x_count`); values may be `NaN`, `+Inf`, `-Inf`; a
    trailing timestamp is ignored; a line that cannot be parsed is skipped, never fatal.
    """
    out: Samples = {}
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _NAME.match(line)
        if not m:
            continue
        name, i = m.group(0), m.end()
        labels: dict[str, str] = {}
        try:
            if i < len(line) and line[i] == "{":
                labels, i = _labels(line, i)
            fields = line[i:].split()
            value = float(fields[0])  # float() reads NaN, +Inf, -Inf as Prometheus writes them
        except (ValueError, IndexError):
            continue
        out.setdefault(name, []).append((labels, value))
    return out


def _values(samples: Samples, name: str, where: Mapping[str, str] | None = None) -> list[float]:
    where = where or {}
    return [v for labels, v in samples.get(name, ()) if all(labels.get(k) == w for k, w in where.items())
            and not math.isnan(v)]


def _total(samples: Samples, name: str, where: Mapping[str, str] | None = None) -> int | None:
    vals = _values(samples, name, where)
    return int(sum(vals)) if vals else None


def _max(samples: Samples, names: Iterable[str], where: Mapping[str, str] | None = None) -> float | None:
    for name in names:  # the first name present wins (newer metric name first)
        vals = _values(samples, name, where)
        if vals:
            return max(0.0, min(1.0, max(vals)))
    return None


def _prompt_cache(samples: Samples, queries: str, hits: str,
                  where: Mapping[str, str] | None = None) -> PromptCacheCounters | None:
    q, h = _total(samples, queries, where), _total(samples, hits, where)
    return PromptCacheCounters(queried_tokens=q, hit_tokens=min(h, q)) if q is not None and h is not None else None


def vllm_prompt_cache(samples: Samples, where: Mapping[str, str] | None = None) -> PromptCacheCounters | None:
    """vLLM's prefix-cache counters (tokens): `vllm:prefix_cache_queries_total`/`_hits_total` (V1 engine), or
    the `vllm:gpu_prefix_cache_*` names of the releases between; None where prefix caching reports nothing
    (off, or the V0 engine's hit-rate gauge only)."""
    for prefix in ("vllm:prefix_cache_", "vllm:gpu_prefix_cache_"):
        found = _prompt_cache(samples, prefix + "queries_total", prefix + "hits_total", where)
        if found is not None:
            return found
    return None


def vllm_snapshot(metrics_text: str, model: str | None = None) -> LoadSnapshot:
    """vLLM's /metrics: requests running and waiting, KV-cache usage (0..1), for `model_name` = model if given."""
    samples = parse_prometheus(metrics_text)
    where = {"model_name": model} if model else None
    running = _total(samples, "vllm:num_requests_running", where)
    waiting = _total(samples, "vllm:num_requests_waiting", where)
    if running is None and waiting is None:
        served = sorted({labels.get("model_name", "") for labels, _ in samples.get("vllm:num_requests_running", ())} - {""})
        if model and served:
            return LoadSnapshot(healthy=False, detail=f"vLLM serves {', '.join(served)}, not {model!r}")
        return LoadSnapshot(healthy=False, detail="no vLLM load metrics in /metrics")
    kv = _max(samples, ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), where)
    served = tuple(sorted({labels.get("model_name", "") for labels, _ in samples.get("vllm:num_requests_running", ())} - {""}))
    return LoadSnapshot(healthy=True, detail=model or "vllm", waiting=waiting or 0, running=running or 0, kv_cache_usage=kv,
                        prompt_cache=vllm_prompt_cache(samples, where), models=served or None)


def tgi_snapshot(metrics_text: str) -> LoadSnapshot:
    """TGI's /metrics: `tgi_queue_size` waiting, `tgi_batch_current_size` running (TGI exposes no KV usage)."""
    samples = parse_prometheus(metrics_text)
    waiting = _total(samples, "tgi_queue_size")
    running = _total(samples, "tgi_batch_current_size")
    if waiting is None and running is None:
        return LoadSnapshot(healthy=False, detail="no TGI load metrics in /metrics")
    return LoadSnapshot(healthy=True, detail="tgi", waiting=waiting or 0, running=running or 0)


def _health_message(body: Any) -> str:
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, TypeError, ValueError):
            return str(body).strip()[:200]
    if isinstance(body, dict):
        err = body.get("error", body.get("status", ""))
        if isinstance(err, dict):
            return str(err.get("message", err))[:200]
        return str(err)[:200]
    return ""


def _busy_slots(slots: list[dict[str, Any]]) -> int:
    # newer llama-server: "is_processing": bool; older: "state": 0 idle / 1 processing
    return sum(1 for s in slots if s.get("is_processing") or s.get("state", 0) == 1)


def llama_server_snapshot(metrics_text: str | None = None, health_status: int | None = None,
                          health_body: Any = None, slots: list[dict[str, Any]] | None = None) -> LoadSnapshot:
    """llama-server (C++): /health status and body, /metrics (with --metrics) and /slots, each optional.

    /health 503 "Loading model" → up but loading (not healthy yet); 503 "no slot available" (older
    servers, `?fail_on_no_slot`) → healthy but saturated. Metrics give running/deferred and KV usage;
    without metrics, busy slots count as running.
    """
    message = _health_message(health_body)
    if health_status is not None and health_status >= 400:
        low = message.lower()
        if "loading" in low:
            return LoadSnapshot(healthy=False, loading=True, detail=message or "loading model")
        if "no slot" not in low:
            return LoadSnapshot(healthy=False, detail=f"/health {health_status}: {message}".strip())
    samples = parse_prometheus(metrics_text) if metrics_text else {}
    running = _total(samples, "llamacpp:requests_processing")
    waiting = _total(samples, "llamacpp:requests_deferred")
    if running is None and slots is not None:
        running = _busy_slots(slots)
    if health_status is None and running is None and waiting is None:
        return LoadSnapshot(healthy=False, detail="no /health, /metrics or /slots answer from llama-server")
    detail = "all slots busy" if "no slot" in message.lower() else "llama-server"
    named = tuple(sorted({str(s["model"]) for s in slots or () if isinstance(s, dict) and s.get("model")}))
    return LoadSnapshot(healthy=True, detail=detail, waiting=waiting or 0, running=running or 0,
                        kv_cache_usage=_max(samples, ("llamacpp:kv_cache_usage_ratio",)),
                        prompt_cache=llama_server_prompt_cache(samples), models=named or None)


def llama_server_prompt_cache(samples: Samples) -> PromptCacheCounters | None:
    """llama-server builds that export `llamacpp:prompt_tokens_cached_total` (prompt tokens reused from the
    cache; `llamacpp:prompt_tokens_total` then counts only those computed). Upstream llama-server reports
    reuse per answer instead (`usage.prompt_tokens_details.cached_tokens`, read into `Usage.cached_tokens`)."""
    cached, computed = _total(samples, "llamacpp:prompt_tokens_cached_total"), _total(samples, "llamacpp:prompt_tokens_total")
    if cached is None or computed is None:
        return None
    return PromptCacheCounters(queried_tokens=cached + computed, hit_tokens=cached)


MAX_MODELS = 32  # model names kept from one answer (an engine's list is shown on the dashboard)


def openai_models(body: Any) -> tuple[str, ...] | None:
    """An OpenAI-compatible GET /models answer (`{"data": [{"id": ...}, ...]}`): the ids (None: not that)."""
    try:
        data = json.loads(body).get("data") if isinstance(body, (str, bytes)) else None
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None
    if not isinstance(data, list):
        return None
    return tuple(str(m["id"]) for m in data[:MAX_MODELS] if isinstance(m, dict) and m.get("id"))


def ollama_canonical(name: str) -> str:
    """`llama3.2` → `llama3.2:latest`; a name that has a tag (`qwen2.5:0.5b`, `host:5000/ns/m:q4`) is kept."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def ollama_snapshot(version_ok: bool, ps_json: Mapping[str, Any] | None, model: str, *, version: str = "") -> LoadSnapshot:
    """Ollama: up when /api/version answered (`version`: what it said); /api/ps says whether `model` is
    loaded (else the first call pays the load time). Ollama exposes no queue depth, so waiting/running stay 0."""
    if not version_ok:
        return LoadSnapshot(healthy=False, detail="Ollama is not answering /api/version")
    wanted = ollama_canonical(model)
    loaded = (ps_json or {}).get("models") or ()
    names = tuple(str(m.get("name") or m.get("model") or "") for m in loaded[:MAX_MODELS] if isinstance(m, dict))
    head = f"ollama {version}: " if version else ""
    tail = f"; {len(loaded)} model(s) in memory"
    for m in loaded:
        if ollama_canonical(str(m.get("name") or m.get("model") or "")) == wanted:
            vram = m.get("size_vram") or 0
            where = f"{vram / 2**30:.1f} GiB in VRAM" if vram else "on CPU"
            return LoadSnapshot(healthy=True, detail=f"{head}{model} loaded until {m.get('expires_at', '?')} ({where}){tail}",
                                models=names)
    return LoadSnapshot(healthy=True, detail=f"{head}{model} not loaded: the next call loads it first{tail}", models=names)
