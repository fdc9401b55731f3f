"""`RedisCache`: the `core.cache.Cache` port over a Redis server, so several gateway replicas share entries.

    cache = RedisCache("redis://127.0.0.1:6379/0", "ranking", on_lookup=tally, on_error=tally.error)
    await cache.set(key, {"answer": ...}, ttl_s=600)   # SET nlweb:cache:ranking:<hash> <value> PX 600000
    await cache.get(key)                               # the value, or None (a miss)

Values are JSON-shaped (dicts with string keys, lists, strings, numbers, booleans), serialised with
orjson; above `compress_over` bytes they are zlib-compressed. The first byte of a stored value says
which (`j` plain, `z` compressed), so the format can change without misreading old entries. Keys are
`nlweb:cache:<name>:` + a 128-bit BLAKE2b of the caller's key: a fixed size, no user text or control
characters in the server's key space. Expiry is Redis's (`PX`); an entry set without a TTL gets
`default_ttl_s`, so nothing lives forever — the bound on entries is the server's `maxmemory` with an LRU
eviction policy (Redis cannot bound one prefix's entry count cheaply).

A Redis outage degrades to no cache, never to errors: `get` answers None, `set`/`delete` are dropped.
The first failure opens a circuit: for `retry_s` seconds no call tries Redis (so an outage costs a
request nothing, not a timeout each), then the next call tries again. One warning is logged when Redis
goes down and one when it comes back; each failed try is counted (`on_error("unavailable")`). An entry
that does not decode is deleted and counted (`on_error("corrupt")`), never returned; a value that
cannot be serialised is dropped and counted (`on_error("encode")`), and so is one larger than
`max_value_bytes` once compressed (`on_error("too_large")`: one value must not crowd out thousands of
others, nor stall the connection it travels on); a command the server refuses
(e.g. out of memory under a `noeviction` policy) is dropped and counted (`on_error("rejected")`)
without opening the circuit.

Calls are bounded: a connection pool of `max_connections` (a call waits at most `timeout_s` for one),
`timeout_s` for connecting and for each reply, and one immediate retry on a broken connection (a
pooled connection that died with a restarted server), none on a timeout. The asyncio client belongs to
an event loop, so the cache keeps one client per loop that uses it (weakly: a finished loop's goes).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
import zlib
from typing import Any, Callable

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

PLAIN, ZLIB = b"j", b"z"


class CorruptEntry(ValueError):
    """A stored value this cache cannot decode."""


def encode(value: Any, compress_over: int) -> bytes:
    """`value` as stored: JSON (numpy numbers and arrays as JSON numbers and lists; a tuple comes back as a
    list), zlib-compressed above `compress_over` bytes. TypeError for what JSON cannot hold."""
    raw = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    if len(raw) > compress_over:
        return ZLIB + zlib.compress(raw, 6)
    return PLAIN + raw


def decode(data: bytes) -> Any:
    marker, body = data[:1], data[1:]
    try:
        if marker == PLAIN:
            return orjson.loads(body)
        if marker == ZLIB:
            return orjson.loads(zlib.decompress(body))
    except (orjson.JSONDecodeError, zlib.error) as e:
        raise CorruptEntry(f"undecodable {marker!r} entry: {e}") from None
    raise CorruptEntry(f"unknown format marker {marker!r}")


class RedisCache:
    """A `Cache` in Redis (see the module docstring). `on_lookup(hit)` is called once per `get`, as by
    `BoundedCache`; `on_error(kind)` once per failure (kind: unavailable, rejected, corrupt, encode, too_large)."""

    def __init__(self, url: str, name: str, *, timeout_s: float = 0.25, retry_s: float = 5.0,
                 max_connections: int = 32, default_ttl_s: float = 86_400.0, compress_over: int = 1024,
                 max_value_bytes: int = 4 << 20, on_lookup: Callable[[bool], None] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if timeout_s <= 0 or retry_s < 0 or max_connections < 1 or default_ttl_s <= 0 or max_value_bytes < 1:
            raise ValueError("timeout_s, default_ttl_s and max_value_bytes must be positive, retry_s not negative, "
                             "max_connections >= 1")
        self.url, self.name = url, name
        self.prefix = f"nlweb:cache:{name}:"
        self._timeout_s, self._retry_s = timeout_s, retry_s
        self._max_connections = max_connections
        self._default_ttl_ms = max(1, int(default_ttl_s * 1000))
        self._compress_over = compress_over
        self._max_value_bytes = max_value_bytes
        self._on_lookup, self._on_error = on_lookup, on_error
        self._clock = clock
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._down_until: float | None = None  # the circuit: open (no tries) until then; None = Redis is up
        self._encode_warned = self._rejected_warned = self._size_warned = False

    @property
    def available(self) -> bool:
        """False while the circuit is open (Redis failed within the last `retry_s` seconds)."""
        return self._down_until is None

    def redis_key(self, key: str) -> str:
        """Where `key` lives in Redis: this cache's prefix and a 128-bit hash of the key (any text, even one
        with lone surrogates from a JSON body, hashes)."""
        return self.prefix + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()

    # -- the Cache port -----------------------------------------------------------------------------
    async def get(self, key: str) -> Any:
        rkey = self.redis_key(key)
        data = await self._call(lambda r: r.get(rkey))
        value = None
        if data is not None:
            try:
                value = decode(data)
            except CorruptEntry as e:
                self._error("corrupt")
                log.warning("cache %s: deleted an entry that does not decode (%s)", self.name, e)
                await self._call(lambda r: r.delete(rkey))
        if self._on_lookup is not None:
            self._on_lookup(value is not None)
        return value

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        if value is None:
            raise ValueError("a cache cannot hold None (get returns None for a miss)")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be positive (or None: the cache's default expiry)")
        try:
            data = encode(value, self._compress_over)
        except TypeError as e:  # not JSON-shaped: a caller's bug, but a cache never fails its caller
            self._error("encode")
            if not self._encode_warned:
                self._encode_warned = True
                log.warning("cache %s: a value of type %s cannot be stored (%s); such values are not cached",
                            self.name, type(value).__name__, e)
            return
        if len(data) > self._max_value_bytes:
            self._error("too_large")
            log.log(logging.DEBUG if self._size_warned else logging.WARNING,
                    "cache %s: a value of %d bytes (compressed) is over max_value_bytes=%d; not stored (counted; "
                    "logged once)", self.name, len(data), self._max_value_bytes)
            self._size_warned = True
            return
        px = max(1, int(ttl_s * 1000)) if ttl_s is not None else self._default_ttl_ms
        rkey = self.redis_key(key)
        await self._call(lambda r: r.set(rkey, data, px=px))

    async def delete(self, key: str) -> None:
        rkey = self.redis_key(key)
        await self._call(lambda r: r.delete(rkey))

    async def clear(self) -> int:
        """Delete every entry of this cache (all replicas see it); the number deleted (0 when Redis is down)."""
        async def run(r: Any) -> int:
            n = 0
            async for batch in _batches(r.scan_iter(match=self.prefix + "*", count=500), 500):
                n += await r.unlink(*batch)
            return n

        return await self._call(run, timeout_s=max(self._timeout_s, 30.0)) or 0

    async def close(self) -> None:
        """Close this event loop's client (others are dropped and closed with their loops)."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        self._clients.clear()
        if client is not None:
            await client.aclose()

    # -- Redis, behind the circuit ------------------------------------------------------------------
    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=self._max_connections, timeout=self._timeout_s,
                socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
            client = self._clients[loop] = Redis(connection_pool=pool)
        return client

    async def _call(self, op: Callable[[Any], Any], *, timeout_s: float | None = None) -> Any:
        """`op(client)`'s result, or None when Redis is down or fails (never an exception)."""
        if self._down_until is not None and self._clock() < self._down_until:
            return None
        try:
            async with asyncio.timeout(timeout_s or 4 * self._timeout_s):  # a bound over connect, pool wait and reply
                result = await op(self._client())
        except ResponseError as e:  # the server is up but refused this command (e.g. OOM under maxmemory)
            self._error("rejected")
            log.log(logging.DEBUG if self._rejected_warned else logging.WARNING,
                    "cache %s: Redis refused a command (counted; logged once): %s", self.name, e)
            self._rejected_warned = True
            return None
        except Exception as e:  # noqa: BLE001 - RedisError, OSError, a timeout, anything: no cache, never an error
            self._fail(e)
            return None
        if self._down_until is not None:
            self._down_until = None
            log.warning("cache %s: Redis at %s answers again; caching resumed", self.name, _safe(self.url))
        return result

    def _fail(self, e: BaseException) -> None:
        self._error("unavailable")
        if self._down_until is None:
            log.warning("cache %s: Redis at %s failed (%s: %s); caching is off, retried every %.0fs",
                        self.name, _safe(self.url), type(e).__name__, e, self._retry_s)
        self._down_until = self._clock() + self._retry_s

    def _error(self, kind: str) -> None:
        if self._on_error is not None:
            self._on_error(kind)


async def _batches(it: Any, size: int) -> Any:
    batch: list[Any] = []
    async for x in it:
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _safe(url: str) -> str:
    """The URL without its password (for logs)."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, _creds = head.partition("://")
    return f"{scheme}://***@{tail}"
