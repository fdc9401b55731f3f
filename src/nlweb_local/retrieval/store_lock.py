"""Whether another process holds the embedded Qdrant store: the lock its local mode takes on
`<path>/.lock` (exclusive, non-blocking, through portalocker, as qdrant-client does). Checked without
importing qdrant-client (~2.5 s), so a command refuses at once instead of after loading models."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import StoreBusyError


def busy_message(path: str | Path) -> str:
    return (f"the vector store at {path} is in use by another nlweb-local process (`serve` or `ingest`); stop it "
            "first, or point store.url at a Qdrant server to share one store")


def check_free(path: str | Path) -> None:
    """`StoreBusyError` when another process holds the embedded store at `path` now."""
    import portalocker

    lock = Path(path) / ".lock"
    if not lock.exists():
        return
    with open(lock, "r+") as f:
        try:
            portalocker.lock(f, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            raise StoreBusyError(busy_message(path)) from None
        portalocker.unlock(f)
