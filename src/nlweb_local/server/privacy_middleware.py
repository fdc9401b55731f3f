"""`PrivacyMiddleware` (pure ASGI): the privacy class a request requires, on every endpoint.

The strictest of the request's `x-nlweb-privacy` header (`any` or `local_only`), its caller's key and its
caller's team (`auth.teams.<team>.privacy`) goes into `core.privacy.REQUIRED` while the request runs, so
that every LLM call it makes — /v1's, /ask's decontextualise, rank, summarise and generate calls, /mcp's
and /chat's — and every embedding call is held to it by the gateway (governance/privacy.py). It runs
after authentication (it reads the caller's identity). A header with any other value is refused (400, in
the endpoint's wire format): a misspelt `local-only` must never be served as `any`.
"""
from __future__ import annotations

from typing import Any

from ..core.errors import BadRequestError
from ..core.privacy import REQUIRED, parse_privacy, strictest
from ..core.types import Privacy
from ..governance.privacy import CallerPrivacy
from .auth import refuse

HEADER = b"x-nlweb-privacy"


def header_privacy(headers: Any) -> Privacy:
    """The class a request's `x-nlweb-privacy` header asks for (ANY without one)."""
    for k, v in headers:
        if k == HEADER:
            return parse_privacy(v.decode("latin-1"), "x-nlweb-privacy")
    return Privacy.ANY


class PrivacyMiddleware:
    def __init__(self, app: Any, *, callers: CallerPrivacy):
        self.app = app
        self._callers = callers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            asked = header_privacy(scope["headers"])
        except BadRequestError as e:
            e.param = "x-nlweb-privacy"  # type: ignore[attr-defined]
            await refuse(scope, send, e)
            return
        state = scope.get("state")
        ident = state.get("identity") if state else None
        caller = asked if ident is None else self._callers.of(ident)
        privacy = asked if caller is asked else strictest(asked, caller)
        if privacy is Privacy.ANY:
            await self.app(scope, receive, send)
            return
        token = REQUIRED.set(privacy)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUIRED.reset(token)
