"""`nlweb-local config show`."""
from __future__ import annotations

import argparse

from ..config.settings import Settings, settings_as_yaml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the effective settings", description="Settings come from defaults, then "
                       "the YAML file, then NLWEB_LOCAL_<SECTION>__<KEY> environment variables.")
    p.add_argument("action", choices=["show"], help="show: print the effective settings as YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    print(settings_as_yaml(settings), end="")
    return 0
