"""The NLWeb /ask pipeline, written against three narrow ports (StructuredLLM, Embedder, VectorStore)."""
