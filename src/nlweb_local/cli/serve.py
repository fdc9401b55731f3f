"""`nlweb-local serve`: the whole system on one machine."""
from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys

from ..config.settings import Settings
from .remote import check_store_free
from .server_record import remove_record, write_record

log = logging.getLogger("nlweb_local.serve")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve /ask, /mcp, /sites, /who and the chat page",
                       description="Start the server. On first start with an empty store it loads the bundled demo site.")
    p.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: server.port, 8000)")
    p.add_argument("--no-demo", action="store_true", help="do not load the demo site into an empty store")
    p.add_argument("--insecure", action="store_true", help="listen on a non-loopback address without auth "
                   "(anyone who can reach the port may use every endpoint); without it serve refuses")
    p.set_defaults(func=run)


def load_demo_if_empty(settings: Settings, components) -> None:
    """Load the demo into an empty store. A load that was killed left nothing visible (writes are
    all-or-nothing) and its leftovers were removed when the store opened, so the store is empty again
    and the load is redone."""
    from ..ingest.demo import DEMO_SITE, demo_source
    from ..ingest.pipeline import Ingestor

    interrupted = [r for r in getattr(components.store, "recovered", ()) if r.site == DEMO_SITE]
    if components.store.count() > 0:
        return
    if interrupted:
        log.warning("an earlier load of the demo site %r was interrupted (%d uncommitted items removed): "
                    "loading it again", DEMO_SITE, interrupted[0].uncommitted)
    else:
        log.info("the store is empty: loading the demo site %r (once)", DEMO_SITE)
    report = Ingestor(components.embedder, components.store, settings.ingest).ingest(str(demo_source()), DEMO_SITE)
    log.info("demo site loaded: %s", report.summary().splitlines()[0])


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, taken before anything loads: a busy port fails at once, never after a
    "ready". SO_REUSEADDR as uvicorn sets it (a restart is not blocked by connections in TIME_WAIT; a
    port another process listens on still fails)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock
def is_loopback(host: str) -> bool:
    import ipaddress

    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def refuse_open_exposure(settings: Settings, *, insecure: bool) -> None:
    """Listening beyond this machine needs auth (auth.enabled, or a key made with `nlweb-local keys create`),
    unless the operator says --insecure."""
    from ..core.errors import BadRequestError
    from ..governance import open_keyring

    host = settings.server.host
    if is_loopback(host) or settings.auth.enabled:
        return
    keyring = open_keyring(settings)
    try:
        has_keys = keyring.store.count() > 0
    finally:
        keyring.close()
    if has_keys:
        return
    if insecure:
        log.warning("serving on %s WITHOUT authentication (--insecure): anyone who can reach this port may use "
                    "every endpoint, spend tokens and open breakers", host)
        return
    raise BadRequestError(f"refusing to listen on {host} without authentication: anyone who could reach the port "
                          "could use every endpoint (the gateway, /admin, breakers). Create an admin key first "
                          "(nlweb-local keys create --name admin --role admin) or set auth.enabled: true; to serve "
                          "open anyway, add --insecure")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from ..server.app import create_app
    from ..server.components import build_components

    if args.host:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    host = settings.server.host
    refuse_open_exposure(settings, insecure=args.insecure)
    from ..server.tls import check_tls, uvicorn_tls

    tls = check_tls(settings.server) is not None  # unusable certificate or key: fail now, with the path and why
    try:
        sock = bind(host, settings.server.port)
    except OSError as e:
        busy = e.errno == errno.EADDRINUSE
        reason = ("is already in use (another nlweb-local serve? `nlweb-local sites` finds it)" if busy
                  else f"cannot be used: {e.strerror}")
        print(f"nlweb-local: error: port {settings.server.port} on {host} {reason}; "
              f"pick another with --port, e.g. --port {settings.server.port + 1}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]  # (--port 0: the one the system gave)
    shown = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"{'https' if tls else 'http'}://{f'[{shown}]' if ':' in shown else shown}:{port}"
    settings.data_path.mkdir(parents=True, exist_ok=True)
    try:
        check_store_free(settings)  # another process's store: fail now, not after loading the models
    except BaseException:
        sock.close()
        raise
    record = write_record(settings.data_path, url)  # `ask` and `sites` find this server (and know it is starting)
    try:
        log.info("loading models and the store (data in %s)", settings.data_path.resolve())
        components = build_components(settings)
        if settings.server.autoload_demo and not args.no_demo:
            load_demo_if_empty(settings, components)
        app = create_app(settings, components, close_components=True)
        if components.audit is not None:
            log.info("audit log: %s (nlweb-local audit verify)", components.audit.store.where)
        if host in ("0.0.0.0", "::", "") and not settings.server.allowed_hosts:
            log.warning("listening on every interface, but only requests addressed to localhost, 127.0.0.1 or ::1 "
                        "are answered (DNS rebinding protection): list the names and addresses clients use in "
                        "server.allowed_hosts")
        print(f"nlweb-local is ready: open {url}/ in a browser (Ctrl-C stops)", file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                **uvicorn_tls(settings.server)))
        server.run(sockets=[sock])
    finally:
        remove_record(record)
        sock.close()
    return 0
