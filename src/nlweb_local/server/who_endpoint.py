"""`GET /who?query=...`: which sites can answer a question. JSON by default; with `streaming=true` an SSE
stream, as NLWeb's who.html reads it through an EventSource:

    data: {"message_type": "result", "content": [SITE, ...], "query": ...}
    data: {"message_type": "complete", "query": ...}

SITE is an item card for the site (`@type`, `name`, `url`, `site`, `score`, `description`, `item_count`).
The stream always ends with `complete` (after an `error` message if the lookup failed): an EventSource
whose stream just ends reconnects and asks again.
"""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..core.errors import BadRequestError
from ..governance.scopes import visible
from ..search.who import SiteDirectory, SiteMatch
from .ask import sse_frame
from .errors import nlweb_error

log = logging.getLogger(__name__)
_NO = {"false", "0", "no", "off", ""}


def site_card(m: SiteMatch) -> dict[str, Any]:
    return {"@type": "Website", "name": m.site, "url": m.site, "site": m.site, "score": m.score,
            "description": m.description, "item_count": m.item_count}


class WhoEndpoint:
    def __init__(self, directory: SiteDirectory):
        self._directory = directory

    async def handle(self, request: Request) -> Response:
        query = request.query_params.get("query", "").strip()
        if not query:
            return nlweb_error(BadRequestError("missing required parameter 'query', e.g. /who?query=vegetarian+recipes"))
        if request.query_params.get("streaming", "false").strip().lower() not in _NO:
            return StreamingResponse(self._stream(query), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        matches = visible(await self._directory.who(query), lambda m: m.site)  # a key's --sites scope
        return JSONResponse({"message_type": "who", "query": query, "sites": [
            {"site": m.site, "score": m.score, "description": m.description, "item_count": m.item_count} for m in matches]})

    async def _stream(self, query: str) -> AsyncIterator[bytes]:
        try:
            matches = visible(await self._directory.who(query), lambda m: m.site)  # a key's --sites scope
            yield sse_frame({"message_type": "result", "query": query, "content": [site_card(m) for m in matches]})
        except Exception:  # noqa: BLE001 (the stream has begun: say so in it, then end it properly)
            log.exception("who failed")
            yield sse_frame({"message_type": "error", "query": query, "error": "could not rank the sites; see the server log"})
        yield sse_frame({"message_type": "complete", "query": query})
