"""Part (2) of `nlweb-local bench fleet`: what prefix/session affinity buys in time to first token, with real
engines that keep a prompt cache.

`--affinity-instances` real `python -m llama_cpp.server` processes (the packaged SmolLM2 GGUF, one thread
each, `--cache true`: llama-cpp-python's RAM prompt cache, `--affinity-cache-mb` each) serve one
deployment. `--conversations` multi-turn chats run twice, as twins: one set through a fleet with the
`affinity` policy (rendezvous hashing on the conversation id), the other through a fleet with
`--affinity-baseline` (round-robin, or p2c), over the same processes. Each conversation opens with its own
document (a few hundred tokens) and every turn sends the whole conversation so far (document, earlier
questions and answers) plus a new question, so its prompt grows turn by turn: an engine that saw the
previous turn evaluates only the new tail; another one evaluates the whole prompt.

Twins are the same text behind a different first line, so no twin can reuse the other's cache (the
cache matches prompt prefixes from the first token) and both sets do the same work. The two sets are
interleaved turn by turn (which set goes first alternates; conversations go in a shuffled order each
turn, the same for both), so a burst of other work on the machine hits both alike. TTFT is measured at
the fleet (the first streamed token), over turns 2.. (turn 1 finds no cache under either policy; its
figure is printed apart). `affinity_ttft_ratio` is the mean TTFT with affinity over the mean without: what
affinity saves in prefill altogether. Without it a conversation pays a whole prefill on each instance it
has not visited yet and gets (partial) hits once it has, so with few instances and big caches its
median may be a hit too; the mean counts the misses. p50 and p95 ratios are printed beside it.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

START_S = 180.0  # a loaded machine may take long to load a model
ALIAS = "smollm2"
WORDS = ("harbour lantern copper meadow quartz ledger violet canyon orchard signal marble thistle ember "
         "falcon cedar ripple summit velvet anchor prairie beacon willow granite saffron tundra cobalt "
         "juniper mosaic glacier pepper lagoon timber nectar basalt meridian sparrow walnut fjord indigo").split()
QUESTIONS = ("What is the main topic of the notes?", "Which items are mentioned more than once?",
             "Summarise the notes in one sentence.", "Which word comes first in the notes?",
             "Is anything in the notes about weather?", "What would you ask the author next?",
             "List three words from the notes.", "Does the note mention a place?",
             "What is missing from the notes?", "Give the notes a short title.")


def add_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--affinity-instances", type=int, default=3,
                   help="(2) real llama_cpp.server processes, one thread each (default 3; one computes at a time "
                        "at --affinity-concurrency 1)")
    g.add_argument("--conversations", type=int, default=6, help="(2) conversations per policy (default 6)")
    g.add_argument("--turns", type=int, default=5, help="(2) turns per conversation (default 5)")
    g.add_argument("--doc-words", type=int, default=220,
                   help="(2) words of the document each conversation opens with (default 220, ~350 tokens)")
    g.add_argument("--answer-tokens", type=int, default=12, help="(2) max tokens of each answer (default 12)")
    g.add_argument("--affinity-concurrency", type=int, default=1,
                   help="(2) calls of one policy in flight at once (default 1: TTFT is prefill, not queueing)")
    g.add_argument("--affinity-baseline", choices=["round-robin", "p2c", "least-outstanding"], default="round-robin",
                   help="(2) the policy without affinity (default round-robin)")
    g.add_argument("--affinity-cache-mb", type=int, default=512,
                   help="(2) each engine's prompt cache (llama_cpp.server --cache_size), MiB (default 512)")
    g.add_argument("--affinity-n-ctx", type=int, default=2048, help="(2) each engine's context (default 2048)")


# -- engines ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """One `python -m llama_cpp.server` process with its prompt cache on."""

    def __init__(self, model: Path, log_path: Path, *, n_ctx: int, cache_mb: int):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", ALIAS,
                     "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", "1",
                     "--cache", "true", "--cache_type", "ram", "--cache_size", str(cache_mb * 2**20)]
        with open(log_path, "ab") as out:  # a file, not a pipe: the loader's chatter would fill a pipe
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    async def ready(self, session: Any) -> None:
        end = time.monotonic() + START_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(Exception):
                async with session.get(f"{self.url}/v1/models") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.25)
        tail = self.log_path.read_text(errors="replace")[-1500:]
        raise SystemExit(f"nlweb-local bench fleet: llama_cpp.server on port {self.port} did not start "
                         f"({' '.join(self.argv[1:4])} ...): {tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- workload -----------------------------------------------------------------------------------------
def conversations(n: int, words: int, seed: int) -> list[str]:
    """`n` documents of `words` words each (distinct contents, the same shape)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


async def _turn(fleet: Any, cid: str, history: list[Any], question: str, answer_tokens: int) -> float:
    """One turn: the conversation so far plus `question`; appends both sides to `history`; returns TTFT."""
    from ..core.types import CallContext, ChatRequest, Message

    history.append(Message("user", question))
    request = ChatRequest(list(history), max_tokens=answer_tokens, temperature=0.0,
                          context=CallContext(conversation=cid), deadline_s=120.0)
    t0 = time.perf_counter()
    ttft, parts = None, []
    async for ch in fleet.stream(request):
        if ttft is None and (ch.delta or ch.finish_reason):
            ttft = time.perf_counter() - t0
        parts.append(ch.delta)
    history.append(Message("assistant", "".join(parts).strip() or "(no answer)"))
    return ttft if ttft is not None else time.perf_counter() - t0


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p * (len(xs) - 1)))))]


