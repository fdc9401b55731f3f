"""The near cache: in-process copies of a shared cache's entries, each kept at most its near TTL."""
import pytest

from nlweb_local.cache.near import NearCache
from nlweb_local.core.cache import BoundedCache


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class CountingFar(BoundedCache):
    """A shared cache stand-in that counts its reads (each would be a Redis round trip)."""

    def __init__(self, clock):
        super().__init__(100, clock=clock)
        self.reads = 0

    async def get(self, key):
        self.reads += 1
        return await super().get(key)


@pytest.fixture
def parts():
    clock = Clock()
    far = CountingFar(clock)
    return clock, far, NearCache(far, max_entries=10, ttl_s=5.0, clock=clock)


async def test_a_hot_entry_is_read_from_the_shared_cache_once_within_the_near_ttl(parts):
    clock, far, near = parts
    await far.set("k", {"v": 1})  # stored by another replica
    assert await near.get("k") == {"v": 1} and far.reads == 1
    clock.t = 4.9
    assert await near.get("k") == {"v": 1} and far.reads == 1  # the near copy
    clock.t = 5.1
    assert await near.get("k") == {"v": 1} and far.reads == 2  # expired here: read again


async def test_a_near_copy_never_outlives_the_expiry_it_was_stored_with(parts):
    clock, far, near = parts
    await near.set("k", {"v": 1}, ttl_s=1.0)
    clock.t = 1.5
    assert await near.get("k") is None  # both expired (the shared one by its own TTL)


async def test_a_delete_elsewhere_is_seen_within_the_near_ttl_and_here_at_once(parts):
    clock, far, near = parts
    await near.set("k", {"v": 1})
    await far.delete("k")  # another replica deleted it
    assert await near.get("k") == {"v": 1}  # the stated staleness: at most near_ttl_s
    clock.t = 6.0
    assert await near.get("k") is None
    await near.set("j", {"v": 2})
    await near.delete("j")
    assert await near.get("j") is None and await far.get("j") is None
