"""What governance adds to a /v1 request, counted exactly: Python bytecodes executed on the event loop.

Timings on a shared two-core machine spread by up to 2x from one run to the next; the number of bytecodes
a request executes does not. This builds the gateway as `bench_gateway.py --governance` does (governance
off: no auth, no limits, no audit log; on: auth, a user key in a team with requests/minute, tokens/day and
dollars/day limits on the key and the team, and the audit log), drives each app in process over ASGI (no
HTTP server, no client: the upstream is the kit's mock over loopback, through the real adapter), and counts
the opcodes the main thread executes per request (`sys.settrace` with `f_trace_opcodes`). The audit log's
and the ledger's writer threads are not counted (their rows are made, hashed and inserted off the loop).

    python benchmarks/governance_bytecodes.py --kit ../shared/bench/gateway [-n 200]

Prints per request: off, on, and on - off. To compare two revisions, run each revision's copy of this file.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

BODY = b'{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Is Santa real?"}]}'


def _scope(headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(BODY)).encode()), *headers],
            "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000), "state": {}}


async def _one(app, headers) -> int:
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)

    status = []

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(_scope(headers), receive, send)
    return status[0]


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.n += 1
        return self


async def _lifespan(app):
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})

    async def send(message):
        await outbox.put(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    return inbox, outbox, task


async def _measure(apps: dict, n: int) -> dict[str, float]:
    running = {name: await _lifespan(app) for name, (app, _) in apps.items()}
    out = {}
    for name, (app, headers) in apps.items():
        for _ in range(20):  # warm-up: caches, the key lookup, the limits' cells, connections
            assert await _one(app, headers) == 200
        count = _Count()
        sys.settrace(count)
        try:
            for _ in range(n):  # one at a time: every opcode counted belongs to these requests
                status = await _one(app, headers)
        finally:
            sys.settrace(None)
        assert status == 200, f"{name}: {status}"
        out[name] = count.n / n
    for inbox, outbox, task in running.values():
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kit", required=True, type=Path, help="the gateway benchmark kit (its mock_upstream.py)")
    p.add_argument("-n", type=int, default=200, help="requests counted per configuration (default 200)")
    args = p.parse_args(argv)
    import bench_gateway as bg
    from nlweb_local.config.settings import Settings
    from nlweb_local.server.app import create_app
    from nlweb_local.server.components import build_components

    with tempfile.TemporaryDirectory(prefix="nlweb-govbc-") as tmp, ExitStack() as stack:
        port = bg.free_port()
        bg.start(stack, "mock", [sys.executable, str(args.kit / "mock_upstream.py"), str(port)], port, Path(tmp))
        apps = {}
        for name in ("off", "on"):
            (Path(tmp) / name).mkdir()
            s = bg.gateway_settings(Settings(), port, Path(tmp) / name)
            headers: list[tuple[bytes, bytes]] = []
            if name == "on":
                s, key = bg.governed_settings(s, Path(tmp) / name)
                headers = [(b"authorization", f"Bearer {key}".encode())]
            off = {"governance": None, "audit": None} if name == "off" else {}
            comp = build_components(s, embedder=bg._InertEmbedder(), store=bg._EmptyStore(), **off)
            apps[name] = (create_app(s, comp, close_components=True), headers)
        counts = asyncio.run(_measure(apps, args.n))
    delta = counts["on"] - counts["off"]
    print(f"bytecodes per /v1 request on the event loop: governance off {counts['off']:.0f}, on {counts['on']:.0f}, "
          f"on - off {delta:+.0f}")
    print(json.dumps({"off": round(counts["off"]), "on": round(counts["on"]), "delta": round(delta)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
