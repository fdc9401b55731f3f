"""What the /v1 gateway adds over a zero-delay upstream, measured in one run next to the floor a Python
gateway can reach, next to LiteLLM and, with --baseline, next to the gateway of another git revision
(the `../shared/bench/gateway` kit).

    python benchmarks/bench_gateway.py [--kit ../shared/bench/gateway] [--quick | --duration S] [--soak S]
        [--no-litellm] [--baseline REV] [--config FILE]

Everything listens on 127.0.0.1. The proxy under test runs on one core, the mock and `wrk` on another
(`taskset`, when the machine has two cores). Targets, each measured with `wrk --latency` at
concurrency 1, 16 and 64 after a short warm-up, interleaved (c=1 for all, then c=16, ...):

- mock        the kit's raw-asyncio mock, called directly (the zero of "added latency");
- floor       the kit's Starlette + aiohttp pass-through;
- nlweb-local this checkout's gateway, full path (settings -> `build_components` -> `create_app`: router,
              breaker, telemetry, ledger, middleware) over one `openai`-engine deployment pointing at the
              mock. The embedder and the store are inert stand-ins given to `build_components` (the /v1
              chat path never touches them) and the embedded llama.cpp engine is off;
- baseline    with --baseline REV: the same, built by that revision's own code (its settings schema, its
              factory), exported with `git archive` into a temporary folder; its ratios are printed next
              to this checkout's, plus this checkout's throughput as a multiple of the baseline's;
- litellm     LiteLLM's proxy, one worker, installed by this script in its own virtual environment
              under the cache folder (null figures, with the reason, when that is not possible).

--governance: instead, the gateway with governance off (no auth, no limits, no audit log: `build_components`
with governance=None, audit=None) against the gateway with governance on (auth.enabled, a user key in a team
on every request with requests/minute, tokens/day and $/day limits on the key and the team, high enough never
to refuse, and the audit log), both started in this run and measured turn about at c=16 for --rounds rounds
(default 10 runs of 3 s each: many short back-to-back pairs are steadier than a few long ones on a shared VM);
prints both throughputs (median of rounds); the ratio on / off as the median of each round's back-to-back ratio
(the two runs of a round follow each other, in alternating order, so what drifts between rounds — a neighbour's
load on a shared machine — cancels; target >= 0.85), each round's ratio (their spread shows how much one run
can say) and, beside it, the ratio of the median throughputs; each
one's CPU time per request and the CPU ratio off / on, and errors (non-2xx apart). With --control, a second
governance-off gateway runs in every round too (on between the two offs) and its ratio to the first is printed:
an A/A control, the ratio two identical gateways give on this machine, so a reader can tell a governance
cost from the machine's noise.

The gateway's settings are the user's (--config, $NLWEB_LOCAL_CONFIG or ./nlweb-local.yaml, and
NLWEB_LOCAL_* variables) with the LLM side replaced by the mock. Needs `wrk` (apt-get install -y wrk).
The last line printed is one JSON object with the figures and the ratios to quote.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # measure this checkout's package (also in the gateway process, which imports this file)

DEFAULT_KIT = "../shared/bench/gateway"
KIT_FILES = ("mock_upstream.py", "floor_proxy.py", "post.lua")
CONCURRENCY = (1, 16, 64)
MODEL = "gpt-4.1-mini"  # what post.lua asks for: the gateway's deployment and LiteLLM's model_name
SETTINGS_ENV = "NLWEB_BENCH_GATEWAY_SETTINGS"
GOVERNANCE_ENV = "NLWEB_BENCH_GATEWAY_GOVERNANCE"  # "off": compose without governance and audit
GOVERNANCE_TARGET = 0.85
GOVERNANCE_RUN_S = 3.0  # --governance: seconds per run unless --duration says (many short rounds: see --rounds)
UVICORN_FAST = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
TARGETS = {"c1_added_ratio_vs_floor": 1.5, "c16_rps_ratio_vs_floor": 0.70, "rps_ratio_vs_litellm": 10.0,
           "soak_rss_growth_pct": 5.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_gateway.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kit", default=DEFAULT_KIT, help=f"folder with {', '.join(KIT_FILES)} (default {DEFAULT_KIT})")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="seconds per wrk run (default 8; with --governance 3)")
    p.add_argument("--quick", action="store_true", help="2-second runs (noisy; for a first look)")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="then load the gateway at c=16 this long, sampling its RSS every 10 s (target: < 5%% growth)")
    p.add_argument("--baseline", metavar="REV",
                   help="also measure the gateway of this git revision (e.g. main, b351c47), interleaved with the "
                        "others, and print its ratios next to this checkout's")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (its figures are null)")
    p.add_argument("--litellm-venv", help="LiteLLM's virtual environment (default: <cache>/nlweb-bench/litellm-venv)")
    p.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs there (default litellm[proxy])")
    p.add_argument("--governance", action="store_true",
                   help="measure governance on (a key on every request: auth + limits + audit) against governance off, "
                        "at c=16, in this run; prints both and the ratio")
    p.add_argument("--rounds", type=int, default=10,
                   help="--governance: rounds of (off, on) runs (default 10: on a shared VM one round's ratio can be "
                        "30 %% off either way, and the median of many short rounds is steadier than of a few long ones)")
    p.add_argument("--control", action="store_true",
                   help="--governance: also run a second, identical governance-off gateway in every round and print "
                        "its ratio to the first (an A/A control: how far two identical gateways differ on this "
                        "machine, the noise any on / off ratio carries)")
    p.add_argument("--unstored", action="store_true",
                   help="--governance: also run governance on with an audit store that keeps nothing (each row is made on "
                        "the writer thread, then neither hashed into the chain nor inserted), and print its ratio to "
                        "on: the share of throughput the audit store's work takes (a diagnostic, not a configuration)")
    p.add_argument("--config", metavar="FILE",
                   help="settings file (default: $NLWEB_LOCAL_CONFIG or ./nlweb-local.yaml); the baseline reads it too")
    return p


def main(argv: list[str] | None = None) -> int:
    from nlweb_local.config.settings import load_settings
    from nlweb_local.core.errors import NlwebError

    args = build_parser().parse_args(argv)
    try:
        return run(args, load_settings(args.config))
    except NlwebError as e:
        print(f"bench_gateway.py: error: {e.message}", file=sys.stderr)
        return 2 if e.status == 400 else 1


# -- wrk ------------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    rps: float
    latency_ms: dict[str, float]  # "50", "75", "90", "99" -> milliseconds
    requests: int
    errors: int  # non-2xx answers plus socket errors
    cpu_s: float | None = None  # CPU time the proxy under test used during the run (user + system)
    loop_cpu_s: float | None = None  # ... of that, its main thread's (the event loop's; the rest: writer threads)
    non2xx: int = 0  # of `errors`: answers that were not 2xx (the rest: connect/read/write errors and timeouts)

    @property
    def cpu_us_per_request(self) -> float | None:
        return self.cpu_s / self.requests * 1e6 if self.cpu_s is not None and self.requests else None

    @property
    def loop_cpu_us_per_request(self) -> float | None:
        return self.loop_cpu_s / self.requests * 1e6 if self.loop_cpu_s is not None and self.requests else None

    @property
    def p50(self) -> float:
        return self.latency_ms["50"]

    @property
    def p99(self) -> float:
        return self.latency_ms["99"]


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def duration_ms(text: str) -> float:
    """wrk's latency text ('18.00us', '1.23ms', '2.00s') in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """The figures of one `wrk --latency` report."""
    pct = {m.group(1): duration_ms(m.group(2))
           for m in re.finditer(r"^\s*(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M)}
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    reqs = re.search(r"^\s*(\d+) requests in", out, re.M)
    if rps is None or reqs is None or set(pct) != {"50", "75", "90", "99"}:
        raise ValueError(f"unexpected wrk output (was --latency given?):\n{out[-800:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return WrkResult(float(rps.group(1)), pct, int(reqs.group(1)), errors, non2xx=int(non2xx.group(1)) if non2xx else 0)


@dataclass
class Bench:
    kit: Path
    duration: float
    workdir: Path
    proxy_cpu: list[str] = field(default_factory=list)  # taskset prefix for the proxy under test
    load_cpu: list[str] = field(default_factory=list)  # ... for the mock and wrk

    def wrk(self, url: str, connections: int, seconds: float, headers: dict[str, str] | None = None,
            pid: int | None = None) -> WrkResult:
        """One wrk run; with `pid`, also the CPU time that process spent meanwhile (robust to a busy machine)."""
        cmd = [*self.load_cpu, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
               "-s", str(self.kit / "post.lua")]
        for k, v in (headers or {}).items():
            cmd += ["-H", f"{k}: {v}"]
        cpu0, loop0 = (cpu_s(pid), cpu_s(pid, pid)) if pid else (None, None)
        done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60)
        cpu1, loop1 = (cpu_s(pid), cpu_s(pid, pid)) if pid else (None, None)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        result = parse_wrk(done.stdout)
        if cpu0 is not None and cpu1 is not None:
            result.cpu_s = cpu1 - cpu0
        if loop0 is not None and loop1 is not None:
            result.loop_cpu_s = loop1 - loop0
        return result

    def measure(self, targets: list[Target]) -> dict[str, dict[int, WrkResult]]:
        """Each target at each concurrency, interleaved (c=1 for all, then c=16, ...) so that a machine
        whose load drifts treats the compared targets alike."""
        for t in targets:
            self.wrk(t.url, 16, 1, t.headers)  # warm-up: connection pools, first-call paths
        out: dict[str, dict[int, WrkResult]] = {t.name: {} for t in targets}
        for c in CONCURRENCY:
            for t in targets:
                out[t.name][c] = self.wrk(t.url, c, self.duration, t.headers, t.pid)
        return out


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    pid: int | None = None  # the proxy process, for its CPU time
    headers: dict[str, str] | None = None


# -- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(stack: ExitStack, name: str, cmd: list[str], port: int, logdir: Path, *, env: dict[str, str] | None = None,
          cwd: Path | None = None, ready_s: float = 60.0) -> subprocess.Popen:
    """Start `cmd` in its own process group (stopped with the stack) and wait until `port` accepts."""
    log = open(logdir / f"{name}.log", "wb")
    stack.callback(log.close)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd,
                            start_new_session=True)
    stack.callback(stop, proc)
    end = time.monotonic() + ready_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {tail(logdir / f'{name}.log')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on port {port} within {ready_s:.0f}s: {tail(logdir / f'{name}.log')}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip() or "(no output)"
    except OSError:
        return "(no log)"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def cpu_s(pid: int, tid: int | None = None) -> float | None:
    """User + system CPU seconds of a process (all its threads; with `tid`, that thread's) from /proc."""
    try:
        stat = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def post_once(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def lua_body(kit: Path) -> bytes:
    m = re.search(r"wrk\.body\s*=\s*'(.*)'", (kit / "post.lua").read_text())
    return (m.group(1) if m else json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})).encode()


