"""Find a running server to talk to, so CLI commands work while `serve` holds the embedded store."""
from __future__ import annotations

import urllib.request

from ..config.settings import Settings


def server_url(explicit: str | None, settings: Settings) -> str | None:
    if explicit:
        return explicit.rstrip("/")
    host = settings.server.host if settings.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{host}:{settings.server.port}"
    try:
        with urllib.request.urlopen(url + "/health", timeout=0.5) as r:
            return url if r.status == 200 and b"healthy" in r.read() else None
    except OSError:
        return None
