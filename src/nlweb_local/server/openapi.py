"""`GET /openapi.json`: an OpenAPI 3.1 document of the whole HTTP API, generated from the app's own route list
plus the small table below (a summary, query parameters and a request body per route). A route the table does
not describe still appears, with its path parameters and methods, so a new endpoint is never missing from the
document (tests/test_openapi.py checks every route of the app is in it). Request bodies of /v1 are the JSON
schemas of the pydantic models that validate them (server/openai_schema.py); each operation's security follows
the route table's least role (governance/routes.py): public routes need no key.

The WebSocket /chat/ws is listed with its GET upgrade request (OpenAPI has no WebSocket operation)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute

from ..governance.identity import Role
from ..governance.routes import RouteTable
from .openai_schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .params import MAX_QUERY_CHARS

REF = "#/components/schemas/{model}"
_STR = {"type": "string"}
_BOOL_TEXT = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}


def _q(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


_ASK_PARAMS = [
    _q("query", {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}, "the user's question", True),
    _q("site", _STR, "a site to search (repeat for several; 'all' or none: every site the key may search)"),
    _q("generate_mode", {"type": "string", "enum": ["list", "summarize", "generate"]}, "what to answer with"),
    _q("api", {"type": "string", "enum": ["v1", "v3"]}, "the NLWeb wire format of the answer"),
    _q("streaming", _BOOL_TEXT, "stream the answer as server-sent events (default true)"),
    _q("prev", _STR, "earlier questions of the conversation (a JSON list or comma-separated)"),
    _q("decontextualized_query", _STR, "the question already made self-contained"),
    _q("min_score", {"type": "integer", "minimum": 0, "maximum": 100}, "drop results scored below this"),
    _q("max_results", {"type": "integer", "minimum": 1, "maximum": 100}, "most results"),
    _q("query_id", _STR, "the caller's id of this question"),
    _q("conversation_id", _STR, "the conversation this question belongs to"),
]
_ASK_BODY = {"type": "object", "description": "the /ask parameters as a JSON object (or form-encoded), or an NLWeb "
             "v0.5 request: {\"query\": {\"text\": ...}, \"context\": {...}, \"prefer\": {...}}",
             "properties": {p["name"]: p["schema"] for p in _ASK_PARAMS}}
_KEY_BODY = {"type": "object", "required": ["name", "role"], "additionalProperties": False, "properties": {
    "name": _STR, "role": {"type": "string", "enum": ["admin", "operator", "user"]}, "team": _STR,
    "models": {"type": "array", "items": _STR}, "sites": {"type": "array", "items": _STR},
    "allow_from": {"type": "array", "items": _STR, "description": "CIDR networks the key may be used from"},
    "expires": {"type": "string", "description": "a duration such as 30d or 12h"},
    "priority": {"type": "string", "description": "priority class (interactive, default, batch) or integer of its "
                 "requests that send no x-nlweb-priority"},
    "max_priority": {"type": "string", "description": "highest priority class its requests may run at"},
    "limits": {"type": "object", "properties": {"requests_per_minute": {"type": "integer", "minimum": 0},
                                                "tokens_per_day": {"type": "integer", "minimum": 0},
                                                "usd_per_day": {"type": "number", "minimum": 0},
                                                "usd_per_month": {"type": "number", "minimum": 0}}}}}
_ALIAS_BODY = {"type": "object", "required": ["name", "version"], "properties": {
    "name": _STR, "version": _STR, "promote": {"type": "boolean"}}}
_CANARY_BODY = {"type": "object", "required": ["name", "version"], "properties": {
    "name": _STR, "version": _STR, "stages": _STR, "guards": _STR, "min_requests": {"type": "integer", "minimum": 1}}}
_JSONRPC = {"oneOf": [{"$ref": "#/components/schemas/JsonRpcMessage"},
                      {"type": "array", "items": {"$ref": "#/components/schemas/JsonRpcMessage"}}]}
_JSONRPC_MESSAGE = {"type": "object", "required": ["jsonrpc"], "properties": {
    "jsonrpc": {"const": "2.0"}, "id": {"type": ["string", "integer"]}, "method": _STR, "params": {"type": "object"}}}


@dataclass(frozen=True)
class Op:
    summary: str
    params: list[dict[str, Any]] = field(default_factory=list)
    body: dict[str, Any] | None = None  # the JSON schema of the request body
    response: str = "application/json"  # the success media type


# (path, method) -> Op; (path, "*") describes every method of the path
OPS: dict[tuple[str, str], Op] = {
    ("/health", "GET"): Op("liveness: the process answers"),
    ("/ready", "GET"): Op("readiness: the store and the LLM gateway answer (503 otherwise)"),
    ("/", "GET"): Op("the chat page", response="text/html"),
    ("/static", "GET"): Op("the chat page's assets"),
    ("/openapi.json", "GET"): Op("this document"),
    ("/v1/chat/completions", "POST"): Op("OpenAI-compatible chat completion (stream: server-sent events)",
                                         body={"$ref": REF.format(model="ChatCompletionRequest")}),
    ("/v1/completions", "POST"): Op("OpenAI-compatible text completion",
                                    body={"$ref": REF.format(model="CompletionRequest")}),
    ("/v1/embeddings", "POST"): Op("OpenAI-compatible embeddings", body={"$ref": REF.format(model="EmbeddingRequest")}),
    ("/v1/models", "GET"): Op("the models the caller's key may use"),
    ("/ask", "GET"): Op("NLWeb /ask: search the sites and answer", _ASK_PARAMS, response="text/event-stream"),
    ("/ask", "POST"): Op("NLWeb /ask with the parameters in the body", body=_ASK_BODY, response="text/event-stream"),
    ("/sites", "GET"): Op("the sites the caller may search"),
    ("/who", "GET"): Op("which sites can answer a question", [_q("query", {"type": "string", "minLength": 1}, "the question", True),
                                                              _q("streaming", _BOOL_TEXT, "answer as server-sent events")]),
    ("/chat/sse", "GET"): Op("the chat protocol over server-sent events", [_q("message", _STR, "the chat message as JSON", True)],
                             response="text/event-stream"),
    ("/chat/ws", "GET"): Op("the chat protocol over a WebSocket (upgrade)", [_q("user_id", _STR, "the participant")]),
    ("/mcp", "POST"): Op("MCP (streamable HTTP): a JSON-RPC message or batch", body=_JSONRPC),
    ("/mcp", "GET"): Op("MCP: the server-sent event stream (405: this server sends none)"),
    ("/mcp", "DELETE"): Op("MCP: end a session"),
    ("/metrics", "GET"): Op("Prometheus metrics", response="text/plain"),
    ("/dashboard", "GET"): Op("the operator's dashboard page (no data: it reads /admin/* with the key typed into it)",
                              response="text/html"),
    ("/admin/stats", "GET"): Op("latency, throughput, cost over a window", [
        _q("window", {"type": "number", "exclusiveMinimum": 0, "maximum": 604800}, "seconds (default 300)"),
        _q("buckets", {"type": "integer", "minimum": 1, "maximum": 500}, "time-series buckets (default 30)")]),
    ("/admin/breakers", "GET"): Op("every deployment's circuit breaker"),
    ("/admin/breakers/{name}/{action}", "POST"): Op("open (?seconds=) or reset a breaker", [
        _q("seconds", {"type": "number", "exclusiveMinimum": 0}, "how long an opened breaker stays open")]),
    ("/admin/fleet", "GET"): Op("the instances of every fleet deployment"),
    ("/admin/memory", "GET"): Op("the model memory budget: budgets, memory in use, each model's state, loads and evictions"),
    ("/admin/registry", "GET"): Op("models, versions, aliases and their history", [
        _q("history", {"type": "integer", "minimum": 0, "maximum": 10000}, "most history rows (default 100)")]),
    ("/admin/registry/aliases/{alias}", "POST"): Op("point an alias at a model version", body=_ALIAS_BODY),
    ("/admin/registry/aliases/{alias}/rollback", "POST"): Op("move an alias back to its previous version (during "
                                                             "a canary: stop it)"),
    ("/admin/canary", "GET"): Op("canary releases: stages, each side's figures, decisions", [
        _q("alias", _STR, "only this alias's canaries")]),
    ("/admin/canary/{alias}", "POST"): Op("start a canary release of a version on the alias", body=_CANARY_BODY),
    ("/admin/keys", "GET"): Op("list the API keys (never their secrets)"),
    ("/admin/keys", "POST"): Op("create an API key (the secret is in this answer only)", body=_KEY_BODY),
    ("/admin/keys/{key_id}", "GET"): Op("one key"),
    ("/admin/keys/{key_id}", "DELETE"): Op("revoke a key"),
    ("/admin/keys/{key_id}/{action}", "POST"): Op("revoke or rotate a key (action: revoke | rotate)"),
}
_SCHEMA_MODELS = (ChatCompletionRequest, CompletionRequest, EmbeddingRequest)
_ERROR = {"type": "object", "properties": {"error": {}}, "description": "an OpenAI-style {\"error\": {...}} or an NLWeb error message"}
_SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key or an SSO (OIDC) token"},
                     "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}


def route_methods(app_routes: list[Any]) -> list[tuple[str, list[str]]]:
    """(path template, methods) of every route of the app, in the app's order."""
    out: list[tuple[str, list[str]]] = []
    for r in app_routes:
        if isinstance(r, Mount):
            out.append((r.path, ["GET"]))
        elif isinstance(r, WebSocketRoute):
            out.append((r.path, ["GET"]))
        elif isinstance(r, Route) or hasattr(r, "methods"):
            out.append((r.path, sorted((getattr(r, "methods", None) or {"GET"}) - {"HEAD"})))
    return out


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in _SCHEMA_MODELS], ref_template=REF)
    return {**top.get("$defs", {}), "JsonRpcMessage": _JSONRPC_MESSAGE, "Error": _ERROR}


