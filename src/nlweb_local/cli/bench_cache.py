"""`nlweb-local bench cache`: what the caches are worth on a workload shaped like real traffic, in one run.

Workload: `--requests` (2,000) chat requests at temperature 0 over `--prompts` (300) distinct prompts, drawn
by a Zipf law (`--zipf-s` 1.0: a few prompts are asked often, most rarely); `--paraphrases` (30 %) of them
are worded as a paraphrase of their prompt. Prompts and paraphrases are the hand-written pairs of
benchmarks/data/cache_pairs*.jsonl (`--data`; in a checkout): a pair's question, and its near-misses as
distinct prompts of their own (a semantic cache must not answer them with their twin's answer).

They go to the whole gateway app in process (`build_components` -> `create_app`, telemetry and ledger on,
through httpx's ASGI transport) over a scripted engine that answers at once, with an answer of each
prompt's own: the figures are the cache's and the gateway's, not a model's, and a wrong semantic hit
shows as a wrong answer. After each request the same request made uncacheable (temperature 0.7) passes
through the gateway to the engine: the pass-through, timed under the same conditions.

Printed: hit rates (exact; semantic with `--semantic`, and its wrong answers), next to the best an exact
cache can do on the workload (every repeat of a text a hit); the median time of a hit and of the
pass-through, and their ratio (target ≤ 1.2: a hit costs no more than passing through the gateway); for
/ask, the median time of a cached answer on the demo site (MiniLM, embedded Qdrant, a scripted ranker;
target ≤ 50 ms). `--redis URL` keeps the caches in that Redis (chat entries in a namespace of the run's
own). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from itertools import accumulate
from pathlib import Path
from typing import Any

from ..config.settings import Settings
from ..core.errors import BadRequestError

TARGETS = {"hit_vs_pass_through": 1.2, "ask_cached_median_ms": 50.0}
DATA = Path(__file__).resolve().parents[3] / "benchmarks" / "data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bench cache")
    g.add_argument("--requests", type=int, default=2000, help="chat requests in the workload (default 2000)")
    g.add_argument("--prompts", type=int, default=300, help="distinct prompts (default 300)")
    g.add_argument("--paraphrases", type=float, default=0.3, help="share of requests worded as a paraphrase (default 0.3)")
    g.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent of prompt popularity (default 1.0)")
    g.add_argument("--semantic", action="store_true", help="turn the semantic cache on (loads the embedding model)")
    g.add_argument("--ask-questions", type=int, default=10, help="/ask questions on the demo site, each asked once "
                   "and then answered from the cache --ask-repeats times (0: no /ask part; default 10)")
    g.add_argument("--ask-repeats", type=int, default=5, help="cached answers timed per /ask question (default 5)")
    g.add_argument("--redis", metavar="URL", help="keep the caches in this Redis instead of in process")
    g.add_argument("--data", metavar="DIR", default=str(DATA), help="folder of cache_pairs*.jsonl (default: the "
                   "checkout's benchmarks/data)")
    g.add_argument("--seed", type=int, default=17)


# -- the workload -------------------------------------------------------------------------------------
def prompt_pool(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Distinct prompts (each pair's first question, and near-misses' second) and each prompt's paraphrases."""
    files = sorted(folder.glob("cache_pairs*.jsonl"))
    if not files:
        raise BadRequestError(f"no cache_pairs*.jsonl in {folder}: run from a checkout, or pass --data DIR")
    prompts: dict[str, None] = {}
    paraphrases: dict[str, list[str]] = {}
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                pair = json.loads(line)
                prompts.setdefault(pair["a"])
                if pair["same"]:
                    paraphrases.setdefault(pair["a"], []).append(pair["b"])
                else:
                    prompts.setdefault(pair["b"])
    return [p for p in prompts if p not in {b for bs in paraphrases.values() for b in bs}], paraphrases