# -- the gateway under test (its own process: `uvicorn --factory --app-dir benchmarks bench_gateway:gateway_app`)
def gateway_settings(settings, mock_port: int, data_dir: Path):
    """The user's settings, with the LLM side replaced by one `openai` deployment at the mock and
    everything the server writes (the cost ledger) under `data_dir`."""
    from nlweb_local.config.settings import DeploymentSettings

    s = settings.model_copy(deep=True)
    s.data_dir = str(data_dir)
    s.telemetry.ledger_path = None
    s.llm.deployments = [DeploymentSettings(name=MODEL, engine="openai", model="mock", api_key="sk-bench-dummy",
                                            url=f"http://127.0.0.1:{mock_port}/v1")]
    s.llm.search_deployment = None
    s.llm.groups = {}
    s.llm.embedded_enabled = False  # no llama.cpp model: the benchmark measures the gateway, not an engine
    return s


class _InertEmbedder:
    """Stand-in for the sentence-transformers embedder: /v1/chat/completions never embeds."""

    dimension = 384

    def embed(self, texts):
        raise RuntimeError("the gateway benchmark has no embedder")


class _EmptyStore:
    """Stand-in for the vector store: empty, nothing persisted."""

    def upsert(self, items, vectors): raise RuntimeError("the gateway benchmark has no store")
    def existing_urls(self, urls): return set()
    def search(self, vector, sites, limit): return []
    def delete_site(self, site): return 0
    def delete_urls(self, urls): return None
    def sites(self): return []
    def sample(self, site, limit): return []
    def count(self): return 0
    def close(self): return None


