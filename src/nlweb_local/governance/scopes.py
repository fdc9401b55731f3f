"""Site scopes: which sites the current caller may search (a key made with `--sites`). Applied where a
request names sites: /ask, MCP's ask, and the listings /sites and /who. No identity, or a key without
sites: everything."""
from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from ..core.errors import ForbiddenError, NlwebError
from .identity import current

T = TypeVar("T")


def sites_in_scope(requested: list[str]) -> list[str]:
    """The sites a search may look in: those asked for (all of them inside the key's scope, else
    `ForbiddenError`), or the key's sites when it asked for all."""
    ident = current()
    if ident is None or not ident.sites:
        return requested
    if not requested:
        return list(ident.sites)
    outside = [s for s in requested if s not in ident.sites]
    if outside:
        raise ForbiddenError(f"{ident.describe()} may search the sites {', '.join(ident.sites)}; "
                             f"not {', '.join(outside)}")
    return requested


def visible(items: Iterable[T], site_of=lambda x: x) -> list[T]:
    """The items (site names, or things with a site) the current caller may see."""
    ident = current()
    if ident is None or not ident.sites:
        return list(items)
    return [x for x in items if site_of(x) in ident.sites]


def visible_models(ids: Iterable[str], resolve: Callable[[str], tuple[str, ...]]) -> set[str] | None:
    """Which of the model names (aliases, deployments, `auto`) the current caller's key may use, as the
    governed wrapper decides a call: a name in the key's models, or one that resolves to a deployment one of
    them resolves to; `auto` when any is served. None: no identity or no model scope (everything)."""
    ident = current()
    if ident is None or not ident.models:
        return None

    def deployments(name: str) -> tuple[str, ...]:
        try:
            return resolve(name) or (name,)
        except NlwebError:  # (a registry alias no deployment serves)
            return ()

    allowed = {d for m in ident.models for d in deployments(m)}
    out = set()
    for name in ids:
        if name in ident.models or any(d in allowed for d in deployments(name)):
            out.add(name)
    return out
