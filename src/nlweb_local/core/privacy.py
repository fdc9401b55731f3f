"""Privacy classes: the strictest wins, and the class the request being served must keep to.

A call's class is the strictest of what applies to it: the request's `x-nlweb-privacy` header, the
caller's key and team, the site an /ask searches, and what the caller put on the call's `CallContext`.
The HTTP edge puts the request's part (header, key, team) in `REQUIRED` for the length of the request,
as the auth middleware does with the caller's identity; the gateway's privacy wrapper folds it into every
call's `CallContext.privacy`, and the router and the embedding path read it where a call carries no
context. `LOCAL_ONLY` is a hard guarantee: no deployment that is not local may see the call.
"""
from __future__ import annotations

from contextvars import ContextVar

from .errors import BadRequestError
from .types import Privacy

_ORDER = {Privacy.ANY: 0, Privacy.LOCAL_ONLY: 1}
_BY_NAME = {p.value: p for p in Privacy}

# what the request being served requires of every LLM call it makes (ANY outside a request)
REQUIRED: ContextVar[Privacy] = ContextVar("nlweb_privacy", default=Privacy.ANY)


_STRICTEST = max(_ORDER, key=_ORDER.__getitem__)


def strictest(*classes: Privacy) -> Privacy:
    """The strictest of `classes` (ANY for none)."""
    if _STRICTEST in classes:  # (the common answers without a Python loop: one of them is the strictest there is,
        return _STRICTEST      # or none is stricter than ANY)
    return max(classes, key=_ORDER.__getitem__, default=Privacy.ANY)


def parse_privacy(text: str, what: str = "privacy") -> Privacy:
    """'any' or 'local_only' (case and surrounding blanks ignored); `BadRequestError` naming `what` otherwise."""
    p = _BY_NAME.get(text.strip().lower()) if isinstance(text, str) else None
    if p is None:
        raise BadRequestError(f"{what} must be 'local_only' or 'any', got {str(text)[:40]!r}")
    return p


def required() -> Privacy:
    """The class the request being served requires (ANY outside a request)."""
    return REQUIRED.get()
