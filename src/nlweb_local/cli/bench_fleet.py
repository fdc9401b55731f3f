"""`nlweb-local bench fleet`: what the fleet's balancing buys and what the layer costs, in one run. Parts
(`--parts`, default all), each adding its figures to the one JSON line:

(1) heterogeneous instances, on simulated engines (`providers.testing.SimulatedEngine`: slots, a queue, service
    time = prefill + tokens): `--instances` engines of 4 slots each (20 ms to the first token, then 2 ms
    per token; 16–96 tokens a call), one of them 3× slower. The same open-loop Poisson arrivals, at
    `--load` of the fleet's capacity, go through a `Fleet` with P2C-EWMA and then with round-robin (the
    instances are scraped every 0.5 s, as the router's probe loop would); p50 and p95 latency of each.
(2) affinity: TTFT of multi-turn chats with the affinity policy vs without, over real `llama_cpp.server`
    processes with their prompt cache on (`bench_fleet_affinity.py`): `affinity_ttft_ratio` (mean, with/without).
(3) priority inversion: `priority_inversion_ratio` (interactive p95 TTFT under a batch flood / unloaded).
(4) overhead: 16 concurrent callers on one zero-delay engine, with a fleet of one around it and bare,
    rounds of one run each (7 in process, 15 over HTTP; order alternating); the median of the rounds'
    ratios, with their quartiles and the load average (other work on the machine). Twice: the OpenAI-compatible adapter over
    HTTP to a zero-delay engine in another process (`fleet_overhead_rps_ratio`: what a deployment with
    `instances: [one URL]` pays), and an in-process engine that costs nothing (the layer's own cost
    per call, the worst case). A deployment with a plain `url` has no fleet layer at all.

The last line is one JSON object: `p95_ratio_p2c_vs_round_robin`, `affinity_ttft_ratio`,
`priority_inversion_ratio`, `fleet_overhead_rps_ratio` (each null when its part did not run), and the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

from ..config.settings import FleetSettings, Settings
from ..core.types import ChatRequest, Message
from ..providers.testing import SimulatedEngine

SLOTS, PREFILL_S, PER_TOKEN_S, SLOWDOWN = 4, 0.02, 0.002, 3.0
TOKENS = (16, 96)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bench fleet")
    g.add_argument("--instances", type=int, default=3, help="(1) simulated engines, one of them 3x slower (default 3)")
    g.add_argument("--calls", type=int, default=1500, help="(1) calls per policy (default 1500)")
    g.add_argument("--load", type=float, default=0.6, help="(1) arrival rate as a share of the fleet's capacity (default 0.6)")
    g.add_argument("--overhead-calls", type=int, default=20000, help="(4) calls per overhead run (default 20000)")
    g.add_argument("--fleet-seed", type=int, default=7, help="seed of the arrivals and call sizes (default 7)")
    g.add_argument("--parts", default="all", help="which parts to run, comma-separated: 1 (heterogeneous), 2 (affinity: "
                   "real llama_cpp.server processes), 3 (priority), 4 (overhead), or all (default)")
    from . import bench_fleet_affinity

    bench_fleet_affinity.add_arguments(g)
    try:  # (3)'s options, where the tree has it
        from . import bench_priority
    except ImportError:
        return
    bench_priority.add_arguments(p)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p * (len(xs) - 1)))))]


def _fleet(engines: list[Any], policy: str):
    from ..fleet.fleet import Fleet

    return Fleet("bench", [(f"sim://{e.name}", e) for e in engines], FleetSettings(policy=policy),
                 rng=random.Random(1))


async def _heterogeneous(policy: str, n: int, requests: int, load: float, seed: int) -> dict[str, float]:
    engines = [SimulatedEngine(f"i{k}", slots=SLOTS, prefill_s=PREFILL_S, per_token_s=PER_TOKEN_S,
                               slowdown=SLOWDOWN if k == n - 1 else 1.0) for k in range(n)]
    fleet = _fleet(engines, policy)
    mean_s = PREFILL_S + PER_TOKEN_S * sum(TOKENS) / 2
    capacity = sum(SLOTS / (mean_s * e.slowdown) for e in engines)  # calls per second
    rng = random.Random(seed)  # the same arrivals and sizes for every policy
    plan = [(rng.expovariate(load * capacity), rng.randint(*TOKENS)) for _ in range(requests)]
    latencies: list[float] = []
    stop = asyncio.Event()

    async def scrape() -> None:
        while not stop.is_set():
            await fleet.health()
            await asyncio.sleep(0.5)

    async def call(tokens: int) -> None:
        t0 = time.perf_counter()
        await fleet.complete(ChatRequest([Message("user", "hello")], max_tokens=tokens))
        latencies.append(time.perf_counter() - t0)

    scraper = asyncio.create_task(scrape())
    calls = []
    start = time.perf_counter()
    due = start
    for gap, tokens in plan:  # open loop: arrivals do not wait for answers
        due += gap
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        calls.append(asyncio.create_task(call(tokens)))
    await asyncio.gather(*calls)
    stop.set()
    await scraper
    slow_share = engines[-1].calls / requests
    return {"p50_s": round(_pct(latencies, 0.5), 4), "p95_s": round(_pct(latencies, 0.95), 4),
            "slow_instance_share": round(slow_share, 3), "seconds": round(time.perf_counter() - start, 1),
            "offered_rps": round(load * capacity, 1)}


class _Instant:
    """A zero-delay engine: what is left to measure is the layer around it."""

    def __init__(self) -> None:
        from ..providers.base import Capabilities

        self.name, self.model = "instant", "instant-model"
        self.capabilities = Capabilities(context_window=8192)

    async def complete(self, request: ChatRequest) -> Any:
        from ..core.types import ChatResponse, Usage

        return ChatResponse("ok", "stop", Usage(1, 1), model=self.model, deployment=self.name)

    async def health(self) -> Any:
        from ..providers.base import LoadSnapshot

        return LoadSnapshot(healthy=True)

    def admit(self, request: Any = None) -> None:
        return None

    async def close(self) -> None:
        return None


async def _rps(provider: Any, calls: int, concurrency: int = 16) -> float:
    request = ChatRequest([Message("user", "hello")], max_tokens=4)
    per = calls // concurrency

    async def caller() -> None:
        for _ in range(per):
            await provider.complete(request)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return per * concurrency / (time.perf_counter() - t0)


async def _compare(bare: Any, fleet: Any, calls: int, rounds: int = 7) -> dict[str, Any]:
    """Rounds of one bare run and one fleet run (the order alternating); the median of the rounds' ratios,
    so that a burst of other work on the machine spoils one round, not the figure. With it: the spread of
    the rounds' ratios (quartiles) and the load average before and after (other work on the machine)."""
    import os
    import statistics

    load_before = os.getloadavg()[0]

    cpu = {"bare": 0.0, "fleet": 0.0}  # this process's CPU seconds in each arm (other processes' load hardly moves it)

    async def run(arm: str, provider: Any) -> float:
        c0 = time.process_time()
        rps = await _rps(provider, calls)
        cpu[arm] += time.process_time() - c0
        return rps

    await _rps(bare, calls // 10)  # warm-up
    await _rps(fleet, calls // 10)
    b_runs, f_runs, ratios = [], [], []
    for r in range(rounds):
        if r % 2:
            f, b = await run("fleet", fleet), await run("bare", bare)
        else:
            b, f = await run("bare", bare), await run("fleet", fleet)
        b_runs.append(b)
        f_runs.append(f)
        ratios.append(f / b)
    b, f = statistics.median(b_runs), statistics.median(f_runs)
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    n = rounds * (calls // 16) * 16
    return {"bare_rps": round(b), "fleet_rps": round(f), "rps_ratio": round(statistics.median(ratios), 3),
            "added_us_per_call": round((1 / f - 1 / b) * 1e6, 1), "rounds": rounds,
            "rps_ratio_quartiles": [round(q1, 3), round(q3, 3)],
            # the throughput ratio of a gateway whose CPU is the bottleneck: CPU per call, bare / fleet
            "cpu_us_per_call": [round(cpu["bare"] / n * 1e6, 1), round(cpu["fleet"] / n * 1e6, 1)],
            "cpu_ratio": round(cpu["bare"] / cpu["fleet"], 3),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


# a zero-delay OpenAI-compatible engine in its own process (so it does not share this one's CPU time)
MOCK = """
import socket, sys
from aiohttp import web
BODY = b'{"id":"x","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
async def chat(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(128)  # before the port is told: a connection made before the app runs waits in the backlog
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, access_log=None)
"""


async def _overhead_http(calls: int) -> dict[str, float]:
    import subprocess
    import sys

    from ..config.settings import DeploymentSettings
    from ..providers.openai_compat import OpenAICompatProvider

    mock = subprocess.Popen([sys.executable, "-c", MOCK], stdout=subprocess.PIPE, text=True)
    try:
        port = int(mock.stdout.readline())  # type: ignore[union-attr]
        d = DeploymentSettings(name="bench", engine="openai", model="m", url=f"http://127.0.0.1:{port}/v1", api_key="x")
        bare, inner = OpenAICompatProvider(d), OpenAICompatProvider(d)
        fleet = _fleet([inner], "p2c")
        try:
            return await _compare(bare, fleet, calls // 2, rounds=15)  # more, shorter rounds: HTTP is the noisier
        finally:
            await bare.close()
            await fleet.close()
    finally:
        mock.terminate()
        mock.wait(10)


# the keys every run's JSON line holds (null when its part did not run), so that scripts can read them
KEYS = ("p95_ratio_p2c_vs_round_robin", "affinity_ttft_ratio", "priority_inversion_ratio", "fleet_overhead_rps_ratio")
PART_NAMES = {"1": "heterogeneous", "2": "affinity", "3": "priority", "4": "overhead"}


def parts_of(text: str) -> list[str]:
    """`--parts`: numbers or names, comma-separated ("1,2", "affinity,overhead", "all")."""
    names = {v: k for k, v in PART_NAMES.items()}
    if text.strip() == "all":
        return list(PART_NAMES)
    chosen = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key = part if part in PART_NAMES else names.get(part)
        if key is None:
            raise SystemExit(f"nlweb-local bench fleet: --parts {part!r} is none of "
                             f"{', '.join(f'{k} ({v})' for k, v in PART_NAMES.items())}, all")
        chosen.append(key)
    return sorted(set(chosen))


def _part_heterogeneous(args: argparse.Namespace) -> dict[str, Any]:
    """(1) P2C-EWMA vs round-robin over simulated instances, one of them 3x slower."""
    if args.instances < 2:
        raise SystemExit("nlweb-local bench fleet: --instances must be at least 2 (one of them is the slow one)")
    figures: dict[str, Any] = {"instances": args.instances, "slowdown": SLOWDOWN, "load": args.load,
                               "calls": args.calls}
    for policy in ("p2c", "round-robin"):
        out = asyncio.run(_heterogeneous(policy, args.instances, args.calls, args.load, args.fleet_seed))
        figures[policy] = out
        print(f"  {policy:12s} p50 {out['p50_s'] * 1000:7.1f} ms  p95 {out['p95_s'] * 1000:7.1f} ms  "
              f"slow instance share {out['slow_instance_share']:.0%}  ({out['offered_rps']} calls/s offered, "
              f"{out['seconds']} s)", flush=True)
    figures["p95_ratio_p2c_vs_round_robin"] = round(figures["p2c"]["p95_s"] / figures["round-robin"]["p95_s"], 3)
    return figures


def _part_affinity(args: argparse.Namespace) -> dict[str, Any]:
    """(2) affinity on/off TTFT on multi-turn chats with real llama_cpp.server processes (bench_fleet_affinity.py)."""
    from . import bench_fleet_affinity

    return bench_fleet_affinity.run_part(args)


def _part_priority(args: argparse.Namespace) -> dict[str, Any]:
    """(3) priority inversion (`bench_priority.py`, where the tree has it; else the key is null)."""
    try:
        from . import bench_priority
    except ImportError:
        print("  not in this build (no cli/bench_priority.py): priority_inversion_ratio is null", flush=True)
        return {}
    out = bench_priority.priority_inversion(args)
    return {"priority": out, "priority_inversion_ratio": out["priority_inversion_ratio"]}


def _part_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """(4) the fleet layer's overhead at c=16: in process and over HTTP."""
    figures: dict[str, Any] = {}
    over = asyncio.run(_compare(_Instant(), _fleet([_Instant()], "p2c"), args.overhead_calls))
    http = asyncio.run(_overhead_http(args.overhead_calls // 10))
    figures["overhead_in_process"], figures["overhead_http"] = over, http
    figures["fleet_overhead_rps_ratio"] = http["rps_ratio"]
    figures["fleet_overhead_rps_ratio_in_process"] = over["rps_ratio"]
    # the layer's own cost (in process, less noisy) added to the HTTP call's: the ratio a quiet machine would show
    http_us = 1e6 / http["bare_rps"]
    figures["fleet_overhead_rps_ratio_implied"] = round(http_us / (http_us + max(0.0, over["added_us_per_call"])), 3)
    print(f"  overhead     c=16, in-process zero-delay engine: bare {over['bare_rps']} calls/s, fleet of one "
          f"{over['fleet_rps']} calls/s (ratio {over['rps_ratio']}; {over['added_us_per_call']} us added per call)", flush=True)
    print(f"  overhead     c=16, OpenAI-compatible adapter over HTTP to a zero-delay engine: bare {http['bare_rps']} "
          f"calls/s, fleet of one {http['fleet_rps']} calls/s (ratio {http['rps_ratio']}; implied by the layer's own "
          f"cost: {figures['fleet_overhead_rps_ratio_implied']})", flush=True)
    return figures


PARTS = {"1": _part_heterogeneous, "2": _part_affinity, "3": _part_priority, "4": _part_overhead}


def run(args: argparse.Namespace, settings: Settings) -> int:
    figures: dict[str, Any] = {"parts": [PART_NAMES[k] for k in parts_of(args.parts)]}
    for key in parts_of(args.parts):  # each part adds its figures (and its key) to the one JSON line
        print(f"({key}) {PART_NAMES[key]}", flush=True)
        figures.update(PARTS[key](args))
    for key in KEYS:
        figures.setdefault(key, None)
    print(json.dumps(figures))
    return 0
