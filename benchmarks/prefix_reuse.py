"""Prompt-prefix (KV cache) reuse of /ask on the demo site: prefill tokens the embedded llama.cpp engine did
not compute again, per /ask.

The real service as `serve` composes it (SmolLM2 in llama.cpp, MiniLM, embedded Qdrant with the demo site in
a temporary folder; no ledger), /ask's pipeline run in process for each of `nlweb-local bench ask`'s fixed
questions (list mode, the ranking cache off so every question ranks with the LLM). After each question the
engine's counters (`nlweb_prompt_tokens_total{deployment,kind}`, exact per call) say how many of its prompt
tokens came from the KV cache of the call before. The last line is one JSON object.

    .venv/bin/python benchmarks/prefix_reuse.py [--questions 10] [--mode list|summarize|generate]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    from nlweb_local.cli.bench import QUESTIONS
    from nlweb_local.config.settings import load_settings
    from nlweb_local.ingest.demo import DEMO_SITE, demo_source
    from nlweb_local.ingest.pipeline import Ingestor
    from nlweb_local.search.events import AskRequest
    from nlweb_local.server.components import build_components

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=len(QUESTIONS))
    ap.add_argument("--mode", choices=["list", "summarize", "generate"], default="list")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": tmp})
        settings.telemetry.ledger = False
        settings.search.rank_cache_entries = 0  # every question asks the LLM: reuse is the KV cache's alone
        comp = build_components(settings)
        Ingestor(comp.embedder, comp.store, settings.ingest, progress=False).ingest(str(demo_source()), DEMO_SITE)
        registry = comp.telemetry.metrics.registry
        name = settings.llm.embedded_name

        def counts() -> tuple[float, float]:
            get = lambda kind: registry.get_sample_value("nlweb_prompt_tokens_total",  # noqa: E731
                                                         {"deployment": name, "kind": kind}) or 0.0
            return get("reused"), get("computed")

        async def ask(q: str) -> float:
            t0 = time.perf_counter()
            async for _ in comp.pipeline.run(AskRequest(q, mode=args.mode)):
                pass
            return time.perf_counter() - t0

        async def run() -> list[dict]:
            await ask("warm-up question")
            rows = []
            for q in QUESTIONS[: args.questions]:
                r0, c0 = counts()
                seconds = await ask(q)
                r1, c1 = counts()
                rows.append({"question": q, "reused": int(r1 - r0), "computed": int(c1 - c0), "seconds": round(seconds, 2)})
                print(f"  {r1 - r0:5.0f} reused  {c1 - c0:5.0f} computed  {seconds:5.2f}s  {q}", flush=True)
            await comp.close()
            return rows

        rows = asyncio.run(run())
    reused = [r["reused"] for r in rows]
    prompt = [r["reused"] + r["computed"] for r in rows]
    figures = {"questions": len(rows), "mode": args.mode, "llm_rank_limit": settings.search.llm_rank_limit,
               "reused_per_ask": {"median": statistics.median(reused), "mean": round(statistics.mean(reused), 1)},
               "prompt_tokens_per_ask": {"median": statistics.median(prompt), "mean": round(statistics.mean(prompt), 1)},
               "reused_share": round(sum(reused) / sum(prompt), 3) if sum(prompt) else None}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
