"""The cache layer, behind the `core.cache.Cache` port: `ResponseCache` (the exact response cache, a wrapper
around the router chain), its keys (`keys`) and entries (`entries`); `redis.RedisCache` (entries shared by
replicas); `semantic.SemanticIndex` (near-duplicate questions by embedding similarity, with lexical
vetoes). The /ask answer cache lives beside the pipeline (`search/answer_cache.py`).
"""
