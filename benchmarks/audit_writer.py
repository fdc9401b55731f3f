"""What the audit log's writer thread spends on one request's row, in CPU microseconds (off the event loop,
but on the same cores: at ~2,000 audited requests a second on one core, every microsecond here is ~0.2 %
of the gateway's throughput).

Rows like a governed /v1 chat call's (a user key in a team, one completion, no content) are

    make     made from what the request path queued (`AuditMiddleware._row`: the trail summed, the
             identity's fields, the row tuple)
    append   linked into the hash chain and inserted (`SqlAuditStore.append`, batches of --batch rows)
    through  all of it through `AuditLog` (queue, writer thread, make, append, commit), timed as the
             process's CPU from the first `record_later` to `flush()` returning

    python benchmarks/audit_writer.py [--rows 5000] [--repeat 5] [--batch 500] [--database-url URL]

Each figure is printed as the least of --repeat runs (the run least disturbed by a busy machine) with every
run beside it; SQLite in a temporary folder unless --database-url names a PostgreSQL database (a table
`audit_bench_<pid>` is made there and dropped). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _queued(trail_cls, req, who, answer):
    """What the audit middleware queues for one governed /v1 request (the arguments of `_row`)."""
    trail = trail_cls()
    trail.completed(req, answer)
    return (time.time(), "4c352180-2a", "POST", "/v1/chat/completions",
            [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"), (b"authorization", b"Bearer nlk_x")],
            200, 0.0042, who, trail, 0.000123, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5000, help="rows per run (default 5000)")
    p.add_argument("--repeat", type=int, default=5, help="runs; the least is printed (default 5)")
    p.add_argument("--batch", type=int, default=500, help="rows per append (the writer's batch_size; default 500)")
    p.add_argument("--database-url", default=None, help="a PostgreSQL URL (default: SQLite in a temporary folder)")
    args = p.parse_args(argv)

    import os

    from nlweb_local.core.types import ChatRequest, ChatResponse, Message, Served, Usage
    from nlweb_local.governance.audit import AuditLog
    from nlweb_local.governance.audit_middleware import AuditMiddleware
    from nlweb_local.governance.audit_store import PostgresAuditStore, SqliteAuditStore
    from nlweb_local.governance.audit_trail import RequestTrail
    from nlweb_local.governance.identity import Identity, Limits, Role

    who = Identity(key_id="ab12cd34ef56", name="bench", role=Role.USER, team="bench", limits=Limits())
    req = ChatRequest(model="gpt-4.1-mini", messages=[Message(role="user", content="Is Santa real?")])
    answer = ChatResponse(content="No, but the story is a kind one.", deployment="gpt-4.1-mini",
                          usage=Usage(prompt_tokens=14, completion_tokens=9),
                          served=Served(deployment="gpt-4.1-mini", reason="local-first: a local deployment can serve"))
    mw = AuditMiddleware(None, audit=None)
    n = max(1, args.rows)
    figures: dict[str, list[float]] = {"make": [], "append": [], "through": []}
    with tempfile.TemporaryDirectory(prefix="nlweb-audit-bench-") as tmp:
        table = f"audit_bench_{os.getpid()}"

        def store(i: int):
            if args.database_url:
                return PostgresAuditStore(args.database_url, table=table)
            return SqliteAuditStore(Path(tmp) / f"audit-{i}.sqlite")

        for i in range(max(1, args.repeat)):
            queued = [_queued(RequestTrail, req, who, answer) for _ in range(n)]
            t0 = time.process_time()
            rows = [mw._row(*q) for q in queued]
            figures["make"].append((time.process_time() - t0) / n * 1e6)
            s = store(2 * i)
            t0 = time.process_time()
            for at in range(0, n, args.batch):
                s.append(rows[at:at + args.batch])
            figures["append"].append((time.process_time() - t0) / n * 1e6)
            s.close()
            log = AuditLog(store(2 * i + 1), batch_size=args.batch, max_queue=n + 1)
            queued = [_queued(RequestTrail, req, who, answer) for _ in range(n)]
            t0 = time.process_time()
            for q in queued:
                log.record_later(mw._row, q)
            if not log.flush(120.0):
                raise RuntimeError("the audit writer did not finish in 120 s")
            figures["through"].append((time.process_time() - t0) / n * 1e6)
            if log.written != n:
                raise RuntimeError(f"the audit log wrote {log.written} rows of {n}")
            log.close()
        if args.database_url:
            import psycopg

            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
    where = "PostgreSQL" if args.database_url else "SQLite"
    print(f"audit writer, {where}, {n} rows a run, batches of {args.batch}, CPU us a row (least of {args.repeat} runs):")
    for k, v in figures.items():
        print(f"  {k:8s} {min(v):6.1f}   runs: {', '.join(f'{x:.1f}' for x in v)}")
    print(json.dumps({"store": where, "rows": n, "batch": args.batch,
                      **{f"{k}_us_per_row": round(min(v), 2) for k, v in figures.items()},
                      "runs": {k: [round(x, 2) for x in v] for k, v in figures.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
