"""The bundled demo site: "Cedar Valley Guide", a fictional regional site written for this project.

286 schema.org items as JSON lines: recipes (many cuisines, diets and heat levels), outdoor and kitchen
gear (brands, prices, ratings), local events in 2026–2027, podcast episodes and articles.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..core.errors import SourceError

DEMO_SITE = "cedarvalley"
DEMO_FILE = "cedarvalley.jsonl"


def demo_source() -> Path:
    """Path of the demo JSON lines file inside the installed package."""
    resource = files("nlweb_local") / "demo" / DEMO_FILE
    path = Path(str(resource))
    if not path.is_file():
        raise SourceError(f"the demo data {DEMO_FILE} is missing from the nlweb_local package; reinstall nlweb-local")
    return path
