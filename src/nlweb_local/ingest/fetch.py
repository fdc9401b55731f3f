"""HTTP(S) GET for URL sources, bounded in time and size (stdlib urllib, so it runs in any thread).

`Fetcher.fetch(url)` follows redirects, sends a clear User-Agent, refuses bodies over
``max_fetch_bytes`` (by Content-Length when given, else while reading) and gives up after
``fetch_timeout_s`` in total: connect, headers and body (redirects included) share one deadline.
A per-read socket timeout cannot enforce that against a server that trickles a byte now and then,
so a `Deadline` timer shuts the fetch's sockets down when the time is up, which ends any read at
once. A caller may give a tighter `Deadline` (a sitemap crawl's). Every failure is a `SourceError`
whose message names the URL and says what happened. (Name resolution is not covered by the timer.)

Every hop (the URL, each redirect) must be http or https, and every connection goes to an address the
`AddressPolicy` allows, checked after name resolution on the address actually connected to
(`address_policy.py`: no private, loopback, link-local or metadata addresses unless the operator
allows them or named that origin). Only the http(s) handlers are installed: no ftp:, file: or data:.
"""
from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Iterable
from urllib.parse import urlsplit

from .. import __version__
from ..config.settings import IngestSettings
from ..core.errors import SourceError
from .address_policy import AddressPolicy, AddressRefused, origin

USER_AGENT = f"nlweb-local/{__version__} (schema.org ingest; +https://github.com/nlweb-ai/NLWeb)"
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str  # as asked for
    final_url: str  # after redirects
    content_type: str
    body: bytes

    def text(self) -> str:
        return decode_body(self.body, self.content_type)


def decode_body(body: bytes, content_type: str = "") -> str:
    """`body` decoded by the charset its content type declares, else UTF-8; a BOM is dropped, bad bytes replaced."""
    msg = Message()
    msg["content-type"] = content_type or "application/octet-stream"
    charset = msg.get_content_charset() or "utf-8"
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    return text.lstrip("\ufeff")


class Deadline:
    """A point in time (monotonic) and the setting that set it, for the messages."""

    def __init__(self, seconds: float, setting: str):
        self.seconds, self.setting = seconds, setting
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.left() <= 0


