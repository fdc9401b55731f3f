"""Parse an /ask request (query string, merged with a JSON or form body) into an `AskRequest`.

Bad input raises `BadRequestError` / `PayloadTooLargeError` / `RequestTimeoutError` with a message that
names the parameter. JSON (a body, or a parameter holding a JSON array) is parsed by `body.parse_json`:
strict, finite numbers only, nested at most `MAX_JSON_DEPTH` levels.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from ..config.settings import SearchSettings
from ..core.errors import BadRequestError
from ..search.events import AskRequest
from .body import parse_json, read_request_body

MAX_QUERY_CHARS = 2000
_MODES = {"list": "list", "none": "list", "": "list", "summarize": "summarize", "summary": "summarize", "generate": "generate"}


@dataclass(slots=True)
class ParsedAsk:
    ask: AskRequest
    streaming: bool
    api: str  # "v3" | "v1" | "v0.5" | "v0.55"


def _decode(body: bytes) -> str:
    if b"\x00" in body:
        raise BadRequestError("request body is binary; send JSON or form-encoded text")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("request body is not valid UTF-8 text; send JSON or form-encoded text") from None


async def collect_params(request: Request, limit: int,
                         timeout_s: float | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Merged parameters, plus the raw JSON body when it was a JSON object (for dialect detection). The
    body: at most `limit` bytes, within `timeout_s` seconds."""
    params: dict[str, Any] = {}
    for k, v in request.query_params.multi_items():
        params.setdefault(k, []).append(v)
    params = {k: v[0] if len(v) == 1 else v for k, v in params.items()}
    if request.method != "POST":
        return params, None
    body = await read_request_body(request, limit, timeout_s)
    if not body.strip():
        return params, None
    text = _decode(body)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        for k, v in parse_qsl(text, keep_blank_values=True):
            params[k] = v
        return params, None
    data = parse_json(text, "request body")
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object of /ask parameters")
    params.update(data)
    return params, data


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, list) and v else v


def _str_list(v: Any, name: str) -> list[str]:
    if v is None or v == "":
        return []
    if isinstance(v, list):
        out: list[str] = []
        for x in v:
            out.extend(_str_list(x, name))
        return out
    if not isinstance(v, str):
        raise BadRequestError(f"parameter '{name}' must be a string or a list of strings")
    s = v.strip()
    if s.startswith("["):
        try:
            arr = parse_json(s, f"parameter '{name}'")
        except BadRequestError as e:
            raise BadRequestError(f"parameter '{name}' looks like a JSON array but does not parse: {e.message}") from None
        return [str(x) for x in arr if str(x).strip()]
    return [p.strip() for p in s.split(",") if p.strip()]


def prev_texts(v: Any, name: str) -> list[str]:
    """Earlier questions, oldest first: strings (or a JSON array / comma list of them), or objects whose
    `query` holds the text, as NLWeb's chat page sends them (`{"query": ..., "user_id": ..., "timestamp": ...}`)."""
    if isinstance(v, list):  # (each entry is one question, commas and all)
        if not all(isinstance(x, (str, dict)) for x in v):
            raise BadRequestError(f"parameter '{name}' must list earlier questions as strings (or objects with 'query')")
        texts = [x.get("query") if isinstance(x, dict) else x for x in v]
        texts = [t.get("query") if isinstance(t, dict) else t for t in texts]  # {"query": {"query": ...}}
        return [t.strip() for t in texts if isinstance(t, str) and t.strip()][-10:]
    return _str_list(v, name)[-10:]


def _opt_int(v: Any, name: str, lo: int, hi: int) -> int | None:
    """A whole number the client may leave out (None)."""
    return None if _first(v) in (None, "") else _int(v, name, 0, lo, hi)


def _int(v: Any, name: str, default: int, lo: int, hi: int) -> int:
    v = _first(v)
    if v is None or v == "":
        return default
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        f = math.nan
    if not math.isfinite(f):  # (also "inf", "nan", "1e400" and numbers too big for a float)
        raise BadRequestError(f"parameter '{name}' must be a whole number between {lo} and {hi}, got {_short(v)}")
    n = int(f)
    if not lo <= n <= hi:
        raise BadRequestError(f"parameter '{name}' must be between {lo} and {hi}, got {n}")
    return n


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _bool(v: Any, default: bool) -> bool:
    v = _first(v)
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() not in {"false", "0", "no", "off"}


def _last_ans(v: Any) -> list[dict[str, Any]]:
    v = _first(v) if not isinstance(v, list) or (v and isinstance(v[0], str)) else v
    if isinstance(v, str):
        try:
            v = parse_json(v, "parameter 'last_ans'")
        except BadRequestError:  # not JSON (or absurdly nested): the title of the last answer
            return [{"title": v[:MAX_QUERY_CHARS]}]
    if isinstance(v, list):
        return [x for x in v if isinstance(x, dict)][:10]
    return []


