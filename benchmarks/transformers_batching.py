"""Aggregate decode throughput of the Transformers engine: N concurrent requests (continuous batching)
vs the same N requests one at a time. Prints one line per N, then one JSON object as the last line.

    .venv/bin/python benchmarks/transformers_batching.py                  # CPU, packaged SmolLM2 GGUF
    .venv/bin/python benchmarks/transformers_batching.py --device cuda --n 1 4 8 16 64
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ["the sea", "a mountain", "a city at night", "an old library", "a rainy day", "a garden", "the desert",
          "a train journey", "a lighthouse", "a forest", "a market", "the moon", "a river", "a snowstorm", "a bakery",
          "a harbour"]


def request(i: int, max_tokens: int):
    from nlweb_local.core.types import ChatRequest, Message

    topic = TOPICS[i % len(TOPICS)] + ("" if i < len(TOPICS) else f" (take {i // len(TOPICS) + 1})")
    return ChatRequest(messages=[Message("user", f"Write a short paragraph about {topic}.")], max_tokens=max_tokens,
                       temperature=0.0)


async def one_at_a_time(provider, reqs) -> tuple[int, float]:
    t0 = time.perf_counter()
    tokens = 0
    for r in reqs:
        tokens += (await provider.complete(r)).usage.completion_tokens
    return tokens, time.perf_counter() - t0


async def concurrently(provider, reqs) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    out = await asyncio.gather(*(provider.complete(r) for r in reqs))
    ttft = sum(o.usage.time_to_first_token_s or 0 for o in out) / len(out)
    return sum(o.usage.completion_tokens for o in out), time.perf_counter() - t0, ttft


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    ap.add_argument("--model", default="", help="model folder or .gguf file (default: the packaged SmolLM2 GGUF)")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 4, 8, 16], help="concurrent requests per round")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    import torch

    from nlweb_local.providers.transformers_batched import TransformersBatchedProvider

    t0 = time.perf_counter()
    provider = TransformersBatchedProvider.open(args.model or None, device=args.device, dtype=args.dtype,
                                                max_batch_size=max(args.n), max_queue=max(args.n))
    load_s = time.perf_counter() - t0
    device = str(next(provider._scheduler.model.parameters()).device)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"model {provider.model} on {device} ({name}); loaded in {load_s:.1f}s; max_tokens={args.max_tokens}", flush=True)
    await provider.complete(request(0, 4))  # warm-up

    results = []
    for n in args.n:
        reqs = [request(i, args.max_tokens) for i in range(n)]
        seq_tokens, seq_s = await one_at_a_time(provider, reqs)
        passes0 = provider.stats.forward_passes
        bat_tokens, bat_s, ttft = await concurrently(provider, reqs)
        passes = provider.stats.forward_passes - passes0
        row = {"n": n, "sequential_tok_s": round(seq_tokens / seq_s, 1), "batched_tok_s": round(bat_tokens / bat_s, 1),
               "ratio": round((bat_tokens / bat_s) / (seq_tokens / seq_s), 2), "tokens": bat_tokens,
               "forward_passes": passes, "batched_mean_ttft_s": round(ttft, 3)}
        results.append(row)
        print(f"N={n:3d}  one at a time {row['sequential_tok_s']:8.1f} tok/s   concurrent {row['batched_tok_s']:8.1f} tok/s"
              f"   x{row['ratio']:.2f}   ({bat_tokens} tokens in {passes} forward passes, mean TTFT {ttft:.2f}s)", flush=True)
    await provider.close()
    print(json.dumps({"benchmark": "transformers_batching", "model": provider.model, "device": device, "device_name": name,
                      "dtype": args.dtype, "max_tokens": args.max_tokens, "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
