"""Which addresses an ingestion fetch may reach: `AddressPolicy`.

Fetching what a document names (a redirect, a sitemap's <loc>, a feed's link) is fetching what a
stranger chose. Left open, a sitemap entry or a redirect to http://127.0.0.1:6379/, http://10.0.0.5/admin
or the cloud metadata service at 169.254.169.254 is fetched from inside the network and its text then
served to anyone by /ask. So every connection an ingest fetch opens is checked *after* name resolution,
against the address it actually connects to (a name that resolves to a private address is refused
as the address itself would be, and no second lookup can swap the address in between):

    refused       loopback, private (RFC 1918, fc00::/7), link-local (169.254/16, fe80::/10), carrier-grade
                  NAT (100.64/10), unspecified, multicast, reserved, and IPv4 hidden in IPv6 forms of those;
                  cloud metadata addresses even with ingest.allow_private_networks
    allowed       public (globally routable) addresses; and whatever `trusted` says:
                    - ingest.allow_private_networks: true (everything but metadata addresses),
                    - ingest.allowed_hosts: names or name:port the operator lists (metadata too, if listed),
                    - the origin (host and port) of the URL the operator gave `nlweb-local ingest`: an
                      operator who types http://127.0.0.1:8080/sitemap.xml means it, so that origin is
                      trusted for the whole crawl (its redirects and entries on the same host and port),
                      but a redirect or an entry pointing at any *other* private host is refused.

Only http and https are fetched, on every hop (urllib would follow a redirect to ftp:// by default).
A local file given to `ingest` is the operator's too, but the URLs inside it are not: its entries are
checked like any other.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlsplit

from ..core.errors import SourceError

class AddressRefused(SourceError):
    """A fetch would reach an address the policy refuses (or a scheme other than http and https)."""


Resolver = Callable[[str, int], list[str]]  # (host, port) -> IP addresses

METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task metadata
    "100.100.100.200",  # Alibaba Cloud
    "fd00:ec2::254",  # AWS over IPv6
))
DEFAULT_PORTS = {"http": 80, "https": 443}


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise AddressRefused(f"{host}: the name does not resolve ({e.strerror or e})") from e
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def origin(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, lower-case, the scheme's default port filled in."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or "").rstrip(".").lower(), port or DEFAULT_PORTS.get(parts.scheme, 0)


def why_refused(address: str) -> str:
    """'' when `address` is public; else what it is ("a loopback address", ...)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    for test, what in ((ip.is_unspecified, "an unspecified address"), (ip.is_loopback, "a loopback address"), (ip.is_link_local, "a link-local address"),
                       (ip.is_private, "a private address"), (ip.is_multicast, "a multicast address"),
                       (ip.is_reserved, "a reserved address")):
        if test:
            return what
    if not ip.is_global:
        return "not a public address"
    return ""


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    hosts: frozenset[str] = frozenset()  # "name" or "name:port" (ingest.allowed_hosts)
    trusted: frozenset[tuple[str, int]] = frozenset()  # origins the operator named (the ingest source's)
    resolver: Resolver = field(default=resolve, compare=False)

    @classmethod
    def from_settings(cls, settings, *, resolver: Resolver = resolve) -> "AddressPolicy":
        return cls(settings.allow_private_networks, frozenset(h.strip().lower() for h in settings.allowed_hosts),
                   resolver=resolver)

    def trusting(self, origins: Iterable[tuple[str, int]]) -> "AddressPolicy":
        """This policy, also trusting `origins` (host, port)."""
        return AddressPolicy(self.allow_private, self.hosts, self.trusted | frozenset(origins), self.resolver)

    def listed(self, host: str, port: int) -> bool:
        """The operator named this host (in ingest.allowed_hosts, or as the source it gave)."""
        return host in self.hosts or f"{host}:{port}" in self.hosts or (host, port) in self.trusted

    def check_url(self, url: str) -> None:
        """Refuse anything but http(s) (AddressRefused)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise AddressRefused(f"{url}: only http and https URLs are fetched (not {scheme or 'a URL without a scheme'}:)")

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses a connection to host:port may use: all of them checked, or AddressRefused saying why not."""
        host = host.rstrip(".").lower()
        found = self.resolver(host, port)
        if not found:
            raise AddressRefused(f"{host}: the name does not resolve to any address")
        if self.listed(host, port):
            return found
        for address in found:
            why = why_refused(address)
            if why and (why == "a cloud metadata address" or not self.allow_private):
                hint = ("list it in ingest.allowed_hosts to fetch from it" if why == "a cloud metadata address" else
                        "set ingest.allow_private_networks: true, or list the host in ingest.allowed_hosts, to fetch from it")
                raise AddressRefused(f"{host}:{port} resolves to {address}, {why}: ingestion does not fetch from "
                                  f"private networks unless told to ({hint})")
        return found
