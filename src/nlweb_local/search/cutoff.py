"""Which ranked items are shown: the score an item must beat, the same rule on any site.

Scores are not comparable across sites: cosine similarity depends on how items are written (a
Wikipedia article of 300 words is further from a six-word question than a product name is), so on
NLWeb's own Wikipedia movie sample the relevant items score 39–50 while on a recipe site they score
60–80, and the old fixed cut (`min_score` 51) showed nothing on the first. A client that names
`min_score` gets exactly that fixed cut. Otherwise the cut follows the candidates of this question:

    shown = score > sure  or  (score ≥ best − margin  and  score > floor  and  similarity > floor)

`best` is the best score among this question's candidates and `margin` how far below it an item may
be and still be shown. `sure` is the score above which an item is always shown (`search.min_score`,
51: on a site whose items score high nothing changes; it is below `search.early_send_score`, so an
item streamed at once is never taken back). `floor` is the score that an item under `sure` must beat,
both in its final score and in its retrieval similarity alone (`similarity_score`, the same 0–100
scale): a question the site cannot answer shows nothing, even when a small model's vote lifts an
off-topic best candidate. `margin` None: the fixed cut at `sure` alone. `margin` and `floor` were set
before measuring and checked on the real-data sample (`nlweb-local eval realdata`: flat for margins
10–25) and on the dev ranking file, whose labels they were not fitted on (README, "Real data").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Cutoff:
    margin: int | None = 15
    floor: int = 20
    sure: int = 51

    def keep(self, ranked: Sequence[T], score_of: Callable[[T], int], min_score: int | None = None,
             similarity_of: Callable[[T], int] | None = None) -> list[T]:
        """The items of `ranked` that are shown, in their order. `min_score` (a client's explicit one) is a
        fixed cut; `similarity_of` gives an item's retrieval similarity score (None: its score stands in)."""
        if min_score is not None:
            return [r for r in ranked if score_of(r) > min_score]
        if self.margin is None:
            return [r for r in ranked if score_of(r) > self.sure]
        if not ranked:
            return []
        near = max(score_of(r) for r in ranked) - self.margin
        similarity_of = similarity_of or score_of
        return [r for r in ranked if score_of(r) > self.sure or
                (score_of(r) >= near and score_of(r) > self.floor and similarity_of(r) > self.floor)]
