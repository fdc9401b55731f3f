"""The response cache's per-request controls, as the gateway reads them (LiteLLM's shape, and HTTP's):

    body     "cache": {"no-cache": true, "no-store": true, "ttl": 600, "namespace": "team-a"}
    headers  Cache-Control: no-cache | no-store | max-age=N      x-nlweb-cache-namespace: team-a

no-cache: do not answer from the cache; no-store: do not keep this answer; ttl: keep it this many
seconds (and opt a request at temperature > 0 in); max-age=N: answer only from an entry at most N
seconds old (0: the same as no-cache); namespace: entries are shared only within it. Anything else —
a non-boolean flag, a TTL that is not a positive number, an unknown key or directive, a namespace that
is not a short plain token — is a 400 that names the field.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

from ..core.errors import BadRequestError
from ..core.types import CacheControl

_NAMESPACE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_BODY_KEYS = ("no-cache", "no-store", "ttl", "namespace")
# request directives HTTP defines that say nothing to this cache: accepted and ignored
_IGNORED = frozenset({"no-transform", "max-stale", "min-fresh", "only-if-cached", "stale-if-error"})
HEADERS = (b"cache-control", b"x-nlweb-cache-namespace")


def _bad(message: str, param: str) -> BadRequestError:
    err = BadRequestError(message)
    err.param = param  # type: ignore[attr-defined]
    return err


def _namespace(value: Any, param: str) -> str:
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise _bad(f"{param} must be 1 to 64 letters, digits or . _ : - (got {str(value)[:40]!r})", param)
    return value


def _body(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _bad('cache must be an object, e.g. {"no-cache": true, "no-store": false, "ttl": 600, "namespace": "a"}',
                   "cache")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        param = f"cache.{key}"
        if key in ("no-cache", "no-store"):
            if not isinstance(value, bool):
                raise _bad(f"{param} must be true or false (got {value!r:.40})", param)
            out[key] = value
        elif key == "ttl":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise _bad(f"{param} must be a positive number of seconds (got {value!r:.40})", param)
            out[key] = float(value)
        elif key == "namespace":
            out[key] = _namespace(value, param)
        else:
            raise _bad(f"unknown cache control {param[:46]!r}; the cache object takes {', '.join(_BODY_KEYS)}", param)
    return out


def _header(value: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in value.split(","):
        name, _, arg = part.strip().lower().partition("=")
        name, arg = name.strip(), arg.strip().strip('"')
        if not name or name in _IGNORED:
            continue
        if name in ("no-cache", "no-store") and not arg:
            out[name] = True
        elif name == "max-age" and arg.isdigit() and len(arg) <= 10:
            out["max-age"] = float(arg)
        else:
            raise _bad(f"Cache-Control: {part.strip()[:40]!r} is not a directive this gateway reads "
                       "(no-cache, no-store, max-age=SECONDS)", "cache-control")
    return out


def cache_control(body: Any, headers: Mapping[str, str]) -> CacheControl | None:
    """The controls of one request from its body's `cache` value (None: absent) and its headers (lower-case
    names); None when it sets none. Flags from either place apply; the body's ttl and namespace win."""
    header = headers.get("cache-control")
    namespace = headers.get("x-nlweb-cache-namespace")
    if body is None and header is None and namespace is None:
        return None
    b = _body(body) if body is not None else {}
    h = _header(header) if header is not None else {}
    ns = b.get("namespace") or (_namespace(namespace, "x-nlweb-cache-namespace") if namespace is not None else "")
    return CacheControl(no_cache=b.get("no-cache", False) or h.get("no-cache", False),
                        no_store=b.get("no-store", False) or h.get("no-store", False),
                        ttl_s=b.get("ttl"), max_age_s=h.get("max-age"), namespace=ns)
