"""`RegistryAliases`: the registry's aliases as the router reads them on every request — from memory.

    target(alias) -> "NAME@VERSION" | None     a dict lookup; never touches the database
    generation                                 bumps whenever the snapshot changes (callers that remember
                                               a resolution compare it: one integer comparison)
    reload()                                   read the registry now (a change made in this process
                                               calls it at once, through ModelRegistry.on_change)

Changes made elsewhere (another replica, `nlweb-local models ...`) are seen by polling the registry's
one-row version counter: when `poll_s` has passed, the next lookup starts a refresh in a worker thread
and goes on with the snapshot it has (the request path never waits for the database). A failed poll is
logged and retried after `poll_s`; the last snapshot keeps serving meanwhile.

A request resolves its alias once, when it enters; the deployments it pinned then serve it to the end,
so a request in flight when the alias moves finishes on the version it started with.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

from .store import RegistryStore


def running_experiments(store: Any) -> dict[str, Any]:
    """alias -> its running A/B experiment ({} for a store without the experiment table, e.g. a fake)."""
    if not hasattr(store, "_run"):
        return {}
    from .experiment_store import ExperimentStore

    return ExperimentStore(store).running()

log = logging.getLogger(__name__)


class RegistryAliases:
    def __init__(self, store: RegistryStore, *, poll_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._poll_s = poll_s
        self._clock = clock
        self._targets: dict[str, str] = {}
        self._seen = -1  # the registry version the snapshot was read at
        self._reload_lock = threading.Lock()
        self._polling: asyncio.Task | None = None
        self.generation = 0
        self.polls = 0
        self.experiments: dict[str, Any] = {}  # alias -> its running A/B experiment (experiments.Experiment)
        self.reload()

    def target(self, alias: str) -> str | None:
        """The NAME@VERSION `alias` points at now, or None when it is no registry alias."""
        self.current()
        return self._targets.get(alias)

    def targets(self) -> dict[str, str]:
        """Every alias -> NAME@VERSION (a copy)."""
        self.current()
        return dict(self._targets)

    def current(self) -> int:
        """The generation of the snapshot, starting a background poll when one is due."""
        if self._clock() >= self._next_poll and self._polling is None:
            self._start_poll()
        return self.generation

    def reload(self) -> bool:
        """Read the registry (blocking: call it from a worker thread, or where blocking is fine). True when
        the snapshot changed."""
        with self._reload_lock:
            self._next_poll = self._clock() + self._poll_s
            version = self._store.version()  # (first: a change between the two reads is seen next time)
            if version == self._seen:
                return False
            targets = {a.alias: a.key for a in self._store.aliases()}
            experiments = running_experiments(self._store)
            self._seen = version
            if targets == self._targets and experiments == self.experiments:
                return False
            self._targets = targets  # (one reference swap: readers see the old dict or the new one)
            self.experiments = experiments
            self.generation += 1
            return True

    def _start_poll(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a CLI, a test without one): read now
            self._poll()
            return
        self._next_poll = self._clock() + self._poll_s  # (one poll at a time, even before the thread starts)
        self._polling = loop.create_task(asyncio.to_thread(self._poll))
        self._polling.add_done_callback(self._polled)

    def _polled(self, task: asyncio.Task) -> None:
        self._polling = None

    def _poll(self) -> None:
        self.polls += 1
        try:
            if self.reload():
                log.info("model registry: aliases changed (%s)", ", ".join(f"{a} -> {t}" for a, t in self._targets.items()))
        except Exception as e:  # noqa: BLE001  (an outage must not fail requests: keep the last snapshot)
            self._next_poll = self._clock() + self._poll_s
            log.warning("model registry: cannot read aliases (%s); serving the last ones known", e)
