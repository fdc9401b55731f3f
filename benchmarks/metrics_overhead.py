"""What measuring costs: the gateway with and without telemetry, in one run.

Two uvicorn servers, each serving the real gateway app over one zero-delay scripted deployment: one
plain, one with every deployment wrapped in `MeteredProvider` (Prometheus series, recent-calls window,
the SQLite cost ledger writing on its thread, the x-request-id middleware). An aiohttp client in this
process sends non-streamed /v1/chat/completions at a fixed concurrency; rounds alternate between the
two servers so both see the same machine noise. Prints req/s for both (median of rounds), the
throughput difference (median of the per-round-pair ratios, robust to drifting load), and each
server's CPU time per request (from /proc: robust to other processes sharing the cores, and it
includes the ledger's writer thread). The target is ≤ 10 % at concurrency 16.

    .venv/bin/python benchmarks/metrics_overhead.py [-n 1000] [--concurrency 16] [--rounds 10] [--stream]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(kind: str, port: int, data_dir: str) -> None:
    """Child process: the gateway app over a zero-delay scripted deployment, metered or not."""
    import logging

    import uvicorn

    from nlweb_local.config.settings import load_settings
    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.server.app import create_app
    from nlweb_local.server.components import build_components

    logging.disable(logging.WARNING)
    settings = load_settings(ROOT / "nlweb-local.yaml", environ={"NLWEB_LOCAL_DATA_DIR": data_dir})
    provider = ScriptedProvider("local", "Hello from a scripted model.")
    telemetry = None
    if kind == "metered":
        from nlweb_local.telemetry import build_telemetry

        telemetry = build_telemetry(settings)

    class Nothing:
        dimension = 2

        def embed(self, texts):
            return [[1.0, 0.0] for _ in texts]

        def count(self):
            return 0

    settings.llm.deployments = []
    comp = build_components(settings, providers={"local": provider}, embedder=Nothing(), store=Nothing(),
                            telemetry=telemetry)
    app = create_app(settings, comp, close_components=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run()
    finally:
        if telemetry is not None:
            telemetry.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), or None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(kind: str, port: int, data_dir: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port), "--data-dir", data_dir],
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the {kind} server did not start")


async def round_trip(session, url: str, n: int, concurrency: int, stream: bool) -> float:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Where was the 2020 World Series played?"}],
            "stream": stream}
    per_worker = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    async def worker(k: int) -> None:
        for _ in range(k):
            async with session.post(url, json=body) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"{url}: HTTP {r.status}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in per_worker))
    return n / (time.perf_counter() - t0)


async def measure(args: argparse.Namespace) -> dict:
    import aiohttp

    with tempfile.TemporaryDirectory() as tmp:
        ports = {"bare": free_port(), "metered": free_port()}
        procs = {kind: start(kind, port, os.path.join(tmp, kind)) for kind, port in ports.items()}
        try:
            rates: dict[str, list[float]] = {"bare": [], "metered": []}
            cpu: dict[str, float] = {"bare": 0.0, "metered": 0.0}
            conn = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=conn) as session:
                urls = {k: f"http://127.0.0.1:{p}/v1/chat/completions" for k, p in ports.items()}
                for k in urls:  # warm-up
                    await round_trip(session, urls[k], min(500, args.n), args.concurrency, args.stream)
                for rnd in range(args.rounds):
                    order = ("bare", "metered") if rnd % 2 == 0 else ("metered", "bare")
                    for k in order:
                        c0 = cpu_seconds(procs[k].pid)
                        rate = await round_trip(session, urls[k], args.n, args.concurrency, args.stream)
                        c1 = cpu_seconds(procs[k].pid)
                        if c0 is not None and c1 is not None:
                            cpu[k] += c1 - c0
                        rates[k].append(rate)
                        print(f"round {rnd + 1} {k:<8} {rate:8.1f} req/s", flush=True)
                async with session.get(f"http://127.0.0.1:{ports['metered']}/admin/stats?window=3600") as r:
                    stats = await r.json()
        finally:
            for p in procs.values():
                p.terminate()
                p.wait(10)
    bare, metered = statistics.median(rates["bare"]), statistics.median(rates["metered"])
    ratio = statistics.median(m / b for b, m in zip(rates["bare"], rates["metered"]))
    total = args.n * args.rounds
    cpu_us = {k: round(v / total * 1e6, 1) for k, v in cpu.items()}
    return {"concurrency": args.concurrency, "requests_per_round": args.n, "rounds": args.rounds,
            "stream": args.stream, "bare_rps": round(bare, 1), "metered_rps": round(metered, 1),
            "overhead_pct": round((1 - ratio) * 100, 1),
            "bare_cpu_us_per_request": cpu_us["bare"], "metered_cpu_us_per_request": cpu_us["metered"],
            "cpu_overhead_pct": round((cpu["metered"] / cpu["bare"] - 1) * 100, 1) if cpu["bare"] else None,
            "metered_calls_seen": stats["calls"], "ledger": stats.get("ledger")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="requests per round and server")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--stream", action="store_true", help="streamed chat completions instead")
    ap.add_argument("--serve", choices=["bare", "metered"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data_dir)
        return
    out = asyncio.run(measure(args))
    print(f"bare {out['bare_rps']} req/s, metered {out['metered_rps']} req/s: telemetry costs "
          f"{out['overhead_pct']} % of throughput at concurrency {out['concurrency']} (median of round pairs)")
    print(f"server CPU per request: bare {out['bare_cpu_us_per_request']} us, metered "
          f"{out['metered_cpu_us_per_request']} us: {out['cpu_overhead_pct']} % more")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
