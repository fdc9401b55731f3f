"""The `Counters` port behind every limit, and `InProcessCounters`, its in-process implementation.

A counter is an integer under a string key that expires (a limit's window: the key names the window,
e.g. `tok:key:ab12:20391`, and expires when it ends). Two operations carry the limits:

    refusal = await counters.reserve([Charge(key, amount, limit, ttl_s), ...])
        all or nothing, atomically: every counter gets `amount` added only if each stays <= its limit;
        else nothing changes and the `Refusal` names the first charge that did not fit
    await counters.adjust([(key, delta, ttl_s), ...])
        unconditional (settling a reservation on the real usage: usually a negative delta)

Because a reservation is checked and taken in one atomic step, concurrent requests can never together
reserve past a limit. `RedisCounters` (counters_redis.py) does the same with one Lua script per call, so
several replicas share the limits.

`InProcessCounters` also lends its counters themselves for a window (`cells`), which the limit policy
charges with `take` (the same all-or-nothing step) and `give` (an adjustment) without naming keys:
the per-request path of in-process limits is then a few C-level list operations under the lock.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from operator import add, itemgetter, le, setitem
from typing import Callable, Iterable, NamedTuple, Protocol, Sequence


class Charge(NamedTuple):  # (a tuple: made on every call, ~3x cheaper than a frozen dataclass)
    key: str
    amount: int
    limit: int
    ttl_s: float  # the counter's expiry when this charge creates it (the end of its window)


@dataclass(frozen=True, slots=True)
class Refusal:
    index: int  # which charge did not fit
    used: int  # that counter's value (reserved and settled so far in its window)
    reset_in_s: float  # until that counter's window ends


class Counters(Protocol):
    async def reserve(self, charges: Sequence[Charge]) -> Refusal | None: ...
    async def adjust(self, changes: Sequence[tuple[str, int, float]]) -> None: ...
    async def value(self, key: str) -> int: ...
    async def close(self) -> None: ...


class Cells:
    """Counters lent for a window (`InProcessCounters.cells`): each a `[value, expires at]` list, the
    same object the dictionary holds until it expires; `until` is when the first of them expires."""

    __slots__ = ("cells", "until")

    def __init__(self, cells: list[list], until: float):
        self.cells, self.until = cells, until


STALE = Refusal(-1, 0, 0.0)  # `take`: the cells have expired; ask for the window's cells again
_VALUE = itemgetter(0)  # a cell's value
_ZEROS = (0,) * 64  # the value's index, for map(setitem, cells, _ZEROS, values) (a caller has a handful of limits)
_apply = deque(maxlen=0).extend  # runs a map for its effects


class InProcessCounters:
    """Counters in a dictionary under one lock; expired counters read as 0 and are swept once the
    dictionary holds more than `sweep_over` of them (their number is bounded by the live keys and teams
    times their limits' windows: at most two windows of each are alive)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, sweep_over: int = 10_000):
        self._data: dict[str, list] = {}  # key -> [value, expires at]
        self._lock = threading.Lock()
        self._clock = clock
        self._sweep_over = sweep_over

    def _live(self, key: str, now: float) -> list | None:
        entry = self._data.get(key)
        if entry is not None and now >= entry[1]:
            del self._data[key]
            return None
        return entry

    def _new(self, key: str, amount: int, ttl_s: float, now: float) -> None:
        """A counter that is absent or expired starts (again) at `amount`, expiring in `ttl_s`."""
        if len(self._data) >= self._sweep_over:
            for k in [k for k, e in self._data.items() if now >= e[1]]:
                del self._data[k]
        self._data[key] = [amount, now + ttl_s]

    async def reserve(self, charges: Sequence[Charge]) -> Refusal | None:
        data = self._data
        with self._lock:
            now = self._clock()
            for i, (key, amount, limit, ttl_s) in enumerate(charges):  # every charge must fit ...
                entry = data.get(key)
                if entry is not None and now < entry[1]:
                    if entry[0] + amount > limit:
                        return Refusal(i, entry[0], entry[1] - now)
                elif amount > limit:
                    return Refusal(i, 0, ttl_s)
            for key, amount, _, ttl_s in charges:  # ... before any is taken
                entry = data.get(key)
                if entry is not None and now < entry[1]:
                    entry[0] += amount
                else:
                    self._new(key, amount, ttl_s, now)
        return None

    async def adjust(self, changes: Sequence[tuple[str, int, float]]) -> None:
        data = self._data
        with self._lock:
            now = self._clock()
            for key, delta, ttl_s in changes:
                if delta:
                    entry = data.get(key)
                    if entry is not None and now < entry[1]:
                        entry[0] += delta
                    else:
                        self._new(key, delta, ttl_s, now)

    # -- lent counters (the limit policy's hot path) ------------------------------------------------
    def cells(self, keys: Sequence[str], ttl_s: float) -> Cells:
        """The counters under `keys` (made at 0, expiring in `ttl_s`, when absent or expired). A counter
        is never replaced before it expires, so until then charging the cell is charging the key."""
        assert len(keys) <= len(_ZEROS)
        with self._lock:
            now = self._clock()
            out = []
            for key in keys:
                entry = self._data.get(key)
                if entry is None or now >= entry[1]:
                    self._new(key, 0, ttl_s, now)
                    entry = self._data[key]
                out.append(entry)
            return Cells(out, min((e[1] for e in out), default=now))

    def take(self, cells: Cells, amounts: Sequence[int], limits: Sequence[int]) -> Refusal | None:
        """`reserve` on lent cells: all or nothing, `amounts[i]` onto `cells.cells[i]` only if each stays
        <= `limits[i]`; `STALE` (nothing taken) once any of them has expired. (The loops run in C: map, all.)"""
        with self._lock:
            now = self._clock()
            if now >= cells.until:
                return STALE
            cs = cells.cells
            after = list(map(add, map(_VALUE, cs), amounts))
            if all(map(le, after, limits)):
                _apply(map(setitem, cs, _ZEROS, after))
                return None
            i = next(i for i, (v, limit) in enumerate(zip(after, limits)) if v > limit)
            return Refusal(i, cs[i][0], cs[i][1] - now)

    def give(self, cells: Cells, deltas: Iterable[int]) -> None:
        """`adjust` on lent cells (one that has expired since went with its window: nothing to fix)."""
        with self._lock:
            cs = cells.cells
            _apply(map(setitem, cs, _ZEROS, map(add, map(_VALUE, cs), deltas)))

    async def value(self, key: str) -> int:
        with self._lock:
            entry = self._live(key, self._clock())
            return entry[0] if entry is not None else 0

    async def close(self) -> None:
        return None
