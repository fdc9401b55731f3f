"""`PrivacyFloor`: the gateway wrapper that makes every call keep to the strictest privacy class that
applies to it, whatever endpoint or task it comes from.

    the call's own CallContext.privacy      /v1's x-nlweb-privacy; /ask's site privacy (search.site_privacy)
    the request's (core.privacy.REQUIRED)   the x-nlweb-privacy header of any endpoint, the caller's key and
                                            team, put there by the HTTP edge (server/privacy_middleware.py)
    the caller's key and team               again, from the identity (`governance.CURRENT`): also for calls
                                            made outside an HTTP request

The class goes on the call's `CallContext` (so the response cache and the audit trail see it, and the
router admits only local deployments for `local_only`); an embedding call, which carries no context,
runs with it in `REQUIRED`, which the router reads.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Mapping

from ..core.privacy import REQUIRED, strictest
from ..core.types import ChatChunk, ChatRequest, Privacy
from ..providers.base import Provider
from ..providers.wrapper import WrapperProvider
from .identity import CURRENT, Identity


class CallerPrivacy:
    """The privacy class of a caller: its key's, and its team's (`auth.teams.<team>.privacy`)."""

    def __init__(self, teams: Mapping[str, Privacy] | None = None):
        self._teams = {name: p for name, p in (teams or {}).items() if p is not Privacy.ANY}  # (the others add nothing)

    def of(self, ident: Identity | None) -> Privacy:
        if ident is None:
            return Privacy.ANY
        own = ident.privacy
        team = self._teams.get(ident.team) if self._teams else None
        return own if team is None or team is own else strictest(own, team)

    @classmethod
    def from_settings(cls, auth: Any) -> "CallerPrivacy":
        return cls({name: Privacy(t.privacy) for name, t in auth.teams.items()})


class PrivacyFloor(WrapperProvider):
    def __init__(self, inner: Provider, callers: CallerPrivacy):
        super().__init__(inner)
        self._callers = callers

    def _floor(self) -> Privacy:
        required, ident = REQUIRED.get(), CURRENT.get()
        if ident is None:
            return required
        caller = self._callers.of(ident)
        return required if caller is required else strictest(required, caller)

    def _held(self, request: ChatRequest) -> ChatRequest:
        """The request, its context raised to the floor (in place: the edge made it for this call)."""
        floor = self._floor()
        ctx = request.context
        if floor is not Privacy.ANY and ctx.privacy is not floor:
            request.context = ctx.with_(privacy=strictest(ctx.privacy, floor))
        return request

    async def around_call(self, kind: Any, subject: Any, run: Callable[[], Any]) -> Any:
        if kind != "embed":
            self._held(subject)
            return await run()
        floor = self._floor()
        if floor is REQUIRED.get():
            return await run()
        token = REQUIRED.set(floor)  # (a coroutine: set and reset in the same context)
        try:
            return await run()
        finally:
            REQUIRED.reset(token)

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self.inner.stream(self._held(request))


def privacy_floor(callers: CallerPrivacy) -> Callable[[Provider], Provider]:
    """The wrapper for the gateway's fold."""
    return lambda inner: PrivacyFloor(inner, callers)