def gateway_app():
    """The app exactly as `serve` composes it (`build_components` -> `create_app`: router, breakers,
    telemetry wrappers, ledger, middleware), except that the embedder and the store, which the /v1 chat
    path never touches, are inert stand-ins instead of sentence-transformers and Qdrant."""
    from nlweb_local.config.settings import Settings
    from nlweb_local.server.app import create_app
    from nlweb_local.server.components import build_components

    settings = Settings.model_validate_json(Path(os.environ[SETTINGS_ENV]).read_text())
    mode = os.environ.get(GOVERNANCE_ENV)
    off = {"governance": None, "audit": None} if mode == "off" else {}
    components = build_components(settings, embedder=_InertEmbedder(), store=_EmptyStore(), **off)
    if mode == "unstored" and components.audit is not None:
        # (--unstored: the writer thread still makes every row; the store neither links nor inserts it)
        components.audit.store.append = lambda rows: len(rows)
    return create_app(settings, components, close_components=True)


# -- LiteLLM ---------------------------------------------------------------------------------------
def litellm_venv(args: argparse.Namespace) -> Path:
    if args.litellm_venv:
        return Path(args.litellm_venv)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nlweb-bench" / "litellm-venv"


def ensure_litellm(venv: Path, spec: str, log: Path, timeout_s: float = 900.0) -> Path:
    """LiteLLM's CLI in its own virtual environment, installed on first use. Raises RuntimeError why not."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing {spec} into {venv} (once; up to {timeout_s / 60:.0f} min) ...", flush=True)
    with open(log, "wb") as out:
        try:
            if not (venv / "bin" / "python").exists():
                subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)],
                               stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", spec],
                           stdout=out, stderr=subprocess.STDOUT, check=True, timeout=timeout_s)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            raise RuntimeError(f"could not install {spec} into {venv} ({e}): {tail(log, 300)}") from None
    if not exe.exists():
        raise RuntimeError(f"{spec} installed but {exe} is missing")
    return exe


def litellm_config(mock_port: int, master_key: str) -> str:
    return json.dumps({  # YAML is a superset of JSON
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": "openai/mock", "api_base": f"http://127.0.0.1:{mock_port}/v1", "api_key": "sk-bench-dummy"}}],
        "general_settings": {"master_key": master_key}}, indent=1)


def litellm_version(venv: Path) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or "?"


# -- the baseline: another revision's gateway, built by that revision's own code --------------------
@dataclass(frozen=True)
class Baseline:
    rev: str  # as given
    commit: str
    root: Path  # the revision's files
    app: list[str]  # uvicorn's arguments that name its factory
    settings_env: str  # the variable its factory reads the settings file's path from
    settings_json: str  # its own Settings, from its own gateway_settings()


def export_revision(repo: Path, rev: str, dest: Path) -> str:
    """The files of `rev` under `dest` (`git archive`: the repository and its worktrees stay as they are,
    and removing `dest` is the whole clean-up); returns the commit id. RuntimeError why not."""
    try:
        found = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                               capture_output=True, text=True, timeout=60)
        if found.returncode != 0 or not found.stdout.strip():
            raise RuntimeError(f"--baseline {rev!r} is not a commit of the repository at {repo} "
                               "(a shallow clone may lack it: git fetch --unshallow)")
        commit = found.stdout.strip()
        tar = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"--baseline {rev!r}: git failed ({e})") from None
    if tar.returncode != 0:
        raise RuntimeError(f"--baseline {rev!r}: git archive failed: {tar.stderr.decode(errors='replace').strip()[-300:]}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return commit


def baseline_factory(root: Path) -> tuple[str, list[str]]:
    """Where the gateway benchmark of the revision at `root` lives: (the module with its gateway_settings,
    uvicorn's arguments for its gateway_app). benchmarks/bench_gateway.py since it moved there; the
    package module `nlweb_local.cli.bench_gateway` before (e.g. b351c47)."""
    bench_dir = root / "benchmarks"
    if (bench_dir / "bench_gateway.py").is_file():
        return "bench_gateway", ["--factory", "--app-dir", str(bench_dir), "bench_gateway:gateway_app"]
    if (root / "src" / "nlweb_local" / "cli" / "bench_gateway.py").is_file():
        return "nlweb_local.cli.bench_gateway", ["--factory", "nlweb_local.cli.bench_gateway:gateway_app"]
    raise RuntimeError(f"the baseline at {root} has no gateway benchmark "
                       "(neither benchmarks/bench_gateway.py nor src/nlweb_local/cli/bench_gateway.py)")


# Runs with PYTHONPATH=<root>/src: the user's settings as the baseline's own load_settings reads them,
# turned into the benchmark's by the baseline's own gateway_settings (its Settings schema may differ).
_BASELINE_SETTINGS = """
import importlib, json, sys
from pathlib import Path
root, module, config, port, data = sys.argv[1:]  # config: an absolute path, or '' for none
if "." not in module:
    sys.path.insert(0, str(Path(root) / "benchmarks"))
bg = importlib.import_module(module)
import nlweb_local
from nlweb_local.config.settings import load_settings
s = bg.gateway_settings(load_settings(config or None), int(port), Path(data))
print(json.dumps({"package": nlweb_local.__file__, "settings_env": bg.SETTINGS_ENV, "settings": s.model_dump_json()}))
"""


def baseline_env(root: Path) -> dict[str, str]:
    """The environment additions for the baseline's processes: its package first, not this checkout's."""
    return {"PYTHONPATH": str(root / "src")}


def baseline_config(config: str | None, root: Path, checkout: Path = ROOT, environ: dict[str, str] | None = None) -> str:
    """The settings file the baseline at `root` reads, as an absolute path ('' for none): the user's (--config,
    else $NLWEB_LOCAL_CONFIG, else ./nlweb-local.yaml), except this checkout's own nlweb-local.yaml (every
    key with its default, in this revision's schema, which an older schema may refuse): for that one the
    baseline reads its own copy, if it has one."""
    environ = os.environ if environ is None else environ
    path = config or environ.get("NLWEB_LOCAL_CONFIG") or ("nlweb-local.yaml" if Path("nlweb-local.yaml").is_file() else None)
    if not path:
        return ""
    if Path(path).resolve() == (checkout / "nlweb-local.yaml").resolve():
        own = root / "nlweb-local.yaml"
        return str(own.resolve()) if own.is_file() else ""
    return str(Path(path).resolve())


def baseline_settings(root: Path, module: str, config: str, mock_port: int, data_dir: Path,
                      python: str = sys.executable) -> tuple[str, str]:
    """(the variable its factory reads, the settings JSON), both from the baseline's own code, run in
    `root` with its package first on the path; `config` as `baseline_config` gives it."""
    env = {k: v for k, v in os.environ.items() if k != "NLWEB_LOCAL_CONFIG"}  # `config` says which file, if any
    done = subprocess.run([python, "-c", _BASELINE_SETTINGS, str(root), module, config, str(mock_port), str(data_dir)],
                          capture_output=True, text=True, timeout=120, cwd=root, env={**env, **baseline_env(root)})
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"the baseline's settings could not be built ({done.returncode}): {done.stderr.strip()[-600:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    src = (root / "src").resolve()
    if src not in Path(out["package"]).resolve().parents:
        raise RuntimeError(f"the baseline's settings were built by {out['package']}, not by the package under {src}")
    return out["settings_env"], out["settings"]


def prepare_baseline(rev: str, workdir: Path, config: str | None, mock_port: int, repo: Path = ROOT) -> Baseline:
    """`rev` exported under `workdir`, its factory found and its settings built by its own code."""
    root = workdir / "baseline-src"
    commit = export_revision(repo, rev, root)
    module, app = baseline_factory(root)
    (workdir / "baseline-data").mkdir()
    env, settings_json = baseline_settings(root, module, baseline_config(config, root, repo), mock_port,
                                           workdir / "baseline-data")
    return Baseline(rev, commit, root, app, env, settings_json)


# -- the run ---------------------------------------------------------------------------------------
def check_kit(kit: Path) -> None:
    from nlweb_local.core.errors import BadRequestError

    missing = [f for f in KIT_FILES if not (kit / f).is_file()]
    if missing:
        raise BadRequestError(f"the gateway benchmark kit is not at {kit.resolve()} (missing {', '.join(missing)}); "
                              f"pass --kit PATH to the folder with {', '.join(KIT_FILES)} (it lives in the project's "
                              f"shared bench folder, ../shared/bench/gateway, not in this repository)")
    if shutil.which("wrk") is None:
        raise BadRequestError("the load generator wrk is not installed (Debian/Ubuntu: apt-get install -y wrk; "
                              "macOS: brew install wrk)")


def pinning() -> tuple[list[str], list[str], str]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2 and shutil.which("taskset"):
        return (["taskset", "-c", str(cpus[0])], ["taskset", "-c", str(cpus[1])],
                f"proxy on cpu {cpus[0]}, mock and wrk on cpu {cpus[1]}")
    return [], [], "not pinned (needs taskset and two cores): figures are less comparable"


def run(args: argparse.Namespace, settings) -> int:
    kit = Path(args.kit)
    check_kit(kit)
    previous = signal.signal(signal.SIGTERM, _terminate)  # so that `kill` stops the processes started here too
    try:
        if args.governance:
            figures = measure_governance(args, settings, kit)
            print(json.dumps(figures))
            return 0
        results, notes, duration = measure_all(args, settings, kit)
    except RuntimeError as e:
        print(f"bench_gateway.py: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    figures = summarize(results, notes, duration)
    print_table(results, figures)
    print(json.dumps(figures))
    return 0


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStacks: every process started here is stopped


def measure_all(args: argparse.Namespace, settings, kit: Path) -> tuple[dict, dict[str, Any], float]:
    duration = 2.0 if args.quick else args.duration or 8.0
    proxy_cpu, load_cpu, pin_note = pinning()
    py = sys.executable
    notes: dict[str, Any] = {"pinning": pin_note}
    with tempfile.TemporaryDirectory(prefix="nlweb-bench-gw-") as tmp, ExitStack() as stack:
        logs = Path(tmp)
        bench = Bench(kit.resolve(), duration, logs, proxy_cpu, load_cpu)
        print(f"gateway benchmark: {duration:g} s per run at c={', '.join(map(str, CONCURRENCY))}; {pin_note}", flush=True)
        mock_port = free_port()
        mock_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
        baseline = None
        if args.baseline:
            print(f"  baseline {args.baseline}: exporting it, its settings from its own code ...", flush=True)
            baseline = prepare_baseline(args.baseline, logs, args.config, mock_port)
            notes["baseline_rev"], notes["baseline_commit"] = baseline.rev, baseline.commit
        start(stack, "mock", [*load_cpu, py, str(bench.kit / "mock_upstream.py"), str(mock_port)], mock_port, logs)
        body = lua_body(bench.kit)
        with ExitStack() as proxies:  # the floor and the gateway(s), measured turn about, then stopped
            port = free_port()
            floor = start(proxies, "floor", [*proxy_cpu, py, "-m", "uvicorn", "floor_proxy:app", "--app-dir",
                                             str(bench.kit), "--host", "127.0.0.1", "--port", str(port), *UVICORN_FAST],
                          port, logs, env={"UPSTREAM": mock_url})
            floor_url = f"http://127.0.0.1:{port}/v1/chat/completions"
            (logs / "data").mkdir()
            cfg = logs / "gateway-settings.json"
            cfg.write_text(gateway_settings(settings, mock_port, logs / "data").model_dump_json())
            gw, gw_url = start_gateway(proxies, bench, "gateway", ["--factory", "--app-dir", str(Path(__file__).resolve().parent),
                                                                   "bench_gateway:gateway_app"], {SETTINGS_ENV: str(cfg)}, body, notes)
            targets = [Target("mock", mock_url), Target("floor", floor_url, floor.pid), Target("nlweb-local", gw_url, gw.pid)]
            if baseline is not None:
                cfg = logs / "baseline-settings.json"
                cfg.write_text(baseline.settings_json)
                bl, bl_url = start_gateway(proxies, bench, "baseline", baseline.app,
                                           {baseline.settings_env: str(cfg), **baseline_env(baseline.root)}, body, notes)
                targets.append(Target("baseline", bl_url, bl.pid))
            print(f"  {', '.join(t.name for t in targets)} (interleaved) ...", flush=True)
            results: dict[str, dict[int, WrkResult] | None] = dict(bench.measure(targets))
            notes["gateway_rss_mb_after"] = rss_mb(gw.pid)
            if baseline is not None:
                notes["baseline_rss_mb_after"] = rss_mb(bl.pid)
            if args.soak > 0:
                notes.update(soak(bench, gw_url, gw.pid, args.soak))
        results["litellm"] = None
        if args.no_litellm:
            notes["litellm_error"] = "skipped (--no-litellm)"
        else:
            print("  litellm ...", flush=True)
            try:
                results["litellm"], notes["litellm_version"] = run_litellm(args, bench, mock_port, body)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                notes["litellm_error"] = str(e)[:500]
                print(f"  litellm could not be measured: {e}", flush=True)
    return results, notes, duration


def governed_settings(settings, data_dir: Path):
    """Governance on: auth required, the audit log kept, a team with limits; returns (settings, key)."""
    from nlweb_local.config.settings import TeamSettings
    from nlweb_local.governance import open_keyring
    from nlweb_local.governance.identity import Limits, Role

    s = settings.model_copy(deep=True)
    s.auth.enabled = True
    s.audit.enabled = True
    big = dict(requests_per_minute=10**9, tokens_per_day=10**12, usd_per_day=10.0**6)
    s.auth.teams = {"bench": TeamSettings(**big)}
    keyring = open_keyring(s)
    try:
        _, key = keyring.create("bench", Role.USER, team="bench", limits=Limits(**big))
    finally:
        keyring.close()
    return s, key


def measure_governance(args: argparse.Namespace, settings, kit: Path) -> dict[str, Any]:
    """Governance off vs on, the same gateway, turn about at c=16; prints and returns the figures."""
    import statistics

    duration = 2.0 if args.quick else args.duration or GOVERNANCE_RUN_S
    proxy_cpu, load_cpu, pin_note = pinning()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="nlweb-bench-gov-") as tmp, ExitStack() as stack:
        logs = Path(tmp)
        bench = Bench(kit.resolve(), duration, logs, proxy_cpu, load_cpu)
        print(f"gateway governance benchmark: {duration:g} s per run at c=16, {args.rounds} rounds; {pin_note}", flush=True)
        mock_port = free_port()
        start(stack, "mock", [*load_cpu, py, str(bench.kit / "mock_upstream.py"), str(mock_port)], mock_port, logs)
        body = lua_body(bench.kit)
        notes: dict[str, Any] = {}
        app = ["--factory", "--app-dir", str(Path(__file__).resolve().parent), "bench_gateway:gateway_app"]
        targets = []
        for name in ("off", "on", *(("control",) if args.control else ()), *(("unstored",) if args.unstored else ())):
            (logs / name).mkdir()
            s = gateway_settings(settings, mock_port, logs / name)
            headers = None
            governed = name in ("on", "unstored")
            if governed:
                s, key = governed_settings(s, logs / name)
                headers = {"Authorization": f"Bearer {key}"}
            cfg = logs / f"{name}-settings.json"
            cfg.write_text(s.model_dump_json())
            env = {SETTINGS_ENV: str(cfg), GOVERNANCE_ENV: name if governed else "off"}
            proc, url = start_gateway(stack, bench, f"governance-{name}", app, env, body, notes, headers=headers)
            if name == "on":  # no key: refused (auth is really on)
                status, _, _ = post_once(url, body)
                if status != 401:
                    raise RuntimeError(f"governance on answered {status} without a key (expected 401)")
            targets.append(Target(name, url, proc.pid, headers))
        for t in targets:
            bench.wrk(t.url, 16, 1, t.headers)  # warm-up
        runs: dict[str, list[WrkResult]] = {t.name: [] for t in targets}
        for i in range(max(1, args.rounds)):  # (the order alternates: neither one always runs on a warmer machine;
            for t in (targets if i % 2 == 0 else targets[::-1]):  # with --control, "on" runs between the two offs)
                runs[t.name].append(bench.wrk(t.url, 16, duration, t.headers, t.pid))
    control = runs.pop("control", None)
    unstored = runs.pop("unstored", None)
    rps = {k: statistics.median(r.rps for r in v) for k, v in runs.items()}
    cpu = {k: _median_of(v, "cpu_us_per_request") for k, v in runs.items()}
    loop = {k: _median_of(v, "loop_cpu_us_per_request") for k, v in runs.items()}
    errors = {k: sum(r.errors for r in v) for k, v in runs.items()}
    non2xx = {k: sum(r.non2xx for r in v) for k, v in runs.items()}
    ratio = _ratio(rps["on"], rps["off"])
    cpu_ratio = _ratio(cpu["off"], cpu["on"])  # CPU per request, off / on: steadier than req/s on a busy machine
    # each round's two runs back to back: their ratio cancels what drifts between rounds (a neighbour's load)
    pairs = [round(on.rps / off.rps, 3) for on, off in zip(runs["on"], runs["off"])] \
        if all(r.rps for r in runs["off"]) else []
    paired = round(statistics.median(pairs), 3) if pairs else None
    for k, what in (("off", ""), ("on", "  (auth + limits + audit, a key on every request)")):
        print(f"  c=16 governance {k + ':':4s} {rps[k]:8.0f} req/s  p50 {statistics.median(r.p50 for r in runs[k]):.2f} ms"
              f"  cpu {cpu[k] or float('nan'):.0f} us/req (event loop {loop[k] or float('nan'):.0f})  errors {errors[k]} ({non2xx[k]} non-2xx){what}")
    met = None if paired is None else paired >= GOVERNANCE_TARGET
    print(f"  on / off: {paired}x req/s, the median of the rounds' back-to-back ratios (target >= {GOVERNANCE_TARGET}: "
          f"{'met' if met else 'NOT met'}); of the median req/s: {ratio}x; CPU per request off / on: {cpu_ratio}x")
    if len(pairs) > 1:  # (how far one round is from the next: on a shared machine, often wider than the effect)
        print(f"  the rounds' ratios: {', '.join(f'{x:.3f}' for x in pairs)} (spread {min(pairs):.3f}-{max(pairs):.3f})")
    aa = [round(c.rps / off.rps, 3) for c, off in zip(control, runs["off"])] if control and all(r.rps for r in runs["off"]) else []
    if aa:  # two identical gateways: what the machine alone makes of a ratio
        print(f"  control (A/A): a second governance-off gateway / the first: {statistics.median(aa):.3f}x, the median of "
              f"the rounds' ratios {', '.join(f'{x:.3f}' for x in aa)} (spread {min(aa):.3f}-{max(aa):.3f})")
    us = [round(u.rps / on.rps, 3) for u, on in zip(unstored, runs["on"])] if unstored and all(r.rps for r in runs["on"]) else []
    if us:  # the audit store's work (link + insert) as a share of throughput
        ucpu = _median_of(unstored, "cpu_us_per_request")
        print(f"  unstored (governance on, audit rows made but not hashed or inserted): "
              f"{statistics.median(r.rps for r in unstored):.0f} req/s, cpu {ucpu or float('nan'):.0f} us/req; / on: "
              f"{statistics.median(us):.3f}x, the median of the rounds' ratios {', '.join(f'{x:.3f}' for x in us)}")
    return {"mode": "governance", "c16_rps_governance_off": round(rps["off"], 1), "c16_rps_governance_on": round(rps["on"], 1),
            "c16_rps_ratio_governance": paired, "ratio_of_median_rps": ratio, "cpu_ratio_off_over_on": cpu_ratio, "cpu_us_per_request": cpu,
            "loop_cpu_us_per_request": loop,
            "errors": errors, "non2xx": non2xx,
            "rounds": {k: [round(r.rps, 1) for r in v] for k, v in runs.items()}, "round_ratios": pairs, "target_met": met,
            "control_ratio": round(statistics.median(aa), 3) if aa else None, "control_round_ratios": aa,
            "unstored_over_on": round(statistics.median(us), 3) if us else None, "unstored_round_ratios": us,
            "duration_s": duration, "pinning": pin_note}


def _median_of(results: list[WrkResult], figure: str) -> float | None:
    """The median of one figure of `results` (a CPU figure: None where the process could not be read)."""
    import statistics

    values = [v for v in (getattr(r, figure) for r in results) if v is not None]
    return statistics.median(values) if values else None


def start_gateway(stack: ExitStack, bench: Bench, name: str, app: list[str], env: dict[str, str], body: bytes,
                  notes: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A gateway process (`uvicorn` + `app`, the factory's arguments) on the proxy core; checks that it
    answers the benchmark's request and notes its route header and RSS (`<name>_route`, `<name>_rss_mb_before`)."""
    port = free_port()
    proc = start(stack, name, [*bench.proxy_cpu, sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1",
                               "--port", str(port), *UVICORN_FAST], port, bench.workdir, env=env)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    status, headers, answer = post_once(url, body, headers)
    if status != 200:
        raise RuntimeError(f"the {name} answered {status}: {answer[:300]!r}; log: {tail(bench.workdir / f'{name}.log')}")
    notes[f"{name}_route"] = {k.lower(): v for k, v in headers.items()}.get("x-nlweb-route")
    notes[f"{name}_rss_mb_before"] = rss_mb(proc.pid)
    return proc, url


