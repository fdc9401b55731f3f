"""`nlweb-local` — serve, ingest, ask, sites, config, bench."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..core.errors import NlwebError

EPILOG = """examples:
  nlweb-local serve                                  # chat page at http://127.0.0.1:8000 (demo site loads on first start)
  nlweb-local ingest recipes.jsonl --site myrecipes  # load a site (TSV, JSONL, JSON-LD, CSV, RSS/Atom, sitemap or page URL)
  nlweb-local ask "vegetarian curry" --site myrecipes --mode summarize
  nlweb-local models list                            # deployments, their health, Ollama's installed/loaded models
  nlweb-local config show                            # effective settings (defaults < nlweb-local.yaml < NLWEB_LOCAL_* env)
  nlweb-local deploy k8s --out k8s/                  # Kubernetes manifests for these settings (gateway, engines, autoscaling)
"""


def build_parser() -> argparse.ArgumentParser:
    from . import ab, ask, audit, bench, config_cmd, cost, deploy, eval_cmd, ingest, keys, models, router_cmd, serve, sites

    p = argparse.ArgumentParser(prog="nlweb-local", description="Self-hosted NLWeb search with a local LLM.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"nlweb-local {__version__}")
    p.add_argument("--config", metavar="FILE", help="settings file (default: $NLWEB_LOCAL_CONFIG or ./nlweb-local.yaml)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging and model-loading progress (otherwise only `serve` logs, at server.log_level, "
                   "and other commands print warnings and errors only, on stderr)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (serve, ingest, ask, sites, models, ab, router_cmd, config_cmd, eval_cmd, bench, cost, keys, audit,
                   deploy):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if not args.verbose:  # no "Loading weights" bars (read when huggingface_hub is imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from ..config.settings import load_settings

    try:
        settings = load_settings(args.config)
        # stdout is for answers (`ask --json` is piped): logs go to stderr, and only `serve` logs by default
        level = "DEBUG" if args.verbose else settings.log_level if args.command == "serve" else "WARNING"
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
        for noisy in ("httpx", "sentence_transformers", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from .air_gap import install

        guard = install(settings, args)  # air_gap: no outbound connection but to loopback and the local engines
        try:
            return int(args.func(args, settings) or 0)
        finally:
            if guard is not None:
                guard.uninstall()
    except NlwebError as e:
        print(f"nlweb-local: error: {e.message}", file=sys.stderr)
        return 2 if e.status == 400 else 1
    except KeyboardInterrupt:
        print("nlweb-local: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