def _summary(first: list[float], later: list[float], served: list[int]) -> dict[str, Any]:
    return {"ttft_p50_s": round(_pct(later, 0.5), 4), "ttft_p95_s": round(_pct(later, 0.95), 4),
            "ttft_mean_s": round(sum(later) / len(later), 4), "turn1_ttft_p50_s": round(_pct(first, 0.5), 4),
            "calls": len(first) + len(later), "served_per_instance": served}


async def _run(args: argparse.Namespace, model: Path, log_dir: Path) -> dict[str, Any]:
    import aiohttp

    from ..config.settings import BreakerSettings, DeploymentSettings, FleetSettings
    from ..core.types import Message
    from ..server.components import build_adapter

    engines = [Engine(model, log_dir / f"engine{k}.log", n_ctx=args.affinity_n_ctx, cache_mb=args.affinity_cache_mb)
               for k in range(args.affinity_instances)]
    fleets: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(e.ready(session) for e in engines))
        urls = [f"{e.url}/v1" for e in engines]
        for name, policy in (("affinity", "affinity"), ("without", args.affinity_baseline)):
            d = DeploymentSettings(name=f"bench-{name}", engine="llama_cpp_server", model=ALIAS, timeout_s=120,
                                   instances=urls, fleet=FleetSettings(policy=policy))
            fleets[name] = build_adapter(d, BreakerSettings())
        for e in engines:  # a fresh engine's first call is slow (seconds): not part of any figure
            await _turn(fleets["without"], "warm-up", [Message("user", "Hi")], "Hello?", 2)
        docs = conversations(args.conversations, args.doc_words, args.fleet_seed)
        histories = {name: [[Message("system", f"Notes of case {tag}-{i:03d}. Answer briefly from them.\n\n{doc}")]
                            for i, doc in enumerate(docs)] for name, tag in (("affinity", "A"), ("without", "B"))}
        ttfts: dict[str, tuple[list[float], list[float]]] = {"affinity": ([], []), "without": ([], [])}
        rng = random.Random(args.fleet_seed)
        started = time.perf_counter()
        for t in range(args.turns):
            order = list(range(args.conversations))
            rng.shuffle(order)  # the same order for both sets; a fresh one each turn
            questions = {i: rng.choice(QUESTIONS) for i in order}
            names = ("affinity", "without") if t % 2 == 0 else ("without", "affinity")
            for name in names:
                gate = asyncio.Semaphore(args.affinity_concurrency)

                async def one(i: int, name: str = name, gate: asyncio.Semaphore = gate) -> None:
                    async with gate:
                        s = await _turn(fleets[name], f"{name}-{i}", histories[name][i], questions[i], args.answer_tokens)
                    ttfts[name][0 if t == 0 else 1].append(s)

                await asyncio.gather(*(one(i) for i in order))
            print(f"    turn {t + 1}/{args.turns}: {time.perf_counter() - started:.0f} s", flush=True)
        out = {name: _summary(*ttfts[name], [s.served for s in fleets[name].status()]) for name in fleets}
        out["seconds"] = round(time.perf_counter() - started, 1)
        return out
    finally:
        for f in fleets.values():
            await f.close()
        for e in engines:
            e.stop()


def run_part(args: argparse.Namespace) -> dict[str, Any]:
    """Run part (2); its figures, `affinity_ttft_ratio` among them, for the JSON line."""
    from ..providers.llama_cpp import packaged_smollm2_path

    if args.affinity_instances < 2:
        raise SystemExit("nlweb-local bench fleet: --affinity-instances must be at least 2")
    if args.conversations < 1 or args.turns < 2:
        raise SystemExit("nlweb-local bench fleet: --conversations must be at least 1 and --turns at least 2")
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        raise SystemExit("nlweb-local bench fleet: part 2 needs llama_cpp.server (pip install 'llama-cpp-python[server]')")
    with tempfile.TemporaryDirectory(prefix="nlweb-bench-affinity-") as tmp:
        out = asyncio.run(_run(args, packaged_smollm2_path(), Path(tmp)))
    a, w = out["affinity"], out["without"]
    base = args.affinity_baseline
    for label, s in (("affinity", a), (base, w)):
        print(f"  {label:12s} TTFT turns 2-{args.turns}: p50 {s['ttft_p50_s'] * 1000:7.1f} ms  p95 "
              f"{s['ttft_p95_s'] * 1000:7.1f} ms  mean {s['ttft_mean_s'] * 1000:7.1f} ms  (turn 1: p50 {s['turn1_ttft_p50_s'] * 1000:.1f} ms; calls per "
              f"instance {s['served_per_instance']})", flush=True)
    ratio = round(a["ttft_mean_s"] / w["ttft_mean_s"], 3) if w["ttft_mean_s"] else None
    p50 = round(a["ttft_p50_s"] / w["ttft_p50_s"], 3) if w["ttft_p50_s"] else None
    p95 = round(a["ttft_p95_s"] / w["ttft_p95_s"], 3) if w["ttft_p95_s"] else None
    print(f"  affinity     TTFT with/without: mean {ratio} (affinity_ttft_ratio), p50 {p50}, p95 {p95} "
          f"({args.affinity_instances} llama_cpp.server processes, {args.conversations} conversations x {args.turns} "
          f"turns per policy, {out['seconds']} s)", flush=True)
    return {"affinity": {"instances": args.affinity_instances, "conversations": args.conversations, "turns": args.turns,
                         "baseline": base, "concurrency": args.affinity_concurrency, "with": a, "without": w,
                         "seconds": out["seconds"]},
            "affinity_ttft_ratio": ratio, "affinity_ttft_p50_ratio": p50, "affinity_ttft_p95_ratio": p95}