def workload(pool: list[str], paraphrases: dict[str, list[str]], *, requests: int, prompts: int, share: float,
             s: float, seed: int) -> list[tuple[str, str]]:
    """(text to send, the prompt it stands for), `requests` of them."""
    if not 1 <= prompts <= len(pool):
        raise BadRequestError(f"--prompts must be between 1 and {len(pool)} (the prompts the data holds)")
    if requests < 1 or not 0 <= share <= 1 or s < 0:
        raise BadRequestError("--requests must be at least 1, --paraphrases in [0, 1], --zipf-s not negative")
    rng = random.Random(seed)
    chosen = rng.sample(pool, prompts)  # popularity rank = position
    worded = [p for p in chosen if p in paraphrases]
    weights = lambda n: list(accumulate(1 / (k + 1) ** s for k in range(n)))  # noqa: E731
    all_w, para_w = weights(len(chosen)), weights(len(worded))
    out = []
    for _ in range(requests):
        if worded and rng.random() < share:
            prompt = rng.choices(worded, cum_weights=para_w)[0]
            out.append((rng.choice(paraphrases[prompt]), prompt))
        else:
            prompt = rng.choices(chosen, cum_weights=all_w)[0]
            out.append((prompt, prompt))
    return out


def _engine(answers: dict[str, str]) -> Any:
    """A scripted engine that answers each prompt (or paraphrase) with that prompt's own answer, at once."""
    from ..providers.testing import ScriptedProvider

    class Engine(ScriptedProvider):
        def stream(self, request):
            self.text = answers.get(request.messages[-1].content, "no such prompt")
            return super().stream(request)

    return Engine("local")


class _Nothing:
    """Inert embedder and store for a run without /ask or the semantic cache."""

    dimension = 2

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[1.0, 0.0] for _ in texts]

    def sites(self) -> list:
        return []

    def count(self) -> int:
        return 0


def _median_ms(xs: list[float]) -> float | None:
    return round(statistics.median(xs) * 1000, 3) if xs else None


# -- the run ------------------------------------------------------------------------------------------
async def _chat(client: Any, work: list[tuple[str, str]], answers: dict[str, str], headers: dict[str, str]) -> dict:
    times: dict[str, list[float]] = {"hit": [], "semantic": [], "miss": [], "pass": []}
    wrong = 0
    for text, prompt in work:
        body = {"model": "auto", "temperature": 0, "max_tokens": 32, "messages": [{"role": "user", "content": text}]}
        t0 = time.perf_counter()
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        t1 = time.perf_counter()
        p = await client.post("/v1/chat/completions", json={**body, "temperature": 0.7}, headers=headers)
        times["pass"].append(time.perf_counter() - t1)
        if r.status_code != 200 or p.status_code != 200:
            raise RuntimeError(f"the gateway answered {r.status_code}/{p.status_code}: {r.text[:200]}")
        outcome = r.headers.get("x-nlweb-cache", "")
        kind = "hit" if outcome == "hit" else "semantic" if outcome.startswith("semantic-hit") else "miss"
        times[kind].append(t1 - t0)
        if kind == "semantic" and r.json()["choices"][0]["message"]["content"] != answers[prompt]:
            wrong += 1
    n = len(work)
    hits = times["hit"] + times["semantic"]
    return {
        "hit_rate": {"exact": round(len(times["hit"]) / n, 4),
                     "semantic": round(len(times["semantic"]) / n, 4),
                     "total": round(len(hits) / n, 4)},
        "exact_hit_rate_ceiling": round(1 - len({t for t, _ in work}) / n, 4),
        "semantic_wrong_answers": wrong,
        "latency_ms": {"hit_median": _median_ms(times["hit"]), "semantic_hit_median": _median_ms(times["semantic"]),
                       "miss_median": _median_ms(times["miss"]), "pass_through_median": _median_ms(times["pass"])},
        "hit_vs_pass_through": (round(statistics.median(times["hit"]) / statistics.median(times["pass"]), 3)
                                if times["hit"] else None),
    }


