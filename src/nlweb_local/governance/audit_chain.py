"""The audit log's rows and its hash chain: pure functions, no I/O.

Each row has two parts:

    public    seq, time, kind, request id, method, endpoint, status, latency, team, role, model alias,
              deployment(s), route reason, privacy class, tokens, cost, count, detail
    personal  key id, subject, identity name, content (request body and answer, only with
              audit.log_content), and a random per-row salt

and three hashes (SHA-256, hex):

    personal_hash = H([key id, subject, name, content, salt])
    row_hash      = H(prev_hash, [public part], personal_hash)     prev_hash: the previous row's row_hash
                                                                   (64 zeros before the first row)

H is SHA-256 over the parts joined by newlines, a [list] being its compact JSON (orjson) with integers
as numbers, floats as Python's repr strings and everything else as strings. This canonical form is part
of every log ever written: changing it must keep old rows verifying (a format column), or every
existing log would read as edited and the service would refuse to start on it.

The chain runs over `personal_hash`, never over the personal fields themselves. So a GDPR erasure
(`nlweb-local audit erase --subject S`) can blank a row's personal fields and its salt, set `erased`,
and leave every `row_hash` valid; what it cannot do is change anything public or forge a person. The
salt makes the kept `personal_hash` useless for guessing who an erased row was about (no dictionary
attack on subjects), and it is erased with the rest. Every erasure appends its own row (kind
`erasure`, `count` = rows erased), and `verify` checks that the rows marked erased add up to the
erasures recorded, so blanking rows by hand shows as well.

What `verify` catches, naming the first broken row: an edited row (its hash no longer matches), a
deleted row (its number is missing), rows inserted or reordered (a row whose prev_hash is not the
hash of the row before it), personal fields changed while not erased. Truncating the newest rows, or
rewriting the whole chain from some row on, needs an anchor kept elsewhere: `verify` prints the head
(row number and hash), and `verify --expect SEQ:HASH` checks that a head noted earlier is still there.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import orjson

GENESIS = "0" * 64


def _sha256_constructor():
    """SHA-256 without OpenSSL's per-call set-up: CPython's own implementation (`_sha2` from 3.12, `_sha256`
    before) gives the same digest, ~1.3 us sooner for a row's ~100-300 bytes (the chain hashes two such
    inputs a row, on the writer thread); hashlib's (OpenSSL) where neither is built in."""
    for module in ("_sha2", "_sha256"):
        try:
            return getattr(__import__(module), "sha256")
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256


_sha256 = _sha256_constructor()


class AuditRow(NamedTuple):
    seq: int  # 1, 2, 3, ... in chain order (assigned when the row is appended)
    ts: float  # unix seconds the request ended
    kind: str  # "request"; "gap" (rows lost: count); "erasure" (rows erased: count)
    request_id: str
    method: str
    endpoint: str  # the path, e.g. /v1/chat/completions
    status: int
    latency_s: float
    team: str
    role: str  # the caller's role; "anonymous" without an identity
    model: str  # the model (alias) the request asked for
    deployment: str  # the deployment(s) that served its LLM calls, in order of first use
    route_reason: str  # why the router chose the first of them
    privacy: str  # the strictest privacy class of its LLM calls (or of its header)
    tokens_in: int
    tokens_out: int
    cost_usd: float
    count: int  # gap: rows lost; erasure: rows erased; else 0
    detail: str
    # -- personal: erasable ---------------------------------------------------------------------
    key_id: str
    subject: str
    name: str
    content: str  # JSON {"request": ..., "answer": ...}, or "" (audit.log_content off)
    salt: str
    # -- the chain ------------------------------------------------------------------------------
    personal_hash: str = ""
    erased: int = 0
    prev_hash: str = ""
    row_hash: str = ""


COLUMNS = AuditRow._fields
PUBLIC = COLUMNS[:COLUMNS.index("key_id")]
PERSONAL = ("key_id", "subject", "name", "content", "salt")
_INT = {"seq", "status", "tokens_in", "tokens_out", "count"}
_FLOAT = {"ts", "latency_s", "cost_usd"}