def implied_api(method: str, accept: str, default_api: str, eventsource_api: str) -> str:
    """The dialect of an /ask that names no `api=` (the parameter always wins).

    A GET whose Accept lists text/event-stream is what a browser's EventSource sends, and every NLWeb page
    that opens /ask with an EventSource (2025: index.html, str_chat.html, debug.html, the August chat page)
    reads v1: `result_batch`, `summary`, `nlws`, and `complete`, without which an EventSource reconnects and
    asks again. Such a request gets `eventsource_api` (v1); anything else gets `default_api` (v3)."""
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return eventsource_api if method == "GET" and "text/event-stream" in types else default_api


def parse_ask(params: dict[str, Any], raw_json: dict[str, Any] | None, s: SearchSettings, default_api: str) -> ParsedAsk:
    if raw_json is not None and isinstance(raw_json.get("query"), dict):
        return _parse_v05(raw_json, s, _first(params.get("api")))
    query = _first(params.get("query"))
    if not isinstance(query, str) or not query.strip():
        raise BadRequestError("missing required parameter 'query' (the user's question), e.g. /ask?query=spicy+snacks")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequestError(f"parameter 'query' is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
    mode_raw = str(_first(params.get("generate_mode", params.get("mode", "list"))) or "list").strip().lower()
    if mode_raw not in _MODES:
        raise BadRequestError(f"parameter 'generate_mode' must be list, summarize or generate, got {mode_raw!r}")
    sites = [x for x in _str_list(params.get("site"), "site") if x.lower() != "all"]
    api = str(_first(params.get("api", default_api)) or default_api).lower()
    if api not in ("v1", "v3"):
        raise BadRequestError(f"parameter 'api' must be v1 or v3, got {api!r}")
    dq = _first(params.get("decontextualized_query"))
    ask = AskRequest(
        query=query.strip(), sites=sites, prev=prev_texts(params.get("prev"), "prev"),
        last_ans=_last_ans(params.get("last_ans")),
        decontextualized_query=dq.strip() if isinstance(dq, str) and dq.strip() else None,
        mode=_MODES[mode_raw],  # type: ignore[arg-type]
        min_score=_opt_int(params.get("min_score"), "min_score", 0, 100),
        max_results=_int(params.get("max_results"), "max_results", s.max_results, 1, 100),
        query_id=str(_first(params.get("query_id")) or uuid.uuid4().hex[:12]),
        conversation_id=str(_first(params.get("conversation_id")) or ""),
    )
    return ParsedAsk(ask, _bool(params.get("streaming"), True), api)


def v05_dialect(meta: dict[str, Any], api: Any) -> str:
    """A v0.5-shaped body (`query` an object) is answered in "v0.55" (named SSE events: `start`, `result`,
    `complete`) when its `meta.version` is 0.55 or later, as NLWeb's newest chat page sends; otherwise in
    "v0.5" (unnamed `data:` events, as NLWeb's 0.5x packages). `api=v0.5|v0.55` in the URL wins."""
    if isinstance(api, str) and api.lower() in ("v0.5", "v0.55"):
        return api.lower()
    try:
        version = float(str(meta.get("version", "0.5")))
    except ValueError:
        version = 0.5
    return "v0.55" if version >= 0.55 else "v0.5"


def _parse_v05(body: dict[str, Any], s: SearchSettings, api: Any = None) -> ParsedAsk:
    q = body["query"]
    text = q.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequestError("missing required field 'query.text' (the user's question)")
    ctx = body.get("context") if isinstance(body.get("context"), dict) else {}
    prefer = body.get("prefer") if isinstance(body.get("prefer"), dict) else {}
    meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
    session = meta.get("session_context") if isinstance(meta.get("session_context"), dict) else {}
    mode = str(prefer.get("mode", "list")).lower()
    ask = AskRequest(
        query=text.strip()[:MAX_QUERY_CHARS],
        sites=[x for x in _str_list(q.get("site"), "query.site") if x.lower() != "all"],
        prev=prev_texts(ctx.get("prev"), "context.prev"),
        decontextualized_query=q.get("decontextualized_query") if isinstance(q.get("decontextualized_query"), str) else None,
        mode=_MODES.get(mode, "list"),  # type: ignore[arg-type]
        min_score=None,
        max_results=_int(q.get("num_results"), "query.num_results", s.max_results, 1, 100),
        query_id=uuid.uuid4().hex[:12], conversation_id=str(session.get("conversation_id", "")),
    )
    return ParsedAsk(ask, _bool(prefer.get("streaming"), True), v05_dialect(meta, api))
