"""Canary releases: a candidate version takes a growing share of an alias's traffic, stage by stage, while
guards compare it with the version the alias points at (the baseline); a broken guard rolls it back.

    start(name, version, alias, stages="5,25,50,100", guards=..., min_requests)   the alias must exist
    stop(alias, by)        (`models rollback ALIAS` during a canary) traffic back to the baseline at once
    running(), canaries(), decisions(id), figures(id, stage)       what /admin/canary and the CLI show
    apply(canary, action, ...)   a stage decision, made once across replicas (compare-and-set on the stage)

State lives in the registry database (tables `canaries`, `canary_decisions`, `canary_counts`, migrated on
their own track, `canary_migrations`), so every replica reads the same stage and any one may decide. Every
change bumps the registry's version (replicas' views reload). The alias itself moves only at 100 %: a
normal `promote` in its history; the start and a rollback are recorded there as `canary-start` and
`canary-rollback` (which `models rollback` steps over).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from ..core.errors import BadRequestError, NotFoundError
from .guards import DEFAULT_GUARDS, Figures, parse_guards
from .records import AliasChange, iso, version_key

RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled_back"
MAX_STAGES = 20

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("canary releases, their decisions and per-replica counts", (
        """CREATE TABLE canaries (
  id BIGINT PRIMARY KEY, alias TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, base_name TEXT NOT NULL,
  base_version TEXT NOT NULL, stages TEXT NOT NULL, stage INTEGER NOT NULL, guards TEXT NOT NULL,
  min_requests INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
  started_by TEXT NOT NULL, stage_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION)""",
        "CREATE INDEX canaries_alias ON canaries (alias, status)",
        """CREATE TABLE canary_decisions (
  seq BIGINT PRIMARY KEY, canary INTEGER NOT NULL, stage INTEGER NOT NULL, weight DOUBLE PRECISION NOT NULL,
  action TEXT NOT NULL, detail TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, by TEXT NOT NULL)""",
        """CREATE TABLE canary_counts (
  canary INTEGER NOT NULL, stage INTEGER NOT NULL, arm TEXT NOT NULL, replica TEXT NOT NULL,
  requests BIGINT NOT NULL, errors BIGINT NOT NULL, ttft TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (canary, stage, arm, replica))""",
    )),
)
_COLUMNS = ("id, alias, name, version, base_name, base_version, stages, stage, guards, min_requests, status, reason, "
            "started_at, started_by, stage_at, ended_at")


def parse_stages(text: str) -> tuple[float, ...]:
    """`5,25,50,100`: percentages of traffic, rising, ending at 100."""
    try:
        stages = tuple(float(p) for p in str(text).split(","))
    except ValueError:
        raise BadRequestError(f"--canary must be rising percentages ending at 100, e.g. 5,25,50,100 (got {text!r})") \
            from None
    if not stages or any(not 0 < s <= 100 for s in stages) or any(b <= a for a, b in zip(stages, stages[1:])):
        raise BadRequestError(f"--canary stages must rise within (0, 100], e.g. 5,25,50,100 (got {text!r})")
    if stages[-1] != 100:
        raise BadRequestError(f"--canary must end at 100 (the stage where the alias moves): e.g. {text},100")
    if len(stages) > MAX_STAGES:
        raise BadRequestError(f"--canary has {len(stages)} stages; at most {MAX_STAGES}")
    return stages


@dataclass(frozen=True)
class Canary:
    id: int
    alias: str
    name: str
    version: str
    base_name: str
    base_version: str
    stages: tuple[float, ...]
    stage: int  # index into stages
    guards: str
    min_requests: int
    status: str
    reason: str
    started_at: float
    started_by: str
    stage_at: float
    ended_at: float | None = None

    @property
    def key(self) -> str:
        return version_key(self.name, self.version)

    @property
    def base_key(self) -> str:
        return version_key(self.base_name, self.base_version)

    @property
    def weight(self) -> float:
        """The candidate's share of the alias's traffic now, in percent."""
        return self.stages[self.stage] if self.status != ROLLED_BACK else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "alias": self.alias, "candidate": self.key, "baseline": self.base_key,
                "stages": list(self.stages), "stage": self.stage + 1, "weight": self.weight, "guards": self.guards,
                "min_requests": self.min_requests, "status": self.status, "reason": self.reason,
                "started_at": iso(self.started_at), "started_by": self.started_by, "stage_at": iso(self.stage_at),
                "ended_at": iso(self.ended_at) if self.ended_at else None}


@dataclass
class Decision:
    action: str  # hold | advance | promote | rollback
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


class CanaryStore:
    """The canary tables, in the registry's database and transactions (`store`: a `SqlRegistryStore`)."""

    def __init__(self, store: Any, *, clock: Callable[[], float] = time.time):
        self.store = store
        self._clock = clock
        self._migrate()

    def _migrate(self) -> None:
        s = self.store
        with s._guard(), s._transaction():
            s._lock_schema()
            s._run("CREATE TABLE IF NOT EXISTS canary_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL)")
            current = int(s._run("SELECT MAX(version) FROM canary_migrations")[0][0] or 0)
            if current > len(MIGRATIONS):
                from .store import RegistryStoreError

                raise RegistryStoreError(f"the model registry {s.where} has canary schema version {current}, newer "
                                         f"than this nlweb-local knows ({len(MIGRATIONS)}): upgrade nlweb-local")
            for number in range(current, len(MIGRATIONS)):
                description, statements = MIGRATIONS[number]
                for statement in statements:
                    s._run(statement)
                s._run("INSERT INTO canary_migrations (version, description) VALUES (?, ?)", (number + 1, description))

    # -- reads ----------------------------------------------------------------------------------
    def canaries(self, alias: str | None = None, limit: int = 50) -> list[Canary]:
        """Newest first."""
        where, args = (" WHERE alias = ?", [alias]) if alias else ("", [])
        with self.store._reading():
            rows = self.store._run(f"SELECT {_COLUMNS} FROM canaries{where} ORDER BY id DESC LIMIT ?", [*args, limit])
        return [_canary(r) for r in rows]

    def running(self, *, promoted_since: float | None = None) -> list[Canary]:
        """Running canaries (and, with `promoted_since`, those promoted since then)."""
        with self.store._reading():
            rows = self.store._run(f"SELECT {_COLUMNS} FROM canaries WHERE status = ? OR (status = ? AND ended_at >= ?)",
                                   (RUNNING, PROMOTED, promoted_since if promoted_since is not None else 1e300))
        return [_canary(r) for r in rows]

    def running_on(self, alias: str) -> Canary | None:
        return next((c for c in self.running() if c.alias == alias), None)

    def decisions(self, canary: int) -> list[dict[str, Any]]:
        with self.store._reading():
            rows = self.store._run("SELECT seq, stage, weight, action, detail, at, by FROM canary_decisions "
                                   "WHERE canary = ? ORDER BY seq", (canary,))
        return [{"stage": int(r[1]) + 1, "weight": float(r[2]), "action": r[3], **json.loads(r[4]), "at": iso(float(r[5])),
                 "by": r[6]} for r in rows]

    def figures(self, canary: int, stage: int) -> tuple[Figures, Figures]:
        """(baseline, candidate) in `stage`, summed over every replica's last flush."""
        with self.store._reading():
            rows = self.store._run("SELECT arm, requests, errors, ttft FROM canary_counts WHERE canary = ? AND stage = ?",
                                   (canary, stage))
        arms = {"baseline": Figures(), "candidate": Figures()}
        for arm, requests, errors, ttft in rows:
            if arm in arms:
                arms[arm].add(Figures(int(requests), int(errors), {int(k): int(v) for k, v in json.loads(ttft).items()}))
        return arms["baseline"], arms["candidate"]

    # -- changes --------------------------------------------------------------------------------
    def start(self, name: str, version: str, *, alias: str, stages: tuple[float, ...], guards: str, min_requests: int,
              by: str) -> Canary:
        s, now = self.store, self._clock()
        with s._writing() as seq:
            rows = s._run("SELECT name, version FROM aliases WHERE alias = ?", (alias,))
            if not rows:
                raise NotFoundError(f"no alias {alias!r}: a canary moves an alias that exists (set it first with "
                                    f"nlweb-local models alias {alias} NAME VERSION)")
            base = (rows[0][0], rows[0][1])
            if base == (name, version):
                raise BadRequestError(f"{alias} already points at {version_key(name, version)}: nothing to release")
            if not s._run("SELECT 1 FROM model_versions WHERE name = ? AND version = ?", (name, version)):
                raise NotFoundError(f"{version_key(name, version)} is not registered (nlweb-local models register "
                                    f"{name} {version} --file PATH)")
            if s._run("SELECT 1 FROM experiments WHERE alias = ? AND stopped_at IS NULL", (alias,)):
                raise BadRequestError(f"an A/B test is running on {alias}: a canary would split the same traffic; "
                                      f"stop it first (nlweb-local ab stop --alias {alias})")
            if s._run("SELECT 1 FROM canaries WHERE alias = ? AND status = ?", (alias, RUNNING)):
                raise BadRequestError(f"a canary is already running on {alias}: see nlweb-local models canary status, "
                                      f"or stop it with nlweb-local models rollback {alias}")
            c = Canary(seq, alias, name, version, base[0], base[1], stages, 0, guards, min_requests, RUNNING, "", now, by,
                       now)
            s._run(f"INSERT INTO canaries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (c.id, alias, name, version, base[0], base[1], json.dumps(list(stages)), 0, guards, min_requests,
                    RUNNING, "", now, by, now, None))
            self._history(seq, alias, (name, version), base, "canary-start", now, by)
            self._decided(seq, c, "start", {"reason": f"{stages[0]:g}% of {alias} to {c.key}"}, now, by)
        return c

    def apply(self, c: Canary, d: Decision, *, by: str) -> Canary | None:
        """Carry out decision `d` on canary `c` as last read; None when another replica (or a rollback)
        changed it first. `promote` moves the alias (a normal history entry) in the same transaction."""
        try:
            return self._apply(c, d, by=by)
        except _Stale:
            return None

    def _apply(self, c: Canary, d: Decision, *, by: str) -> Canary:
        s, now = self.store, self._clock()
        with s._writing() as seq:
            rows = s._run("SELECT stage, status FROM canaries WHERE id = ?", (c.id,))
            if not rows or (int(rows[0][0]), rows[0][1]) != (c.stage, RUNNING):
                raise _Stale()
            detail = {"reason": d.reason, **d.detail}
            if d.action == "advance":
                s._run("UPDATE canaries SET stage = ?, stage_at = ? WHERE id = ?", (c.stage + 1, now, c.id))
                new = _replace(c, stage=c.stage + 1, stage_at=now)
            elif d.action == "promote":
                at = s._run("SELECT name, version FROM aliases WHERE alias = ?", (c.alias,))
                if not at or (at[0][0], at[0][1]) != (c.base_name, c.base_version):
                    d = Decision("rollback", f"{c.alias} was moved by hand during the canary", d.detail)
                    return self._end(seq, c, d, ROLLED_BACK, now, by, record=False)
                s._move(seq, c.alias, c.name, c.version, action="promote", at=now, by=f"{c.started_by} (canary)",
                        must_exist=True)
                s._run("UPDATE canaries SET stage = ?, status = ?, reason = ?, ended_at = ? WHERE id = ?",
                       (len(c.stages) - 1, PROMOTED, d.reason, now, c.id))
                new = _replace(c, stage=len(c.stages) - 1, status=PROMOTED, reason=d.reason, ended_at=now)
            elif d.action == "rollback":
                return self._end(seq, c, d, ROLLED_BACK, now, by)
            else:
                raise ValueError(d.action)
            self._decided(seq, new, d.action, detail, now, by)
            return new

    def stop(self, alias: str, *, by: str, reason: str = "") -> tuple[Canary, AliasChange] | None:
        """Roll back the canary running on `alias` (None when none runs): its traffic returns to the baseline."""
        c = self.running_on(alias)
        if c is None:
            return None
        if self.apply(c, Decision("rollback", reason or f"rolled back by {by}"), by=by) is None:
            return self.stop(alias, by=by, reason=reason)  # (it moved on meanwhile: look again)
        change = self.store.history(alias, limit=1)[-1]
        return c, change

    def _end(self, seq: int, c: Canary, d: Decision, status: str, now: float, by: str, record: bool = True) -> Canary:
        s = self.store
        s._run("UPDATE canaries SET status = ?, reason = ?, ended_at = ? WHERE id = ?", (status, d.reason, now, c.id))
        self._history(seq, c.alias, (c.base_name, c.base_version), (c.name, c.version), "canary-rollback", now, by)
        new = _replace(c, status=status, reason=d.reason, ended_at=now)
        self._decided(seq, c, "rollback", {"reason": d.reason, **d.detail}, now, by)  # (at the weight it had)
        return new

    def flush(self, replica: str, counts: dict[tuple[int, int, str], Figures]) -> None:
        """This replica's running totals per (canary, stage, arm): written as they are (idempotent)."""
        if not counts:
            return
        s, now = self.store, self._clock()
        with s._guard(), s._transaction():  # (no version bump: counts are not a change anyone reloads for)
            for (canary, stage, arm), f in counts.items():
                s._run("DELETE FROM canary_counts WHERE canary = ? AND stage = ? AND arm = ? AND replica = ?",
                       (canary, stage, arm, replica))
                s._run("INSERT INTO canary_counts (canary, stage, arm, replica, requests, errors, ttft, at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (canary, stage, arm, replica, f.requests, f.errors,
                                                           json.dumps({str(k): v for k, v in f.ttft.items()}), now))

    def _history(self, seq: int, alias: str, to: tuple[str, str], frm: tuple[str, str], action: str, at: float,
                 by: str) -> None:
        self.store._run("INSERT INTO alias_history (seq, alias, name, version, from_name, from_version, action, "
                        "changed_at, changed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, alias, to[0], to[1], frm[0], frm[1], action, at, by))

    def _decided(self, seq: int, c: Canary, action: str, detail: dict, at: float, by: str) -> None:
        self.store._run("INSERT INTO canary_decisions (seq, canary, stage, weight, action, detail, at, by) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, c.id, c.stage, c.weight, action, json.dumps(detail, default=str), at, by))


class _Stale(Exception):
    """The canary changed since it was read (rolls the transaction back)."""


def start_canary(registry: Any, name: str, version: str, *, alias: str, stages: str = "5,25,50,100",
                 guards: str = DEFAULT_GUARDS, min_requests: int = 100, by: str,
                 served: Collection[str] | None = None) -> Canary:
    """Checked input, then `CanaryStore.start` (the registry's `served` check applies, as for promote)."""
    from .catalog import checked_name

    checked_name(alias, "alias")
    plan = parse_stages(stages)
    parse_guards(guards)  # (refused here, before anything is written)
    if not isinstance(min_requests, int) or min_requests < 1:
        raise BadRequestError(f"--min-requests must be a positive number of requests, got {min_requests!r}")
    registry.check_served(name, version, alias)
    c = registry.canaries.start(name, version, alias=alias, stages=plan, guards=guards, min_requests=min_requests, by=by)
    registry._changed()
    return c


def _replace(c: Canary, **kw: Any) -> Canary:
    from dataclasses import replace

    return replace(c, **kw)


def _canary(r: Any) -> Canary:
    return Canary(int(r[0]), r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])), int(r[7]), r[8], int(r[9]), r[10],
                  r[11], float(r[12]), r[13], float(r[14]), float(r[15]) if r[15] is not None else None)
