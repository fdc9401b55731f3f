"""`nlweb-local router calibrate`: set the quality strategy's escalation threshold from a sample."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config.settings import Settings
from ..core.errors import SourceError
from ..core.types import ChatRequest, Message, TaskKind


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("router", help="routing tools: calibrate the quality strategy's threshold",
                       description="calibrate: read JSON lines {\"prompt\": ..., \"task\": optional, \"label\": optional "
                       "\"strong\"|\"weak\"} and print the difficulty threshold that escalates --target of them to the "
                       "strong tier (as RouteLLM calibrates its router); with labels, also how well it separates them.")
    p.add_argument("action", choices=["calibrate"])
    p.add_argument("--data", required=True, help="JSON lines of sample requests")
    p.add_argument("--target", type=float, default=0.25, help="share of requests to escalate (default 0.25)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..router.router import difficulty
    from ..router.strategies import calibrate_threshold

    if not 0 <= args.target <= 1:
        print("nlweb-local router: --target must be between 0 and 1", file=sys.stderr)
        return 2
    path = Path(args.data)
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            task = TaskKind(r.get("task", "chat"))
            rows.append((difficulty(ChatRequest([Message("user", str(r["prompt"]))], task=task)), r.get("label")))
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            raise SourceError(f"{path}:{n}: expected {{\"prompt\": ..., \"task\"?, \"label\"?}} ({e})") from None
    if not rows:
        raise SourceError(f"{path} holds no requests")
    t = calibrate_threshold([d for d, _ in rows], args.target)
    escalated = sum(d >= t for d, _ in rows) / len(rows)
    out = {"requests": len(rows), "target": args.target, "threshold": round(t, 4), "escalated_share": round(escalated, 4)}
    labelled = [(d >= t, lab == "strong") for d, lab in rows if lab in ("strong", "weak")]
    if labelled:
        tp = sum(e and s for e, s in labelled)
        out["labelled"] = len(labelled)
        out["strong_recall"] = round(tp / max(1, sum(s for _, s in labelled)), 4)
        out["escalation_precision"] = round(tp / max(1, sum(e for e, _ in labelled)), 4)
    print(json.dumps(out))
    print(f"# put in nlweb-local.yaml:\nllm:\n  strategy: quality\n  quality_threshold: {round(t, 4)}")
    return 0
