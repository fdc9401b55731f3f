"""The cache layer, behind the `core.cache.Cache` port: `redis.RedisCache` (entries shared by replicas),
`semantic.SemanticIndex` (near-duplicate questions by embedding similarity, with lexical vetoes).
"""
