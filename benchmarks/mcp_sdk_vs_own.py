"""Should /mcp be served by the official `mcp` SDK's server instead of `server/mcp.py`? Measures both.

Both serve the same three tools over one fake backend (no search runs), in-process (httpx's ASGI
transport, no sockets): the SDK as `MCPServer(...).streamable_http_app(stateless_http=True,
json_response=True)` (stateless, so several workers can serve one client), ours as `mcp_routes(...)`.

1. What NLWeb's MCP clients send (issue 13): for each probe, the status and the JSON-RPC outcome.
2. Cost: N sequential `tools/call who` requests, alternating rounds, median µs per request.

    .venv/bin/python benchmarks/mcp_sdk_vs_own.py [-n 500] [--rounds 3]

Prints one line per probe and per round, then one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
from starlette.applications import Starlette

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nlweb_local.server.mcp import mcp_routes  # noqa: E402

BOTH = "application/json, text/event-stream"


class Tools:
    async def ask(self, query: str, sites: list[str] | None, generate_mode: str) -> str:
        return f"answer to {query} from {','.join(sites) if sites else 'all'} ({generate_mode})"

    async def list_sites(self) -> list[str]:
        return ["seriouseats"]

    async def who(self, query: str) -> str:
        return f"seriouseats (for {query})"


def sdk_app() -> Starlette:
    from mcp.server.mcpserver import MCPServer

    tools = Tools()
    server = MCPServer("nlweb-local", version="bench", log_level="WARNING")

    @server.tool(description="search the sites")
    async def ask(query: str, site: list[str] | str | None = None, generate_mode: str = "list") -> str:
        return await tools.ask(query, [site] if isinstance(site, str) else site, generate_mode)

    @server.tool(description="list the sites")
    async def list_sites() -> str:
        return json.dumps({"sites": await tools.list_sites()})

    @server.tool(description="which sites")
    async def who(query: str) -> str:
        return await tools.who(query)

    return server.streamable_http_app(stateless_http=True, json_response=True)


def own_app() -> Starlette:
    return Starlette(routes=mcp_routes(Tools(), version="bench"))


def rpc(method: str, params: dict | None = None, id: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": id, "method": method, **({"params": params} if params is not None else {})}


INIT = rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                          "clientInfo": {"name": "bench", "version": "0"}})
PROBES = [
    ("initialize", INIT, BOTH),
    ("tools/call ask, site as a string", rpc("tools/call", {"name": "ask", "arguments": {"query": "x", "site": "a"}}), BOTH),
    ("Accept: text/event-stream only", rpc("tools/call", {"name": "who", "arguments": {"query": "x"}}), "text/event-stream"),
    ("prompts/list", rpc("prompts/list"), BOTH),
    ("legacy function_call body", {"function_call": {"name": "ask", "arguments": "{\"query\": \"x\"}"}}, BOTH),
    ("batch of two (2025-03-26 clients)", [rpc("ping", id=1), rpc("ping", id=2)], BOTH),
]


def outcome(r: httpx.Response) -> str:
    text = r.text
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        text = text.split("data: ", 1)[-1].strip()
    try:
        body = json.loads(text)
    except ValueError:
        return f"{r.status_code} (not JSON: {text[:60]!r})"
    first = body[0] if isinstance(body, list) and body else body
    if not isinstance(first, dict):
        return f"{r.status_code} {text[:60]}"
    if "error" in first:
        return f"{r.status_code} error {first['error'].get('code')}: {str(first['error'].get('message'))[:70]}"
    result = first.get("result", {})
    if isinstance(result, dict) and result.get("isError"):
        return f"{r.status_code} tool error: {json.dumps(result.get('content'))[:70]}"
    return f"{r.status_code} ok" + (f" ({len(body)} responses)" if isinstance(body, list) else "")


async def probe(name: str, app: Starlette) -> dict[str, str]:
    out = {}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000") as c:
            for label, body, accept in PROBES:
                headers = {"Content-Type": "application/json", "Accept": accept, "MCP-Protocol-Version": "2025-06-18"}
                if label == "initialize":
                    headers.pop("MCP-Protocol-Version")
                r = await c.post("/mcp", content=json.dumps(body), headers=headers)
                out[label] = outcome(r)
                print(f"{name:4} {label:36} {out[label]}")
    return out


async def timed(app: Starlette, n: int) -> float:
    body = json.dumps(rpc("tools/call", {"name": "who", "arguments": {"query": "ramen"}}))
    headers = {"Content-Type": "application/json", "Accept": BOTH, "MCP-Protocol-Version": "2025-06-18"}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000") as c:
            for _ in range(20):  # warm-up
                (await c.post("/mcp", content=body, headers=headers)).raise_for_status()
            start = time.perf_counter()
            for _ in range(n):
                r = await c.post("/mcp", content=body, headers=headers)
                assert r.status_code == 200, r.text
            return (time.perf_counter() - start) / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    behaviour = {"sdk": await probe("sdk", sdk_app()), "own": await probe("own", own_app())}
    times: dict[str, list[float]] = {"sdk": [], "own": []}
    for i in range(args.rounds):
        for name, make in (("sdk", sdk_app), ("own", own_app)) if i % 2 == 0 else (("own", own_app), ("sdk", sdk_app)):
            us = await timed(make(), args.n)
            times[name].append(us)
            print(f"round {i + 1} {name}: {us:.0f} µs per tools/call (n={args.n})")
    print(json.dumps({"behaviour": behaviour,
                      "us_per_call_median": {k: round(statistics.median(v)) for k, v in times.items()}}))


if __name__ == "__main__":
    asyncio.run(main())