_EMPTY = AuditRow(*(0 if c in _INT else 0.0 if c in _FLOAT else "" for c in COLUMNS))._replace(erased=0)


def entry(**fields) -> AuditRow:
    """A row not yet in the chain (seq and hashes are set by `link`); fields left out are empty."""
    return _EMPTY._replace(**fields)


def _h(*parts: bytes) -> str:
    return _sha256(b"\n".join(parts)).hexdigest()


def _canon(values: list) -> bytes:
    """Compact JSON of a list of ints and strings (floats are given as their repr, which Python keeps
    stable, so no JSON library's float formatting is part of the format)."""
    return orjson.dumps(values)


_N_PUBLIC = len(PUBLIC)
_INT_AT = tuple(i for i, c in enumerate(PUBLIC) if c in _INT)
_FLOAT_AT = tuple(i for i, c in enumerate(PUBLIC) if c in _FLOAT)
_I = {c: i for i, c in enumerate(COLUMNS)}


def _public(row: Iterable) -> list:
    values = list(row)[:_N_PUBLIC]
    for i in _INT_AT:
        values[i] = int(values[i])
    for i in _FLOAT_AT:
        values[i] = repr(float(values[i]))
    return values


def personal_hash(row: AuditRow) -> str:
    return _h(_canon([str(row.key_id), str(row.subject), str(row.name), str(row.content), str(row.salt)]))


def row_hash(row: AuditRow) -> str:
    return _h(row.prev_hash.encode(), _canon(_public(row)), row.personal_hash.encode())


_SEQ, _SALT, _PERSONAL, _ERASED, _PREV, _ROW = (_I[c] for c in ("seq", "salt", "personal_hash", "erased", "prev_hash",
                                                                  "row_hash"))


def link(rows: Iterable[AuditRow], head: tuple[int, str] | None) -> list[AuditRow]:
    """`rows` appended after `head` ((seq, row_hash) of the last row; None: an empty log): numbered, salted
    and hashed."""
    return [AuditRow._make(v) for v in linked_values(rows, head)]


# (the public part's layout, spelled out in linked_values: a change of the columns must change it too)
assert PUBLIC == ("seq", "ts", "kind", "request_id", "method", "endpoint", "status", "latency_s", "team", "role",
                  "model", "deployment", "route_reason", "privacy", "tokens_in", "tokens_out", "cost_usd", "count",
                  "detail") and COLUMNS[_N_PUBLIC:] == (*PERSONAL, "personal_hash", "erased", "prev_hash", "row_hash")


def linked_values(rows: Iterable[Sequence], head: tuple[int, str] | None) -> list[tuple]:
    """What `link` makes, as plain tuples in column order (what the store inserts: no NamedTuple per row).
    The same hashes as `personal_hash`/`row_hash`, with the public part's conversions written out
    (~2x faster than the general `_public` on the writer thread)."""
    seq, prev = head if head is not None else (0, GENESIS)
    rows = list(rows)
    salts = os.urandom(16 * len(rows)).hex()  # one system call per batch: 32 hex digits a row
    sha, dumps = _sha256, orjson.dumps
    out = []
    for i, r in enumerate(rows):
        seq += 1
        salt = salts[32 * i: 32 * i + 32]
        personal = sha(dumps([str(r[19]), str(r[20]), str(r[21]), str(r[22]), salt])).hexdigest()
        public = dumps([seq, repr(float(r[1])), r[2], r[3], r[4], r[5], int(r[6]), repr(float(r[7])), r[8], r[9],
                        r[10], r[11], r[12], r[13], int(r[14]), int(r[15]), repr(float(r[16])), int(r[17]), r[18]])
        row = sha(b"%s\n%s\n%s" % (prev.encode(), public, personal.encode())).hexdigest()
        out.append((seq, *r[1:19], r[19], r[20], r[21], r[22], salt, personal, 0, prev, row))
        prev = row
    return out


