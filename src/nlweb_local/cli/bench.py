"""`nlweb-local bench ask`: time to first result and to the end of /ask on the demo site, and ingestion speed.
`nlweb-local bench overload`: overload, honest back-pressure and recovery (`bench_overload.py`).
`nlweb-local bench cache`: cache hit rates and what a hit costs on a Zipf workload (`bench_cache.py`).
`nlweb-local bench fleet`: balancing over simulated engines, one 3x slower; affinity's TTFT over real llama_cpp.server processes; the fleet layer's overhead (`bench_fleet.py`).
(The gateway's overhead benchmark is a developer tool: `python benchmarks/bench_gateway.py`.)"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from ..config.settings import Settings
from . import bench_cache, bench_fleet, bench_overload

QUESTIONS = [
    "vegetarian dinner that is quick to make",
    "spicy soup for a cold evening",
    "a warm waterproof jacket for winter hiking",
    "family events this summer",
    "lightweight tent for backpacking",
    "dessert without eggs",
    "podcast episodes about trail running",
    "cheap camping stove",
    "gluten-free bread recipes",
    "cooking class for beginners",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks that print figures")
    p.add_argument("what", choices=["ask", "overload", "cache", "fleet"], help="ask: /ask latency on the demo site plus "
                   "ingestion items/s; overload: closed-loop /ask overload against a real serve, then calm: refusals, "
                   "Retry-After honesty, degraded answers, recovery; cache: hit rates on a Zipf workload with "
                   "paraphrases, a hit's latency vs the pass-through, a cached /ask answer's; fleet: p95 with P2C vs "
                   "round-robin over simulated engines, one 3x slower, TTFT with affinity vs without over real "
                   "llama_cpp.server processes, and the fleet layer's overhead (the gateway's overhead: "
                   "python benchmarks/bench_gateway.py --help, in a checkout)")
    p.add_argument("--mode", choices=["list", "summarize", "generate"], default="list")
    p.add_argument("--questions", type=int, default=len(QUESTIONS), help="how many of the fixed questions to run")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    bench_overload.add_arguments(p)
    bench_cache.add_arguments(p)
    bench_fleet.add_arguments(p)
    p.set_defaults(func=run)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p * (len(xs) - 1)))))]


async def _ask(url: str, q: str, mode: str) -> tuple[float | None, float, int]:
    import aiohttp

    t0 = time.perf_counter()
    first = None
    n = 0
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/ask", params={"query": q, "generate_mode": mode, "site": "all"}) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    m = json.loads(line[6:])
                    if m.get("message_type") == "result" and isinstance(m.get("content"), list):
                        n += len(m["content"])
                        if first is None:
                            first = time.perf_counter() - t0
    return first, time.perf_counter() - t0, n


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.what == "overload":
        return bench_overload.run(args, settings)
    if args.what == "cache":
        return bench_cache.run(args, settings)
    if args.what == "fleet":
        return bench_fleet.run(args, settings)
    from ..ingest.demo import DEMO_SITE, demo_source
    from ..ingest.pipeline import Ingestor
    from ..server.app import create_app
    from ..server.threaded import ThreadedServer
    from ..server.components import build_components

    with tempfile.TemporaryDirectory() as tmp:
        settings.store.path = str(Path(tmp) / "qdrant")
        settings.store.url = None
        comp = build_components(settings)
        report = Ingestor(comp.embedder, comp.store, settings.ingest, progress=False).ingest(str(demo_source()), DEMO_SITE)
        ingest_rate = report.loaded / report.seconds if report.seconds else 0.0
        app = create_app(settings, comp, close_components=True)
        server = ThreadedServer(app)
        url = server.url
        firsts, totals, counts = [], [], []
        qs = QUESTIONS[: args.questions]
        asyncio.run(_ask(url, "warm-up question", args.mode))
        for q in qs:
            first, total, n = asyncio.run(_ask(url, q, args.mode))
            totals.append(total)
            counts.append(n)
            if first is not None:
                firsts.append(first)
            if not args.json:
                print(f"  {total:6.2f}s total  {first if first is not None else float('nan'):6.2f}s first  {n:2d} results  {q}")
        server.stop()
    figures = {
        "questions": len(qs), "mode": args.mode,
        "first_result_s": {"median": round(statistics.median(firsts), 3) if firsts else None,
                           "p95": round(_pct(firsts, 0.95), 3) if firsts else None},
        "complete_s": {"median": round(statistics.median(totals), 3), "p95": round(_pct(totals, 0.95), 3)},
        "mean_results": round(statistics.mean(counts), 1),
        "ingest": {"items": report.loaded, "seconds": round(report.seconds, 2), "items_per_s": round(ingest_rate, 1)},
        "llm_rank_limit": settings.search.llm_rank_limit, "num_candidates": settings.search.num_candidates,
    }
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))
    return 0
