"""Canary guards: what must hold for a candidate version to take more traffic (pure: parse and judge).

    error_rate<2%        the candidate's failed calls / calls (absolute; `%`, or a plain fraction: 0.02)
    error_rate<1.5x      ... at most 1.5 times the baseline's rate in the same window
    p95_ttft<1.5x        the candidate's p95 time to first token / the baseline's
    p95_ttft<800ms       ... absolute (`ms` or `s`)
    quality>=-0.02       mean feedback rating, candidate minus baseline (`x`: a ratio); skipped, with a
                         note, when no feedback source exists or either side has too few ratings

`parse_guards("error_rate<2%,p95_ttft<1.5x")` -> [Guard, ...] (`BadRequestError` saying what to fix);
`judge(guard, baseline, candidate)` -> Verdict(holds: True | False | None, text). Figures are counts and
a time-to-first-token histogram (log buckets, so that replicas' figures add up in the registry database).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..core.errors import BadRequestError

DEFAULT_GUARDS = "error_rate<2%,p95_ttft<1.5x,quality>=-0.02"
MIN_RATINGS = 5  # per arm, before the quality guard judges
_UNITS = {"error_rate": ("", "%", "x"), "p95_ttft": ("x", "ms", "s"), "quality": ("", "x")}
_UPPER = {"error_rate", "p95_ttft"}  # bounded from above (< or <=); quality from below (> or >=)
_GUARD = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(%|x|ms|s)?\s*$")
_GROWTH = 1.1  # TTFT histogram: bucket i holds [1ms * 1.1^i, 1ms * 1.1^(i+1))
_MAX_BUCKET = 200  # ~190 s and beyond


def ttft_bucket(seconds: float) -> int:
    if seconds <= 0.001:
        return 0
    return min(_MAX_BUCKET, int(math.log(seconds / 0.001, _GROWTH)) + 1)


def bucket_seconds(i: int) -> float:
    """A bucket's upper edge (what a percentile read from the histogram reports)."""
    return 0.001 * _GROWTH ** i


@dataclass
class Figures:
    """One arm's evidence in one stage: calls, failed calls, TTFT histogram, feedback ratings."""

    requests: int = 0
    errors: int = 0
    ttft: dict[int, int] = field(default_factory=dict)  # bucket -> count (successful calls)
    rating_sum: float = 0.0
    ratings: int = 0

    def add(self, other: "Figures") -> None:
        self.requests += other.requests
        self.errors += other.errors
        for b, n in other.ttft.items():
            self.ttft[b] = self.ttft.get(b, 0) + n
        self.rating_sum += other.rating_sum
        self.ratings += other.ratings

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def p95_ttft(self) -> float | None:
        total = sum(self.ttft.values())
        if not total:
            return None
        rank, seen = math.ceil(0.95 * total), 0
        for b in sorted(self.ttft):
            seen += self.ttft[b]
            if seen >= rank:
                return bucket_seconds(b)
        return None  # pragma: no cover

    @property
    def mean_rating(self) -> float | None:
        return self.rating_sum / self.ratings if self.ratings else None

    def as_dict(self) -> dict:
        p95 = self.p95_ttft()
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4) if self.error_rate is not None else None,
                "p95_ttft_s": round(p95, 4) if p95 is not None else None,
                "ratings": self.ratings, "mean_rating": self.mean_rating}


@dataclass(frozen=True)
class Guard:
    metric: str
    op: str
    value: float  # a fraction for error_rate in % (2% -> 0.02), seconds for ms/s, else as written
    unit: str  # "" (absolute / delta), "x" (ratio to the baseline), "%", "ms", "s"
    text: str

    @property
    def relative(self) -> bool:
        """Compared with the baseline (it needs baseline evidence)."""
        return self.unit == "x" or self.metric == "quality"


@dataclass(frozen=True)
class Verdict:
    guard: str
    holds: bool | None  # None: not judged (skipped, or no evidence yet)
    text: str


def parse_guards(text: str) -> list[Guard]:
    """`metric op number[unit]`, comma-separated (see the module docstring)."""
    out: list[Guard] = []
    parts = [p for p in (text or "").split(",")]
    if not text or not text.strip():
        return out
    for n, part in enumerate(parts, 1):
        out.append(_parse_one(part, n))
    seen = [g.metric for g in out]
    dupes = sorted({m for m in seen if seen.count(m) > 1})
    if dupes:
        raise BadRequestError(f"--guard names {', '.join(dupes)} more than once: give each metric one bound")
    return out


