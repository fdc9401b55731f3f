"""`cost report --by team|key`: the ledger's calls grouped by whose key they were made for (`caller`, the
key id or SSO subject) or by that caller's team. Calls made without auth are grouped under "(none)"."""
from __future__ import annotations

import csv
import io
from typing import Any, Iterable

from .ledger_store import CallRecord

FIELDS = {"key": "caller", "team": "team"}
NONE = "(none)"


def spend_by(rows: Iterable[CallRecord], by: str) -> list[dict[str, Any]]:
    """One dict per key (or team), dearest first: calls, errors, tokens, cost, cache savings."""
    field = FIELDS[by]
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        who = getattr(r, field) or NONE
        g = groups.get(who)
        if g is None:
            g = groups[who] = {by: who, "calls": 0, "errors": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0,
                               "saved_usd": 0.0}
        g["calls"] += 1
        g["errors"] += 0 if r.ok else 1
        g["tokens_in"] += r.tokens_in
        g["tokens_out"] += r.tokens_out
        g["cost_usd"] += r.cost_usd
        g["saved_usd"] += r.saved_usd
    out = sorted(groups.values(), key=lambda g: (-g["cost_usd"], g[by]))
    for g in out:
        g["cost_usd"], g["saved_usd"] = round(g["cost_usd"], 9), round(g["saved_usd"], 9)
    return out


def render_table(groups: list[dict[str, Any]], by: str) -> str:
    head = f"{by:<24} {'calls':>8} {'errors':>7} {'tokens in':>11} {'tokens out':>11} {'cost $':>12} {'saved $':>10}"
    lines = [head, "-" * len(head)]
    for g in groups:
        lines.append(f"{g[by][:24]:<24} {g['calls']:>8} {g['errors']:>7} {g['tokens_in']:>11} {g['tokens_out']:>11} "
                     f"{g['cost_usd']:>12.6f} {g['saved_usd']:>10.4f}")
    if not groups:
        lines.append("(no calls in this period)")
    return "\n".join(lines) + "\n"


def render_csv(groups: list[dict[str, Any]], by: str) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=[by, "calls", "errors", "tokens_in", "tokens_out", "cost_usd", "saved_usd"])
    w.writeheader()
    w.writerows(groups)
    return out.getvalue()
