"""Where a deployment runs: local (the call never leaves the machine or the operator's network) or cloud.

Decided from what the deployment declares, never from its engine type alone (a `vllm` at a public
address is cloud; an `openai`-compatible server on 127.0.0.1 is local):

    location: local | cloud          declared by the operator: final
    in-process engine                llama_cpp, transformers, sentence_transformers: local
    an HTTP engine                   local when every address it is given (url, or all of its instances) is
                                     local: loopback, private (RFC 1918, fc00::/7), link-local, or a host in
                                     `llm.local_hosts` (names, addresses or CIDR networks); a name is resolved
                                     once, at start, and is local only if every address it resolves to is
    no url                           the engine's default address (api.openai.com: cloud; Ollama's
                                     127.0.0.1:11434: local); an engine with no known default is cloud

What cannot be decided (a name that does not resolve in time) is cloud: a false "cloud" costs a
fallback, a false "local" would break the guarantee. A local proxy to a cloud API (an SSH tunnel, a
LiteLLM on localhost) is local by address: declare it `location: cloud`.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit

from ..providers.base import Provider
from ..providers.wrapper import WrapperProvider

log = logging.getLogger(__name__)

IN_PROCESS_ENGINES = frozenset({"llama_cpp", "transformers", "sentence_transformers"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_RESERVED_SUFFIXES = (".example", ".invalid", ".test")  # RFC 2606: never resolved (documentation, tests)
Resolve = Callable[[str], Sequence[str]]  # a host name -> its addresses


def engine_default_url(engine: str, options: dict[str, Any] | None = None) -> str | None:
    """Where an engine's adapter connects when the deployment gives no url (None: unknown or required)."""
    if engine in ("ollama",):
        from ..providers.ollama_models import DEFAULT_URL

        return DEFAULT_URL
    if engine == "tgi":
        return "http://127.0.0.1:8080"
    if engine == "anthropic":
        from ..providers.anthropic import DEFAULT_URL as ANTHROPIC

        return ANTHROPIC
    from ..providers.profiles import PROFILES

    profile = PROFILES.get(engine)
    if profile is None:
        return None
    url = (options or {}).get("default_url", profile.default_url)
    return url if isinstance(url, str) else None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


def local_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private or link-local (and not the cloud metadata address 169.254.169.254, which is a
    cloud's service, nor the shared 100.64.0.0/10 carrier range)."""
    if str(ip) in ("169.254.169.254", "fd00:ec2::254"):
        return False
    return ip.is_loopback or ip.is_link_local or (ip.is_private and not ip.is_unspecified
                                                  and ip not in ipaddress.ip_network("100.64.0.0/10"))


def system_resolve(host: str, timeout_s: float = 2.0) -> list[str]:
    """The addresses `host` resolves to ([] when it does not within `timeout_s`): the lookup runs in a
    daemon thread, so a dead resolver delays the start by at most `timeout_s` per name."""
    found: list[str] = []

    def look() -> None:
        try:
            found.extend({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
        except OSError:
            pass

    t = threading.Thread(target=look, name=f"resolve {host}", daemon=True)
    t.start()
    t.join(timeout_s)
    return list(found) if not t.is_alive() else []


@dataclass(frozen=True, slots=True)
class Placement:
    local: bool
    why: str  # e.g. "in-process engine", "10.0.0.5 is a private address", "declared location: cloud"


class Locality:
    """Decides `Placement`s. `local_hosts`: `llm.local_hosts`; `resolve`: name -> addresses (injectable)."""

    def __init__(self, local_hosts: Iterable[str] = (), *, resolve: Resolve = system_resolve):
        self._names: set[str] = set()
        self._networks: list[Any] = []
        for h in local_hosts:
            h = h.strip().lower()
            if not h:
                continue
            try:
                self._networks.append(ipaddress.ip_network(h, strict=False))
            except ValueError:
                self._names.add(h.rstrip("."))
        self._resolve = resolve
        self._seen: dict[str, Placement] = {}

    def host(self, host: str) -> Placement:
        """Is `host` (a name or an address) local?"""
        name = host.strip().strip("[]").lower().rstrip(".")
        if name in self._seen:
            return self._seen[name]
        out = self._host(name)
        self._seen[name] = out
        return out

    def _listed(self, ip: Any) -> bool:
        return any(ip.version == n.version and ip in n for n in self._networks)

    def _host(self, name: str) -> Placement:
        if not name:
            return Placement(False, "no host")
        if name in self._names:
            return Placement(True, f"{name} is in llm.local_hosts")
        ip = _ip(name)
        if ip is not None:
            if self._listed(ip):
                return Placement(True, f"{name} is in llm.local_hosts")
            if local_address(ip):
                return Placement(True, f"{name} is a {'loopback' if ip.is_loopback else 'private'} address")
            return Placement(False, f"{name} is a public address")
        if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
            return Placement(True, f"{name} is this machine")
        if name.endswith(_RESERVED_SUFFIXES):
            return Placement(False, f"{name} is a reserved name that resolves nowhere")
        addresses = [a for a in (_ip(x) for x in self._resolve(name)) if a is not None]
        if not addresses:
            return Placement(False, f"{name} did not resolve")
        outside = [str(a) for a in addresses if not (local_address(a) or self._listed(a))]
        if outside:
            return Placement(False, f"{name} resolves to {outside[0]}, a public address")
        return Placement(True, f"{name} resolves to local addresses ({', '.join(sorted(map(str, addresses))[:3])})")

    def url(self, url: str) -> Placement:
        host = urlsplit(url if "//" in url else f"//{url}").hostname or ""
        return self.host(host)

    def of(self, d: Any) -> Placement:
        """The placement of one deployment (a `DeploymentSettings`)."""
        if d.location != "auto":
            return Placement(d.location == "local", f"declared location: {d.location}")
        if d.engine in IN_PROCESS_ENGINES:
            return Placement(True, "in-process engine")
        urls = list(d.instances) or ([d.url] if d.url else [])
        if not urls:
            default = engine_default_url(d.engine, d.options)
            if default is None:
                return Placement(False, f"engine {d.engine!r} has no url and no known default address "
                                        "(declare location: local if it runs in this process)")
            host = urlsplit(default).hostname or ""
            if _ip(host) is None and host not in _LOOPBACK_NAMES:  # a vendor's API (api.openai.com): not looked up
                return Placement(False, f"the engine's default endpoint {host} is a cloud API")
            urls = [default]
        for u in urls:
            p = self.url(u)
            if not p.local:
                return p
        return Placement(True, self.url(urls[0]).why if len(urls) == 1 else "every instance is local")


class Located(WrapperProvider):
    """A deployment's chain whose capabilities say where it really runs (`local`), when its adapter's own
    declaration differs (e.g. a `vllm` adapter at a public address)."""

    def __init__(self, inner: Provider, local: bool):
        super().__init__(inner)
        self.capabilities = replace(inner.capabilities, local=local)


def located(adapter: Provider, placement: Placement) -> Provider:
    """`adapter`, wrapped only when its own `capabilities.local` disagrees with `placement`."""
    if adapter.capabilities.local == placement.local:
        return adapter
    return Located(adapter, placement.local)
