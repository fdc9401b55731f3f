"""The cost ledger's row (`CallRecord`) and the `LedgerStore` port that keeps rows.

    CostLedger (bounded queue, writer thread) ──write(batch)──► LedgerStore ──► SQLite (WAL) today,
                                                                              PostgreSQL later
    cost report, budget alerts ─────────query / spend────────►

The port is narrow on purpose: append a batch in one transaction, read the rows of a time range (the
cost report is a pure function of rows), one aggregate (dollars spent since a time, for budget
alerts), the schema version, close. A store writes rows *by column name*: its INSERT names the
columns of `CallRecord._fields`, so a table whose columns were added later or sit in another order
still receives every value in its own column. Each store applies its ordered migrations at open.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence


class CallRecord(NamedTuple):
    """One LLM call as the ledger keeps it.

    A tuple of plain values on purpose: the garbage collector stops tracking such tuples, so the
    thousands held by the recent-calls window and the write queue cost no GC time. Stores name the
    columns from `_fields`, so a new field (with a default, at the end) needs a migration that adds
    its column, and nothing else."""

    ts: float  # wall-clock time the call ended (unix seconds)
    request_id: str
    deployment: str
    local: bool
    task: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    ttft_s: float | None
    cost_usd: float
    reference_usd: float  # what the reference cloud model would have charged for the same tokens
    savings_usd: float  # reference_usd - cost_usd
    error: str = ""  # error class name; "" when the call succeeded
    cache: str = ""  # "" for an LLM call; the cache's name ("response", "ask") for an answer a cache gave
    #                  (then cost_usd is 0, and the fields below say what the original call cost)
    saved_usd: float = 0.0  # a cache hit: what the call it replaced cost
    model_version: str = ""  # the model registry's NAME@VERSION that served, else the deployment's fingerprint
    caller: str = ""  # the API key id (or SSO subject) the call was made for; "" without auth
    team: str = ""  # that caller's team

    @property
    def ok(self) -> bool:
        return not self.error


COLUMNS = CallRecord._fields


class LedgerStoreError(Exception):
    """A ledger store could not be opened, migrated or written. A failed `write` wrote nothing."""


class LedgerStore(Protocol):
    @property
    def schema_version(self) -> int:
        """The version of the schema the store holds (after the migrations applied at open)."""
        ...

    def write(self, rows: Sequence[CallRecord]) -> None:
        """Append `rows` in one transaction, by column name. Raises `LedgerStoreError` (nothing written)."""
        ...

    def query(self, since: float | None = None, until: float | None = None) -> list[CallRecord]:
        """Rows with since <= ts < until (unix seconds; None: unbounded), oldest first."""
        ...

    def spend(self, since: float) -> float:
        """Dollars spent (sum of cost_usd) by the calls with ts >= since."""
        ...

    def close(self) -> None: ...


def time_range(since: float | None, until: float | None) -> tuple[str, list[float]]:
    """(' WHERE ts >= ? AND ts < ?', args) for a half-open time range; plain SQL every backend reads."""
    conds, args = [], []
    if since is not None:
        conds.append("ts >= ?")
        args.append(since)
    if until is not None:
        conds.append("ts < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(conds) if conds else ""), args


def record_from_row(values: Sequence) -> CallRecord:
    """A `CallRecord` from a row selected as `SELECT <COLUMNS> ...` (`local` back to a bool)."""
    d = dict(zip(COLUMNS, values))
    d["local"] = bool(d["local"])
    return CallRecord(**d)