def run_litellm(args: argparse.Namespace, bench: Bench, mock_port: int, body: bytes) -> tuple[dict[int, WrkResult], str]:
    venv = litellm_venv(args)
    exe = ensure_litellm(venv, args.litellm_spec, bench.workdir / "litellm-install.log")
    key = "sk-bench-" + os.urandom(8).hex()
    cfg = bench.workdir / "litellm.yaml"
    cfg.write_text(litellm_config(mock_port, key))
    auth = {"Authorization": f"Bearer {key}"}
    with ExitStack() as one:
        port = free_port()
        proc = start(one, "litellm", [*bench.proxy_cpu, str(exe), "--config", str(cfg), "--host", "127.0.0.1",
                                      "--port", str(port), "--num_workers", "1"], port, bench.workdir, ready_s=240.0,
                     env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": key, "LITELLM_LOG": "ERROR",
                          "DISABLE_ADMIN_UI": "True", "TELEMETRY": "False", "NO_DOCS": "True"})
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        status, _, answer = post_once(url, body, auth)
        if status != 200:
            raise RuntimeError(f"LiteLLM answered {status}: {answer[:300]!r}; log: {tail(bench.workdir / 'litellm.log')}")
        return bench.measure([Target("litellm", url, proc.pid, auth)])["litellm"], litellm_version(venv)


