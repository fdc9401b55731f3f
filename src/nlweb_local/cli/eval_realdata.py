"""`nlweb-local eval realdata --data DIR`: answer labelled questions over data nobody here wrote.

DIR holds the items as NLWeb's TSV (`url<TAB>schema.org JSON`, one file per site: the file's stem is the
site name) and `questions.jsonl`: {"query", "site", "relevant": [url, ...], "kind"}; a question with no
relevant url is one the site cannot answer (a good cut-off shows nothing for it). The repository's set
is benchmarks/data/realdata (NLWeb's Wikipedia sci-fi movies and schema.org's own examples; see its NOTICE).

Everything goes through the product's own code: the items are ingested into a temporary data folder
with the configured embedder, and each question is asked of the same /ask pipeline `serve` runs
(`build_components`), once per cut-off: the default rule (search/cutoff.py), the old fixed
`min_score` 51, and none (min_score 0: what the ranking alone would show). Printed per cut-off:

    (overall, then per site)
    P@5      relevant items among the first five shown / min(5, relevant items)  (answerable questions)
    NDCG@5   binary gains                                                           (answerable questions)
    hit@5    share of answerable questions with a relevant item among the first five shown
    shown    mean items shown for questions the site cannot answer (lower is better)

With `conversations.jsonl` ({"prev": [...], "query", "follow_up": bool}) beside them, it also prints how
often `search.followup.refers_back` tells a follow-up from a new topic.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ..config.settings import Settings
from ..core.errors import SourceError

CUTOFFS = (("default rule", None), ("fixed min_score 51", 51), ("no cut-off", 0))


def read_questions(data: Path, *, relevant: bool = True) -> list[dict]:
    """`data`/questions.jsonl: one {query, site} object a line, each with a `relevant` list of URLs unless
    `relevant` is False (`eval answers` judges answers against their items, not labels)."""
    shape = "{query, site, relevant: [url, ...]}" if relevant else "{query, site}"
    path = data / "questions.jsonl"
    if not path.exists():
        raise SourceError(f"{path}: no such file (expected {shape} lines next to the items)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
            if not isinstance(q["query"], str) or not isinstance(q["site"], str):
                raise TypeError("query and site must be strings")
            if relevant and not isinstance(q["relevant"], list):
                raise TypeError("relevant must be a list")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SourceError(f"{path}:{n}: expected {shape} ({e})") from None
        out.append(q)
    return out


def precision_at(shown: list[str], relevant: set[str], k: int = 5) -> float:
    return sum(u in relevant for u in shown[:k]) / min(k, len(relevant))


def ndcg_at(shown: list[str], relevant: set[str], k: int = 5) -> float:
    dcg = sum(1 / math.log2(p + 2) for p, u in enumerate(shown[:k]) if u in relevant)
    idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(relevant))))
    return dcg / idcg


def summarise(rows: list[tuple[dict, list[str]]]) -> dict:
    """Metrics over (question, urls shown in order)."""
    answerable = [(q, s) for q, s in rows if q["relevant"]]
    none = [(q, s) for q, s in rows if not q["relevant"]]
    p = [precision_at(s, set(q["relevant"])) for q, s in answerable]
    n = [ndcg_at(s, set(q["relevant"])) for q, s in answerable]
    hit = [any(u in set(q["relevant"]) for u in s[:5]) for q, s in answerable]
    return {"p@5": round(statistics.mean(p), 3) if p else None, "ndcg@5": round(statistics.mean(n), 3) if n else None,
            "hit@5": round(statistics.mean(hit), 3) if hit else None,
            "shown_unanswerable": round(statistics.mean(len(s) for _, s in none), 2) if none else None,
            "answerable": len(answerable), "unanswerable": len(none)}


async def _shown(pipeline, q: dict, min_score: int | None) -> list[tuple[str, int]]:
    from ..search.events import AskRequest, Results

    req = AskRequest(query=q["query"], sites=[q["site"]], min_score=min_score, max_results=10)
    got: list[tuple[str, int]] = []
    async for ev in pipeline.run(req):
        if isinstance(ev, Results):
            got.extend((r.item.url, r.score) for r in ev.items)
    return sorted(got, key=lambda x: -x[1])  # the page shows early-sent items first; judged in score order


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from ..ingest.pipeline import Ingestor
    from ..server.components import build_components

    data = Path(args.data)
    if not data.is_dir():
        raise SourceError(f"{data}: not a folder (expected NLWeb TSV files and questions.jsonl)")
    questions = read_questions(data)
    sources = sorted(data.glob("*.tsv"))
    if not sources:
        raise SourceError(f"{data} holds no .tsv files (url<TAB>schema.org JSON, one file per site)")
    with tempfile.TemporaryDirectory(prefix="nlweb-realdata-") as tmp:
        search = settings.search.model_copy(update={"rank_cache_entries": 20_000})
        if args.strategy == "similarity":
            search.llm_rank_limit = 0
        s = settings.model_copy(update={"data_dir": tmp, "search": search,
                                        "store": settings.store.model_copy(update={"path": None, "url": None}),
                                        "cache": settings.cache.model_copy(update={"ask_enabled": False})})
        comp = build_components(s)
        try:
            started = time.perf_counter()
            ingestor = Ingestor(comp.embedder, comp.store, s.ingest, progress=False)
            for src in sources:
                print(ingestor.ingest(str(src), src.stem).summary(), file=sys.stderr)
            results, per_question = [], []
            for label, min_score in CUTOFFS:
                rows = []
                for q in questions[: args.limit] if args.limit else questions:
                    shown = await _shown(comp.pipeline, q, min_score)
                    rows.append((q, [u for u, _ in shown]))
                    if min_score == 0:  # the whole top 10 with scores, to study cut-offs on
                        per_question.append({"query": q["query"], "site": q["site"], "relevant": q["relevant"],
                                             "shown": [{"url": u, "score": sc} for u, sc in shown]})
                results.append({"cut_off": label, **summarise(rows),
                                "sites": {site: summarise([r for r in rows if r[0]["site"] == site])
                                          for site in sorted({q["site"] for q, _ in rows})}})
            seconds = time.perf_counter() - started
        finally:
            await comp.close()
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in per_question))
    print(f"{len(questions)} questions over {', '.join(p.stem for p in sources)}; ranking: "
          f"{'similarity only' if args.strategy == 'similarity' else f'llm_rank_limit {search.llm_rank_limit}'}")
    print(f"{'cut-off':<20} {'P@5':>6} {'NDCG@5':>7} {'hit@5':>6} {'shown when unanswerable':>24}")
    for r in results:
        for name, m in [("", r), *((f"  {site}", m) for site, m in r["sites"].items())]:
            print(f"{(name or r['cut_off'])[:20]:<20} {m['p@5']:>6.3f} {m['ndcg@5']:>7.3f} {m['hit@5']:>6.3f} "
                  f"{m['shown_unanswerable'] if m['shown_unanswerable'] is not None else float('nan'):>24.2f}")
    summary = {"questions": len(questions), "strategy": args.strategy, "seconds": round(seconds, 1), "results": results}
    turns = data / "conversations.jsonl"
    if turns.exists():
        from ..search.followup import refers_back

        rows = [json.loads(line) for line in turns.read_text().splitlines() if line.strip()]
        wrong = [r for r in rows if refers_back(r["query"]) != bool(r["follow_up"])]
        merged = sum(1 for r in wrong if not r["follow_up"])
        print(f"follow-up detection: {len(rows) - len(wrong)}/{len(rows)} right; topic changes merged: {merged}; "
              f"follow-ups missed: {len(wrong) - merged}")
        summary["follow_up_detection"] = {"turns": len(rows), "right": len(rows) - len(wrong),
                                          "topic_changes_merged": merged, "follow_ups_missed": len(wrong) - merged}
    print(json.dumps(summary))
    return 0


async def run_realdata_eval(args: argparse.Namespace, settings: Settings) -> int:
    return await _run(args, settings)
