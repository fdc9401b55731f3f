"""The statistics of an A/B test: pure functions of samples, no I/O.

    proportion(successes, n)            share with a Wilson 95 % interval (thumbs-up rate)
    mean_interval(values)               mean with a normal 95 % interval (mean ± 1.96·s/√n)
    two_proportion_z(s1, n1, s2, n2)    pooled two-proportion z-test, two-sided p-value
    bootstrap_difference(a, b, seed)    percentile bootstrap interval of mean(b) − mean(a)
    compare(metric, samples, ...)       per-variant summaries and a verdict against the first variant

The verdict's test depends on the metric: `quality` (feedback, each rating reduced to positive or not)
uses the two-proportion z-test; `latency` and `cost` (skewed, so no normality assumed) use the
bootstrap interval of the difference of means, which decides when it excludes 0. With more than two
variants each is compared with the first (the control) at α / (k − 1) (Bonferroni). A variant below
`min_samples` gives no verdict ("too few samples"), whatever the data say.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

Z95 = 1.959963984540054
METRICS = ("quality", "latency", "cost")
LOWER_IS_BETTER = {"quality": False, "latency": True, "cost": True}


def _z_quantile(p: float) -> float:
    """The standard normal quantile, by bisection on the CDF."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _phi(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


@dataclass(frozen=True, slots=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "ci_low": self.low, "ci_high": self.high}


def proportion(successes: int, n: int, z: float = Z95) -> Interval:
    """The share `successes / n` with its Wilson score interval (sensible at small n and at 0 or 1)."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)), n)


def mean_interval(values: Sequence[float], z: float = Z95) -> Interval:
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = math.fsum(values) / n
    if n == 1:
        return Interval(m, math.nan, math.nan, 1)
    sd = math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return Interval(m, m - half, m + half, n)


def two_proportion_z(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of H0: p1 == p2, with the pooled standard error. (0, 1) when undefined."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (s2 / n2 - s1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def bootstrap_difference(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05, resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean(b) − mean(a), low, high): the percentile bootstrap interval at level 1 − alpha, resampling
    each group with replacement `resamples` times (seeded: the same data give the same interval)."""
    if not a or not b:
        return math.nan, math.nan, math.nan
    rng = random.Random(seed)
    na, nb = len(a), len(b)
    diffs = sorted(math.fsum(rng.choices(b, k=nb)) / nb - math.fsum(rng.choices(a, k=na)) / na
                   for _ in range(resamples))
    lo = diffs[max(0, int(math.floor(alpha / 2 * resamples)))]
    hi = diffs[min(resamples - 1, int(math.ceil((1 - alpha / 2) * resamples)) - 1)]
    return math.fsum(b) / nb - math.fsum(a) / na, lo, hi


@dataclass(frozen=True, slots=True)
class Comparison:
    """One variant against the control."""

    variant: str
    control: str
    difference: float  # variant − control (share of positive ratings, seconds, dollars)
    low: float  # interval of the difference (quality: normal; latency/cost: bootstrap)
    high: float
    p_value: float | None  # the z-test's (quality); None for the bootstrap
    decision: str  # "better", "worse", "no significant difference", "too few samples"

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "control": self.control, "difference": self.difference,
                "ci_low": self.low, "ci_high": self.high, "p_value": self.p_value, "decision": self.decision}


@dataclass(frozen=True, slots=True)
class Verdict:
    metric: str
    test: str
    alpha: float
    min_samples: int
    variants: dict[str, Interval]
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: the winner, or why there is none."""
        if not self.comparisons:
            return "no comparison (fewer than two variants)"
        if any(c.decision == "too few samples" for c in self.comparisons):
            short = [v for v, i in self.variants.items() if i.n < self.min_samples]
            return (f"too few samples to decide: {', '.join(short)} below --min-samples {self.min_samples}")
        better = [c.variant for c in self.comparisons if c.decision == "better"]
        worse = [c.variant for c in self.comparisons if c.decision == "worse"]
        control = self.comparisons[0].control
        if better:
            return f"{', '.join(better)} better than {control} on {self.metric} ({self.test}, α={self.alpha})"
        if worse and len(worse) == len(self.comparisons):
            return f"{control} better than {', '.join(worse)} on {self.metric} ({self.test}, α={self.alpha})"
        return (f"no significant difference on {self.metric} ({self.test}, α={self.alpha}): keep collecting, "
                "or accept that the variants are equivalent at this sample size")

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "test": self.test, "alpha": self.alpha, "min_samples": self.min_samples,
                "variants": {k: v.as_dict() for k, v in self.variants.items()},
                "comparisons": [c.as_dict() for c in self.comparisons], "verdict": self.summary}


def positive(score: float) -> bool:
    """A rating (normalised to [0, 1]: thumbs up 1, down 0; stars (r − 1) / 4) counts as positive at ≥ 0.75
    (a thumbs up, 4 or 5 stars)."""
    return score >= 0.75


def compare(metric: str, samples: dict[str, Sequence[float]], *, min_samples: int = 100, alpha: float = 0.05,
            resamples: int = 2000, seed: int = 0) -> Verdict:
    """The verdict on `samples` (variant -> values, the control first): for `quality` the values are
    normalised ratings, for `latency` seconds, for `cost` dollars per request."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    names = list(samples)
    k = max(1, len(names) - 1)
    level = alpha / k
    if metric == "quality":
        test = "two-proportion z-test on the share of positive ratings"
        wins = {v: sum(1 for x in samples[v] if positive(x)) for v in names}
        summaries = {v: proportion(wins[v], len(samples[v])) for v in names}
    else:
        test = f"percentile bootstrap of the difference of mean {metric} ({resamples} resamples)"
        summaries = {v: mean_interval(list(samples[v])) for v in names}
    out: list[Comparison] = []
    control = names[0] if names else ""
    for v in names[1:]:
        a, b = list(samples[control]), list(samples[v])
        if metric == "quality":
            z, p = two_proportion_z(wins[control], len(a), wins[v], len(b))
            diff = (wins[v] / len(b) if b else math.nan) - (wins[control] / len(a) if a else math.nan)
            se = math.sqrt(sum(s.mean * (1 - s.mean) / s.n for s in (summaries[control], summaries[v]) if s.n)) \
                if a and b else math.nan
            zq = _z_quantile(1 - level / 2)
            lo, hi = diff - zq * se, diff + zq * se
            significant = p < level
        else:
            diff, lo, hi = bootstrap_difference(a, b, alpha=level, resamples=resamples, seed=seed)
            p = None
            significant = (lo > 0 or hi < 0) if a and b else False
        if len(a) < min_samples or len(b) < min_samples:
            decision = "too few samples"
        elif not significant:
            decision = "no significant difference"
        else:
            up = diff > 0
            decision = "worse" if up == LOWER_IS_BETTER[metric] else "better"
        out.append(Comparison(v, control, diff, lo, hi, p, decision))
    return Verdict(metric, test, alpha, min_samples, summaries, out)
