"""`nlweb-local ab start|stop|list|report`: A/B experiments between versions of a registry alias.

    ab start --alias chat-default --variants v3:50,v4:50 [--metric quality|latency|cost] [--min-samples N]
    ab stop --alias chat-default
    ab list [--alias A] [--format json]
    ab report [--alias A | --id N] [--format json]

The experiment lives in the model registry's database (`registry.database_url`); a running server picks a
start or stop up within `registry.poll_s`. The report reads the cost ledger (latency, cost, which version
served each request) and the feedback table (ratings sent to POST /feedback).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..config.settings import Settings
from ..core.errors import BadRequestError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ab", help="A/B experiments between versions of a registry alias: start, stop, list, report",
                       description="start: split an alias's requests between versions (sticky per conversation or "
                       "caller, weighted); stop: back to the alias's version; report: per-variant means with 95%% "
                       "intervals and a verdict (two-proportion z-test on ratings, bootstrap on latency and cost).")
    p.add_argument("action", choices=["start", "stop", "list", "report"])
    p.add_argument("--alias", metavar="A", help="the registry alias (start/stop: required)")
    p.add_argument("--variants", metavar="V:W,...", help="start: versions of the alias's model and their weights, "
                   "e.g. v3:50,v4:50 (the first is the control)")
    p.add_argument("--metric", choices=["quality", "latency", "cost"], default="quality",
                   help="start: the metric the verdict is about (default: quality, from POST /feedback ratings)")
    p.add_argument("--min-samples", type=int, default=100, metavar="N",
                   help="start: samples each variant needs before the report gives a verdict (default: 100)")
    p.add_argument("--id", type=int, metavar="N", help="report: an experiment by number (default: the newest)")
    p.add_argument("--by", help="who makes the change (default: your user name)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..registry import build_registry
    from ..registry.experiments import Experiments
    from .model_registry import _who

    registry = build_registry(settings)
    try:
        experiments = Experiments(registry, served={d.serves for d in settings.llm.all_deployments() if d.serves})
        if args.action == "start":
            if not args.alias or not args.variants:
                raise BadRequestError("usage: nlweb-local ab start --alias ALIAS --variants v3:50,v4:50 "
                                      "[--metric quality|latency|cost] [--min-samples N]")
            e = experiments.start(args.alias, args.variants, metric=args.metric, min_samples=args.min_samples,
                                  by=_who(args))
            _print(args, e.as_dict(), f"started experiment {e.id} on {e.alias}: {', '.join(e.keys)} "
                                      f"({e.spec()}), metric {e.metric}, min samples {e.min_samples}")
        elif args.action == "stop":
            if not args.alias:
                raise BadRequestError("usage: nlweb-local ab stop --alias ALIAS")
            e = experiments.stop(args.alias, by=_who(args))
            _print(args, e.as_dict(), f"stopped experiment {e.id} on {e.alias}; it serves "
                                      f"{next((a.key for a in registry.aliases() if a.alias == e.alias), '?')} again")
        elif args.action == "list":
            found = experiments.list(args.alias)
            if args.format == "json":
                print(json.dumps([e.as_dict() for e in found], indent=2))
            else:
                for e in found or []:
                    state = "running" if e.running else f"stopped {e.as_dict()['stopped_at']} by {e.stopped_by}"
                    print(f"{e.id:6d}  {e.alias:20s} {e.spec():24s} {e.metric:8s} min {e.min_samples:<6d} "
                          f"started {e.as_dict()['started_at']} by {e.started_by}; {state}")
                if not found:
                    print("no experiments (start one: nlweb-local ab start --alias A --variants v1:50,v2:50)")
        else:
            out = _report(experiments, settings, args)
            if args.format == "json":
                print(json.dumps(out, indent=2))
            else:
                from ..registry.ab_report import render_text

                print(render_text(out))
        return 0
    finally:
        registry.close()


def _report(experiments: Any, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from ..registry.ab_report import report
    from ..telemetry import ledger_path
    from ..telemetry.ledger import read_calls

    e = experiments.get(args.id, args.alias)
    path = ledger_path(settings)
    calls = read_calls(path, e.started_at, e.stopped_at) if path.exists() else []
    return report(e, calls, experiments.store.feedback(e.started_at, e.stopped_at))


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2) if args.format == "json" else text)