async def _ask(client: Any, questions: list[str], repeats: int, site: str) -> dict:
    cached: list[float] = []
    for q in questions:
        params = {"query": q, "site": site, "streaming": "false"}
        first = await client.get("/ask", params=params)
        if first.status_code != 200:
            raise RuntimeError(f"/ask answered {first.status_code}: {first.text[:200]}")
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = await client.get("/ask", params=params)
            if r.headers.get("x-nlweb-cache") == "hit":
                cached.append(time.perf_counter() - t0)
    return {"questions": len(questions), "cached_answers": len(cached), "cached_median_ms": _median_ms(cached),
            "cached_p95_ms": round(sorted(cached)[int(0.95 * (len(cached) - 1))] * 1000, 3) if cached else None}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from .bench import QUESTIONS

    pool, paraphrases = prompt_pool(Path(args.data))
    work = workload(pool, paraphrases, requests=args.requests, prompts=args.prompts, share=args.paraphrases,
                    s=args.zipf_s, seed=args.seed)
    if not 0 <= args.ask_questions <= len(QUESTIONS) or args.ask_repeats < 1:
        raise BadRequestError(f"--ask-questions must be between 0 and {len(QUESTIONS)}, --ask-repeats at least 1")
    answers = {prompt: f"The answer to prompt {i}." for i, prompt in enumerate(pool)}
    answers.update({b: answers[a] for a, bs in paraphrases.items() for b in bs if a in answers})
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(_run(args, settings, Path(tmp), work, answers, QUESTIONS[: args.ask_questions]))
    print(f"{figures['requests']} requests over {figures['prompts']} prompts ({figures['paraphrase_share']:.0%} "
          f"paraphrased, Zipf s={figures['zipf_s']}), caches {figures['backend']}"
          f"{', semantic on' if figures['semantic'] else ''}")
    h, lat = figures["hit_rate"], figures["latency_ms"]
    print(f"  hit rate: exact {h['exact']:.1%}, semantic {h['semantic']:.1%}, total {h['total']:.1%} "
          f"(an exact cache can reach {figures['exact_hit_rate_ceiling']:.1%} here); "
          f"wrong semantic answers: {figures['semantic_wrong_answers']}")
    print(f"  latency: hit {lat['hit_median']} ms, pass-through {lat['pass_through_median']} ms, miss "
          f"{lat['miss_median']} ms (medians): hit/pass-through = {figures['hit_vs_pass_through']} "
          f"(target <= {TARGETS['hit_vs_pass_through']})")
    if figures["ask"] is not None:
        a = figures["ask"]
        print(f"  /ask on the demo site: cached answer median {a['cached_median_ms']} ms, p95 {a['cached_p95_ms']} ms "
              f"over {a['cached_answers']} (target <= {TARGETS['ask_cached_median_ms']:.0f} ms)")
    print(json.dumps(figures))
    return 0


async def _run(args: argparse.Namespace, settings: Settings, tmp: Path, work: list[tuple[str, str]],
               answers: dict[str, str], questions: list[str]) -> dict:
    import httpx

    from ..providers.testing import FunctionLLM
    from ..server.app import create_app
    from ..server.components import build_components, build_embedder, build_store

    settings.data_dir = str(tmp)
    settings.telemetry.ledger_path = None
    settings.telemetry.alerts.enabled = False
    settings.llm.deployments = []
    settings.llm.embedded_enabled, settings.llm.embedded_name = True, "local"
    settings.llm.search_deployment = None
    settings.cache.enabled = True
    settings.cache.redis_url = None
    settings.cache_store.redis_url = args.redis
    settings.semantic_cache.enabled = args.semantic
    need_model = args.semantic or bool(questions)
    embedder: Any = build_embedder(settings) if need_model else _Nothing()
    store: Any = _Nothing()
    if questions:
        from ..ingest.demo import DEMO_SITE, demo_source
        from ..ingest.pipeline import Ingestor

        settings.store.url, settings.store.path = None, str(tmp / "qdrant")
        store = build_store(settings, embedder)
        Ingestor(embedder, store, settings.ingest, progress=False).ingest(str(demo_source()), DEMO_SITE)

    def rank(task: Any, prompt: str, schema: Any) -> str:
        return json.dumps({"score": 80, "description": "relevant"}) if task.value == "rank" else "A summary."

    comp = build_components(settings, providers={"local": _engine(answers)}, embedder=embedder, store=store,
                            llm=FunctionLLM(rank))
    headers = {"x-nlweb-cache-namespace": "bench-" + uuid.uuid4().hex[:12]} if args.redis else {}
    try:
        transport = httpx.ASGITransport(app=create_app(settings, comp, close_components=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=60) as client:
            chat = await _chat(client, work, answers, headers)
            ask = await _ask(client, questions, args.ask_repeats, DEMO_SITE) if questions else None
    finally:
        await comp.close()
        if questions:
            store.close()
    return {"requests": len(work), "prompts": args.prompts, "paraphrase_share": args.paraphrases,
            "zipf_s": args.zipf_s, "backend": "redis" if args.redis else "in-process", "semantic": args.semantic,
            **chat, "ask": ask, "targets": TARGETS}
