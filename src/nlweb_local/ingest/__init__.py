"""Loaders (JSON-LD, JSON lines, TSV, CSV, RSS/Atom, HTML, sitemaps) → items → embed → upsert."""
from .pipeline import IngestReport, Ingestor

__all__ = ["IngestReport", "Ingestor"]
