"""Where a running `nlweb-local serve` listens: `<data_dir>/server.json` while it runs.

`serve` writes `{"url", "pid"}` as soon as it holds its port (before the models load) and removes the
file when it exits, so `ask` and `sites` find a server started with `--port N` or `--host`, and know
that a server which does not answer yet is still starting (it holds the embedded store meanwhile). A
file left by a process that died (`kill -9`) names a pid that no longer runs and is ignored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "server.json"


@dataclass(frozen=True, slots=True)
class ServerRecord:
    url: str
    pid: int
    path: Path


def record_path(data_path: Path) -> Path:
    return data_path / FILE_NAME


def write_record(data_path: Path, url: str) -> ServerRecord:
    """Record this process as the server of `data_path` at `url` (atomically: a reader never sees half)."""
    data_path.mkdir(parents=True, exist_ok=True)
    path = record_path(data_path)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}), encoding="utf-8")
    os.replace(tmp, path)
    return ServerRecord(url, os.getpid(), path)


def remove_record(record: ServerRecord) -> None:
    """Remove the file if it is still this server's (a later server may have replaced it)."""
    current = read_record(record.path.parent)
    if current is not None and current.pid == record.pid:
        record.path.unlink(missing_ok=True)


def read_record(data_path: Path) -> ServerRecord | None:
    """The server recorded for `data_path`, or None: no file, an unreadable one, or a dead process's."""
    path = record_path(data_path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        url, pid = str(raw["url"]), int(raw["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ServerRecord(url, pid, path) if _alive(pid) else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True
