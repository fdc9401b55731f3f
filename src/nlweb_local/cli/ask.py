"""`nlweb-local ask "question"`: stream an answer to the terminal (from a running server, or in-process)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import textwrap
import urllib.parse
import urllib.request
from typing import Any, Iterable

from ..config.settings import Settings
from .remote import check_store_free, server_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask a question and stream the answer to the terminal",
                       description="Uses a running server when one answers (--server, the one `serve` recorded in the "
                       "data directory, or the configured one); otherwise loads the models in this process (and the "
                       "demo site into an empty store). Only the answer goes to stdout.")
    p.add_argument("query", help="the question")
    p.add_argument("--site", help="site name or comma list (default: all)")
    p.add_argument("--mode", choices=["list", "summarize", "generate"], default="list")
    p.add_argument("--prev", action="append", default=[], metavar="Q", help="an earlier question of the conversation (repeatable)")
    p.add_argument("--max-results", type=int, help="at most this many results")
    p.add_argument("--server", metavar="URL", help="server to ask (default: the running one, if any)")
    p.add_argument("--json", action="store_true", help="print the raw v3 messages as JSON lines")
    p.set_defaults(func=run)


def print_message(m: dict[str, Any], raw: bool, out=None) -> None:
    out = out or sys.stdout  # looked up per call: stdout may have been replaced since import
    if raw:
        print(json.dumps(m, ensure_ascii=False), file=out, flush=True)
        return
    t = m.get("message_type")
    if t == "decontextualized_query":
        print(f"(searching for: {m['decontextualized_query']})", file=out)
    elif t == "result" and m.get("@type") == "Summary":
        print("\nSummary:\n" + textwrap.fill(str(m["content"]), 100), file=out)
    elif t == "result":
        for it in m["content"]:
            print(f"{it['score']:>4}  {it['name']}\n      {it['url']}", file=out)
            if it.get("description"):
                print(textwrap.fill(it["description"], 100, initial_indent="      ", subsequent_indent="      "), file=out)
    elif t == "nlws":
        print("\nAnswer:\n" + textwrap.fill(str(m["answer"]), 100), file=out)
        for i, it in enumerate(m.get("items", [])):
            print(f"  [{i + 1}] {it['name']} — {it['url']}", file=out)
    elif t in ("no_results", "intermediate_message"):
        print(m.get("message", ""), file=out)
    elif t == "error":
        print(f"error: {m.get('error')}", file=sys.stderr)
    out.flush()


def _remote(url: str, args: argparse.Namespace) -> Iterable[dict[str, Any]]:
    q = {"query": args.query, "generate_mode": args.mode, "streaming": "true"}
    if args.site:
        q["site"] = args.site
    if args.prev:
        q["prev"] = json.dumps(args.prev)
    if args.max_results:
        q["max_results"] = str(args.max_results)
    with urllib.request.urlopen(f"{url}/ask?{urllib.parse.urlencode(q)}", timeout=600) as r:
        for line in r:
            if line.startswith(b"data: "):
                yield json.loads(line[6:])


async def _local(args: argparse.Namespace, settings: Settings, raw: bool) -> bool:
    from ..search.events import AskRequest
    from ..server.components import build_components
    from ..server.wire import V3Renderer

    check_store_free(settings)  # (before the models load)
    comp = build_components(settings)
    try:
        if not _has_items(comp, settings):
            return False
        pipeline = comp.pipeline  # the same pipeline the server runs
        req = AskRequest(query=args.query, sites=[s for s in (args.site or "").split(",") if s and s != "all"],
                         prev=args.prev, mode=args.mode,
                         max_results=args.max_results or settings.search.max_results)
        renderer = V3Renderer(req)
        ok = True
        async for ev in pipeline.run(req):
            for m in renderer.render(ev):
                ok = ok and m.get("message_type") != "error"
                print_message(m, raw)
        return ok
    finally:
        await comp.close()


def _has_items(comp, settings: Settings) -> bool:
    """An empty store gets the demo site, as `serve` gives it (server.autoload_demo); with that off, say
    what to run instead of answering "no results"."""
    if comp.store.count() > 0:
        return True
    if not settings.server.autoload_demo:
        print(f"nlweb-local: nothing is loaded in {settings.data_path}: load a site first with "
              "`nlweb-local ingest FILE_OR_URL --site NAME` (or set server.autoload_demo to get the demo site)",
              file=sys.stderr)
        return False
    from .serve import load_demo_if_empty

    print("The store is empty: loading the demo site 'cedarvalley' first (once; `nlweb-local ingest FILE --site "
          "NAME` loads your own)...", file=sys.stderr, flush=True)
    load_demo_if_empty(settings, comp)
    return True


def run(args: argparse.Namespace, settings: Settings) -> int:
    url = server_url(args.server, settings)
    if url:
        ok = True
        for m in _remote(url, args):
            ok = ok and m.get("message_type") != "error"
            print_message(m, args.json)
        return 0 if ok else 1
    return 0 if asyncio.run(_local(args, settings, args.json)) else 1
