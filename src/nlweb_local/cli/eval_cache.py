"""`nlweb-local eval cache`: the semantic cache's precision and hit rate along the similarity threshold.

Input: JSON lines {"a": text, "b": text, "same": true|false, "kind": "paraphrase|constraint|negation|..."}
(the repository's sets, not shipped in the wheel: benchmarks/data/cache_pairs.jsonl, 294 pairs, on which
the vetoes and the threshold were chosen, and cache_pairs_heldout.jsonl, 60 pairs written after they were
fixed, to check that they carry over). Each pair is
one question stored in the cache (a) and one asked later (b): the cache *hits* when the two texts' cosine
similarity reaches the threshold and, with the vetoes, no lexical veto (`cache.lexical`) fires.

    precision  of the hits, the share whose pair means the same (a wrong hit serves an answer to another question)
    hit rate   of the pairs that mean the same, the share that hit

Printed: the curve with and without the vetoes; what each veto alone adds at the configured threshold;
hits per kind of pair; and, last, one JSON object with the configured (shipped, unless the config file
says otherwise) `threshold` and its `precision` and `hit_rate` with the vetoes, and `recommended_threshold`:
the least threshold of the grid from which on precision stays ≥ `--target`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable

from ..cache.lexical import VETOES, features, veto
from ..config.settings import Settings
from ..core.errors import SourceError


@dataclass(frozen=True, slots=True)
class ScoredPair:
    same: bool
    kind: str
    similarity: float
    vetoes: frozenset[str]  # every veto that fires for the pair, each judged on its own


@dataclass(frozen=True, slots=True)
class Point:
    threshold: float
    hits: int
    wrong_hits: int
    same_hits: int
    same_pairs: int

    @property
    def precision(self) -> float | None:
        return (self.hits - self.wrong_hits) / self.hits if self.hits else None

    @property
    def hit_rate(self) -> float:
        return self.same_hits / self.same_pairs if self.same_pairs else 0.0


def read_pairs(path: Path) -> list[dict]:
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not (isinstance(r["a"], str) and isinstance(r["b"], str) and isinstance(r["same"], bool)):
                raise TypeError("a and b must be strings, same a boolean")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SourceError(f"{path}:{n}: expected {{a, b, same, kind}} ({e})") from None
        pairs.append({"a": r["a"], "b": r["b"], "same": r["same"], "kind": str(r.get("kind", "?"))})
    if not pairs:
        raise SourceError(f"{path} holds no pairs")
    return pairs


def score_pairs(embedder, pairs: list[dict]) -> list[ScoredPair]:
    """Cosine similarity (the index's: dot product of unit vectors) and the vetoes of each pair; blocking."""
    vectors = embedder.embed([p["a"] for p in pairs] + [p["b"] for p in pairs])
    n = len(pairs)
    out = []
    for i, p in enumerate(pairs):
        sim = sum(x * y for x, y in zip(vectors[i], vectors[n + i]))
        fa, fb = features(p["a"]), features(p["b"])
        fired = frozenset(v for v in VETOES if veto(fa, fb, (v,)) is not None)
        out.append(ScoredPair(p["same"], p["kind"], float(sim), fired))
    return out


def point(scored: Iterable[ScoredPair], threshold: float, vetoes: Collection[str] = VETOES) -> Point:
    """Hits at `threshold` with the vetoes in `vetoes` applied (none: raw cosine)."""
    hits = wrong = same_hits = same = 0
    for s in scored:
        hit = s.similarity >= threshold and not (s.vetoes & set(vetoes))
        hits += hit
        wrong += hit and not s.same
        same_hits += hit and s.same
        same += s.same
    return Point(threshold, hits, wrong, same_hits, same)


def recommended(scored: list[ScoredPair], thresholds: list[float], target: float) -> float | None:
    """The least threshold of `thresholds` from which on (every higher one too) precision with the vetoes is ≥ target."""
    best = None
    for t in sorted(thresholds, reverse=True):
        p = point(scored, t).precision
        if p is not None and p < target:
            break
        best = t
    return best


def _grid(spec: str) -> list[float]:
    try:
        if ":" in spec:
            lo, hi, step = (float(x) for x in spec.split(":"))
            if step <= 0 or lo > hi:
                raise ValueError
            n = int(round((hi - lo) / step)) + 1
            return [round(lo + i * step, 4) for i in range(n)]
        return sorted({round(float(x), 4) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise SourceError(f"--thresholds {spec!r}: expected LOW:HIGH:STEP (e.g. 0.7:0.98:0.02) or a comma-separated "
                          "list") from None


def _f(x: float | None) -> str:
    return "    -" if x is None else f"{x:5.3f}"


async def run_cache_eval(args: argparse.Namespace, settings: Settings) -> int:
    from ..server.components import build_embedder

    pairs = read_pairs(Path(args.data))
    if args.limit:
        pairs = pairs[: args.limit]
    shipped = settings.semantic_cache.threshold
    grid = sorted({*_grid(args.thresholds), shipped})
    embedder = build_embedder(settings)
    scored = await asyncio.to_thread(score_pairs, embedder, pairs)
    n_same = sum(s.same for s in scored)
    print(f"{len(scored)} pairs ({n_same} mean the same, {len(scored) - n_same} near-misses); "
          f"embedder {embedder.name}; a hit: cosine >= threshold (and, with vetoes, no veto fires)")
    print(f"{'threshold':>9}  {'raw precision':>13} {'hit rate':>8} {'wrong':>5}   {'vetoes precision':>16} "
          f"{'hit rate':>8} {'wrong':>5}")
    for t in grid:
        raw, vet = point(scored, t, ()), point(scored, t)
        mark = "  <- configured" if t == shipped else ""
        print(f"{t:>9.2f}  {_f(raw.precision):>13} {raw.hit_rate:>8.3f} {raw.wrong_hits:>5}   "
              f"{_f(vet.precision):>16} {vet.hit_rate:>8.3f} {vet.wrong_hits:>5}{mark}")
    print(f"\nthe vetoes at threshold {shipped:.2f}: alone (against none), and left out (against all)")
    none, every = point(scored, shipped, ()), point(scored, shipped)
    for name in VETOES:
        alone, without = point(scored, shipped, (name,)), point(scored, shipped, [v for v in VETOES if v != name])
        print(f"  {name:>12} alone: precision {_f(alone.precision)}, refuses {none.wrong_hits - alone.wrong_hits:>3} wrong "
              f"hits, loses {none.same_hits - alone.same_hits:>2} paraphrases | all but it: precision "
              f"{_f(without.precision)}, hit rate {without.hit_rate:.3f}")
    print(f"  {'all':>12}: precision {_f(every.precision)} (none: {_f(none.precision)}), hit rate {every.hit_rate:.3f} "
          f"(none: {none.hit_rate:.3f})")
    kinds = Counter(s.kind for s in scored)
    hits = Counter(s.kind for s in scored if s.similarity >= shipped and not s.vetoes)
    print(f"hits per kind at {shipped:.2f} with vetoes: " +
          ", ".join(f"{k} {hits[k]}/{kinds[k]}" for k in sorted(kinds)))
    final = point(scored, shipped)
    raw = point(scored, shipped, ())
    rec = recommended(scored, grid, args.target)
    print(json.dumps({"threshold": shipped, "precision": None if final.precision is None else round(final.precision, 4),
                      "hit_rate": round(final.hit_rate, 4), "wrong_hits": final.wrong_hits, "vetoes": list(VETOES),
                      "raw_precision": None if raw.precision is None else round(raw.precision, 4),
                      "raw_hit_rate": round(raw.hit_rate, 4), "pairs": len(scored), "same_pairs": n_same,
                      "target_precision": args.target, "recommended_threshold": rec,
                      "meets_target": final.precision is not None and final.precision >= args.target}))
    return 0
