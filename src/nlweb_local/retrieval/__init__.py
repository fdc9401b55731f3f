"""Vector stores and the embedder adapter (over an embedding provider) behind two small protocols."""