def soak(bench: Bench, url: str, pid: int, seconds: float) -> dict[str, Any]:
    """c=16 for `seconds` while sampling the gateway's RSS every 10 s."""
    print(f"  soak: c=16 for {seconds:.0f} s, RSS every 10 s ...", flush=True)
    cmd = [*bench.load_cpu, "wrk", "-t1", "-c16", f"-d{round(seconds)}s", "--latency", "-s", str(bench.kit / "post.lua"), url]
    samples = [rss_mb(pid)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True) as w:
        try:
            end = time.monotonic() + seconds + 60
            while w.poll() is None and time.monotonic() < end:
                try:
                    w.wait(10.0)
                except subprocess.TimeoutExpired:
                    samples.append(rss_mb(pid))
            out = w.communicate(timeout=30)[0] if w.poll() is not None else ""
        finally:
            stop(w)
    samples.append(rss_mb(pid))
    result = parse_wrk(out) if out else None
    first, last = samples[0], samples[-1]
    growth = round(100.0 * (last - first) / first, 2) if first and last else None
    print(f"  soak RSS (MB): {' '.join(str(s) for s in samples)}", flush=True)
    return {"soak_s": seconds, "soak_rps": round(result.rps, 1) if result else None,
            "soak_errors": result.errors if result else None, "soak_rss_mb": samples, "soak_rss_growth_pct": growth}


