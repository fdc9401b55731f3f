"""`nlweb-local eval answers --data DIR`: are summaries and generated answers grounded in the items?

DIR holds `questions.jsonl` ({"query", "site"}) and the items of sites other than the demo as NLWeb's TSV
(`url<TAB>schema.org JSON`, one file per site: the stem is the site name). The demo site `cedarvalley`
is ingested from the package. The repository's set is benchmarks/data/answers (see its NOTICE.md).

Everything goes through the product's own code: the items are ingested into a temporary data folder with
the configured embedder, and each question is asked of the /ask pipeline `serve` runs
(`build_components`), in summarize and in generate mode, with the configured writing model — or with the
deployment `--deployment D` of llm.deployments (pinned as llm.search_deployment), to compare models.

For every answer, search/grounding.py's checker extracts the checkable facts (prices, durations, times,
dates, months, weekdays, years, numbers, proper names, quoted titles) of each sentence and checks each
against the items the sentence cites (all the answer's items when it cites none) and the question; checks
that each [n] points at an item that supports its sentence; and flags an answer that merely restates the
question. Printed: per mode and overall, the unsupported-fact rate, citation accuracy, restating answers,
the stand-in answers (the model wrote nothing usable: the extractive answer, or the pipeline's stand-in
text when the model failed or ran past search.llm_deadline_s), the median seconds to the complete answer
(demo site and all), then the ten worst answers; the last line is a JSON summary. `--rejudge FILE` judges
the answers an earlier run recorded (--out) again without running the model; `--deadline S` gives each
writing call S seconds instead of search.llm_deadline_s (to judge a model on a machine too slow for it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ..config.settings import Settings
from ..core.errors import SourceError

MODES = ("summarize", "generate")
TARGET_RATE = 0.02


def read_questions(data: Path) -> list[dict]:
    """`data`/questions.jsonl: {query, site} lines (the reader `eval realdata` uses, without labels)."""
    from .eval_realdata import read_questions as read

    return read(data, relevant=False)


async def answer_one(pipeline, query: str, site: str, mode: str) -> dict:
    """Ask `query` of `site` in `mode`; the answer's text, the items it was written from and the seconds."""
    from ..search.events import AskRequest, End, Failure, Generated, Results, Summary

    started = time.perf_counter()
    shown, text, used, stats, failure = [], "", None, {}, ""
    async for ev in pipeline.run(AskRequest(query=query, sites=[site], mode=mode)):  # type: ignore[arg-type]
        if isinstance(ev, Results):
            shown.extend(ev.items)
        elif isinstance(ev, Summary):
            text, used = ev.text, getattr(ev, "items", None)
        elif isinstance(ev, Generated):
            text, used = ev.answer, ev.items
        elif isinstance(ev, Failure):
            failure = ev.message
        elif isinstance(ev, End):
            stats = ev.stats
    if not used:  # a pipeline whose Summary does not name its items: the five best shown, as it summarises them
        used = sorted(shown, key=lambda r: -r.score)[:5]
    return {"query": query, "site": site, "mode": mode, "answer": text, "failure": failure,
            "items": [{"url": r.item.url, "name": r.item.name, "schema_object": r.item.schema_object} for r in used],
            "seconds": round(time.perf_counter() - started, 3), "grounding": stats.get("grounding")}


def judge(row: dict) -> dict:
    """The checker's verdict on one answer (fields added to `row`)."""
    from ..search.grounding import Evidence, check_answer

    objs = [json.loads(i["schema_object"]) if isinstance(i["schema_object"], str) else i["schema_object"]
            for i in row["items"]]
    check = check_answer(row["answer"], Evidence(objs, row["query"]))
    grounding = row.get("grounding") or {}
    stand_in = grounding.get("fallback", False) if grounding else row["answer"].startswith(_OLD_STAND_INS)
    row.update(facts=check.facts, unsupported=[f"{f.kind}: {f.text}" for f in check.unsupported],
               citations=check.citations, bad_citations=check.bad_citations, restates=check.restates and bool(row["answer"]),
               empty=not row["answer"].strip(), stand_in=bool(stand_in))
    return row


# What the pipeline before the grounding pass said when the model wrote nothing (a timeout, an error): counted
# as stand-in answers when judging answers recorded from it (`--rejudge`), like today's extractive fallback.
_OLD_STAND_INS = ("Top results: ", "I could not compose an answer")


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def summarise(rows: list[dict], demo_site: str = "cedarvalley") -> dict:
    facts = sum(r["facts"] for r in rows)
    bad = sum(len(r["unsupported"]) for r in rows)
    cites = sum(r["citations"] for r in rows)
    bad_cites = sum(r["bad_citations"] for r in rows)
    fallbacks = [r for r in rows if r.get("stand_in")]
    written = [r for r in rows if not r.get("stand_in")]
    w_facts = sum(r["facts"] for r in written)
    w_bad = sum(len(r["unsupported"]) for r in written)
    return {"answers": len(rows), "facts": facts, "unsupported": bad,
            "unsupported_rate": round(bad / facts, 4) if facts else 0.0,
            "model_written": len(written),
            "unsupported_rate_model_written": round(w_bad / w_facts, 4) if w_facts else None,
            "citations": cites, "bad_citations": bad_cites,
            "citation_accuracy": round(1 - bad_cites / cites, 4) if cites else None,
            "restating": sum(r["restates"] for r in rows), "empty_or_failed": sum(r["empty"] for r in rows),
            "fallbacks": len(fallbacks),
            "median_s": _median([r["seconds"] for r in rows]),
            "median_s_demo": _median([r["seconds"] for r in rows if r["site"] == demo_site])}


def badness(r: dict) -> tuple:
    return (len(r["unsupported"]) + r["bad_citations"] + 3 * r["restates"] + 3 * r["empty"], len(r["answer"]))


