"""What governance costs: the gateway with and without auth + limits, in one run.

Three uvicorn servers, each the real app (`build_components` -> `create_app`, telemetry and ledger on, as
`serve` runs) over one zero-delay scripted deployment: `open` is composed without governance at all;
`auth` checks a user key without limits on every request (the auth middleware: one HMAC, one dict lookup,
the role check; the governed wrapper puts the caller on the call's context); `governed` has a user key
with requests/minute, tokens/day and dollars/day limits (high enough never to refuse), so each request
also pays the requests/minute counter and the call's reservation and settlement, priced as the ledger
prices it. An aiohttp client sends non-streamed /v1/chat/completions at a fixed
concurrency; rounds alternate between the servers. Prints req/s of both (median of rounds), the ratio
(median of per-round-pair ratios; the issue's target is >= 0.85 at c=16) and each server's CPU time per
request (from /proc).

    .venv/bin/python benchmarks/governance_overhead.py [-n 1000] [--concurrency 16] [--rounds 8] [--redis URL]
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
KINDS = ("open", "auth", "governed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(kind: str, port: int, data_dir: str, redis_url: str | None) -> None:
    """Child process: the app over a zero-delay scripted deployment, with or without governance."""
    import logging

    import uvicorn

    from nlweb_local.config.settings import load_settings
    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.server.app import create_app
    from nlweb_local.server.components import build_components

    logging.disable(logging.WARNING)
    settings = load_settings(ROOT / "nlweb-local.yaml", environ={"NLWEB_LOCAL_DATA_DIR": data_dir})
    settings.llm.deployments = []
    settings.auth.limits_redis_url = redis_url

    class Nothing:
        dimension = 2

        def embed(self, texts):
            return [[1.0, 0.0] for _ in texts]

        def count(self):
            return 0

    extra = {"governance": None} if kind == "open" else {}
    comp = build_components(settings, providers={"local": ScriptedProvider("local", "Hello from a scripted model.")},
                            embedder=Nothing(), store=Nothing(), **extra)
    app = create_app(settings, comp, close_components=True)
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                                  lifespan="on")).run()


def make_key(data_dir: str, limited: bool) -> str:
    from nlweb_local.config.settings import load_settings
    from nlweb_local.governance import open_keyring
    from nlweb_local.governance.identity import Limits, Role

    settings = load_settings(ROOT / "nlweb-local.yaml", environ={"NLWEB_LOCAL_DATA_DIR": data_dir})
    keyring = open_keyring(settings)
    try:
        limits = Limits(requests_per_minute=10**9, tokens_per_day=10**12, usd_per_day=10**6) if limited else Limits()
        _, key = keyring.create("bench", Role.USER, team="bench", limits=limits)
    finally:
        keyring.close()
    return key


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(kind: str, port: int, data_dir: str, redis_url: str | None) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--data-dir", data_dir]
    if redis_url:
        cmd += ["--redis", redis_url]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the {kind} server did not start")


async def round_trip(session, url: str, headers: dict[str, str], n: int, concurrency: int) -> float:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Where was the 2020 World Series played?"}]}
    per_worker = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    async def worker(k: int) -> None:
        for _ in range(k):
            async with session.post(url, json=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"{url}: HTTP {r.status}: {(await r.text())[:300]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in per_worker))
    return n / (time.perf_counter() - t0)


async def measure(args: argparse.Namespace) -> dict:
    import aiohttp

    with tempfile.TemporaryDirectory() as tmp:
        dirs = {k: os.path.join(tmp, k) for k in KINDS}
        headers = {"open": {}, **{k: {"authorization": f"Bearer {make_key(dirs[k], k == 'governed')}"}
                                      for k in ("auth", "governed")}}
        ports = {k: free_port() for k in KINDS}
        procs = {k: start(k, ports[k], dirs[k], args.redis) for k in KINDS}
        try:
            rates: dict[str, list[float]] = {k: [] for k in KINDS}
            cpu = {k: 0.0 for k in KINDS}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
                urls = {k: f"http://127.0.0.1:{p}/v1/chat/completions" for k, p in ports.items()}
                for k in KINDS:  # warm-up
                    await round_trip(session, urls[k], headers[k], min(500, args.n), args.concurrency)
                for rnd in range(args.rounds):
                    for k in (KINDS if rnd % 2 == 0 else KINDS[::-1]):  # (each server first and last in turn)
                        c0 = cpu_seconds(procs[k].pid)
                        rates[k].append(await round_trip(session, urls[k], headers[k], args.n, args.concurrency))
                        c1 = cpu_seconds(procs[k].pid)
                        if c0 is not None and c1 is not None:
                            cpu[k] += c1 - c0
                        print(f"round {rnd + 1} {k:<9} {rates[k][-1]:8.1f} req/s", flush=True)
        finally:
            for p in procs.values():
                p.terminate()
                p.wait(10)
    total = args.n * args.rounds
    return {"concurrency": args.concurrency, "requests_per_round": args.n, "rounds": args.rounds,
            "counters": "redis" if args.redis else "in-process",
            **{f"{k}_rps": round(statistics.median(rates[k]), 1) for k in KINDS},
            **{f"{k}_ratio": round(statistics.median(g / o for o, g in zip(rates["open"], rates[k])), 3)
               for k in ("auth", "governed")},
            **{f"{k}_cpu_us_per_request": round(cpu[k] / total * 1e6, 1) for k in KINDS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="requests per round and server")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--redis", metavar="URL", help="keep the limits' counters in this Redis (default: in process)")
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data_dir, args.redis)
        return
    out = asyncio.run(measure(args))
    print(f"req/s at concurrency {out['concurrency']}: open {out['open_rps']}, auth {out['auth_rps']} "
          f"({out['auth_ratio']}x), governed {out['governed_rps']} ({out['governed_ratio']}x; target >= 0.85)")
    print(f"server CPU per request: open {out['open_cpu_us_per_request']} us, auth {out['auth_cpu_us_per_request']} "
          f"us, governed {out['governed_cpu_us_per_request']} us")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