def _ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def summarize(results: dict[str, dict[int, WrkResult] | None], notes: dict[str, Any], duration: float) -> dict[str, Any]:
    mock_p50 = results["mock"][1].p50
    out: dict[str, Any] = {"duration_s": duration, "mock_c1_p50_ms": round(mock_p50, 4)}
    for name, prefix in (("nlweb-local", ""), ("floor", "floor_"), ("baseline", "baseline_"), ("litellm", "litellm_"),
                         ("mock", "mock_")):
        r = results.get(name)
        for c in CONCURRENCY:
            w = r[c] if r else None
            if c == 1 and name != "mock":
                out[f"{prefix}c1_p50_added_ms"] = round(w.p50 - mock_p50, 4) if w else None
            out[f"{prefix}c{c}_p50_ms"] = round(w.p50, 4) if w else None
            out[f"{prefix}c{c}_p99_ms"] = round(w.p99, 4) if w else None
            out[f"{prefix}c{c}_rps"] = round(w.rps, 1) if w else None
            if name != "mock":
                cpu = w.cpu_us_per_request if w else None
                out[f"{prefix}c{c}_cpu_us_per_req"] = round(cpu, 1) if cpu is not None else None
        out[f"{prefix}errors"] = sum(w.errors for w in r.values()) if r else None
    for prefix in ("", "baseline_"):
        out[f"{prefix}c1_added_ratio_vs_floor"] = _ratio(out[f"{prefix}c1_p50_added_ms"], out["floor_c1_p50_added_ms"])
        out[f"{prefix}c16_rps_ratio_vs_floor"] = _ratio(out[f"{prefix}c16_rps"], out["floor_c16_rps"])
        out[f"{prefix}c64_rps_ratio_vs_floor"] = _ratio(out[f"{prefix}c64_rps"], out["floor_c64_rps"])
        out[f"{prefix}c16_cpu_ratio_vs_floor"] = _ratio(out[f"{prefix}c16_cpu_us_per_req"], out["floor_c16_cpu_us_per_req"])
    out["rps_ratio_vs_baseline"] = _ratio(out["c16_rps"], out["baseline_c16_rps"])
    out["c64_rps_ratio_vs_baseline"] = _ratio(out["c64_rps"], out["baseline_c64_rps"])
    out["c1_added_ratio_vs_baseline"] = _ratio(out["c1_p50_added_ms"], out["baseline_c1_p50_added_ms"])
    out["c16_cpu_ratio_vs_baseline"] = _ratio(out["c16_cpu_us_per_req"], out["baseline_c16_cpu_us_per_req"])
    out["rps_ratio_vs_litellm"] = _ratio(out["c16_rps"], out["litellm_c16_rps"], 1)
    out["c64_rps_ratio_vs_litellm"] = _ratio(out["c64_rps"], out["litellm_c64_rps"], 1)
    out.update(notes)
    out["baseline_rev"] = notes.get("baseline_rev")
    out["litellm_error"] = notes.get("litellm_error")
    out["targets_met"] = targets_met(out)
    return out


