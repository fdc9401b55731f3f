"""HTTP(S) GET for URL sources, bounded in time and size (stdlib urllib, so it runs in any thread).

`Fetcher.fetch(url)` follows redirects, sends a clear User-Agent, refuses bodies over
``max_fetch_bytes`` (by Content-Length when given, else while reading) and gives up after
``fetch_timeout_s`` in total, also against a server that trickles bytes. Every failure is a
`SourceError` whose message names the URL and says what happened.
"""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

from .. import __version__
from ..config.settings import IngestSettings
from ..core.errors import SourceError

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


class Fetcher:
    def __init__(self, settings: IngestSettings, *, opener: urllib.request.OpenerDirector | None = None):
        self._timeout = settings.fetch_timeout_s
        self._max_bytes = settings.max_fetch_bytes
        self._opener = opener or urllib.request.build_opener()

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def fetch(self, url: str) -> Fetched:
        if urlsplit(url).scheme not in ("http", "https"):
            raise SourceError(f"{url}: only http and https URLs can be fetched")
        deadline = time.monotonic() + self._timeout
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
        try:
            with self._opener.open(request, timeout=self._timeout) as resp:
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self._max_bytes:
                    raise SourceError(f"{url} is {int(length)} bytes, over the limit of {self._max_bytes} "
                                      "(raise ingest.max_fetch_bytes to allow it)")
                body = self._read_bounded(resp, url, deadline)
                return Fetched(url, resp.geturl(), resp.headers.get("Content-Type", ""), body)
        except urllib.error.HTTPError as e:
            raise SourceError(f"{url}: HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise SourceError(f"{url}: no answer within {self._timeout:g} s (ingest.fetch_timeout_s)") from e
            raise SourceError(f"{url}: cannot connect ({e.reason})") from e
        except (socket.timeout, TimeoutError) as e:
            raise SourceError(f"{url}: no answer within {self._timeout:g} s (ingest.fetch_timeout_s)") from e
        except (OSError, ValueError) as e:  # connection reset, bad status line, malformed URL ...
            raise SourceError(f"{url}: fetch failed ({type(e).__name__}: {e})") from e

    def _read_bounded(self, resp, url: str, deadline: float) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError(f"{url}: not fully received within {self._timeout:g} s (ingest.fetch_timeout_s)")
            _set_read_timeout(resp, remaining)
            chunk = resp.read(min(_CHUNK, self._max_bytes + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > self._max_bytes:
                raise SourceError(f"{url} is larger than the limit of {self._max_bytes} bytes "
                                  "(raise ingest.max_fetch_bytes to allow it)")


def _set_read_timeout(resp, seconds: float) -> None:
    """Shrink the socket timeout to what is left of the overall deadline (best effort)."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(seconds, 0.001))
        except OSError:
            pass
