"""`nlweb-local sites`."""
from __future__ import annotations

import argparse

from ..config.settings import Settings
from .remote import check_store_free, server_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sites", help="list the loaded sites and their item counts")
    p.add_argument("--server", metavar="URL", help="ask this server (default: the running one, if any)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    url = server_url(args.server, settings)
    if url:
        import json
        import urllib.request

        with urllib.request.urlopen(url + "/sites", timeout=10) as r:
            for name in json.load(r)["sites"]:
                print(name)
        return 0
    from ..server.components import build_embedder, build_store

    check_store_free(settings)  # (before the embedding model loads)
    embedder = build_embedder(settings)
    store = build_store(settings, embedder)
    try:
        infos = store.sites()
        if not infos:
            print("no sites loaded yet (nlweb-local ingest SOURCE --site NAME; serve and ask load the demo into an "
                  "empty store)")
        for s in infos:
            print(f"{s.name}\t{s.item_count} items")
    finally:
        store.close()
    return 0
