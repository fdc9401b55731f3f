"""What the model registry keeps: model versions, aliases and the history of every alias change."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


def version_key(name: str, version: str) -> str:
    """`NAME@VERSION`: how a deployment (`serves`), a request's `model` and `x-nlweb-route` name a version."""
    return f"{name}@{version}"


def split_key(key: str) -> tuple[str, str] | None:
    """(NAME, VERSION) of `NAME@VERSION`, or None when `key` is not of that form."""
    name, at, version = key.rpartition("@")
    return (name, version) if at and name and version else None


def iso(ts: float) -> str:
    """A unix time as ISO 8601 in UTC (what history and the admin endpoint show)."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered version of a model: what it is and where its file is. Immutable once registered."""

    name: str
    version: str
    engine: str
    artifact: str  # a local path or a URL
    sha256: str  # of the artifact's bytes
    quantisation: str = ""
    context_window: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # sampling defaults, chat template
    notes: str = ""
    created_at: float = 0.0
    created_by: str = ""

    @property
    def key(self) -> str:
        return version_key(self.name, self.version)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "engine": self.engine, "artifact": self.artifact,
                "sha256": self.sha256, "quantisation": self.quantisation, "context_window": self.context_window,
                "parameters": self.parameters, "notes": self.notes, "created_at": iso(self.created_at),
                "created_by": self.created_by}


@dataclass(frozen=True, slots=True)
class Alias:
    """An alias and the version it points at now."""

    alias: str
    name: str
    version: str
    updated_at: float
    updated_by: str

    @property
    def key(self) -> str:
        return version_key(self.name, self.version)

    def as_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "name": self.name, "version": self.version, "updated_at": iso(self.updated_at),
                "updated_by": self.updated_by}


@dataclass(frozen=True, slots=True)
class AliasChange:
    """One change of an alias: from (None for its first setting) → to, who, when, and how (set, promote,
    rollback). `seq` is the registry's version after the change: it orders changes across processes."""

    seq: int
    alias: str
    name: str
    version: str
    from_name: str | None
    from_version: str | None
    action: str
    at: float
    by: str

    def as_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "name": self.name, "version": self.version, "at": iso(self.at), "by": self.by,
                "from": version_key(self.from_name, self.from_version) if self.from_name and self.from_version else None,
                "action": self.action, "seq": self.seq}
