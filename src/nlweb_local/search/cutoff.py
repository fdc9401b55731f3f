"""Which ranked items are shown: the score an item must beat, the same rule on any site.

Scores are not comparable across sites: cosine similarity depends on how items are written (a
Wikipedia article of 300 words is further from a six-word question than a product name is), so on
NLWeb's own Wikipedia movie sample the relevant items score 39–50 while on a recipe site they score
60–80, and the old fixed cut (`min_score` 51) showed nothing on the first. A client that names
`min_score` gets exactly that fixed cut. Otherwise the cut follows the candidates of this question:

    shown = score > floor  and  (score > sure  or  score ≥ best − margin)

`best` is the best score among this question's candidates, `margin` how far below it an item may
be and still be shown, `floor` a score no shown item is at or under however good the rest are (a
question the site cannot answer shows nothing), and `sure` the score above which an item is always
shown (`search.min_score`, 51: on a site whose items score high nothing changes; it is below
`search.early_send_score`, so an item streamed at once is never taken back). `margin` None: the
fixed cut at `sure` alone. `margin` and `floor` were chosen on the real-data sample (`nlweb-local eval realdata`)
and checked on the dev ranking file, whose labels they were not fitted on (README, "Real data").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Cutoff:
    margin: int | None = 15
    floor: int = 20
    sure: int = 51

    def threshold(self, best: int, min_score: int | None = None) -> int:
        """Items scoring strictly above this are shown. `min_score` (a client's explicit one) wins."""
        if min_score is not None:
            return min_score
        if self.margin is None:
            return self.sure
        return max(self.floor, min(self.sure, best - self.margin - 1))

    def keep(self, ranked: Sequence[T], score_of, min_score: int | None = None) -> list[T]:
        """The items of `ranked` that are shown, in their order."""
        if not ranked:
            return []
        line = self.threshold(max(score_of(r) for r in ranked), min_score)
        return [r for r in ranked if score_of(r) > line]
