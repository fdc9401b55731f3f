"""`nlweb-local bench overload`: an operator's worst two minutes, replayed against a real `serve`.

A real `nlweb-local serve` process (embedded model, the demo site, a temporary data folder) gets
closed-loop `/ask` traffic at `--concurrency` for `--overload-s` seconds, then, for `--calm-s` seconds,
one user asking one question at a time with a second between answer and next question (calm means below
the engine's capacity on any machine: an open-loop 1/s would itself overload a slow CPU). Printed: requests served and refused, the p95 time of admitted requests, how
honest the 503s' Retry-After was (its median over the last seconds of the overload, divided by the
measured time the backlog then took to drain; target 0.5–2), the share of degraded answers (ordered by
similarity only because the LLM was unavailable), and the seconds from the end of the overload until an
LLM-ranked answer is served again (target ≤ 30 s). The breaker states at the end come from
/admin/breakers. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUESTIONS = [
    "vegetarian dinner that is quick to make", "spicy soup for a cold evening", "a warm waterproof jacket",
    "family events this summer", "lightweight tent for backpacking", "dessert without eggs",
    "podcast episodes about trail running", "cheap camping stove", "gluten-free bread", "cooking class for beginners",
]
TARGETS = {"retry_after_to_drain_ratio": (0.5, 2.0), "recovery_s": 30.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bench overload")
    g.add_argument("--concurrency", type=int, default=32, help="closed-loop /ask clients during the overload (default 32)")
    g.add_argument("--overload-s", type=float, default=60.0, help="seconds of overload (default 60)")
    g.add_argument("--calm-s", type=float, default=60.0, help="seconds of one user asking one question at a time, a second apart, afterwards (default 60)")
    g.add_argument("--max-queue", type=int, help="llm.max_queue of the server under test (default: the configured one)")
    g.add_argument("--server", metavar="URL", help="load this running server instead of starting one (its data is "
                   "not touched; /admin/breakers must be reachable)")


@dataclass
class Shot:
    t0: float  # seconds since the start of the run
    t1: float
    status: int
    retry_after: float | None = None
    degraded: bool = False
    llm_scored: int = 0


async def _ask(session: Any, url: str, q: str, clock0: float) -> Shot:
    t0 = time.perf_counter() - clock0
    try:
        async with session.get(f"{url}/ask", params={"query": q, "streaming": "false", "site": "all"}) as r:
            body = await r.read()
            t1 = time.perf_counter() - clock0
            ra = r.headers.get("Retry-After")
            shot = Shot(t0, t1, r.status, float(ra) if ra and ra.replace(".", "", 1).isdigit() else None)
            if r.status == 200:
                msgs = json.loads(body)
                end = msgs[-1] if msgs and isinstance(msgs, list) else {}
                shot.degraded = bool(end.get("degraded"))
            return shot
    except Exception:  # noqa: BLE001 - a connection error counts as a failure, with status 0
        return Shot(t0, time.perf_counter() - clock0, 0)


async def drive(url: str, concurrency: int, overload_s: float, calm_s: float) -> dict[str, Any]:
    """Closed-loop overload, then one user asking one question at a time. Returns the figures (see the module docstring)."""
    import aiohttp

    clock0 = time.perf_counter()
    overload: list[Shot] = []
    calm: list[Shot] = []
    timeout = aiohttp.ClientTimeout(total=max(600.0, overload_s + calm_s))
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency + 8)) as s:
        end = overload_s

        async def client(i: int) -> None:
            n = i
            while time.perf_counter() - clock0 < end:
                shot = await _ask(s, url, QUESTIONS[n % len(QUESTIONS)] + f" #{n}", clock0)
                overload.append(shot)
                n += concurrency
                if shot.status != 200:
                    await asyncio.sleep(0.05)  # a refused client retries soon (a worst case: it ignores Retry-After)

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        overload_end = end  # no request started after this
        drained_at = max((x.t1 for x in overload), default=overload_end)  # the backlog's last answer
        calm_start = time.perf_counter() - clock0
        i = 0
        while time.perf_counter() - clock0 < calm_start + calm_s:
            calm.append(await _ask(s, url, QUESTIONS[i % len(QUESTIONS)] + f" calm {i}", clock0))
            i += 1
            await asyncio.sleep(1.0)
    return figures(overload, calm, overload_end, drained_at)


def figures(overload: list[Shot], calm: list[Shot], overload_end: float, drained_at: float) -> dict[str, Any]:
    served = [x for x in overload if x.status == 200]
    refused = [x for x in overload if x.status == 503]
    late = [x.retry_after for x in refused if x.retry_after is not None and x.t1 >= overload_end - 10.0]
    if not late:
        late = [x.retry_after for x in refused if x.retry_after is not None]
    drain_s = max(0.0, drained_at - overload_end)
    median_ra = statistics.median(late) if late else None
    ratio = round(median_ra / max(drain_s, 1.0), 2) if median_ra is not None else None
    answered = [x for x in overload + calm if x.status == 200]
    recovered = next((x for x in sorted(calm, key=lambda x: x.t0) if x.status == 200 and not x.degraded), None)
    lat = sorted(x.t1 - x.t0 for x in served)
    return {
        "overload_requests": len(overload), "served": len(served), "refused_503": len(refused),
        "other_errors": len([x for x in overload + calm if x.status not in (200, 503)]),
        "admitted_p95_s": round(lat[min(len(lat) - 1, int(0.95 * (len(lat) - 1) + 0.5))], 2) if lat else None,
        "admitted_max_s": round(lat[-1], 2) if lat else None,
        "retry_after_median_s": median_ra, "drain_s": round(drain_s, 2), "retry_after_to_drain_ratio": ratio,
        "degraded_share": round(sum(x.degraded for x in answered) / len(answered), 3) if answered else None,
        "recovery_s": round(recovered.t1 - overload_end, 2) if recovered is not None else None,
        "calm_requests": len(calm), "calm_degraded": sum(x.degraded for x in calm if x.status == 200),
    }


def targets_met(f: dict[str, Any]) -> dict[str, bool | None]:
    lo, hi = TARGETS["retry_after_to_drain_ratio"]
    r = f.get("retry_after_to_drain_ratio")
    rec = f.get("recovery_s")
    return {"retry_after_to_drain_0.5_to_2": None if r is None else lo <= r <= hi,
            "recovery_le_30s": None if rec is None else rec <= TARGETS["recovery_s"]}


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _free_port() -> int:
    """A port that was free a moment ago (the serve process binds it by number: a small race, retried)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, settings_env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "NLWEB_LOCAL_DATA_DIR": str(tmp), **settings_env}
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "nlweb_local.cli.main", "serve", "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {log.read_text()[-800:]}")
        try:
            if _get_json(f"{url}/ready").get("status") == "ready":
                return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"serve did not become ready within 300 s: {log.read_text()[-800:]}")


