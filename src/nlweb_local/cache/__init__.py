"""Caches of answers, behind the `core.cache.Cache` port: `redis.RedisCache` (shared by replicas)."""
