"""What a cache lookup costs per backend, in one run: `BoundedCache` (in process) against `RedisCache` on a
`redis-server` of its own (loopback, no persistence), for a small value (a ranking score), a ~20 KB value
(zlib-compressed) and a miss; then with that server killed (the circuit open: lookups miss without trying).
Sequential `get`s on one event loop; prints p50/p99 per case, the last line one JSON object (microseconds).

    .venv/bin/python benchmarks/cache_backend_latency.py [-n 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _lookups(cache, key: str, n: int) -> dict[str, float]:
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        await cache.get(key)
        xs.append(time.perf_counter() - t0)
    xs.sort()
    return {"p50_us": round(xs[len(xs) // 2] * 1e6, 1), "p99_us": round(xs[int(len(xs) * 0.99)] * 1e6, 1)}


async def _run(url: str, server: subprocess.Popen, n: int) -> dict[str, dict[str, float]]:
    from nlweb_local.cache.redis import RedisCache
    from nlweb_local.core.cache import BoundedCache

    redis, local = RedisCache(url, "bench"), BoundedCache(100)
    big = {"choices": [{"message": {"content": "word " * 4000}}]}
    for c in (redis, local):
        await c.set("small", 0.73)
        await c.set("big", big)
    out = {"in_process_small": await _lookups(local, "small", n), "redis_small": await _lookups(redis, "small", n),
           "redis_20kb": await _lookups(redis, "big", n), "redis_miss": await _lookups(redis, "absent", n)}
    server.kill()
    server.wait()
    await redis.get("small")  # fails once: the circuit opens
    out["redis_down"] = await _lookups(redis, "small", n)
    await redis.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000, help="lookups per case")
    args = ap.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is missing (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    port = _port()
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                                   "--dir", folder], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            figures = asyncio.run(_run(f"redis://127.0.0.1:{port}/0", server, args.n))
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    for case, f in figures.items():
        print(f"  {case:18s} p50 {f['p50_us']:8.1f} us   p99 {f['p99_us']:8.1f} us")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
