"""Secrets masked for display (`nlweb-local config show`): what a screen share or a pasted bug report must not leak.

    keys named *api_key, *secret, *password, *token (and *_key that is not a path)  ->  "***" (or null as is)
    URLs with credentials (redis://user:pw@host, postgresql://u:pw@h/db)              ->  the password as ***
    webhook URLs (whose path is often the credential, e.g. Slack's)                    ->  scheme://host/***
"""
from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(r"(^|_)(api_key|secret|password|passwd|token|secret_key|private_key)$", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/:@\s]*:)(?P<pw>[^@/\s]+)(?=@)", re.I)
_URL_HOST = re.compile(r"^(?P<origin>[a-z][a-z0-9+.-]*://[^/\s]+)(?P<rest>/.*)?$", re.I)


def mask_url(url: str, *, path_too: bool = False) -> str:
    """`url` with any password replaced by *** (and, `path_too`, everything after the host)."""
    out = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, url)
    if path_too:
        m = _URL_HOST.match(out)
        if m and m.group("rest") not in (None, "", "/"):
            out = m.group("origin") + "/" + MASK
    return out


def mask_secrets(data: Any, key: str = "") -> Any:
    """A copy of `data` (settings as plain dicts and lists) with secrets masked."""
    if isinstance(data, dict):
        return {k: mask_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_secrets(v, key) for v in data]
    if isinstance(data, str) and data:
        if _SECRET_KEY.search(key):
            return MASK
        if "webhook" in key.lower():
            return mask_url(data, path_too=True)
        if "://" in data:
            return mask_url(data)
    return data
