"""`nlweb-local keys create|list|revoke|rotate`: API keys (governance/keyring.py; /admin/keys does the same
over HTTP). `create` and `rotate` print the secret once, as the last word on its own line:

    KEY=$(nlweb-local keys create --name ci --role user | tail -n 1)
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from ..config.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="API keys: create, list, revoke, rotate",
                       description="API keys for the HTTP API (auth is on as soon as one exists). Only a hash of each "
                       "key is stored (HMAC-SHA256 with the secret in <data_dir>/auth.secret).")
    ks = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = ks.add_parser("create", help="make a key and print it (once)")
    c.add_argument("--name", required=True, help="who or what the key is for")
    c.add_argument("--role", required=True, choices=["admin", "operator", "user"])
    c.add_argument("--team", default="", help="team (its limits: auth.teams in the settings)")
    c.add_argument("--models", nargs="+", default=[], metavar="MODEL", help="models (aliases or deployments) it may use; default all")
    c.add_argument("--sites", nargs="+", default=[], metavar="SITE", help="sites it may search; default all")
    c.add_argument("--expires", metavar="AGE", help="lifetime, e.g. 30d, 12h, 2w; default never")
    c.add_argument("--allow-from", nargs="+", default=[], metavar="CIDR", help="networks it may be used from, e.g. "
                   "10.0.0.0/8; default anywhere (behind a proxy: auth.trusted_proxies)")
    c.add_argument("--privacy", choices=["any", "local_only"], default="any", help="local_only: every LLM call made "
                   "with the key stays on local deployments, whatever the request says")
    c.add_argument("--priority", default="", metavar="CLASS", help="priority class (llm.priority.classes: interactive, "
                   "default, batch) or integer of its requests that send no x-nlweb-priority; default: the team's, else default")
    c.add_argument("--max-priority", default="", metavar="CLASS", help="highest class its requests may run at (a higher "
                   "x-nlweb-priority is lowered to it), e.g. batch for an offline job's key; default any")
    c.add_argument("--rpm", type=int, metavar="N", help="requests a minute")
    c.add_argument("--tokens-per-day", type=int, metavar="N", help="LLM tokens (in + out) a UTC day")
    c.add_argument("--usd-per-day", type=float, metavar="USD", help="LLM spend a UTC day, in US dollars")
    c.add_argument("--usd-per-month", type=float, metavar="USD", help="LLM spend a UTC calendar month, in US dollars")
    ls = ks.add_parser("list", help="every key (never its secret)")
    ls.add_argument("--json", action="store_true")
    for name, what in (("revoke", "stop a key working"), ("rotate", "give a key a new secret (the old one stops working)")):
        a = ks.add_parser(name, help=what)
        a.add_argument("key_id", help="the key's id (nlweb-local keys list)")
    p.set_defaults(func=run)


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M") if t else "-"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..core.priority import PriorityClasses
    from ..core.types import Privacy
    from ..governance import open_keyring
    from ..governance.identity import Limits
    from ..governance.keys import parse_duration, parse_role

    keyring = open_keyring(settings)
    try:
        if args.action == "create":
            limits = Limits.of({"requests_per_minute": args.rpm, "tokens_per_day": args.tokens_per_day,
                                "usd_per_day": args.usd_per_day, "usd_per_month": args.usd_per_month})
            p = settings.llm.priority
            classes = PriorityClasses(p.classes, p.default_class)
            priority = classes.check(args.priority, "--priority") or ""
            max_priority = classes.check(args.max_priority, "--max-priority") or ""
            record, key = keyring.create(args.name, parse_role(args.role), team=args.team, models=args.models,
                                         sites=args.sites, expires_in_s=parse_duration(args.expires) if args.expires else None,
                                         limits=limits, allow_from=args.allow_from, privacy=Privacy(args.privacy),
                                         priority=priority, max_priority=max_priority)
            print(f"created key {record.key_id} ({record.name}, role {record.role.label}"
                  f"{', team ' + record.team if record.team else ''}, expires {_when(record.expires_at)}); "
                  "the secret is shown once, keep it now:", file=sys.stderr)
            print(key)
        elif args.action == "list":
            records = keyring.list()
            if args.json:
                print(json.dumps([r.public() for r in records], indent=2))
            else:
                print(f"{'ID':<13}{'NAME':<20}{'ROLE':<9}{'TEAM':<12}{'STATUS':<8}{'EXPIRES':<17}SCOPE / LIMITS")
                for r in records:
                    d = r.public()
                    scope = " ".join(([f"models={','.join(r.models)}"] if r.models else [])
                                     + ([f"sites={','.join(r.sites)}"] if r.sites else [])
                                     + ([f"from={','.join(r.allow_from)}"] if r.allow_from else [])
                                     + ([f"privacy={r.privacy.value}"] if r.privacy.value != "any" else [])
                                     + ([f"priority={r.priority}"] if r.priority else [])
                                     + ([f"max_priority={r.max_priority}"] if r.max_priority else [])
                                     + [f"{k}={v}" for k, v in d["limits"].items()])
                    print(f"{r.key_id:<13}{r.name[:19]:<20}{d['role']:<9}{r.team[:11]:<12}{d['status']:<8}"
                          f"{_when(r.expires_at):<17}{scope}")
        elif args.action == "revoke":
            record = keyring.revoke(args.key_id)
            print(f"revoked key {record.key_id} ({record.name}); a running server stops accepting it within "
                  f"auth.key_cache_ttl_s ({settings.auth.key_cache_ttl_s:g} s)")
        else:
            record, key = keyring.rotate(args.key_id)
            print(f"rotated key {record.key_id} ({record.name}); the old secret stops working (a running server: "
                  f"within {settings.auth.key_cache_ttl_s:g} s). The new secret, shown once:", file=sys.stderr)
            print(key)
    finally:
        keyring.close()
    return 0
