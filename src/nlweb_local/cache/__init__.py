"""The cache layer: `ResponseCache` (exact response cache, a wrapper around the router chain), its keys
(`keys`) and entries (`entries`). The /ask answer cache lives beside the pipeline (`search/answer_cache.py`)."""
