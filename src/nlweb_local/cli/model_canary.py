"""Canary releases from the command line (the registry's canary.py):

    models promote NAME VERSION --alias A --canary 5,25,50,100 [--guard "error_rate<2%,p95_ttft<1.5x"]
                                [--min-requests N]
    models register NAME VERSION --file model.gguf --promote-canary --alias A [--canary ...] [--guard ...]
    models canary status [ALIAS] [--format json]      stages, decisions, each side's figures now
    models rollback ALIAS                              during a canary: stop it, traffic back at once

Running servers pick a started canary up within `registry.canary_check_s` and decide its stages.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import BadRequestError
from ..registry.guards import DEFAULT_GUARDS


def add_arguments(g: Any) -> None:
    g.add_argument("--canary", metavar="STAGES", help="promote: release by stages of traffic, e.g. 5,25,50,100")
    g.add_argument("--guard", default=DEFAULT_GUARDS, help=f"canary guards (default: {DEFAULT_GUARDS.replace('%', '%%')})")
    g.add_argument("--min-requests", type=int, metavar="N", help="canary: candidate calls per stage before it is "
                   "judged (default: registry.canary_min_requests)")
    g.add_argument("--promote-canary", action="store_true", help="register: then start a canary of the new version "
                   "on --alias (stages from --canary, default 5,25,50,100): the step a CI pipeline runs")


def start(registry: Any, args: argparse.Namespace, settings: Any, name: str, version: str, by: str) -> int:
    from ..registry.canary import start_canary

    if not args.alias:
        raise BadRequestError("a canary needs --alias ALIAS (the alias whose traffic it takes over)")
    n = args.min_requests if args.min_requests is not None else settings.registry.canary_min_requests
    c = start_canary(registry, name, version, alias=args.alias, stages=args.canary or "5,25,50,100",
                     guards=args.guard, min_requests=n, by=by)
    print(f"canary {c.id}: {c.alias} {c.base_key} -> {c.key}, stages {','.join(f'{s:g}' for s in c.stages)}%, "
          f"guards {c.guards}, {c.min_requests} calls per stage; now {c.weight:g}% "
          f"(nlweb-local models canary status {c.alias})")
    return 0


def status(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    from ..server.canary_admin import canaries

    if not words or words[0] != "status" or len(words) > 2:
        raise BadRequestError("usage: nlweb-local models canary status [ALIAS] [--format json]")
    rows = canaries(registry, words[1] if len(words) > 1 else None)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no canaries: nlweb-local models promote NAME VERSION --alias A --canary 5,25,50,100")
    for r in rows:
        print(f"canary {r['id']} on {r['alias']}: {r['baseline']} -> {r['candidate']}  {r['status']}, stage "
              f"{r['stage']}/{len(r['stages'])} ({r['weight']:g}%), guards {r['guards']}")
        if r["status"] == "running":
            b, c = r["now"]["baseline"], r["now"]["candidate"]
            print(f"  this stage: candidate {c['requests']} calls, {c['errors']} failed, p95 TTFT {c['p95_ttft_s']} s; "
                  f"baseline {b['requests']} calls, {b['errors']} failed, p95 TTFT {b['p95_ttft_s']} s")
            print(f"  now: {r['now']['why']}")
        for d in r["decisions"]:
            print(f"  {d['at']}  stage {d['stage']} ({d['weight']:g}%)  {d['action']:<8} {d['reason']}  by {d['by']}")
    return 0
