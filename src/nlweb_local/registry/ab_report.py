"""`ab report`'s figures: an experiment's evidence, gathered from the ledger and the feedback table, and the
verdicts of `ab_stats.compare` on it. A pure function of rows (the CLI and /admin/experiments read them).

Evidence per variant (NAME@VERSION), within the experiment's time (started → stopped, or now):
    latency    seconds of each successful LLM call the version served (ledger rows, cache hits excluded)
    cost       dollars of each of those calls
    quality    ratings (normalised to [0, 1]) of answers the version served: the version a rating names
               (known when it came), else the version of the ledger rows of its request id

Calls to the same versions made outside the experiment (a request naming NAME@VERSION itself) in that
time count too: run an experiment where the alias is how clients reach the model.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable

from .ab_stats import METRICS, compare
from .experiment_store import Feedback
from .experiments import Experiment


def evidence(e: Experiment, calls: Iterable[Any], feedback: Iterable[Feedback], *,
             now: float | None = None) -> dict[str, dict[str, list[float]]]:
    """metric -> variant -> samples (the control first), within the experiment's time. `calls`: ledger
    rows (`CallRecord`s)."""
    start, end = e.started_at, e.stopped_at if e.stopped_at is not None else (now if now is not None else time.time())
    keys = e.keys
    out: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in METRICS}
    served: dict[str, str] = {}  # request id -> the version that served it (its last successful call)
    for r in calls:
        if r.cache or r.model_version not in out["latency"]:
            continue
        if r.ok:
            served[r.request_id] = r.model_version
        if not start <= r.ts < end or not r.ok:
            continue
        out["latency"][r.model_version].append(float(r.latency_s))
        out["cost"][r.model_version].append(float(r.cost_usd))
    for f in feedback:
        if not start <= f.at < end:
            continue
        version = f.model_version if f.model_version in out["quality"] else served.get(f.request_id, "")
        if version in out["quality"]:
            out["quality"][version].append(f.score)
    return out


def requests_by_variant(e: Experiment, calls: Iterable[Any], *, now: float | None = None) -> dict[str, dict[str, int]]:
    """variant -> {"requests": distinct request ids, "errors": failed calls} within the experiment's time."""
    start, end = e.started_at, e.stopped_at if e.stopped_at is not None else (now if now is not None else time.time())
    ids: dict[str, set[str]] = {k: set() for k in e.keys}
    errors = dict.fromkeys(e.keys, 0)
    for r in calls:
        if r.cache or r.model_version not in ids or not start <= r.ts < end:
            continue
        ids[r.model_version].add(r.request_id)
        errors[r.model_version] += 0 if r.ok else 1
    return {k: {"requests": len(ids[k]), "errors": errors[k]} for k in e.keys}


def report(e: Experiment, calls: list[Any], feedback: list[Feedback], *, now: float | None = None,
           alpha: float = 0.05, resamples: int = 2000) -> dict[str, Any]:
    """The experiment, counts per variant, and a verdict per metric; `verdict`: the one on its metric."""
    samples = evidence(e, calls, feedback, now=now)
    verdicts = {m: compare(m, samples[m], min_samples=e.min_samples, alpha=alpha, resamples=resamples).as_dict()
                for m in METRICS}
    counts = requests_by_variant(e, calls, now=now)
    for k, c in counts.items():
        c["ratings"] = len(samples["quality"][k])
    return {"experiment": e.as_dict(), "counts": counts, "verdicts": _finite(verdicts), "metric": e.metric,
            "verdict": verdicts[e.metric]["verdict"]}


def _finite(value: Any) -> Any:
    """NaN (no samples) as None, so the JSON is valid."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def render_text(r: dict[str, Any]) -> str:
    """The report for a terminal."""
    e = r["experiment"]
    variants = ", ".join(f"{v['key']} ({v['weight']:g})" for v in e["variants"])
    state = "running" if e["running"] else f"stopped {e['stopped_at']}"
    lines = [f"experiment {e['id']} on {e['alias']}: {variants} — {state}, since {e['started_at']}",
             f"primary metric: {r['metric']}, min samples per variant: {e['min_samples']}"]
    for key, c in r["counts"].items():
        lines.append(f"  {key}: {c['requests']} requests, {c['errors']} failed calls, {c['ratings']} ratings")
    units = {"quality": ("share positive", ""), "latency": ("mean latency", " s"), "cost": ("mean cost", " $")}
    for metric, v in r["verdicts"].items():
        name, unit = units[metric]
        lines.append(f"{metric} ({v['test']}):")
        for key, s in v["variants"].items():
            lines.append(f"  {key}: n={s['n']} {name} {_num(s['mean'])}{unit} "
                         f"[95% CI {_num(s['ci_low'])}, {_num(s['ci_high'])}]")
        for c in v["comparisons"]:
            p = f", p={c['p_value']:.4f}" if c["p_value"] is not None else ""
            lines.append(f"  {c['variant']} − {c['control']}: {_num(c['difference'])}{unit} "
                         f"[{_num(c['ci_low'])}, {_num(c['ci_high'])}]{p} → {c['decision']}")
        lines.append(f"  verdict: {v['verdict']}")
    lines.append(f"VERDICT ({r['metric']}): {r['verdict']}")
    return "\n".join(lines)


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"
