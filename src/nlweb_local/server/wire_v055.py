"""NLWeb's v0.55 stream: named SSE events, as NLWeb's newest chat page reads them.

That page (`chat-interface-unified.js`, late 2025) POSTs a v0.5-shaped body with `meta.version: "0.55"` and
`prefer.streaming: true` to /ask, reads the response body as SSE and dispatches on the event name:

    event: start     -> {"_meta": {"version": "0.55", "response_type": "answer", "mode", "site"}, "streaming": true}
    event: result    -> {"index": n, "item": {...}}, one card per event
    event: complete  -> {"_meta": {"version": "0.55"[, "error": true][, "degraded": true]}}
    event: error     -> {"message": "..."}
    (no name)        -> a chat message passed through as is: `decontextualized_query`, `summary` (text in
                        `content`), `nlws` (generate mode: the answer and its items), `no_results` ...

An item is the same object the chat transport sends (`url`, `name`, `site`, `score`, `description`,
`schema_object`), which the page renders as a card. The event names and payloads follow NLWeb's own server
(its v0.55 commit, March 2026: the `start`/`result`/`complete` senders beside the older message senders). In generate mode the items come once, inside `nlws`,
so no card is shown twice. Streamed or not, `complete` (or the body) says `degraded` when the LLM was
unavailable.
"""
from __future__ import annotations

import json
from typing import Any

from ..search.events import (Begin, Decontextualized, End, Event, Failure, Generated, NoResults, Notice, Results,
                             Summary)
from .wire import V3Renderer, item_json

VERSION = "0.55"


def named(event: str | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"event": event, "data": data}


class V055Renderer(V3Renderer):
    """Each message is `{"event": name or None, "data": payload}`; `frame` writes it as one SSE event."""

    def __init__(self, req: Any):
        super().__init__(req)
        self.degraded = False
        self.failure: str | None = None
        self._index = 0

    def render(self, event: Event) -> list[dict[str, Any]]:
        r = self._req
        match event:
            case Begin(query=q):
                meta = {"version": VERSION, "response_type": "answer", "mode": r.mode, "site": ",".join(r.sites) or "all"}
                return [named("start", {"_meta": meta, "streaming": True, "query": q, "query_id": r.query_id,
                                        "conversation_id": r.conversation_id})]
            case Results() if r.mode == "generate":
                return []  # the items come once, in `nlws`
            case Results(items=items):
                out = [named("result", {"index": self._index + n, "item": item_json(i)}) for n, i in enumerate(items)]
                self._index += len(items)
                return out
            case Decontextualized(original=o, decontextualized=d):
                return [named(None, self._msg(message_type="decontextualized_query", decontextualized_query=d,
                                              original_query=o))]
            case Summary(text=t):
                return [named(None, self._msg(message_type="summary", content=t))]
            case Generated(answer=a, items=items):
                return [named(None, self._msg(message_type="nlws", answer=a, items=[item_json(i) for i in items]))]
            case NoResults(message=m):
                return [named(None, self._msg(message_type="no_results", message=m, content=m))]
            case Notice(text=t):
                return [named(None, self._msg(message_type="intermediate_message", message=t, content=t))]
            case Failure(message=m, status=s):
                self.failure = m
                return [named("error", {"message": m, "status": s})]
            case End(error=err, degraded=degraded):
                self.degraded = degraded
                meta = {"version": VERSION}
                if err:
                    meta["error"] = True
                if degraded:
                    meta["degraded"] = True  # ranked by similarity only where the LLM was unavailable
                return [named("complete", {"_meta": meta, "query_id": r.query_id})]
        return []

    @staticmethod
    def frame(msg: dict[str, Any]) -> bytes:
        head = f"event: {msg['event']}\n".encode() if msg["event"] else b""
        return head + b"data: " + json.dumps(msg["data"], ensure_ascii=False).encode() + b"\n\n"

    def body(self, messages: list[dict[str, Any]]) -> Any:
        """The same answer as one JSON object (a client that asked for `prefer.streaming: false`)."""
        meta: dict[str, Any] = {"version": VERSION, "response_type": "failure" if self.failure else "answer"}
        if self.degraded:
            meta["degraded"] = True
        if self.failure is not None:
            return {"_meta": meta, "error": {"message": self.failure}}
        out: dict[str, Any] = {"_meta": meta, "results": []}
        for m in messages:
            d = m["data"]
            if m["event"] == "result":
                out["results"].append(d["item"])
            elif d.get("message_type") == "summary":
                out["summary"] = d["content"]
            elif d.get("message_type") == "nlws":
                out["answer"] = d["answer"]
                out["results"].extend(d["items"])
        out["results"].sort(key=lambda i: -i["score"])
        return out
