"""Find a running server to talk to, so CLI commands work while `serve` holds the embedded store.

In order: `--server URL` (it must answer); the server `serve` recorded in the data directory
(`server_record`: whatever `--port`/`--host` it was given); the configured `server.host:port`. Each
look is bounded (under 2 s in all), and a recorded server that is alive but not answering yet is
reported at once as starting, with what to do, instead of loading the models only to find the store
taken.
"""
from __future__ import annotations

import urllib.request

from ..config.settings import Settings
from ..core.errors import ProviderConnectionError, StoreBusyError
from .server_record import read_record

PROBE_TIMEOUT_S = 0.5


def healthy(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout_s) as r:
            return r.status == 200 and b"healthy" in r.read()
    except (OSError, ValueError):
        return False


def configured_url(settings: Settings) -> str:
    host = settings.server.host if settings.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{settings.server.port}"


def server_url(explicit: str | None, settings: Settings) -> str | None:
    """The URL of a running server to use, or None: none runs for this data directory (work in-process)."""
    if explicit:
        url = explicit.rstrip("/")
        if not healthy(url, timeout_s=1.5):
            raise ProviderConnectionError(f"no nlweb-local server answers at {url}; start one with "
                                          "`nlweb-local serve` (or leave out --server to work without one)")
        return url
    record = read_record(settings.data_path)
    if record is not None:
        if healthy(record.url, timeout_s=1.0):
            return record.url
        raise StoreBusyError(f"`nlweb-local serve` (pid {record.pid}) is starting at {record.url} and holds the "
                             f"store in {settings.data_path}: wait until it logs 'ready' and run this again, "
                             "or stop it")
    url = configured_url(settings)
    return url if healthy(url) else None


def check_store_free(settings: Settings) -> None:
    """Before loading any model: `StoreBusyError` at once when another process holds the embedded store,
    naming the recorded server when it is the one (`ingest` while `serve` runs)."""
    if settings.store.url:
        return
    from ..retrieval.store_lock import check_free

    try:
        check_free(settings.store_path)
    except StoreBusyError:
        record = read_record(settings.data_path)
        if record is None:
            raise
        raise StoreBusyError(f"`nlweb-local serve` (pid {record.pid}, {record.url}) holds the store in "
                             f"{settings.store_path}: stop it first (or point store.url at a Qdrant server, which "
                             "several processes can share)") from None
