"""`air_gap: true` for the commands other than `serve`: the same process-wide `OutboundGuard` the server
installs (governance/air_gap.py), for the whole command, and a clear refusal up front where a command
is asked to fetch from a host the guard would refuse.

    cli/main.py        installs the guard before any command but `serve` (which installs its own once
                       its port is bound) runs, and takes it down after; `args.outbound_guard` holds it
    ingest URL         refused before anything loads or connects when the URL's host is not allowed;
                       the URLs a sitemap or feed names are refused by the guard as the crawl meets them
    models pull        refused: the engine (Ollama) would download the model from its registry itself,
                       outside this process's guard
"""
from __future__ import annotations

import argparse
import logging
from typing import Any
from urllib.parse import urlsplit

from ..core.errors import BadRequestError, SourceError

log = logging.getLogger(__name__)


def install(settings: Any, args: argparse.Namespace) -> Any:
    """With `air_gap`, the guard for this command (installed, and kept as `args.outbound_guard`); else None."""
    if not settings.air_gap or getattr(args, "command", None) == "serve":
        return None
    from ..governance.air_gap import guard_for

    guard = guard_for(settings).install()
    args.outbound_guard = guard
    log.info("air_gap: outbound connections are allowed to loopback%s only",
             f" and {', '.join(sorted(guard.hosts))}" if guard.hosts else "")
    return guard


def _guard(settings: Any, args: argparse.Namespace) -> Any:
    guard = getattr(args, "outbound_guard", None)
    if guard is None:  # (the command was called without main: the same rule, not installed)
        from ..governance.air_gap import guard_for

        guard = guard_for(settings)
    return guard


def check_fetch(settings: Any, args: argparse.Namespace, url: str, command: str) -> None:
    """`SourceError` saying why when `air_gap` is on and `url`'s host is neither loopback nor a configured
    local engine or service; nothing is looked up or connected to."""
    if not settings.air_gap or "://" not in url:
        return
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if host and _guard(settings, args).allows_host(host):
        return
    raise SourceError(f"air_gap is on: {command} does not fetch {url} ({host or 'its host'} is neither loopback nor "
                      "a configured local engine or service, and no outbound connection is made to it). Fetch it "
                      "on a connected machine and ingest the file, or serve it on this machine")


def check_pull(settings: Any, what: str) -> None:
    """`models pull` under `air_gap`: refused (the engine would download from its registry)."""
    if settings.air_gap:
        raise BadRequestError(f"air_gap is on: models pull {what} is refused, the engine would download the model "
                              "from its registry; copy the model file onto this machine and load it instead")
