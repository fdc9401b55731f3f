"""`nlweb-local bench fleet`, part (3): priority inversion — what a flood of batch calls does to the time
to first token of interactive ones, through the product's own admission gate and fleet.

The deployment: `--priority-instances` engines (default 2) of 4 slots each behind a `Fleet`
(least-outstanding) behind an `AdmissionGate` (fleet.slots = 4, fleet.max_waiting = 64). Each engine is a
`ContendedEngine`: a continuous-batching server without a model — a call's prefill takes its prompt
tokens x 0.2 ms and each generated token 4 ms, both slowed by 15 % per other call running on that engine
(they share its compute), and calls beyond its slots wait in its own FIFO. Interactive calls: 300 prompt
tokens, 32 generated; batch calls: 1,000 prompt tokens, 128 generated (about 1 s each under load).

Interactive calls arrive open-loop (Poisson, `--priority-rate` a second, `--priority-calls` of them) and
their time to first token is measured:
  unloaded       nothing else runs
  fifo           batch callers keep the queue nearly full, and every call is of one class and one tenant
                 (what an engine's own FIFO queue does: no priorities, no fair sharing)
  priority       batch calls are class batch, interactive ones interactive; the gate is work-conserving
  reserve        the same, with fleet.reserve {interactive: `--priority-reserve` slots per instance}: batch
                 calls never take the last free slots of the deployment (the recommended setting for mixed
                 traffic: size it to the interactive calls running at once)
`priority_inversion_ratio` = p95 TTFT under the flood with priorities and the reserve / p95 unloaded.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from ..config.settings import FleetSettings
from ..core.errors import QueueFullError
from ..core.types import CallContext, ChatChunk, ChatRequest, Message, Usage

SLOTS, MAX_WAITING = 4, 64
PREFILL_PER_TOKEN_S, PER_TOKEN_S, CONTENTION, STEP = 0.0002, 0.004, 0.15, 8
INTERACTIVE, BATCH = (300, 32), (1000, 128)  # (prompt tokens, generated tokens)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bench fleet: priority inversion")
    g.add_argument("--priority-calls", type=int, default=40, help="interactive calls per phase (default 40)")
    g.add_argument("--priority-rate", type=float, default=2.0, help="interactive arrivals a second (default 2)")
    g.add_argument("--priority-instances", type=int, default=2, help="engines of 4 slots each (default 2)")
    g.add_argument("--priority-reserve", type=int, default=1, help="reserve phase: slots per engine kept for "
                   "interactive calls (fleet.reserve; default 1)")


class ContendedEngine:
    """A continuous-batching engine without a model (see the module docstring for its service times)."""

    def __init__(self, name: str, *, slots: int = SLOTS):
        from ..providers.base import Capabilities

        self.name, self.model = name, f"{name}-model"
        self.capabilities = Capabilities(context_window=8192)
        self._slots = asyncio.Semaphore(slots)
        self.running = self.waiting = 0

    def _slowdown(self) -> float:
        return 1.0 + CONTENTION * max(0, self.running - 1)

    async def stream(self, request: ChatRequest):
        prompt = sum(len(m.content) for m in request.messages) // 4
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            await asyncio.sleep(prompt * PREFILL_PER_TOKEN_S * self._slowdown())
            yield ChatChunk("first", None)
            left = request.max_tokens - 1
            while left > 0:
                n = min(STEP, left)
                await asyncio.sleep(n * PER_TOKEN_S * self._slowdown())
                left -= n
                yield ChatChunk(" more" * n, None)
            yield ChatChunk("", "stop", Usage(prompt_tokens=prompt, completion_tokens=request.max_tokens))
        finally:
            self.running -= 1
            self._slots.release()

    async def complete(self, request: ChatRequest) -> Any:
        from ..providers.base import assemble

        return await assemble(self.stream(request), deployment=self.name, model=self.model)

    async def health(self) -> Any:
        from ..providers.base import LoadSnapshot

        return LoadSnapshot(healthy=True, waiting=self.waiting, running=self.running)

    def admit(self, request: Any = None) -> None:
        return None

    async def close(self) -> None:
        return None


def _call(kind: tuple[int, int], priority: int, tenant: str) -> ChatRequest:
    prompt, out = kind
    return ChatRequest([Message("user", "w" * (4 * prompt))], max_tokens=out,
                       context=CallContext(priority=priority, team=tenant))


def _deployment(instances: int, reserve: dict[str, int]) -> Any:
    from ..fleet.admission import AdmissionGate
    from ..fleet.fleet import Fleet

    engines = [ContendedEngine(f"e{k}") for k in range(instances)]
    fleet = Fleet("bench", [(f"sim://{e.name}", e) for e in engines], FleetSettings(policy="least-outstanding"))
    settings = FleetSettings(policy="least-outstanding", slots=SLOTS, max_waiting=MAX_WAITING, reserve=reserve)
    return AdmissionGate(fleet, settings)


async def _ttft(gate: Any, request: ChatRequest) -> float | None:
    """Seconds to the first chunk (None: refused); the call then runs to its end, holding its slot."""
    t0 = time.perf_counter()
    ttft: float | None = None
    try:
        async for _ in gate.stream(request):
            if ttft is None:
                ttft = time.perf_counter() - t0
    except QueueFullError:
        return None
    return ttft


async def _phase(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One phase: optionally a batch flood, then open-loop interactive arrivals; their TTFT percentiles."""
    reserve = {"interactive": args.priority_reserve * args.priority_instances} if mode == "reserve" else {}
    gate = _deployment(args.priority_instances, reserve)
    capacity = SLOTS * args.priority_instances
    interactive, batch = (0, 0) if mode == "fifo" else (10, -10)
    stop = asyncio.Event()
    flood: list[asyncio.Task] = []
    batch_done = 0

    async def batch_caller(k: int) -> None:
        nonlocal batch_done
        while not stop.is_set():
            try:
                await gate.complete(_call(BATCH, batch, f"batch-{k % 4}" if mode != "fifo" else ""))
                batch_done += 1
            except QueueFullError:
                await asyncio.sleep(0.05)

    if mode != "unloaded":
        # the queue stays full of batch calls (fifo: nearly full, so the interactive calls can still queue)
        callers = capacity + MAX_WAITING + (8 if mode != "fifo" else -16)
        flood = [asyncio.create_task(batch_caller(k)) for k in range(callers)]
        while gate.gate.waiting < min(MAX_WAITING, callers - capacity) - 1:
            await asyncio.sleep(0.01)
    rng = random.Random(11)
    calls = args.priority_calls if mode != "fifo" else min(args.priority_calls, 12)
    tasks, started, due = [], time.perf_counter(), time.perf_counter()
    queued = []
    for k in range(calls):
        due += rng.expovariate(args.priority_rate)
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queued.append(gate.gate.waiting)
        tenant = f"user-{k % 3}" if mode != "fifo" else ""  # fifo: one class, one tenant
        tasks.append(asyncio.create_task(_ttft(gate, _call(INTERACTIVE, interactive, tenant))))
    got = await asyncio.gather(*tasks)
    stop.set()
    for t in flood:
        t.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
    times = sorted(t for t in got if t is not None)
    seconds = time.perf_counter() - started
    return {"calls": calls, "refused": sum(t is None for t in got), "p50_ttft_s": round(_pct(times, 0.5), 4),
            "p95_ttft_s": round(_pct(times, 0.95), 4), "queued_at_arrival": round(sum(queued) / len(queued), 1),
            "batch_per_s": round(batch_done / seconds, 2), "seconds": round(seconds, 1)}


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, int(round(p * (len(xs) - 1)))))]