def run(args: argparse.Namespace, settings: Any) -> int:
    with tempfile.TemporaryDirectory(prefix="nlweb-bench-overload-") as tmp:
        proc = None
        url = args.server
        if not url:
            env = {"NLWEB_LOCAL_LLM__MAX_QUEUE": str(args.max_queue)} if args.max_queue else {}
            print("starting nlweb-local serve (embedded model, demo site) ...", flush=True)
            proc, url = start_server(Path(tmp), env, Path(tmp) / "serve.log")
        try:
            print(f"overload: {args.concurrency} closed-loop /ask clients for {args.overload_s:g} s, then one question "
                  f"at a time, a second apart, for {args.calm_s:g} s against {url}", flush=True)
            f = asyncio.run(drive(url, args.concurrency, args.overload_s, args.calm_s))
            f["breakers_after"] = {b["deployment"]: b["state"] for b in _get_json(f"{url}/admin/breakers")["breakers"]}
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    f["targets_met"] = targets_met(f)
    print_summary(f)
    print(json.dumps(f))
    return 0


def print_summary(f: dict[str, Any]) -> None:
    def show(v: Any, unit: str = "") -> str:
        return "—" if v is None else f"{v}{unit}"

    print(f"overload: {f['overload_requests']} requests, {f['served']} served, {f['refused_503']} refused (503), "
          f"{f['other_errors']} other errors")
    print(f"admitted requests: p95 {show(f['admitted_p95_s'], ' s')}, max {show(f['admitted_max_s'], ' s')}")
    print(f"Retry-After median {show(f['retry_after_median_s'], ' s')} vs backlog drained in {f['drain_s']} s: "
          f"ratio {show(f['retry_after_to_drain_ratio'])} (target 0.5-2)")
    print(f"degraded answers (similarity only): {show(f['degraded_share'])} of all answers")
    print(f"recovery: an LLM-ranked answer {show(f['recovery_s'], ' s')} after the overload (target <= 30 s); "
          f"breakers after: {f.get('breakers_after')}")
