"""`nlweb-local eval rank|curve|cache`: rank fixed candidates with exactly the code /ask uses, for scoring;
measure the semantic cache (`cache`: see cli/eval_cache.py).

Input: JSON lines, one per (query, candidate): {query, prev, url, site, name, schema_object, label?}.

`rank` writes one line per query {"query", "ranking": [{"url", "score"}], "seconds"} — the format of
../shared/eval/score.py. Retrieval is skipped (the candidates are given); similarity is computed with
the configured embedder, then the pipeline decontextualises and ranks as it does for /ask.

`curve` measures hybrid ranking: for each band size (the `llm_rank_limit` most similar candidates go to
the cloud model, played by the replay provider from the labels; the rest are ordered by similarity
below them) it prints NDCG@10 (score.py's formula), cloud tokens, their share of what a cloud-only
ranking would send, and cost. Two cloud-only baselines are printed: NLWeb's (its ranking prompt,
~190 tokens of instructions, with the whole schema.org object of every candidate) and this project's
own prompt with the trimmed item text for every candidate. `--target-share` calibrates the band: the
largest band whose share of the chosen baseline stays within the target.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

from ..config.settings import Settings
from ..core.errors import SourceError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate ranking on labelled candidates, or the semantic cache's precision",
                       description="rank: for each query in --data, rank its given candidates with the /ask ranking "
                       "code and write one line per query to --out. curve: hybrid ranking's NDCG@10 against cloud "
                       "share. cache: the semantic cache's precision and hit rate along the similarity threshold, "
                       "with and without the lexical vetoes, over labelled question pairs (e.g. "
                       "benchmarks/data/cache_pairs.jsonl); the last line is JSON with the configured threshold's "
                       "precision and hit_rate. answers: the unsupported-fact rate, citation accuracy and restating "
                       "answers of summaries and generated answers (last line JSON).")
    p.add_argument("what", choices=["rank", "curve", "cache", "realdata", "answers"],
                   help="rank: write rankings; curve: hybrid NDCG@10 against cloud share; cache: semantic cache precision; "
                        "realdata: P@5 of labelled questions over real sites through /ask (--data a folder, e.g. "
                        "benchmarks/data/realdata; see cli/eval_realdata.py); answers: are summaries and generated "
                        "answers grounded in the items (--data a folder, e.g. benchmarks/data/answers; see cli/eval_answers.py)")
    p.add_argument("--data", required=True, help="JSON lines: rank/curve {query, prev, url, site, name, schema_object, "
                   "label?}; cache {a, b, same, kind}")
    p.add_argument("--out", help="rankings file to write (rank; required there); realdata: what each question showed")
    p.add_argument("--bands", default="0,5,10,15,20,25,30,40,50",
                   help="curve: band sizes (candidates per query sent to the cloud model), comma-separated")
    p.add_argument("--target-share", type=float, help="curve: print the band whose cloud-token share stays within this")
    p.add_argument("--baseline", choices=["nlweb", "trimmed"], default="nlweb",
                   help="curve: the cloud-only ranking the share is of (default nlweb: NLWeb's prompt with the whole item)")
    p.add_argument("--strategy", choices=["local", "replay", "similarity"], default="local",
                   help="local: the embedded model (default); replay: the recorded cloud answers in --data "
                        "(stands in for the cloud model, priced as gpt-4.1); similarity: embeddings only")
    p.add_argument("--deployment", metavar="D", help="rank --strategy local: rank with this deployment of "
                   "llm.deployments instead of the embedded engine (e.g. the one serving an A/B variant, NAME@VERSION); "
                   "answers: write (and rank) with it, pinned as llm.search_deployment")
    p.add_argument("--modes", help="answers: comma-separated /ask modes to judge (default summarize,generate)")
    p.add_argument("--rejudge", metavar="FILE", help="answers: judge the answers recorded by an earlier run (its --out) "
                   "again, without running the model")
    p.add_argument("--deadline", type=float, metavar="S", help="answers: seconds each LLM call of /ask may take "
                   "(default: search.llm_deadline_s)")
    p.add_argument("--llm-rank-limit", type=int, help="candidates the LLM scores (default: search.llm_rank_limit)")
    p.add_argument("--llm-weight", type=float, help="share of the LLM score (default: search.llm_weight; replay: 1.0)")
    p.add_argument("--limit", type=int, help="only the first N queries (cache: pairs)")
    p.add_argument("--thresholds", default="0.70:0.98:0.02",
                   help="cache: similarity thresholds, LOW:HIGH:STEP or comma-separated (the configured one is added)")
    p.add_argument("--target", type=float, default=0.98,
                   help="cache: least precision the recommended threshold must keep (default 0.98)")
    p.set_defaults(func=run)


def _read(path: Path) -> "OrderedDict[str, list[dict]]":
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            r["query"], r["url"], r["schema_object"]  # noqa: B018 - required fields
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SourceError(f"{path}:{n}: expected {{query, url, schema_object, ...}} ({e})") from None
        groups.setdefault(r["query"], []).append(r)
    if not groups:
        raise SourceError(f"{path} holds no candidates")
    return groups


# NLWeb's default ranking prompt around the query and the item: ~760 characters of instructions plus the
# answer structure (its Ranking.RANKING_PROMPT); the item goes in as the JSON of its schema.org object.
NLWEB_PROMPT_CHARS = 760
GPT41_PRICE = (2.0, 8.0)  # $ per 1M input / output tokens


def ndcg_at(ranked_urls: list[str], labels: dict[str, float], k: int = 10) -> float:
    """score.py's NDCG@k: gain 2^(score/25) − 1, discount log2(position + 2)."""
    gains = {u: 2 ** (s / 25) - 1 for u, s in labels.items()}
    dcg = sum(gains.get(u, 0.0) / math.log2(p + 2) for p, u in enumerate(ranked_urls[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(p + 2) for p, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def _cloud_cost(provider) -> float:
    """What the replayed calls would have cost at gpt-4.1's prices."""
    return round((provider.prompt_tokens * GPT41_PRICE[0] + provider.completion_tokens * GPT41_PRICE[1]) / 1e6, 4)


def _nlweb_tokens(query: str, rows: list[dict]) -> int:
    return sum((NLWEB_PROMPT_CHARS + len(query) + len(json.dumps(r["schema_object"]))) // 4 for r in rows)


async def _candidates(embedder, rows: list[dict]):
    from ..core.item_text import item_text
    from ..core.types import Item, ScoredItem
    from ..search.followup import refers_back

    prev = rows[0].get("prev") or []
    if not refers_back(rows[0]["query"]):  # a new topic is retrieved by itself, as /ask does
        prev = []
    vectors = await asyncio.to_thread(embedder.embed, [" ".join([*prev, rows[0]["query"]])] +
                                      [item_text(r["schema_object"]) for r in rows])
    qv = vectors[0]
    return [ScoredItem(Item(r["url"], r.get("name", ""), r.get("site", ""), json.dumps(r["schema_object"])),
                       sum(a * b for a, b in zip(qv, v))) for r, v in zip(rows, vectors[1:])]


async def _rank(pipeline, llm, q: str, rows: list[dict], cands) -> list:
    from ..search.events import AskRequest
    from ..search.followup import refers_back

    prev = rows[0].get("prev") or []
    req = AskRequest(query=q, prev=list(prev))
    if llm is None and prev and refers_back(q):  # no model to decontextualise a follow-up with: the conversation is the query
        req.decontextualized_query = " ".join([*prev, q])
    _, ranked, _ = await pipeline.rank_fixed(req, cands)
    return ranked


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.what == "curve":
        return await _curve(args, settings)
    if args.what == "cache":
        from .eval_cache import run_cache_eval

        return await run_cache_eval(args, settings)
    if args.what == "realdata":
        from .eval_realdata import run_realdata_eval

        return await run_realdata_eval(args, settings)
    if args.what == "answers":
        from .eval_answers import run_answers_eval

        return await run_answers_eval(args, settings)
    if not args.out:
        raise SourceError("eval rank needs --out FILE (the rankings to write)")
    from ..providers.replay import ReplayProvider
    from ..providers.structured import ProviderStructuredLLM
    from ..search.pipeline import AskPipeline
    from ..providers.registry import build_provider
    from ..server.components import build_embedder

    groups = _read(Path(args.data))
    s = settings.search.model_copy()
    if args.llm_rank_limit is not None:
        s.llm_rank_limit = args.llm_rank_limit
    provider = None
    if args.strategy == "replay":
        provider = ReplayProvider(r for rows in groups.values() for r in rows)
        s.llm_weight = 1.0 if args.llm_weight is None else args.llm_weight
        s.calibrate_llm = False  # the recorded scores are on NLWeb's 0-100 scale already
    elif args.strategy == "local" and getattr(args, "deployment", None):
        provider = build_provider(_deployment(settings, args.deployment))
        if args.llm_weight is not None:
            s.llm_weight = args.llm_weight
    elif args.strategy == "local":
        embedded = settings.llm.embedded_deployment()
        if embedded is None:
            raise SourceError("eval rank --strategy local ranks with the embedded engine; set llm.embedded_enabled: true")
        provider = build_provider(embedded)
        if args.llm_weight is not None:
            s.llm_weight = args.llm_weight
    else:
        s.llm_rank_limit = 0
    s.rank_cache_entries = 0  # every query measured cold
    embedder = build_embedder(settings)
    llm = ProviderStructuredLLM(provider) if provider is not None else None
    pipeline = AskPipeline(llm, embedder, store=None, settings=s)  # type: ignore[arg-type]
    queries = list(groups.items())[: args.limit] if args.limit else list(groups.items())
    with open(args.out, "w") as out:
        for q, rows in queries:
            t0 = time.perf_counter()
            ranked = await _rank(pipeline, llm, q, rows, await _candidates(embedder, rows))
            secs = time.perf_counter() - t0
            out.write(json.dumps({"query": q, "ranking": [{"url": r.item.url, "score": r.score} for r in ranked],
                                  "seconds": round(secs, 3)}) + "\n")
            print(f"{secs:6.2f}s  {len(rows):3d} candidates  {q[:70]}", file=sys.stderr)
    summary = {"queries": len(queries), "strategy": args.strategy, "llm_rank_limit": s.llm_rank_limit,
               "llm_weight": s.llm_weight, "out": args.out}
    if isinstance(provider, ReplayProvider):
        summary.update(cloud_calls=provider.calls, cloud_prompt_tokens=provider.prompt_tokens,
                       cloud_cost_usd=_cloud_cost(provider))
    print(json.dumps(summary))
    if provider is not None:
        await provider.close()
    return 0


def _deployment(settings: Settings, name: str):
    """The deployment `name` of llm.deployments — or the one serving the registry version `name`
    (NAME@VERSION) — with its model file from the registry when it `serves` a version."""
    deployments = settings.llm.all_deployments()
    d = next((d for d in deployments if d.name == name), None) or next((d for d in deployments if d.serves == name), None)
    if d is None:
        raise SourceError(f"--deployment {name!r} is neither a deployment nor a version a deployment serves "
                          f"({', '.join(x.name for x in deployments) or 'none configured'})")
    if not d.serves:
        return d
    from ..registry import build_registry

    registry = build_registry(settings)
    try:
        return registry.deployment(d)
    finally:
        registry.close()


async def _curve(args: argparse.Namespace, settings: Settings) -> int:
    """Hybrid ranking's quality against cloud use, one row per band size (see the module's doc)."""
    from ..providers.replay import ReplayProvider
    from ..providers.structured import ProviderStructuredLLM
    from ..search.pipeline import AskPipeline
    from ..server.components import build_embedder

    try:
        bands = sorted({int(b) for b in args.bands.split(",") if b.strip()})
    except ValueError:
        raise SourceError(f"--bands {args.bands!r}: expected comma-separated whole numbers, e.g. 0,10,25") from None
    groups = _read(Path(args.data))
    if any("label" not in r for rows in groups.values() for r in rows):
        raise SourceError(f"{args.data}: eval curve needs a label {{score}} on every candidate (the replayed cloud answers)")
    queries = list(groups.items())[: args.limit] if args.limit else list(groups.items())
    everything = max(len(rows) for _, rows in queries)
    bands = sorted({*bands, everything})  # the cloud-only row: the trimmed baseline, measured like the rest
    embedder = build_embedder(settings)
    cands = {q: await _candidates(embedder, rows) for q, rows in queries}
    labels = {q: {r["url"]: float(r["label"]["score"]) for r in rows} for q, rows in queries}
    nlweb_base = sum(_nlweb_tokens(q, rows) for q, rows in queries)
    rows_out: list[dict] = []
    for band in bands:
        provider = ReplayProvider(r for _, rows in queries for r in rows)
        llm = ProviderStructuredLLM(provider)
        s = settings.search.model_copy(update={"llm_rank_limit": band, "llm_weight": 1.0, "calibrate_llm": False,
                                               "rank_cache_entries": 0})
        pipeline = AskPipeline(llm, embedder, store=None, settings=s)  # type: ignore[arg-type]
        scores = []
        for q, rows in queries:
            ranked = await _rank(pipeline, llm, q, rows, cands[q])
            scores.append(ndcg_at([r.item.url for r in ranked], labels[q]))
        rows_out.append({"band": band, "ndcg@10": round(statistics.mean(scores), 4), "cloud_calls": provider.calls,
                         "cloud_prompt_tokens": provider.prompt_tokens,
                         "cloud_cost_usd": _cloud_cost(provider)})
        await provider.close()
    trimmed_base = next(r["cloud_prompt_tokens"] for r in rows_out if r["band"] == everything)
    print(f"{len(queries)} queries, {sum(len(r) for _, r in queries)} candidates; cloud-only prompt tokens: "
          f"NLWeb's prompt with whole items {nlweb_base:,}, this project's prompt with trimmed items {trimmed_base:,}")
    print(f"{'band':>5} {'NDCG@10':>8} {'cloud calls':>11} {'cloud tokens':>12} {'share(nlweb)':>12} "
          f"{'share(trimmed)':>14} {'cost $':>8}")
    for r in rows_out:
        r["share_of_nlweb_cloud_only"] = round(r["cloud_prompt_tokens"] / nlweb_base, 4)
        r["share_of_trimmed_cloud_only"] = round(r["cloud_prompt_tokens"] / trimmed_base, 4)
        print(f"{r['band']:>5} {r['ndcg@10']:>8.3f} {r['cloud_calls']:>11} {r['cloud_prompt_tokens']:>12,} "
              f"{r['share_of_nlweb_cloud_only']:>12.1%} {r['share_of_trimmed_cloud_only']:>14.1%} {r['cloud_cost_usd']:>8.4f}")
    summary: dict = {"queries": len(queries), "nlweb_cloud_only_tokens": nlweb_base,
                     "trimmed_cloud_only_tokens": trimmed_base, "curve": rows_out}
    if args.target_share is not None:
        key = f"share_of_{args.baseline}_cloud_only"
        within = [r for r in rows_out if r[key] <= args.target_share]
        best = max(within, key=lambda r: r["band"]) if within else None
        summary["calibrated"] = {"target_share": args.target_share, "baseline": args.baseline,
                                 "llm_rank_limit": best["band"] if best else 0,
                                 "ndcg@10": best["ndcg@10"] if best else None}
        print(f"calibrated for ≤{args.target_share:.0%} of the {args.baseline} cloud-only tokens: "
              f"search.llm_rank_limit = {best['band'] if best else 0}" +
              (f" (NDCG@10 {best['ndcg@10']:.3f})" if best else " (no band fits; 0 = no cloud ranking)"))
    print(json.dumps(summary))
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))
