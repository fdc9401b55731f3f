"""`nlweb-local eval rank`: rank fixed candidates with exactly the code /ask uses, for scoring.

Input: JSON lines, one per (query, candidate): {query, prev, url, site, name, schema_object, label?}.
Output: one line per query {"query", "ranking": [{"url", "score"}], "seconds"} — the format of
../shared/eval/score.py. Retrieval is skipped (the candidates are given); similarity is computed with
the configured embedder, then the pipeline decontextualises and ranks as it does for /ask.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

from ..config.settings import Settings
from ..core.errors import SourceError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate ranking on labelled candidates (for ../shared/eval/score.py)",
                       description="rank: for each query in --data, rank its given candidates with the /ask ranking "
                       "code and write one line per query to --out.")
    p.add_argument("what", choices=["rank"])
    p.add_argument("--data", required=True, help="JSON lines {query, prev, url, site, name, schema_object, label?}")
    p.add_argument("--out", required=True, help="rankings file to write")
    p.add_argument("--strategy", choices=["local", "replay", "similarity"], default="local",
                   help="local: the embedded model (default); replay: the recorded cloud answers in --data "
                        "(stands in for the cloud model, priced as gpt-4.1); similarity: embeddings only")
    p.add_argument("--llm-rank-limit", type=int, help="candidates the LLM scores (default: search.llm_rank_limit)")
    p.add_argument("--llm-weight", type=float, help="share of the LLM score (default: search.llm_weight; replay: 1.0)")
    p.add_argument("--limit", type=int, help="only the first N queries")
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


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from ..core.item_text import item_text
    from ..core.types import Item, ScoredItem
    from ..providers.replay import ReplayProvider
    from ..providers.structured import ProviderStructuredLLM
    from ..search.events import AskRequest
    from ..search.pipeline import AskPipeline
    from ..server.components import build_embedded, build_embedder

    groups = _read(Path(args.data))
    s = settings.search.model_copy()
    if args.llm_rank_limit is not None:
        s.llm_rank_limit = args.llm_rank_limit
    provider = None
    if args.strategy == "replay":
        provider = ReplayProvider(r for rows in groups.values() for r in rows)
        s.llm_weight = 1.0 if args.llm_weight is None else args.llm_weight
        s.calibrate_llm = False  # the recorded scores are on NLWeb's 0-100 scale already
    elif args.strategy == "local":
        provider = build_embedded(settings)
        if args.llm_weight is not None:
            s.llm_weight = args.llm_weight
    else:
        s.llm_rank_limit = 0
    embedder = build_embedder(settings)
    llm = ProviderStructuredLLM(provider) if provider is not None else None
    pipeline = AskPipeline(llm, embedder, store=None, settings=s)  # type: ignore[arg-type]
    queries = list(groups.items())[: args.limit] if args.limit else list(groups.items())
    with open(args.out, "w") as out:
        for q, rows in queries:
            t0 = time.perf_counter()
            prev = rows[0].get("prev") or []
            vectors = await asyncio.to_thread(embedder.embed, [" ".join([*prev, q])] +
                                              [item_text(r["schema_object"]) for r in rows])
            qv = vectors[0]
            cands = [ScoredItem(Item(r["url"], r.get("name", ""), r.get("site", ""), json.dumps(r["schema_object"])),
                                sum(a * b for a, b in zip(qv, v))) for r, v in zip(rows, vectors[1:])]
            req = AskRequest(query=q, prev=list(prev))
            if llm is None and prev:  # no model to decontextualise with: the conversation is the query
                req.decontextualized_query = " ".join([*prev, q])
            _, ranked, _ = await pipeline.rank_fixed(req, cands)
            secs = time.perf_counter() - t0
            out.write(json.dumps({"query": q, "ranking": [{"url": r.item.url, "score": r.score} for r in ranked],
                                  "seconds": round(secs, 3)}) + "\n")
            print(f"{secs:6.2f}s  {len(rows):3d} candidates  {q[:70]}", file=sys.stderr)
    summary = {"queries": len(queries), "strategy": args.strategy, "llm_rank_limit": s.llm_rank_limit,
               "llm_weight": s.llm_weight, "out": args.out}
    if isinstance(provider, ReplayProvider):
        summary.update(cloud_calls=provider.calls, cloud_prompt_tokens=provider.prompt_tokens,
                       cloud_cost_usd=round((provider.prompt_tokens * 2.0 + provider.completion_tokens * 8.0) / 1e6, 4))
    print(json.dumps(summary))
    if provider is not None:
        await provider.close()
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))
