"""Render pipeline events in NLWeb's wire formats: v3 (default), v1 and the v0.5 dialect.

Each renderer turns one event into zero or more JSON messages (one SSE `data:` line each) and
assembles the non-streamed body from the same messages, so both paths always agree.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Protocol

from ..search.events import (AskRequest, Begin, Decontextualized, End, Event, Failure, Generated, NoResults, Notice,
                             RankedItem, Results, Summary)

SENDER = {"id": "nlweb_assistant", "name": "NLWeb Assistant"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def schema_object(ri: RankedItem) -> Any:
    try:
        obj = json.loads(ri.item.schema_json)
    except json.JSONDecodeError:
        return {}
    return (obj[0] if obj else {}) if isinstance(obj, list) else obj


def item_json(ri: RankedItem) -> dict[str, Any]:
    return {"@type": "Item", "url": ri.item.url, "name": ri.item.name, "site": ri.item.site, "siteUrl": ri.item.site,
            "score": ri.score, "description": ri.description, "schema_object": schema_object(ri)}


class Renderer(Protocol):
    def render(self, event: Event) -> list[dict[str, Any]]: ...

    def body(self, messages: list[dict[str, Any]]) -> Any: ...


class V3Renderer:
    def __init__(self, req: AskRequest):
        self._req = req

    def _msg(self, **fields: Any) -> dict[str, Any]:
        m = {"message_id": uuid.uuid4().hex[:16], "timestamp": _now_ms(), "conversation_id": self._req.conversation_id,
             "sender_info": SENDER, **fields}
        if self._req.query_id:
            m["query_id"] = self._req.query_id
        return m

    def render(self, event: Event) -> list[dict[str, Any]]:
        r = self._req
        match event:
            case Begin(query=q):
                return [{"message_type": "begin-nlweb-response", "conversation_id": r.conversation_id, "query": q,
                         "query_id": r.query_id, "timestamp": _now_ms()}]
            case Decontextualized(original=o, decontextualized=d):
                return [self._msg(message_type="decontextualized_query", decontextualized_query=d, original_query=o)]
            case Results(items=items):
                return [self._msg(message_type="result", sender_type="assistant", content=[item_json(i) for i in items])]
            case Summary(text=t):
                return [self._msg(message_type="result", sender_type="assistant", content=t, **{"@type": "Summary"})]
            case Generated(answer=a, items=items):
                return [self._msg(message_type="nlws", sender_type="assistant", answer=a,
                                  items=[item_json(i) for i in items], **{"@type": "GeneratedAnswer"})]
            case NoResults(message=m):
                return [self._msg(message_type="no_results", message=m)]
            case Notice(text=t):
                return [self._msg(message_type="intermediate_message", message=t)]
            case Failure(message=m, status=s):
                return [self._msg(message_type="error", error=m, status=s)]
            case End(error=err, degraded=degraded):
                end = {"message_type": "end-nlweb-response", "conversation_id": r.conversation_id, "timestamp": _now_ms()}
                if err:
                    end["error"] = True
                if degraded:
                    end["degraded"] = True  # ranked by similarity only where the LLM was unavailable
                return [end]
        return []

    def body(self, messages: list[dict[str, Any]]) -> Any:
        return messages


class V1Renderer:
    """NLWeb's 2025 format. In generate mode the items travel once, inside `nlws`: NLWeb's pages keep every
    `result_batch` item and add the `nlws` items to them, so sending both would show each card twice."""

    def __init__(self, req: AskRequest):
        self._req = req

    def render(self, event: Event) -> list[dict[str, Any]]:
        qid = self._req.query_id
        match event:
            case Decontextualized(original=o, decontextualized=d):
                return [{"message_type": "decontextualized_query", "decontextualized_query": d, "original_query": o,
                         "query_id": qid}]
            case Results() if self._req.mode == "generate":
                return []
            case Results(items=items):
                return [{"message_type": "result_batch", "results": [item_json(i) for i in items], "query_id": qid}]
            case Summary(text=t):
                return [{"message_type": "summary", "message": t, "query_id": qid}]
            case Generated(answer=a, items=items):
                return [{"message_type": "nlws", "answer": a, "items": [item_json(i) for i in items], "query_id": qid}]
            case NoResults(message=m):
                return [{"message_type": "no_results", "message": m, "query_id": qid}]
            case Notice(text=t):
                return [{"message_type": "intermediate_message", "message": t, "query_id": qid}]
            case Failure(message=m, status=s):
                return [{"message_type": "error", "message": m, "status": s, "query_id": qid}]
            case End(degraded=degraded):
                return [{"message_type": "complete", "query_id": qid, **({"degraded": True} if degraded else {})}]
        return []

    def body(self, messages: list[dict[str, Any]]) -> Any:
        out: dict[str, Any] = {"query_id": self._req.query_id, "results": []}
        for m in messages:
            t = m["message_type"]
            if t == "result_batch":
                out["results"].extend(m["results"])
            elif t == "summary":
                out["summary"] = {"message": m["message"]}
            elif t == "nlws":
                out["nlws"] = {"answer": m["answer"], "items": m["items"]}
                if self._req.mode == "generate":
                    out["results"].extend(m["items"])
            elif t == "decontextualized_query":
                out["decontextualized_query"] = m["decontextualized_query"]
            elif t in ("error", "no_results"):
                out[t] = {"message": m["message"]}
            elif t == "complete" and m.get("degraded"):
                out["degraded"] = True
        out["results"].sort(key=lambda i: -i["score"])
        return out


def result_v05(ri: RankedItem) -> dict[str, Any]:
    obj = schema_object(ri)
    res = {k: v for k, v in obj.items() if k != "url"} if isinstance(obj, dict) else {}
    res.update({"@type": (obj.get("@type", "Thing") if isinstance(obj, dict) else "Thing"), "url": ri.item.url,
                "name": ri.item.name, "site": ri.item.site, "score": ri.score, "description": ri.description,
                "grounding": (obj.get("@id") if isinstance(obj, dict) and obj.get("@id") else ri.item.url)})
    return res


class V05Renderer:
    """NLWeb's PyPI packages (nlweb-core 0.5.x)."""

    def __init__(self, req: AskRequest):
        self._req = req
        self.failed = False
        self.degraded = False

    def render(self, event: Event) -> list[dict[str, Any]]:
        match event:
            case Begin():
                return [{"_meta": {"version": "0.54", "response_type": "Answer"}}]
            case Results(items=items):
                return [{"results": [result_v05(i) for i in items]}]
            case Summary(text=t):
                return [{"results": [{"@type": "Summary", "text": t, "description": t}]}]
            case Generated(answer=a, items=items):
                return [{"results": [{"@type": "GeneratedAnswer", "text": a, "description": a,
                                      "grounding": [i.item.url for i in items]}]}]
            case Failure(message=m, status=s):
                self.failed = True
                return [{"_meta": {"version": "0.5", "response_type": "Failure"},
                         "error": {"code": "SERVICE_UNAVAILABLE" if s == 503 else "INTERNAL_ERROR", "message": m}}]
            case End(degraded=degraded):
                self.degraded = degraded
                meta = {"version": "0.5", "nlweb/streaming_status": "finished"}
                return [{"_meta": {**meta, "degraded": True} if degraded else meta}]
        return []

    def body(self, messages: list[dict[str, Any]]) -> Any:
        for m in messages:
            if m.get("_meta", {}).get("response_type") == "Failure":
                return m
        results = [r for m in messages for r in m.get("results", [])]
        meta = {"version": "0.5", "response_type": "Answer"}
        return {"_meta": {**meta, "degraded": True} if self.degraded else meta, "results": results}
