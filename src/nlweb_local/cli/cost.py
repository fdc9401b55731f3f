"""`nlweb-local cost report [--since --until] [--format table|json|csv] [--chart FILE.png]`: what the LLM calls
cost and saved."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone

from ..config.settings import Settings
from ..core.errors import BadRequestError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="cost report: spend by route, savings, projection and break-even",
                       description="report: spend by route (local, cloud, hybrid = all), cost per 1K tokens, savings "
                       "against the reference cloud model (telemetry.reference_model), and a projection at the scales "
                       "in telemetry.scales: monthly cost, break-even month for the configured hardware, 3-year TCO. "
                       "Read from the cost ledger (telemetry.ledger_path).")
    p.add_argument("action", choices=["report"])
    p.add_argument("--since", metavar="WHEN", help="start: ISO date/time (UTC unless it says), unix seconds, or an age "
                   "like 24h, 7d, 30m")
    p.add_argument("--until", metavar="WHEN", help="end (exclusive), same forms as --since; default now")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--by", choices=["key", "team"], help="instead: calls, tokens and cost per API key (key id or SSO "
                   "subject) or per team")
    p.add_argument("--chart", metavar="FILE.png", help="also draw daily spend (local, cloud), the cloud-equivalent "
                   "cost, savings and the 3-year TCO projection into a PNG (needs: pip install 'nlweb-local[charts]')")
    p.set_defaults(func=run)


def parse_when(text: str, now: float) -> float:
    t = text.strip()
    m = _RELATIVE.match(t)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"cannot read the time {text!r}: use 2025-08-01, 2025-08-01T12:00, 1754000000 or 24h/7d")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def assumptions(settings: Settings):
    from ..telemetry.prices import pricing_from_settings
    from ..telemetry.report import Assumptions

    t = settings.telemetry
    table, ref, hw = pricing_from_settings(t)
    return Assumptions(t.reference_model, ref, hw, t.max_utilization, dict(t.scales), table.as_of)


def run(args: argparse.Namespace, settings: Settings, *, now: float | None = None) -> int:
    from ..telemetry import ledger_path
    from ..telemetry.ledger import read_calls
    from ..telemetry.report import build_report, render_csv, render_table

    now = time.time() if now is None else now
    since = parse_when(args.since, now) if args.since else None
    until = parse_when(args.until, now) if args.until else None
    path = ledger_path(settings)
    if not path.exists():
        raise BadRequestError(f"no cost ledger at {path} yet: serve some LLM traffic first (nlweb-local serve), "
                              "or point telemetry.ledger_path at one")
    calls = read_calls(path, since, until)
    if getattr(args, "by", None):
        return _report_by(calls, args.by, args.format)
    rep = build_report(calls, assumptions(settings), since=since, until=until)
    chart = getattr(args, "chart", None)
    if chart:
        from ..telemetry.chart import chart_data, render_chart

        render_chart(chart_data(rep), chart)
        print(f"chart written to {chart}", file=sys.stderr)  # stderr: stdout may be JSON or CSV
    if args.format == "json":
        json.dump(rep, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.format == "csv":
        sys.stdout.write(render_csv(rep))
    else:
        span = " to ".join(datetime.fromtimestamp(x, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if x else "now"
                           for x in (since, until)) if since or until else "all recorded calls"
        print(f"Cost report: {span} (ledger {path})\n")
        sys.stdout.write(render_table(rep))
    return 0


def _report_by(calls, by: str, fmt: str) -> int:
    from ..telemetry.spend_by import render_csv as by_csv
    from ..telemetry.spend_by import render_table as by_table
    from ..telemetry.spend_by import spend_by

    groups = spend_by(calls, by)
    if fmt == "json":
        json.dump(groups, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(by_csv(groups, by) if fmt == "csv" else by_table(groups, by))
    return 0
