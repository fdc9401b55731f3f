"""A/B experiments on a registry alias: what one is, how a request is assigned to a variant, and the rules
for starting and stopping one.

    Experiment          alias, model name, variants (version + weight), metric, min samples, started/stopped
    parse_variants()    "v3:50,v4:50" (or "smol@v3:50,...") -> variants, checked
    Experiment.assign(key) -> NAME@VERSION     sticky and weighted: SHA-256 of (experiment id, key) as a
                                               number in [0, 1) against the cumulative weights; the same
                                               conversation (or caller) lands on the same variant for the
                                               whole experiment, a new experiment reshuffles
    Experiments         start / stop / list over the registry store (experiment_store.py), one running
                        experiment per alias (a second is refused, nothing changed)

While an experiment runs, `ExperimentSplit` (experiment_split.py) pins each request for the alias to
the deployments serving its variant; after it stops, the alias serves the version it points at.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection

from ..core.errors import BadRequestError, NotFoundError
from .ab_stats import METRICS
from .records import iso, split_key, version_key

MAX_VARIANTS = 8


@dataclass(frozen=True, slots=True)
class Variant:
    version: str
    weight: float


@dataclass(frozen=True, slots=True)
class Experiment:
    id: int  # the registry version its start made (orders experiments across processes)
    alias: str
    name: str  # the model whose versions compete
    variants: tuple[Variant, ...]
    metric: str = "quality"
    min_samples: int = 100
    started_at: float = 0.0
    started_by: str = ""
    stopped_at: float | None = None
    stopped_by: str = ""

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    @property
    def keys(self) -> tuple[str, ...]:
        """The variants' NAME@VERSION, the control (first) first."""
        return tuple(version_key(self.name, v.version) for v in self.variants)

    def assign(self, key: str) -> str:
        """The NAME@VERSION that `key` (a conversation id, a caller) is served by in this experiment."""
        digest = hashlib.sha256(f"{self.id}\x00{key}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
        total = sum(v.weight for v in self.variants)
        edge = 0.0
        for v in self.variants:
            edge += v.weight / total
            if u < edge:
                return version_key(self.name, v.version)
        return version_key(self.name, self.variants[-1].version)  # (rounding at the top edge)

    def spec(self) -> str:
        return ",".join(f"{v.version}:{v.weight:g}" for v in self.variants)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "alias": self.alias, "name": self.name,
                "variants": [{"version": v.version, "key": version_key(self.name, v.version), "weight": v.weight}
                             for v in self.variants],
                "metric": self.metric, "min_samples": self.min_samples, "running": self.running,
                "started_at": iso(self.started_at), "started_by": self.started_by,
                "stopped_at": iso(self.stopped_at) if self.stopped_at is not None else None,
                "stopped_by": self.stopped_by or None}


def parse_variants(text: str, name: str) -> tuple[Variant, ...]:
    """`v3:50,v4:50` (versions of `name`; `NAME@v3:50` is accepted when NAME is `name`) -> variants.
    `BadRequestError` saying what to fix for anything else."""
    usage = "--variants takes VERSION:WEIGHT pairs, e.g. v3:50,v4:50"
    out: list[Variant] = []
    for part in (p.strip() for p in str(text).split(",")):
        version, colon, weight = part.rpartition(":")
        if not colon or not version:
            raise BadRequestError(f"{usage} (got {part!r})")
        key = split_key(version)
        if key is not None:
            if key[0] != name:
                raise BadRequestError(f"variant {part!r} names model {key[0]!r}, but the alias serves {name!r}: "
                                      "an experiment compares versions of the alias's model")
            version = key[1]
        try:
            w = float(weight)
        except ValueError:
            raise BadRequestError(f"{usage}: weight {weight!r} is not a number") from None
        if not 0 < w < float("inf"):
            raise BadRequestError(f"{usage}: weight of {version} must be a positive number, got {weight!r}")
        out.append(Variant(version, w))
    if len(out) < 2:
        raise BadRequestError(f"{usage}: an experiment needs at least two variants")
    if len(out) > MAX_VARIANTS:
        raise BadRequestError(f"{usage}: at most {MAX_VARIANTS} variants")
    if len({v.version for v in out}) != len(out):
        raise BadRequestError(f"{usage}: each version once (got {text!r})")
    return tuple(out)


class Experiments:
    """The rules over the experiment table. `registry`: the `ModelRegistry` (its store holds the table,
    its `on_change` reloads this server's view); `served`: the NAME@VERSION keys the configured
    deployments serve (None: not checked)."""

    def __init__(self, registry: Any, *, served: Collection[str] | None = None,
                 clock: Callable[[], float] = time.time):
        from .experiment_store import ExperimentStore

        self.registry = registry
        self.store = ExperimentStore(registry.store)
        self._served = frozenset(served) if served is not None else None
        self._clock = clock

    def start(self, alias: str, variants: str, *, metric: str = "quality", min_samples: int = 100,
              by: str) -> Experiment:
        if metric not in METRICS:
            raise BadRequestError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or not 1 <= min_samples <= 10_000_000:
            raise BadRequestError(f"--min-samples must be a whole number in [1, 10000000], got {min_samples!r}")
        current = next((a for a in self.registry.aliases() if a.alias == alias), None)
        if current is None:
            raise NotFoundError(f"no alias {alias!r}: set it first with nlweb-local models alias {alias} NAME VERSION")
        canaries = getattr(self.registry, "canaries", None)
        if canaries is not None and (c := canaries.running_on(alias)) is not None:
            raise BadRequestError(f"a canary of {c.key} is running on {alias}: an A/B test would split the same "
                                  f"traffic; wait for it, or stop it with nlweb-local models rollback {alias}")
        parsed = parse_variants(variants, current.name)
        for v in parsed:  # (the plainer fault first; the store checks again inside its transaction)
            if self.registry.store.get_version(current.name, v.version) is None:
                raise NotFoundError(f"{version_key(current.name, v.version)} is not registered (nlweb-local models "
                                    f"versions {current.name} lists its versions); nothing changed")
        if self._served is not None:
            unserved = [version_key(current.name, v.version) for v in parsed
                        if version_key(current.name, v.version) not in self._served]
            if unserved:
                raise BadRequestError(f"no configured deployment serves {', '.join(unserved)}: add one to "
                                      "llm.deployments with `serves: NAME@VERSION` for each variant (and restart)")
        exp = Experiment(0, alias, current.name, parsed, metric, min_samples, self._clock(), by)
        started = self.store.start(exp)  # (checks, in its transaction: versions registered, none running)
        self._changed()
        return started

    def stop(self, alias: str, *, by: str) -> Experiment:
        stopped = self.store.stop(alias, at=self._clock(), by=by)
        self._changed()
        return stopped

    def list(self, alias: str | None = None, *, running: bool = False) -> list[Experiment]:
        return self.store.experiments(alias, running_only=running)

    def get(self, ident: int | None = None, alias: str | None = None) -> Experiment:
        """An experiment by id, else the newest on `alias` (running or not), else the newest of all."""
        found = self.store.experiments(alias)
        if ident is not None:
            found = [e for e in found if e.id == ident]
        if not found:
            what = f"experiment {ident}" if ident is not None else f"experiment on alias {alias!r}" if alias \
                else "experiment"
            raise NotFoundError(f"no {what}: start one with nlweb-local ab start --alias ALIAS --variants v1:50,v2:50")
        return found[-1]

    def _changed(self) -> None:
        on_change = getattr(self.registry, "on_change", None)
        if on_change is not None:
            on_change()
