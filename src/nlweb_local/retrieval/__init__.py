"""Embedders and vector stores behind two small protocols."""
