"""The A/B tables in the registry database, and the SQL over them (both backends run it).

    experiments   one row per experiment: alias, model, variants (JSON), metric, min samples, started
                  at/by, stopped at/by; a partial unique index keeps one running experiment per alias
    feedback      ratings of answers: request id and/or query id, the rating as given and normalised to
                  [0, 1], a comment, the caller, and the NAME@VERSION that served (when known at the time)

Starting and stopping an experiment are registry changes (they bump `registry_state.version`, so replicas
reload their view); recording feedback is not (it would make every replica reload on every rating).
The tables are created by the registry's migration step `TABLES` (store.MIGRATIONS).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from ..core.errors import BadRequestError, NotFoundError
from .experiments import Experiment, Variant
from .records import iso, version_key

TABLES = ("A/B experiments and answer feedback", (
    """CREATE TABLE experiments (
  id BIGINT PRIMARY KEY, alias TEXT NOT NULL, name TEXT NOT NULL, variants TEXT NOT NULL, metric TEXT NOT NULL,
  min_samples INTEGER NOT NULL, started_at DOUBLE PRECISION NOT NULL, started_by TEXT NOT NULL,
  stopped_at DOUBLE PRECISION, stopped_by TEXT)""",
    "CREATE UNIQUE INDEX experiments_running ON experiments (alias) WHERE stopped_at IS NULL",
    """CREATE TABLE feedback (
  at DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, query_id TEXT NOT NULL, rating DOUBLE PRECISION NOT NULL,
  score DOUBLE PRECISION NOT NULL, comment TEXT NOT NULL, caller TEXT NOT NULL, model_version TEXT NOT NULL)""",
    "CREATE INDEX feedback_at ON feedback (at)",
))

_COLUMNS = "id, alias, name, variants, metric, min_samples, started_at, started_by, stopped_at, stopped_by"
_FEEDBACK = "at, request_id, query_id, rating, score, comment, caller, model_version"


@dataclass(frozen=True, slots=True)
class Feedback:
    at: float
    request_id: str
    query_id: str
    rating: float  # as given: +1 / -1, or 1..5
    score: float  # normalised to [0, 1]
    comment: str = ""
    caller: str = ""
    model_version: str = ""  # NAME@VERSION that served, when known when the rating came

    def as_dict(self) -> dict[str, Any]:
        return {"at": iso(self.at), "request_id": self.request_id or None, "query_id": self.query_id or None,
                "rating": self.rating, "score": self.score, "comment": self.comment, "caller": self.caller or None,
                "model_version": self.model_version or None}


class ExperimentStore:
    """Over a `store.SqlRegistryStore` (its connection, lock and transactions)."""

    def __init__(self, store: Any):
        self._store = store

    def start(self, e: Experiment) -> Experiment:
        s = self._store
        with s._writing() as seq:
            rows = s._run(f"SELECT {_COLUMNS} FROM experiments WHERE alias = ? AND stopped_at IS NULL", (e.alias,))
            if rows:
                other = _experiment(rows[0])
                raise BadRequestError(f"an experiment already runs on alias {e.alias!r} (id {other.id}, "
                                      f"{other.spec()}, started by {other.started_by} at {iso(other.started_at)}): "
                                      f"stop it first with nlweb-local ab stop --alias {e.alias}; nothing changed")
            for v in e.variants:
                if not s._run("SELECT 1 FROM model_versions WHERE name = ? AND version = ?", (e.name, v.version)):
                    raise NotFoundError(f"{version_key(e.name, v.version)} is not registered (nlweb-local models "
                                        f"versions {e.name} lists its versions); nothing changed")
            started = Experiment(seq, e.alias, e.name, e.variants, e.metric, e.min_samples, e.started_at, e.started_by)
            s._run(f"INSERT INTO experiments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (seq, e.alias, e.name, json.dumps([[v.version, v.weight] for v in e.variants]), e.metric,
                    e.min_samples, e.started_at, e.started_by, None, None))
            return started

    def stop(self, alias: str, *, at: float, by: str) -> Experiment:
        s = self._store
        with s._writing():
            rows = s._run(f"SELECT {_COLUMNS} FROM experiments WHERE alias = ? AND stopped_at IS NULL", (alias,))
            if not rows:
                raise NotFoundError(f"no experiment runs on alias {alias!r} (nlweb-local ab list shows them)")
            s._run("UPDATE experiments SET stopped_at = ?, stopped_by = ? WHERE id = ?", (at, by, rows[0][0]))
            e = _experiment(rows[0])
        return Experiment(e.id, e.alias, e.name, e.variants, e.metric, e.min_samples, e.started_at, e.started_by,
                          at, by)

    def experiments(self, alias: str | None = None, *, running_only: bool = False) -> list[Experiment]:
        """Oldest first."""
        conds, args = [], []
        if alias:
            conds.append("alias = ?")
            args.append(alias)
        if running_only:
            conds.append("stopped_at IS NULL")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        with self._store._reading():
            rows = self._store._run(f"SELECT {_COLUMNS} FROM experiments{where} ORDER BY id", args)
        return [_experiment(r) for r in rows]

    def running(self) -> dict[str, Experiment]:
        """alias -> its running experiment."""
        return {e.alias: e for e in self.experiments(running_only=True)}

    def add_feedback(self, f: Feedback) -> None:
        s = self._store
        with s._guard(), s._transaction():
            s._run(f"INSERT INTO feedback ({_FEEDBACK}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (f.at, f.request_id, f.query_id, f.rating, f.score, f.comment, f.caller, f.model_version))

    def feedback(self, since: float | None = None, until: float | None = None) -> list[Feedback]:
        conds, args = [], []
        if since is not None:
            conds.append("at >= ?")
            args.append(since)
        if until is not None:
            conds.append("at < ?")
            args.append(until)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        with self._store._reading():
            rows = self._store._run(f"SELECT {_FEEDBACK} FROM feedback{where} ORDER BY at", args)
        return [Feedback(float(r[0]), r[1], r[2], float(r[3]), float(r[4]), r[5], r[6], r[7]) for r in rows]


def _experiment(r: Sequence[Any]) -> Experiment:
    variants = tuple(Variant(str(v), float(w)) for v, w in json.loads(r[3]))
    return Experiment(int(r[0]), r[1], r[2], variants, r[4], int(r[5]), float(r[6]), r[7],
                      float(r[8]) if r[8] is not None else None, r[9] or "")
