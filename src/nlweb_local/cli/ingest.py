"""`nlweb-local ingest SOURCE --site NAME` and `--delete-site NAME`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config.settings import Settings
from ..core.errors import SourceError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="load a site's schema.org items (or delete a site)",
                       description="Load items from a file or URL: TSV (url<TAB>json-ld), JSON lines, JSON-LD "
                       "(object, array, @graph), CSV with headers, RSS/Atom, a sitemap or a page URL. Re-loading a "
                       "url replaces it. Stop `nlweb-local serve` first when the store is embedded (the default).")
    p.add_argument("source", nargs="?", help="file path or http(s) URL")
    p.add_argument("--site", help="site name the items belong to (required with SOURCE)")
    p.add_argument("--delete-site", metavar="NAME", help="remove every item of site NAME")
    p.add_argument("--format", choices=["tsv", "jsonl", "jsonld", "csv", "feed", "html", "sitemap"],
                   help="input format (default: from the extension and content)")
    p.add_argument("--type", default="Thing", metavar="SCHEMA_TYPE", help="@type of CSV rows without a type column")
    p.add_argument("--force", action="store_true",
                   help="move items that another site holds (same url) into --site without asking; without it such "
                   "a load asks on a terminal and is refused otherwise")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _confirm_move(force: bool):
    """How a load that would move items out of another site is confirmed: --force; a question on a
    terminal; otherwise (scripts, pipes) not at all, so the load is refused."""
    if force:
        return lambda question: True
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def ask(question: str) -> bool:
        print(question, file=sys.stderr)
        try:
            sys.stderr.write("Move them? [y/N] ")  # (input() would prompt on stdout)
            sys.stderr.flush()
            return input().strip().lower() in ("y", "yes")
        except EOFError:
            return False

    return ask


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.delete_site and not (args.source and args.site):
        print("nlweb-local ingest: give SOURCE and --site NAME, or --delete-site NAME (see --help)", file=sys.stderr)
        return 2
    if args.source and "://" not in args.source and not Path(args.source).exists():
        raise SourceError(f"{args.source}: no such file (give a path to a file, or an http(s) URL)")
    if args.source:
        from .air_gap import check_fetch

        check_fetch(settings, args, args.source, "nlweb-local ingest")  # (before anything loads or connects)
    from ..ingest.pipeline import Ingestor
    from ..server.components import build_embedder, build_store
    from .remote import check_store_free

    check_store_free(settings)  # (before the embedding model loads)
    embedder = build_embedder(settings)
    store = build_store(settings, embedder)
    try:
        ingestor = Ingestor(embedder, store, settings.ingest, progress=not args.no_progress)
        if args.delete_site:
            n = ingestor.delete_site(args.delete_site)
            print(f"deleted site {args.delete_site!r}: {n} items removed")
            if not args.source:
                return 0
        report = ingestor.ingest(args.source, args.site, fmt=args.format, default_type=args.type,
                                 confirm_move=_confirm_move(args.force))
        print(report.summary())
        return 0
    finally:
        store.close()
