"""Ingestion fetches on a hostile network: only http(s); no private, loopback, link-local or metadata addresses
after name resolution, on every redirect hop and sitemap entry, unless the operator named that origin or
allowed it. Two local web servers stand for "the site the operator named" and "some other internal host"."""
from __future__ import annotations

import pytest

from nlweb_local.config.settings import IngestSettings
from nlweb_local.core.errors import SourceError
from nlweb_local.ingest import Ingestor
from nlweb_local.ingest.address_policy import AddressPolicy, AddressRefused, why_refused
from nlweb_local.ingest.fetch import Fetcher
from test_ingest_http import LocalSite, Route, page


@pytest.fixture()
def sites():
    a, b = LocalSite(), LocalSite()  # a: the operator's source; b: another internal service
    for s in (a, b):
        s.thread.start()
    yield a, b
    for s in (a, b):
        s.release.set()
        s.server.shutdown()
        s.server.server_close()


def sitemap(*urls: str) -> bytes:
    locs = "".join(f"<url><loc>{u}</loc></url>" for u in urls)
    return f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>'.encode()


def ingestor(embedder, store, fetcher=None, **settings):
    return Ingestor(embedder, store, IngestSettings(fetch_timeout_s=5, **settings), progress=False, fetcher=fetcher)


@pytest.mark.parametrize("address, what", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"),
    ("172.16.0.1", "private"), ("192.168.1.20", "private"), ("fd12:3456::1", "private"), ("fe80::1", "link-local"),
    ("169.254.1.1", "link-local"), ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"), ("100.64.0.1", "not a public"), ("0.0.0.0", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("224.0.0.1", "multicast"),
    ("93.184.216.34", ""), ("2606:4700:4700::1111", ""), ("8.8.8.8", "")])
def test_which_addresses_are_refused(address, what):
    why = why_refused(address)
    assert (what in why) if what else why == ""


def test_private_networks_allowed_by_the_operator_but_metadata_only_when_listed():
    resolver = {"intranet": ["10.0.0.5"], "meta": ["169.254.169.254"]}.get
    policy = AddressPolicy(allow_private=True, resolver=lambda h, p: resolver(h))
    assert policy.addresses("intranet", 80) == ["10.0.0.5"]
    with pytest.raises(AddressRefused, match="cloud metadata"):
        policy.addresses("meta", 80)
    listed = AddressPolicy(hosts=frozenset({"meta"}), resolver=lambda h, p: resolver(h))
    assert listed.addresses("meta", 80) == ["169.254.169.254"]
    with pytest.raises(AddressRefused, match="private address"):
        listed.addresses("intranet", 80)


def test_the_operators_own_loopback_source_loads_but_its_entries_elsewhere_are_refused(sites, embedder, store):
    a, b = sites
    a.routes["/sitemap.xml"] = Route(sitemap(a.url("/mine"), b.url("/secret")), "application/xml")
    a.routes["/mine"] = Route(page({"@type": "Recipe", "name": "Tart"}))
    b.routes["/secret"] = Route(page({"@type": "Thing", "name": "internal secret"}))
    report = ingestor(embedder, store).ingest(a.url("/sitemap.xml"), "s")
    assert report.loaded == 1 and {it.name for it in store.sample("s", 10)} == {"Tart"}
    (where, why), = report.skipped
    assert where == b.url("/secret") and "127.0.0.1, a loopback address" in why and "ingest.allow_private_networks" in why
    assert b.requests == []  # never even connected


def test_a_redirect_to_another_internal_host_is_refused_on_that_hop(sites, embedder, store):
    a, b = sites
    a.routes["/page"] = Route(status=302, location=b.url("/secret"))
    b.routes["/secret"] = Route(page({"@type": "Thing", "name": "internal secret"}))
    with pytest.raises(SourceError) as e:
        ingestor(embedder, store).ingest(a.url("/page"), "s")
    assert e.value.message.startswith(a.url("/page")) and "loopback address" in e.value.message
    assert b.requests == []
    a.routes["/moved"] = Route(status=301, location="/page2")  # a redirect within the operator's origin is fine
    a.routes["/page2"] = Route(page({"@type": "Thing", "name": "moved here"}))
    assert ingestor(embedder, store).ingest(a.url("/moved"), "s").loaded == 1


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/etc/passwd", "file:///etc/passwd", "gopher://x/"])
def test_a_redirect_to_anything_but_http_is_refused(sites, target):
    a, _ = sites
    a.routes["/r"] = Route(status=302, location=target)
    with pytest.raises(SourceError, match="only http and https|is not allowed"):  # (file:, gopher: urllib refuses itself)
        Fetcher(IngestSettings(fetch_timeout_s=5)).fetch(a.url("/r"), trust=[a.base])


def test_a_public_looking_name_that_resolves_to_loopback_is_refused(sites, embedder, store):
    """DNS decides, not the name: `public.example` pointed at 127.0.0.1 (as a rebinding attacker would)."""
    a, b = sites
    port = b.server.server_address[1]
    fake = {"public.example": ["127.0.0.1"]}
    from nlweb_local.ingest.address_policy import resolve

    policy = AddressPolicy(resolver=lambda h, p: fake.get(h) or resolve(h, p))
    a.routes["/sitemap.xml"] = Route(sitemap(f"http://public.example:{port}/secret"), "application/xml")
    b.routes["/secret"] = Route(page({"@type": "Thing", "name": "internal secret"}))
    with pytest.raises(SourceError) as e:
        ingestor(embedder, store, Fetcher(IngestSettings(fetch_timeout_s=5), policy=policy)).ingest(a.url("/sitemap.xml"), "s")
    assert f"public.example:{port} resolves to 127.0.0.1, a loopback address" in e.value.message
    assert b.requests == []


def test_direct_fetch_of_an_unnamed_loopback_url_is_refused():
    with pytest.raises(AddressRefused, match="loopback"):
        Fetcher(IngestSettings(fetch_timeout_s=2)).fetch("http://127.0.0.1:9/x")  # nobody named it: refused
    with pytest.raises(AddressRefused, match="loopback"):
        Fetcher(IngestSettings(fetch_timeout_s=2)).fetch("http://localhost:9/x")  # by name, after resolution


@pytest.mark.parametrize("allow", [{"allow_private_networks": True}, "listed"])
def test_the_operator_can_allow_other_internal_hosts(sites, embedder, store, allow):
    a, b = sites
    settings = allow if isinstance(allow, dict) else {"allowed_hosts": [f"127.0.0.1:{b.server.server_address[1]}"]}
    a.routes["/sitemap.xml"] = Route(sitemap(a.url("/mine"), b.url("/other")), "application/xml")
    a.routes["/mine"] = Route(page({"@type": "Recipe", "name": "Tart"}))
    b.routes["/other"] = Route(page({"@type": "Thing", "name": "Intranet page"}))
    report = ingestor(embedder, store, **settings).ingest(a.url("/sitemap.xml"), "s")
    assert report.loaded == 2 and report.skipped == []