def _operation(path: str, method: str, role: Role) -> dict[str, Any]:
    op = OPS.get((path, method)) or Op(f"{method} {path}")
    params = [{"name": n, "in": "path", "required": True, "schema": _STR} for n in re.findall(r"\{([^}]+)\}", path)]
    out: dict[str, Any] = {
        "summary": op.summary, "operationId": f"{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_') or 'root'}",
        "parameters": params + op.params, "x-nlweb-role": role.name.lower(),
        "responses": {"200": {"description": "success", "content": {op.response: {}}},
                      "400": {"description": "bad input: the message says what to fix",
                              "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}},
                      **({} if role is Role.PUBLIC else {
                          "401": {"description": "no, malformed, expired or revoked credentials"},
                          "403": {"description": "credentials below this route's role or outside the key's scope"},
                          "429": {"description": "over a limit (Retry-After says when it resets)"}})},
    }
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
    if role is not Role.PUBLIC:
        out["security"] = [{"bearer": []}, {"apiKey": []}]
    return out


def openapi_document(app_routes: list[Any], *, version: str, table: RouteTable | None = None) -> dict[str, Any]:
    table = table or RouteTable()
    paths: dict[str, dict[str, Any]] = {}
    for path, methods in route_methods(app_routes):
        role = table.rule(path if "{" not in path else re.sub(r"\{[^}]+\}", "x", path)).role
        item = paths.setdefault(path, {})
        for m in methods:
            item[m.lower()] = _operation(path, m, role)
    return {"openapi": "3.1.0",
            "info": {"title": "nlweb-local", "version": version,
                     "description": "NLWeb search (/ask, /mcp, /who, /sites, /chat), the OpenAI-compatible LLM "
                                    "gateway (/v1) and the operator's endpoints. x-nlweb-role: the least role a key "
                                    "needs (when auth is on)."},
            "paths": paths,
            "components": {"schemas": _schemas(), "securitySchemes": _SECURITY_SCHEMES}}


def openapi_route(version: str) -> Route:
    """GET /openapi.json, built once from the app it is served by (its routes are fixed after start-up)."""
    built: dict[str, Any] = {}

    async def document(request: Request) -> Response:
        if "doc" not in built:
            built["doc"] = openapi_document(request.app.routes, version=version)
        return JSONResponse(built["doc"])

    return Route("/openapi.json", document, methods=["GET"])
