"""What a cache hit costs over real HTTP, in one run: a cached /ask answer on the demo site (list and
summarize), and a /v1/chat/completions hit next to the gateway's pass-through of the same request.

    PYTHONPATH=src python benchmarks/cache_hit_latency.py

Real parts: all-MiniLM-L6-v2, embedded Qdrant with the demo site, the whole app (`build_components` ->
`create_app`, telemetry and ledger on) behind a threaded uvicorn on 127.0.0.1. The LLM side is scripted
(a zero-delay engine, and a scripted ranker for /ask) so that the figures are the cache's and the
server's, not a model's. Prints one JSON object: milliseconds, median and p95 of repeated requests.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from nlweb_local.config.settings import load_settings
from nlweb_local.core.types import TaskKind
from nlweb_local.ingest.demo import DEMO_SITE, demo_source
from nlweb_local.ingest.pipeline import Ingestor
from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
from nlweb_local.retrieval.qdrant_store import QdrantStore
from nlweb_local.retrieval.sentence_embedder import SentenceTransformerEmbedder
from nlweb_local.server.app import create_app
from nlweb_local.server.components import build_components
from nlweb_local.server.threaded import ThreadedServer


def answer(task, prompt, schema):
    return json.dumps({"score": 80, "description": "relevant"}) if task is TaskKind.RANK else "A summary."


def timed(call, n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_ms": round(statistics.median(times) * 1000, 3), "p95_ms": round(times[int(0.95 * (n - 1))] * 1000, 3)}


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    embedder = SentenceTransformerEmbedder()
    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp)})
    store = QdrantStore(dimension=embedder.dimension, path=tmp / "q")
    Ingestor(embedder, store, settings.ingest, progress=False).ingest(str(demo_source()), DEMO_SITE)
    comp = build_components(settings, providers={"local": ScriptedProvider("local")}, embedder=embedder, store=store,
                            llm=FunctionLLM(answer))
    srv = ThreadedServer(create_app(settings, comp, close_components=False))
    out: dict[str, object] = {}
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for mode in ("list", "summarize"):
                params = {"query": "vegetarian dinner ideas", "site": DEMO_SITE, "streaming": "false", "mode": mode}
                assert c.get("/ask", params=params).headers["x-nlweb-cache"] == "miss"
                assert c.get("/ask", params=params).headers["x-nlweb-cache"] == "hit"
                out[f"ask_{mode}_hit"] = timed(lambda: c.get("/ask", params=params), 50)
            body = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            sampled = {**body, "temperature": 1}  # not cacheable: every one goes through the router to the engine
            c.post("/v1/chat/completions", json=body)
            out["chat_pass_through"] = timed(lambda: c.post("/v1/chat/completions", json=sampled), 300)
            out["chat_hit"] = timed(lambda: c.post("/v1/chat/completions", json=body), 300)
    finally:
        srv.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
