"""`nlweb-local config show`."""
from __future__ import annotations

import argparse

import sys
from pathlib import Path

from ..config.settings import Settings, documented_yaml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the effective settings", description="Settings come from defaults, then "
                       "the YAML file, then NLWEB_LOCAL_<SECTION>__<KEY> environment variables.")
    p.add_argument("action", choices=["show", "init"],
                   help="show: print the effective settings as YAML (secrets masked); init: write a documented file of the defaults")
    p.add_argument("path", nargs="?", default="nlweb-local.yaml", help="file for init (default: ./nlweb-local.yaml)")
    p.add_argument("--force", action="store_true", help="init: overwrite an existing file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "show":  # secrets written inline (API keys, passwords in URLs, webhook paths) are masked
        import yaml

        from ..config.masking import mask_secrets

        print(yaml.safe_dump(mask_secrets(settings.model_dump(mode="json")), sort_keys=False), end="")
        return 0
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"nlweb-local config init: {path} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    path.write_text(documented_yaml())
    print(f"wrote {path}: every setting with its default and what it does")
    return 0
