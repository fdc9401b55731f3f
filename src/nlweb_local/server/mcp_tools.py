"""The MCP tools (`ask`, `list_sites`, `who`) over the search pipeline, as text for agents.

Admission is the MCP server's: it calls `admit(calls)` once for all the ask calls of a request body
before any runs, so `ask` itself does not ask again (a batch admitted as a whole is not refused half-way).
"""
from __future__ import annotations

import asyncio

from ..core.errors import BadRequestError
from ..governance.scopes import sites_in_scope, visible
from ..search.events import AskRequest, Failure, Generated, NoResults, Results, Summary
from ..search.pipeline import AskPipeline
from ..search.ports import VectorStore
from ..search.who import SiteDirectory


class SearchTools:
    def __init__(self, pipeline: AskPipeline, store: VectorStore, directory: SiteDirectory):
        self._pipeline = pipeline
        self._store = store
        self._directory = directory

    def admit(self, calls: int) -> None:
        """`OverloadedError` unless `calls` searches may start now (the pipeline's admission, per call)."""
        for _ in range(calls):
            self._pipeline.admit()

    async def ask(self, query: str, sites: list[str] | None, generate_mode: str) -> str:
        sites = sites_in_scope(list(sites or []))  # a key made with --sites searches only those
        mode = generate_mode if generate_mode in ("list", "summarize", "generate") else "list"
        lines: list[str] = []
        results = []
        async for ev in self._pipeline.run(AskRequest(query=query, sites=list(sites or []), mode=mode)):  # type: ignore[arg-type]
            if isinstance(ev, Results):
                results.extend(ev.items)
            elif isinstance(ev, Summary):
                lines.append(f"Summary: {ev.text}")
            elif isinstance(ev, Generated):
                lines.append(f"Answer: {ev.answer}")
            elif isinstance(ev, NoResults):
                lines.append(ev.message)
            elif isinstance(ev, Failure):
                raise BadRequestError(ev.message)
        results.sort(key=lambda r: -r.score)
        listing = [f"{i + 1}. {r.item.name} (score {r.score}) — {r.item.url}\n   {r.description}" for i, r in enumerate(results)]
        return "\n".join(listing + lines) if (listing or lines) else "No results."

    async def list_sites(self) -> list[str]:
        return visible(s.name for s in await asyncio.to_thread(self._store.sites))

    async def who(self, query: str) -> str:
        matches = visible(await self._directory.who(query), lambda m: m.site)
        if not matches:
            return "No sites are loaded."
        return "\n".join(f"{m.site} (score {m.score}, {m.item_count} items): {m.description}" for m in matches)