class _SocketTimer:
    """Shuts down every socket it tracks when `deadline` passes, waking any read blocked on them."""

    def __init__(self, deadline: Deadline):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(deadline.left(), 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _timed(conn_class: type[http.client.HTTPConnection], timer: _SocketTimer, policy: AddressPolicy | None):
    """A connection factory for `AbstractHTTPHandler.do_open` whose sockets `timer` can cut, connecting only
    to addresses `policy` allows (None: a proxy the operator configured, whose target was checked)."""
    def make(host, **kwargs):
        conn = conn_class(host, **kwargs)
        create = conn._create_connection if policy is None else _guarded(policy)
        conn._create_connection = lambda *a, **kw: timer.track(create(*a, **kw))
        return conn
    return make


def _guarded(policy: AddressPolicy):
    """`socket.create_connection`, but to the checked addresses only (no second lookup in between)."""
    def connect(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
        host, port = address
        last: OSError | None = None
        for ip in policy.addresses(host, port):
            try:
                return socket.create_connection((ip, port), timeout, source_address)
            except OSError as e:
                last = e
        raise last if last is not None else OSError(f"cannot connect to {host}:{port}")
    return connect


def _checked(req, policy: AddressPolicy) -> AddressPolicy | None:
    """The policy for this hop's connection; None through a proxy (checked here, by the target's addresses)."""
    policy.check_url(req.full_url)
    if req.has_proxy() or getattr(req, "_tunnel_host", None):
        policy.addresses(*origin(req.full_url))
        return None
    return policy


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, timer: _SocketTimer, policy: AddressPolicy):
        super().__init__()
        self._timer, self._policy = timer, policy

    def http_open(self, req):
        return self.do_open(_timed(http.client.HTTPConnection, self._timer, _checked(req, self._policy)), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, timer: _SocketTimer, policy: AddressPolicy):
        super().__init__()
        self._timer, self._policy = timer, policy

    def https_open(self, req):
        return self.do_open(_timed(http.client.HTTPSConnection, self._timer, _checked(req, self._policy)), req,
                            context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only (urllib's own would follow one to ftp:)."""

    def __init__(self, policy: AddressPolicy):
        super().__init__()
        self._policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            self._policy.check_url(newurl)
        except AddressRefused as e:
            raise AddressRefused(f"redirected to {newurl}, which is not followed: {e.message}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(timer: _SocketTimer, policy: AddressPolicy) -> urllib.request.OpenerDirector:
    """http(s) and nothing else: `build_opener` would add ftp:, file: and data: handlers."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _HTTPHandler(timer, policy),
                    _HTTPSHandler(timer, policy), urllib.request.HTTPDefaultErrorHandler(), _RedirectHandler(policy),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


class Fetcher:
    def __init__(self, settings: IngestSettings, *, policy: AddressPolicy | None = None):
        """`policy`: which addresses fetches may reach (default: from `settings`, see `address_policy.py`)."""
        self._timeout = settings.fetch_timeout_s
        self._max_bytes = settings.max_fetch_bytes
        self._policy = policy or AddressPolicy.from_settings(settings)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def fetch(self, url: str, *, within: Deadline | None = None, trust: Iterable[str] = ()) -> Fetched:
        """GET `url` within `ingest.fetch_timeout_s`, or within `within` when that ends sooner. `trust`: URLs
        the operator named (their origins may be private; see `address_policy.py`)."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise SourceError(f"{url}: only http and https URLs can be fetched")
        policy = self._policy.trusting(origin(u) for u in trust)
        deadline = Deadline(self._timeout, "ingest.fetch_timeout_s")
        if within is not None and within.at < deadline.at:
            deadline = within
        if deadline.passed:
            raise SourceError(f"{url}: not fetched, the {deadline.seconds:g} s of {deadline.setting} had passed")
        timer = _SocketTimer(deadline)
        opener = _opener(timer, policy)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        answered = False
        try:
            with opener.open(request, timeout=max(deadline.left(), 0.001)) as resp:
                answered = True
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self._max_bytes:
                    raise SourceError(f"{url} is {int(length)} bytes, over the limit of {self._max_bytes} "
                                      "(raise ingest.max_fetch_bytes to allow it)")
                body = self._read_bounded(resp, url)
                if timer.expired:  # the cut may look like the end of a body without a length
                    raise TimeoutError
                return Fetched(url, resp.geturl(), resp.headers.get("Content-Type", ""), body)
        except AddressRefused as e:
            raise AddressRefused(f"{url}: {e.message}") from None
        except SourceError:
            raise
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
            if timer.expired or _is_timeout(e):
                what = "not fully received" if answered else "no answer"
                raise SourceError(f"{url}: {what} within {deadline.seconds:g} s ({deadline.setting})") from e
            if isinstance(e, urllib.error.HTTPError):
                raise SourceError(f"{url}: HTTP {e.code} {e.reason}") from e
            if isinstance(e, urllib.error.URLError):
                raise SourceError(f"{url}: cannot connect ({e.reason})") from e
            # connection reset, bad status line, malformed URL ...
            raise SourceError(f"{url}: fetch failed ({type(e).__name__}: {e})") from e
        finally:
            timer.cancel()

    def _read_bounded(self, resp, url: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = resp.read1(min(_CHUNK, self._max_bytes + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > self._max_bytes:
                raise SourceError(f"{url} is larger than the limit of {self._max_bytes} bytes "
                                  "(raise ingest.max_fetch_bytes to allow it)")


def _is_timeout(e: BaseException) -> bool:
    reason = getattr(e, "reason", None)
    return isinstance(e, (socket.timeout, TimeoutError)) or isinstance(reason, (socket.timeout, TimeoutError))
