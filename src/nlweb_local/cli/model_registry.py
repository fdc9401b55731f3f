"""`nlweb-local models register|versions|aliases|alias|promote|rollback|history`: the model registry.

    models register NAME VERSION --file PATH [--engine E] [--sha256 H]   (or --url URL --sha256 H)
    models versions [NAME]            models aliases
    models alias ALIAS NAME VERSION   models promote NAME VERSION --alias A
    models rollback ALIAS             models history [ALIAS] [--format json]
    models promote ... --canary 5,25,50,100 --guard ...   models canary status   (cli/model_canary.py)

The registry is the one `registry.database_url` names (default: <data_dir>/registry.sqlite); a running
server sees a change within `registry.poll_s`.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from ..config.settings import Settings
from ..core.errors import BadRequestError

ACTIONS = ("register", "versions", "aliases", "alias", "promote", "rollback", "history", "canary")
PROGRESS_OVER = 64 * 1024 * 1024  # files larger than this show a progress bar while hashed


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model registry (register, versions, aliases, alias, promote, rollback, history)")
    g.add_argument("rest", nargs="*", metavar="ARG", help="register NAME VERSION; alias ALIAS NAME VERSION; "
                   "promote NAME VERSION; versions NAME; rollback ALIAS; history ALIAS")
    g.add_argument("--file", metavar="PATH", help="register: the model file (hashed with SHA-256)")
    g.add_argument("--sha256", metavar="HEX", help="register: the file's expected SHA-256; a mismatch registers nothing")
    g.add_argument("--quantisation", metavar="Q", help="register: e.g. Q4_K_M (default: read from the file name)")
    g.add_argument("--context-window", type=int, metavar="TOKENS", help="register: the model's context window")
    g.add_argument("--parameters", metavar="JSON", help='register: sampling defaults etc., e.g. \'{"temperature": 0.7}\'')
    g.add_argument("--chat-template", metavar="FILE", help="register: a chat template file (kept in parameters)")
    g.add_argument("--notes", default="", help="register: free text")
    g.add_argument("--alias", metavar="A", help="promote: the alias to move")
    g.add_argument("--by", help="who makes the change (default: your user name)")
    g.add_argument("--force", action="store_true", help="alias/promote: even if no configured deployment serves the version")
    g.add_argument("--format", choices=["text", "json"], default="text", help="versions/aliases/history output")
    from . import model_canary

    model_canary.add_arguments(g)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..registry import build_registry

    words = [w for w in [args.name, *args.rest] if w is not None]
    registry = build_registry(settings)
    try:
        args.settings = settings
        return _ACTIONS[args.action](registry, args, words)
    finally:
        registry.close()


def _who(args: argparse.Namespace) -> str:
    if args.by:
        return args.by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _words(words: list[str], usage: str, n: int) -> list[str]:
    if len(words) != n:
        raise BadRequestError(f"usage: nlweb-local models {usage}")
    return words


def _register(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    name, version = _words(words, "register NAME VERSION --file PATH [--engine E] [--sha256 H]", 2)
    parameters: dict[str, Any] = {}
    if args.parameters:
        try:
            parameters = json.loads(args.parameters)
        except json.JSONDecodeError as e:
            raise BadRequestError(f"--parameters must be a JSON object: {e}") from None
        if not isinstance(parameters, dict):
            raise BadRequestError("--parameters must be a JSON object, e.g. '{\"temperature\": 0.7}'")
    if args.chat_template:
        try:
            parameters["chat_template"] = Path(args.chat_template).read_text()
        except OSError as e:
            raise BadRequestError(f"cannot read --chat-template {args.chat_template}: {e.strerror or e}") from None
    bar = _progress(args.file)
    try:
        v = registry.register(name, version, file=args.file, url=args.url, sha256=args.sha256,
                              engine=args.engine or "llama_cpp", quantisation=args.quantisation,
                              context_window=args.context_window, parameters=parameters, notes=args.notes,
                              by=_who(args), progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    print(f"registered {v.key}: {v.engine}, {v.artifact}, sha256 {v.sha256}"
          + (f", {v.quantisation}" if v.quantisation else ""))
    if args.promote_canary:
        from . import model_canary

        return model_canary.start(registry, args, args.settings, name, version, _who(args))
    return 0


def _progress(file: str | None) -> Any:
    if not file:
        return None
    try:
        size = Path(file).expanduser().stat().st_size
    except OSError:
        return None  # (the registry says what is wrong with the path)
    if size <= PROGRESS_OVER:
        return None
    from tqdm import tqdm

    return tqdm(total=size, unit="B", unit_scale=True, desc="sha256", file=sys.stderr)


def _versions(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    if len(words) > 1:
        raise BadRequestError("usage: nlweb-local models versions [NAME]")
    versions = registry.versions(words[0] if words else None)
    aliases: dict[str, list[str]] = {}
    for a in registry.aliases():
        aliases.setdefault(a.key, []).append(a.alias)
    if args.format == "json":
        print(json.dumps([{**v.as_dict(), "aliases": aliases.get(v.key, [])} for v in versions], indent=1))
        return 0
    if not versions:
        print("no versions registered" + (f" for {words[0]}" if words else "")
              + ": nlweb-local models register NAME VERSION --file PATH")
        return 0
    for v in versions:
        tags = f"  <- {', '.join(aliases[v.key])}" if v.key in aliases else ""
        print(f"{v.key:<28} {v.engine:<12} {v.quantisation or '-':<8} {v.sha256[:12]}  {v.as_dict()['created_at']} "
              f"by {v.created_by}{tags}")
    return 0


def _aliases(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    _words(words, "aliases", 0)
    rows = registry.aliases()
    if args.format == "json":
        print(json.dumps([a.as_dict() for a in rows], indent=1))
        return 0
    for a in rows:
        print(f"{a.alias:<20} -> {a.key:<28} {a.as_dict()['updated_at']} by {a.updated_by}")
    if not rows:
        print("no aliases: nlweb-local models alias ALIAS NAME VERSION")
    return 0


def _alias(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    alias, name, version = _words(words, "alias ALIAS NAME VERSION", 3)
    return _said(registry.set_alias(alias, name, version, by=_who(args), force=args.force), alias, name, version)


def _promote(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    name, version = _words(words, "promote NAME VERSION --alias ALIAS", 2)
    if not args.alias:
        raise BadRequestError("usage: nlweb-local models promote NAME VERSION --alias ALIAS")
    if args.canary:
        from . import model_canary

        return model_canary.start(registry, args, args.settings, name, version, _who(args))
    return _said(registry.promote(name, version, alias=args.alias, by=_who(args), force=args.force),
                 args.alias, name, version)


def _rollback(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    (alias,) = _words(words, "rollback ALIAS", 1)
    return _said(registry.rollback(alias, by=_who(args)), alias, "", "")


def _said(change: Any, alias: str, name: str, version: str) -> int:
    if change is None:
        print(f"{alias} already points at {name}@{version}; nothing changed")
    else:
        d = change.as_dict()
        print(f"{alias}: {d['from'] or '(new)'} -> {change.name}@{change.version} ({change.action}, by {change.by})")
    return 0


def _history(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    if len(words) > 1:
        raise BadRequestError("usage: nlweb-local models history [ALIAS] [--format json]")
    changes = registry.history(words[0] if words else None)
    if args.format == "json":
        print(json.dumps([c.as_dict() for c in changes], indent=1))
        return 0
    for c in changes:
        d = c.as_dict()
        print(f"{d['at']}  {c.alias:<20} {d['from'] or '(new)':>24} -> {c.name}@{c.version:<12} {c.action:<8} by {c.by}")
    if not changes:
        print("no alias changes recorded" + (f" for {words[0]}" if words else ""))
    return 0


def _canary(registry: Any, args: argparse.Namespace, words: list[str]) -> int:
    from . import model_canary

    return model_canary.status(registry, args, words)


_ACTIONS = {"register": _register, "versions": _versions, "aliases": _aliases, "alias": _alias,
            "promote": _promote, "rollback": _rollback, "history": _history, "canary": _canary}
