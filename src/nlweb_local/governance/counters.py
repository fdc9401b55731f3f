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
charges with `take` (the same all-or-nothing step) and `give` (an adjustment) without naming keys. Each
charge adds one of two amounts to each counter — tokens or nano-dollars for a budget, one request for a
requests/minute limit — and which one is fixed per limit, so a `Tally` compiles that pattern once into
straight-line code (no per-call list of amounts, no loop): the per-request path of in-process limits is
then a handful of list reads and writes under the lock.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence


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
_MAX_CELLS = 64  # (a caller has a handful of limits: two scopes x four kinds)


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
        assert len(keys) <= _MAX_CELLS
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

    def take(self, cells: Cells, tally: "Tally", first: int, second: int, limits: Sequence[int]) -> Refusal | None:
        """`reserve` on lent cells: all or nothing, each cell gets its amount (`tally`: `first` or `second`)
        only if each stays <= its limit (`limits[i]`); `STALE` (nothing taken) once any cell has expired."""
        with self._lock:
            now = self._clock()
            if now >= cells.until:
                return STALE
            i = tally.fit(cells.cells, first, second, limits)
            if i < 0:
                return None
            cell = cells.cells[i]
            return Refusal(i, cell[0], cell[1] - now)

    def give(self, cells: Cells, tally: "Tally", first: int, second: int) -> None:
        """`adjust` on lent cells: each gets its delta (`tally`: `first` or `second`) unconditionally (one that
        has expired since went with its window: nothing to fix)."""
        with self._lock:
            tally.add(cells.cells, first, second)

    async def value(self, key: str) -> int:
        with self._lock:
            entry = self._live(key, self._clock())
            return entry[0] if entry is not None else 0

    async def close(self) -> None:
        return None


class Tally:
    """Which of a charge's two amounts each of a window's counters takes (`kinds[i]`: 0 the first, 1 the
    second), compiled once into two straight-line functions over the cells (`[value, expires at]` lists):

        fit(cells, first, second, limits) -> -1     every cell got its amount (each stayed <= its limit)
                                          -> i      cell i would have gone over: no cell changed
        add(cells, first, second)                   every cell gets its amount, unconditionally

    For kinds (0, 1) the first is, written out:

        def fit(cells, a, b, limits):
            c0, c1 = cells
            v0 = c0[0] + a
            if v0 > limits[0]: return 0
            v1 = c1[0] + b
            if v1 > limits[1]: return 1
            c0[0] = v0; c1[0] = v1
            return -1

    (The code is made from the cells' indices alone, and kept per pattern: a limit policy has a few.) With
    four budget counters this is ~2x cheaper than the same step as a chain of `map`s over a list of amounts
    built per call, and it runs on the request path three times a governed call (requests/minute, reserve,
    settle)."""

    __slots__ = ("kinds", "fit", "add")

    def __init__(self, kinds: Sequence[int]):
        self.kinds = tuple(1 if k else 0 for k in kinds)
        if len(self.kinds) > _MAX_CELLS:
            raise ValueError(f"a charge over {len(self.kinds)} counters (at most {_MAX_CELLS})")
        compiled = _COMPILED.get(self.kinds)
        if compiled is None:
            compiled = _COMPILED[self.kinds] = _compile(self.kinds)
        self.fit, self.add = compiled


_COMPILED: dict[tuple[int, ...], tuple[Callable, Callable]] = {}  # (bounded by the patterns limits can make:
#   a key's and a team's four kinds of limit, each counting tokens/requests or dollars)


def _compile(kinds: tuple[int, ...]) -> tuple[Callable, Callable]:
    n = len(kinds)
    names = "".join(f"c{i}, " for i in range(n))
    amount = ("a", "b")
    fit = ["def fit(cells, a, b, limits):"]
    add = ["def add(cells, a, b):"]
    if n:
        fit.append(f"    {names}= cells")
        add.append(f"    {names}= cells")
    for i, k in enumerate(kinds):
        fit.append(f"    v{i} = c{i}[0] + {amount[k]}")
        fit.append(f"    if v{i} > limits[{i}]: return {i}")
        add.append(f"    c{i}[0] += {amount[k]}")
    fit.extend(f"    c{i}[0] = v{i}" for i in range(n))
    fit.append("    return -1")
    if not n:
        add.append("    return None")
    scope: dict = {}
    exec("\n".join(fit) + "\n\n" + "\n".join(add) + "\n", scope)  # noqa: S102  (indices only: see Tally)
    return scope["fit"], scope["add"]