def targets_met(f: dict[str, Any]) -> dict[str, bool | None]:
    def at_most(v, limit): return None if v is None else v <= limit
    def at_least(v, limit): return None if v is None else v >= limit
    return {"c1_added_le_1.5x_floor": at_most(f["c1_added_ratio_vs_floor"], TARGETS["c1_added_ratio_vs_floor"]),
            "c16_rps_ge_70pct_floor": at_least(f["c16_rps_ratio_vs_floor"], TARGETS["c16_rps_ratio_vs_floor"]),
            "ge_10x_litellm": at_least(f["rps_ratio_vs_litellm"], TARGETS["rps_ratio_vs_litellm"]),
            "soak_growth_lt_5pct": None if f.get("soak_rss_growth_pct") is None
            else f["soak_rss_growth_pct"] < TARGETS["soak_rss_growth_pct"]}


def print_table(results: dict[str, dict[int, WrkResult] | None], f: dict[str, Any]) -> None:
    def ms(v: float) -> str:
        return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"

    mock_p50 = results["mock"][1].p50
    print()
    print(f"{'target':<12} {'c=1 req/s':>10} {'c=1 p50':>10} {'added p50':>10} {'c=16 req/s':>11} {'c=16 p99':>10} "
          f"{'c=64 req/s':>11} {'c=64 p99':>10} {'CPU/req c=16':>13} {'errors':>7}")
    for name, r in results.items():
        if r is None:
            print(f"{name:<12} {'—':>10}   ({f.get('litellm_error') or 'not run'})"[:160])
            continue
        added = "—" if name == "mock" else ms(r[1].p50 - mock_p50)
        cpu = r[16].cpu_us_per_request
        cpu_text = "—" if cpu is None else f"{cpu:,.0f} µs"
        print(f"{name:<12} {r[1].rps:>10,.0f} {ms(r[1].p50):>10} {added:>10} {r[16].rps:>11,.0f} {ms(r[16].p99):>10} "
              f"{r[64].rps:>11,.0f} {ms(r[64].p99):>10} {cpu_text:>13} {sum(w.errors for w in r.values()):>7}")
    met = f["targets_met"]

    def verdict(key: str) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[met[key]]

    def ratio(key: str, unit: str = "x") -> str:
        return "—" if f[key] is None else f"{f[key]}{unit}"

    def also(key: str, unit: str = "x") -> str:  # the baseline's figure next to this checkout's
        return "" if results.get("baseline") is None else f"; baseline {f['baseline_rev']}: {ratio('baseline_' + key, unit)}"

    print()
    print(f"added p50 at c=1 vs floor: {ratio('c1_added_ratio_vs_floor')} (target <= 1.5x): {verdict('c1_added_le_1.5x_floor')}"
          + also("c1_added_ratio_vs_floor"))
    print(f"c=16 req/s vs floor:       {ratio('c16_rps_ratio_vs_floor', '')} (target >= 0.70): "
          f"{verdict('c16_rps_ge_70pct_floor')}" + also("c16_rps_ratio_vs_floor", ""))
    print(f"c=16 CPU/request vs floor: {ratio('c16_cpu_ratio_vs_floor')} (the proxy's own CPU time: steadier on a busy machine)"
          + also("c16_cpu_ratio_vs_floor"))
    if results.get("baseline") is not None:
        print(f"vs baseline {f['baseline_rev']}: c=16 req/s "
              f"{ratio('rps_ratio_vs_baseline')}, c=64 req/s {ratio('c64_rps_ratio_vs_baseline')}, added p50 at c=1 "
              f"{ratio('c1_added_ratio_vs_baseline')}, c=16 CPU/request {ratio('c16_cpu_ratio_vs_baseline')}")
    print(f"c=16 req/s vs LiteLLM:     {ratio('rps_ratio_vs_litellm')} (target >= 10x): {verdict('ge_10x_litellm')}")
    print(f"gateway RSS before/after:  {f.get('gateway_rss_mb_before')} / {f.get('gateway_rss_mb_after')} MB"
          + (f"; soak growth {f['soak_rss_growth_pct']} % (target < 5 %): {verdict('soak_growth_lt_5pct')}"
             if "soak_rss_growth_pct" in f else ""))
    print(f"gateway route: {f.get('gateway_route')}"
          + (f"; baseline {f['baseline_rev']} ({f.get('baseline_commit', '')[:12]}) route: {f.get('baseline_route')}"
             if results.get("baseline") is not None else ""))


if __name__ == "__main__":
    sys.exit(main())
