"""Where the gateway's time goes under load: py-spy samples the bench_gateway.py gateway process (or
the kit's floor proxy, `--target floor`, to compare) while wrk drives it, then prints CPU µs per
request by package (self time: py-spy's share of the samples × the process's measured CPU time per
request) and the hottest functions.

    .venv/bin/python benchmarks/profile_gateway.py [--kit ../shared/bench/gateway] [--seconds 15] [-c 16]
        [--target gateway|floor] [--governance on|off] [--py-spy PATH] [--folded OUT.txt]

--governance: the gateway exactly as `bench_gateway.py --governance` runs it, governance off (no auth, no
limits, no audit log) or on (a user key in a team on every request, limits on both, the audit log); without
it, the gateway as `bench_gateway.py` runs it (governance as the settings say).

py-spy is not a project dependency: pip install py-spy anywhere (e.g. a tools venv) and pass --py-spy.
Needs ptrace rights on the gateway process (root, or CAP_SYS_PTRACE in a container).
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_gateway.py, which puts this checkout's src/ first on the path

import bench_gateway as bg  # noqa: E402
from nlweb_local.config.settings import load_settings  # noqa: E402


def _frame(f: str) -> tuple[str, str]:
    """('function (file.py)', package) from a py-spy frame 'function (aiohttp/client.py:123)'; py-spy gives
    paths relative to sys.path, so the first component is the top-level package (stdlib ones included)."""
    name, _, where = f.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    parts = Path(path).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    if len(parts) > 1 and parts[0] == "nlweb_local":
        pkg = f"nlweb_local.{parts[1].removesuffix('.py')}"
    else:
        pkg = parts[0].removesuffix(".py") if parts and not path.startswith("/") else path
    return f"{name} ({Path(path).name})", pkg


def hot(folded: str, top: int, cpu_us_per_request: float | None) -> str:
    """Self time per package and per function, inclusive time per function, from py-spy's collapsed stacks."""
    self_n: collections.Counter[str] = collections.Counter()
    pkg_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        total += int(n)
        self_n[frames[-1][0]] += int(n)
        pkg_n[frames[-1][1]] += int(n)
        for f in {name for name, _ in frames}:
            incl_n[f] += int(n)
    if not total:
        return "no samples"

    def cost(n: int) -> str:
        share = 100 * n / total
        return f"{share:6.1f}" + (f" {share * cpu_us_per_request / 100:7.1f}" if cpu_us_per_request else "")

    unit = "   µs/req" if cpu_us_per_request else ""
    lines = [f"{total} samples", "", f"self % {unit}  package"]
    lines += [f"{cost(n)}   {p}" for p, n in pkg_n.most_common(top)]
    lines += ["", f"self % {unit}  function"]
    lines += [f"{cost(n)}   {f}" for f, n in self_n.most_common(top)]
    lines += ["", f"incl % {unit}  function"]
    lines += [f"{cost(n)}   {f}" for f, n in incl_n.most_common(top * 2)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit", default=bg.DEFAULT_KIT)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("-c", "--connections", type=int, default=16)
    ap.add_argument("--target", choices=["gateway", "floor"], default="gateway")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    ap.add_argument("--governance", choices=["on", "off"],
                    help="the gateway of `bench_gateway.py --governance`, with governance on or off")
    ap.add_argument("--folded", help="also keep py-spy's collapsed stacks here")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    kit = Path(args.kit).resolve()
    bg.check_kit(kit)
    proxy_cpu, load_cpu, _ = bg.pinning()
    with tempfile.TemporaryDirectory(prefix="nlweb-prof-") as tmp, ExitStack() as stack:
        logs = Path(tmp)
        mock_port, port = bg.free_port(), bg.free_port()
        bg.start(stack, "mock", [*load_cpu, sys.executable, str(kit / "mock_upstream.py"), str(mock_port)], mock_port, logs)
        cfg = logs / "settings.json"
        (logs / "data").mkdir()
        s = bg.gateway_settings(load_settings(environ={}), mock_port, logs / "data")
        env, headers = {bg.SETTINGS_ENV: str(cfg)}, None
        if args.governance == "on":
            s, key = bg.governed_settings(s, logs / "data")
            headers = {"Authorization": f"Bearer {key}"}
        if args.governance is not None:
            env[bg.GOVERNANCE_ENV] = args.governance
        cfg.write_text(s.model_dump_json())
        app = (["floor_proxy:app", "--app-dir", str(kit)] if args.target == "floor"
               else ["--factory", "--app-dir", str(HERE), "bench_gateway:gateway_app"])
        proc = bg.start(stack, args.target, [*proxy_cpu, sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1",
                                             "--port", str(port), *bg.UVICORN_FAST], port, logs,
                        env={**env, "UPSTREAM": f"http://127.0.0.1:{mock_port}/v1/chat/completions"})
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        bench = bg.Bench(kit, args.seconds, logs, proxy_cpu, load_cpu)
        bench.wrk(url, args.connections, 1, headers)  # warm-up
        out = logs / "folded.txt"
        spy = subprocess.Popen([args.py_spy, "record", "--pid", str(proc.pid), "--duration", str(args.seconds),
                                "--rate", "500", "--format", "raw", "--output", str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        stack.callback(bg.stop, spy)
        time.sleep(0.5)
        w = bench.wrk(url, args.connections, args.seconds, headers, pid=proc.pid)
        err = spy.communicate(timeout=args.seconds + 60)[1]
        cpu = w.cpu_us_per_request
        what = args.target + (f" (governance {args.governance})" if args.governance else "")
        print(f"{what} c={args.connections}: {w.rps:,.0f} req/s, p50 {w.p50:.3f} ms, p99 {w.p99:.3f} ms, "
              f"{w.errors} errors, {cpu or float('nan'):.0f} µs CPU per request (py-spy's own overhead included)")
        if not out.exists():
            print(f"py-spy wrote nothing: {err.strip()[-500:]}")
            return 1
        folded = out.read_text()
        if args.folded:
            Path(args.folded).write_text(folded)
        print(hot(folded, args.top, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
