"""Splitting an alias's traffic during a canary, and counting what each side did.

    CanaryView     the running canaries, alias -> (canary, stage, weight), from memory; `reload()` reads the
                   registry (off the request path: the watcher's tick, or at once after a change made here)
    CanaryTally    per (canary, stage, arm): calls, failed calls, a TTFT histogram (bounded: only canaries
                   the view knows; `snapshot()` is what the watcher flushes to the registry database)
    CanarySplit    the wrapper around the router: a request whose `model` is an alias under a canary goes to
                   the candidate's deployments when a hash of its conversation (else caller, else request id)
                   falls within the stage's weight — the same conversation stays on the same side as stages
                   grow. A candidate that fails before its first token is counted, and the call is retried
                   on the baseline, so the caller sees no canary failure.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from ..core.errors import NlwebError, ProviderError, StreamInterruptedError
from ..core.types import ChatChunk, ChatRequest
from ..providers.wrapper import CallKind, WrapperProvider
from .canary import PROMOTED, Canary
from .guards import Figures, ttft_bucket

log = logging.getLogger(__name__)
KEEP_PROMOTED_S = 60.0  # a promoted canary keeps its candidate on 100 % until every replica's alias view moved


@dataclass(frozen=True, slots=True)
class Split:
    canary: int
    stage: int
    weight: float  # percent to the candidate
    candidate: str  # NAME@VERSION
    baseline: str


class CanaryView:
    def __init__(self, canaries: Any, *, clock: Callable[[], float] = time.time):
        self._canaries = canaries  # canary.CanaryStore
        self._clock = clock
        self._splits: dict[str, Split] = {}
        self._seen = -1

    def get(self, alias: str | None) -> Split | None:
        return self._splits.get(alias) if alias else None

    def splits(self) -> dict[str, Split]:
        return dict(self._splits)

    def reload(self, *, force: bool = True) -> bool:
        """Read the running canaries (blocking; `force=False`: only when the registry's version moved). True
        when it read them."""
        version = self._canaries.store.version()
        if not force and version == self._seen:
            return False
        running = self._canaries.running(promoted_since=self._clock() - KEEP_PROMOTED_S)
        if any(c.status == PROMOTED for c in running):  # (only while the alias still points where it promoted)
            targets = {a.alias: a.key for a in self._canaries.store.aliases()}
            running = [c for c in running if c.status != PROMOTED or targets.get(c.alias) == c.key]
        self._seen = version
        self._splits = {c.alias: _split(c) for c in sorted(running, key=lambda c: c.id)}  # (one reference swap)
        return True


def _split(c: Canary) -> Split:
    return Split(c.id, c.stage, 100.0 if c.status == PROMOTED else c.weight, c.key, c.base_key)


class CanaryTally:
    def __init__(self) -> None:
        self._counts: dict[tuple[int, int, str], Figures] = {}

    def record(self, split: Split, arm: str, ttft_s: float | None, failed: bool) -> None:
        if split.weight >= 100:  # (promoted: nothing left to judge)
            return
        key = (split.canary, split.stage, arm)
        f = self._counts.get(key)
        if f is None:
            f = self._counts[key] = Figures()
        f.requests += 1
        if failed:
            f.errors += 1
        elif ttft_s is not None:
            b = ttft_bucket(ttft_s)
            f.ttft[b] = f.ttft.get(b, 0) + 1

    def snapshot(self, live: set[int]) -> dict[tuple[int, int, str], Figures]:
        """Copies of the running totals of canaries in `live`; the others are dropped (memory stays bounded)."""
        for key in [k for k in self._counts if k[0] not in live]:
            del self._counts[key]
        return {k: Figures(f.requests, f.errors, dict(f.ttft)) for k, f in self._counts.items()}


class CanarySplit(WrapperProvider):
    def __init__(self, inner: Any, view: CanaryView, tally: CanaryTally, *, serving: Callable[[str], tuple[str, ...]],
                 request_id: Callable[[], str] = lambda: "", clock: Callable[[], float] = time.perf_counter):
        """`serving(NAME@VERSION)`: the deployments serving a version (the router's `resolve_model`)."""
        super().__init__(inner)
        self._view = view
        self._tally = tally
        self._serving = serving
        self._request_id = request_id
        self._clock = clock

    def _arm(self, request: ChatRequest) -> tuple[Split, ChatRequest | None] | None:
        """(split, the request pinned to the candidate, or None for the baseline side); None: no canary."""
        split = self._view.get(request.model)
        if split is None:
            return None
        ctx = request.context
        who = ctx.conversation or ctx.caller or self._request_id() or str(id(request))
        h = int.from_bytes(hashlib.blake2b(f"{split.canary}:{who}".encode(), digest_size=4).digest(), "big")
        if (h % 10_000) >= split.weight * 100:
            return split, None
        try:
            deployments = self._serving(split.candidate)
        except NlwebError:
            deployments = ()
        if not deployments:
            return split, None  # (no deployment here serves the candidate: this replica keeps the baseline)
        pinned = request.with_deadline(request.deadline_s)
        pinned.context = ctx.with_(deployments=deployments)
        return split, pinned

    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[Any]]) -> Any:
        arm = self._arm(subject) if kind == "complete" else None  # (classify and embed are not split)
        if arm is None:
            return await run()
        split, pinned = arm
        side = "candidate" if pinned is not None else "baseline"
        started = self._clock()
        try:
            out = await (self.inner.complete(pinned) if pinned is not None else run())
        except ProviderError:
            self._tally.record(split, side, None, True)
            if pinned is None:
                raise
            return await run()  # the candidate failed: the baseline answers
        usage = getattr(out, "usage", None)
        ttft = getattr(usage, "time_to_first_token_s", None) if usage is not None else None
        self._tally.record(split, side, ttft if ttft is not None else self._clock() - started, False)
        return out

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        arm = self._arm(request)
        if arm is None:
            return self.inner.stream(request)
        return self._stream(request, *arm)

    async def _stream(self, request: ChatRequest, split: Split, pinned: ChatRequest | None) -> AsyncIterator[ChatChunk]:
        side = "candidate" if pinned is not None else "baseline"
        started = self._clock()
        sent, ttft = False, None
        chunks = self.inner.stream(pinned if pinned is not None else request)
        try:
            async for ch in chunks:
                if not sent:
                    sent, ttft = True, self._clock() - started
                yield ch
        except StreamInterruptedError:
            self._tally.record(split, side, None, True)
            raise
        except ProviderError:
            self._tally.record(split, side, None, True)
            if pinned is None or sent:
                raise
            async for ch in self.inner.stream(request):  # the candidate failed before its first token: the baseline
                yield ch
            return
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        self._tally.record(split, side, ttft, False)

