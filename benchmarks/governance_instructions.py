"""What governance adds to a /v1 request, counted in machine instructions (valgrind's callgrind), per thread.

Timings on a shared two-core VM spread by up to 2x from one run to the next; instruction counts do not. This
builds the two gateways of `bench_gateway.py --governance` (off: no auth, no limits, no audit log; on: auth,
a user key in a team with requests/minute, tokens/day and dollars/day limits on the key and the team, and
the audit log) and drives each in process over ASGI at concurrency 16 (the upstream is the kit's mock over
loopback, through the real adapter), under `valgrind --tool=callgrind --separate-threads=yes`. Each
configuration runs twice, with `--base` and `--base + --requests` requests; the difference divided by
`--requests` is what one request costs, start-up cancelled out. Printed per request: the event loop's
(main thread's) instructions and the other threads' (the audit log's and the cost ledger's writers), for
off and on, and the ratios off / on.

    python benchmarks/governance_instructions.py --kit ../shared/bench/gateway [--requests 800] [--base 160]

Needs valgrind (apt-get install -y valgrind); takes ~10 minutes on two cores (four valgrind runs, two at a
time). Caveats: under valgrind everything runs ~50x slower, so the writer threads wake (every
`audit.flush_interval_s`) with far smaller batches than at full speed, and OpenSSL's SHA-256 runs without
the CPU's SHA instructions: the other threads' share is overstated; the event loop's is not.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


async def _drive(app, headers, n: int) -> None:
    import governance_bytecodes as gb

    inbox, outbox, _ = await gb._lifespan(app)
    for _ in range(50):  # warm-up: caches, the key lookup, the limits' cells, connections
        assert await gb._one(app, headers) == 200

    async def worker(k: int) -> None:
        for _ in range(k):
            assert await gb._one(app, headers) == 200

    await asyncio.gather(*(worker(n // 16) for _ in range(16)))
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()


def child(which: str, n: int, port: int) -> int:
    """One configuration, `n` requests, against the mock at `port` (what valgrind runs)."""
    import bench_gateway as bg
    from nlweb_local.config.settings import Settings
    from nlweb_local.server.app import create_app
    from nlweb_local.server.components import build_components

    with tempfile.TemporaryDirectory(prefix="nlweb-govin-") as tmp:
        s = bg.gateway_settings(Settings(), port, Path(tmp))
        headers: list[tuple[bytes, bytes]] = []
        if which == "on":
            s, key = bg.governed_settings(s, Path(tmp))
            headers = [(b"authorization", f"Bearer {key}".encode())]
        off = {"governance": None, "audit": None} if which == "off" else {}
        comp = build_components(s, embedder=bg._InertEmbedder(), store=bg._EmptyStore(), **off)
        app = create_app(s, comp, close_components=True)
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_drive(app, headers, n))
    return 0


def _threads(out: Path) -> dict[int, int]:
    """Instructions per thread (1: the main thread) of one callgrind run."""
    counts = {}
    for f in out.parent.glob(out.name + "-*"):
        m = re.search(r"^totals: (\d+)", f.read_text(errors="replace"), re.M)
        if m:
            counts[int(f.name.rsplit("-", 1)[1])] = int(m.group(1))
    if 1 not in counts:
        raise RuntimeError(f"callgrind wrote no per-thread totals for {out}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kit", type=Path, help="the gateway benchmark kit (its mock_upstream.py)")
    p.add_argument("--requests", type=int, default=800, help="requests counted per configuration (default 800)")
    p.add_argument("--base", type=int, default=160, help="requests of the shorter run (default 160)")
    p.add_argument("--child", nargs=3, metavar=("WHICH", "N", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child[0], int(args.child[1]), int(args.child[2]))
    if args.kit is None:
        p.error("--kit is required")
    import shutil

    import bench_gateway as bg

    if shutil.which("valgrind") is None:
        print("governance_instructions.py: error: valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    per: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nlweb-govin-") as tmp, ExitStack() as stack:
        port = bg.free_port()
        bg.start(stack, "mock", [sys.executable, str(args.kit / "mock_upstream.py"), str(port)], port, Path(tmp))
        for which in ("off", "on"):
            runs = {}
            procs = []
            for n in (args.base, args.base + args.requests):
                out = Path(tmp) / f"cg.{which}.{n}.out"
                runs[n] = out
                print(f"  valgrind: governance {which}, {n} requests ...", flush=True)
                procs.append(subprocess.Popen(
                    ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
                     sys.executable, str(Path(__file__).resolve()), "--child", which, str(n), str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for proc in procs:
                if proc.wait() != 0:
                    raise RuntimeError(f"a valgrind run of governance {which} failed (exit {proc.returncode})")
            short, long = _threads(runs[args.base]), _threads(runs[args.base + args.requests])
            main_thread = (long[1] - short[1]) / args.requests
            others = (sum(v for k, v in long.items() if k != 1) - sum(v for k, v in short.items() if k != 1)) / args.requests
            per[which] = (main_thread, others)
    off, on = per["off"], per["on"]
    for which, (m, o) in per.items():
        print(f"instructions per /v1 request, governance {which}: event loop {m / 1e3:.1f}k, other threads "
              f"{o / 1e3:.1f}k, all {(m + o) / 1e3:.1f}k")
    print(f"on - off: event loop {(on[0] - off[0]) / 1e3:+.1f}k, other threads {(on[1] - off[1]) / 1e3:+.1f}k; "
          f"off / on: event loop {off[0] / on[0]:.3f}, all threads {sum(off) / sum(on):.3f}")
    print(json.dumps({"off": {"loop": round(off[0]), "others": round(off[1])},
                      "on": {"loop": round(on[0]), "others": round(on[1])},
                      "loop_ratio_off_over_on": round(off[0] / on[0], 3),
                      "all_ratio_off_over_on": round(sum(off) / sum(on), 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