def erased(row: AuditRow) -> AuditRow:
    """`row` with its personal part removed (its personal_hash, and so the chain, kept)."""
    return row._replace(key_id="", subject="", name="", content="", salt="", erased=1)


@dataclass(frozen=True)
class Break:
    seq: int
    request_id: str
    why: str

    def __str__(self) -> str:
        rid = f" (request {self.request_id})" if self.request_id else ""
        return f"row {self.seq}{rid}: {self.why}"


@dataclass
class Verification:
    rows: int = 0
    head: tuple[int, str] | None = None  # (seq, row_hash) of the last row
    broken: Break | None = None
    problem: str = ""  # a fault of the whole log (erasure tally, expected head), when no row broke

    @property
    def ok(self) -> bool:
        return self.broken is None and not self.problem


class ChainChecker:
    """Feed it the rows in seq order (`add`), then `finish()`: the first break, or the whole log's faults.
    `expect` (seq, row_hash): a head noted earlier, which must still be in the chain."""

    def __init__(self, expect: tuple[int, str] | None = None) -> None:
        self.result = Verification()
        self._expect = expect
        self._prev_seq, self._prev_hash = 0, GENESIS
        self._erased = self._erasures_recorded = 0

    def add(self, row: AuditRow) -> bool:
        """False once the chain is broken (stop feeding it)."""
        if self.result.broken is not None:
            return False
        why = check_row(row, self._prev_seq, self._prev_hash)
        if why:
            missing = row.seq > self._prev_seq + 1
            self.result.broken = Break(self._prev_seq + 1 if missing else row.seq, "" if missing else row.request_id, why)
            return False
        if self._expect is not None and row.seq == self._expect[0] and row.row_hash != self._expect[1]:
            self.result.problem = (f"row {row.seq} has hash {row.row_hash[:16]}..., not the expected "
                                   f"{self._expect[1][:16]}...: the chain was rewritten from there or before")
        self._prev_seq, self._prev_hash = row.seq, row.row_hash
        self._erased += row.erased
        if row.kind == "erasure":
            self._erasures_recorded += row.count
        self.result.rows += 1
        self.result.head = (row.seq, row.row_hash)
        return True

    def finish(self) -> Verification:
        v = self.result
        if v.broken is not None:
            return v
        if not v.problem and self._erased != self._erasures_recorded:
            v.problem = (f"{self._erased} rows are marked erased but the erasure rows account for "
                         f"{self._erasures_recorded}: rows were blanked outside `nlweb-local audit erase`")
        last = v.head[0] if v.head else 0
        if not v.problem and self._expect is not None and last < self._expect[0]:
            v.problem = f"the log ends at row {last}, before the expected head row {self._expect[0]}: its newest rows were removed"
        return v


def check_row(row: AuditRow, prev_seq: int, prev_hash: str) -> str:
    """Why `row` does not follow the row (prev_seq, prev_hash) in a sound chain; "" when it does."""
    if row.seq > prev_seq + 1:
        missing = f"row {prev_seq + 1} is" if row.seq == prev_seq + 2 else f"rows {prev_seq + 1}-{row.seq - 1} are"
        return f"missing: the log jumps from row {prev_seq} to row {row.seq} ({missing} deleted)"
    if row.seq <= prev_seq:
        return f"out of order: numbered {row.seq} after row {prev_seq} (rows were renumbered or inserted)"
    if row.prev_hash != prev_hash:
        return "does not follow the row before it (its prev_hash differs: rows were reordered, inserted or replaced)"
    if row.erased:
        if any(getattr(row, c) for c in PERSONAL):
            return "marked erased but still holds personal fields (edited)"
    elif personal_hash(row) != row.personal_hash:
        return "its identity or content does not match its personal_hash (edited)"
    if row_hash(row) != row.row_hash:
        return "its fields do not match its hash (edited)"
    return ""