def priority_inversion(args: argparse.Namespace) -> dict[str, Any]:
    """Run the four phases; print one line each; the figures (with `priority_inversion_ratio`)."""
    figures: dict[str, Any] = {}
    for mode in ("unloaded", "fifo", "priority", "reserve"):
        out = asyncio.run(_phase(mode, args))
        figures[mode] = out
        print(f"  priority     {mode:9s} interactive TTFT p50 {out['p50_ttft_s'] * 1000:7.1f} ms  p95 "
              f"{out['p95_ttft_s'] * 1000:7.1f} ms  ({out['calls']} calls, {out['refused']} refused, "
              f"{out['queued_at_arrival']} batch calls queued at arrival, batch served {out['batch_per_s']}/s, "
              f"{out['seconds']} s)", flush=True)
    base = figures["unloaded"]["p95_ttft_s"]
    figures["priority_inversion_ratio"] = round(figures["reserve"]["p95_ttft_s"] / base, 3)
    figures["priority_inversion_ratio_no_reserve"] = round(figures["priority"]["p95_ttft_s"] / base, 3)
    figures["priority_inversion_ratio_fifo"] = round(figures["fifo"]["p95_ttft_s"] / base, 3)
    print(f"  priority     interactive p95 TTFT under a batch flood / unloaded: {figures['priority_inversion_ratio']} "
          f"(with fleet.reserve), {figures['priority_inversion_ratio_no_reserve']} (work-conserving), "
          f"{figures['priority_inversion_ratio_fifo']} (one FIFO queue)", flush=True)
    return figures
