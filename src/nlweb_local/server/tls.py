"""HTTPS: `server.tls_cert` + `server.tls_key` (PEM files). `check_tls` loads the pair once before anything
else starts, so a missing, unreadable or mismatched file stops `serve` with the path and the reason rather
than after the models have loaded; uvicorn then serves TLS with the same files."""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from ..core.errors import BadRequestError


def tls_files(server: Any) -> tuple[str, str] | None:
    """(cert, key) when HTTPS is configured, else None (settings validation already refused one without the other)."""
    if not server.tls_cert and not server.tls_key:
        return None
    if not server.tls_cert or not server.tls_key:
        raise BadRequestError("server.tls_cert and server.tls_key go together: set both (PEM files) or neither")
    return str(Path(server.tls_cert).expanduser()), str(Path(server.tls_key).expanduser())


def check_tls(server: Any) -> ssl.SSLContext | None:
    """The server's SSL context, or None without TLS; a clear BadRequestError when the files are unusable."""
    files = tls_files(server)
    if files is None:
        return None
    cert, key = files
    for what, path in (("server.tls_cert", cert), ("server.tls_key", key)):
        p = Path(path)
        if not p.is_file():
            raise BadRequestError(f"{what}: {path} does not exist (or is not a file)")
        try:
            with p.open("rb"):
                pass
        except OSError as e:
            raise BadRequestError(f"{what}: {path} cannot be read: {e.strerror}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise BadRequestError(f"server.tls_cert {cert} / server.tls_key {key} cannot be used: {e.reason or e} "
                              "(both PEM; the key unencrypted and matching the certificate)") from None
    return ctx


def uvicorn_tls(server: Any) -> dict[str, str]:
    """The uvicorn.Config arguments that serve HTTPS (none without TLS)."""
    files = tls_files(server)
    return {} if files is None else {"ssl_certfile": files[0], "ssl_keyfile": files[1]}