def report(rows: list[dict], label: str) -> dict:
    by_mode = {m: summarise([r for r in rows if r["mode"] == m]) for m in MODES if any(r["mode"] == m for r in rows)}
    overall = summarise(rows)
    print(f"answers: {label}")
    print(f"{'mode':<10} {'answers':>7} {'facts':>6} {'unsupp.':>7} {'rate':>6} {'cites':>6} {'cite acc':>8} "
          f"{'restating':>9} {'stand-in':>8} {'rate (model-written)':>20} {'median s (demo)':>16} {'median s (all)':>14}")
    for name, m in [*by_mode.items(), ("all", overall)]:
        acc = f"{m['citation_accuracy']:.1%}" if m["citation_accuracy"] is not None else "-"
        w = m["unsupported_rate_model_written"]
        written = f"{w:.1%} of {m['model_written']}" if w is not None else f"- of {m['model_written']}"
        print(f"{name:<10} {m['answers']:>7} {m['facts']:>6} {m['unsupported']:>7} {m['unsupported_rate']:>6.1%} "
              f"{m['citations']:>6} {acc:>8} {m['restating']:>9} {m['fallbacks']:>8} {written:>20} "
              f"{str(m['median_s_demo']):>16} {str(m['median_s']):>14}")
    worst = sorted(rows, key=badness, reverse=True)[:10]
    print("worst answers:")
    for r in worst:
        issues = [*(f"unsupported {u}" for u in r["unsupported"][:4])]
        if r["bad_citations"]:
            issues.append(f"{r['bad_citations']} bad citation(s)")
        if r["restates"]:
            issues.append("restates the question")
        if r["empty"]:
            issues.append(f"no answer ({r['failure'] or 'empty'})")
        text = " ".join(r["answer"].split())
        print(f"- [{r['mode']}] {r['site']}: {r['query']!r}: {'; '.join(issues) or 'no issue'}\n    {text[:300]}")
    return {"by_mode": by_mode, "overall": overall}


def _rejudge(args: argparse.Namespace) -> int:
    """Judge the answers of an earlier run (its --out file) again, with today's checker: no model runs."""
    path = Path(args.rejudge)
    if not path.exists():
        raise SourceError(f"{path}: no such file (expected the --out file of an earlier `eval answers`)")
    rows = [judge(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    if args.limit:
        rows = rows[: args.limit]
    out = report(rows, f"{len(rows)} answers recorded in {path}, judged again")
    print(json.dumps({"answers": len(rows), "rejudged": str(path), **out}))
    return 0


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from ..ingest.demo import DEMO_SITE, demo_source
    from ..ingest.pipeline import Ingestor
    from ..server.components import build_components

    if getattr(args, "rejudge", None):
        return _rejudge(args)
    data = Path(args.data)
    if not data.is_dir():
        raise SourceError(f"{data}: not a folder (expected questions.jsonl and NLWeb TSV files)")
    questions = read_questions(data)
    if args.limit:
        questions = questions[: args.limit]
    modes = [m.strip() for m in (args.modes or ",".join(MODES)).split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        raise SourceError(f"--modes: {', '.join(unknown)} is not one of {', '.join(MODES)}")
    with tempfile.TemporaryDirectory(prefix="nlweb-answers-") as tmp:
        llm = settings.llm.model_copy(update={"search_deployment": args.deployment}) if args.deployment else settings.llm
        search = settings.search.model_copy(update={"rank_cache_entries": 20_000})
        if getattr(args, "deadline", None):
            search.llm_deadline_s = args.deadline
        s = settings.model_copy(update={"data_dir": tmp, "llm": llm, "search": search,
                                        "store": settings.store.model_copy(update={"path": None, "url": None}),
                                        "cache": settings.cache.model_copy(update={"ask_enabled": False}),
                                        "server": settings.server.model_copy(update={"autoload_demo": False})})
        comp = build_components(s)
        try:
            ingestor = Ingestor(comp.embedder, comp.store, s.ingest, progress=False)
            sites = {q["site"] for q in questions}
            if DEMO_SITE in sites:
                print(ingestor.ingest(str(demo_source()), DEMO_SITE).summary(), file=sys.stderr)
            for src in sorted(data.glob("*.tsv")):
                if src.stem in sites:
                    print(ingestor.ingest(str(src), src.stem).summary(), file=sys.stderr)
            await answer_one(comp.pipeline, questions[0]["query"], questions[0]["site"], modes[0])  # load the models, untimed
            rows = []
            for q in questions:
                for mode in modes:
                    row = judge(await answer_one(comp.pipeline, q["query"], q["site"], mode))
                    rows.append(row)
                    print(f"{row['seconds']:6.2f}s {mode:<9} facts {row['facts']:>2} unsupported {len(row['unsupported'])} "
                          f"bad cites {row['bad_citations']}{' RESTATES' if row['restates'] else ''}  {q['query'][:60]}",
                          file=sys.stderr)
        finally:
            await comp.close()
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    label = f"{len(questions)} questions × {len(modes)} modes over {', '.join(sorted({q['site'] for q in questions}))}; " \
            f"writer: {args.deployment or 'configured (' + (settings.llm.search_deployment or 'routed') + ')'}"
    out = report(rows, label)
    rate = out["overall"]["unsupported_rate"]
    print(json.dumps({"questions": len(questions), "modes": modes, "deployment": args.deployment,
                      "target_unsupported_rate": TARGET_RATE, "meets_target":
                      rate <= TARGET_RATE and out["overall"]["bad_citations"] == 0 and out["overall"]["restating"] == 0,
                      **out}))
    return 0


async def run_answers_eval(args: argparse.Namespace, settings: Settings) -> int:
    return await _run(args, settings)
