"""What the OpenAI-compatible adapter costs on top of a bare aiohttp POST.

Starts the zero-delay mock upstream (/work/shared/bench/gateway/mock_upstream.py: a raw-asyncio
HTTP/1.1 server with one canned, non-streamed chat completion) on a free port, then in this one
process measures N non-streamed chat calls, sequentially and at a fixed concurrency, through
(a) a bare aiohttp POST (body read, nothing parsed) and (b) `OpenAICompatProvider.complete()`
(request body built from a `ChatRequest`, the answer parsed into a `ChatResponse`). Rounds alternate
between (a) and (b) so both see the same machine noise. The mock answers non-streamed requests only,
so streaming is not measured here.

    .venv/bin/python benchmarks/adapter_overhead.py [--mock PATH] [-n 3000] [--concurrency 16] [--rounds 3]

Prints one line per measurement, then one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nlweb_local.config.settings import DeploymentSettings  # noqa: E402
from nlweb_local.core.types import ChatRequest, Message  # noqa: E402
from nlweb_local.providers.openai_compat import from_settings  # noqa: E402

PROMPT = "Where was the 2020 World Series played?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mock(path: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(path), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the mock upstream {path} did not listen on port {port}")


async def run_calls(call, n: int, concurrency: int) -> tuple[list[int], float]:
    """n calls spread over `concurrency` workers: per-call latencies (ns) and wall time (s)."""
    lat: list[int] = []
    per_worker = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    async def worker(k: int) -> None:
        for _ in range(k):
            t0 = time.perf_counter_ns()
            await call()
            lat.append(time.perf_counter_ns() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in per_worker))
    return lat, time.perf_counter() - t0


def figures(lats: list[int], rates: list[float]) -> dict[str, float]:
    q = statistics.quantiles(lats, n=100)
    return {"p50_us": round(q[49] / 1000, 1), "p95_us": round(q[94] / 1000, 1), "rps": round(statistics.median(rates), 1)}


async def main(args: argparse.Namespace) -> dict:
    port = free_port()
    mock = start_mock(args.mock, port)
    url = f"http://127.0.0.1:{port}/v1"
    body = {"model": "mock", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64, "temperature": 0.0,
            "stream": False}
    request = ChatRequest(messages=[Message("user", PROMPT)], max_tokens=64)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30))
    provider = from_settings(DeploymentSettings(name="bench", engine="vllm", url=url, model="mock"), {})

    async def bare() -> None:
        async with session.post(url + "/chat/completions", json=body) as resp:
            await resp.read()

    async def adapter() -> None:
        r = await provider.complete(request)
        assert r.content

    out: dict = {"n": args.n, "concurrency": args.concurrency, "rounds": args.rounds,
                 "loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}
    try:
        for fn in (bare, adapter):  # warm up: connections open, code paths hot
            await run_calls(fn, 200, args.concurrency)
        for label, conc in (("sequential", 1), (f"concurrency_{args.concurrency}", args.concurrency)):
            got: dict[str, tuple[list[int], list[float]]] = {"bare": ([], []), "adapter": ([], [])}
            for _ in range(args.rounds):
                for name, fn in (("bare", bare), ("adapter", adapter)):
                    lats, wall = await run_calls(fn, args.n, conc)
                    got[name][0].extend(lats)
                    got[name][1].append(args.n / wall)
            res = {name: figures(*v) for name, v in got.items()}
            res["ratio_p50"] = round(res["adapter"]["p50_us"] / res["bare"]["p50_us"], 2)
            res["ratio_rps"] = round(res["adapter"]["rps"] / res["bare"]["rps"], 2)
            res["added_p50_us"] = round(res["adapter"]["p50_us"] - res["bare"]["p50_us"], 1)
            out[label] = res
            for name in ("bare", "adapter"):
                f = res[name]
                print(f"{label:>16} {name:>8}: p50 {f['p50_us']:8.1f} µs  p95 {f['p95_us']:8.1f} µs  {f['rps']:9.1f} req/s")
            print(f"{label:>16}    ratio: p50 adapter/bare {res['ratio_p50']}x, req/s adapter/bare {res['ratio_rps']}x")
    finally:
        await provider.close()
        await session.close()
        mock.terminate()
        mock.wait(5)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mock", type=Path, default=ROOT / "../shared/bench/gateway/mock_upstream.py")
    ap.add_argument("-n", type=int, default=3000, help="calls per round and mode")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    a = ap.parse_args()
    if not a.no_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    print(json.dumps(asyncio.run(main(a))))