def _parse_one(part: str, n: int) -> Guard:
    where = f"guard {n} ({part.strip()!r})"
    m = _GUARD.match(part)
    if not m:
        raise BadRequestError(f"{where} is not `metric<value` : write e.g. error_rate<2%, p95_ttft<1.5x, "
                              "quality>=-0.02 (metrics: error_rate, p95_ttft, quality; comparisons: < <= > >=)")
    metric, op, number, unit = m.group(1), m.group(2), float(m.group(3)), m.group(4) or ""
    if metric not in _UNITS:
        raise BadRequestError(f"{where}: unknown metric {metric!r} (metrics: {', '.join(_UNITS)})")
    if unit not in _UNITS[metric]:
        allowed = ", ".join(repr(u) if u else "none (a plain number)" for u in _UNITS[metric])
        raise BadRequestError(f"{where}: {metric} takes the unit {allowed}, not {unit or 'none'!r}")
    if (metric in _UPPER) != (op in ("<", "<=")):
        side = "from above: use < or <=" if metric in _UPPER else "from below: use > or >="
        raise BadRequestError(f"{where}: a {metric} guard bounds it {side}")
    value = number
    if unit == "%":
        value = number / 100
    elif unit == "ms":
        value = number / 1000
    if unit == "x" and number <= 0:
        raise BadRequestError(f"{where}: a ratio must be above 0 (e.g. 1.5x)")
    if metric == "error_rate" and unit in ("", "%") and not 0 <= value <= 1:
        raise BadRequestError(f"{where}: an error rate lies in [0, 100%]")
    if metric == "p95_ttft" and value <= 0:
        raise BadRequestError(f"{where}: a time must be above 0")
    return Guard(metric, op, value, unit, f"{metric}{op}{m.group(3)}{unit}")


def _compare(a: float, op: str, b: float) -> bool:
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _ratio(cand: float, base: float) -> float:
    if base == 0:
        return 1.0 if cand == 0 else math.inf
    return cand / base


def judge(g: Guard, baseline: Figures, candidate: Figures, *, has_feedback: bool = False) -> Verdict:
    """Whether `g` holds on this window's figures (None: not judged, with why)."""
    if g.metric == "error_rate":
        cand, base = candidate.error_rate, baseline.error_rate
        if cand is None:
            return Verdict(g.text, None, "no candidate calls yet")
        if g.unit == "x":
            if base is None:
                return Verdict(g.text, None, "no baseline calls yet")
            r = _ratio(cand, base)
            return Verdict(g.text, _compare(r, g.op, g.value), f"error rate {cand:.2%} vs baseline {base:.2%} "
                           f"({r:.2f}x)")
        return Verdict(g.text, _compare(cand, g.op, g.value), f"error rate {cand:.2%} ({candidate.errors} of "
                       f"{candidate.requests})")
    if g.metric == "p95_ttft":
        cand, base = candidate.p95_ttft(), baseline.p95_ttft()
        if cand is None:
            return Verdict(g.text, False if candidate.requests else None,
                           "no candidate call succeeded" if candidate.requests else "no candidate calls yet")
        if g.unit == "x":
            if base is None:
                return Verdict(g.text, None, "no successful baseline call yet")
            r = _ratio(cand, base)
            return Verdict(g.text, _compare(r, g.op, g.value), f"p95 TTFT {cand * 1000:.0f} ms vs baseline "
                           f"{base * 1000:.0f} ms ({r:.2f}x)")
        return Verdict(g.text, _compare(cand, g.op, g.value), f"p95 TTFT {cand * 1000:.0f} ms")
    # quality
    if not has_feedback:
        return Verdict(g.text, None, "skipped: no feedback source to rate answers")
    if candidate.ratings < MIN_RATINGS or baseline.ratings < MIN_RATINGS:
        return Verdict(g.text, None, f"skipped: {candidate.ratings} candidate and {baseline.ratings} baseline "
                       f"ratings (fewer than {MIN_RATINGS} each)")
    cand, base = candidate.mean_rating, baseline.mean_rating
    assert cand is not None and base is not None
    if g.unit == "x":
        r = _ratio(cand, base)
        return Verdict(g.text, _compare(r, g.op, g.value), f"mean rating {cand:.3f} vs {base:.3f} ({r:.2f}x)")
    return Verdict(g.text, _compare(cand - base, g.op, g.value), f"mean rating {cand:.3f} vs {base:.3f} "
                   f"(delta {cand - base:+.3f})")


def certainly_broken(g: Guard, candidate: Figures, min_requests: int) -> bool:
    """An absolute error-rate bound the candidate can no longer meet at `min_requests` calls, whatever the
    rest of them do (so the canary rolls back before the stage's count is reached)."""
    if g.metric != "error_rate" or g.unit == "x" or not candidate.errors:
        return False
    return not _compare(candidate.errors / max(min_requests, candidate.requests), g.op, g.value)
