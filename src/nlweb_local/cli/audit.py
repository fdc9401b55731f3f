"""`nlweb-local audit verify | export | erase`: check, read and redact the audit log."""
from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime, timezone

from ..config.settings import Settings
from ..core.errors import BadRequestError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="verify, export or erase from the audit log",
                       description="The audit log keeps one hash-chained row per request (audit.* settings). "
                       "verify: exit 0 when the chain holds, 1 naming the first broken row; export: JSON lines; "
                       "erase: remove a subject's identity and content (GDPR) while the chain still verifies.")
    p.add_argument("action", choices=["verify", "export", "erase"])
    p.add_argument("--since", metavar="WHEN", help="export: rows from then on: a date or time (2026-11-01, "
                   "2026-11-01T09:00, UTC), an age (90m, 24h, 7d) or unix seconds")
    p.add_argument("--output", "-o", metavar="FILE", help="export: write to FILE instead of standard output")
    p.add_argument("--expect", metavar="SEQ:HASH", help="verify: a head noted earlier (printed by verify) that "
                   "must still be in the chain; catches removal of the newest rows")
    p.add_argument("--subject", help="erase: the subject (user) whose rows to redact")
    p.add_argument("--key-id", help="erase: the API key id whose rows to redact")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..governance.audit_store import open_store

    store = open_store(settings.audit, settings.data_path, check=args.action == "erase")  # (never extend a broken chain)
    try:
        if args.action == "verify":
            return _verify(store, args)
        if args.action == "export":
            return _export(store, args)
        return _erase(store, args)
    finally:
        store.close()


def _verify(store, args) -> int:
    from ..governance.audit import verify

    v = verify(store, expect=_expect(args.expect) if args.expect else None)
    if v.broken is not None:
        print(f"audit log {store.where}: BROKEN at {v.broken} ({v.rows} rows before it hold)", file=sys.stderr)
        return 1
    if v.problem:
        print(f"audit log {store.where}: BROKEN: {v.problem}", file=sys.stderr)
        return 1
    head = f"head {v.head[0]}:{v.head[1]}" if v.head else "empty"
    print(f"audit log {store.where}: chain holds, {v.rows} rows, {head}")
    return 0


def _export(store, args) -> int:
    from ..governance.audit import export

    since = parse_since(args.since) if args.since else None
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            n = export(store, out, since=since)
        print(f"wrote {n} audit rows to {args.output}", file=sys.stderr)
    else:
        export(store, sys.stdout, since=since)
    return 0


def _erase(store, args) -> int:
    if not args.subject and not args.key_id:
        raise BadRequestError("audit erase: name whose rows to redact with --subject S or --key-id K")
    n = store.erase(subject=args.subject or "", key_id=args.key_id or "", ts=time.time())
    who = f"subject {args.subject!r}" if args.subject else f"API key {args.key_id!r}"
    print(f"erased the identity and content of {n} rows of {who}" + ("" if n else " (none found)"))
    return 0


def _expect(text: str) -> tuple[int, str]:
    m = re.fullmatch(r"(\d+):([0-9a-f]{64})", text.strip())
    if not m:
        raise BadRequestError(f"--expect {text!r}: give SEQ:HASH as `nlweb-local audit verify` prints it")
    return int(m.group(1)), m.group(2)


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds from a date/time (UTC unless it names a zone), an age (30s, 90m, 24h, 7d) or unix seconds."""
    now = time.time() if now is None else now
    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", t)
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if re.fullmatch(r"\d{9,}(\.\d+)?", t):
        return float(t)
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise BadRequestError(f"--since {text!r}: give a date (2026-11-01), a time (2026-11-01T09:00), an age "
                              "(24h, 7d) or unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()
